import CIoTCPluginABI
import Foundation
import HTTPCodec
import IoTCNetworking
import IoTCPluginKit
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import PluginNetworking

@_cdecl("iotc_plugin_entry") public func iotcPluginEntry(_ v: UnsafePointer<UInt32>?, _ n: Int) -> UnsafeRawPointer? {
    Plugin.entry(name: "http", version: "0.1.0", description: "Devices send telemetry over HTTP/1.1 and fetch commands.", components: [HTTPSource.self], offered: v, count: n)
}

/// Devices POST telemetry, events and attributes; they receive commands by long-poll or Server-Sent Events.
final class HTTPSource: Source, @unchecked Sendable {
    struct Config: Decodable {
        var listen: String
        var max_body_size: Int
        var long_poll_timeout: Double
        var max_queued_commands: Int
        var command_ttl: Double
        var idle_timeout: Double
        var threads: Int
        var tls: ServerTLSFiles?
        var max_connections: Int
        var max_partial_bytes: Int
    }

    static let name = "http"
    static let summary = "HTTP/1.1 device API: telemetry, events and attributes in, commands out."
    static let description = """
        Routes (`{id}` is the device id):

        | method and path | what it does |
        |---|---|
        | `POST /v1/devices/{id}/telemetry` | telemetry; topic `devices/{id}/telemetry` |
        | `POST /v1/devices/{id}/events` | an event; topic `devices/{id}/events` |
        | `POST /v1/devices/{id}/attributes` | attributes; topic `devices/{id}/attributes` |
        | `GET /v1/devices/{id}/attributes` | the attributes the operator set for the device (its configuration), with an ETag; with `If-None-Match` of the current ones, 304, or with `?wait=S` the next change within S seconds (at most `long_poll_timeout`; looked at every second); the command stream also carries them as `event: attributes`, first and at each change |
        | `GET /v1/devices/{id}/commands?wait=SECONDS` | long-poll for the next command (204 when none came) |
        | `GET /v1/devices/{id}/commands/stream` | commands as Server-Sent Events (`event: command`) |
        | `POST /v1/devices/{id}/commands/{command}/result` | the result of a command; kind `command_result` |

        Bodies are JSON (`application/json`) or CBOR (`application/cbor`, and `+json`/`+cbor` types such as \
        SenML); other types get 415 and malformed bodies 400. Bodies over `max_body_size` get 413, headers \
        over 16 KiB 431, and requests that cannot be framed safely 400; those connections close. Devices \
        authenticate with `Authorization: Bearer TOKEN` through the hub. The answer is 202 once the hub has \
        the message (on a durable pipeline: once it is in the write-ahead log), 503 with `Retry-After` when \
        the pipeline is full, and 404 when no pipeline reads the topic. An optional `X-Device-Time` header \
        (RFC 3339 or milliseconds since the epoch) sets the device time; `X-Request-Id` is kept as the \
        property `http.request_id`. Errors are RFC 9457 `application/problem+json`. Connections are \
        keep-alive (HTTP/1.1) and may pipeline requests: they are answered in order, and reading pauses \
        while more than 64 KiB waits behind the request being answered (a long-poll, for example). A \
        connection that sends nothing for `idle_timeout` is closed, unless it waits for commands, and a \
        request that has not all come within `idle_timeout` of its first byte, plus a second per 500 bytes \
        of it, gets 408. The bytes of requests not yet all in, over all connections, are bounded by \
        `max_partial_bytes`: a request whose bytes would take the total past it gets 503 with \
        `Retry-After` and its connection closes, unless it is the only one coming in (a request that comes \
        whole in one read never counts).
        """
    static let fields: [ConfigField] = [
        ConfigField("listen", .string, "Address and port to listen on.", default: #""0.0.0.0:8081""#, example: "127.0.0.1:8081"),
        ConfigField("max_body_size", .byteSize, "Largest request body accepted.", default: "1048576", example: "1MiB"),
        ConfigField("long_poll_timeout", .duration, "Longest wait a command long-poll may ask for.", default: "30", example: "30s"),
        ConfigField("max_queued_commands", .int, "Commands kept per device until it fetches them; more are refused.", default: "100"),
        ConfigField("command_ttl", .duration, "How long a queued command waits for its device.", default: "3600", example: "1h"),
        ConfigField("threads", .int, "Event-loop threads serving connections; 0 means one per core.", default: "0", advanced: true),
        ConfigField("idle_timeout", .duration, "Close a connection that sends nothing for this long (command streams and long-polls excepted); a request must all come within it, plus a second per 500 bytes of it (408).", default: "60", example: "60s"),
        ConfigField("tls", .object(ServerTLSFiles.fields), "Serve HTTPS instead of HTTP."),
        ConnectionLimit.field,
        PartialBytes.field("requests", refusal: "a request that would take the total further gets 503 and its connection closes"),
    ]

    let config: Config
    let host: PluginHost
    let mailboxes: CommandMailboxes
    private var group: MultiThreadedEventLoopGroup?
    /// What the hub's threads hand the connections (verdicts, commands), closed before the group stops.
    let gate = LoopGate()
    private var channel: Channel?
    private let sslContext: NIOSSLContext?
    let connections: ConnectionLimit
    /// Bytes held in requests not yet all in (and pipelined ones waiting), over all connections.
    let partialBytes: PartialBytes

    init(config: Config, host: PluginHost) throws {
        self.config = config
        self.host = host
        mailboxes = CommandMailboxes(capacity: max(1, config.max_queued_commands), ttl: config.command_ttl)
        guard config.max_body_size > 0 else { throw PluginError("max_body_size must be positive") }
        guard config.idle_timeout > 0 else { throw PluginError("idle_timeout must be positive") }
        guard (0...256).contains(config.threads) else { throw PluginError("threads must be 0 to 256") }
        guard config.max_connections >= 0 else { throw PluginError("max_connections must not be negative") }
        guard config.max_partial_bytes > 0 else { throw PluginError("max_partial_bytes must be positive") }
        partialBytes = PartialBytes(limit: config.max_partial_bytes)
        connections = ConnectionLimit(config.max_connections, host: host, source: "http source")
        guard HostPort(config.listen) != nil else { throw PluginError("listen address '\(config.listen)' should be HOST:PORT") }
        sslContext = try config.tls?.context()
    }

    func start() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: config.threads > 0 ? config.threads : System.coreCount)
        self.group = group
        let address = HostPort(config.listen)!
        let source = self
        let ssl = sslContext
        do {
            channel = try ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelInitializer { [host = source.host] channel in AcceptFailures.install(on: channel, host: host, source: Self.name) }
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 128, initial: 1024, maximum: 65536))
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try source.connections.admit(channel)
                        if let ssl, let files = source.config.tls { try channel.pipeline.syncOperations.addHandler(try files.handler(ssl)) }
                        try channel.pipeline.syncOperations.addHandler(HTTPDeviceHandler(source: source))
                    }
                }
                .bind(host: address.host, port: address.port).wait()
        } catch {
            try? group.syncShutdownGracefully()
            self.group = nil
            throw PluginError("cannot listen on \(config.listen): \(error)")
        }
        host.log(.info, "http source listening on \(config.listen)\(ssl != nil ? " (TLS)" : "")")
    }

    /// The port actually bound (for listen addresses with port 0).
    var boundPort: Int? { channel?.localAddress?.port }

    func stop() {
        try? channel?.close().wait()
        channel = nil
        mailboxes.closeAll()
        gate.close()
        try? group?.syncShutdownGracefully()
        group = nil
    }

    func downlink(_ message: Message, ack: Ack) -> Bool {
        mailboxes.deliver(PendingCommand(message: message, ack: ack, expires: Date().addingTimeInterval(config.command_ttl)))
        return true
    }
}
