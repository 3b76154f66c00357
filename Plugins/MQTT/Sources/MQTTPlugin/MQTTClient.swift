import Foundation
import IoTCPluginKit
import MQTTCodec
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import PluginNetworking

/// Connection settings shared by the bridge's sink (`mqtt_publish`) and source (`mqtt_subscribe`).
struct BrokerConnectionConfig: Decodable {
    var server: String
    var client_id: String?
    var username: String?
    var password: String?
    var protocol_version: String
    var keep_alive: Double
    var reconnect_initial: Double
    var reconnect_max: Double
    var max_packet_size: Int
    var tls: ClientTLSFiles?

    static let fields: [ConfigField] = [
        ConfigField("server", .string, "Broker address as host:port.", example: "127.0.0.1:1883", required: true),
        ConfigField("client_id", .string, "Client identifier; a random one when unset."),
        ConfigField("username", .string, "User name."),
        ConfigField("password", .string, "Password.", example: "${env:MQTT_PASSWORD}", secret: true),
        ConfigField("protocol_version", .string, "MQTT protocol version.", default: #""5""#, options: ["3.1.1", "5"]),
        ConfigField("keep_alive", .duration, "Keep-alive interval.", default: "30", example: "30s"),
        ConfigField("reconnect_initial", .duration, "First reconnect delay (at least 10ms); it doubles up to reconnect_max.", default: "0.5", example: "500ms", advanced: true),
        ConfigField("reconnect_max", .duration, "Longest reconnect delay (not shorter than reconnect_initial).", default: "30", example: "30s", advanced: true),
        ConfigField("max_packet_size", .byteSize, "Largest packet taken from the broker (announced to an MQTT 5 broker, which then does not send larger ones); a larger one closes the connection.",
                    default: "1048576", example: "1MiB"),
        ConfigField("tls", .object(ClientTLSFiles.fields(server: "broker", serverName: true)), "Connect with TLS."),
    ]

    /// Mistakes `iotc check` locates at their field (the components that own a connection report these).
    var findings: [ConfigFinding] {
        var out: [ConfigFinding] = []
        // A broker that is down would otherwise be dialled in a tight loop, a warning each time.
        if reconnect_initial < 0.01 { out.append(ConfigFinding(at: "reconnect_initial", "reconnect_initial must be at least 10ms")) }
        if reconnect_max < reconnect_initial { out.append(ConfigFinding(at: "reconnect_max", "reconnect_max must not be shorter than reconnect_initial")) }
        return out
    }
}

/// What the client tells its owner, on the client's event loop.
protocol MQTTClientDelegate: AnyObject, Sendable {
    func clientConnected(sessionPresent: Bool)
    /// A message from a subscription. Call `settle(true)` once the hub has it: the client then sends
    /// PUBACK (QoS 1) or PUBREC (QoS 2). `settle(false)` (the hub could not take it) closes the
    /// connection unacknowledged, and the broker delivers the message again on the next one.
    func clientReceived(_ publish: MQTTPublish, settle: @escaping @Sendable (_ taken: Bool) -> Void)
    func clientDisconnected()
}

/// One MQTT client connection to an external broker (mosquitto, EMQX, AWS IoT Core), both ways:
/// publishes with a window and PUBACK tracking, subscriptions renewed on every connect, reconnect with
/// exponential backoff and jitter, keep-alive, TLS with client certificates. Runs on its own event loop.
final class MQTTClient: @unchecked Sendable {
    /// The largest Receive Maximum MQTT 5 allows; owners bound their writes further.
    static let unlimitedWindow = 65535

    let config: BrokerConnectionConfig
    let host: PluginHost
    let version: MQTTVersion
    let name: String
    let loop: EventLoop
    private let address: (host: String, port: Int)
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    /// What other threads hand the loop (publishes, verdicts on received messages), closed before the
    /// group stops.
    private let gate = LoopGate()
    private let sslContext: NIOSSLContext?
    private let clientID: String
    private let subscriptions: [(String, UInt8)]
    private let cleanStart: Bool
    private let sessionExpiry: UInt32
    weak var delegate: MQTTClientDelegate?

    // Event-loop state.
    private var channel: Channel?
    private(set) var connected = false
    private var stopping = false
    private var nextPacketID: UInt16 = 0
    private var inFlight: [UInt16: @Sendable (UInt8?) -> Void] = [:]
    private var window: Int = MQTTClient.unlimitedWindow
    private var backoff: Double
    private var lastPingAnswered = true
    /// What other threads may read without hopping to the loop.
    private let state = NIOLockedValueBox((connected: false, inFlight: 0, window: 0))

