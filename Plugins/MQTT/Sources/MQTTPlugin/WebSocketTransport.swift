import Foundation
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// MQTT over WebSocket (MQTT 5 section 6): an HTTP/1.1 upgrade on one path with the subprotocol
/// `mqtt`, then MQTT bytes in binary frames (a packet may span frames, a frame may hold several).
enum WebSocketTransport {
    static func configure(channel: Channel, path: String, then addMQTT: @escaping @Sendable (Channel) throws -> Void) throws {
        let upgrader = NIOWebSocketServerUpgrader(
            maxFrameSize: 1 << 24,
            shouldUpgrade: { channel, head in
                let requestPath = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
                let offered = head.headers["Sec-WebSocket-Protocol"].flatMap { $0.split(separator: ",") }
                    .map { $0.trimmingCharacters(in: .whitespaces) }
                guard requestPath == path, offered.contains("mqtt") else { return channel.eventLoop.makeSucceededFuture(nil) }
                var headers = HTTPHeaders()
                headers.add(name: "Sec-WebSocket-Protocol", value: "mqtt")
                return channel.eventLoop.makeSucceededFuture(headers)
            },
            upgradePipelineHandler: { channel, _ in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(WebSocketBytesHandler())
                    try addMQTT(channel)
                }
            })
        try channel.pipeline.syncOperations.configureHTTPServerPipeline(
            withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
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
