import IoTCPluginKit
import NIOCore

/// Decodes MQTT 3.1.1 and 5.0 packets. A server learns the version from CONNECT; a client sets it.
/// Everything the specification calls malformed, or a protocol error at the packet level, is thrown as an
/// `MQTTProtocolError` carrying the MQTT 5 reason code to disconnect with.
public struct MQTTPacketDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = MQTTPacket
    public var version: MQTTVersion?
    public var limits: MQTTDecoderLimits

    public init(version: MQTTVersion? = nil, limits: MQTTDecoderLimits = .init()) {
        self.version = version
        self.limits = limits
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> MQTTPacket? {
        let start = buffer.readerIndex
        guard let first: UInt8 = buffer.getInteger(at: start) else { return nil }
        // Remaining length: at most four bytes (section 1.5.5).
        var length = 0, multiplier = 1, index = start + 1
        while true {
            guard let b: UInt8 = buffer.getInteger(at: index) else { return nil }
            length += Int(b & 0x7F) * multiplier
            index += 1
            if b & 0x80 == 0 { break }
            multiplier *= 128
            guard index - start <= 4 else { throw MQTTProtocolError("remaining length is longer than four bytes") }
        }
        let total = index - start + length
        guard total <= limits.maximumPacketSize else {
            throw MQTTProtocolError("packet of \(total) bytes is over the maximum of \(limits.maximumPacketSize)", reasonCode: MQTTReason.packetTooLarge)
        }
        guard buffer.readableBytes >= total else { return nil }
        buffer.moveReaderIndex(to: index)
        var body = buffer.readSlice(length: length)!
        let packet = try parse(first, &body)
        guard body.readableBytes == 0 else { throw MQTTProtocolError("\(body.readableBytes) unexpected bytes at the end of the packet") }
        return packet
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> MQTTPacket? {
        try decode(buffer: &buffer)
    }

    private mutating func parse(_ first: UInt8, _ b: inout ByteBuffer) throws -> MQTTPacket {
        let type = first >> 4, flags = first & 0x0F
        func requireFlags(_ f: UInt8, _ name: String) throws {
            guard flags == f else { throw MQTTProtocolError("invalid fixed header flags for \(name)") }
        }
        if type != 1, version == nil { throw MQTTProtocolError("the first packet must be CONNECT", reasonCode: MQTTReason.protocolError) }
        let v5 = version == .v5
        switch type {
        case 1:
            try requireFlags(0, "CONNECT")
            return .connect(try connect(&b))
        case 2:
            try requireFlags(0, "CONNACK")
            guard let ackFlags: UInt8 = b.readInteger(), let code: UInt8 = b.readInteger() else { throw MQTTProtocolError("CONNACK is too short") }
            guard ackFlags & 0xFE == 0 else { throw MQTTProtocolError("CONNACK reserved flags are set") }
            return .connack(MQTTConnAck(sessionPresent: ackFlags & 1 == 1, reasonCode: code, properties: v5 ? try properties(&b, .connack) : []))
        case 3:
            let qos = (flags >> 1) & 3
            guard qos < 3 else { throw MQTTProtocolError("PUBLISH with QoS 3") }
            guard qos > 0 || flags & 0x08 == 0 else { throw MQTTProtocolError("PUBLISH at QoS 0 with the DUP flag") }
            let topic = try string(&b)
            var id: UInt16?
            if qos > 0 {
                guard let p: UInt16 = b.readInteger() else { throw MQTTProtocolError("PUBLISH without a packet identifier") }
                guard p != 0 else { throw MQTTProtocolError("PUBLISH with packet identifier 0") }
                id = p
            }
            let props = v5 ? try properties(&b, .publish) : []
            if v5 { try Self.checkResponseTopic(props) }
            if Self.hasWildcard(topic) {
                throw MQTTProtocolError("PUBLISH topic contains a wildcard", reasonCode: MQTTReason.topicNameInvalid)
            }
            if topic.isEmpty, !v5 || props.first(MQTTProperty.topicAlias) == nil {
                throw MQTTProtocolError("PUBLISH with an empty topic", reasonCode: v5 ? MQTTReason.protocolError : MQTTReason.topicNameInvalid)
            }
            let payload = b.readSlice(length: b.readableBytes)!
            return .publish(MQTTPublish(topic: topic, payload: payload, qos: qos, retain: flags & 1 == 1, duplicate: flags & 8 == 8, packetID: id, properties: props))
        case 4, 5, 6, 7:
            try requireFlags(type == 6 ? 2 : 0, ["PUBACK", "PUBREC", "PUBREL", "PUBCOMP"][Int(type) - 4])
            guard let id: UInt16 = b.readInteger() else { throw MQTTProtocolError("acknowledgement without a packet identifier") }
            guard id != 0 else { throw MQTTProtocolError("acknowledgement with packet identifier 0") }
            var ack = MQTTPacketAck(packetID: id)
            if v5, b.readableBytes > 0 {
                ack.reasonCode = b.readInteger()!
                if b.readableBytes > 0 { ack.properties = try properties(&b, .ack) }
            }
            switch type {
            case 4: return .puback(ack)
            case 5: return .pubrec(ack)
            case 6: return .pubrel(ack)
            default: return .pubcomp(ack)
            }
        case 8:
            try requireFlags(2, "SUBSCRIBE")
            let id = try packetID(&b, "SUBSCRIBE")
            let props = v5 ? try properties(&b, .subscribe) : []
            var filters: [(filter: String, options: MQTTSubscriptionOptions)] = []
            while b.readableBytes > 0 {
                let filter = try string(&b)
                guard let o: UInt8 = b.readInteger() else { throw MQTTProtocolError("SUBSCRIBE filter without options") }
                guard o & 0xC0 == 0, v5 || o & 0xFC == 0 else { throw MQTTProtocolError("SUBSCRIBE options reserved bits are set") }
                guard o & 3 != 3 else { throw MQTTProtocolError("SUBSCRIBE with QoS 3") }
                guard (o >> 4) & 3 != 3 else { throw MQTTProtocolError("SUBSCRIBE with retain handling 3", reasonCode: MQTTReason.protocolError) }
                filters.append((filter, MQTTSubscriptionOptions(qos: o & 3, noLocal: o & 4 != 0, retainAsPublished: o & 8 != 0, retainHandling: (o >> 4) & 3)))
            }
            guard !filters.isEmpty else { throw MQTTProtocolError("SUBSCRIBE without topic filters", reasonCode: MQTTReason.protocolError) }
            return .subscribe(MQTTSubscribe(packetID: id, filters: filters, properties: props))
        case 9, 11:
            try requireFlags(0, type == 9 ? "SUBACK" : "UNSUBACK")
            let id = try packetID(&b, "SUBACK")
            let props = v5 ? try properties(&b, .ack) : []
            // An MQTT 3.1.1 UNSUBACK is the packet identifier alone.
            guard v5 || type == 9 || b.readableBytes == 0 else { throw MQTTProtocolError("UNSUBACK with a payload") }
            let codes = b.readBytes(length: b.readableBytes) ?? []
            let ack = MQTTSubAck(packetID: id, reasonCodes: codes, properties: props)
            return type == 9 ? .suback(ack) : .unsuback(ack)
        case 10:
            try requireFlags(2, "UNSUBSCRIBE")
            let id = try packetID(&b, "UNSUBSCRIBE")
            let props = v5 ? try properties(&b, .unsubscribe) : []
            var filters: [String] = []
            while b.readableBytes > 0 { filters.append(try string(&b)) }
            guard !filters.isEmpty else { throw MQTTProtocolError("UNSUBSCRIBE without topic filters", reasonCode: MQTTReason.protocolError) }
            return .unsubscribe(MQTTUnsubscribe(packetID: id, filters: filters, properties: props))
        case 12:
            try requireFlags(0, "PINGREQ")
            return .pingreq
        case 13:
            try requireFlags(0, "PINGRESP")
            return .pingresp
        case 14:
            try requireFlags(0, "DISCONNECT")
            var code: UInt8 = 0, props: [MQTTProperty] = []
            if v5, b.readableBytes > 0 {
                code = b.readInteger()!
                if b.readableBytes > 0 { props = try properties(&b, .disconnect) }
            }
            return .disconnect(reasonCode: code, properties: props)
        case 15 where v5:
            try requireFlags(0, "AUTH")
            var code: UInt8 = 0, props: [MQTTProperty] = []
            if b.readableBytes > 0 {
                code = b.readInteger()!
                if b.readableBytes > 0 { props = try properties(&b, .auth) }
            }
            return .auth(reasonCode: code, properties: props)
        default:
            throw MQTTProtocolError("unknown packet type \(type)", reasonCode: MQTTReason.malformedPacket)
        }
    }

    private mutating func connect(_ b: inout ByteBuffer) throws -> MQTTConnect {
        guard let name = try? string(&b), name == "MQTT" || name == "MQIsdp" else {
            throw MQTTProtocolError("unknown protocol name", reasonCode: MQTTReason.unsupportedProtocolVersion)
        }
        guard let level: UInt8 = b.readInteger(), let v = MQTTVersion(rawValue: level), name == "MQTT" else {
            throw MQTTProtocolError("unsupported protocol level", reasonCode: MQTTReason.unsupportedProtocolVersion)
        }
        version = v
        guard let flags: UInt8 = b.readInteger(), let keepAlive: UInt16 = b.readInteger() else { throw MQTTProtocolError("CONNECT is too short") }
        guard flags & 1 == 0 else { throw MQTTProtocolError("CONNECT reserved flag is set") }
        let props = v == .v5 ? try properties(&b, .connect) : []
        var c = MQTTConnect(version: v, clientID: try string(&b), cleanStart: flags & 2 != 0, keepAlive: keepAlive, properties: props)
        let willQoS = (flags >> 3) & 3
        if flags & 4 != 0 {
            guard willQoS < 3 else { throw MQTTProtocolError("will QoS 3") }
            let willProps = v == .v5 ? try properties(&b, .will) : []
            if v == .v5 { try Self.checkResponseTopic(willProps) }
            let topic = try string(&b)
            guard !topic.isEmpty, !Self.hasWildcard(topic) else {
                throw MQTTProtocolError("will topic is not a valid topic name", reasonCode: MQTTReason.topicNameInvalid)
            }
            guard let n: UInt16 = b.readInteger(), let payload = b.readSlice(length: Int(n)) else { throw MQTTProtocolError("will payload runs past the end of the packet") }
            c.will = MQTTWill(topic: topic, payload: payload, qos: willQoS, retain: flags & 0x20 != 0, properties: willProps)
        } else if flags & 0x38 != 0 {
            throw MQTTProtocolError("will QoS or retain set without a will")
        }
        if flags & 0x80 != 0 { c.username = try string(&b) }
        else if v == .v311, flags & 0x40 != 0 { throw MQTTProtocolError("password flag set without a user name") }
        if flags & 0x40 != 0 { c.password = try binary(&b) }
        return c
    }

    private func packetID(_ b: inout ByteBuffer, _ name: String) throws -> UInt16 {
        guard let id: UInt16 = b.readInteger() else { throw MQTTProtocolError("\(name) without a packet identifier") }
        guard id != 0 else { throw MQTTProtocolError("\(name) with packet identifier 0") }
        return id
    }

    /// A UTF-8 encoded string (section 1.5.4): well-formed, and without U+0000.
    private func string(_ b: inout ByteBuffer) throws -> String {
        guard let n: UInt16 = b.readInteger(), b.readableBytes >= Int(n) else { throw MQTTProtocolError("string runs past the end of the packet") }
        let s: String? = b.withUnsafeReadableBytes { raw in
            let bytes = UnsafeRawBufferPointer(rebasing: raw[0..<Int(n)])
            guard !bytes.contains(0) else { return nil }
            return UTF8Text.string(bytes)
        }
        guard let s else { throw MQTTProtocolError("string is not well-formed UTF-8") }
        b.moveReaderIndex(forwardBy: Int(n))
        return s
    }

    private func binary(_ b: inout ByteBuffer) throws -> [UInt8] {
        guard let n: UInt16 = b.readInteger(), let bytes = b.readBytes(length: Int(n)) else { throw MQTTProtocolError("binary data runs past the end of the packet") }
        return bytes
    }

    static func variableInteger(_ b: inout ByteBuffer) throws -> UInt32 {
        var value: UInt32 = 0, shift: UInt32 = 0
        for _ in 0..<4 {
            guard let byte: UInt8 = b.readInteger() else { throw MQTTProtocolError("variable byte integer runs past the end") }
            value |= UInt32(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
        }
        throw MQTTProtocolError("variable byte integer is longer than four bytes")
    }

    /// Whether a topic has a wildcard, which topic names (as opposed to filters) must not.
    public static func hasWildcard(_ topic: String) -> Bool {
        topic.utf8.contains { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") }
    }

    /// A response topic is a topic name: at least one character, no wildcards ([MQTT-3.3.2-14]).
    static func checkResponseTopic(_ props: [MQTTProperty]) throws {
        guard case .string(_, let t)? = props.first(MQTTProperty.responseTopic) else { return }
        if t.isEmpty || hasWildcard(t) {
            throw MQTTProtocolError("the response topic is not a valid topic name", reasonCode: MQTTReason.protocolError)
        }
    }

    /// Where a property list appears; each property is allowed in some of these (section 2.2.2.2).
    enum PropertyContext: UInt16 {
        case connect = 1, connack = 2, publish = 4, will = 8, ack = 16, subscribe = 32, unsubscribe = 64, disconnect = 128, auth = 256
    }

    static func allowed(_ id: UInt8) -> UInt16 {
        switch id {
        case 0x01, 0x02, 0x03, 0x08, 0x09: 4 | 8
        case 0x0B: 4 | 32
        case 0x11: 1 | 2 | 128
        case 0x12, 0x13, 0x1A, 0x24, 0x25, 0x28, 0x29, 0x2A: 2
        case 0x15, 0x16: 1 | 2 | 256
        case 0x17, 0x19: 1
        case 0x18: 8
        case 0x1C: 2 | 128
        case 0x1F: 2 | 16 | 128 | 256
        case 0x21, 0x22, 0x27: 1 | 2
        case 0x23: 4
        case 0x26: 0x1FF
        default: 0
        }
    }

    private func properties(_ b: inout ByteBuffer, _ context: PropertyContext) throws -> [MQTTProperty] {
        let length = Int(try Self.variableInteger(&b))
        guard var p = b.readSlice(length: length) else { throw MQTTProtocolError("properties run past the end of the packet") }
        var out: [MQTTProperty] = []
        var seen: UInt64 = 0
        while p.readableBytes > 0 {
            let raw = try Self.variableInteger(&p)
            guard raw < 0x80, Self.allowed(UInt8(raw)) & context.rawValue != 0 else {
                throw MQTTProtocolError("property 0x\(String(raw, radix: 16)) is not allowed here")
            }
            let id = UInt8(raw)
            let repeatable = id == MQTTProperty.userPropertyID || (id == MQTTProperty.subscriptionIdentifier && context == .publish)
            if !repeatable {
                guard seen & (1 << UInt64(id)) == 0 else {
                    throw MQTTProtocolError("property 0x\(String(id, radix: 16)) appears twice", reasonCode: MQTTReason.protocolError)
                }
                seen |= 1 << UInt64(id)
            }
            let prop: MQTTProperty
            switch MQTTProperty.kind(id) {
            case "b"?:
                guard let v: UInt8 = p.readInteger() else { throw MQTTProtocolError("property runs past the end") }
                guard v <= 1 else { throw MQTTProtocolError("property 0x\(String(id, radix: 16)) must be 0 or 1", reasonCode: MQTTReason.protocolError) }
                prop = .byte(id, v)
            case "2"?:
                guard let v: UInt16 = p.readInteger() else { throw MQTTProtocolError("property runs past the end") }
                if v == 0, id == MQTTProperty.receiveMaximum || id == MQTTProperty.topicAlias {
                    throw MQTTProtocolError("property 0x\(String(id, radix: 16)) must not be 0", reasonCode: MQTTReason.protocolError)
                }
                prop = .twoByte(id, v)
            case "4"?:
                guard let v: UInt32 = p.readInteger() else { throw MQTTProtocolError("property runs past the end") }
                if v == 0, id == MQTTProperty.maximumPacketSize {
                    throw MQTTProtocolError("maximum packet size must not be 0", reasonCode: MQTTReason.protocolError)
                }
                prop = .fourByte(id, v)
            case "v"?:
                let v = try Self.variableInteger(&p)
                guard v != 0 else { throw MQTTProtocolError("subscription identifier 0", reasonCode: MQTTReason.protocolError) }
                prop = .varInt(id, v)
            case "s"?: prop = .string(id, try string(&p))
            case "d"?: prop = .binary(id, try binary(&p))
            case "p"?: prop = .userProperty(try string(&p), try string(&p))
            default: throw MQTTProtocolError("unknown property identifier 0x\(String(id, radix: 16))")
            }
            out.append(prop)
        }
        return out
    }
}

/// Encodes MQTT packets for the version given.
public struct MQTTPacketEncoder: MessageToByteEncoder {
    public typealias OutboundIn = MQTTPacket
    public var version: MQTTVersion

    public init(version: MQTTVersion) { self.version = version }

    public func encode(data: MQTTPacket, out: inout ByteBuffer) throws {
        Self.write(data, version: version, into: &out)
    }

    /// The encoded size of one property, identifier included.
    public static func propertySize(_ p: MQTTProperty) -> Int {
        switch p {
        case .byte: 2
        case .twoByte: 3
        case .fourByte: 5
        case .varInt(_, let v): 1 + variableIntegerSize(v)
        case .string(_, let s): 3 + s.utf8.count
        case .binary(_, let b): 3 + b.count
        case .userProperty(let k, let v): 5 + k.utf8.count + v.utf8.count
        }
    }

    /// The per-delivery parts of a PUBLISH that a broker adds to a message's own properties.
    public struct PublishExtras: Sendable {
        public var messageExpiry: UInt32?
        public var topicAlias: UInt16?
        public var subscriptionIdentifiers: [UInt32]
        public init(messageExpiry: UInt32? = nil, topicAlias: UInt16? = nil, subscriptionIdentifiers: [UInt32] = []) {
            self.messageExpiry = messageExpiry
            self.topicAlias = topicAlias
            self.subscriptionIdentifiers = subscriptionIdentifiers
        }
    }

    /// The encoded size of a PUBLISH, fixed header included. `properties` nil means MQTT 3.1.1.
    public static func publishSize(topicLength: Int, payloadLength: Int, qos: UInt8, properties: [MQTTProperty]?, extras: PublishExtras) -> Int {
        var body = 2 + topicLength + payloadLength + (qos > 0 ? 2 : 0)
        if let properties {
            let p = propertiesSize(properties, extras)
            body += variableIntegerSize(UInt32(p)) + p
        }
        return 1 + variableIntegerSize(UInt32(body)) + body
    }

    static func propertiesSize(_ properties: [MQTTProperty]) -> Int {
        var n = 0
        for p in properties { n += propertySize(p) }
        return n
    }

    static func propertiesSize(_ properties: [MQTTProperty], _ extras: PublishExtras) -> Int {
        var n = propertiesSize(properties)
        if extras.messageExpiry != nil { n += 5 }
        if extras.topicAlias != nil { n += 3 }
        for id in extras.subscriptionIdentifiers { n += 1 + variableIntegerSize(id) }
        return n
    }

    /// Appends a PUBLISH straight into `out`, without an intermediate buffer: the broker's hot path.
    /// `properties` nil means MQTT 3.1.1 (no property section).
    public static func writePublish(topic: String, payload: ByteBuffer, qos: UInt8, retain: Bool, duplicate: Bool,
                                    packetID: UInt16, properties: [MQTTProperty]?, extras: PublishExtras = .init(),
                                    into out: inout ByteBuffer) {
        let topicLength = topic.utf8.count
        var body = 2 + topicLength + payload.readableBytes + (qos > 0 ? 2 : 0)
        var propLength = 0
        if let properties {
            propLength = propertiesSize(properties, extras)
            body += variableIntegerSize(UInt32(propLength)) + propLength
        }
        out.writeInteger(UInt8(0x30) | (duplicate ? 8 : 0) | (qos << 1) | (retain ? 1 : 0))
        writeVariableInteger(UInt32(body), &out)
        out.writeInteger(UInt16(topicLength))
        out.writeString(topic)
        if qos > 0 { out.writeInteger(packetID) }
        if let properties {
            writeVariableInteger(UInt32(propLength), &out)
            writePropertyList(properties, &out)
            if let e = extras.messageExpiry {
                out.writeInteger(MQTTProperty.messageExpiryInterval)
                out.writeInteger(e)
            }
            if let a = extras.topicAlias {
                out.writeInteger(MQTTProperty.topicAlias)
                out.writeInteger(a)
            }
            for id in extras.subscriptionIdentifiers {
                out.writeInteger(MQTTProperty.subscriptionIdentifier)
                writeVariableInteger(id, &out)
            }
        }
        out.writeImmutableBuffer(payload)
    }

    /// Appends a PUBACK, PUBREC, PUBREL or PUBCOMP to `out`, sized first and written in place: one of
    /// these answers every QoS 1 and 2 message, and a body built in a buffer of its own cost two
    /// allocations each. The reason code and property length are left out when they may be (success,
    /// no properties), as in MQTT 3.1.1.
    static func writeAck(_ first: UInt8, _ a: MQTTPacketAck, v5: Bool, into out: inout ByteBuffer) {
        let full = v5 && (a.reasonCode != 0 || !a.properties.isEmpty)
        let withProperties = full && !a.properties.isEmpty
        let propLength = withProperties ? propertiesSize(a.properties) : 0
        let body = 2 + (full ? 1 : 0) + (withProperties ? variableIntegerSize(UInt32(propLength)) + propLength : 0)
        out.writeInteger(first)
        writeVariableInteger(UInt32(body), &out)
        out.writeInteger(a.packetID)
        guard full else { return }
        out.writeInteger(a.reasonCode)
        if withProperties {
            writeVariableInteger(UInt32(propLength), &out)
            writePropertyList(a.properties, &out)
        }
    }

    /// Appends one packet to `out`.
    public static func write(_ packet: MQTTPacket, version: MQTTVersion, into out: inout ByteBuffer) {
        let v5 = version == .v5
        var body = ByteBuffer()  // shares an empty storage: nothing is allocated until a packet writes to it
        let first: UInt8
        switch packet {
        case .connect(let c):
            first = 0x10
            writeString("MQTT", &body)
            body.writeInteger(c.version.rawValue)
            var flags: UInt8 = c.cleanStart ? 2 : 0
            if c.username != nil { flags |= 0x80 }
            if c.password != nil { flags |= 0x40 }
            if let w = c.will { flags |= 4 | (w.qos << 3) | (w.retain ? 0x20 : 0) }
            body.writeInteger(flags)
            body.writeInteger(c.keepAlive)
            if c.version == .v5 { writeProperties(c.properties, &body) }
            writeString(c.clientID, &body)
            if let w = c.will {
                if c.version == .v5 { writeProperties(w.properties, &body) }
                writeString(w.topic, &body)
                body.writeInteger(UInt16(w.payload.readableBytes))
                body.writeImmutableBuffer(w.payload)
            }
            if let u = c.username { writeString(u, &body) }
            if let p = c.password { writeBinary(p, &body) }
        case .connack(let a):
            first = 0x20
            body.writeInteger(UInt8(a.sessionPresent ? 1 : 0))
            body.writeInteger(a.reasonCode)
            if v5 { writeProperties(a.properties, &body) }
        case .publish(let p):
            writePublish(topic: p.topic, payload: p.payload, qos: p.qos, retain: p.retain, duplicate: p.duplicate,
                         packetID: p.packetID ?? 0, properties: v5 ? p.properties : nil, into: &out)
            return
        case .puback(let a): return writeAck(0x40, a, v5: v5, into: &out)
        case .pubrec(let a): return writeAck(0x50, a, v5: v5, into: &out)
        case .pubrel(let a): return writeAck(0x62, a, v5: v5, into: &out)
        case .pubcomp(let a): return writeAck(0x70, a, v5: v5, into: &out)
        case .subscribe(let s):
            first = 0x82
            body.writeInteger(s.packetID)
            if v5 { writeProperties(s.properties, &body) }
            for f in s.filters {
                writeString(f.filter, &body)
                let o = f.options
                body.writeInteger(o.qos | (o.noLocal ? 4 : 0) | (o.retainAsPublished ? 8 : 0) | (o.retainHandling << 4))
            }
        case .suback(let a), .unsuback(let a):
            if case .suback = packet { first = 0x90 } else { first = 0xB0 }
            body.writeInteger(a.packetID)
            if v5 { writeProperties(a.properties, &body) }
            // An MQTT 3.1.1 UNSUBACK has no payload.
            if v5 || first == 0x90 { body.writeBytes(a.reasonCodes) }
        case .unsubscribe(let u):
            first = 0xA2
            body.writeInteger(u.packetID)
            if v5 { writeProperties(u.properties, &body) }
            for f in u.filters { writeString(f, &body) }
        case .pingreq: first = 0xC0
        case .pingresp: first = 0xD0
        case .disconnect(let code, let props):
            first = 0xE0
            if v5, code != 0 || !props.isEmpty {
                body.writeInteger(code)
                if !props.isEmpty { writeProperties(props, &body) }
            }
        case .auth(let code, let props):
            first = 0xF0
            if code != 0 || !props.isEmpty {
                body.writeInteger(code)
                if !props.isEmpty { writeProperties(props, &body) }
            }
        }
        out.writeInteger(first)
        writeVariableInteger(UInt32(body.readableBytes), &out)
        out.writeBuffer(&body)
    }

    public static func variableIntegerSize(_ v: UInt32) -> Int {
        v < 128 ? 1 : v < 16_384 ? 2 : v < 2_097_152 ? 3 : 4
    }

    public static func writeVariableInteger(_ value: UInt32, _ out: inout ByteBuffer) {
        var v = value
        repeat {
            var byte = UInt8(v & 0x7F)
            v >>= 7
            if v > 0 { byte |= 0x80 }
            out.writeInteger(byte)
        } while v > 0
    }

    static func writeString(_ s: String, _ out: inout ByteBuffer) {
        out.writeInteger(UInt16(s.utf8.count))
        out.writeString(s)
    }

    static func writeBinary(_ b: [UInt8], _ out: inout ByteBuffer) {
        out.writeInteger(UInt16(b.count))
        out.writeBytes(b)
    }

    /// Writes properties without the length prefix.
    public static func writePropertyList(_ props: [MQTTProperty], _ p: inout ByteBuffer) {
        for prop in props {
            writeVariableInteger(UInt32(prop.identifier), &p)
            switch prop {
            case .byte(_, let v): p.writeInteger(v)
            case .twoByte(_, let v): p.writeInteger(v)
            case .fourByte(_, let v): p.writeInteger(v)
            case .varInt(_, let v): writeVariableInteger(v, &p)
            case .string(_, let s): writeString(s, &p)
            case .binary(_, let b): writeBinary(b, &p)
            case .userProperty(let k, let v):
                writeString(k, &p)
                writeString(v, &p)
            }
        }
    }

    /// The property length, then the properties: sized first, written in place.
    static func writeProperties(_ props: [MQTTProperty], _ out: inout ByteBuffer) {
        writeVariableInteger(UInt32(propertiesSize(props)), &out)
        writePropertyList(props, &out)
    }
}
