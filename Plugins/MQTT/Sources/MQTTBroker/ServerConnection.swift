import DequeModule
import IoTCPluginKit
import MQTTCodec
import NIOCore

/// What the server connection asks of its transport. The NIO handler implements it; tests record it.
public protocol ConnectionControl: AnyObject {
    /// Closes the connection after pending bytes are written.
    func close()
    func pauseReading()
    func resumeReading()
    /// Expects a packet at least every `seconds` (1.5 times keep-alive); 0 turns the check off.
    func expectPackets(within seconds: Double)
    /// Calls `retryStalled` on the connection's event loop after `delay`.
    func retry(after delay: TimeAmount)
}

public struct ServerLimits: Sendable {
    /// Receive Maximum announced to clients: QoS 1 and 2 publishes a client may have unacknowledged.
    public var receiveMaximum: UInt16 = 1024
    /// Largest packet accepted (announced to MQTT 5 clients).
    public var maximumPacketSize: Int = 1 << 20
    public var topicAliasMaximum: UInt16 = 64
    /// Keep-alive imposed when a client asks for none or more (MQTT 5 Server Keep Alive); 0: the client's.
    public var maximumKeepAlive: UInt16 = 0
    public var maximumClientIDLength = 256
    public init() {}
}

/// One client connection's protocol logic, without I/O: CONNECT and authentication, the QoS flows
/// in both directions, subscriptions, will, topic aliases, and backpressure from the hub. Called on
/// one event loop only.
public final class ServerConnection: @unchecked Sendable {
    public enum State { case awaitingConnect, connected, closed }

    let broker: Broker
    let hub: HubLink
    let limits: ServerLimits
    public let link: ClientLink
    let remoteAddress: String
    /// SHA-256 of the client's TLS certificate (lower-case hex), set by the transport before CONNECT.
    public var certificateFingerprint: String?
    /// The client's TLS certificate chain (DER, leaf first), set with the fingerprint.
    public var certificateChain: [[UInt8]] = []
    public weak var control: ConnectionControl?

    public private(set) var state = State.awaitingConnect
    public private(set) var session: Session?
    public private(set) var identity: ClientIdentity?
    public private(set) var clientID = ""
    private var version = MQTTVersion.v311
    /// Boxed: most clients leave no will, and an idle connection should stay small.
    private var willBox: WillBox?
    private var will: BrokerMessage? {
        get { willBox?.message }
        set { willBox = newValue.map(WillBox.init) }
    }
    private final class WillBox {
        let message: BrokerMessage
        init(_ m: BrokerMessage) { message = m }
    }
    private var willDelay: UInt32 = 0
    private var connectExpiry: UInt32 = 0
    private var inboundAliases: [UInt16: String] = [:]
    private var problemInformation = true

    /// Acknowledgements owed to the client, sent strictly in the order the PUBLISHes came.
    private struct OwedAck {
        var packetID: UInt16
        var qos: UInt8
        var done = false
        var reasonCode: UInt8 = 0
        var reason: String?
        /// The hub did not take the message (its log could not store it): not a refusal of the client's.
        var notTaken = false
    }
    private var owed = Deque<OwedAck>()
    /// Tickets free for the next submitted QoS 1 or 2 publish, and the settled ones being run.
    private var tickets: [SubmitTicket] = []
    private var drained: [SubmitTicket] = []
    private var owedBase: UInt64 = 0
    /// Packets that arrived while the hub was full; reading is paused until they are taken.
    private var stalled: [MQTTPacket] = []
    private var retryDelay = TimeAmount.milliseconds(2)
    private var readingPaused = false
    /// Reading is also paused while the client does not read what it is sent (see `balanceReading`).
    public private(set) var backlogged = false
    /// The last topic this client was allowed to publish to (devices publish to the same topic again
    /// and again; the hub is asked once per change of topic).
    private var lastAllowedTopic: String?

    public init(broker: Broker, hub: HubLink, limits: ServerLimits, link: ClientLink, remoteAddress: String, certificateFingerprint: String? = nil) {
        self.broker = broker
        self.hub = hub
        self.limits = limits
        self.link = link
        self.remoteAddress = remoteAddress
        self.certificateFingerprint = certificateFingerprint
        broker.counters.held.add(1)
    }

    deinit { broker.counters.held.add(-1) }

