import NIOCore

/// One HTTP/1.1 request of the device API, with the few headers the API reads.
public struct DeviceRequest: Sendable {
    /// `other` is another method RFC 9110 defines (PUT, DELETE, CONNECT, TRACE, PATCH), which no
    /// resource here takes (405); `unknown` is any other token, such as `post` (methods are case-
    /// sensitive), which the server does not implement (501).
    public enum Method: Sendable, Equatable { case get, head, post, options, other, unknown }
    public var method: Method
    /// The request target as sent (path and query).
    public var target: String
    public var http10: Bool
    public var keepAlive: Bool
    public var contentType: String?
    public var authorization: String?
    public var requestID: String?
    public var deviceTime: String?
    public var ifNoneMatch: String?
    public var contentEncoding: String?
    public var body: ByteBuffer

    public init(method: Method, target: String, http10: Bool, keepAlive: Bool, contentType: String? = nil,
                authorization: String? = nil, requestID: String? = nil, deviceTime: String? = nil, body: ByteBuffer) {
        self.method = method
        self.target = target
        self.http10 = http10
        self.keepAlive = keepAlive
        self.contentType = contentType
        self.authorization = authorization
        self.requestID = requestID
        self.deviceTime = deviceTime
        self.body = body
    }
}

/// Why bytes are not an acceptable request. The connection answers and closes.
public enum DeviceRequestError: Error, Equatable, Sendable {
    case malformed(String)
    /// A transfer coding other than chunked: the body cannot be framed (RFC 9112 §6.1: 501).
    case unsupportedTransferCoding
    /// A well-formed HTTP version of another major version, such as HTTP/2.0 (RFC 9110 §15.6.6: 505).
    case unsupportedVersion
    case bodyTooLarge(Int?)
    case headerTooLarge
}

/// Limits on requests; every default is stated.
public struct DeviceRequestLimits: Sendable {
    /// Largest body, in bytes (the source's `max_body_size`).
    public var maxBodySize: Int
    /// Largest request line plus headers: 16 KiB.
    public var maxHeaderSize = 16 * 1024
    /// Most header lines: 100.
    public var maxHeaders = 100

    public init(maxBodySize: Int) { self.maxBodySize = maxBodySize }
}

