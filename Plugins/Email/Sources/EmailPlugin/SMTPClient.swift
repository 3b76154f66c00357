import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// An SMTP reply: its code and text lines.
struct SMTPReply: Sendable {
    var code: Int
    var lines: [String]
    var text: String { lines.joined(separator: " ") }
}

/// Why a mail could not be sent: `transient` failures (4xx, lost connections) are worth retrying,
/// the others (5xx) are not.
struct SMTPError: Error, CustomStringConvertible {
    var description: String
    var transient: Bool
}

/// Collects reply lines ("250-..." continues, "250 ..." ends a reply) and hands replies to whoever
/// waits, in order. What a server may send is bounded: a reply of more than `maxReplyLines` lines, or
/// more than `maxUnaskedReplies` replies that no command waits for, ends the session (a server that
/// sent continuation lines without end grew the hub's memory until the answer's time-out).
final class SMTPReplyHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    /// Far more than any server's EHLO answer, the longest reply in practice (a line per extension).
    static let maxReplyLines = 100
    static let maxUnaskedReplies = 8
    private var lines: [String] = []
    private var ready: [SMTPReply] = []
    private var waiting: [EventLoopPromise<SMTPReply>] = []
    private var failure: (any Error)?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Lines already read when the session ended are dropped.
        guard failure == nil else { return }
        var buffer = unwrapInboundIn(data)
        var line = buffer.readString(length: buffer.readableBytes) ?? ""
        if line.hasSuffix("\r") { line.removeLast() }
        guard lines.count < Self.maxReplyLines else {
            return overrun(context, "the server sent a reply of more than \(Self.maxReplyLines) lines")
        }
        lines.append(line.count > 4 ? String(line.dropFirst(4)) : "")
        let u = Array(line.utf8)
        // The last line of a reply has a space (or nothing) after its code.
        guard u.count >= 3, let code = Int(String(line.prefix(3))), u.count == 3 || u[3] == UInt8(ascii: " ") else { return }
        let reply = SMTPReply(code: code, lines: lines)
        lines = []
        if !waiting.isEmpty { return waiting.removeFirst().succeed(reply) }
        guard ready.count < Self.maxUnaskedReplies else {
            return overrun(context, "the server sent more than \(Self.maxUnaskedReplies) replies that were not asked for")
        }
        ready.append(reply)
    }

    private func overrun(_ context: ChannelHandlerContext, _ what: String) {
        lines = []
        ready = []
        fail(SMTPError(description: what, transient: true))
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(SMTPError(description: "the server closed the connection", transient: true))
        context.fireChannelInactive()
    }

    private func fail(_ error: any Error) {
        failure = failure ?? error
        for w in waiting { w.fail(error) }
        waiting = []
    }

    /// The next reply; called on the channel's event loop.
    func next(_ loop: any EventLoop) -> EventLoopFuture<SMTPReply> {
        if !ready.isEmpty { return loop.makeSucceededFuture(ready.removeFirst()) }
        if let failure { return loop.makeFailedFuture(failure) }
        let p = loop.makePromise(of: SMTPReply.self)
        waiting.append(p)
        return p.futureResult
    }
}

/// One SMTP session: connect, greet, STARTTLS when asked, authenticate, send one mail, quit.
struct SMTPSession {
    var host: String
    var port: Int
    var tls: String  // starttls, implicit, none
    var sslContext: NIOSSLContext?
    var serverName: String?
    var username: String?
    var password: String?
    var timeout: TimeAmount

    /// `opened` is told the connection once it is made (the sink closes it if it stops meanwhile).
    func send(from: String, to: [String], data: String, group: any EventLoopGroup, opened: (Channel) -> Void = { _ in }) async throws {
        let handler = SMTPReplyHandler()
        let implicitTLS = tls == "implicit" ? sslContext : nil
        let serverName = self.serverName
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(timeout)
                .channelInitializer { ch in
                    ch.eventLoop.makeCompletedFuture {
                        if let implicitTLS { try ch.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: implicitTLS, serverHostname: serverName)) }
                        try ch.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineDecoder()))
                        try ch.pipeline.syncOperations.addHandler(handler)
                    }
                }
                .connect(host: host, port: port).get()
        } catch {
            throw SMTPError(description: "cannot connect to \(host):\(port): \(error)", transient: true)
        }
        opened(channel)
        defer { channel.close(promise: nil) }
        func reply() async throws -> SMTPReply {
            let f = channel.eventLoop.flatSubmit { handler.next(channel.eventLoop) }
            let deadline = channel.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
            defer { deadline.cancel() }
            do { return try await f.get() } catch let e as SMTPError { throw e } catch {
                throw SMTPError(description: "\(error)", transient: true)
            }
        }
        func command(_ line: String, expect: ClosedRange<Int>, _ what: String) async throws -> SMTPReply {
            var b = channel.allocator.buffer(capacity: line.utf8.count + 2)
            b.writeString(line + "\r\n")
            try await channel.writeAndFlush(b).get()
            return try await check(reply(), expect, what)
        }
        func check(_ r: SMTPReply, _ expect: ClosedRange<Int>, _ what: String) throws -> SMTPReply {
            guard expect.contains(r.code) else {
                throw SMTPError(description: "\(what): \(r.code) \(r.text)", transient: (400..<500).contains(r.code))
            }
            return r
        }
        _ = try check(await reply(), 220...220, "greeting")
        var hello = try await command("EHLO iotc.local", expect: 250...250, "EHLO")
        if tls == "starttls" {
            guard hello.lines.contains(where: { $0.uppercased().hasPrefix("STARTTLS") }) else {
                throw SMTPError(description: "the server does not offer STARTTLS (set tls: none to send in the clear)", transient: false)
            }
            _ = try await command("STARTTLS", expect: 220...220, "STARTTLS")
            guard let ssl = sslContext else { throw SMTPError(description: "no TLS context", transient: false) }
            // The TLS handler is made and added on the channel's event loop (it is not Sendable).
            let hostname = serverName
            try await channel.eventLoop.submit {
                try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: ssl, serverHostname: hostname), position: .first)
            }.get()
            hello = try await command("EHLO iotc.local", expect: 250...250, "EHLO after STARTTLS")
        }
        if let username, let password {
            let token = Data(([0] + Array(username.utf8) + [0] + Array(password.utf8))).base64EncodedString()
            _ = try await command("AUTH PLAIN \(token)", expect: 235...235, "AUTH")
        }
        _ = try await command("MAIL FROM:<\(from)>", expect: 250...250, "MAIL FROM")
        for r in to { _ = try await command("RCPT TO:<\(r)>", expect: 250...251, "RCPT TO \(r)") }
        _ = try await command("DATA", expect: 354...354, "DATA")
        // Lines starting with a dot get another (RFC 5321 4.5.2); the mail ends with a lone dot.
        let body = data.replacingOccurrences(of: "\r\n", with: "\n").split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.hasPrefix(".") ? "." + $0 : String($0) }.joined(separator: "\r\n")
        _ = try await command(body + "\r\n.", expect: 250...250, "message")
        _ = try? await command("QUIT", expect: 221...221, "QUIT")
    }
}

/// Splits the stream into lines (CRLF or LF), at most 4 KiB each.
struct LineDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer
    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let i = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            if buffer.readableBytes > 4096 { throw SMTPError(description: "a reply line longer than 4 KiB", transient: true) }
            return .needMoreData
        }
        let line = buffer.readSlice(length: i - buffer.readerIndex)!
        buffer.moveReaderIndex(forwardBy: 1)
        context.fireChannelRead(wrapInboundOut(line))
        return .continue
    }
}