    // MARK: - Input

    public func receive(_ packet: MQTTPacket) {
        guard state != .closed else { return }
        if !stalled.isEmpty {
            stalled.append(packet)
            return
        }
        handle(packet)
    }

    /// The decoder refused the bytes: answer with the reason code where the protocol allows, and close.
    /// `version` is the protocol version the decoder read from a CONNECT it then refused, if it got
    /// that far: an MQTT 5 client is told why in a CONNACK (section 4.13.1); MQTT 3.1.1 has no code
    /// for a malformed CONNECT, so the connection just closes.
    public func decodeFailed(_ error: MQTTProtocolError, version: MQTTVersion? = nil) {
        guard state != .closed else { return }
        switch state {
        case .awaitingConnect:
            if error.reasonCode == MQTTReason.unsupportedProtocolVersion {
                link.version = .v311
                link.send(.connack(MQTTConnAck(sessionPresent: false, reasonCode: 0x01)))
            } else if version == .v5 {
                link.version = .v5
                link.send(.connack(MQTTConnAck(sessionPresent: false, reasonCode: error.reasonCode,
                                               properties: [.string(MQTTProperty.reasonString, error.description)])))
            }
        case .connected:
            disconnectPacket(error.reasonCode, error.description)
        case .closed: break
        }
        shutdown(reason: "protocol error: \(error.description)", publishWill: true)
    }

    /// The transport closed (by the peer, keep-alive, or us).
    public func transportClosed(reason: String) {
        shutdown(reason: reason, publishWill: true)
    }

    /// Keep-alive expired.
    public func keepAliveExpired() {
        if state == .connected { disconnectPacket(MQTTReason.keepAliveTimeout, "keep-alive timeout") }
        shutdown(reason: "keep-alive timeout", publishWill: true)
    }

    /// The broker asked this connection to go: another connection took the session over (0x8E), or the
    /// hub revoked the client's credentials (0x98).
    public func disconnect(reasonCode: UInt8) {
        guard state == .connected else { return }
        let why = reasonCode == MQTTReason.sessionTakenOver ? "another connection took over the session"
            : reasonCode == MQTTReason.administrativeAction ? "the credentials were revoked" : "the server closed the connection"
        disconnectPacket(reasonCode, why)
        shutdown(reason: why, publishWill: true)
    }

    private func handle(_ packet: MQTTPacket) {
        switch (state, packet) {
        case (.awaitingConnect, .connect(let c)): connect(c)
        case (.awaitingConnect, _): protocolError(MQTTReason.protocolError, "the first packet must be CONNECT")
        case (.connected, .connect): protocolError(MQTTReason.protocolError, "a second CONNECT")
        case (.connected, .publish(let p)): publish(p)
        case (.connected, .puback(let a)): session?.completed(a.packetID)
        case (.connected, .pubrec(let a)):
            if session?.received(a.packetID, reasonCode: a.reasonCode) != true, version == .v5 {
                link.send(.pubrel(MQTTPacketAck(packetID: a.packetID, reasonCode: MQTTReason.packetIdentifierNotFound)))
            }
        case (.connected, .pubcomp(let a)): session?.completed(a.packetID)
        case (.connected, .pubrel(let a)):
            let known = session?.release(a.packetID) ?? false
            link.send(.pubcomp(MQTTPacketAck(packetID: a.packetID, reasonCode: known || version == .v311 ? 0 : MQTTReason.packetIdentifierNotFound)))
        case (.connected, .subscribe(let s)): subscribe(s)
        case (.connected, .unsubscribe(let u)): unsubscribe(u)
        case (.connected, .pingreq): link.send(.pingresp)
        case (.connected, .disconnect(let code, let props)):
            if let e = props.integer(MQTTProperty.sessionExpiryInterval) {
                guard connectExpiry != 0 || e == 0 else {
                    return protocolError(MQTTReason.protocolError, "session expiry set at DISCONNECT after 0 at CONNECT")
                }
                setSessionExpiry(e)
            }
            shutdown(reason: "client disconnected", publishWill: code == MQTTReason.disconnectWithWill)
        case (.connected, .auth):
            protocolError(MQTTReason.protocolError, "AUTH without an authentication method")
        case (.connected, _):
            protocolError(MQTTReason.protocolError, "\(packet.name) is not sent by clients")
        case (.closed, _): break
        }
    }

