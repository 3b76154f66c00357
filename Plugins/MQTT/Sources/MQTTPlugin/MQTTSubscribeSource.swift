import CIoTCPluginABI
import Foundation
import IoTCPluginKit
import MQTTBroker
import MQTTCodec
import NIOCore

/// Subscribes to topics on an external MQTT broker and hands what arrives to pipelines: the other half
/// of the bridge, on the same client as `mqtt_publish`.
final class MQTTSubscribeSource: Source, @unchecked Sendable {
    struct Config: Decodable {
        var connection: BrokerConnectionConfig
        var topics: [String]
        var qos: Int
        var clean_start: Bool
        var session_expiry: Double
        var device: String

        enum Keys: String, CodingKey { case topics, qos, clean_start, session_expiry, device }
        init(from decoder: Decoder) throws {
            connection = try BrokerConnectionConfig(from: decoder)
            let c = try decoder.container(keyedBy: Keys.self)
            topics = try c.decode([String].self, forKey: .topics)
            qos = try c.decode(Int.self, forKey: .qos)
            clean_start = try c.decode(Bool.self, forKey: .clean_start)
            session_expiry = try c.decode(Double.self, forKey: .session_expiry)
            device = try c.decode(String.self, forKey: .device)
        }
    }

    static let name = "mqtt_subscribe"
    static let summary = "Subscribes to topics on an external MQTT broker and feeds pipelines, reconnecting and resubscribing."
    static let description = """
        Messages arrive as canonical messages with the broker's topic, the payload, QoS and the MQTT 5 \
        properties as `mqtt.*` properties (as the `mqtt` source gives them). `device` names the device: a \
        template where `{1}`, `{2}`, ... are the topic's levels (`{2}` of `site/press-7/telemetry` is \
        `press-7`). A QoS 1 or 2 message is acknowledged to the broker only once the hub has it (on a durable \
        pipeline, once it is in the write-ahead log), so nothing acknowledged is lost; while a pipeline is \
        full the message is offered again. With `clean_start: false` and a `session_expiry`, the broker keeps \
        the session and queues messages while the hub is away; subscriptions are renewed on every connect.
        """
    static let fields: [ConfigField] = BrokerConnectionConfig.fields + [
        ConfigField("topics", .list(.string), "Topic filters to subscribe to.", example: #"[ "site/+/telemetry" ]"#, required: true),
        ConfigField("qos", .int, "Quality of service asked for: 0, 1 or 2.", default: "1"),
        ConfigField("clean_start", .bool, "Start a new session on every connect.", default: "false"),
        ConfigField("session_expiry", .duration, "How long the broker keeps the session while the hub is away (MQTT 5; 3.1.1 brokers keep it).", default: "3600", example: "1h"),
        ConfigField("device", .string, "Device id template; `{N}` is the topic's Nth level.", default: #""{2}""#),
    ]

    static func check(_ config: Config) -> [ConfigFinding] { config.connection.findings }

    let config: Config
    let host: PluginHost
    let client: MQTTClient
    /// Received and not yet taken by the hub, in arrival order. On the client's event loop only.
    private var backlog: [(Message, UInt8, @Sendable (Bool) -> Void)] = []
    private var retryDelay = TimeAmount.milliseconds(5)

    init(config: Config, host: PluginHost) throws {
        guard (0...2).contains(config.qos) else { throw PluginError("qos must be 0, 1 or 2") }
        guard !config.topics.isEmpty else { throw PluginError("topics must name at least one topic filter") }
        for t in config.topics where !Topics.isValidFilter(t) { throw PluginError("'\(t)' is not a valid topic filter") }
        self.config = config
        self.host = host
        client = try MQTTClient(name: Self.name, config: config.connection, host: host,
                                subscriptions: config.topics.map { ($0, UInt8(config.qos)) },
                                cleanStart: config.clean_start, sessionExpiry: UInt32(min(max(config.session_expiry, 0), Double(UInt32.max))))
        client.delegate = self
    }

    func start() throws { client.start() }
    func stop() { client.stop() }

    func device(for topic: String) -> String {
        let levels = topic.split(separator: "/", omittingEmptySubsequences: false)
        var out = config.device
        for (i, l) in levels.enumerated().reversed() { out = out.replacingOccurrences(of: "{\(i + 1)}", with: l) }
        return out
    }
}

extension MQTTSubscribeSource: MQTTClientDelegate {
    func clientConnected(sessionPresent: Bool) {}

    /// Messages not yet taken are dropped: the broker sends them again on the next connection.
    func clientDisconnected() { backlog.removeAll() }

    func clientReceived(_ p: MQTTPublish, settle: @escaping @Sendable (_ taken: Bool) -> Void) {
        let (props, expiry) = ServerConnection.messageProperties(p.properties)
        let m = BrokerMessage(topic: p.topic, payload: p.payload, qos: p.qos, retain: p.retain, properties: props, expiry: expiry)
        var message = PluginHubLink.canonical(m, identity: BridgeIdentity(device: device(for: p.topic)), clientID: config.connection.client_id ?? "")
        message.properties.removeAll { $0.key == "mqtt.client_id" }
        backlog.append((message, p.qos, settle))
        if backlog.count == 1 { drain() }
    }

    /// Submits waiting messages in arrival order (so that acknowledgements go back in that order too);
    /// when a pipeline is full, tries again later with backoff. QoS 0 messages are settled at once.
    private func drain() {
        while let (message, qos, settle) = backlog.first {
            let status = host.submit(message) { result in
                if qos > 0 { settle(result == IOTC_OK) }
            }
            switch status {
            case .queued:
                if qos == 0 { settle(true) }
            case .busy:
                client.loop.scheduleTask(in: retryDelay) { self.drain() }
                retryDelay = min(retryDelay * 2, .milliseconds(200))
                return
            case .rejected(let code):
                // No pipeline reads it: acknowledge, or the broker would send it forever.
                if code != IOTC_ERR_NOT_FOUND { host.log(.warning, "mqtt_subscribe: the hub refused a message on \(message.topic) (code \(code))") }
                settle(true)
            }
            backlog.removeFirst()
        }
        retryDelay = .milliseconds(5)
    }
}

/// The device a bridged message is attributed to.
final class BridgeIdentity: ClientIdentity {
    let tenant = "default"
    let device: String
    init(device: String) { self.device = device }
}
