import MQTTBroker
import MQTTCodec
import NIOCore
import NIOSSL
import PluginNetworking

/// Connects one client's channel to its `ServerConnection`: bytes in (decoded here, with no buffer
/// kept between packets, so an idle connection holds none), the link's pending bytes out (one write
/// per event-loop turn), keep-alive and connect time-outs, and reading paused under backpressure.
final class MQTTServerHandler: ChannelInboundHandler, ConnectionControl, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let broker: Broker
    private let hub: HubLink
    private let limits: ServerLimits
    private let connectTimeout: Double
    private let maxPendingBytes: Int
    private let sweeper: IdleSweeper
    private let gate: LoopGate
    private var connection: ServerConnection?
    private var context: ChannelHandlerContext?
    private var loop: EventLoop?
    /// Silence allowed before the connection is closed: the connect time-out, then 1.5 x keep-alive
    /// (nil: no limit). Counted by the event loop's sweeper.
    private var idleLimit: TimeAmount?
    private var idle = TimeAmount.zero
    private var sawPacket = false
    private var closing = false
    private var decoder: MQTTPacketDecoder
    /// Inside channelRead: bytes queued now are written at channelReadComplete, in the same turn.
    private var reading = false
    private var flushAfterRead = false
    /// Bytes of a packet not yet complete; nil between packets.
    private var partial: ByteBuffer?
    /// The source's budget of such bytes over all its connections, and this connection's share of it.
    private let partialBytes: PartialBytes
    private var share = PartialBytes.Share()

    init(broker: Broker, hub: HubLink, limits: ServerLimits, connectTimeout: Double, maxPendingBytes: Int, partialBytes: PartialBytes,
         sweeper: IdleSweeper, gate: LoopGate) {
        self.sweeper = sweeper
        self.partialBytes = partialBytes
        decoder = MQTTPacketDecoder(limits: MQTTDecoderLimits(maximumPacketSize: limits.maximumPacketSize))
        self.broker = broker
        self.hub = hub
        self.limits = limits
        self.connectTimeout = connectTimeout
        self.maxPendingBytes = maxPendingBytes
        self.gate = gate
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        loop = context.eventLoop
        let link = ClientLink(maxPendingBytes: maxPendingBytes)
        link.owner = self
        let remote = context.channel.remoteAddress.map { a in a.ipAddress.map { "\($0):\(a.port ?? 0)" } ?? "\(a)" } ?? "unknown"
        let c = ServerConnection(broker: broker, hub: hub, limits: limits, link: link, remoteAddress: remote)
        c.control = self
        connection = c
        idleLimit = .milliseconds(Int64(connectTimeout * 1000))
        sweeper.add(self)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        sweeper.remove(self)
        // The context holds this handler: keeping it would keep the connection, its session link and
        // the channel alive after the socket closed (about 1 KiB per connection, never freed).
        self.context = nil
    }

    /// From the sweeper, on this loop.
    func tick(_ elapsed: TimeAmount) {
        guard let limit = idleLimit, !closing else { return }
        // Not reading by the connection's choice: the client's packets (PINGREQ among them) wait unread.
        if connection?.backlogged == true { sawPacket = true }
        // The connect time-out is absolute; keep-alive restarts with every packet.
        if sawPacket, connection?.state != .awaitingConnect {
            sawPacket = false
            idle = .zero
            return
        }
        idle = idle + elapsed
        guard idle >= limit else { return }
        if connection?.state == .awaitingConnect {
            connection?.transportClosed(reason: "no CONNECT within \(connectTimeout) s")
        } else {
            connection?.keepAliveExpired()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let connection, !closing else { return }
        if connection.state == .awaitingConnect, connection.certificateFingerprint == nil {
            // The hub can authenticate a device by its certificate (registered, or issued by a tenant's authority).
            let presented = ServerTLS.presented(context.pipeline.syncOperations)
            connection.certificateFingerprint = presented.fingerprint
            connection.certificateChain = presented.chain
        }
        reading = true
        defer { reading = false }
        var bytes = unwrapInboundIn(data)
        if var held = partial {
            partial = nil
            held.writeBuffer(&bytes)
            bytes = held
        }
        do {
            while let packet = try decoder.decode(buffer: &bytes) {
                // Only whole packets count as activity: a client trickling bytes is still silent.
                sawPacket = true
                connection.receive(packet)
                if closing { return }
            }
        } catch let e as MQTTProtocolError {
            connection.decodeFailed(e, version: decoder.version)
            return
        } catch {
            connection.transportClosed(reason: "\(error)")
            return
        }
        if bytes.readableBytes > 0 {
            bytes.discardReadBytes()
            partial = bytes
        }
        // Many clients each sending a large packet slowly (a CONNECT with a large will, before the
        // client is even authenticated) are bounded together, not only each by max_packet_size.
        if !share.hold(partial?.readableBytes ?? 0, in: partialBytes) {
            share.release(from: partialBytes)
            partial = nil
            connection.decodeFailed(MQTTProtocolError("the server holds too many packets not yet all in; retry later", reasonCode: MQTTReason.serverBusy),
                                    version: decoder.version)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        sweeper.remove(self)
        share.release(from: partialBytes)
        connection?.transportClosed(reason: "connection closed")
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let e = error as? MQTTProtocolError {
            connection?.decodeFailed(e, version: decoder.version)
        } else {
            connection?.transportClosed(reason: "\(error)")
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if flushAfterRead {
            flushAfterRead = false
            flush()
        } else {
            connection?.balanceReading()
        }
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        connection?.link.setWritable(context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    private func flush() {
        guard let context, let connection else { return }
        connection.runPosted()
        if let bytes = connection.link.takePending() {
            context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
            // Everything pending went out: only a backlog to end is left to see to.
            if connection.backlogged { connection.balanceReading() }
        } else {
            connection.balanceReading()
        }
    }

    // MARK: - ConnectionControl

    func close() {
        guard !closing, let context else { return }
        closing = true
        sweeper.remove(self)
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
        idleLimit = seconds > 0 ? .milliseconds(Int64(seconds * 1000)) : nil
        idle = .zero
        sawPacket = false
    }

    func retry(after delay: TimeAmount) {
        context?.eventLoop.scheduleTask(in: delay) { [weak self] in self?.connection?.retryStalled() }
    }

}

extension MQTTServerHandler: ClientLinkOwner {
    func linkHasPendingBytes() {
        // Our own answers (CONNACK, PUBACK, SUBACK) go out at the end of this read, without a hop.
        if reading, loop?.inEventLoop == true {
            flushAfterRead = true
        } else {
            if let loop { gate.execute(on: loop) { self.flush() } }
        }
    }
    func linkMustDisconnect(_ reasonCode: UInt8) {
        if let loop { gate.execute(on: loop) { self.connection?.disconnect(reasonCode: reasonCode) } }
    }
}