    // MARK: - CONNECT

    private func connect(_ c: MQTTConnect) {
        version = c.version
        link.version = c.version
        let v5 = c.version == .v5
        func refuse(_ v5Code: UInt8, _ v3Code: UInt8, _ reason: String) {
            var props: [MQTTProperty] = []
            if v5 { props.append(.string(MQTTProperty.reasonString, reason)) }
            link.send(.connack(MQTTConnAck(sessionPresent: false, reasonCode: v5 ? v5Code : v3Code, properties: props)))
            shutdown(reason: "connection refused: \(reason)", publishWill: false)
        }
        if v5 {
            if c.properties.first(MQTTProperty.authenticationMethod) != nil {
                return refuse(MQTTReason.badAuthenticationMethod, 0x05, "enhanced authentication is not supported")
            }
            link.receiveMaximum = Int(c.properties.integer(MQTTProperty.receiveMaximum) ?? 65535)
            link.maximumPacketSize = Int(c.properties.integer(MQTTProperty.maximumPacketSize) ?? UInt32.max)
            link.topicAliasMaximum = UInt16(c.properties.integer(MQTTProperty.topicAliasMaximum) ?? 0)
            problemInformation = c.properties.integer(MQTTProperty.requestProblemInformation) != 0
        }
        var clientID = c.clientID
        var assigned = false
        if clientID.isEmpty {
            guard v5 || c.cleanStart else { return refuse(MQTTReason.clientIdentifierNotValid, 0x02, "an empty client id needs a clean session") }
            clientID = "iotc-" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
            assigned = true
        }
        guard clientID.utf8.count <= limits.maximumClientIDLength else {
            return refuse(MQTTReason.clientIdentifierNotValid, 0x02, "client id is longer than \(limits.maximumClientIDLength) bytes")
        }
        let credentials = ConnectCredentials(clientID: clientID, username: c.username, password: c.password,
                                             remoteAddress: remoteAddress, certificateFingerprint: certificateFingerprint, certificateChain: certificateChain)
        guard let identity = hub.authenticate(credentials) else {
            return refuse(c.password == nil ? MQTTReason.notAuthorized : MQTTReason.badUsernameOrPassword,
                          c.password == nil ? 0x05 : 0x04, "authentication failed")
        }
        let space = TenantSpace(tenant: identity.tenant)
        guard broker.mayOpenSession(space.sessionKey(clientID)) else {
            return refuse(MQTTReason.quotaExceeded, 0x03, "the server holds as many sessions as it may")
        }
        if let w = c.will {
            guard w.qos <= broker.config.maximumQoS else { return refuse(MQTTReason.qosNotSupported, 0x05, "will QoS is over the maximum") }
            guard !w.retain || broker.config.retainAvailable else { return refuse(MQTTReason.retainNotSupported, 0x05, "retain is not available") }
            // As a PUBLISH's payload is checked against its format indicator (MQTT 5 §3.1.3.2.3).
            if Self.contradictsItsFormat(w.payload, w.properties) {
                return refuse(MQTTReason.payloadFormatInvalid, 0x05, "the will payload is not UTF-8 as its format indicator says")
            }
            guard Topics.levels(w.topic) <= Topics.maximumLevels else {
                return refuse(MQTTReason.topicNameInvalid, 0x05, "the will topic has more than \(Topics.maximumLevels) levels")
            }
            guard !TenantSpace.isReserved(w.topic), hub.mayPublish(identity, topic: w.topic) else {
                return refuse(MQTTReason.notAuthorized, 0x05, "not authorized to publish the will topic")
            }
            let (props, expiry) = Self.messageProperties(w.properties)
            will = BrokerMessage(topic: space.topic(w.topic), payload: w.payload, qos: w.qos, retain: w.retain, properties: props, expiry: expiry)
            willDelay = w.properties.integer(MQTTProperty.willDelayInterval) ?? 0
        }
        // Session expiry: MQTT 5 asks; MQTT 3.1.1 persistent sessions get the maximum.
        let asked: UInt32 = v5 ? (c.properties.integer(MQTTProperty.sessionExpiryInterval) ?? 0) : (c.cleanStart ? 0 : UInt32.max)
        let expiry = min(asked, broker.config.maximumSessionExpiry)
        connectExpiry = expiry
        self.clientID = clientID
        self.identity = identity

        var keepAlive = c.keepAlive
        var serverKeepAlive: UInt16?
        if limits.maximumKeepAlive > 0, keepAlive == 0 || keepAlive > limits.maximumKeepAlive, v5 {
            keepAlive = limits.maximumKeepAlive
            serverKeepAlive = keepAlive
        }

        let (session, present) = broker.openSession(clientID: space.sessionKey(clientID), cleanStart: c.cleanStart, expiry: expiry)
        self.session = session
        var props: [MQTTProperty] = []
        if v5 {
            if expiry != asked { props.append(.fourByte(MQTTProperty.sessionExpiryInterval, expiry)) }
            if assigned { props.append(.string(MQTTProperty.assignedClientIdentifier, clientID)) }
            props.append(.twoByte(MQTTProperty.receiveMaximum, limits.receiveMaximum))
            props.append(.fourByte(MQTTProperty.maximumPacketSize, UInt32(limits.maximumPacketSize)))
            props.append(.twoByte(MQTTProperty.topicAliasMaximum, limits.topicAliasMaximum))
            if broker.config.maximumQoS < 2 { props.append(.byte(MQTTProperty.maximumQoS, broker.config.maximumQoS)) }
            if !broker.config.retainAvailable { props.append(.byte(MQTTProperty.retainAvailable, 0)) }
            if !broker.config.wildcardSubscriptions { props.append(.byte(MQTTProperty.wildcardSubscriptionAvailable, 0)) }
            if !broker.config.subscriptionIdentifiers { props.append(.byte(MQTTProperty.subscriptionIdentifierAvailable, 0)) }
            if !broker.config.sharedSubscriptions { props.append(.byte(MQTTProperty.sharedSubscriptionAvailable, 0)) }
            if let serverKeepAlive { props.append(.twoByte(MQTTProperty.serverKeepAlive, serverKeepAlive)) }
        }
        link.send(.connack(MQTTConnAck(sessionPresent: present, reasonCode: 0, properties: props)))
        state = .connected
        link.identity = identity
        link.space = space
        broker.attach(session, link: link, resumed: present)
        hub.connected(identity, clientID: clientID, remoteAddress: remoteAddress)
        control?.expectPackets(within: keepAlive == 0 ? 0 : Double(keepAlive) * 1.5)
    }

