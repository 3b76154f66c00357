import IoTCPluginKit
import MQTTCodec

/// Publishes messages to an external MQTT broker (mosquitto, EMQX, AWS IoT Core) at QoS 0 or 1.
final class MQTTPublishSink: Sink, @unchecked Sendable {
    struct Config: Decodable {
        var connection: BrokerConnectionConfig
        var topic: String
        var qos: Int
        var retain: Bool
        var forward_properties: Bool

        enum Keys: String, CodingKey { case topic, qos, retain, forward_properties }
        init(from decoder: Decoder) throws {
            connection = try BrokerConnectionConfig(from: decoder)
            let c = try decoder.container(keyedBy: Keys.self)
            topic = try c.decode(String.self, forKey: .topic)
            qos = try c.decode(Int.self, forKey: .qos)
            retain = try c.decode(Bool.self, forKey: .retain)
            forward_properties = try c.decode(Bool.self, forKey: .forward_properties)
        }
    }

    static let name = "mqtt_publish"
    static let summary = "Publishes messages to an external MQTT broker at QoS 0 or 1, reconnecting with backoff."
    static let description = """
        `topic` is a template: `{topic}`, `{device}`, `{tenant}` and `{kind}` are replaced from the message. \
        At most the broker's Receive Maximum (MQTT 5) and the sink's `max_in_flight` publishes await their \
        PUBACK at once. At QoS 1 a message is acknowledged when the broker's PUBACK arrives (an MQTT 5 reason code of 0x80 \
        or more rejects it to the dead-letter store); at QoS 0 once it is written to the socket. While the \
        broker is unreachable the sink reports backpressure, so nothing is dropped: the hub holds messages \
        and reconnects with exponential backoff and jitter; messages whose PUBACK was outstanding when the \
        connection dropped are sent again. With MQTT 5 and `forward_properties`, the message's `mqtt.*` \
        properties (content type, user properties, response topic, correlation data) and its content type \
        are carried as MQTT 5 properties.
        """
    static let fields: [ConfigField] = BrokerConnectionConfig.fields + [
        ConfigField("topic", .string, "Topic template.", default: #""{topic}""#, example: "hub/{tenant}/{device}/{kind}"),
        ConfigField("qos", .int, "Quality of service: 0 or 1.", default: "1"),
        ConfigField("retain", .bool, "Publish with the retain flag.", default: "false"),
        ConfigField("forward_properties", .bool, "Carry the message's MQTT 5 properties and content type.", default: "true"),
    ]

    static func check(_ config: Config) -> [ConfigFinding] { config.connection.findings }

    let config: Config
    let client: MQTTClient
    var version: MQTTVersion { client.version }

    init(config: Config, host: PluginHost) throws {
        guard config.qos == 0 || config.qos == 1 else { throw PluginError("qos must be 0 or 1") }
        self.config = config
        client = try MQTTClient(name: Self.name, config: config.connection, host: host)
    }

    func start() throws { client.start() }
    func stop() { client.stop() }

    func write(_ message: Message, ack: Ack) -> Bool {
        guard client.reserve(qos: UInt8(config.qos)) else { return false }
        client.publish(makePublish(message)) { code in
            switch code {
            case nil: ack.succeed()
            case MQTTReason.unspecified?: ack.retry("no PUBACK from \(self.client.config.server) (connection lost)")
            case let c?: ack.reject("the broker refused the message (reason code 0x\(String(c, radix: 16)))")
            }
        }
        return true
    }

    func makePublish(_ m: Message) -> MQTTPublish {
        var topic = config.topic
        for (k, v) in [("{topic}", m.topic), ("{device}", m.device), ("{tenant}", m.tenant), ("{kind}", m.kind.name)] {
            topic = topic.replacingOccurrences(of: k, with: v)
        }
        var props: [MQTTProperty] = []
        if version == .v5, config.forward_properties {
            if !m.contentType.isEmpty { props.append(.string(MQTTProperty.contentType, m.contentType)) }
            for p in m.properties {
                if p.key.hasPrefix("mqtt.user.") { props.append(.userProperty(String(p.key.dropFirst(10)), p.value)) }
                else if p.key == "mqtt.response_topic" { props.append(.string(MQTTProperty.responseTopic, p.value)) }
                else if p.key == "mqtt.correlation_data", let b = Base64.decode(p.value) { props.append(.binary(MQTTProperty.correlationData, b)) }
            }
        }
        return MQTTPublish(topic: topic, payload: m.payload, qos: UInt8(config.qos), retain: config.retain, properties: props)
    }

}
