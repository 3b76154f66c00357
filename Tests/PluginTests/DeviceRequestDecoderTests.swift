@testable import HTTPCodec
import NIOCore
import NIOEmbedded
import Testing

@Suite struct DeviceRequestDecoderTests {
    let limits = DeviceRequestLimits(maxBodySize: 64)

    func decode(_ text: String, limits: DeviceRequestLimits? = nil) throws -> [DeviceRequest] {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(DeviceRequestDecoder(limits: limits ?? self.limits)))
        defer { _ = try? channel.finish() }
        try channel.writeInbound(ByteBuffer(string: text))
        var out: [DeviceRequest] = []
        while let r = try channel.readInbound(as: DeviceRequest.self) { out.append(r) }
        return out
    }

    func error(_ text: String) -> DeviceRequestError? {
        do {
            _ = try decode(text)
            return nil
        } catch {
            return error as? DeviceRequestError
        }
    }

    @Test func parsesARequestWithItsHeadersAndBody() throws {
        let r = try #require(try decode("POST /v1/devices/d/telemetry HTTP/1.1\r\nHost: x\r\ncontent-TYPE: application/json; charset=utf-8\r\nAuthorization:  Bearer t0k \r\nX-Request-Id: r1\r\nX-Device-Time: 1700000000000\r\nContent-Length: 7\r\n\r\n{\"a\":1}").first)
        #expect(r.method == .post)
        #expect(r.target == "/v1/devices/d/telemetry")
        #expect(!r.http10 && r.keepAlive)
        #expect(r.contentType == "application/json; charset=utf-8")
        #expect(r.authorization == "Bearer t0k")
        #expect(r.requestID == "r1")
        #expect(r.deviceTime == "1700000000000")
        #expect(String(buffer: r.body) == #"{"a":1}"#)
    }

    @Test func decodesWholeAndByteByByteAlike() throws {
        let text = "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\nGET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        let whole = try decode(text)
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(DeviceRequestDecoder(limits: limits)))
        for byte in text.utf8 { try channel.writeInbound(ByteBuffer(bytes: [byte])) }
        var pieces: [DeviceRequest] = []
        while let r = try channel.readInbound(as: DeviceRequest.self) { pieces.append(r) }
        _ = try channel.finish()
        for requests in [whole, pieces] {
            #expect(requests.map(\.target) == ["/a", "/b"])
            #expect(String(buffer: requests[0].body) == "abcde")
            #expect(requests[1].http10 && requests[1].keepAlive && requests[1].method == .get)
        }
    }

    /// 100 Continue is due once the headers that ask for it are in and the body is not (RFC 9110 §10.1.1).
    @Test func saysWhenAClientWaitsFor100Continue() throws {
        var decoder = DeviceRequestDecoder(limits: limits)
        var buffer = ByteBuffer(string: "POST /a HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n")
        #expect(try decoder.decode(buffer: &buffer) == nil && !decoder.takeContinue(), "the headers are not all in")
        buffer.writeString("\r\n")
        #expect(try decoder.decode(buffer: &buffer) == nil && decoder.takeContinue() && !decoder.takeContinue(), "once")
        buffer.writeString("{")
        #expect(try decoder.decode(buffer: &buffer) == nil && !decoder.takeContinue())
        buffer.writeString("}POST /b HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
        #expect(try decoder.decode(buffer: &buffer)?.target == "/a")
        #expect(try decoder.decode(buffer: &buffer) == nil && decoder.takeContinue(), "the next request asks again")
        var ten = ByteBuffer(string: "POST /c HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
        var other = DeviceRequestDecoder(limits: limits)
        #expect(try other.decode(buffer: &ten) == nil && !other.takeContinue(), "not to HTTP/1.0")
    }

    /// A later HTTP/1.x is taken as 1.1 (RFC 9112 §2.3).
    @Test func takesALaterMinorVersionAs11() throws {
        let r = try #require(try decode("GET / HTTP/1.2\r\nHost: h\r\n\r\n").first)
        #expect(!r.http10 && r.keepAlive)
    }

    @Test func followsConnectionSemantics() throws {
        #expect(try decode("GET / HTTP/1.0\r\n\r\n").first?.keepAlive == false)
        #expect(try decode("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").first?.keepAlive == false)
        #expect(try decode("\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n").count == 1)  // leading empty lines are ignored
        // A target in absolute form is taken as its path and query (RFC 9112 §3.2.2).
        #expect(try decode("POST http://hub.example.com:8081/v1/devices/d/telemetry?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n").first?.target
                == "/v1/devices/d/telemetry?x=1")
        #expect(DeviceRequestDecoder.originForm("HTTPS://h") == "/" && DeviceRequestDecoder.originForm("http://h?q=1") == "/?q=1")
        #expect(DeviceRequestDecoder.originForm("/a?b=http://c/d") == "/a?b=http://c/d" && DeviceRequestDecoder.originForm("*") == "*")
        #expect(try decode("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab").isEmpty)  // waits for the body
    }

    /// One Host in HTTP/1.1, at most one in 1.0, and a valid one (RFC 9112 §3.2: 400 otherwise).
    @Test func wantsOneValidHost() throws {
        #expect(error("GET / HTTP/1.1\r\n\r\n") == .malformed("no Host in an HTTP/1.1 request"))
        #expect(error("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n") == .malformed("more than one Host"))
        #expect(error("GET / HTTP/1.0\r\nHost: a\r\nHOST: b\r\n\r\n") == .malformed("more than one Host"))
        for bad in ["a b", "a/b", "user@a", "a?b", "a#b", "\"a\""] {
            #expect(error("GET / HTTP/1.1\r\nHost: \(bad)\r\n\r\n") == .malformed("bad Host"), "\(bad)")
        }
        for good in ["hub.example.com", "hub:8081", "127.0.0.1:80", "[::1]:8080", "xn--bcher-kva.example", "a%2Eb", ""] {
            #expect(try decode("GET / HTTP/1.1\r\nHost: \(good)\r\n\r\n").count == 1, "\(good)")
        }
        #expect(try decode("GET / HTTP/1.0\r\n\r\n").count == 1, "HTTP/1.0 needs none")
    }

    @Test func refusesWhatItCannotFrameSafely() throws {
        #expect(error("GET / HTTP/2.0\r\n\r\n") == .unsupportedVersion)
        #expect(error("GET / HTTP/1.10\r\n\r\n") == .malformed("unsupported HTTP version"))
        #expect(error("GET / http/1.1\r\n\r\n") == .malformed("unsupported HTTP version"))
        #expect(error("G(T / HTTP/1.1\r\nHost: h\r\n\r\n") == .malformed("bad method"))
        // Lines that end in LF alone are refused at once, not waited on until the connection times out.
        #expect(error("GET / HTTP/1.1\nHost: a\n\n") == .malformed("a line ends in LF without CR"))
        #expect(error("GET / HTTP/1.1\r\nHost: a\n") == .malformed("a line ends in LF without CR"))
        #expect(error("GET /a b HTTP/1.1\r\nHost: h\r\n\r\n") == .malformed("unsupported HTTP version"))
        #expect(error("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n\r\n") == .malformed("obsolete line folding"))
        #expect(error("GET / HTTP/1.1\r\nHost: h\r\nBad Name: a\r\n\r\n") == .malformed("bad header name"))
        #expect(error("GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n") == .malformed("bad header line"))
        #expect(error("GET / HTTP/1.1\nX: a\r\n\r\n") == .malformed("bad request line"))
        #expect(error("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab") == .malformed("conflicting Content-Length"))
        #expect(error("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n") == .malformed("bad Content-Length"))
        #expect(error("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n") == .malformed("both Content-Length and Transfer-Encoding"))
        #expect(error("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n") == .unsupportedTransferCoding)
        #expect(error("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n") == .malformed("bad chunk size"))
        #expect(error("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n") == .malformed("bad chunk"))
        #expect(error("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 65\r\n\r\n") == .bodyTooLarge(65))
        #expect(error("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n") == .bodyTooLarge(nil))
        #expect(error("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFF\r\n") == .bodyTooLarge(nil))
        #expect(error("GET / HTTP/1.1\r\nHost: h\r\nX: \(String(repeating: "a", count: 17000))\r\n\r\n") == .headerTooLarge)
        #expect(error("GET / HTTP/1.1\r\nHost: h\r\n" + String(repeating: "X: 1\r\n", count: 101) + "\r\n") == .headerTooLarge)
        // Empty lines before the request line count toward the header section: sent without end, they
        // were all kept (a client grew the hub by 200 MB with 210 MB of them) and read again each time.
        #expect(error(String(repeating: "\r\n", count: 8193)) == .headerTooLarge)
        #expect(try decode(String(repeating: "\r\n", count: 100) + "GET / HTTP/1.1\r\nHost: h\r\n\r\n").count == 1)
        // The trailer section is bounded as the header section is, in bytes and in lines: sent without
        // end, its lines were all kept until the request was whole (a client grew the hub by 110 MB
        // with 120 MB of them). Trailers within the bounds are read and ignored.
        let chunked = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n"
        #expect(error(chunked + String(repeating: "T: 1\r\n", count: 101) + "\r\n") == .headerTooLarge)
        #expect(error(chunked + String(repeating: "T: \(String(repeating: "v", count: 1000))\r\n", count: 17)) == .headerTooLarge)
        #expect(error(chunked + "T: \(String(repeating: "v", count: 17000))") == .headerTooLarge)
        #expect(try decode(chunked + String(repeating: "T: 1\r\n", count: 100) + "\r\n").first?.body == ByteBuffer(string: "{}"))
        // Chunked framing may take as many bytes as the data, and 64 KiB more: a body in 1-byte chunks
        // took five bytes of framing per byte and a range each.
        let big = DeviceRequestLimits(maxBodySize: 1 << 20)
        let tiny = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + String(repeating: "1\r\na\r\n", count: 20000) + "0\r\n\r\n"
        #expect(throws: DeviceRequestError.malformed("chunked framing larger than the data it carries")) { try decode(tiny, limits: big) }
        let small = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + String(repeating: "8\r\nabcdefgh\r\n", count: 20000) + "0\r\n\r\n"
        #expect(try decode(small, limits: big).first?.body.readableBytes == 160_000)
        // Chunked applied twice (two fields are one list), and the field in HTTP/1.0 (RFC 9112 §6.1).
        #expect(error("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n") == .unsupportedTransferCoding)
        #expect(error("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n") == .malformed("Transfer-Encoding in an HTTP/1.0 request"))
    }

    /// A request's bytes come in many reads; what was read is not read again. A megabyte of 1-byte
    /// chunks sent 100 bytes at a time took over a second of the event loop when each read started over.
    @Test func goesOnFromWhereItStoppedWhenMoreComes() throws {
        var decoder = DeviceRequestDecoder(limits: DeviceRequestLimits(maxBodySize: 1 << 20))
        var buffer = ByteBuffer(string: "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        #expect(try decoder.decode(buffer: &buffer) == nil)
        #expect(decoder.progress.head != nil && decoder.progress.chunks.isEmpty)
        for n in 1...3 {
            buffer.writeString("1\r\nx\r\n2")
            #expect(try decoder.decode(buffer: &buffer) == nil)
            #expect(decoder.progress.chunks.count == 2 * n - 1, "the chunks before stay read")
            buffer.writeString("\r\nyz\r\n")
        }
        buffer.writeString("0\r\nA: b\r\n")
        #expect(try decoder.decode(buffer: &buffer) == nil && decoder.progress.inTrailers)
        buffer.writeString("\r\nGET /b HTTP/1.1\r\nHost: h\r\n")
        let r = try #require(try decoder.decode(buffer: &buffer))
        #expect(String(buffer: r.body) == "xyzxyzxyz" && r.target == "/a")
        #expect(try decoder.decode(buffer: &buffer) == nil && decoder.progress.scanned == buffer.readableBytes, "the next request's header search")
        buffer.writeString("\r\n")
        #expect(try decoder.decode(buffer: &buffer)?.target == "/b")
    }

    /// Random corruptions of valid requests: each either decodes, waits for more bytes or is refused
    /// with a DeviceRequestError; nothing else happens and no body exceeds the limit.
    @Test func survivesRandomCorruption() throws {
        let seeds = [
            "POST /v1/devices/d/telemetry HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
            "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "GET /v1/devices/d/commands?wait=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        ].map { Array($0.utf8) }
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            var bytes = seeds.randomElement(using: &rng)!
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                let i = Int.random(in: 0..<bytes.count, using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0: bytes[i] = UInt8.random(in: 0...255, using: &rng)
                case 1: bytes.remove(at: i)
                default: bytes.insert(UInt8.random(in: 0...255, using: &rng), at: i)
                }
                if bytes.isEmpty { bytes = [0] }
            }
            let channel = EmbeddedChannel(handler: ByteToMessageHandler(DeviceRequestDecoder(limits: limits)))
            do {
                try channel.writeInbound(ByteBuffer(bytes: bytes))
                while let r = try channel.readInbound(as: DeviceRequest.self) { #expect(r.body.readableBytes <= 64) }
            } catch is DeviceRequestError {
            } catch {
                Issue.record("unexpected error \(error) for \(bytes)")
            }
            _ = try? channel.finish()
        }
    }
}