    private func setSessionExpiry(_ e: UInt32) {
        guard let session else { return }
        broker.setExpiry(session, min(e, broker.config.maximumSessionExpiry))
    }

    /// Splits a PUBLISH's properties into the message's own and its expiry deadline.
    public static func messageProperties(_ props: [MQTTProperty]) -> ([MQTTProperty], NIODeadline?) {
        guard !props.isEmpty else { return ([], nil) }
        var own: [MQTTProperty] = []
        var expiry: NIODeadline?
        for p in props {
            switch p.identifier {
            case MQTTProperty.messageExpiryInterval: expiry = .now() + .seconds(Int64(p.integer ?? 0))
            case MQTTProperty.topicAlias, MQTTProperty.subscriptionIdentifier, MQTTProperty.willDelayInterval: break
            default: own.append(p)
            }
        }
        return (own, expiry)
    }

    // MARK: - PUBLISH from the client

    private func publish(_ p: MQTTPublish) {
        guard let session, let identity else { return }
        var topic = p.topic
        if version == .v5, let alias = p.properties.integer(MQTTProperty.topicAlias) {
            guard alias >= 1, alias <= UInt32(limits.topicAliasMaximum) else {
                return protocolError(MQTTReason.topicAliasInvalid, "topic alias \(alias) is out of range")
            }
            let a = UInt16(alias)
            if topic.isEmpty {
                guard let t = inboundAliases[a] else { return protocolError(MQTTReason.protocolError, "unknown topic alias \(alias)") }
                topic = t
            } else {
                inboundAliases[a] = topic
            }
        }
        // (The topic last allowed passed this already: devices publish to the same topic over and over.)
        if topic != lastAllowedTopic, Topics.levels(topic) > Topics.maximumLevels {
            return protocolError(MQTTReason.topicNameInvalid, "the topic has more than \(Topics.maximumLevels) levels")
        }
        // Subscription identifiers go from server to client only ([MQTT-3.3.4-6]).
        if version == .v5, p.properties.first(MQTTProperty.subscriptionIdentifier) != nil {
            return protocolError(MQTTReason.protocolError, "a client's PUBLISH carries a subscription identifier")
        }
        guard p.qos <= broker.config.maximumQoS else { return protocolError(MQTTReason.qosNotSupported, "QoS \(p.qos) is over the maximum") }
        guard !p.retain || broker.config.retainAvailable else { return protocolError(MQTTReason.retainNotSupported, "retain is not available") }
        broker.counters.received.add(1)
        broker.counters.bytesReceived.add(p.payload.readableBytes)

        if p.qos > 0 {
            let id = p.packetID ?? 0
            // A QoS 2 duplicate: acknowledge again, deliver nothing.
            if p.qos == 2, session.isAwaitingRelease(id) {
                if !owed.contains(where: { $0.packetID == id }) { link.send(.pubrec(MQTTPacketAck(packetID: id))) }
                return
            }
            if owed.count + session.awaitingReleaseCount >= Int(limits.receiveMaximum) {
                if version == .v5 { return protocolError(MQTTReason.receiveMaximumExceeded, "more than \(limits.receiveMaximum) unacknowledged publishes") }
            }
        }

        let allowed = topic == lastAllowedTopic || (!TenantSpace.isReserved(topic) && hub.mayPublish(identity, topic: topic))
        if allowed { lastAllowedTopic = topic }
        guard allowed else {
            // MQTT 5 says why; MQTT 3.1.1 has no way to, so the message is acknowledged and dropped.
            acknowledgeAtOnce(p, code: version == .v5 ? MQTTReason.notAuthorized : 0, reason: "not authorized to publish to \(topic)")
            return
        }
        var message = BrokerMessage(topic: topic, payload: p.payload, qos: p.qos, retain: p.retain)
        if !p.properties.isEmpty {
            (message.properties, message.expiry) = Self.messageProperties(p.properties)
            if Self.contradictsItsFormat(p.payload, p.properties) {
                acknowledgeAtOnce(p, code: MQTTReason.payloadFormatInvalid, reason: "the payload is not UTF-8 as its format indicator says")
                return
            }
        }

        // The hub first: when its pipeline is full, nothing is routed and the packet waits.
        let slot: UInt64? = p.qos > 0 ? owedBase + UInt64(owed.count) : nil
        // Completions come from the hub's threads; the link carries the tickets to this connection's
        // loop in batches (`runPosted`).
        var ticket: SubmitTicket?
        if let slot {
            owed.append(OwedAck(packetID: p.packetID ?? 0, qos: p.qos))
            ticket = tickets.popLast() ?? SubmitTicket(link: link)
            ticket!.slot = slot
        }
        let status = hub.submit(message, identity: identity, clientID: clientID, ticket: ticket)
        if status != .accepted, let ticket { tickets.append(ticket) }
        switch status {
        case .busy:
            if slot != nil { owed.removeLast() }
            stall(.publish(p))
            return
        case .refused(let reason):
            if let slot { settle(slot, reason) }
            return
        case .accepted, .notRouted:
            break
        }
        if p.qos == 2 { _ = session.beginIncoming(p.packetID ?? 0) }
        message.topic = link.space.topic(topic)
        let delivered = broker.publish(message, from: session)
        if status == .notRouted, let slot { settle(slot, nil, noSubscribers: delivered == 0) }
        if retryDelay > .milliseconds(2) { retryDelay = .milliseconds(2) }
        if version == .v311, owed.count >= Int(limits.receiveMaximum) { pause() }
    }

