import CIoTCPluginABI
import IoTCPluginKit
import MQTTBroker
import MQTTCodec
import NIOCore

/// The MQTT server's link to the hub: authentication and authorization through the hub or through
/// the static user list in the plugin's config, and publishes into the pipelines as canonical messages.
final class PluginHubLink: HubLink, @unchecked Sendable {
    struct User: Decodable, Sendable {
        var username: String?
        var password: String?
        var tenant: String?
        var publish: [String]?
        var subscribe: [String]?
    }

    enum Mode: String { case hub, `static` }

    let host: PluginHost
    let mode: Mode
    /// Failed logins of static users are logged at most once a second (a burst of 5).
    private let failures = LogBudget()
    /// The devices' configuration topics (hub authentication only).
    let configs: DeviceConfigs
    private let users: [String: User]
    private let anonymous: User?

    init(host: PluginHost, mode: Mode, users: [User], anonymous: User?, configTopic: String) throws {
        self.host = host
        self.mode = mode
        configs = DeviceConfigs(host: host, template: configTopic)
        var byName: [String: User] = [:]
        for u in users {
            guard let name = u.username, !name.isEmpty else { throw PluginError("every entry of users needs a username") }
            guard u.password?.isEmpty == false else { throw PluginError("user '\(name)' needs a password") }
            guard byName[name] == nil else { throw PluginError("user '\(name)' is listed twice") }
            if let t = u.tenant, !TenantSpace.isValidTenant(t) { throw PluginError("user '\(name)': '\(t)' is not a tenant id (no '/', '+' or '#')") }
            for f in (u.publish ?? []) + (u.subscribe ?? []) where !Topics.isValidFilter(f.replacingOccurrences(of: "%c", with: "c").replacingOccurrences(of: "%u", with: "u")) {
                throw PluginError("user '\(name)': '\(f)' is not a valid topic filter")
            }
            byName[name] = u
        }
        if let t = anonymous?.tenant, !TenantSpace.isValidTenant(t) { throw PluginError("anonymous: '\(t)' is not a tenant id (no '/', '+' or '#')") }
        self.users = byName
        self.anonymous = anonymous
    }

    /// A client the hub's registry (or token list) authenticated.
    final class HubIdentity: ClientIdentity {
        let identity: Identity
        var tenant: String { identity.tenant }
        var device: String { identity.device }
        init(_ identity: Identity) { self.identity = identity }
    }

    /// A client from the static user list, with its access filters (`%c` and `%u` filled in).
    final class StaticIdentity: ClientIdentity {
        let tenant: String
        let device: String
        let publish: [String]
        let subscribe: [String]
        init(tenant: String, device: String, publish: [String], subscribe: [String]) {
            self.tenant = tenant
            self.device = device
            self.publish = publish
            self.subscribe = subscribe
        }
    }

    func authenticate(_ c: ConnectCredentials) -> ClientIdentity? {
        switch mode {
        case .hub:
            let secret = c.password.map { String(decoding: $0, as: UTF8.self) } ?? ""
            let creds = Credentials(protocolName: "mqtt", device: c.clientID, username: c.username ?? "", secret: secret,
                                    certificateFingerprint: c.certificateFingerprint ?? "", remoteAddress: c.remoteAddress,
                                    certificateChain: c.certificateChain)
            return host.authenticate(creds).map(HubIdentity.init)
        case .static:
            let user: User
            if let name = c.username {
                guard let u = users[name], let expected = u.password, ConstantTime.equal(Array(expected.utf8), c.password ?? []) else {
                    if let line = failures.line("mqtt: authentication failed for user '\(name.prefix(64))' from \(c.remoteAddress)") {
                        host.log(.warning, line)
                    }
                    return nil
                }
                user = u
            } else {
                guard let a = anonymous else {
                    if let line = failures.line("mqtt: anonymous connection refused from \(c.remoteAddress)") { host.log(.warning, line) }
                    return nil
                }
                user = a
            }
            func fill(_ filters: [String]?) -> [String] {
                guard let filters else { return [] }
                // Shared, not copied, when nothing is per client: idle connections stay small.
                guard filters.contains(where: { $0.contains("%") }) else { return filters }
                return filters.map { $0.replacingOccurrences(of: "%c", with: c.clientID).replacingOccurrences(of: "%u", with: c.username ?? "") }
            }
            return StaticIdentity(tenant: user.tenant ?? "default", device: c.clientID, publish: fill(user.publish), subscribe: fill(user.subscribe))
        }
    }


    func mayPublish(_ identity: ClientIdentity, topic: String) -> Bool {
        if let s = identity as? StaticIdentity { return s.publish.contains { TopicMatch.matches(topic: topic, filter: $0) } }
        // A device's configuration topic is the hub's to publish on.
        if let h = identity as? HubIdentity { return !configs.isConfigTopic(topic, device: h.device) && host.authorize(h.identity, .publish, topic: topic) }
        return false
    }

    func maySubscribe(_ identity: ClientIdentity, filter: String) -> Bool {
        if let s = identity as? StaticIdentity { return s.subscribe.contains { Topics.covers($0, filter) } }
        if let h = identity as? HubIdentity { return host.authorize(h.identity, .subscribe, topic: filter) }
        return false
    }

