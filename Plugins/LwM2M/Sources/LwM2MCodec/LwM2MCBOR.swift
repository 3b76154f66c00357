/// CBOR (RFC 8949) as LwM2M clients send it: one value of a single resource in plain CBOR
/// (Content-Format 60, OMA-TS-LightweightM2M-Core 1.1 §7.4.6), and the LwM2M CBOR format (11544,
/// 1.2 §7.4.7): maps nested by path, each key one id or an array of ids, from the object down to a
/// resource or resource instance, e.g. `{3: {0: {0: "Open Mobile Alliance", 9: 87}}}` or
/// `{[3, 0]: {9: 87}}`. Without I/O or dependencies, so that the fuzzer builds it alone.
public enum LwM2MCBOR {
    public enum Item: Equatable, Sendable {
        case int(Int64)
        /// An unsigned integer over Int64's range.
        case unsigned(UInt64)
        case float(Double)
        case bool(Bool)
        case text(String)
        case bytes([UInt8])
        case null
    }

    public struct Error: Swift.Error, Equatable, Sendable, CustomStringConvertible {
        public var description: String
        init(_ text: String, at offset: Int) { description = "CBOR at byte \(offset): \(text)" }
    }

    /// The one value of a plain CBOR payload.
    public static func value(_ bytes: [UInt8]) throws(Error) -> Item {
        var r = Reader(bytes)
        let item = try r.leaf()
        guard r.atEnd else { throw Error("bytes after the value", at: r.i) }
        return item
    }

    /// The values of an LwM2M CBOR payload with their full paths (object, instance, resource and
    /// resource instance ids), in payload order; at most `limit` of them.
    public static func entries(_ bytes: [UInt8], limit: Int = 10_000) throws(Error) -> [(path: [UInt16], value: Item)] {
        var r = Reader(bytes)
        var out: [(path: [UInt16], value: Item)] = []
        var path: [UInt16] = []
        try r.map(&path, into: &out, limit: limit)
        guard r.atEnd else { throw Error("bytes after the map", at: r.i) }
        return out
    }

    struct Reader {
        let b: [UInt8]
        var i = 0

        init(_ b: [UInt8]) { self.b = b }

        var atEnd: Bool { i == b.count }

        mutating func byte() throws(Error) -> UInt8 {
            guard i < b.count else { throw Error("the payload ends early", at: i) }
            defer { i += 1 }
            return b[i]
        }

        /// A data item's major type and argument; `argument` is nil for an indefinite length.
        mutating func head() throws(Error) -> (major: UInt8, info: UInt8, argument: UInt64?) {
            let start = i
            let first = try byte()
            let major = first >> 5, info = first & 0x1F
            switch info {
            case 0..<24: return (major, info, UInt64(info))
            case 24, 25, 26, 27:
                var n: UInt64 = 0
                for _ in 0..<(1 << Int(info - 24)) { n = n << 8 | UInt64(try byte()) }
                return (major, info, n)
            case 31 where [2, 3, 4, 5, 7].contains(major): return (major, info, nil)
            default: throw Error("reserved additional information \(info)", at: start)
            }
        }

        /// A definite length that the rest of the payload can hold.
        func count(_ n: UInt64, at start: Int, each: Int = 1) throws(Error) -> Int {
            guard n <= UInt64(b.count - i) / UInt64(each) else { throw Error("a length of \(n) past the end of the payload", at: start) }
            return Int(n)
        }

        mutating func isBreak() -> Bool {
            guard i < b.count, b[i] == 0xFF else { return false }
            i += 1
            return true
        }

        /// A byte or text string's bytes, definite or in definite chunks of the same type.
        mutating func string(_ major: UInt8, _ argument: UInt64?, at start: Int) throws(Error) -> [UInt8] {
            if let n = argument {
                let len = try count(n, at: start)
                defer { i += len }
                return Array(b[i..<(i + len)])
            }
            var out: [UInt8] = []
            while !isBreak() {
                let at = i
                let h = try head()
                guard h.major == major, let n = h.argument else { throw Error("a chunk of an indefinite string is not a definite string of its type", at: at) }
                let len = try count(n, at: at)
                out += b[i..<(i + len)]
                i += len
            }
            return out
        }