    /// Runs on the connection's event loop what other threads left for it: posted tasks, and the
    /// tickets of settled messages (each then serves a later message). Returns whether there was any.
    @discardableResult
    public func runPosted() -> Bool {
        let tasks = link.takeTasks()
        for task in tasks { task.run() }
        link.takeSettled(swapping: &drained)
        let any = !tasks.isEmpty || !drained.isEmpty
        for t in drained {
            settle(t.slot, t.failure)
            t.failure = nil
            if tickets.count < Self.keptTickets { tickets.append(t) }
        }
        drained.removeAll(keepingCapacity: true)
        return any
    }

    /// Tickets kept for reuse, at most: what a connection with that many messages in flight needs.
    static let keptTickets = 64

    /// Acknowledges a publish that goes nowhere (refused, or invalid).
    private func acknowledgeAtOnce(_ p: MQTTPublish, code: UInt8, reason: String) {
        guard p.qos > 0 else { return }
        owed.append(OwedAck(packetID: p.packetID ?? 0, qos: p.qos))
        settle(owedBase + UInt64(owed.count - 1), code == 0 ? nil : reason, code: code)
    }

    /// A submitted publish is settled; acknowledgements go out in arrival order.
    private func settle(_ slot: UInt64, _ failure: String?, code: UInt8? = nil, noSubscribers: Bool = false) {
        guard state == .connected, slot >= owedBase else { return }
        let i = Int(slot - owedBase)
        guard i < owed.count else { return }
        owed[i].done = true
        if let failure {
            owed[i].reasonCode = code ?? MQTTReason.implementationSpecific
            owed[i].reason = failure
            owed[i].notTaken = code == nil
        } else if noSubscribers {
            owed[i].reasonCode = MQTTReason.noMatchingSubscribers
        }
        while let first = owed.first, first.done {
            let v5 = version == .v5
            if first.notTaken, !v5 {
                // MQTT 3.1.1 cannot acknowledge a message as not taken, and a PUBACK or PUBREC would make
                // the client drop it: the connection closes unanswered, and the client sends the
                // message again when it reconnects (§4.4), as a new one if it was QoS 2.
                if first.qos == 2 { _ = session?.release(first.packetID) }
                shutdown(reason: "the hub could not take a message: \(first.reason ?? "no reason given")", publishWill: true)
                return
            }
            owed.removeFirst()
            owedBase += 1
            var props: [MQTTProperty] = []
            if v5, let r = first.reason, problemInformation { props.append(.string(MQTTProperty.reasonString, r)) }
            let ack = MQTTPacketAck(packetID: first.packetID, reasonCode: v5 ? first.reasonCode : 0, properties: props)
            if first.qos == 1 {
                link.send(.puback(ack))
            } else {
                // A failed QoS 2 exchange ends at PUBREC; a later duplicate is a new message.
                if first.reasonCode >= 0x80 { _ = session?.release(first.packetID) }
                link.send(.pubrec(ack))
            }
        }
        if readingPaused, stalled.isEmpty, owed.count < Int(limits.receiveMaximum) / 2 { resume() }
    }

