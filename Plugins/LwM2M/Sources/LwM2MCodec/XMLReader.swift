/// A small, strict XML reader for object definition files: elements, attributes, character data,
/// CDATA sections, comments and processing instructions, the five predefined entities and character
/// references, with the line and column of every event. Document type declarations are refused, so
/// there is no entity expansion and nothing is fetched. It checks well-formedness (one root element,
/// tags closed in order, no duplicate attributes, valid UTF-8) and nothing more: no namespaces (a
/// prefixed name is reported as written) and no validation.
struct XMLReader {
    enum Event: Equatable {
        case start(name: String, attributes: [String: String])
        case end(name: String)
        case text(String)
    }

    struct Failure: Error, Equatable {
        var line: Int
        var column: Int
        var reason: String
        /// True when the document is not well-formed XML; false for a failure a handler throws.
        var malformed = true
    }

    private let bytes: [UInt8]
    private var i = 0
    /// `line` is the line of byte `counted`; lines are counted forward only as far as needed.
    private var line = 1
    private var lineStart = 0
    private var counted = 0

    private init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// Reads `bytes` and hands each event, with where it starts, to `handle`. A failure of the
    /// document, or one that `handle` throws, ends the reading.
    static func read(_ bytes: [UInt8], _ handle: (Event, _ line: Int, _ column: Int) throws(Failure) -> Void) throws(Failure) {
        var reader = XMLReader(bytes)
        try reader.run(handle)
    }

    /// The line and column of byte `offset` (columns count bytes, from 1).
    private mutating func location(_ offset: Int) -> (line: Int, column: Int) {
        while counted < offset {
            if bytes[counted] == UInt8(ascii: "\n") { line += 1; lineStart = counted + 1 }
            counted += 1
        }
        return (line, offset - lineStart + 1)
    }

    private mutating func fail(_ reason: String, at offset: Int? = nil) -> Failure {
        let (l, c) = location(min(offset ?? i, bytes.count))
        return Failure(line: l, column: c, reason: reason)
    }

    private func starts(_ s: StaticString, at k: Int) -> Bool {
        let n = s.utf8CodeUnitCount
        guard k + n <= bytes.count else { return false }
        return s.withUTF8Buffer { p in (0..<n).allSatisfy { bytes[k + $0] == p[$0] } }
    }

    /// The offset just after the first `end` at or after `i`, or nil.
    private func after(_ end: StaticString) -> Int? {
        var k = i
        while k < bytes.count {
            if starts(end, at: k) { return k + end.utf8CodeUnitCount }
            k += 1
        }
        return nil
    }

