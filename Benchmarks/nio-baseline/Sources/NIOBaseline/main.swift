import NIOCore
import NIOPosix

/// Answers each request (headers plus a Content-Length body) with the same bytes the hub sends.
final class FixedResponder: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private var pending = ByteBuffer()
    private static let response = ByteBuffer(string: "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 21\r\nConnection: keep-alive\r\n\r\n{\"status\":\"accepted\"}")

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var chunk = unwrapInboundIn(data)
        if pending.readableBytes == 0 { pending = chunk } else { pending.writeBuffer(&chunk) }
        var answered = false
        while let total = Self.requestLength(pending) {
            pending.moveReaderIndex(forwardBy: total)
            context.write(wrapOutboundOut(Self.response), promise: nil)
            answered = true
        }
        if answered { context.flush() }
    }

    /// The length of the first complete request (headers and Content-Length body), or nil.
    private static func requestLength(_ buffer: ByteBuffer) -> Int? {
        buffer.withUnsafeReadableBytes { b -> Int? in
            guard b.count >= 4 else { return nil }
            var length = 0
            var i = 0
            while i + 3 < b.count {
                if b[i] == 13 && b[i + 1] == 10 && b[i + 2] == 13 && b[i + 3] == 10 {
                    return b.count >= i + 4 + length ? i + 4 + length : nil
                }
                // "Content-Length: " starts a line: read its digits.
                if b[i] == 10, i + 16 < b.count, b[i + 1] | 0x20 == UInt8(ascii: "c"), b[i + 9] == UInt8(ascii: "-"),
                   b[i + 10] | 0x20 == UInt8(ascii: "l"), b[i + 15] == UInt8(ascii: ":") {
                    var j = i + 16
                    while j < b.count, b[j] == 32 { j += 1 }
                    length = 0
                    while j < b.count, b[j] >= 48, b[j] <= 57 { length = length * 10 + Int(b[j] - 48); j += 1 }
                }
                i += 1
            }
            return nil
        }
    }
}

let port = Int(CommandLine.arguments.dropFirst().first ?? "") ?? 18555
let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
let server = try ServerBootstrap(group: group)
    .serverChannelOption(.backlog, value: 1024)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
    .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(FixedResponder()) }
    }
    .bind(host: "127.0.0.1", port: port).wait()
try server.closeFuture.wait()
