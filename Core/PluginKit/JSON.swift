/// Strict RFC 8259 JSON.
public enum JSON {
    /// Parses a complete JSON text. Integers that fit Int64 stay integers; others become doubles.
    public static func decode(_ bytes: UnsafeRawBufferPointer, limits: DecodeLimits = .init()) throws(DecodeError) -> Value {
        var p = JSONParser(bytes.bindMemory(to: UInt8.self), limits: limits)
        p.skipSpace()
        let v = try p.value(depth: 0)
        p.skipSpace()
        guard p.i == p.b.count else { throw DecodeError("unexpected data after the JSON value", at: p.i) }
        return v
    }

    public static func decode(_ bytes: [UInt8], limits: DecodeLimits = .init()) throws(DecodeError) -> Value {
        do {
            return try bytes.withUnsafeBytes { buf in try decode(buf, limits: limits) }
        } catch let e as DecodeError {
            throw e
        } catch {
            throw DecodeError("\(error)", at: 0)
        }
    }

    public static func decode(_ text: String) throws(DecodeError) -> Value { try decode(Array(text.utf8)) }

    /// Serializes compactly. Bytes become base64 strings; NaN and infinities become null.
    public static func encode(_ value: Value) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(128)
        encode(value, into: &out)
        return out
    }

    public static func encode(_ value: Value, into out: inout [UInt8]) {
        switch value {
        case .null: out.append(contentsOf: "null".utf8)
        case .bool(let b): out.append(contentsOf: (b ? "true" : "false").utf8)
        case .int(let i): out.append(contentsOf: String(i).utf8)
        case .double(let d):
            out.append(contentsOf: (d.isFinite ? "\(d)" : "null").utf8)
        case .string(let s): encodeString(s, into: &out)
        case .bytes(let b): encodeString(Base64.encode(b), into: &out)
        case .array(let a):
            out.append(UInt8(ascii: "["))
            for (i, v) in a.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                encode(v, into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let o):
            out.append(UInt8(ascii: "{"))
            var first = true
            for (k, v) in o {
                if !first { out.append(UInt8(ascii: ",")) }
                first = false
                encodeString(k, into: &out)
                out.append(UInt8(ascii: ":"))
                encode(v, into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    public static func encodeString(_ s: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        // Most strings need no escape: they are copied whole.
        let copied = s.utf8.withContiguousStorageIfAvailable { b -> Bool in
            for c in b where c < 0x20 || c == UInt8(ascii: "\"") || c == UInt8(ascii: "\\") { return false }
            out.append(contentsOf: b)
            return true
        }
        if copied == true {
            out.append(UInt8(ascii: "\""))
            return
        }
        for c in s.utf8 {
            switch c {
            case UInt8(ascii: "\""): out.append(contentsOf: [92, 34])
            case UInt8(ascii: "\\"): out.append(contentsOf: [92, 92])
            case 0x0A: out.append(contentsOf: [92, UInt8(ascii: "n")])
            case 0x0D: out.append(contentsOf: [92, UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [92, UInt8(ascii: "t")])
            case 0..<0x20:
                let hex: [UInt8] = Array("0123456789abcdef".utf8)
                out.append(contentsOf: [92, UInt8(ascii: "u"), 48, 48, hex[Int(c >> 4)], hex[Int(c & 15)]])
            default: out.append(c)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// JSON text as a String.
    public static func string(_ value: Value) -> String { String(decoding: encode(value), as: UTF8.self) }
}

struct JSONParser {
    let b: UnsafeBufferPointer<UInt8>
    var i = 0
    let limits: DecodeLimits

    init(_ b: UnsafeBufferPointer<UInt8>, limits: DecodeLimits) {
        self.b = b
        self.limits = limits
    }

    mutating func skipSpace() {
        while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 }
    }

    mutating func value(depth: Int) throws(DecodeError) -> Value {
        guard i < b.count else { throw DecodeError(i == 0 ? "empty JSON document" : "unexpected end of JSON", at: i) }
        switch b[i] {
        case UInt8(ascii: "{"):
            guard depth < limits.maxDepth else { throw DecodeError("JSON nested deeper than \(limits.maxDepth)", at: i) }
            i += 1
            var o = Value.Object.Builder()
            skipSpace()
            if i < b.count, b[i] == UInt8(ascii: "}") { i += 1; return .object(o.object) }
            while true {
                skipSpace()
                guard i < b.count, b[i] == UInt8(ascii: "\"") else { throw DecodeError("expected a string key", at: i) }
                let key = try string()
                skipSpace()
                guard i < b.count, b[i] == UInt8(ascii: ":") else { throw DecodeError("expected ':'", at: i) }
                i += 1
                skipSpace()
                let v = try value(depth: depth + 1)
                guard o.count < limits.maxElements else { throw DecodeError("object has too many members", at: i) }
                o.set(key, v)
                skipSpace()
                guard i < b.count else { throw DecodeError("unterminated object", at: i) }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "}") { i += 1; return .object(o.object) }
                throw DecodeError("expected ',' or '}'", at: i)
            }
        case UInt8(ascii: "["):
            guard depth < limits.maxDepth else { throw DecodeError("JSON nested deeper than \(limits.maxDepth)", at: i) }
            i += 1
            var a: [Value] = []
            skipSpace()
            if i < b.count, b[i] == UInt8(ascii: "]") { i += 1; return .array(a) }
            while true {
                skipSpace()
                a.append(try value(depth: depth + 1))
                guard a.count <= limits.maxElements else { throw DecodeError("array has too many elements", at: i) }
                skipSpace()
                guard i < b.count else { throw DecodeError("unterminated array", at: i) }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "]") { i += 1; return .array(a) }
                throw DecodeError("expected ',' or ']'", at: i)
            }
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default: throw DecodeError("unexpected character '\(Unicode.Scalar(b[i]))'", at: i)
        }
    }

    mutating func literal(_ word: StaticString) throws(DecodeError) {
        let n = word.utf8CodeUnitCount
        guard i + n <= b.count else { throw DecodeError("invalid literal", at: i) }
        for k in 0..<n where b[i + k] != word.utf8Start[k] { throw DecodeError("invalid literal", at: i) }
        i += n
    }

    mutating func number() throws(DecodeError) -> Value {
        let start = i
        var isInt = true
        let negative = b[i] == UInt8(ascii: "-")
        if negative { i += 1 }
        guard i < b.count, isDigit(b[i]) else { throw DecodeError("invalid number", at: start) }
        // The digits, read as they are scanned: most numbers devices send need no text conversion.
        // `digits` holds at most 19 of them; `exact` turns false when more (or an exponent) follow.
        var digits: UInt64 = 0, count = 0, fractionDigits = 0, exact = true
        func take(_ c: UInt8) {
            if count < 19 { digits = digits &* 10 &+ UInt64(c &- 48); count += 1 } else { exact = false }
        }
        if b[i] == UInt8(ascii: "0") {
            i += 1
            if i < b.count, isDigit(b[i]) { throw DecodeError("leading zero in number", at: start) }
        } else {
            while i < b.count, isDigit(b[i]) { take(b[i]); i += 1 }
        }
        if i < b.count, b[i] == UInt8(ascii: ".") {
            isInt = false
            i += 1
            guard i < b.count, isDigit(b[i]) else { throw DecodeError("invalid number", at: start) }
            while i < b.count, isDigit(b[i]) { take(b[i]); fractionDigits += 1; i += 1 }
        }
        if i < b.count, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") {
            isInt = false
            exact = false
            i += 1
            if i < b.count, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") { i += 1 }
            guard i < b.count, isDigit(b[i]) else { throw DecodeError("invalid number", at: start) }
            while i < b.count, isDigit(b[i]) { i += 1 }
        }
        if exact {
            if isInt, digits <= UInt64(Int64.max) {
                return .int(negative ? -Int64(digits) : Int64(digits))
            }
            // A decimal of at most 15 significant digits and 22 fraction digits: both the digits and the
            // power of ten are exact doubles, so one division rounds correctly (as strtod would).
            if !isInt, digits < 1 << 53, fractionDigits <= 22 {
                let d = Double(digits) / Self.powersOfTen[fractionDigits]
                return .double(negative ? -d : d)
            }
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: b[start..<i]), as: UTF8.self)
        if isInt, let v = Int64(text) { return .int(v) }
        guard let d = Double(text), d.isFinite else { throw DecodeError("number out of range", at: start) }
        return .double(d)
    }

    private func isDigit(_ c: UInt8) -> Bool { c >= 48 && c <= 57 }

    private static let powersOfTen: [Double] = (0...22).map { k in (0..<k).reduce(1.0) { r, _ in r * 10 } }

    mutating func string() throws(DecodeError) -> String {
        let start = i
        i += 1
        let contentStart = i
        // Fast path: no escapes.
        while i < b.count {
            let c = b[i]
            if c == UInt8(ascii: "\"") {
                let slice = UnsafeBufferPointer(rebasing: b[contentStart..<i])
                i += 1
                guard let s = UTF8Text.string(slice) else { throw DecodeError("invalid UTF-8 in string", at: contentStart) }
                return s
            }
            if c == UInt8(ascii: "\\") { break }
            if c < 0x20 { throw DecodeError("control character in string", at: i) }
            i += 1
        }
        var out: [UInt8] = Array(b[contentStart..<i])
        while i < b.count {
            let c = b[i]
            if c == UInt8(ascii: "\"") {
                i += 1
                guard let s = UTF8Text.string(out) else { throw DecodeError("invalid UTF-8 in string", at: contentStart) }
                return s
            }
            if c < 0x20 { throw DecodeError("control character in string", at: i) }
            if c != UInt8(ascii: "\\") { out.append(c); i += 1; continue }
            i += 1
            guard i < b.count else { break }
            switch b[i] {
            case UInt8(ascii: "\""): out.append(34)
            case UInt8(ascii: "\\"): out.append(92)
            case UInt8(ascii: "/"): out.append(47)
            case UInt8(ascii: "b"): out.append(8)
            case UInt8(ascii: "f"): out.append(12)
            case UInt8(ascii: "n"): out.append(10)
            case UInt8(ascii: "r"): out.append(13)
            case UInt8(ascii: "t"): out.append(9)
            case UInt8(ascii: "u"):
                var scalar = try hex4(at: i + 1)
                i += 4
                if (0xD800..<0xDC00).contains(scalar) {
                    guard i + 6 < b.count, b[i + 1] == UInt8(ascii: "\\"), b[i + 2] == UInt8(ascii: "u") else {
                        throw DecodeError("unpaired surrogate in string", at: i)
                    }
                    let low = try hex4(at: i + 3)
                    guard (0xDC00..<0xE000).contains(low) else { throw DecodeError("unpaired surrogate in string", at: i) }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    i += 6
                } else if (0xDC00..<0xE000).contains(scalar) {
                    throw DecodeError("unpaired surrogate in string", at: i)
                }
                out.append(contentsOf: String(Character(Unicode.Scalar(scalar)!)).utf8)
            default: throw DecodeError("invalid escape in string", at: i)
            }
            i += 1
        }
        throw DecodeError("unterminated string", at: start)
    }

    private func hex4(at j: Int) throws(DecodeError) -> UInt32 {
        guard j + 4 <= b.count else { throw DecodeError("invalid \\u escape", at: j) }
        var v: UInt32 = 0
        for k in j..<j + 4 {
            let c = b[k]
            let d: UInt8
            switch c {
            case 48...57: d = c - 48
            case 65...70: d = c - 55
            case 97...102: d = c - 87
            default: throw DecodeError("invalid \\u escape", at: k)
            }
            v = v << 4 | UInt32(d)
        }
        return v
    }
}

/// Standard base64 (RFC 4648) without line breaks.
public enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    public static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i + 2 < bytes.count {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], alphabet[Int(n >> 6 & 63)], alphabet[Int(n & 63)]]
            i += 3
        }
        let rest = bytes.count - i
        if rest == 1 {
            let n = UInt32(bytes[i]) << 16
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], 61, 61]
        } else if rest == 2 {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], alphabet[Int(n >> 6 & 63)], 61]
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The URL and file name safe alphabet (RFC 4648 §5) without padding, as SenML's `vd` uses.
    public static func encodeURL(_ bytes: [UInt8]) -> String {
        var s = encode(bytes)
        while s.hasSuffix("=") { s.removeLast() }
        return String(s.map { $0 == "+" ? "-" : $0 == "/" ? "_" : $0 })
    }

    /// Decodes either alphabet, with or without padding.
    public static func decode(_ text: String) -> [UInt8]? {
        var out: [UInt8] = []
        var acc: UInt32 = 0, bits = 0
        for c in text.utf8 {
            let v: UInt32
            switch c {
            case 65...90: v = UInt32(c - 65)
            case 97...122: v = UInt32(c - 71)
            case 48...57: v = UInt32(c + 4)
            case 43, 45: v = 62
            case 47, 95: v = 63
            case 61: continue
            default: return nil
            }
            acc = acc << 6 | v
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(acc >> UInt32(bits) & 0xFF))
            }
        }
        return out
    }
}