    init(name: String, config: BrokerConnectionConfig, host: PluginHost, subscriptions: [(String, UInt8)] = [],
         cleanStart: Bool = true, sessionExpiry: UInt32 = 0) throws {
        guard let colon = config.server.lastIndex(of: ":"), let port = Int(config.server[config.server.index(after: colon)...]),
              (1...65535).contains(port) else { throw PluginError("server '\(config.server)' should be HOST:PORT") }
        address = (String(config.server[..<colon]), port)
        guard (64...268_435_455).contains(config.max_packet_size) else { throw PluginError("max_packet_size must be 64 B to 256 MiB") }
        self.name = name
        self.config = config
        self.host = host
        self.subscriptions = subscriptions
        self.cleanStart = cleanStart
        self.sessionExpiry = sessionExpiry
        version = config.protocol_version == "3.1.1" ? .v311 : .v5
        loop = group.next()
        clientID = config.client_id ?? "iotc-\(UInt32.random(in: 0...UInt32.max))"
        backoff = config.reconnect_initial
        if let tls = config.tls {
            sslContext = try NIOSSLContext(configuration: try tls.configuration())
        } else {
            sslContext = nil
        }
    }

    func start() { loop.execute { self.connect() } }

    /// Whether a publish may be started now (connected, and the window has room); reserves a slot.
    func reserve(qos: UInt8) -> Bool {
        state.withLockedValue { s -> Bool in
            guard s.connected, s.inFlight < s.window else { return false }
            if qos > 0 { s.inFlight += 1 }
            return true
        }
    }

    /// Publishes (after `reserve`). `done(nil)` when written (QoS 0) or acknowledged (QoS 1); `done(code)`
    /// with the reason code on refusal or 0x80 when the connection was lost first.
    func publish(_ publish: MQTTPublish, done: @escaping @Sendable (UInt8?) -> Void) {
        gate.execute(on: loop, {
            guard let ch = self.channel, self.connected else {
                done(MQTTReason.unspecified)
                self.publishState()
                return
            }
            var p = publish
            if p.qos > 0 {
                repeat { self.nextPacketID &+= 1 } while self.nextPacketID == 0 || self.inFlight[self.nextPacketID] != nil
                p.packetID = self.nextPacketID
                self.inFlight[self.nextPacketID] = done
                ch.writeAndFlush(MQTTPacket.publish(p), promise: nil)
            } else {
                ch.writeAndFlush(MQTTPacket.publish(p)).whenComplete { r in
                    if case .success = r { done(nil) } else { done(MQTTReason.unspecified) }
                }
            }
            self.publishState()
        }, otherwise: { done(MQTTReason.unspecified) })
    }

