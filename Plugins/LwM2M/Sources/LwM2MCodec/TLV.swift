/// The OMA LwM2M TLV content format (application/vnd.oma.lwm2m+tlv, Content-Format 11542; OMA-TS-
/// LightweightM2M-Core 1.1 §7.4.3): object instances, resources, multiple resources and resource
/// instances, nested at most object instance → multiple resource → resource instance.
public enum TLV {
    public enum Kind: UInt8, Sendable {
        case objectInstance = 0
        case resourceInstance = 1
        case multipleResource = 2
        case resource = 3
    }

    /// One TLV: a value for resources and resource instances, children for object instances and
    /// multiple resources.
    public struct Entry: Sendable, Equatable {
        public var kind: Kind
        public var id: UInt16
        public var value: [UInt8]
        public var children: [Entry]

        public init(kind: Kind, id: UInt16, value: [UInt8] = [], children: [Entry] = []) {
            self.kind = kind
            self.id = id
            self.value = value
            self.children = children
        }
    }

    public struct Error: Swift.Error, Sendable, Equatable, CustomStringConvertible {
        public var offset: Int
        public var reason: String
        public var description: String { "TLV at byte \(offset): \(reason)" }
    }

    /// Decodes a TLV payload. Throws on truncation, a length that runs past its container, or a
    /// nesting the format does not allow.
    public static func decode(_ bytes: [UInt8]) throws(Error) -> [Entry] {
        try bytes.withUnsafeBufferPointer { (b) throws(Error) -> [Entry] in try decode(b, from: 0, to: b.count, inside: nil) }
    }

    private static func decode(_ b: UnsafeBufferPointer<UInt8>, from start: Int, to end: Int, inside parent: Kind?) throws(Error) -> [Entry] {
        var i = start
        var out: [Entry] = []
        while i < end {
            let at = i
            let type = b[i]
            i += 1
            guard let kind = Kind(rawValue: type >> 6) else { throw Error(offset: at, reason: "bad type") }
            let idBytes = type & 0x20 != 0 ? 2 : 1
            let lengthBytes = Int(type >> 3 & 0x3)
            guard end - i >= idBytes + lengthBytes else { throw Error(offset: at, reason: "truncated header") }
            var id: UInt16 = 0
            for _ in 0..<idBytes { id = id << 8 | UInt16(b[i]); i += 1 }
            var length = Int(type & 0x7)
            if lengthBytes > 0 {
                length = 0
                for _ in 0..<lengthBytes { length = length << 8 | Int(b[i]); i += 1 }
            }
            guard length <= end - i else { throw Error(offset: at, reason: "a length of \(length) runs past the end") }
            switch (parent, kind) {
            case (nil, _), (.objectInstance?, .resource), (.objectInstance?, .multipleResource), (.multipleResource?, .resourceInstance): break
            default: throw Error(offset: at, reason: "\(kind) inside \(parent.map { "\($0)" } ?? "the payload")")
            }
            var entry = Entry(kind: kind, id: id)
            switch kind {
            case .objectInstance, .multipleResource: entry.children = try decode(b, from: i, to: i + length, inside: kind)
            case .resource, .resourceInstance: entry.value = Array(b[i..<i + length])
            }
            out.append(entry)
            i += length
        }
        return out
    }

    /// Encodes entries (lengths in the shortest form).
    public static func encode(_ entries: [Entry]) -> [UInt8] {
        var out: [UInt8] = []
        for e in entries { encode(e, into: &out) }
        return out
    }

    private static func encode(_ e: Entry, into out: inout [UInt8]) {
        let body: [UInt8]
        switch e.kind {
        case .objectInstance, .multipleResource: body = encode(e.children)
        case .resource, .resourceInstance: body = e.value
        }
        var type = e.kind.rawValue << 6
        if e.id > 0xFF { type |= 0x20 }
        let n = body.count
        if n < 8 { type |= UInt8(n) } else if n <= 0xFF { type |= 0x08 } else if n <= 0xFFFF { type |= 0x10 } else { type |= 0x18 }
        out.append(type)
        if e.id > 0xFF { out.append(UInt8(e.id >> 8)) }
        out.append(UInt8(e.id & 0xFF))
        if n >= 8 {
            let width = n <= 0xFF ? 1 : n <= 0xFFFF ? 2 : 3
            for k in stride(from: width - 1, through: 0, by: -1) { out.append(UInt8(n >> (8 * k) & 0xFF)) }
        }
        out.append(contentsOf: body)
    }

    // MARK: values (OMA-TS-LightweightM2M-Core 1.1 Appendix C)

    /// A signed big-endian integer of 1, 2, 4 or 8 bytes.
    public static func integer(_ v: [UInt8]) -> Int64? {
        guard [1, 2, 4, 8].contains(v.count) else { return nil }
        var x: Int64 = v[0] & 0x80 != 0 ? -1 : 0
        for byte in v { x = x << 8 | Int64(byte) }
        return x
    }

    /// An IEEE 754 float of 4 or 8 bytes.
    public static func float(_ v: [UInt8]) -> Double? {
        switch v.count {
        case 4: return Double(Float(bitPattern: v.reduce(UInt32(0)) { $0 << 8 | UInt32($1) }))
        case 8: return Double(bitPattern: v.reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        default: return nil
        }
    }

    /// A boolean: one byte, 0 or 1.
    public static func boolean(_ v: [UInt8]) -> Bool? { v.count == 1 && v[0] <= 1 ? v[0] == 1 : nil }

    /// An object link: object id and instance id, two bytes each.
    public static func objectLink(_ v: [UInt8]) -> (object: UInt16, instance: UInt16)? {
        guard v.count == 4 else { return nil }
        return (UInt16(v[0]) << 8 | UInt16(v[1]), UInt16(v[2]) << 8 | UInt16(v[3]))
    }

    /// The shortest encoding of an integer.
    public static func bytes(integer x: Int64) -> [UInt8] {
        let width = Int64(Int8.min)...Int64(Int8.max) ~= x ? 1 : Int64(Int16.min)...Int64(Int16.max) ~= x ? 2 : Int64(Int32.min)...Int64(Int32.max) ~= x ? 4 : 8
        return (0..<width).reversed().map { UInt8(truncatingIfNeeded: x >> (8 * $0)) }
    }

    /// An 8-byte float.
    public static func bytes(float x: Double) -> [UInt8] { (0..<8).reversed().map { UInt8(truncatingIfNeeded: x.bitPattern >> (8 * UInt64($0))) } }
}
