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

/// Binary WebSocket frames to bytes and back; answers pings and closes. Frames that break RFC 6455 fail
/// the connection (a close frame with 1002, then the close): a frame not masked (§5.1), a reserved bit
/// set (§5.2: no extension is negotiated), an unknown opcode, a continuation with no message under way
/// or a new message before the last one ended (§5.4). A text frame is closed with 1003 (MQTT 5 §6: MQTT
/// travels in binary frames only). Pings are answered, but while the connection cannot take more
/// writes (a client that pings and does not read) only the latest ping's answer is kept (§5.5.3), so
/// that the hub holds one answer, not one per ping.
final class WebSocketBytesHandler: ChannelDuplexHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = WebSocketFrame
    private var closing = false
    /// A binary message whose last frame has not come yet.
    private var fragmented = false
    private var pendingPong: ByteBuffer?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        // Nothing is read after the close began.
        guard !closing else { return }
        guard frame.maskKey != nil, !frame.rsv1, !frame.rsv2, !frame.rsv3 else { return fail(context, .protocolError) }
        switch frame.opcode {
        case .binary, .continuation:
            guard (frame.opcode == .continuation) == fragmented else { return fail(context, .protocolError) }
            fragmented = !frame.fin
            context.fireChannelRead(wrapInboundOut(frame.unmaskedData))
        case .ping:
            if context.channel.isWritable {
                context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
            } else {
                pendingPong = frame.unmaskedData
            }
        case .pong:
            break
        case .connectionClose:
            close(context, code: nil)
        case .text:
            fail(context, .unacceptableData)
        default:
            fail(context, .protocolError)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, let data = pendingPong, !closing {
            pendingPong = nil
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: data)), promise: nil)
        }
        context.fireChannelWritabilityChanged()
    }

    /// Fails the connection: a close frame with `code`, then the close.
    private func fail(_ context: ChannelHandlerContext, _ code: WebSocketErrorCode) { close(context, code: code) }

    /// Sends a close frame (with `code`, or empty in answer to the client's), then closes.
    private func close(_ context: ChannelHandlerContext, code: WebSocketErrorCode?) {
        closing = true
        var body = context.channel.allocator.buffer(capacity: 2)
        if let code { body.write(webSocketErrorCode: code) }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: body))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let bytes = unwrapOutboundIn(data)
        context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .binary, data: bytes)), promise: promise)
    }
}