        /// A value: a number, a string, a boolean or null, under at most one tag (epoch time, 1, or a
        /// decimal fraction, 4, among others).
        mutating func leaf(tagged: Bool = false) throws(Error) -> Item {
            let start = i
            let h = try head()
            switch h.major {
            case 0:
                let n = h.argument!
                return n <= UInt64(Int64.max) ? .int(Int64(n)) : .unsigned(n)
            case 1:
                let n = h.argument!
                guard n <= UInt64(Int64.max) else { throw Error("a negative integer under Int64's range", at: start) }
                return .int(-1 - Int64(n))
            case 2: return .bytes(try string(2, h.argument, at: start))
            case 3:
                guard let s = String(validating: try string(3, h.argument, at: start), as: UTF8.self) else { throw Error("a text string that is not UTF-8", at: start) }
                return .text(s)
            case 6:
                guard !tagged else { throw Error("a tag inside a tag", at: start) }
                if h.argument == 4 {
                    // A decimal fraction: [exponent, mantissa], mantissa × 10^exponent.
                    let at = i
                    let a = try head()
                    guard a.major == 4, a.argument == 2 else { throw Error("a decimal fraction is an array of two integers", at: at) }
                    // The exponent's range is checked without abs(), which traps on Int64.min.
                    guard case .int(let e) = try leaf(tagged: true), case .int(let m) = try leaf(tagged: true), (-400...400).contains(e) else {
                        throw Error("a decimal fraction is an array of two integers", at: at)
                    }
                    return .float(e < 0 ? Double(m) / pow10(Int(-e)) : Double(m) * pow10(Int(e)))
                }
                return try leaf(tagged: true)
            case 7:
                switch h.info {
                case 20: return .bool(false)
                case 21: return .bool(true)
                case 22, 23: return .null
                case 25: return .float(Self.half(UInt16(h.argument!)))
                case 26: return .float(Double(Float(bitPattern: UInt32(h.argument!))))
                case 27: return .float(Double(bitPattern: h.argument!))
                default: throw Error("simple value \(h.info) is not a value", at: start)
                }
            default:
                throw Error(h.major == 4 ? "an array is not a value" : "a map is not a value here", at: start)
            }
        }

        /// One map level: each key adds its ids to `path`, each value is a map one level down or a value.
        mutating func map(_ path: inout [UInt16], into out: inout [(path: [UInt16], value: Item)], limit: Int) throws(Error) {
            let start = i
            let h = try head()
            guard h.major == 5 else { throw Error("a map was expected", at: start) }
            let entries = try h.argument.map { (n) throws(Error) in try count(n, at: start, each: 2) }
            var n = 0
            while entries.map({ n < $0 }) ?? !isBreak() {
                n += 1
                let depth = path.count
                try key(&path)
                if i < b.count, b[i] >> 5 == 5 {
                    try map(&path, into: &out, limit: limit)
                } else {
                    guard path.count >= 3 else { throw Error("a value at /\(path.map(String.init).joined(separator: "/")), which is not a resource", at: i) }
                    guard out.count < limit else { throw Error("more than \(limit) values", at: i) }
                    out.append((path, try leaf()))
                }
                path.removeLast(path.count - depth)
            }
        }

        /// A key: one id, or an array of one or more ids; the path stays within four levels.
        mutating func key(_ path: inout [UInt16]) throws(Error) {
            let start = i
            let h = try head()
            func id(_ n: UInt64?) throws(Error) -> UInt16 {
                guard let n, n < 65535 else { throw Error("a path id is 0 to 65534", at: start) }
                return UInt16(n)
            }
            switch h.major {
            case 0: path.append(try id(h.argument))
            case 4:
                guard let n = h.argument, n >= 1 else { throw Error("a path key is an array of one or more ids", at: start) }
                for _ in 0..<min(n, 5) {
                    let at = i
                    let e = try head()
                    guard e.major == 0 else { throw Error("a path id is an unsigned integer", at: at) }
                    path.append(try id(e.argument))
                }
            default: throw Error("a key is an id or an array of ids", at: start)
            }
            guard path.count <= 4 else { throw Error("a path deeper than object, instance, resource and resource instance", at: start) }
        }

        static func half(_ h: UInt16) -> Double {
            let sign: Double = h & 0x8000 != 0 ? -1 : 1
            let exp = Int(h >> 10 & 0x1F), frac = Double(h & 0x3FF)
            switch exp {
            case 0: return sign * frac * 0x1p-24
            case 31: return frac == 0 ? sign * .infinity : .nan
            default: return sign * (1 + frac / 1024) * Double(sign: .plus, exponent: exp - 15, significand: 1)
            }
        }

        /// 10^e for e ≥ 0 (exact up to 10^22).
        func pow10(_ e: Int) -> Double {
            var r = 1.0
            for _ in 0..<e { r *= 10 }
            return r
        }
    }
}
