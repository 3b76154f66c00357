import NIOCore

/// Decodes MQTT 3.1.1 and 5.0 packets. A server learns the version from CONNECT; a client sets it.
public struct MQTTPacketDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = MQTTPacket
    public var version: MQTTVersion?
    public let limits: MQTTDecoderLimits

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
            throw MQTTProtocolError("packet of \(total) bytes is over the maximum of \(limits.maximumPacketSize)", reasonCode: 0x95)
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
        switch type {
        case 1:
            try requireFlags(0, "CONNECT")
            return .connect(try connect(&b))
        case 2:
            try requireFlags(0, "CONNACK")
            guard let ackFlags: UInt8 = b.readInteger(), let code: UInt8 = b.readInteger() else { throw MQTTProtocolError("CONNACK is too short") }
            guard ackFlags & 0xFE == 0 else { throw MQTTProtocolError("CONNACK reserved flags are set") }
            return .connack(MQTTConnAck(sessionPresent: ackFlags & 1 == 1, reasonCode: code, properties: version == .v5 ? try properties(&b) : []))
        case 3:
            let qos = (flags >> 1) & 3
            guard qos < 3 else { throw MQTTProtocolError("PUBLISH with QoS 3") }
            guard qos > 0 || flags & 0x08 == 0 else { throw MQTTProtocolError("PUBLISH at QoS 0 with the DUP flag") }
            let topic = try string(&b)
            var id: UInt16?
            if qos > 0 {
                guard let p: UInt16 = b.readInteger(), p != 0 else { throw MQTTProtocolError("PUBLISH without a packet identifier") }
                id = p
            }
            let props = version == .v5 ? try properties(&b) : []
            let payload = b.readBytes(length: b.readableBytes) ?? []
            return .publish(MQTTPublish(topic: topic, payload: payload, qos: qos, retain: flags & 1 == 1, duplicate: flags & 8 == 8, packetID: id, properties: props))
        case 4, 5, 6, 7:
            try requireFlags(type == 6 ? 2 : 0, ["PUBACK", "PUBREC", "PUBREL", "PUBCOMP"][Int(type) - 4])
            guard let id: UInt16 = b.readInteger() else { throw MQTTProtocolError("acknowledgement without a packet identifier") }
            var ack = MQTTPacketAck(packetID: id)
            if version == .v5, b.readableBytes > 0 {
                ack.reasonCode = b.readInteger()!
                if b.readableBytes > 0 { ack.properties = try properties(&b) }
            }
            switch type {
            case 4: return .puback(ack)
            case 5: return .pubrec(ack)
            case 6: return .pubrel(ack)
            default: return .pubcomp(ack)
            }
        case 12:
            try requireFlags(0, "PINGREQ")
            return .pingreq
        case 13:
            try requireFlags(0, "PINGRESP")
            return .pingresp
        case 14:
            try requireFlags(0, "DISCONNECT")
            var code: UInt8 = 0, props: [MQTTProperty] = []
            if version == .v5, b.readableBytes > 0 {
                code = b.readInteger()!
                if b.readableBytes > 0 { props = try properties(&b) }
            }
            return .disconnect(reasonCode: code, properties: props)
        default:
            throw MQTTProtocolError("unsupported packet type \(type)", reasonCode: 0x82)
        }
    }

    private mutating func connect(_ b: inout ByteBuffer) throws -> MQTTConnect {
        guard try string(&b) == "MQTT" else { throw MQTTProtocolError("unknown protocol name", reasonCode: 0x84) }
        guard let level: UInt8 = b.readInteger(), let v = MQTTVersion(rawValue: level) else {
            throw MQTTProtocolError("unsupported protocol level", reasonCode: 0x84)
        }
        version = v
        guard let flags: UInt8 = b.readInteger(), let keepAlive: UInt16 = b.readInteger() else { throw MQTTProtocolError("CONNECT is too short") }
        guard flags & 1 == 0 else { throw MQTTProtocolError("CONNECT reserved flag is set") }
        let props = v == .v5 ? try properties(&b) : []
        var c = MQTTConnect(version: v, clientID: try string(&b), cleanStart: flags & 2 != 0, keepAlive: keepAlive, properties: props)
        if flags & 4 != 0 {
            // Will message: read and drop here; the server issue adds will handling.
            if v == .v5 { _ = try properties(&b) }
            _ = try string(&b)
            _ = try binary(&b)
        } else if flags & 0x38 != 0 {
            throw MQTTProtocolError("will QoS or retain set without a will")
        }
        if flags & 0x80 != 0 { c.username = try string(&b) }
        if flags & 0x40 != 0 { c.password = try binary(&b) }
        return c
    }

    private func string(_ b: inout ByteBuffer) throws -> String {
        guard let n: UInt16 = b.readInteger(), let bytes = b.readBytes(length: Int(n)) else { throw MQTTProtocolError("string runs past the end of the packet") }
        guard let s = String(validating: bytes, as: UTF8.self), !s.unicodeScalars.contains(where: { $0.value == 0 }) else {
            throw MQTTProtocolError("string is not well-formed UTF-8")
        }
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

    private func properties(_ b: inout ByteBuffer) throws -> [MQTTProperty] {
        let length = Int(try Self.variableInteger(&b))
        guard var p = b.readSlice(length: length) else { throw MQTTProtocolError("properties run past the end of the packet") }
        var out: [MQTTProperty] = []
        while p.readableBytes > 0 {
            let id = UInt8(try Self.variableInteger(&p))
            switch MQTTProperty.kind(id) {
            case "b"?:
                guard let v: UInt8 = p.readInteger() else { throw MQTTProtocolError("property runs past the end") }
                out.append(.byte(id, v))
            case "2"?:
                guard let v: UInt16 = p.readInteger() else { throw MQTTProtocolError("property runs past the end") }
                out.append(.twoByte(id, v))
            case "4"?:
                guard let v: UInt32 = p.readInteger() else { throw MQTTProtocolError("property runs past the end") }
                out.append(.fourByte(id, v))
            case "v"?: out.append(.varInt(id, try Self.variableInteger(&p)))
            case "s"?: out.append(.string(id, try string(&p)))
            case "d"?: out.append(.binary(id, try binary(&p)))
            case "p"?: out.append(.userProperty(try string(&p), try string(&p)))
            default: throw MQTTProtocolError("unknown property identifier 0x\(String(id, radix: 16))")
            }
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

    /// Appends one packet to `out`.
    public static func write(_ packet: MQTTPacket, version: MQTTVersion, into out: inout ByteBuffer) {
        var body = ByteBuffer()
        let v5 = version == .v5
        let first: UInt8
        switch packet {
        case .connect(let c):
            first = 0x10
            writeString("MQTT", &body)
            body.writeInteger(c.version.rawValue)
            var flags: UInt8 = c.cleanStart ? 2 : 0
            if c.username != nil { flags |= 0x80 }
            if c.password != nil { flags |= 0x40 }
            body.writeInteger(flags)
            body.writeInteger(c.keepAlive)
            if c.version == .v5 { writeProperties(c.properties, &body) }
            writeString(c.clientID, &body)
            if let u = c.username { writeString(u, &body) }
            if let p = c.password { writeBinary(p, &body) }
        case .connack(let a):
            first = 0x20
            body.writeInteger(UInt8(a.sessionPresent ? 1 : 0))
            body.writeInteger(a.reasonCode)
            if v5 { writeProperties(a.properties, &body) }
        case .publish(let p):
            first = 0x30 | (p.duplicate ? 8 : 0) | (p.qos << 1) | (p.retain ? 1 : 0)
            writeString(p.topic, &body)
            if p.qos > 0 { body.writeInteger(p.packetID ?? 0) }
            if v5 { writeProperties(p.properties, &body) }
            body.writeBytes(p.payload)
        case .puback(let a), .pubrec(let a), .pubrel(let a), .pubcomp(let a):
            switch packet {
            case .puback: first = 0x40
            case .pubrec: first = 0x50
            case .pubrel: first = 0x62
            default: first = 0x70
            }
            body.writeInteger(a.packetID)
            if v5, a.reasonCode != 0 || !a.properties.isEmpty {
                body.writeInteger(a.reasonCode)
                if !a.properties.isEmpty { writeProperties(a.properties, &body) }
            }
        case .pingreq: first = 0xC0
        case .pingresp: first = 0xD0
        case .disconnect(let code, let props):
            first = 0xE0
            if v5, code != 0 || !props.isEmpty {
                body.writeInteger(code)
                if !props.isEmpty { writeProperties(props, &body) }
            }
        }
        out.writeInteger(first)
        writeVariableInteger(UInt32(body.readableBytes), &out)
        out.writeBuffer(&body)
    }

    static func writeVariableInteger(_ value: UInt32, _ out: inout ByteBuffer) {
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

    static func writeProperties(_ props: [MQTTProperty], _ out: inout ByteBuffer) {
        var p = ByteBuffer()
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
        writeVariableInteger(UInt32(p.readableBytes), &out)
        out.writeBuffer(&p)
    }
}
