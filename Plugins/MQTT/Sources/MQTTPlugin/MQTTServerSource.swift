import Foundation
import IoTCNetworking
import IoTCPluginKit
import MQTTBroker
import MQTTCodec
import NIOCore
import NIOPosix
import NIOSSL
import PluginNetworking

/// The `mqtt` source: an MQTT 3.1.1 and 5.0 server. Devices' publishes enter pipelines; the server is
/// also a broker between its clients; pipelines and the API send downlink to subscribed clients.
final class MQTTServerSource: Source, @unchecked Sendable {
    struct Config: Decodable {
        var listen: String
        var tls: TLS?
        var websocket: WebSocket?
        var authentication: String
        var users: [PluginHubLink.User]
        var anonymous: PluginHubLink.User?
        var max_packet_size: Int
        var receive_maximum: Int
        var topic_alias_maximum: Int
        var max_keep_alive: Double
        var connect_timeout: Double
        var max_qos: Int
        var retain_available: Bool
        var max_retained: Int
        var max_retained_bytes: Int
        var max_subscriptions: Int
        var max_sessions: Int
        var max_session_expiry: Double
        var max_queued_messages: Int
        var max_queued_bytes: Int
        var max_inflight_bytes: Int
        var queue_full_policy: String
        var queue_qos0: Bool
        var max_pending_bytes: Int
        var sys_interval: Double
        var command_topic: String
        var config_topic: String
        var state_file: String?
        var state_save_interval: Double
        var threads: Int
        var max_connections: Int
        var max_partial_bytes: Int
        struct TLS: Decodable {
            var listen: String
            var files: ServerTLSFiles
            enum Keys: String, CodingKey { case listen }
            init(from decoder: Decoder) throws {
                listen = try decoder.container(keyedBy: Keys.self).decode(String.self, forKey: .listen)
                files = try ServerTLSFiles(from: decoder)
            }
        }
        struct WebSocket: Decodable {
            var listen: String
            var path: String?
        }
    }

