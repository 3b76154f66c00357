import NIOCore

/// MQTT protocol level in CONNECT.
public enum MQTTVersion: UInt8, Sendable {
    case v311 = 4
    case v5 = 5
}

/// An MQTT 5 property (section 2.2.2.2); MQTT 3.1.1 packets have none.
public enum MQTTProperty: Sendable, Equatable {
    case byte(UInt8, UInt8)
    case twoByte(UInt8, UInt16)
    case fourByte(UInt8, UInt32)
    case varInt(UInt8, UInt32)
    case string(UInt8, String)
    case binary(UInt8, [UInt8])
    case userProperty(String, String)

    public static let payloadFormatIndicator: UInt8 = 0x01, messageExpiryInterval: UInt8 = 0x02, contentType: UInt8 = 0x03
    public static let responseTopic: UInt8 = 0x08, correlationData: UInt8 = 0x09, subscriptionIdentifier: UInt8 = 0x0B
    public static let sessionExpiryInterval: UInt8 = 0x11, assignedClientIdentifier: UInt8 = 0x12, serverKeepAlive: UInt8 = 0x13
    public static let reasonString: UInt8 = 0x1F, receiveMaximum: UInt8 = 0x21, topicAliasMaximum: UInt8 = 0x22
    public static let topicAlias: UInt8 = 0x23, maximumQoS: UInt8 = 0x24, retainAvailable: UInt8 = 0x25, userPropertyID: UInt8 = 0x26
    public static let maximumPacketSize: UInt8 = 0x27

    /// The value type of each property identifier the specification defines.
    static func kind(_ id: UInt8) -> Character? {
        switch id {
        case 0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A: "b"
        case 0x13, 0x21, 0x22, 0x23: "2"
        case 0x02, 0x11, 0x18, 0x27: "4"
        case 0x0B: "v"
        case 0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F: "s"
        case 0x09, 0x16: "d"
        case 0x26: "p"
        default: nil
        }
    }

    public var identifier: UInt8 {
        switch self {
        case .byte(let i, _), .twoByte(let i, _), .fourByte(let i, _), .varInt(let i, _), .string(let i, _), .binary(let i, _): i
        case .userProperty: 0x26
        }
    }
}

public struct MQTTConnect: Sendable, Equatable {
    public var version: MQTTVersion
    public var clientID: String
    public var cleanStart: Bool
    public var keepAlive: UInt16
    public var username: String?
    public var password: [UInt8]?
    public var properties: [MQTTProperty]

    public init(version: MQTTVersion, clientID: String, cleanStart: Bool = true, keepAlive: UInt16 = 60,
                username: String? = nil, password: [UInt8]? = nil, properties: [MQTTProperty] = []) {
        self.version = version
        self.clientID = clientID
        self.cleanStart = cleanStart
        self.keepAlive = keepAlive
        self.username = username
        self.password = password
        self.properties = properties
    }
}

public struct MQTTConnAck: Sendable, Equatable {
    public var sessionPresent: Bool
    /// The CONNACK return code (3.1.1) or reason code (5).
    public var reasonCode: UInt8
    public var properties: [MQTTProperty]
    public init(sessionPresent: Bool, reasonCode: UInt8, properties: [MQTTProperty] = []) {
        self.sessionPresent = sessionPresent
        self.reasonCode = reasonCode
        self.properties = properties
    }
}

public struct MQTTPublish: Sendable, Equatable {
    public var topic: String
    public var payload: [UInt8]
    public var qos: UInt8
    public var retain: Bool
    public var duplicate: Bool
    public var packetID: UInt16?
    public var properties: [MQTTProperty]
    public init(topic: String, payload: [UInt8], qos: UInt8 = 0, retain: Bool = false, duplicate: Bool = false,
                packetID: UInt16? = nil, properties: [MQTTProperty] = []) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.duplicate = duplicate
        self.packetID = packetID
        self.properties = properties
    }
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP.
public struct MQTTPacketAck: Sendable, Equatable {
    public var packetID: UInt16
    public var reasonCode: UInt8
    public var properties: [MQTTProperty]
    public init(packetID: UInt16, reasonCode: UInt8 = 0, properties: [MQTTProperty] = []) {
        self.packetID = packetID
        self.reasonCode = reasonCode
        self.properties = properties
    }
}

/// An MQTT control packet.
public enum MQTTPacket: Sendable, Equatable {
    case connect(MQTTConnect)
    case connack(MQTTConnAck)
    case publish(MQTTPublish)
    case puback(MQTTPacketAck)
    case pubrec(MQTTPacketAck)
    case pubrel(MQTTPacketAck)
    case pubcomp(MQTTPacketAck)
    case pingreq
    case pingresp
    case disconnect(reasonCode: UInt8, properties: [MQTTProperty])
}

/// Limits on what the decoder accepts. Defaults follow the specification's own maxima.
public struct MQTTDecoderLimits: Sendable {
    /// Largest packet accepted, fixed header included. Default 268,435,460 (the protocol maximum).
    public var maximumPacketSize: Int = 268_435_460
    public init(maximumPacketSize: Int = 268_435_460) { self.maximumPacketSize = maximumPacketSize }
}

/// Why bytes are not a valid MQTT packet.
public struct MQTTProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    /// The MQTT 5 reason code to disconnect with (0x81 malformed, 0x82 protocol error, 0x95 too large).
    public var reasonCode: UInt8
    public init(_ description: String, reasonCode: UInt8 = 0x81) {
        self.description = description
        self.reasonCode = reasonCode
    }
}