/// A small HTTP/1.1 request parser (RFC 9112) for the device API: request line, header fields, and a
/// body delimited by Content-Length or chunked transfer coding. It reads only the fields the API uses
/// and refuses what it cannot frame safely (conflicting lengths, obsolete line folding, bare CR).
public struct DeviceRequestDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = DeviceRequest
    public let limits: DeviceRequestLimits
    /// The request in hand asked for 100 Continue (RFC 9110 §10.1.1) and its body has not all come.
    private var continueDue = false
    /// 100 Continue was taken for the request in hand.
    private var continueTaken = false
    /// How far the request in hand has been read.
    private(set) var progress = Progress()

    public init(limits: DeviceRequestLimits) { self.limits = limits }

    /// Whether the request in hand has its request line and header fields in (and waits for its body).
    public var hasHead: Bool { progress.head != nil }

    /// The request in hand, without its body, once its header fields are in and while its body comes.
    public var pendingHead: DeviceRequest? { progress.head?.request }

    /// Whether to send 100 Continue now: once per request that asks for it (HTTP/1.1, `Expect:
    /// 100-continue`) while its body has not all come. A client that sent the body with the headers
    /// gets none.
    public mutating func takeContinue() -> Bool {
        guard continueDue, !continueTaken else { return false }
        continueTaken = true
        return true
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> DeviceRequest? {
        let parsed: (DeviceRequest, Body, Int)?
        do {
            parsed = try buffer.withUnsafeReadableBytes { [limits] in try Self.parse($0, limits, &progress) }
        } catch {
            progress = Progress()
            throw error
        }
        continueDue = parsed == nil && progress.head?.expectsContinue == true
        guard let (head, body, consumed) = parsed else { return nil }
        progress = Progress()
        continueTaken = false
        var request = head
        let base = buffer.readerIndex
        switch body {
        case .none:
            break
        case .bytes(let r):
            request.body = buffer.getSlice(at: base + r.lowerBound, length: r.count)!
        case .chunks(let ranges):
            var b = ByteBuffer()
            b.reserveCapacity(ranges.reduce(0) { $0 + $1.count })
            for r in ranges { b.writeImmutableBuffer(buffer.getSlice(at: base + r.lowerBound, length: r.count)!) }
            request.body = b
        }
        buffer.moveReaderIndex(forwardBy: consumed)
        return request
    }

    /// Where the body lies in the parsed bytes.
    enum Body {
        case none
        case bytes(Range<Int>)
        case chunks([Range<Int>])
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> DeviceRequest? {
        try decode(buffer: &buffer)
    }

    /// How far the request at the front of the buffer has been read, so that what came before is not
    /// read again when more comes: a request's bytes may come in thousands of reads, and reading from
    /// its start each time would cost time growing with the square of its size (a megabyte of 1-byte
    /// chunks sent 100 bytes at a time took over a second of the event loop). Offsets are from the
    /// buffer's first readable byte, which stays in place until the request is taken.
    struct Progress {
        /// Readable bytes at the last look (fewer now: the buffer is another one, and reading starts over).
        var seen = 0
        /// Bytes searched for the end of the header section.
        var scanned = 0
        /// The request once its header section is in, whether it asked for 100 Continue, and its framing.
        var head: (request: DeviceRequest, expectsContinue: Bool, chunked: Bool, length: Int)?
        /// Where the body's unread part starts: the next chunk-size line, or the next trailer line.
        var next = 0
        /// The chunks read so far, and their total size.
        var chunks: [Range<Int>] = []
        var total = 0
        /// The last chunk (size 0) is read, and `next` is at a trailer line.
        var inTrailers = false
        /// Where the body starts; where the trailer section starts, and its lines so far.
        var body = 0, trailers = 0, trailerLines = 0
    }

    /// Bytes of chunked framing (size lines, extensions, CRLFs) allowed beyond as many as the data has:
    /// a body sent in chunks of a byte or two took five times its size on the wire and a range per byte.
    static let framingAllowance = 64 * 1024

    /// Parses one request from the front of `b`, going on from `p`. Returns nil when more bytes are
    /// needed (with `p` telling how far it got).
    static func parse(_ b: UnsafeRawBufferPointer, _ limits: DeviceRequestLimits, _ p: inout Progress) throws -> (DeviceRequest, Body, Int)? {
        if b.count < p.seen { p = Progress() }
        p.seen = b.count
        if p.head == nil {
            guard try parseHead(b, limits, &p) else { return nil }
        }
        return try parseBody(b, limits, &p)
    }

    /// Reads the request line and header fields into `p.head` once they are all in; false until then.
    private static func parseHead(_ b: UnsafeRawBufferPointer, _ limits: DeviceRequestLimits, _ p: inout Progress) throws -> Bool {
        // Leading empty lines before a request line are ignored (RFC 9112 section 2.2). They count
        // toward the header section's size, so that a client cannot send them without end.
        var i = 0
        while i + 1 < b.count, b[i] == 13, b[i + 1] == 10 { i += 2 }
        let start = i
        guard let headerEnd = findHeaderEnd(b, from: max(start, p.scanned - 3), limit: limits.maxHeaderSize) else {
            if b.count > limits.maxHeaderSize { throw DeviceRequestError.headerTooLarge }
            // Lines end in CRLF: a request whose lines end in LF alone would never end its headers, and
            // would wait for more until the connection timed out; it is answered at once instead.
            for k in max(start, p.scanned)..<b.count where b[k] == 10 && (k == start || b[k - 1] != 13) {
                throw DeviceRequestError.malformed("a line ends in LF without CR")
            }
            p.scanned = b.count
            return false
        }
        // Request line: method SP target SP HTTP/1.x
        guard let lineEnd = crlf(b, from: start, to: headerEnd) else { throw DeviceRequestError.malformed("bad request line") }
        guard let sp1 = index(of: 32, in: b, from: start, to: lineEnd), let sp2 = index(of: 32, in: b, from: sp1 + 1, to: lineEnd),
              sp1 > start, sp2 > sp1 + 1 else { throw DeviceRequestError.malformed("bad request line") }
        for k in start..<sp1 where !isTokenChar(b[k]) { throw DeviceRequestError.malformed("bad method") }
        let method: DeviceRequest.Method = equals(b, start, sp1, "GET") ? .get : equals(b, start, sp1, "POST") ? .post
            : equals(b, start, sp1, "HEAD") ? .head : equals(b, start, sp1, "OPTIONS") ? .options
            : ["PUT", "DELETE", "CONNECT", "TRACE", "PATCH"].contains { equals(b, start, sp1, $0) } ? .other : .unknown
        for k in (sp1 + 1)..<sp2 where b[k] <= 32 || b[k] == 127 { throw DeviceRequestError.malformed("bad request target") }
        let target = Self.originForm(String(decoding: UnsafeRawBufferPointer(rebasing: b[(sp1 + 1)..<sp2]), as: UTF8.self))
        // HTTP-version = "HTTP/" DIGIT "." DIGIT (RFC 9112 §2.3). A later 1.x is taken as 1.1, the
        // highest minor version this parser follows; another major version gets 505.
        let v = sp2 + 1
        func digit(_ k: Int) -> Bool { b[k] >= 0x30 && b[k] <= 0x39 }
        guard lineEnd - v == 8, equals(b, v, v + 5, "HTTP/"), digit(v + 5), b[v + 6] == UInt8(ascii: "."), digit(v + 7) else {
            throw DeviceRequestError.malformed("unsupported HTTP version")
        }
        guard b[v + 5] == UInt8(ascii: "1") else { throw DeviceRequestError.unsupportedVersion }
        let http10 = b[v + 7] == UInt8(ascii: "0")

        var request = DeviceRequest(method: method, target: target, http10: http10, keepAlive: !http10, body: ByteBuffer())
        var expectsContinue = false
        var contentLength: Int?
        var chunked = false
        var hosts = 0
        var headers = 0
        var h = lineEnd + 2
        while h < headerEnd {
            guard let e = crlf(b, from: h, to: headerEnd + 2) else { throw DeviceRequestError.malformed("bad header line") }
            headers += 1
            guard headers <= limits.maxHeaders else { throw DeviceRequestError.headerTooLarge }
            guard b[h] != 32 && b[h] != 9 else { throw DeviceRequestError.malformed("obsolete line folding") }
            guard let colon = index(of: UInt8(ascii: ":"), in: b, from: h, to: e), colon > h else { throw DeviceRequestError.malformed("bad header line") }
            for k in h..<colon where !isTokenChar(b[k]) { throw DeviceRequestError.malformed("bad header name") }
            var vs = colon + 1, ve = e
            while vs < ve, b[vs] == 32 || b[vs] == 9 { vs += 1 }
            while ve > vs, b[ve - 1] == 32 || b[ve - 1] == 9 { ve -= 1 }
            for k in vs..<ve where (b[k] < 32 && b[k] != 9) || b[k] == 127 { throw DeviceRequestError.malformed("bad header value") }
            func value() -> String { String(decoding: UnsafeRawBufferPointer(rebasing: b[vs..<ve]), as: UTF8.self) }
            switch colon - h {
            case 14 where equalsCaseless(b, h, colon, "content-length"):
                var n = 0
                guard ve > vs else { throw DeviceRequestError.malformed("bad Content-Length") }
                for k in vs..<ve {
                    guard b[k] >= 48, b[k] <= 57, n < 1 << 40 else { throw DeviceRequestError.malformed("bad Content-Length") }
                    n = n * 10 + Int(b[k] - 48)
                }
                if let c = contentLength, c != n { throw DeviceRequestError.malformed("conflicting Content-Length") }
                contentLength = n
            case 17 where equalsCaseless(b, h, colon, "transfer-encoding"):
                // Only "chunked" is accepted (RFC 9112 section 6.1); anything else cannot be framed, nor
                // can chunked applied twice (a second field is a list continued: "chunked, chunked").
                // An HTTP/1.0 message with the field has faulty framing (§6.1 MUST).
                guard !http10 else { throw DeviceRequestError.malformed("Transfer-Encoding in an HTTP/1.0 request") }
                guard equalsCaseless(b, vs, ve, "chunked"), !chunked else { throw DeviceRequestError.unsupportedTransferCoding }
                chunked = true
            case 10 where equalsCaseless(b, h, colon, "connection"):
                let v = value().lowercased()
                if v.contains("close") { request.keepAlive = false } else if v.contains("keep-alive") { request.keepAlive = true }
            case 12 where equalsCaseless(b, h, colon, "content-type"): request.contentType = value()
            case 13 where equalsCaseless(b, h, colon, "authorization"): request.authorization = value()
            case 12 where equalsCaseless(b, h, colon, "x-request-id"): request.requestID = value()
            case 13 where equalsCaseless(b, h, colon, "x-device-time"): request.deviceTime = value()
            case 13 where equalsCaseless(b, h, colon, "if-none-match"): request.ifNoneMatch = value()
            case 16 where equalsCaseless(b, h, colon, "content-encoding"): request.contentEncoding = value()
            case 4 where equalsCaseless(b, h, colon, "host"):
                // uri-host [ ":" port ]: registered names, IP literals and percent-escapes; a value
                // with anything else (spaces, "/", "@") is invalid (RFC 9112 §3.2, RFC 3986 §3.2.2).
                hosts += 1
                for k in vs..<ve where !isHostChar(b[k]) { throw DeviceRequestError.malformed("bad Host") }
            case 6 where equalsCaseless(b, h, colon, "expect"):
                // A client of HTTP/1.0 is never sent 100 (RFC 9110 §10.1.1).
                expectsContinue = !http10 && equalsCaseless(b, vs, ve, "100-continue")
            default: break
            }
            h = e + 2
        }
        // Exactly one Host in HTTP/1.1, at most one in 1.0 (RFC 9112 §3.2: a server MUST answer 400
        // otherwise): intermediaries and the server could each take a different one.
        if hosts > 1 { throw DeviceRequestError.malformed("more than one Host") }
        if hosts == 0, !http10 { throw DeviceRequestError.malformed("no Host in an HTTP/1.1 request") }
        // A message with both is refused: it is the classic request-smuggling shape (RFC 9112 6.3).
        if chunked, contentLength != nil { throw DeviceRequestError.malformed("both Content-Length and Transfer-Encoding") }
        let length = contentLength ?? 0
        guard length <= limits.maxBodySize else { throw DeviceRequestError.bodyTooLarge(length) }
        p.head = (request, expectsContinue, chunked, length)
        p.next = headerEnd + 4
        p.body = p.next
        return true
    }

    /// Frames the body of the request in `p.head`, going on from `p.next`.
    private static func parseBody(_ b: UnsafeRawBufferPointer, _ limits: DeviceRequestLimits, _ p: inout Progress) throws -> (DeviceRequest, Body, Int)? {
        guard let head = p.head else { return nil }
        guard head.chunked else {
            let q = p.next
            guard b.count >= q + head.length else { return nil }
            return (head.request, head.length == 0 ? .none : .bytes(q..<(q + head.length)), q + head.length)
        }
        while !p.inTrailers {
            let q = p.next
            guard let e = crlf(b, from: q, to: b.count) else {
                if b.count - q > 1024 { throw DeviceRequestError.malformed("bad chunk size") }
                return nil
            }
            var size = 0, k = q, digits = 0
            while k < e, let d = hexDigit(b[k]) {
                size = size * 16 + d
                digits += 1
                guard digits <= 8 else { throw DeviceRequestError.bodyTooLarge(nil) }
                k += 1
            }
            guard digits > 0, k == e || b[k] == UInt8(ascii: ";") || b[k] == 32 || b[k] == 9 else {
                throw DeviceRequestError.malformed("bad chunk size")
            }
            guard p.total + size <= limits.maxBodySize else { throw DeviceRequestError.bodyTooLarge(nil) }
            if size == 0 {
                p.inTrailers = true
                p.next = e + 2
                p.trailers = p.next
                break
            }
            // Framing so far (this chunk's size line and CRLF included) against the data.
            let framing = e + 4 - p.body - p.total
            guard framing <= p.total + size + Self.framingAllowance else {
                throw DeviceRequestError.malformed("chunked framing larger than the data it carries")
            }
            let data = e + 2
            guard b.count >= data + size + 2 else { return nil }
            guard b[data + size] == 13, b[data + size + 1] == 10 else { throw DeviceRequestError.malformed("bad chunk") }
            p.chunks.append(data..<(data + size))
            p.total += size
            p.next = data + size + 2
        }
        // Trailer fields (ignored), then an empty line. The section is bounded as the header section
        // is: sent without end, every trailer line was kept until the request was whole.
        while true {
            guard let t = crlf(b, from: p.next, to: b.count) else {
                if b.count - p.trailers > limits.maxHeaderSize { throw DeviceRequestError.headerTooLarge }
                return nil
            }
            let empty = t == p.next
            p.next = t + 2
            if empty { return (head.request, .chunks(p.chunks), p.next) }
            p.trailerLines += 1
            guard p.next - p.trailers <= limits.maxHeaderSize, p.trailerLines <= limits.maxHeaders else {
                throw DeviceRequestError.headerTooLarge
            }
        }
    }

    // MARK: - Byte helpers

    /// The path and query of a target in absolute form (`http://host/path?q`), which a server must
    /// accept (RFC 9112 §3.2.2); other targets as they are.
    public static func originForm(_ target: String) -> String {
        guard let first = target.utf8.first, first != UInt8(ascii: "/"), let colon = target.firstIndex(of: ":"),
              ["http", "https"].contains(target[..<colon].lowercased()), target[colon...].hasPrefix("://") else { return target }
        let rest = target[target.index(colon, offsetBy: 3)...]
        guard let cut = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) else { return "/" }
        return rest[cut] == "?" ? "/" + rest[cut...] : String(rest[cut...])
    }

    /// The CR of the first CRLFCRLF at or after `from`, within the first `limit` bytes (and its 4).
    private static func findHeaderEnd(_ b: UnsafeRawBufferPointer, from: Int, limit: Int) -> Int? {
        var k = from
        let end = min(b.count, limit + 4)
        while k + 3 < end {
            if b[k] == 13, b[k + 1] == 10, b[k + 2] == 13, b[k + 3] == 10 { return k }
            k += 1
        }
        return nil
    }

    /// The index of the CR of the CRLF ending the line at `from`, before `to`. A bare CR or LF is refused.
    private static func crlf(_ b: UnsafeRawBufferPointer, from: Int, to: Int) -> Int? {
        var k = from
        while k + 1 < min(to + 2, b.count) {
            if b[k] == 13 { return b[k + 1] == 10 ? k : nil }
            if b[k] == 10 { return nil }
            k += 1
        }
        return nil
    }

    private static func index(of c: UInt8, in b: UnsafeRawBufferPointer, from: Int, to: Int) -> Int? {
        var k = from
        while k < to {
            if b[k] == c { return k }
            k += 1
        }
        return nil
    }

    private static func equals(_ b: UnsafeRawBufferPointer, _ s: Int, _ e: Int, _ text: StaticString) -> Bool {
        guard e - s == text.utf8CodeUnitCount else { return false }
        for k in 0..<(e - s) where b[s + k] != text.utf8Start[k] { return false }
        return true
    }

    private static func equalsCaseless(_ b: UnsafeRawBufferPointer, _ s: Int, _ e: Int, _ text: StaticString) -> Bool {
        guard e - s == text.utf8CodeUnitCount else { return false }
        for k in 0..<(e - s) where b[s + k] | 0x20 != text.utf8Start[k] | 0x20 { return false }
        return true
    }

    private static func isTokenChar(_ c: UInt8) -> Bool {
        switch c {
        case 48...57, 65...90, 97...122: true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"),
             UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"),
             UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"): true
        default: false
        }
    }

    /// A character of a Host value: unreserved, sub-delims, ":" (a port, IPv6), "[" "]" and "%".
    private static func isHostChar(_ c: UInt8) -> Bool {
        switch c {
        case 48...57, 65...90, 97...122: true
        case UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"), UInt8(ascii: "!"), UInt8(ascii: "$"),
             UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "*"), UInt8(ascii: "+"),
             UInt8(ascii: ","), UInt8(ascii: ";"), UInt8(ascii: "="), UInt8(ascii: ":"), UInt8(ascii: "["), UInt8(ascii: "]"),
             UInt8(ascii: "%"): true
        default: false
        }
    }

    private static func hexDigit(_ c: UInt8) -> Int? {
        switch c {
        case 48...57: Int(c - 48)
        case 65...70: Int(c - 55)
        case 97...102: Int(c - 87)
        default: nil
        }
    }
}
