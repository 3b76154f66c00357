import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `CoAPLoad lwm2m PORT CLIENTS SECONDS`: CLIENTS simulated LwM2M clients, each on its own UDP socket,
/// register (lifetime 90 s, objects 1, 3 and 3303) with 64 registrations in flight, then hold for
/// SECONDS sending an Update every 60 s each, also at most 64 in flight (as real clients spread over
/// time would be; one burst of 10,000 datagrams would only measure the socket buffer). Prints one JSON
/// line: registered, the registration rate, updates sent and answered 2.04, and anything else.
enum LwM2MClients {
    static func run(port: UInt16, clients: Int, seconds: Double) {
        var fds: [Int32] = []
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = port.bigEndian
        for _ in 0..<clients {
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard fd >= 0 else { break }
            _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            fds.append(fd)
        }
        var location = [String?](repeating: nil, count: fds.count)
        var mid: UInt16 = 1
        func option(_ number: Int, _ last: inout Int, _ value: [UInt8], into p: inout [UInt8]) {
            let delta = number - last
            last = number
            let d = delta < 13 ? delta : 13, l = value.count < 13 ? value.count : 13
            p.append(UInt8(d << 4 | l))
            if delta >= 13 { p.append(UInt8(delta - 13)) }
            if value.count >= 13 { p.append(UInt8(value.count - 13)) }
            p += value
        }
        func register(_ i: Int) {
            mid &+= 1
            var p: [UInt8] = [0x42, 0x02, UInt8(mid >> 8), UInt8(mid & 0xFF), UInt8(i >> 8 & 0xFF), UInt8(i & 0xFF)]
            var last = 0
            option(11, &last, Array("rd".utf8), into: &p)
            option(12, &last, [40], into: &p)
            for q in ["ep=sim-\(i)", "lt=90", "lwm2m=1.1", "b=U"] { option(15, &last, Array(q.utf8), into: &p) }
            p += [0xFF] + Array("</1/0>,</3/0>,</3303/0>;ver=1.1".utf8)
            _ = p.withUnsafeBytes { send(fds[i], $0.baseAddress, $0.count, 0) }
        }
        func update(_ i: Int) {
            guard let loc = location[i] else { return }
            mid &+= 1
            var p: [UInt8] = [0x42, 0x02, UInt8(mid >> 8), UInt8(mid & 0xFF), 0x55, 0x55]
            var last = 0
            for segment in loc.split(separator: "/") { option(11, &last, Array(segment.utf8), into: &p) }
            _ = p.withUnsafeBytes { send(fds[i], $0.baseAddress, $0.count, 0) }
        }
        var buf = [UInt8](repeating: 0, count: 1500)
        var pollfds = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        var registered = 0, updated = 0, other = 0, next = 0, inFlight = 0, updatesSent = 0, updatesInFlight = 0
        let start = Date()
        var registeredAt = start
        var lastUpdate = [Double](repeating: 0, count: fds.count)
        func drain() {
            _ = poll(&pollfds, nfds_t(pollfds.count), 10)
            for k in pollfds.indices where pollfds[k].revents != 0 {
                pollfds[k].revents = 0
                while true {
                    let n = recv(fds[k], &buf, buf.count, 0)
                    guard n >= 4 else { break }
                    let code = buf[1]
                    if code == 0x41, location[k] == nil {  // 2.01 Created: read Location-Path
                        var i = 4 + Int(buf[0] & 0xF), number = 0
                        var segments: [String] = []
                        while i < n, buf[i] != 0xFF {
                            let delta = Int(buf[i] >> 4), length = Int(buf[i] & 0xF)
                            i += 1
                            number += delta == 13 ? 13 + Int(buf[i]) : delta
                            if delta == 13 { i += 1 }
                            var len = length
                            if length == 13 { len = 13 + Int(buf[i]); i += 1 }
                            if number == 8 { segments.append(String(decoding: buf[i..<min(n, i + len)], as: UTF8.self)) }
                            i += len
                        }
                        location[k] = segments.joined(separator: "/")
                        lastUpdate[k] = Date().timeIntervalSince(start)
                        registered += 1
                        inFlight -= 1
                        if registered == fds.count { registeredAt = Date() }
                    } else if code == 0x44 {
                        updated += 1
                        updatesInFlight -= 1
                    } else {
                        other += 1
                        if location[k] == nil { inFlight -= 1 }
                    }
                }
            }
        }
        while registered + other < fds.count, Date().timeIntervalSince(start) < 60 {
            while inFlight < 64, next < fds.count {
                register(next)
                next += 1
                inFlight += 1
            }
            drain()
        }
        let registerSeconds = registeredAt.timeIntervalSince(start)
        while Date().timeIntervalSince(start) < registerSeconds + seconds {
            let t = Date().timeIntervalSince(start)
            for i in fds.indices where updatesInFlight < 64 && location[i] != nil && t - lastUpdate[i] >= 60 {
                lastUpdate[i] = t
                update(i)
                updatesSent += 1
                updatesInFlight += 1
            }
            drain()
        }
        drain()
        print(#"{"clients":\#(fds.count),"registered":\#(registered),"registrations_per_s":\#(Int(Double(registered) / max(registerSeconds, 0.001))),"updates_sent":\#(updatesSent),"updates_answered":\#(updated),"other_answers":\#(other)}"#)
    }
}
