/// CBOR (RFC 8949). Integer map keys (as in SenML-CBOR) decode to their decimal text; tags are dropped
/// and their content kept; undefined decodes to null.
public enum CBOR {
    public static func decode(_ bytes: [UInt8], limits: DecodeLimits = .init()) throws(DecodeError) -> Value {
        var r = CBORReader(bytes: bytes, limits: limits)
        let v = try r.item(depth: 0)
        guard r.i == bytes.count else { throw DecodeError("unexpected data after the CBOR item", at: r.i) }
        return v
    }

    public static func encode(_ value: Value) -> [UInt8] {
        var out: [UInt8] = []
        encode(value, into: &out)
        return out
    }

    public static func encode(_ value: Value, into out: inout [UInt8]) {
        switch value {
        case .null: out.append(0xF6)
        case .bool(let b): out.append(b ? 0xF5 : 0xF4)
        case .int(let i):
            if i >= 0 { head(0, UInt64(i), &out) } else { head(1, UInt64(-1 - i), &out) }
        case .double(let d):
            if let f = Float(exactly: d) {
                out.append(0xFA)
                appendBigEndian(UInt64(f.bitPattern), bytes: 4, &out)
            } else {
                out.append(0xFB)
                appendBigEndian(d.bitPattern, bytes: 8, &out)
            }
        case .string(let s):
            head(3, UInt64(s.utf8.count), &out)
            out.append(contentsOf: s.utf8)
        case .bytes(let b):
            head(2, UInt64(b.count), &out)
            out.append(contentsOf: b)
        case .array(let a):
            head(4, UInt64(a.count), &out)
            for v in a { encode(v, into: &out) }
        case .object(let o):
            head(5, UInt64(o.count), &out)
            for (k, v) in o {
                encode(.string(k), into: &out)
                encode(v, into: &out)
            }
        }
    }

    private static func head(_ major: UInt8, _ n: UInt64, _ out: inout [UInt8]) {
        let m = major << 5
        switch n {
        case 0..<24: out.append(m | UInt8(n))
        case 24..<0x100: out += [m | 24, UInt8(n)]
        case 0x100..<0x10000: out.append(m | 25); appendBigEndian(n, bytes: 2, &out)
        case 0x10000..<0x1_0000_0000: out.append(m | 26); appendBigEndian(n, bytes: 4, &out)
        default: out.append(m | 27); appendBigEndian(n, bytes: 8, &out)
        }
    }

    private static func appendBigEndian(_ v: UInt64, bytes: Int, _ out: inout [UInt8]) {
        for k in stride(from: bytes - 1, through: 0, by: -1) { out.append(UInt8(truncatingIfNeeded: v >> (UInt64(k) * 8))) }
    }
}

struct CBORReader {
    let bytes: [UInt8]
    var i = 0
    let limits: DecodeLimits

    init(bytes: [UInt8], limits: DecodeLimits) {
        self.bytes = bytes
        self.limits = limits
    }

    mutating func byte() throws(DecodeError) -> UInt8 {
        guard i < bytes.count else { throw DecodeError("unexpected end of CBOR", at: i) }
        defer { i += 1 }
        return bytes[i]
    }

    mutating func uint(_ info: UInt8) throws(DecodeError) -> UInt64 {
        switch info {
        case 0..<24: return UInt64(info)
        case 24: return UInt64(try byte())
        case 25, 26, 27:
            let n = info == 25 ? 2 : info == 26 ? 4 : 8
            guard i + n <= bytes.count else { throw DecodeError("unexpected end of CBOR", at: i) }
            var v: UInt64 = 0
            for _ in 0..<n { v = v << 8 | UInt64(bytes[i]); i += 1 }
            return v
        default: throw DecodeError("invalid CBOR additional information \(info)", at: i - 1)
        }
    }

    mutating func length(_ info: UInt8) throws(DecodeError) -> Int? {
        if info == 31 { return nil }
        let n = try uint(info)
        guard n <= UInt64(limits.maxElements) else { throw DecodeError("CBOR length \(n) over the limit", at: i) }
        return Int(n)
    }