    private func connect() {
        guard !stopping else { return }
        let handler = MQTTClientHandler(client: self)
        let ssl = sslContext
        let serverName = config.tls?.server_name ?? address.host
        let version = self.version
        let maxPacketSize = config.max_packet_size
        ClientBootstrap(group: loop)
            .connectTimeout(.seconds(10))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let ssl {
                        let name = serverName.first?.isNumber == true ? nil : serverName
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: ssl, serverHostname: name))
                    }
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(MQTTPacketDecoder(
                        version: version, limits: MQTTDecoderLimits(maximumPacketSize: maxPacketSize))))
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(MQTTPacketEncoder(version: version)))
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .connect(host: address.host, port: address.port)
            .whenComplete { result in
                switch result {
                case .success(let ch):
                    self.channel = ch
                    var props: [MQTTProperty] = []
                    if version == .v5 {
                        props.append(.twoByte(MQTTProperty.receiveMaximum, 65535))
                        props.append(.fourByte(MQTTProperty.maximumPacketSize, UInt32(self.config.max_packet_size)))
                        if self.sessionExpiry > 0 { props.append(.fourByte(MQTTProperty.sessionExpiryInterval, self.sessionExpiry)) }
                    }
                    let connect = MQTTConnect(version: version, clientID: self.clientID, cleanStart: self.cleanStart,
                                              keepAlive: UInt16(max(0, min(65535, self.config.keep_alive))),
                                              username: self.config.username, password: self.config.password.map { Array($0.utf8) }, properties: props)
                    ch.writeAndFlush(MQTTPacket.connect(connect), promise: nil)
                case .failure(let error):
                    self.host.log(.warning, "\(self.name): cannot connect to \(self.config.server): \(error)")
                    self.scheduleReconnect()
                }
            }
    }

    private func scheduleReconnect() {
        guard !stopping else { return }
        let delay = Double.random(in: (backoff / 2)...backoff)
        backoff = min(config.reconnect_max, backoff * 2)
        loop.scheduleTask(in: .milliseconds(Int64(delay * 1000))) { self.connect() }
    }

    // Called by the handler on the event loop.
    func received(_ packet: MQTTPacket) {
        switch packet {
        case .connack(let ack):
            guard ack.reasonCode == 0 else {
                host.log(.error, "\(name): \(config.server) refused the connection (reason code 0x\(String(ack.reasonCode, radix: 16)))")
                channel?.close(promise: nil)
                return
            }
            connected = true
            backoff = config.reconnect_initial
            window = Self.unlimitedWindow
            for case .twoByte(MQTTProperty.receiveMaximum, let v) in ack.properties { window = min(window, Int(v)) }
            publishState()
            host.log(.info, "\(name): connected to \(config.server)\(ack.sessionPresent ? " (session resumed)" : "")")
            if !subscriptions.isEmpty {
                // Subscribe again on every connect: a broker that lost the session (a restart without
                // persistence) gets the subscriptions back.
                channel?.writeAndFlush(MQTTPacket.subscribe(MQTTSubscribe(packetID: 1, filters: subscriptions.map { ($0.0, MQTTSubscriptionOptions(qos: $0.1)) })), promise: nil)
            }
            scheduleKeepAlive()
            delegate?.clientConnected(sessionPresent: ack.sessionPresent)
        case .suback(let a):
            for (i, code) in a.reasonCodes.enumerated() where code >= 0x80 && i < subscriptions.count {
                host.log(.error, "\(name): \(config.server) refused the subscription to \(subscriptions[i].0) (reason code 0x\(String(code, radix: 16)))")
            }
        case .publish(let p):
            let ch = channel
            let id = p.packetID ?? 0
            let qos = p.qos
            delegate?.clientReceived(p) { [loop, gate, name, host, server = config.server] taken in
                gate.execute(on: loop) {
                    guard let ch, ch === self.channel else { return }  // the broker sends it again on the next connection
                    guard taken else {
                        // Not acknowledged, it would hold a place in the broker's window for good, and the
                        // broker sends it again only on a new connection (MQTT 5 §4.4): reconnect.
                        host.log(.warning, "\(name): the hub could not take a message on \(p.topic); reconnecting to \(server) so that the broker sends it again")
                        ch.close(promise: nil)
                        return
                    }
                    if qos == 1 { ch.writeAndFlush(MQTTPacket.puback(MQTTPacketAck(packetID: id)), promise: nil) }
                    if qos == 2 { ch.writeAndFlush(MQTTPacket.pubrec(MQTTPacketAck(packetID: id)), promise: nil) }
                }
            }
        case .pubrel(let a):
            channel?.writeAndFlush(MQTTPacket.pubcomp(MQTTPacketAck(packetID: a.packetID)), promise: nil)
        case .puback(let a):
            guard let done = inFlight.removeValue(forKey: a.packetID) else { return }
            publishState()
            done(a.reasonCode >= 0x80 ? a.reasonCode : nil)
        case .pingresp:
            lastPingAnswered = true
        case .disconnect(let code, _):
            host.log(.warning, "\(name): the broker disconnected (reason code 0x\(String(code, radix: 16)))")
            channel?.close(promise: nil)
        default:
            break
        }
    }

    func disconnected() {
        connected = false
        channel = nil
        // Unacknowledged publishes go back to their owners, which offer them again after reconnecting.
        let pending = inFlight
        inFlight = [:]
        publishState()
        for (_, done) in pending { done(MQTTReason.unspecified) }
        delegate?.clientDisconnected()
        scheduleReconnect()
    }

    private func scheduleKeepAlive() {
        guard config.keep_alive > 0 else { return }
        let ch = channel
        lastPingAnswered = true
        @Sendable func tick() {
            loop.scheduleTask(in: .milliseconds(Int64(config.keep_alive * 500))) {
                guard let current = self.channel, current === ch, self.connected else { return }
                guard self.lastPingAnswered else {
                    self.host.log(.warning, "\(self.name): \(self.config.server) did not answer PINGREQ; reconnecting")
                    current.close(promise: nil)
                    return
                }
                self.lastPingAnswered = false
                current.writeAndFlush(MQTTPacket.pingreq, promise: nil)
                tick()
            }
        }
        tick()
    }

    private func publishState() {
        let s = (connected, inFlight.count, window)
        state.withLockedValue { $0 = s }
    }

    private func waitForAcks(until deadline: NIODeadline) -> EventLoopFuture<Void> {
        if inFlight.isEmpty || !connected || NIODeadline.now() >= deadline { return loop.makeSucceededVoidFuture() }
        return loop.scheduleTask(in: .milliseconds(20)) {}.futureResult.flatMap { self.waitForAcks(until: deadline) }
    }

    /// Waits up to two seconds for outstanding PUBACKs, settles the rest as failed, disconnects.
    func stop() {
        let done = loop.submit { () -> EventLoopFuture<Void> in
            self.stopping = true
            return self.waitForAcks(until: .now() + .seconds(2)).flatMap {
                for (_, done) in self.inFlight { done(MQTTReason.unspecified) }
                self.inFlight = [:]
                guard let ch = self.channel else { return self.loop.makeSucceededVoidFuture() }
                ch.writeAndFlush(MQTTPacket.disconnect(reasonCode: 0, properties: []), promise: nil)
                return ch.close()
            }
        }.flatMap { $0 }
        try? done.wait()
        gate.close()
        try? group.syncShutdownGracefully()
    }
}

/// Passes decoded packets and connection loss to the client, on the client's event loop.
final class MQTTClientHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = MQTTPacket
    let client: MQTTClient
    init(client: MQTTClient) { self.client = client }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { client.received(unwrapInboundIn(data)) }
    func channelInactive(context: ChannelHandlerContext) { client.disconnected() }
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        client.host.log(.warning, "\(client.name): \(error)")
        context.close(promise: nil)
    }
}