    static let name = "mqtt"
    static let summary = "MQTT 3.1.1 and 5.0 server: devices publish into pipelines, subscribe to downlink, and talk to each other."
    static let description = """
        A complete MQTT server on SwiftNIO: QoS 0, 1 and 2, retained messages, wills with delay, persistent \
        sessions with expiry and bounded queues, shared subscriptions (`$share/GROUP/FILTER`), subscription \
        identifiers, no-local, retain-as-published, retain handling, topic aliases both ways, Receive Maximum \
        and Maximum Packet Size both ways, and `$SYS/broker/...` statistics. Over TCP, TLS (optionally with \
        client certificates) and WebSocket (`/mqtt`, subprotocol `mqtt`).

        Every publish a pipeline reads (by the pipeline's `from: [ "SOURCE:FILTER" ]`) enters it as a \
        canonical message: the topic, the client's device id and tenant, the payload, QoS, and the MQTT 5 \
        properties as `mqtt.user.NAME`, `mqtt.response_topic`, `mqtt.correlation_data` (base64), \
        `mqtt.payload_format`, `mqtt.message_expiry` and the content type; `mqtt.client_id` and \
        `mqtt.retain` too. Topics ending in `/events` are events, `/attributes` attributes, the rest \
        telemetry. A QoS 1 or 2 publish is acknowledged once the hub has it (on a durable pipeline, once it is \
        in the write-ahead log); when a pipeline is full the server stops reading from that client until \
        there is room, so nothing is buffered without bound.

        `authentication: hub` checks the client id (device id) and password (device token) with the hub, \
        which lets a device use topics under `devices/{id}/`. `authentication: static` uses `users` (and \
        `anonymous` for clients without a user name) with per-user `publish` and `subscribe` topic filters, \
        where `%c` is the client id and `%u` the user name.

        Downlink (the API's `POST /v1/devices/{id}/commands`, or a pipeline) publishes to the message's topic, \
        or to `command_topic` with `{device}` filled in; it succeeds once a session subscribed to it has the \
        message.
        """
    static let fields: [ConfigField] = [
        ConfigField("listen", .string, "TCP address and port; empty to serve only TLS or WebSocket.", default: #""0.0.0.0:1883""#, example: "0.0.0.0:1883"),
        ConfigField("tls", .object([ConfigField("listen", .string, "Address and port for MQTT over TLS.", default: #""0.0.0.0:8883""#)]
                                   + ServerTLSFiles.fields), "Also serve MQTT over TLS."),
        ConfigField("websocket", .object([
            ConfigField("listen", .string, "Address and port for MQTT over WebSocket.", example: "0.0.0.0:8083", required: true),
            ConfigField("path", .string, "Request path.", default: #""/mqtt""#),
        ]), "Also serve MQTT over WebSocket (subprotocol `mqtt`)."),
        ConfigField("authentication", .string, "Who checks clients: the hub's device credentials, or the static `users` list.", default: #""hub""#, options: ["hub", "static"]),
        ConfigField("users", .list(.object([
            ConfigField("username", .string, "User name.", required: true),
            ConfigField("password", .string, "Password.", required: true, secret: true),
            ConfigField("tenant", .string, "Tenant the user's clients belong to.", default: #""default""#),
            ConfigField("publish", .list(.string), "Topic filters the user may publish to (`%c` client id, `%u` user name).", default: "[]"),
            ConfigField("subscribe", .list(.string), "Topic filters the user may subscribe to.", default: "[]"),
        ])), "Static users (with `authentication: static`).", default: "[]"),
        ConfigField("anonymous", .object([
            ConfigField("tenant", .string, "Tenant of anonymous clients.", default: #""default""#),
            ConfigField("publish", .list(.string), "Topic filters anonymous clients may publish to.", default: "[]"),
            ConfigField("subscribe", .list(.string), "Topic filters anonymous clients may subscribe to.", default: "[]"),
        ]), "Lets clients without a user name in, with these rights (with `authentication: static`)."),
        ConfigField("max_packet_size", .byteSize, "Largest packet accepted from a client (announced to MQTT 5 clients).", default: "1048576", example: "1MiB"),
        ConfigField("receive_maximum", .int, "QoS 1 and 2 publishes a client may have unacknowledged.", default: "1024"),
        ConfigField("topic_alias_maximum", .int, "Topic aliases a client may use (MQTT 5); 0 turns them off.", default: "64"),
        ConfigField("max_keep_alive", .duration, "Longest keep-alive allowed; MQTT 5 clients asking for more (or none) are told this one. 0: no limit.", default: "0", example: "5m"),
        ConfigField("connect_timeout", .duration, "Close connections that send no CONNECT within this time.", default: "10", example: "10s"),
        ConfigField("max_qos", .int, "Highest QoS accepted and granted.", default: "2"),
        ConfigField("retain_available", .bool, "Keep retained messages.", default: "true"),
        ConfigField("max_retained", .int, "Retained messages kept; more are not retained.", default: "100000"),
        ConfigField("max_retained_bytes", .byteSize, "Bytes (topics and payloads) the retained messages may hold together; past it a new one is not retained. 0: no limit.", default: "268435456", example: "256MiB"),
        ConfigField("max_sessions", .int, "Sessions held at once, connected or kept for offline clients; a CONNECT that would open one more is refused with Quota exceeded (0x97; MQTT 3.1.1: 0x03). 0: no limit.", default: "0"),
        ConfigField("max_subscriptions", .int, "Subscriptions one session may hold; a filter past it is refused with Quota exceeded (0x97; MQTT 3.1.1: 0x80). 0: no limit.", default: "1000"),
        ConfigField("max_session_expiry", .duration, "Longest a session outlives its connection (MQTT 3.1.1 persistent sessions get this).", default: "604800", example: "7d"),
        ConfigField("max_queued_messages", .int, "Messages kept per session for an offline or slow client.", default: "1000"),
        ConfigField("max_inflight_bytes", .byteSize, "Payload bytes of QoS 1 and 2 messages in flight to one client (sent, not yet acknowledged); past it, messages wait in the session's queue (one is always let through). Bounds what a client that stops reading holds. 0: no limit but the client's Receive Maximum.", default: "4194304", example: "4MiB"),
        ConfigField("max_queued_bytes", .byteSize, "Payload bytes kept per session for an offline or slow client, beside max_queued_messages; a message past it goes by queue_full_policy (one larger than it all is dropped). 0: no limit.", default: "67108864", example: "64MiB"),
        ConfigField("queue_full_policy", .string, "When a session's queue is full: drop the new message or the oldest one (either is counted).", default: #""drop_new""#, options: ["drop_new", "drop_oldest"]),
        ConfigField("queue_qos0", .bool, "Queue QoS 0 messages for offline clients too.", default: "false"),
        ConfigField("max_pending_bytes", .byteSize, "Bytes waiting for a slow client beyond which its QoS 0 messages are dropped (counted); past four times this, the client is no longer read from until it has read most of them.", default: "4194304", advanced: true),
        ConfigField("sys_interval", .duration, "How often `$SYS/broker/...` statistics are published; 0 turns them off.", default: "10", example: "10s"),
        ConfigField("command_topic", .string, "Topic for downlink messages without one.", default: #""devices/{device}/commands""#),
        ConfigField("config_topic", .string, "Where a device (authenticated by the hub) that subscribes finds the attributes the operator set for it, as a retained JSON message, and each change; devices may not publish there.", default: #""devices/{device}/config""#),
        ConfigField("state_file", .string, "Keep persistent sessions (subscriptions, queued and in-flight messages) and retained messages in this file across restarts: written at stop and every `state_save_interval`, read at start.", example: "data/mqtt-state.bin"),
        ConfigField("state_save_interval", .duration, "How often the state file is written while running (what a crash can lose).", default: "60", example: "1m"),
        ConfigField("threads", .int, "Event-loop threads; 0 means one per core less one (at least one), leaving a core to the pipelines.", default: "0", advanced: true),
        ConnectionLimit.field,
        PartialBytes.field("packets", refusal: "a connection whose packet would take the total further is closed (an MQTT 5 client is told Server busy, 0x89, first)"),
    ]

    let config: Config
    let host: PluginHost
    let hubLink: PluginHubLink
    let limits: ServerLimits
    private let brokerConfig: BrokerConfig
    private var group: MultiThreadedEventLoopGroup?
    private(set) var broker: Broker?
    private var channels: [Channel] = []
    /// Shared by the TCP, TLS and WebSocket listeners.
    private let connections: ConnectionLimit
    /// Bytes of packets not yet all in, over all connections.
    private let partialBytes: PartialBytes
    private let sslContext: NIOSSLContext?
    private var sysTask: RepeatedTask?
    private var metricsTask: RepeatedTask?
    private var saveTask: RepeatedTask?
    private var configTask: RepeatedTask?
    /// Counter values last reported to the hub (the hub takes increments).
    private var reported = (received: 0, sent: 0, dropped: 0, expired: 0)
    private let sweepers = IdleSweepers()
    /// What other threads hand the connections (verdicts, deliveries), closed before the group stops.
    private let gate = LoopGate()

    init(config: Config, host: PluginHost) throws {
        self.config = config
        self.host = host
        guard let mode = PluginHubLink.Mode(rawValue: config.authentication) else { throw PluginError("authentication must be hub or static") }
        if mode == .hub, !config.users.isEmpty || config.anonymous != nil {
            throw PluginError("users and anonymous apply with authentication: static")
        }
        let configTopic = config.config_topic.replacingOccurrences(of: "{device}", with: "d")
        guard config.config_topic.contains("{device}"), Topics.isValidFilter(configTopic), !configTopic.contains("+"), !configTopic.contains("#"),
              !configTopic.hasPrefix("$") else {
            throw PluginError("config_topic must be a topic name with {device} in it")
        }
        hubLink = try PluginHubLink(host: host, mode: mode, users: config.users, anonymous: config.anonymous, configTopic: config.config_topic)
        guard (0...2).contains(config.max_qos) else { throw PluginError("max_qos must be 0, 1 or 2") }
        guard (1...65535).contains(config.receive_maximum) else { throw PluginError("receive_maximum must be 1 to 65535") }
        guard (0...65535).contains(config.topic_alias_maximum) else { throw PluginError("topic_alias_maximum must be 0 to 65535") }
        guard (64...268_435_455).contains(config.max_packet_size) else { throw PluginError("max_packet_size must be 64 B to 256 MiB") }
        guard config.max_retained_bytes >= 0 else { throw PluginError("max_retained_bytes must not be negative") }
        guard config.max_sessions >= 0 else { throw PluginError("max_sessions must not be negative") }
        guard config.max_subscriptions >= 0 else { throw PluginError("max_subscriptions must not be negative") }
        guard config.max_queued_messages >= 0 else { throw PluginError("max_queued_messages must not be negative") }
        guard config.max_queued_bytes >= 0 else { throw PluginError("max_queued_bytes must not be negative") }
        guard config.max_inflight_bytes >= 0 else { throw PluginError("max_inflight_bytes must not be negative") }
        guard let policy = QueueFullPolicy(rawValue: config.queue_full_policy) else { throw PluginError("queue_full_policy must be drop_new or drop_oldest") }
        guard config.connect_timeout > 0 else { throw PluginError("connect_timeout must be positive") }
        guard (0...65535).contains(config.max_keep_alive) else { throw PluginError("max_keep_alive must be at most 65535 s") }
        guard (0...256).contains(config.threads) else { throw PluginError("threads must be 0 to 256") }
        guard config.max_connections >= 0 else { throw PluginError("max_connections must not be negative") }
        guard config.max_partial_bytes > 0 else { throw PluginError("max_partial_bytes must be positive") }
        partialBytes = PartialBytes(limit: config.max_partial_bytes)
        connections = ConnectionLimit(config.max_connections, host: host, source: "mqtt source")
        for address in [config.listen, config.tls?.listen, config.websocket?.listen].compactMap({ $0 }) where !address.isEmpty {
            guard HostPort(address) != nil else { throw PluginError("listen address '\(address)' should be HOST:PORT") }
        }
        guard !config.listen.isEmpty || config.tls != nil || config.websocket != nil else { throw PluginError("nothing to listen on: set listen, tls or websocket") }

        var limits = ServerLimits()
        limits.receiveMaximum = UInt16(config.receive_maximum)
        limits.maximumPacketSize = config.max_packet_size
        limits.topicAliasMaximum = UInt16(config.topic_alias_maximum)
        limits.maximumKeepAlive = UInt16(config.max_keep_alive)
        self.limits = limits
        var b = BrokerConfig()
        b.maximumQoS = UInt8(config.max_qos)
        b.retainAvailable = config.retain_available
        b.maximumRetained = config.max_retained
        b.maximumRetainedBytes = config.max_retained_bytes
        b.maximumSubscriptions = config.max_subscriptions
        b.maximumSessions = config.max_sessions
        b.maximumSessionExpiry = UInt32(min(max(config.max_session_expiry, 0), Double(UInt32.max)))
        b.session = SessionLimits(maxQueued: config.max_queued_messages, maxQueuedBytes: config.max_queued_bytes, policy: policy, queueQoS0: config.queue_qos0,
                                  maxInflightBytes: config.max_inflight_bytes)
        brokerConfig = b

        sslContext = try config.tls?.files.context()
    }

    func start() throws {
        // One loop per core less one: on a small machine the pipelines' threads (and, in a benchmark, the
        // load generator) need a core, and cross-loop hand-offs cost more than a second loop gains.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: config.threads > 0 ? config.threads : max(1, System.coreCount - 1))
        self.group = group
        var broker = Broker(config: brokerConfig, timers: group.next())
        if let path = config.state_file, let data = FileManager.default.contents(atPath: path) {
            do {
                let (sessions, retained) = try broker.restoreState(ByteBuffer(bytes: data))
                host.log(.info, "mqtt: restored \(sessions) sessions and \(retained) retained messages from \(path)")
            } catch {
                // Devices must still connect after, say, a power loss that left the file damaged: the
                // server starts without the saved state (none of it half read), and the file is kept
                // aside to look at.
                broker = Broker(config: brokerConfig, timers: group.next())
                let aside = path + ".unreadable"
                let moved = rename(path, aside) == 0
                host.log(.error, "mqtt: cannot read the state file \(path) (\(error)); started without its sessions and retained messages"
                         + (moved ? "; the file is kept as \(aside)" : ""))
            }
        }
        self.broker = broker
        if config.state_file != nil, config.state_save_interval > 0 {
            let every = TimeAmount.milliseconds(Int64(config.state_save_interval * 1000))
            saveTask = group.next().scheduleRepeatedTask(initialDelay: every, delay: every) { [weak self] _ in self?.saveState() }
        }
        do {
            if !config.listen.isEmpty { channels.append(try bind(config.listen, group: group, broker: broker, transport: .tcp)) }
            if let tls = config.tls, let ssl = sslContext { channels.append(try bind(tls.listen, group: group, broker: broker, transport: .tls(ssl, tls.files))) }
            if let ws = config.websocket { channels.append(try bind(ws.listen, group: group, broker: broker, transport: .webSocket(path: ws.path ?? "/mqtt"))) }
        } catch {
            stop()
            throw error
        }
        if config.sys_interval > 0 {
            broker.publishStatistics(version: pluginVersion)
            sysTask = group.next().scheduleRepeatedTask(initialDelay: .milliseconds(Int64(config.sys_interval * 1000)),
                                                        delay: .milliseconds(Int64(config.sys_interval * 1000))) { _ in
                broker.publishStatistics(version: pluginVersion)
            }
        }
        metricsTask = group.next().scheduleRepeatedTask(initialDelay: .seconds(5), delay: .seconds(5)) { [weak self] _ in self?.reportMetrics() }
        hubLink.configs.broker = broker
        let configs = hubLink.configs
        configTask = group.next().scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in configs.poll() }
        let names = (config.listen.isEmpty ? [] : ["tcp"]) + (config.tls == nil ? [] : ["tls"]) + (config.websocket == nil ? [] : ["websocket"])
        let addresses = zip(names, channels).compactMap { name, ch in
            ch.localAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0) (\(name))" }
        }.joined(separator: ", ")
        host.log(.info, "mqtt server listening on \(addresses)")
    }

    /// The broker's figures as hub metrics (Prometheus at /metrics), tagged by the hub with this source.
    private func reportMetrics() {
        guard let broker else { return }
        let c = broker.counters
        host.metric(.gauge, "iotc_mqtt_connections", Double(c.connected.value))
        host.metric(.gauge, "iotc_mqtt_sockets", Double(c.held.value))
        host.metric(.gauge, "iotc_mqtt_sessions", Double(broker.sessionCount))
        host.metric(.gauge, "iotc_mqtt_subscriptions", Double(broker.subscriptionCount))
        host.metric(.gauge, "iotc_mqtt_retained_messages", Double(broker.retainedCount))
        let now = (received: c.received.value, sent: c.sent.value, dropped: c.dropped.value, expired: c.expired.value)
        host.metric(.counter, "iotc_mqtt_messages_received_total", Double(now.received - reported.received))
        host.metric(.counter, "iotc_mqtt_messages_sent_total", Double(now.sent - reported.sent))
        host.metric(.counter, "iotc_mqtt_messages_dropped_total", Double(now.dropped - reported.dropped))
        host.metric(.counter, "iotc_mqtt_messages_expired_total", Double(now.expired - reported.expired))
        reported = now
    }

    enum Transport {
        case tcp
        case tls(NIOSSLContext, ServerTLSFiles)
        case webSocket(path: String)
    }

    private func bind(_ listen: String, group: EventLoopGroup, broker: Broker, transport: Transport) throws -> Channel {
        let address = HostPort(listen)!
        let source = self
        do {
            return try ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelInitializer { [host = source.host] channel in AcceptFailures.install(on: channel, host: host, source: Self.name) }
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 128, maximum: 65536))
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try source.connections.admit(channel)
                        let ops = channel.pipeline.syncOperations
                        switch transport {
                        case .tcp:
                            try source.addMQTTHandlers(ops, channel: channel, broker: broker)
                        case .tls(let ssl, let files):
                            try ops.addHandler(try files.handler(ssl))
                            try source.addMQTTHandlers(ops, channel: channel, broker: broker)
                        case .webSocket(let path):
                            try WebSocketTransport.configure(channel: channel, path: path, timeout: .milliseconds(Int64(source.config.connect_timeout * 1000)),
                                                             maxFrameSize: source.config.max_packet_size) { ch in
                                try source.addMQTTHandlers(ch.pipeline.syncOperations, channel: ch, broker: broker)
                            }
                        }
                    }
                }
                .bind(host: address.host, port: address.port).wait()
        } catch {
            throw PluginError("cannot listen on \(listen): \(error)")
        }
    }

    func addMQTTHandlers(_ ops: ChannelPipeline.SynchronousOperations, channel: Channel, broker: Broker) throws {
        try ops.addHandler(MQTTServerHandler(broker: broker, hub: hubLink, limits: limits, connectTimeout: config.connect_timeout,
                                             maxPendingBytes: config.max_pending_bytes, partialBytes: partialBytes,
                                             sweeper: sweepers.sweeper(for: channel.eventLoop), gate: gate))
    }

    func stop() {
        sysTask?.cancel()
        sysTask = nil
        metricsTask?.cancel()
        metricsTask = nil
        saveTask?.cancel()
        saveTask = nil
        configTask?.cancel()
        configTask = nil
        for c in channels { try? c.close().wait() }
        channels = []
        sweepers.stopAll()
        gate.close()
        try? group?.syncShutdownGracefully()
        group = nil
        saveState()
    }

    private let stateTrouble = FailureNotice()

    /// Writes the state file (atomically: a new file renamed over the old one).
    private func saveState() {
        guard let path = config.state_file, let broker else { return }
        let bytes = broker.saveState()
        let dir = (path as NSString).deletingLastPathComponent
        var failure: String?
        do {
            if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
            failure = FileIO.replace(path, with: Array(bytes.readableBytesView))
        } catch {
            failure = "\(error)"
        }
        if let failure {
            if stateTrouble.failed() { host.log(.error, "mqtt: cannot write the state file \(path) (tried again at each save, logged again when it works): \(failure)") }
        } else if stateTrouble.worked() {
            host.log(.notice, "mqtt: the state file \(path) is written again")
        }
    }

    /// The hub revoked a device's credentials: its connections get DISCONNECT 0x98 (MQTT 5) and close.
    func disconnect(identityHandle: UInt64, reason: String) -> Int {
        broker?.disconnect(where: { ($0 as? PluginHubLink.HubIdentity)?.identity.handle == identityHandle },
                           reasonCode: MQTTReason.administrativeAction) ?? 0
    }

    func downlink(_ message: Message, ack: Ack) -> Bool {
        guard let broker else { return false }
        let topic = config.command_topic.replacingOccurrences(of: "{device}", with: message.device)
        var m = BrokerMessage(message, defaultTopic: topic)
        guard !m.topic.isEmpty, !m.topic.contains("+"), !m.topic.contains("#"), !TenantSpace.isReserved(m.topic) else {
            ack.reject("'\(m.topic)' is not a topic name")
            return true
        }
        let clientTopic = m.topic
        // Into the message's tenant's part of the broker: only that tenant's clients can receive it.
        m.topic = TenantSpace(tenant: message.tenant).topic(clientTopic)
        if broker.publish(m, from: nil) > 0 { ack.succeed() } else { ack.reject("no MQTT client is subscribed to \(clientTopic)") }
        return true
    }
}
