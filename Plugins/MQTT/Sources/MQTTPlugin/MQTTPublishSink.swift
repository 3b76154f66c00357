import Foundation
import IoTCPluginKit
import MQTTCodec
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// Publishes messages to an external MQTT broker (mosquitto, EMQX, AWS IoT Core) at QoS 0 or 1.
final class MQTTPublishSink: Sink, @unchecked Sendable {
    struct Config: Decodable {
        var server: String
        var topic: String
        var qos: Int
        var retain: Bool
        var client_id: String?
        var username: String?
        var password: String?
        var protocol_version: String
        var keep_alive: Double
        var reconnect_initial: Double
        var reconnect_max: Double
        var forward_properties: Bool
        var tls: TLS?
        struct TLS: Decodable {
            var ca_file: String?
            var certificate_file: String?
            var key_file: String?
            var server_name: String?
        }
    }

    static let name = "mqtt_publish"
    /// The largest Receive Maximum MQTT 5 allows; the hub's max_in_flight is the real bound.
    static let unlimitedWindow = 65535
    static let summary = "Publishes messages to an external MQTT broker at QoS 0 or 1, reconnecting with backoff."
    static let description = """
        `topic` is a template: `{topic}`, `{device}`, `{tenant}` and `{kind}` are replaced from the message. \
        At most the broker's Receive Maximum (MQTT 5) and the sink's `max_in_flight` publishes await their \
        PUBACK at once. At QoS 1 a message is acknowledged when the broker's PUBACK arrives (an MQTT 5 reason code of 0x80 \
        or more rejects it to the dead-letter store); at QoS 0 once it is written to the socket. While the \
        broker is unreachable the sink reports backpressure, so nothing is dropped: the hub holds messages \
        and reconnects with exponential backoff and jitter; messages whose PUBACK was outstanding when the \
        connection dropped are sent again. With MQTT 5 and `forward_properties`, the message's `mqtt.*` \
        properties (content type, user properties, response topic, correlation data) and its content type \
        are carried as MQTT 5 properties.
        """
    static let fields: [ConfigField] = [
        ConfigField("server", .string, "Broker address as host:port.", example: "127.0.0.1:1883", required: true),
        ConfigField("topic", .string, "Topic template.", default: #""{topic}""#, example: "hub/{tenant}/{device}/{kind}"),
        ConfigField("qos", .int, "Quality of service: 0 or 1.", default: "1"),
        ConfigField("retain", .bool, "Publish with the retain flag.", default: "false"),
        ConfigField("client_id", .string, "Client identifier; a random one when unset."),
        ConfigField("username", .string, "User name."),
        ConfigField("password", .string, "Password.", example: "${env:MQTT_PASSWORD}", secret: true),
        ConfigField("protocol_version", .string, "MQTT protocol version.", default: #""5""#, options: ["3.1.1", "5"]),
        ConfigField("keep_alive", .duration, "Keep-alive interval.", default: "30", example: "30s"),
        ConfigField("reconnect_initial", .duration, "First reconnect delay; it doubles up to reconnect_max.", default: "0.5", example: "500ms", advanced: true),
        ConfigField("reconnect_max", .duration, "Longest reconnect delay.", default: "30", example: "30s", advanced: true),
        ConfigField("forward_properties", .bool, "Carry the message's MQTT 5 properties and content type.", default: "true"),
        ConfigField("tls", .object([
            ConfigField("ca_file", .string, "PEM CA bundle to verify the broker; the system's when unset."),
            ConfigField("certificate_file", .string, "PEM client certificate, for brokers that require one."),
            ConfigField("key_file", .string, "PEM client key."),
            ConfigField("server_name", .string, "Name to verify in the broker's certificate; the server host when unset."),
        ]), "Connect with TLS."),
    ]

    let config: Config
    let host: PluginHost
    let version: MQTTVersion
    private let address: (host: String, port: Int)
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let loop: EventLoop
    private let sslContext: NIOSSLContext?
    private let clientID: String

    // Event-loop state.
    private var channel: Channel?
    private var connected = false
    private var stopping = false
    private var nextPacketID: UInt16 = 0
    private var inFlight: [UInt16: (MQTTPublish, Ack)] = [:]
    private var window: Int
    private var backoff: Double
    private var lastPingAnswered = true
    private let state = NIOLockedValueBox((connected: false, inFlight: 0, window: 0))

    init(config: Config, host: PluginHost) throws {
        guard config.qos == 0 || config.qos == 1 else { throw PluginError("qos must be 0 or 1") }
        guard let colon = config.server.lastIndex(of: ":"), let port = Int(config.server[config.server.index(after: colon)...]),
              (1...65535).contains(port) else { throw PluginError("server '\(config.server)' should be HOST:PORT") }
        address = (String(config.server[..<colon]), port)
        self.config = config
        self.host = host
        version = config.protocol_version == "3.1.1" ? .v311 : .v5
        loop = group.next()
        clientID = config.client_id ?? "iotc-\(UInt32.random(in: 0...UInt32.max))"
        window = Self.unlimitedWindow
        backoff = config.reconnect_initial
        if let tls = config.tls {
            var c = TLSConfiguration.makeClientConfiguration()
            if let ca = tls.ca_file { c.trustRoots = .file(ca) }
            if let cert = tls.certificate_file, let key = tls.key_file {
                c.certificateChain = try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) }
                c.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            }
            sslContext = try NIOSSLContext(configuration: c)
        } else {
            sslContext = nil
        }
    }