    private mutating func run(_ handle: (Event, Int, Int) throws(Failure) -> Void) throws(Failure) {
        var open: [(name: String, offset: Int)] = []
        var rootSeen = false
        if starts("\u{FEFF}", at: 0) { i = 3 }
        while i < bytes.count {
            let here = i
            if bytes[i] != UInt8(ascii: "<") {
                var end = i
                while end < bytes.count, bytes[end] != UInt8(ascii: "<") { end += 1 }
                let text = try decode(here, end)
                if open.isEmpty {
                    guard text.utf8.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }) else {
                        throw fail("text outside the root element", at: here)
                    }
                } else {
                    let (l, c) = location(here)
                    try handle(.text(text), l, c)
                }
                i = end
            } else if starts("<?", at: i) {
                guard let next = after("?>") else { throw fail("a processing instruction is not closed") }
                i = next
            } else if starts("<!--", at: i) {
                i += 4
                guard let next = after("-->") else { throw fail("a comment is not closed", at: here) }
                i = next
            } else if starts("<![CDATA[", at: i) {
                guard !open.isEmpty else { throw fail("a CDATA section outside the root element") }
                i += 9
                guard let next = after("]]>") else { throw fail("a CDATA section is not closed", at: here) }
                guard let text = String(validating: bytes[i..<(next - 3)], as: UTF8.self) else { throw fail("invalid UTF-8", at: i) }
                let (l, c) = location(here)
                try handle(.text(text), l, c)
                i = next
            } else if starts("<!", at: i) {
                throw fail("document type declarations are not accepted")
            } else if starts("</", at: i) {
                i += 2
                let name = try readName()
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: ">") else { throw fail("expected '>' to end </\(name)>") }
                i += 1
                guard let top = open.last else { throw fail("</\(name)> closes nothing", at: here) }
                guard top.name == name else { throw fail("</\(name)> where </\(top.name)> was expected", at: here) }
                open.removeLast()
                let (l, c) = location(here)
                try handle(.end(name: name), l, c)
            } else {
                i += 1
                let name = try readName()
                if open.isEmpty && rootSeen { throw fail("a second root element <\(name)>", at: here) }
                var attributes: [String: String] = [:]
                var selfClosing = false
                while true {
                    let hadSpace = skipSpace()
                    guard i < bytes.count else { throw fail("<\(name)> is not closed", at: here) }
                    if bytes[i] == UInt8(ascii: ">") { i += 1; break }
                    if starts("/>", at: i) { i += 2; selfClosing = true; break }
                    guard hadSpace else { throw fail("expected a space, '>' or '/>' in <\(name)>") }
                    let attribute = try readName()
                    skipSpace()
                    guard i < bytes.count, bytes[i] == UInt8(ascii: "=") else { throw fail("expected '=' after attribute \(attribute)") }
                    i += 1
                    skipSpace()
                    guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") || bytes[i] == UInt8(ascii: "'") else {
                        throw fail("attribute \(attribute) needs a quoted value")
                    }
                    let quote = bytes[i]
                    let start = i + 1
                    var end = start
                    while end < bytes.count, bytes[end] != quote {
                        guard bytes[end] != UInt8(ascii: "<") else { throw fail("'<' in the value of attribute \(attribute)", at: end) }
                        end += 1
                    }
                    guard end < bytes.count else { throw fail("the value of attribute \(attribute) is not closed", at: i) }
                    guard attributes[attribute] == nil else { throw fail("attribute \(attribute) given twice", at: i) }
                    attributes[attribute] = try decode(start, end)
                    i = end + 1
                }
                rootSeen = true
                let (l, c) = location(here)
                try handle(.start(name: name, attributes: attributes), l, c)
                if selfClosing {
                    try handle(.end(name: name), l, c)
                } else {
                    open.append((name, here))
                }
            }
        }
        if let top = open.last { throw fail("<\(top.name)> is not closed") }
        if !rootSeen { throw fail("no root element") }
    }

    @discardableResult
    private mutating func skipSpace() -> Bool {
        let start = i
        while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x09 || bytes[i] == 0x0A || bytes[i] == 0x0D { i += 1 }
        return i > start
    }

    private mutating func readName() throws(Failure) -> String {
        func nameByte(_ b: UInt8, first: Bool) -> Bool {
            switch b {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "_"), UInt8(ascii: ":"), 0x80...: true
            case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."): !first
            default: false
            }
        }
        let start = i
        while i < bytes.count, nameByte(bytes[i], first: i == start) { i += 1 }
        guard i > start else { throw fail("expected a name") }
        guard let name = String(validating: bytes[start..<i], as: UTF8.self) else { throw fail("invalid UTF-8", at: start) }
        return name
    }

    /// Character data between two offsets with its references replaced.
    private mutating func decode(_ start: Int, _ end: Int) throws(Failure) -> String {
        guard let raw = String(validating: bytes[start..<end], as: UTF8.self) else { throw fail("invalid UTF-8", at: start) }
        guard bytes[start..<end].contains(UInt8(ascii: "&")) else { return raw }
        var out = ""
        var k = start
        while k < end {
            guard bytes[k] == UInt8(ascii: "&") else {
                var run = k
                while run < end, bytes[run] != UInt8(ascii: "&") { run += 1 }
                out += String(decoding: bytes[k..<run], as: UTF8.self)
                k = run
                continue
            }
            var semi = k + 1
            while semi < end, semi - k <= 12, bytes[semi] != UInt8(ascii: ";") { semi += 1 }
            guard semi < end, bytes[semi] == UInt8(ascii: ";") else { throw fail("'&' that starts no reference (write &amp;)", at: k) }
            let name = String(decoding: bytes[(k + 1)..<semi], as: UTF8.self)
            switch name {
            case "lt": out += "<"
            case "gt": out += ">"
            case "amp": out += "&"
            case "quot": out += "\""
            case "apos": out += "'"
            default:
                let code: UInt32? = name.hasPrefix("#x") ? UInt32(name.dropFirst(2), radix: 16)
                    : name.hasPrefix("#") ? UInt32(name.dropFirst(), radix: 10) : nil
                guard let code, code != 0, let scalar = Unicode.Scalar(code) else {
                    throw fail("unknown entity &\(name.prefix(12));", at: k)
                }
                out.unicodeScalars.append(scalar)
            }
            k = semi + 1
        }
        return out
    }
}
