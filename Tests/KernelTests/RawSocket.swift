import Foundation

/// A plain TCP connection for tests that need exact bytes on the wire (pipelining, bad lengths).
final class RawSocket {
    let fd: Int32

    init?(port: Int) {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        if r != 0 { close(fd); return nil }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func send(_ text: String) { send(Array(text.utf8)) }
    func send(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }

    /// Reads until `count` HTTP responses (by status line) have arrived, the peer closes, or time runs out.
    func readResponses(_ count: Int, timeout: TimeInterval = 5) -> [String] {
        var text = ""
        let deadline = Date().addingTimeInterval(timeout)
        var buf = [UInt8](repeating: 0, count: 65536)
        while Date() < deadline {
            let statuses = text.components(separatedBy: "HTTP/1.1 ").count - 1
            if statuses >= count, Self.complete(text, count) { break }
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { break }
            text += String(decoding: buf[0..<n], as: UTF8.self)
        }
        return text.components(separatedBy: "HTTP/1.1 ").dropFirst().map { "HTTP/1.1 " + $0 }
    }

    /// Reads `count` bytes, or fewer when the peer closes or time runs out.
    func readBytes(_ count: Int, timeout: TimeInterval = 5) -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: count)
        let deadline = Date().addingTimeInterval(timeout)
        defer { setTimeout(5) }
        while out.count < count, Date() < deadline {
            setTimeout(max(0.01, deadline.timeIntervalSinceNow))
            let n = recv(fd, &buf, count - out.count, 0)
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return out
    }

    /// Whether every response seen so far has its whole body.
    private static func complete(_ text: String, _ count: Int) -> Bool {
        let parts = text.components(separatedBy: "HTTP/1.1 ").dropFirst()
        guard let last = parts.last, let headerEnd = last.range(of: "\r\n\r\n") else { return false }
        let head = last[..<headerEnd.lowerBound].lowercased()
        let length = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }.flatMap { Int($0.dropFirst(15).trimmingCharacters(in: .whitespaces)) } ?? 0
        return last[headerEnd.upperBound...].utf8.count >= length
    }

    /// Whether the peer has closed the connection.
    func isClosed(timeout: TimeInterval = 3) -> Bool {
        var buf = [UInt8](repeating: 0, count: 4096)
        let deadline = Date().addingTimeInterval(timeout)
        defer { setTimeout(5) }
        while Date() < deadline {
            setTimeout(max(0.01, deadline.timeIntervalSinceNow))
            let n = recv(fd, &buf, buf.count, 0)
            if n == 0 { return true }
            if n < 0 { return errno != EAGAIN && errno != EWOULDBLOCK }
        }
        return false
    }

    private func setTimeout(_ seconds: Double) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
}

/// A TCP listener on loopback that accepts connections and never answers (for time-out tests).
final class SilentServer: @unchecked Sendable {
    let port: Int
    private let fd: Int32

    init?() {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        guard withUnsafePointer(to: &addr, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }) == 0,
              listen(fd, 64) == 0,
              withUnsafeMutablePointer(to: &addr, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }) == 0
        else {
            close(fd)
            return nil
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        self.fd = fd
        port = Int(UInt16(bigEndian: addr.sin_port))
    }

    /// A pending connection's descriptor, or -1 when none is waiting.
    func accept() -> Int32 { Glibc.accept(fd, nil, nil) }

    deinit { close(fd) }
}

/// An MQTT UTF-8 string (a 2-byte length, then the bytes), for CONNECT packets written by hand.
func mqttString(_ s: String) -> [UInt8] {
    let b = Array(s.utf8)
    return [UInt8(b.count >> 8), UInt8(b.count & 0xFF)] + b
}
