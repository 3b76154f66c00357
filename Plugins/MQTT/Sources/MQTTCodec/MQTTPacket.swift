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
    public static let authenticationMethod: UInt8 = 0x15, authenticationData: UInt8 = 0x16
    public static let requestProblemInformation: UInt8 = 0x17, willDelayInterval: UInt8 = 0x18
    public static let requestResponseInformation: UInt8 = 0x19, responseInformation: UInt8 = 0x1A
    public static let serverReference: UInt8 = 0x1C
    public static let reasonString: UInt8 = 0x1F, receiveMaximum: UInt8 = 0x21, topicAliasMaximum: UInt8 = 0x22
    public static let topicAlias: UInt8 = 0x23, maximumQoS: UInt8 = 0x24, retainAvailable: UInt8 = 0x25, userPropertyID: UInt8 = 0x26
    public static let maximumPacketSize: UInt8 = 0x27, wildcardSubscriptionAvailable: UInt8 = 0x28
    public static let subscriptionIdentifierAvailable: UInt8 = 0x29, sharedSubscriptionAvailable: UInt8 = 0x2A

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

    /// The numeric value of an integer property.
    public var integer: UInt32? {
        switch self {
        case .byte(_, let v): UInt32(v)
        case .twoByte(_, let v): UInt32(v)
        case .fourByte(_, let v), .varInt(_, let v): v
        default: nil
        }
    }
}

extension Array where Element == MQTTProperty {
    /// The first property with this identifier.
    public func first(_ id: UInt8) -> MQTTProperty? { first { $0.identifier == id } }
    public func integer(_ id: UInt8) -> UInt32? { first(id)?.integer }
    public func string(_ id: UInt8) -> String? {
        if case .string(_, let s)? = first(id) { return s }
        return nil
    }
    public func binary(_ id: UInt8) -> [UInt8]? {
        if case .binary(_, let b)? = first(id) { return b }
        return nil
    }
}

/// The will message a client leaves in CONNECT.
public struct MQTTWill: Sendable, Equatable {
    public var topic: String
    public var payload: ByteBuffer
    public var qos: UInt8
    public var retain: Bool
    public var properties: [MQTTProperty]
    public init(topic: String, payload: ByteBuffer, qos: UInt8 = 0, retain: Bool = false, properties: [MQTTProperty] = []) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
    }
}

public struct MQTTConnect: Sendable, Equatable {
    public var version: MQTTVersion
    public var clientID: String
    public var cleanStart: Bool
    public var keepAlive: UInt16
    public var username: String?
    public var password: [UInt8]?
    public var will: MQTTWill?
    public var properties: [MQTTProperty]

