// Usage: HTTPFuzz [INPUTS] [SEED]. Mutated HTTP/1.1 requests (pipelined, chunked, with trailers,
// continuations and every header the device API reads) go through the device API's request decoder,
// once whole and once in random chunks as a socket delivers them. Exits non-zero (with the input)
// when an invariant breaks; a crash is a failure by itself.
//
// Invariants: the decoder throws only its own errors; no body is larger than the limit; and the
// requests decoded, and whether the bytes end in an error or wait for more, do not depend on how the
// bytes were cut (the reason given for an error may: a prefix can show one fault before another).
import Foundation
import FuzzSupport
import HTTPCodec
import NIOCore

let inputs = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1])! : 1_000_000
var rng = SplitMix(seed: CommandLine.arguments.count > 2 ? UInt64(CommandLine.arguments[2])! : 0x4854)
let limits = DeviceRequestLimits(maxBodySize: 256)

let seeds: [[UInt8]] = [
    "POST /v1/devices/d1/telemetry HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\nAuthorization: Bearer t0k\r\nContent-Length: 9\r\n\r\n{\"t\":1.5}",
    "POST /v1/devices/d1/telemetry?token=x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nX-Request-ID: r1\r\n\r\n4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nTrailer: x\r\n\r\n",
    "GET /v1/devices/d1/attributes HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"e1\"\r\nConnection: keep-alive\r\n\r\nGET /v1/devices/d1/commands?wait=5 HTTP/1.0\r\n\r\n",
    "\r\nPOST http://hub:8081/v1/devices/d2/events HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Encoding: gzip\r\nX-Device-Time: 2026-01-01T00:00:00Z\r\nContent-Length: 2\r\n\r\nhi",
    "OPTIONS * HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nHEAD / HTTP/1.1\r\nHost: h\r\n\r\nPUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
].map { Array($0.utf8) }
let interesting: [UInt8] = Array("\r\n :;,0123456789abcdefABCDEF\t\"/?=".utf8) + [0, 0x7F, 0x80, 0xFF]

enum Outcome: Equatable { case waiting, failed }

/// Decodes `input` delivered in `cuts` (chunk sizes), as NIO's ByteToMessageHandler would: after each
/// read, requests until the decoder needs more. Returns each request's description and how it ended.
func run(_ input: [UInt8], cuts: [Int]) -> ([String], Outcome) {
    var decoder = DeviceRequestDecoder(limits: limits)
    var buffer = ByteBuffer()
    var requests: [String] = []
    var offset = 0
    for n in cuts {
        buffer.writeBytes(input[offset..<(offset + n)])
        offset += n
        do {
            while let r = try decoder.decode(buffer: &buffer) {
                if r.body.readableBytes > limits.maxBodySize {
                    fail("a body of \(r.body.readableBytes) bytes passed the \(limits.maxBodySize)-byte limit", input)
                }
                _ = decoder.takeContinue()
                requests.append("\(r.method) \(r.target) 1.\(r.http10 ? 0 : 1) keep=\(r.keepAlive) ct=\(r.contentType ?? "-") auth=\(r.authorization ?? "-") "
                    + "id=\(r.requestID ?? "-") time=\(r.deviceTime ?? "-") inm=\(r.ifNoneMatch ?? "-") ce=\(r.contentEncoding ?? "-") body=\(Array(r.body.readableBytesView))")
            }
        } catch is DeviceRequestError {
            return (requests, .failed)
        } catch {
            fail("unexpected error \(error)", input)
        }
    }
    return (requests, .waiting)
}

func fail(_ why: String, _ input: [UInt8]) -> Never {
    print("http fuzz: \(why); input (\(input.count) bytes): \(String(decoding: input, as: UTF8.self).debugDescription)")
    exit(1)
}

var decoded = 0, failed = 0
let started = Date()
for _ in 0..<inputs {
    let input = Mutator.mutate(seeds.randomElement(using: &rng)!, interesting: interesting, using: &rng)
    let whole = run(input, cuts: [input.count])
    var cuts: [Int] = []
    var left = input.count
    while left > 0 {
        let n = Int.random(in: 1...min(left, Bool.random(using: &rng) ? 3 : 40), using: &rng)
        cuts.append(n)
        left -= n
    }
    let pieces = run(input, cuts: cuts)
    if whole.0 != pieces.0 || whole.1 != pieces.1 {
        fail("whole: \(whole); in pieces \(cuts): \(pieces)", input)
    }
    decoded += whole.0.count
    if whole.1 == .failed { failed += 1 }
}
let seconds = Date().timeIntervalSince(started)
print("http fuzz: \(inputs) inputs in \(String(format: "%.1f", seconds)) s, \(decoded) requests decoded, \(failed) inputs refused as malformed; no crash, and the same requests whole and in pieces")
