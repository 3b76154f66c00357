/// The CoRE Link Format (RFC 6690) as LwM2M clients send it in Register and Update, and as Discover
/// answers: `</>;rt="oma.lwm2m";ct=110, </1/0>, </3/0>;ver=1.1, </3303/0>`.
public enum LinkFormat {
    public struct Link: Sendable, Equatable {
        public var target: String
        public var attributes: [String: String]

        public init(target: String, attributes: [String: String]) {
            self.target = target
            self.attributes = attributes
        }

        /// The target's numeric path (`/3303/0` → [3303, 0]), or nil when it is not an object path.
        public var objectPath: [UInt16]? {
            let parts = target.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
            guard !parts.isEmpty, parts.count <= 4, target.hasPrefix("/") else { return nil }
            var out: [UInt16] = []
            for p in parts {
                guard !p.isEmpty, p.count <= 5, p.allSatisfy(\.isASCII), p.allSatisfy(\.isNumber), let n = UInt16(p) else { return nil }
                out.append(n)
            }
            return out
        }

        /// The target's numeric path under `root`, the client's path for its objects ("/", or an
        /// alternate path such as "/lwm2m": `root(of:)`), or nil when it is not an object path there.
        public func objectPath(under root: String) -> [UInt16]? {
            if root == "/" { return objectPath }
            guard target.hasPrefix(root + "/") else { return nil }
            return Link(target: String(target.dropFirst(root.count)), attributes: [:]).objectPath
        }
    }

    /// The path under which a client's objects are (OMA LwM2M 1.1 §6.2.1, "Alternate Path"): the
    /// target of its link with `rt="oma.lwm2m"`, such as `</lwm2m>;rt="oma.lwm2m"`; "/" when it has none.
    public static func root(of links: [Link]) -> String {
        guard let t = links.first(where: { $0.attributes["rt"] == "oma.lwm2m" })?.target, t != "/", t.hasPrefix("/") else { return "/" }
        return t.hasSuffix("/") ? String(t.dropLast()) : t
    }

    public struct Error: Swift.Error, Sendable, Equatable, CustomStringConvertible {
        public var offset: Int
        public var reason: String
        public var description: String { "link format at character \(offset): \(reason)" }
    }

    /// Parses a link-format payload; every link must be `<target>` with `;name` or `;name=value`
    /// attributes (values bare or quoted). At most `limit` links.
    public static func parse(_ text: String, limit: Int = 2048) throws(Error) -> [Link] {
        let s = Array(text.utf8)
        var i = 0
        var links: [Link] = []
        func skipSpace() { while i < s.count, s[i] == 0x20 || s[i] == 0x09 || s[i] == 0x0A || s[i] == 0x0D { i += 1 } }
        skipSpace()
        if i == s.count { return [] }
        while true {
            skipSpace()
            guard i < s.count, s[i] == UInt8(ascii: "<") else { throw Error(offset: i, reason: "expected '<'") }
            i += 1
            let start = i
            while i < s.count, s[i] != UInt8(ascii: ">") {
                guard s[i] > 0x20, s[i] != UInt8(ascii: "<") else { throw Error(offset: i, reason: "a target may not contain spaces or '<'") }
                i += 1
            }
            guard i < s.count else { throw Error(offset: start, reason: "unterminated target") }
            var link = Link(target: String(decoding: s[start..<i], as: UTF8.self), attributes: [:])
            i += 1
            while i < s.count, s[i] == UInt8(ascii: ";") {
                i += 1
                let nameStart = i
                while i < s.count, s[i] != UInt8(ascii: "="), s[i] != UInt8(ascii: ";"), s[i] != UInt8(ascii: ",") {
                    guard s[i] > 0x20, s[i] != UInt8(ascii: "\"") else { throw Error(offset: i, reason: "bad attribute name") }
                    i += 1
                }
                guard i > nameStart else { throw Error(offset: i, reason: "empty attribute name") }
                let name = String(decoding: s[nameStart..<i], as: UTF8.self)
                var value = ""
                if i < s.count, s[i] == UInt8(ascii: "=") {
                    i += 1
                    if i < s.count, s[i] == UInt8(ascii: "\"") {
                        // A quoted-string, where a backslash takes the next character as it is
                        // (RFC 6690 §2 by RFC 2616's quoted-pair): `title="a \"b\""` is `a "b"`.
                        i += 1
                        let vStart = i
                        var bytes: [UInt8] = []
                        while i < s.count, s[i] != UInt8(ascii: "\"") {
                            if s[i] == UInt8(ascii: "\\"), i + 1 < s.count { i += 1 }
                            bytes.append(s[i])
                            i += 1
                        }
                        guard i < s.count else { throw Error(offset: vStart, reason: "unterminated quoted value") }
                        value = String(decoding: bytes, as: UTF8.self)
                        i += 1
                    } else {
                        let vStart = i
                        while i < s.count, s[i] != UInt8(ascii: ";"), s[i] != UInt8(ascii: ",") { i += 1 }
                        value = String(decoding: s[vStart..<i], as: UTF8.self)
                    }
                }
                guard link.attributes.updateValue(value, forKey: name) == nil else { throw Error(offset: nameStart, reason: "attribute '\(name.prefix(16))' twice") }
            }
            links.append(link)
            guard links.count <= limit else { throw Error(offset: i, reason: "more than \(limit) links") }
            skipSpace()
            if i == s.count { return links }
            guard s[i] == UInt8(ascii: ",") else { throw Error(offset: i, reason: "expected ',' between links") }
            i += 1
        }
    }

    /// Writes links as link format, attributes sorted by name; values other than numbers are quoted,
    /// with `"` and `\` escaped. What `parse` reads, `write` writes so that `parse` reads it the same.
    public static func write(_ links: [Link]) -> String {
        links.map { l in
            "<\(l.target)>" + l.attributes.sorted { $0.key < $1.key }.map { a in
                if a.value.isEmpty { return ";\(a.key)" }
                let bare = a.value.allSatisfy { $0.isASCII && ($0.isNumber || $0 == ".") }
                if bare { return ";\(a.key)=\(a.value)" }
                // Byte by byte: as characters, a `"` followed by a combining mark is not a `"`.
                var quoted: [UInt8] = [UInt8(ascii: "\"")]
                for b in a.value.utf8 {
                    if b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") { quoted.append(UInt8(ascii: "\\")) }
                    quoted.append(b)
                }
                quoted.append(UInt8(ascii: "\""))
                return ";\(a.key)=" + String(decoding: quoted, as: UTF8.self)
            }.joined()
        }.joined(separator: ",")
    }
}