    func start() throws {
        loop.execute { self.connect() }
    }

    private func connect() {
        guard !stopping else { return }
        let handler = MQTTClientHandler(sink: self)
        let ssl = sslContext
        let serverName = config.tls?.server_name ?? address.host
        let version = self.version
        ClientBootstrap(group: loop)
            .connectTimeout(.seconds(10))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let ssl {
                        let name = serverName.first?.isNumber == true ? nil : serverName
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: ssl, serverHostname: name))
                    }
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(MQTTPacketDecoder(version: version)))
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
                    if version == .v5 { props.append(.twoByte(MQTTProperty.receiveMaximum, 65535)) }
                    let connect = MQTTConnect(version: version, clientID: self.clientID, cleanStart: true, keepAlive: UInt16(max(0, min(65535, self.config.keep_alive))),
                                              username: self.config.username, password: self.config.password.map { Array($0.utf8) }, properties: props)
                    ch.writeAndFlush(MQTTPacket.connect(connect), promise: nil)
                case .failure(let error):
                    self.host.log(.warning, "mqtt_publish: cannot connect to \(self.config.server): \(error)")
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
                host.log(.error, "mqtt_publish: \(config.server) refused the connection (reason code 0x\(String(ack.reasonCode, radix: 16)))")
                channel?.close(promise: nil)
                return
            }
            connected = true
            backoff = config.reconnect_initial
            // The hub's max_in_flight bounds writes; the broker's Receive Maximum may bound them further.
            window = Self.unlimitedWindow
            for case .twoByte(MQTTProperty.receiveMaximum, let v) in ack.properties { window = min(window, Int(v)) }
            publishState()
            host.log(.info, "mqtt_publish: connected to \(config.server)")
            scheduleKeepAlive()
        case .puback(let a):
            guard let (_, ack) = inFlight.removeValue(forKey: a.packetID) else { return }
            publishState()
            if a.reasonCode >= 0x80 {
                ack.reject("the broker refused the message (reason code 0x\(String(a.reasonCode, radix: 16)))")
            } else {
                ack.succeed()
            }
        case .pingresp:
            lastPingAnswered = true
        case .disconnect(let code, _):
            host.log(.warning, "mqtt_publish: the broker disconnected (reason code 0x\(String(code, radix: 16)))")
            channel?.close(promise: nil)
        default:
            break
        }
    }

    func disconnected() {
        connected = false
        channel = nil
        // Unacknowledged publishes go back to the hub, which offers them again after reconnecting.
        let pending = inFlight
        inFlight = [:]
        publishState()
        for (_, (_, ack)) in pending { ack.retry("the connection to \(config.server) closed before PUBACK") }
        scheduleReconnect()
    }

    private func scheduleKeepAlive() {
        guard config.keep_alive > 0 else { return }
        let ch = channel
        lastPingAnswered = true
        func tick() {
            loop.scheduleTask(in: .milliseconds(Int64(config.keep_alive * 500))) {
                guard let current = self.channel, current === ch, self.connected else { return }
                guard self.lastPingAnswered else {
                    self.host.log(.warning, "mqtt_publish: \(self.config.server) did not answer PINGREQ; reconnecting")
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

    func write(_ message: Message, ack: Ack) -> Bool {
        let ok = state.withLockedValue { s -> Bool in
            guard s.connected, s.inFlight < s.window else { return false }
            if config.qos == 1 { s.inFlight += 1 }
            return true
        }
        guard ok else { return false }
        let publish = makePublish(message)
        loop.execute {
            guard let ch = self.channel, self.connected else {
                ack.retry("not connected to \(self.config.server)")
                self.publishState()
                return
            }
            var p = publish
            if self.config.qos == 1 {
                repeat { self.nextPacketID &+= 1 } while self.nextPacketID == 0 || self.inFlight[self.nextPacketID] != nil
                p.packetID = self.nextPacketID
                self.inFlight[self.nextPacketID] = (p, ack)
                ch.writeAndFlush(MQTTPacket.publish(p), promise: nil)
            } else {
                ch.writeAndFlush(MQTTPacket.publish(p)).whenComplete { r in
                    if case .success = r { ack.succeed() } else { ack.retry("write to \(self.config.server) failed") }
                }
            }
            self.publishState()
        }
        return true
    }

    func makePublish(_ m: Message) -> MQTTPublish {
        var topic = config.topic
        for (k, v) in [("{topic}", m.topic), ("{device}", m.device), ("{tenant}", m.tenant), ("{kind}", m.kind.name)] {
            topic = topic.replacingOccurrences(of: k, with: v)
        }
        var props: [MQTTProperty] = []
        if version == .v5, config.forward_properties {
            if !m.contentType.isEmpty { props.append(.string(MQTTProperty.contentType, m.contentType)) }
            for p in m.properties {
                if p.key.hasPrefix("mqtt.user.") { props.append(.userProperty(String(p.key.dropFirst(10)), p.value)) }
                else if p.key == "mqtt.response_topic" { props.append(.string(MQTTProperty.responseTopic, p.value)) }
                else if p.key == "mqtt.correlation_data", let b = Base64.decode(p.value) { props.append(.binary(MQTTProperty.correlationData, b)) }
            }
        }
        return MQTTPublish(topic: topic, payload: m.payload, qos: UInt8(config.qos), retain: config.retain, properties: props)
    }

    func stop() {
        let done = loop.submit { () -> EventLoopFuture<Void> in
            self.stopping = true
            // Give outstanding PUBACKs up to two seconds, then settle the rest for a retry.
            return self.waitForAcks(until: .now() + .seconds(2)).flatMap {
                for (_, (_, ack)) in self.inFlight { ack.retry("the sink stopped") }
                self.inFlight = [:]
                guard let ch = self.channel else { return self.loop.makeSucceededVoidFuture() }
                ch.writeAndFlush(MQTTPacket.disconnect(reasonCode: 0, properties: []), promise: nil)
                return ch.close()
            }
        }.flatMap { $0 }
        try? done.wait()
        try? group.syncShutdownGracefully()
    }
}

/// Passes decoded packets and connection loss to the sink, on the sink's event loop.
final class MQTTClientHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = MQTTPacket
    let sink: MQTTPublishSink
    init(sink: MQTTPublishSink) { self.sink = sink }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { sink.received(unwrapInboundIn(data)) }
    func channelInactive(context: ChannelHandlerContext) { sink.disconnected() }
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        sink.host.log(.warning, "mqtt_publish: \(error)")
        context.close(promise: nil)
    }
}
