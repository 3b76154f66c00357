import Foundation
#if canImport(Glibc)
import Glibc
#endif

// CoAPLoad PORT PATH SECONDS IN_FLIGHT [METHOD]: sends confirmable POSTs, or PUTs when METHOD is
// "put" (Content-Format JSON, a 40-byte body) to 127.0.0.1:PORT/PATH, keeping IN_FLIGHT unanswered,
// and prints one JSON line with the completed requests per second. A request completes on a 2.xx
// answer, piggybacked or separate (whose CON is acknowledged); error codes are counted, and a request
// unanswered for 2 s is sent again. A second of warm-up comes first, not counted.
let args = CommandLine.arguments
if args.count == 5, args[1] == "lwm2m", let port = UInt16(args[2]), let clients = Int(args[3]), let seconds = Double(args[4]) {
    LwM2MClients.run(port: port, clients: clients, seconds: seconds)
    exit(0)
}
guard args.count == 5 || args.count == 6, let port = UInt16(args[1]), let seconds = Double(args[3]), let inFlight = Int(args[4]) else {
    FileHandle.standardError.write(Data("usage: CoAPLoad PORT PATH SECONDS IN_FLIGHT [post|put]\n       CoAPLoad lwm2m PORT CLIENTS SECONDS\n".utf8))
    exit(2)
}
let path = args[2].split(separator: "/").map(String.init)
let method: UInt8 = args.count == 6 && args[5] == "put" ? 0x03 : 0x02

let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
var addr = sockaddr_in()
addr.sin_family = sa_family_t(AF_INET)
addr.sin_addr.s_addr = inet_addr("127.0.0.1")
addr.sin_port = port.bigEndian
_ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
var size: Int32 = 4 << 20
setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, 4)
var tv = timeval(tv_sec: 0, tv_usec: 100_000)
setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))

let body = Array(#"{"temperature":21.5,"humidity":40,"n":1}"#.utf8)
var nextMID: UInt16 = 1
/// The token (4 bytes) of each request in flight, and when it was sent.
var pending: [UInt32: (mid: UInt16, sent: Double)] = [:]
var nextToken: UInt32 = 1

func now() -> Double { Date().timeIntervalSince1970 }

@MainActor func send(token: UInt32) {
    let mid = nextMID
    nextMID &+= 1
    var p: [UInt8] = [0x44, method, UInt8(mid >> 8), UInt8(mid & 0xFF)]
    p += withUnsafeBytes(of: token.bigEndian) { Array($0) }
    var last = 0
    for segment in path {
        let s = Array(segment.utf8)
        let delta = 11 - last
        if s.count < 13 { p.append(UInt8(delta << 4 | s.count)) } else { p += [UInt8(delta << 4 | 13), UInt8(s.count - 13)] }
        p += s
        last = 11
    }
    p += [UInt8((12 - last) << 4 | 1), 50, 0xFF] + body
    pending[token] = (mid, now())
    _ = p.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
}

for _ in 0..<inFlight {
    send(token: nextToken)
    nextToken += 1
}
// The first second warms the server up (caches, allocator, thread wake-ups) and is not counted.
let warmUp = 1.0
var start = now()
var counting = false
var done = 0, errors = 0, separate = 0, resent = 0
var buf = [UInt8](repeating: 0, count: 2048)
var lastSweep = start
while true {
    // The warm-up ends here and only here, so that the figures printed are always the counted window's.
    let elapsed = now() - start
    if counting && elapsed >= seconds { break }
    if !counting && elapsed >= warmUp {
        counting = true
        start = now()
        (done, errors, separate, resent) = (0, 0, 0, 0)
    }
    let n = recv(fd, &buf, buf.count, 0)
    if n >= 4 {
        let type = buf[0] >> 4 & 0x3, tkl = Int(buf[0] & 0xF), code = buf[1]
        if type == 0 {  // a separate response (CON): acknowledge it
            _ = [0x60, 0x00, buf[2], buf[3]].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, 4, 0) }
            separate += 1
        }
        if code != 0, tkl == 4, n >= 8 {
            let token = UInt32(buf[4]) << 24 | UInt32(buf[5]) << 16 | UInt32(buf[6]) << 8 | UInt32(buf[7])
            if pending.removeValue(forKey: token) != nil {
                if code >> 5 == 2 { done += 1 } else { errors += 1 }
                send(token: nextToken)
                nextToken += 1
            }
        }
    }
    let t = now()
    if t - lastSweep > 0.5 {
        lastSweep = t
        for (token, p) in pending where t - p.sent > 2 {
            pending[token] = nil
            resent += 1
            send(token: token)
        }
    }
}
let elapsed = now() - start
print(#"{"requests_per_s":\#(Int(Double(done) / elapsed)),"completed":\#(done),"errors":\#(errors),"separate":\#(separate),"resent":\#(resent),"in_flight":\#(inFlight)}"#)
