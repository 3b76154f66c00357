import Foundation
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// MQTT over WebSocket (MQTT 5 section 6): an HTTP/1.1 upgrade on one path with the subprotocol
/// `mqtt`, then MQTT bytes in binary frames (a packet may span frames, a frame may hold several).
enum WebSocketTransport {
    /// A request's path, without its query.
    static func path(of head: HTTPRequestHead) -> Substring { head.uri.split(separator: "?", maxSplits: 1).first ?? Substring(head.uri) }

    /// Serves the upgrade on `channel`, then hands it to `addMQTT`. The upgrade must be done within
    /// `timeout` (the source's connect_timeout, which then starts again for CONNECT), or the connection
    /// closes: the MQTT handler that times out a silent connection is only added after it. A frame may
    /// be as large as the largest MQTT packet taken (`maxFrameSize`), as the decoder holds a whole frame.
    static func configure(channel: Channel, path: String, timeout: TimeAmount, maxFrameSize: Int,
                          then addMQTT: @escaping @Sendable (Channel) throws -> Void) throws {
        let refusal = RefusedUpgradeHandler(path: path)
        let deadline = channel.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
        channel.closeFuture.whenComplete { _ in deadline.cancel() }
        let upgrader = NIOWebSocketServerUpgrader(
            maxFrameSize: maxFrameSize,
            shouldUpgrade: { channel, head in
                let requestPath = WebSocketTransport.path(of: head)
                let offered = head.headers["Sec-WebSocket-Protocol"].flatMap { $0.split(separator: ",") }
                    .map { $0.trimmingCharacters(in: .whitespaces) }
                guard requestPath == path, offered.contains("mqtt") else { return channel.eventLoop.makeSucceededFuture(nil) }
                var headers = HTTPHeaders()
                headers.add(name: "Sec-WebSocket-Protocol", value: "mqtt")
                return channel.eventLoop.makeSucceededFuture(headers)
            },
            upgradePipelineHandler: { channel, _ in
                channel.eventLoop.makeCompletedFuture {
                    deadline.cancel()
                    channel.pipeline.syncOperations.removeHandler(refusal, promise: nil)
                    try channel.pipeline.syncOperations.addHandler(WebSocketBytesHandler())
                    try addMQTT(channel)
                }
            })
        try channel.pipeline.syncOperations.configureHTTPServerPipeline(
            withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
        try channel.pipeline.syncOperations.addHandler(refusal)
    }
}

/// Answers a request that did not become an MQTT WebSocket, and closes: 404 on another path, 426
/// Upgrade Required (with `Upgrade: websocket`) for a plain request, 400 for an upgrade that does not
/// offer the `mqtt` subprotocol. Without it such a connection waited in silence. Removed when the
/// upgrade happens.
final class RefusedUpgradeHandler: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let path: String

    init(path: String) { self.path = path }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data) else { return }
        let requestPath = WebSocketTransport.path(of: head)
        var headers = HTTPHeaders([("Content-Type", "text/plain"), ("Connection", "close")])
        let status: HTTPResponseStatus, why: String
        if requestPath != path {
            (status, why) = (.notFound, "MQTT over WebSocket is served at \(path)")
        } else if head.headers["Upgrade"].isEmpty {
            (status, why) = (.upgradeRequired, "MQTT over WebSocket: upgrade to websocket with the subprotocol mqtt")
            headers.add(name: "Upgrade", value: "websocket")
        } else {
            (status, why) = (.badRequest, "MQTT over WebSocket needs the subprotocol mqtt (Sec-WebSocket-Protocol)")
        }
        headers.add(name: "Content-Length", value: String(why.utf8.count))
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: why)))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}

/// Binary WebSocket frames to bytes and back; answers pings and closes.
final class WebSocketBytesHandler: ChannelDuplexHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = WebSocketFrame
    private var closing = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .binary, .continuation:
            context.fireChannelRead(wrapInboundOut(frame.unmaskedData))
        case .ping:
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
        case .connectionClose:
            guard !closing else { return context.close(promise: nil) }
            closing = true
            let reply = WebSocketFrame(fin: true, opcode: .connectionClose, data: context.channel.allocator.buffer(capacity: 0))
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(reply)).whenComplete { _ in channel.close(promise: nil) }
        case .text:
            // MQTT travels in binary frames only (MQTT 5 section 6).
            context.close(promise: nil)
        default:
            break
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let bytes = unwrapOutboundIn(data)
        context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .binary, data: bytes)), promise: promise)
    }
}