    /// A payload whose format indicator says UTF-8 (1) and which is not (MQTT 5 §3.3.2.3.2, and the
    /// will's §3.1.3.2.3): the receiver may refuse it with 0x99.
    static func contradictsItsFormat(_ payload: ByteBuffer, _ properties: [MQTTProperty]) -> Bool {
        properties.integer(MQTTProperty.payloadFormatIndicator) == 1 && payload.withUnsafeReadableBytes({ UTF8Text.string($0) }) == nil
    }

    // MARK: - Backpressure

    private func stall(_ packet: MQTTPacket) {
        stalled.insert(packet, at: 0)
        pause()
        control?.retry(after: retryDelay)
        retryDelay = min(retryDelay * 2, .milliseconds(100))
    }

    /// Offers the held packets again (the hub was full).
    public func retryStalled() {
        guard state == .connected else { return }
        let held = stalled
        stalled = []
        var rest = held[...]
        while let p = rest.popFirst() {
            handle(p)
            if !stalled.isEmpty {
                // Stalled again: keep the remaining packets after the one that stalled.
                stalled.append(contentsOf: rest)
                return
            }
            if state != .connected { return }
        }
        if owed.count < Int(limits.receiveMaximum) { resume() }
    }

    private func pause() {
        guard !readingPaused else { return }
        readingPaused = true
        if !backlogged { control?.pauseReading() }
    }

    private func resume() {
        guard readingPaused else { return }
        readingPaused = false
        if !backlogged { control?.resumeReading() }
    }

    /// Stops reading from a client that does not read what it is sent, and reads again once that has
    /// gone out; the transport calls it after each read and each write. What the client's own packets
    /// call for (PUBACK, PUBREC, SUBACK, PINGRESP) waits for the socket with the rest: a client that sent
    /// on and never read made the hub keep all of it (10 million QoS 1 publishes, 56 MB, by hand).
    /// Deliveries alone stay under the bound: QoS 0 ones are dropped past `maxPendingBytes`, QoS 1 and
    /// 2 ones wait in the session past its bytes in flight.
    public func balanceReading() {
        let pending = link.pendingByteCount
        if !backlogged, pending > link.maxPendingBytes * 4 {
            backlogged = true
            if !readingPaused { control?.pauseReading() }
        } else if backlogged, pending <= link.maxPendingBytes {
            backlogged = false
            if !readingPaused { control?.resumeReading() }
        }
    }