    func submit(_ m: BrokerMessage, identity: ClientIdentity, clientID: String, ticket: SubmitTicket?) -> HubSubmitStatus {
        switch host.routes(m.topic) {
        case .notRouted: return .notRouted
        case .busy: return .busy
        case .routed: break
        }
        let message = Self.canonical(m, identity: identity, clientID: clientID)
        let status: PluginHost.SubmitStatus
        if let ticket {
            // The ticket itself is the completion's context: retained here, released by the completion.
            let context = Unmanaged.passRetained(ticket).toOpaque()
            status = host.submit(message, done: completeTicket, context: context)
            if case .queued = status {} else { Unmanaged<SubmitTicket>.fromOpaque(context).release() }
        } else {
            status = host.submit(message)
        }
        switch status {
        case .queued: return .accepted
        case .busy: return .busy
        case .rejected(let code): return code == IOTC_ERR_NOT_FOUND ? .notRouted : .refused("the hub refused the message (code \(code))")
        }
    }

    /// A device's PUBLISH as a canonical message: MQTT 5 properties become `mqtt.*` properties.
    static func canonical(_ m: BrokerMessage, identity: ClientIdentity, clientID: String) -> Message {
        var props = [KeyValue("mqtt.client_id", clientID)]
        if m.retain { props.append(KeyValue("mqtt.retain", "true")) }
        var contentType = "application/octet-stream"
        for p in m.properties {
            switch p {
            case .userProperty(let k, let v): props.append(KeyValue("mqtt.user." + k, v))
            case .string(MQTTProperty.contentType, let s): contentType = s
            case .string(MQTTProperty.responseTopic, let s): props.append(KeyValue("mqtt.response_topic", s))
            case .binary(MQTTProperty.correlationData, let b): props.append(KeyValue("mqtt.correlation_data", Base64.encode(b)))
            case .byte(MQTTProperty.payloadFormatIndicator, let v): props.append(KeyValue("mqtt.payload_format", v == 1 ? "utf-8" : "bytes"))
            default: break
            }
        }
        if let left = m.secondsLeftForHub { props.append(KeyValue("mqtt.message_expiry", String(left))) }
        return Message(kind: kind(of: m.topic), tenant: identity.tenant, device: identity.device, topic: m.topic,
                       contentType: contentType, payload: Array(m.payload.readableBytesView), qos: m.qos, properties: props)
    }

    /// `.../events` is an event, `.../attributes` attributes, `devices/{id}/results/{command}` an answer
    /// to a command, everything else telemetry.
    static func kind(of topic: String) -> MessageKind {
        if CommandTopics.isResult(topic) { return .commandResult }
        if topic.hasSuffix("/events") || topic.hasSuffix("/event") { return .event }
        if topic.hasSuffix("/attributes") { return .attributes }
        return .telemetry
    }

    func connected(_ identity: ClientIdentity, clientID: String, remoteAddress: String) {
        guard let h = identity as? HubIdentity else { return }
        host.deviceConnected(h.identity, remoteAddress: remoteAddress)
        configs.connected(h.identity)
    }

    func disconnected(_ identity: ClientIdentity, clientID: String, reason: String) {
        guard let h = identity as? HubIdentity else { return }
        host.deviceDisconnected(h.identity, reason: reason)
        configs.disconnected(h.identity)
    }

    func subscribing(_ identity: ClientIdentity, filter: String) {
        if let h = identity as? HubIdentity { configs.subscribing(h.identity, filter: filter) }
    }
}

extension BrokerMessage {
    var secondsLeftForHub: Int64? {
        guard let expiry else { return nil }
        return max(0, (expiry - .now()).nanoseconds / 1_000_000_000)
    }

    /// A downlink message from the hub as an MQTT message; `mqtt.*` properties become MQTT 5 properties.
    init(_ m: Message, defaultTopic: String) {
        var props: [MQTTProperty] = []
        var expiry: NIODeadline?
        if m.contentType != "application/octet-stream", !m.contentType.isEmpty { props.append(.string(MQTTProperty.contentType, m.contentType)) }
        for p in m.properties {
            if p.key.hasPrefix("mqtt.user.") { props.append(.userProperty(String(p.key.dropFirst(10)), p.value)) }
            else if p.key == "mqtt.response_topic" { props.append(.string(MQTTProperty.responseTopic, p.value)) }
            else if p.key == "mqtt.correlation_data", let b = Base64.decode(p.value) { props.append(.binary(MQTTProperty.correlationData, b)) }
            else if p.key == "mqtt.payload_format" { props.append(.byte(MQTTProperty.payloadFormatIndicator, p.value == "utf-8" ? 1 : 0)) }
            else if p.key == "mqtt.message_expiry", let s = Int64(p.value) { expiry = .now() + .seconds(s) }
        }
        self.init(topic: m.topic.isEmpty ? defaultTopic : m.topic, payload: ByteBuffer(bytes: m.payload), qos: min(m.qos, 2),
                  retain: m.property("mqtt.retain") == "true", properties: props, expiry: expiry)
    }
}

/// The kernel's completion of a submitted QoS 1 or 2 PUBLISH: its context is the retained ticket.
private let completeTicket: iotc_submit_done_fn = { context, result in
    guard let context else { return }
    Unmanaged<SubmitTicket>.fromOpaque(context).takeRetainedValue()
        .complete(result == IOTC_OK ? nil : "the hub could not take the message (code \(result))")
}