    mutating func isBreak() -> Bool {
        if i < bytes.count, bytes[i] == 0xFF { i += 1; return true }
        return false
    }

    mutating func chunks(_ major: UInt8, _ info: UInt8) throws(DecodeError) -> [UInt8] {
        if let n = try length(info) {
            guard i + n <= bytes.count else { throw DecodeError("CBOR string runs past the end", at: i) }
            defer { i += n }
            return Array(bytes[i..<i + n])
        }
        var out: [UInt8] = []
        while !isBreak() {
            let start = i
            let h = try byte()
            guard h >> 5 == major, h & 31 != 31 else { throw DecodeError("invalid chunk in indefinite-length string", at: start) }
            out += try chunks(major, h & 31)
            guard out.count <= limits.maxElements else { throw DecodeError("CBOR string over the limit", at: start) }
        }
        return out
    }

    mutating func item(depth: Int) throws(DecodeError) -> Value {
        guard depth <= limits.maxDepth else { throw DecodeError("CBOR nested deeper than \(limits.maxDepth)", at: i) }
        let start = i
        let h = try byte()
        let major = h >> 5, info = h & 31
        switch major {
        case 0:
            let n = try uint(info)
            guard n <= UInt64(Int64.max) else { return .double(Double(n)) }
            return .int(Int64(n))
        case 1:
            let n = try uint(info)
            guard n <= UInt64(Int64.max) else { return .double(-1 - Double(n)) }
            return .int(-1 - Int64(n))
        case 2: return .bytes(try chunks(2, info))
        case 3:
            let raw = try chunks(3, info)
            guard let s = UTF8Text.string(raw) else { throw DecodeError("invalid UTF-8 in CBOR text", at: start) }
            return .string(s)
        case 4:
            var a: [Value] = []
            if let n = try length(info) {
                for _ in 0..<n { a.append(try item(depth: depth + 1)) }
            } else {
                while !isBreak() {
                    a.append(try item(depth: depth + 1))
                    guard a.count <= limits.maxElements else { throw DecodeError("CBOR array over the limit", at: i) }
                }
            }
            return .array(a)
        case 5:
            var o = Value.Object.Builder()
            func key(_ v: Value) throws(DecodeError) -> String {
                switch v {
                case .string(let s): return s
                case .int(let n): return String(n)
                default: throw DecodeError("unsupported CBOR map key of type \(v.typeName)", at: start)
                }
            }
            if let n = try length(info) {
                for _ in 0..<n { let k = try key(try item(depth: depth + 1)); o.set(k, try item(depth: depth + 1)) }
            } else {
                while !isBreak() {
                    let k = try key(try item(depth: depth + 1))
                    o.set(k, try item(depth: depth + 1))
                    guard o.count <= limits.maxElements else { throw DecodeError("CBOR map over the limit", at: i) }
                }
            }
            return .object(o.object)
        case 6:
            _ = try uint(info)
            return try item(depth: depth + 1)
        default:
            switch info {
            case 20: return .bool(false)
            case 21: return .bool(true)
            case 22, 23: return .null
            case 25:
                let bits = UInt16(try uint(25))
                return .double(Double(Float16Bits.decode(bits)))
            case 26: return .double(Double(Float(bitPattern: UInt32(try uint(26)))))
            case 27: return .double(Double(bitPattern: try uint(27)))
            case 31: throw DecodeError("unexpected CBOR break", at: start)
            default:
                if info < 24 { return .int(Int64(info)) }
                _ = try uint(info)
                return .null
            }
        }
    }
}

/// IEEE 754 half precision, decoded by hand (Float16 is not available on every platform).
enum Float16Bits {
    static func decode(_ h: UInt16) -> Float {
        let sign: Float = h & 0x8000 != 0 ? -1 : 1
        let exp = Int(h >> 10 & 0x1F), frac = Float(h & 0x3FF)
        switch exp {
        case 0: return sign * frac * Float(sign: .plus, exponent: -24, significand: 1)
        case 31: return frac == 0 ? sign * .infinity : .nan
        default: return sign * (1 + frac / 1024) * Float(sign: .plus, exponent: exp - 15, significand: 1)
        }
    }
}
