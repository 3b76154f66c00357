import Hummingbird
import NIOCore
import NIOHTTPTypes

/// `Expect: 100-continue` on the REST API (RFC 9110 §10.1.1): a client that asks waits for 100
/// Continue before it sends the body (curl waits a second, then sends anyway). The head is answered at
/// once; the request then goes on as any other, and its final response follows.
public final class ContinueHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = HTTPRequestPart
    public typealias InboundOut = HTTPRequestPart
    public typealias OutboundOut = HTTPResponsePart

    public init() {}

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let request) = unwrapInboundIn(data), let expect = request.headerFields[.expect], expect.lowercased() == "100-continue" {
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponse(status: .continue))), promise: nil)
        }
        context.fireChannelRead(data)
    }
}
