/// Classifies content types by their bytes: `application/json; charset=utf-8`, `application/senml+cbor`.
/// On the per-message path, so it avoids Foundation and allocation.
public enum MediaType: Sendable, Equatable {
    case json
    case cbor
    case other

    public init(_ contentType: String) {
        // What most messages say (a decode step labels them so): a comparison instead of a parse.
        if contentType == "application/json" {
            self = .json
            return
        }
        var s = contentType
        self = s.withUTF8 { MediaType.classify($0) }
    }

    static func classify(_ b: UnsafeBufferPointer<UInt8>) -> MediaType {
        var start = 0, end = b.count
        if let semicolon = b.firstIndex(of: UInt8(ascii: ";")) { end = semicolon }
        while start < end, b[start] == 0x20 || b[start] == 0x09 { start += 1 }
        while end > start, b[end - 1] == 0x20 || b[end - 1] == 0x09 { end -= 1 }
        let t = UnsafeBufferPointer(rebasing: b[start..<end])
        func equals(_ s: StaticString, at offset: Int = 0) -> Bool {
            let n = s.utf8CodeUnitCount
            guard t.count - offset == n else { return false }
            for k in 0..<n where t[offset + k] | 0x20 != s.utf8Start[k] | 0x20 { return false }
            return true
        }
        func hasSuffix(_ s: StaticString) -> Bool {
            let n = s.utf8CodeUnitCount
            return t.count > n && equals(s, at: t.count - n)
        }
        if equals("application/json") || equals("text/json") || hasSuffix("+json") { return .json }
        if equals("application/cbor") || hasSuffix("+cbor") { return .cbor }
        return .other
    }
}

extension JSON {
    /// Whether the bytes are one well-formed JSON text (RFC 8259, UTF-8), checked without building
    /// values. Same grammar and limits as `decode`.
    public static func validate(_ bytes: [UInt8], limits: DecodeLimits = .init()) -> Bool {
        bytes.withUnsafeBufferPointer { b in
            var v = JSONValidator(b: b, maxDepth: limits.maxDepth)
            v.space()
            guard v.value(0) else { return false }
            v.space()
            return v.i == b.count
        }
    }
}

struct JSONValidator {
    let b: UnsafeBufferPointer<UInt8>
    let maxDepth: Int
    var i = 0

    init(b: UnsafeBufferPointer<UInt8>, maxDepth: Int) {
        self.b = b
        self.maxDepth = maxDepth
    }

    mutating func space() { while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 } }

    mutating func value(_ depth: Int) -> Bool {
        guard i < b.count else { return false }
        switch b[i] {
        case UInt8(ascii: "{"):
            guard depth < maxDepth else { return false }
            i += 1
            space()
            if i < b.count, b[i] == UInt8(ascii: "}") { i += 1; return true }
            while true {
                space()
                guard i < b.count, b[i] == UInt8(ascii: "\""), string() else { return false }
                space()
                guard i < b.count, b[i] == UInt8(ascii: ":") else { return false }
                i += 1
                space()
                guard value(depth + 1) else { return false }
                space()
                guard i < b.count else { return false }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "}") { i += 1; return true }
                return false
            }
        case UInt8(ascii: "["):
            guard depth < maxDepth else { return false }
            i += 1
            space()
            if i < b.count, b[i] == UInt8(ascii: "]") { i += 1; return true }
            while true {
                space()
                guard value(depth + 1) else { return false }
                space()
                guard i < b.count else { return false }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "]") { i += 1; return true }
                return false
            }
        case UInt8(ascii: "\""): return string()
        case UInt8(ascii: "t"): return literal("true")
        case UInt8(ascii: "f"): return literal("false")
        case UInt8(ascii: "n"): return literal("null")
        default: return number()
        }
    }

    mutating func literal(_ w: StaticString) -> Bool {
        let n = w.utf8CodeUnitCount
        guard i + n <= b.count else { return false }
        for k in 0..<n where b[i + k] != w.utf8Start[k] { return false }
        i += n
        return true
    }

    mutating func digits() -> Bool {
        let start = i
        while i < b.count, b[i] >= 48, b[i] <= 57 { i += 1 }
        return i > start
    }

    mutating func number() -> Bool {
        if i < b.count, b[i] == UInt8(ascii: "-") { i += 1 }
        guard i < b.count else { return false }
        if b[i] == UInt8(ascii: "0") {
            i += 1
            if i < b.count, b[i] >= 48, b[i] <= 57 { return false }
        } else if !digits() {
            return false
        }
        if i < b.count, b[i] == UInt8(ascii: ".") {
            i += 1
            guard digits() else { return false }
        }
        if i < b.count, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") {
            i += 1
            if i < b.count, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") { i += 1 }
            guard digits() else { return false }
        }
        return true
    }

    /// A string, with escapes and UTF-8 checked (including unpaired surrogate escapes).
    mutating func string() -> Bool {
        i += 1
        while i < b.count {
            let c = b[i]
            switch c {
            case UInt8(ascii: "\""):
                i += 1
                return true
            case UInt8(ascii: "\\"):
                i += 1
                guard i < b.count else { return false }
                switch b[i] {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                     UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                    i += 1
                case UInt8(ascii: "u"):
                    guard let u = hex4(i + 1) else { return false }
                    i += 5
                    if (0xD800..<0xDC00).contains(u) {
                        guard i + 6 <= b.count, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u"),
                              let low = hex4(i + 2), (0xDC00..<0xE000).contains(low) else { return false }
                        i += 6
                    } else if (0xDC00..<0xE000).contains(u) {
                        return false
                    }
                default: return false
                }
            case 0..<0x20: return false
            case 0..<0x80: i += 1
            default:
                guard utf8Sequence() else { return false }
            }
        }
        return false
    }

    private func hex4(_ j: Int) -> UInt32? {
        guard j + 4 <= b.count else { return nil }
        var v: UInt32 = 0
        for k in j..<j + 4 {
            let c = b[k]
            let d: UInt32
            switch c {
            case 48...57: d = UInt32(c - 48)
            case 65...70: d = UInt32(c - 55)
            case 97...102: d = UInt32(c - 87)
            default: return nil
            }
            v = v << 4 | d
        }
        return v
    }

    /// One well-formed multi-byte UTF-8 sequence (RFC 3629: no overlongs, surrogates or values past U+10FFFF).
    private mutating func utf8Sequence() -> Bool {
        let c = b[i]
        func cont(_ k: Int, _ lo: UInt8 = 0x80, _ hi: UInt8 = 0xBF) -> Bool { i + k < b.count && b[i + k] >= lo && b[i + k] <= hi }
        switch c {
        case 0xC2...0xDF: guard cont(1) else { return false }; i += 2
        case 0xE0: guard cont(1, 0xA0), cont(2) else { return false }; i += 3
        case 0xE1...0xEC, 0xEE...0xEF: guard cont(1), cont(2) else { return false }; i += 3
        case 0xED: guard cont(1, 0x80, 0x9F), cont(2) else { return false }; i += 3
        case 0xF0: guard cont(1, 0x90), cont(2), cont(3) else { return false }; i += 4
        case 0xF1...0xF3: guard cont(1), cont(2), cont(3) else { return false }; i += 4
        case 0xF4: guard cont(1, 0x80, 0x8F), cont(2), cont(3) else { return false }; i += 4
        default: return false
        }
        return true
    }
}
