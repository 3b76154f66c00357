import MQTTBroker
import MQTTCodec
import NIOCore

/// Connects one client's channel to its `ServerConnection`: packets in, the link's pending bytes out
/// (one write per event-loop turn), keep-alive and connect time-outs, and reading paused under
/// backpressure.
final class MQTTServerHandler: ChannelInboundHandler, ConnectionControl, @unchecked Sendable {
    typealias InboundIn = MQTTPacket
    typealias OutboundOut = ByteBuffer

    private let broker: Broker
    private let hub: HubLink
    private let limits: ServerLimits
    private let connectTimeout: Double
    private let maxPendingBytes: Int
    private var connection: ServerConnection?
    private var context: ChannelHandlerContext?
    private var timer: Scheduled<Void>?
    private var keepAlive: TimeAmount?
    private var sawPacket = false
    private var closing = false

    init(broker: Broker, hub: HubLink, limits: ServerLimits, connectTimeout: Double, maxPendingBytes: Int) {
        self.broker = broker
        self.hub = hub
        self.limits = limits
        self.connectTimeout = connectTimeout
        self.maxPendingBytes = maxPendingBytes
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let loop = context.eventLoop
        let me = WeakHandler(self)
        let link = ClientLink(
            maxPendingBytes: maxPendingBytes,
            wake: { loop.execute { me.handler?.flush() } },
            disconnect: { code in loop.execute { me.handler?.connection?.disconnect(reasonCode: code) } })
        let remote = context.channel.remoteAddress.map { a in a.ipAddress.map { "\($0):\(a.port ?? 0)" } ?? "\(a)" } ?? "unknown"
        let c = ServerConnection(broker: broker, hub: hub, limits: limits, link: link, remoteAddress: remote)
        c.control = self
        connection = c
        if context.channel.isActive { armConnectTimeout() }
    }

    func channelActive(context: ChannelHandlerContext) {
        armConnectTimeout()
        context.fireChannelActive()
    }

    private func armConnectTimeout() {
        guard timer == nil, let context else { return }
        timer = context.eventLoop.scheduleTask(in: .milliseconds(Int64(connectTimeout * 1000))) { [weak self] in
            guard let self, self.connection?.state == .awaitingConnect else { return }
            self.connection?.transportClosed(reason: "no CONNECT within \(self.connectTimeout) s")
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        sawPacket = true
        connection?.receive(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        connection?.transportClosed(reason: "connection closed")
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let e = error as? MQTTProtocolError {
            connection?.decodeFailed(e)
        } else {
            connection?.transportClosed(reason: "\(error)")
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        connection?.link.setWritable(context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    private func flush() {
        guard let context, let connection, let bytes = connection.link.takePending() else { return }
        context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
    }

    // MARK: - ConnectionControl

    func close() {
        guard !closing, let context else { return }
        closing = true
        timer?.cancel()
        if let bytes = connection?.link.takePending() {
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(bytes)).whenComplete { _ in channel.close(promise: nil) }
        } else {
            context.close(promise: nil)
        }
    }

    func pauseReading() {
        context?.channel.setOption(.autoRead, value: false).whenFailure { _ in }
    }

    func resumeReading() {
        guard let context else { return }
        let channel = context.channel
        channel.setOption(.autoRead, value: true).whenSuccess { channel.read() }
    }

    func expectPackets(within seconds: Double) {
        timer?.cancel()
        timer = nil
        guard seconds > 0 else { return }
        keepAlive = .milliseconds(Int64(seconds * 1000))
        sawPacket = false
        scheduleKeepAlive()
    }

    private func scheduleKeepAlive() {
        guard let context, let keepAlive else { return }
        timer = context.eventLoop.scheduleTask(in: keepAlive) { [weak self] in
            guard let self, !self.closing else { return }
            if self.sawPacket {
                self.sawPacket = false
                self.scheduleKeepAlive()
            } else {
                self.connection?.keepAliveExpired()
            }
        }
    }

    func retry(after delay: TimeAmount) {
        context?.eventLoop.scheduleTask(in: delay) { [weak self] in self?.connection?.retryStalled() }
    }

    func execute(_ body: @escaping @Sendable () -> Void) {
        context?.eventLoop.execute(body)
    }
}

/// A weak reference the link's closures hold, so that link and handler do not keep each other alive.
private final class WeakHandler: @unchecked Sendable {
    weak var handler: MQTTServerHandler?
    init(_ h: MQTTServerHandler) { handler = h }
}