    // MARK: - SUBSCRIBE and UNSUBSCRIBE

    private func subscribe(_ s: MQTTSubscribe) {
        guard let session, let identity else { return }
        let identifier = s.properties.integer(MQTTProperty.subscriptionIdentifier)
        let v5 = version == .v5
        var codes: [UInt8] = []
        var accepted: [(String, MQTTSubscriptionOptions)] = []
        // Within the session's quota: a filter it already holds is replaced, not added.
        let limit = broker.config.maximumSubscriptions
        var held = limit > 0 ? broker.subscriptionFilters(of: session) : []
        for (filter, options) in s.filters {
            let shared = SharedFilter.isShared(filter)
            let plain = SharedFilter(filter)?.filter ?? filter
            if shared, options.noLocal {
                return protocolError(MQTTReason.protocolError, "no-local on a shared subscription")
            }
            let code: UInt8
            if shared, SharedFilter(filter) == nil || !Topics.isValidFilter(plain) {
                code = MQTTReason.topicFilterInvalid
            } else if !Topics.isValidFilter(filter) && !shared {
                code = MQTTReason.topicFilterInvalid
            } else if shared, !broker.config.sharedSubscriptions {
                code = MQTTReason.sharedSubscriptionsNotSupported
            } else if !broker.config.wildcardSubscriptions, MQTTPacketDecoder.hasWildcard(plain) {
                code = MQTTReason.wildcardSubscriptionsNotSupported
            } else if identifier != nil, !broker.config.subscriptionIdentifiers {
                code = MQTTReason.subscriptionIdentifiersNotSupported
            } else if TenantSpace.isReserved(plain) || !hub.maySubscribe(identity, filter: plain) {
                code = MQTTReason.notAuthorized
            } else if limit > 0, !held.contains(link.space.filter(filter)), held.count >= limit {
                code = MQTTReason.quotaExceeded
            } else {
                if limit > 0 { held.insert(link.space.filter(filter)) }
                var granted = options
                granted.qos = min(options.qos, broker.config.maximumQoS)
                accepted.append((filter, granted))
                code = granted.qos
            }
            // MQTT 3.1.1 has one failure code.
            codes.append(v5 || code <= 2 ? code : 0x80)
        }
        link.send(.suback(MQTTSubAck(packetID: s.packetID, reasonCodes: codes)))
        for (filter, options) in accepted {
            hub.subscribing(identity, filter: SharedFilter(filter)?.filter ?? filter)
            broker.subscribe(session, filter: link.space.filter(filter), options: options, identifier: identifier)
        }
    }

    private func unsubscribe(_ u: MQTTUnsubscribe) {
        guard let session else { return }
        let codes = u.filters.map { broker.unsubscribe(session, filter: link.space.filter($0)) ? MQTTReason.success : MQTTReason.noSubscriptionExisted }
        link.send(.unsuback(MQTTSubAck(packetID: u.packetID, reasonCodes: codes)))
    }

    // MARK: - Errors and closing

    private func protocolError(_ code: UInt8, _ text: String) {
        if state == .connected { disconnectPacket(code, text) }
        shutdown(reason: "protocol error: \(text)", publishWill: true)
    }

    private func disconnectPacket(_ code: UInt8, _ text: String?) {
        guard version == .v5 else { return }
        var props: [MQTTProperty] = []
        if let text, problemInformation { props.append(.string(MQTTProperty.reasonString, text)) }
        link.send(.disconnect(reasonCode: code, properties: props))
    }

    private func shutdown(reason: String, publishWill: Bool) {
        guard state != .closed else { return }
        let wasConnected = state == .connected
        state = .closed
        stalled.removeAll()
        control?.close()
        link.close()
        guard wasConnected, let session, let identity else { return }
        broker.closed(session, link: link, will: publishWill ? will : nil, willDelay: willDelay)
        hub.disconnected(identity, clientID: clientID, reason: reason)
    }
}