    public init(version: MQTTVersion, clientID: String, cleanStart: Bool = true, keepAlive: UInt16 = 60,
                username: String? = nil, password: [UInt8]? = nil, will: MQTTWill? = nil, properties: [MQTTProperty] = []) {
        self.version = version
        self.clientID = clientID
        self.cleanStart = cleanStart
        self.keepAlive = keepAlive
        self.username = username
        self.password = password
        self.will = will
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
    public var payload: ByteBuffer
    public var qos: UInt8
    public var retain: Bool
    public var duplicate: Bool
    public var packetID: UInt16?
    public var properties: [MQTTProperty]
    public init(topic: String, payload: ByteBuffer, qos: UInt8 = 0, retain: Bool = false, duplicate: Bool = false,
                packetID: UInt16? = nil, properties: [MQTTProperty] = []) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.duplicate = duplicate
        self.packetID = packetID
        self.properties = properties
    }
    public init(topic: String, payload: [UInt8], qos: UInt8 = 0, retain: Bool = false, duplicate: Bool = false,
                packetID: UInt16? = nil, properties: [MQTTProperty] = []) {
        self.init(topic: topic, payload: ByteBuffer(bytes: payload), qos: qos, retain: retain, duplicate: duplicate,
                  packetID: packetID, properties: properties)
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

/// The options of one topic filter in SUBSCRIBE (section 3.8.3.1).
public struct MQTTSubscriptionOptions: Sendable, Equatable, Hashable {
    public var qos: UInt8
    public var noLocal: Bool
    public var retainAsPublished: Bool
    /// 0: send retained messages at subscribe; 1: only for a new subscription; 2: never.
    public var retainHandling: UInt8
    public init(qos: UInt8, noLocal: Bool = false, retainAsPublished: Bool = false, retainHandling: UInt8 = 0) {
        self.qos = qos
        self.noLocal = noLocal
        self.retainAsPublished = retainAsPublished
        self.retainHandling = retainHandling
    }
}

public struct MQTTSubscribe: Sendable, Equatable {
    public var packetID: UInt16
    public var filters: [(filter: String, options: MQTTSubscriptionOptions)]
    public var properties: [MQTTProperty]
    public init(packetID: UInt16, filters: [(filter: String, options: MQTTSubscriptionOptions)], properties: [MQTTProperty] = []) {
        self.packetID = packetID
        self.filters = filters
        self.properties = properties
    }
    public static func == (a: MQTTSubscribe, b: MQTTSubscribe) -> Bool {
        a.packetID == b.packetID && a.properties == b.properties && a.filters.count == b.filters.count
            && zip(a.filters, b.filters).allSatisfy { $0.filter == $1.filter && $0.options == $1.options }
    }
}

/// SUBACK and UNSUBACK: one reason code per topic filter.
public struct MQTTSubAck: Sendable, Equatable {
    public var packetID: UInt16
    public var reasonCodes: [UInt8]
    public var properties: [MQTTProperty]
    public init(packetID: UInt16, reasonCodes: [UInt8], properties: [MQTTProperty] = []) {
        self.packetID = packetID
        self.reasonCodes = reasonCodes
        self.properties = properties
    }
}

public struct MQTTUnsubscribe: Sendable, Equatable {
    public var packetID: UInt16
    public var filters: [String]
    public var properties: [MQTTProperty]
    public init(packetID: UInt16, filters: [String], properties: [MQTTProperty] = []) {
        self.packetID = packetID
        self.filters = filters
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
    case subscribe(MQTTSubscribe)
    case suback(MQTTSubAck)
    case unsubscribe(MQTTUnsubscribe)
    case unsuback(MQTTSubAck)
    case pingreq
    case pingresp
    case disconnect(reasonCode: UInt8, properties: [MQTTProperty])
    case auth(reasonCode: UInt8, properties: [MQTTProperty])

    /// The packet type's name, for errors and logs.
    public var name: String {
        switch self {
        case .connect: "CONNECT"
        case .connack: "CONNACK"
        case .publish: "PUBLISH"
        case .puback: "PUBACK"
        case .pubrec: "PUBREC"
        case .pubrel: "PUBREL"
        case .pubcomp: "PUBCOMP"
        case .subscribe: "SUBSCRIBE"
        case .suback: "SUBACK"
        case .unsubscribe: "UNSUBSCRIBE"
        case .unsuback: "UNSUBACK"
        case .pingreq: "PINGREQ"
        case .pingresp: "PINGRESP"
        case .disconnect: "DISCONNECT"
        case .auth: "AUTH"
        }
    }
}

/// Limits on what the decoder accepts. Defaults follow the specification's own maxima.
public struct MQTTDecoderLimits: Sendable {
    /// Largest packet accepted, fixed header included. Default 268,435,460 (the protocol maximum).
    public var maximumPacketSize: Int = 268_435_460
    public init(maximumPacketSize: Int = 268_435_460) { self.maximumPacketSize = maximumPacketSize }
}

/// MQTT 5 reason codes (section 2.4) the hub uses by name.
public enum MQTTReason {
    public static let success: UInt8 = 0x00
    public static let noMatchingSubscribers: UInt8 = 0x10
    public static let noSubscriptionExisted: UInt8 = 0x11
    public static let unspecified: UInt8 = 0x80
    public static let malformedPacket: UInt8 = 0x81
    public static let protocolError: UInt8 = 0x82
    public static let implementationSpecific: UInt8 = 0x83
    public static let unsupportedProtocolVersion: UInt8 = 0x84
    public static let clientIdentifierNotValid: UInt8 = 0x85
    public static let badUsernameOrPassword: UInt8 = 0x86
    public static let notAuthorized: UInt8 = 0x87
    public static let serverUnavailable: UInt8 = 0x88
    public static let serverBusy: UInt8 = 0x89
    public static let badAuthenticationMethod: UInt8 = 0x8C
    public static let keepAliveTimeout: UInt8 = 0x8D
    public static let sessionTakenOver: UInt8 = 0x8E
    public static let topicFilterInvalid: UInt8 = 0x8F
    public static let topicNameInvalid: UInt8 = 0x90
    public static let packetIdentifierNotFound: UInt8 = 0x92
    public static let receiveMaximumExceeded: UInt8 = 0x93
    public static let topicAliasInvalid: UInt8 = 0x94
    public static let packetTooLarge: UInt8 = 0x95
    public static let quotaExceeded: UInt8 = 0x97
    public static let administrativeAction: UInt8 = 0x98
    public static let payloadFormatInvalid: UInt8 = 0x99
    public static let retainNotSupported: UInt8 = 0x9A
    public static let qosNotSupported: UInt8 = 0x9B
    public static let sharedSubscriptionsNotSupported: UInt8 = 0x9E
    public static let subscriptionIdentifiersNotSupported: UInt8 = 0xA1
    public static let wildcardSubscriptionsNotSupported: UInt8 = 0xA2
    public static let disconnectWithWill: UInt8 = 0x04
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
