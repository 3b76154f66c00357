import CCoAP
import CoAPRuntime
import Foundation
import IoTCPluginKit

@_cdecl("iotc_plugin_entry") public func iotcPluginEntry(_ v: UnsafePointer<UInt32>?, _ n: Int) -> UnsafeRawPointer? {
    Plugin.entry(name: "coap", version: "0.1.0", description: "Constrained devices send telemetry over CoAP (RFC 7252), on UDP or DTLS-PSK.", components: [CoAPSource.self], offered: v, count: n)
}

/// Devices POST or PUT telemetry, events and attributes to resource paths, answer commands, and
/// observe their command resource; the server runs on libcoap.
final class CoAPSource: Source, @unchecked Sendable {
    struct Config: Decodable {
        var listen: String
        var dtls_listen: String?
        var dtls_certificate: ServerCertificates?
        var max_idle_sessions: Int
        var telemetry_path: String
        var events_path: String
        var attributes_path: String
        var commands_path: String
        var results_path: String
        var max_body_size: Int
        var retry_after: Double
        var max_queued_commands: Int
        var command_ttl: Double
    }

    static let name = "coap"
    static let summary = "CoAP device server (UDP and DTLS-PSK): telemetry, events and attributes in, observed commands out."
    static let description = """
        Resources (the paths are settings; `{device}` is the device id, `{command}` a command id):

        | method and default path | what it does |
        |---|---|
        | `POST` or `PUT /t/{device}` | telemetry; topic `devices/{device}/telemetry` |
        | `POST` or `PUT /e/{device}` | an event; topic `devices/{device}/events` |
        | `POST` or `PUT /a/{device}` | attributes; topic `devices/{device}/attributes` |
        | `GET /a/{device}` | the attributes the operator set for the device (its configuration), as JSON, with an ETag of their content |
        | `GET /a/{device}` with Observe | the same, then a notification at each change (made through the API or an `attributes` sink; compared every second, another node's changes once the registry reloads), block-wise when large |
        | `GET /c/{device}` with Observe | commands, one notification each (JSON envelope, Content-Format 50) |
        | `GET /c/{device}` | the next queued command, or 2.05 with no payload when none waits |
        | `POST /r/{device}/{command}` | the result of a command; kind `command_result` |
        | `GET /.well-known/core` | resource discovery (RFC 6690): the asking device's resources (by its DTLS identity or `token=`) with `rt`, `ct` and `obs`; a query such as `rt=iotc.commands` or `href=/c*` filters them; empty without credentials |

        Payloads are JSON (Content-Format 50), CBOR (60), SenML-JSON (110), SenML-CBOR (112) or text \
        (0); they are checked at the edge (4.00 with a diagnostic payload when malformed, 4.15 for other \
        formats) and passed on as they came, with the Content-Format as the message's content type. \
        Confirmable requests are answered once the hub has the message (on a durable pipeline, once it is \
        in the write-ahead log): piggybacked when that is at once, otherwise as a separate response. A full \
        pipeline answers 5.03 with Max-Age `retry_after`. Large bodies travel block-wise (RFC 7959) both \
        ways. Duplicates (same message id from the same endpoint) are never submitted twice and get the \
        acknowledgement the first copy got (RFC 7252 §4.5): the piggybacked answer again, or an empty ACK \
        when the answer is or was sent separately (a confirmable response, retransmitted until acknowledged).

        Devices authenticate with DTLS-PSK (`dtls_listen`; the identity and key are registry \
        credentials), where `{device}` may be left out of the paths, or on plain UDP with a `token=` \
        query option holding a device token. CoAP options survive as message properties: `coap.method`, \
        `coap.type` (`con`/`non`), `coap.content_format`, `coap.message_id` and, for a block-wise upload, \
        `coap.block1_size`. A device that observes or \
        fetches its command resource counts as connected until libcoap ends its session (idle for 5 minutes \
        or DTLS closed); the hub's queued commands go to it from then on.
        """
    static let fields: [ConfigField] = [
        ConfigField("listen", .string, "UDP address and port for CoAP; empty for none.", default: #""0.0.0.0:5683""#, example: "127.0.0.1:5683"),
        ConfigField("dtls_listen", .string, "UDP address and port for CoAP over DTLS with pre-shared keys from the device registry.", example: "0.0.0.0:5684"),
        ServerCertificates.field,
        CoAPEventLoop.maxIdleSessionsField,
        ConfigField("telemetry_path", .string, "Resource for telemetry.", default: #""/t/{device}""#),
        ConfigField("events_path", .string, "Resource for events.", default: #""/e/{device}""#),
        ConfigField("attributes_path", .string, "Resource for attributes.", default: #""/a/{device}""#),
        ConfigField("commands_path", .string, "Resource a device observes for its commands.", default: #""/c/{device}""#),
        ConfigField("results_path", .string, "Resource for command results.", default: #""/r/{device}/{command}""#),
        ConfigField("max_body_size", .byteSize, "Largest request body accepted (after block-wise reassembly).", default: "1048576", example: "1MiB"),
        ConfigField("retry_after", .duration, "Max-Age of a 5.03 answer when a pipeline is full.", default: "1", example: "2s"),
        ConfigField("max_queued_commands", .int, "Commands kept per device until it observes or fetches them; more are refused.", default: "100"),
        ConfigField("command_ttl", .duration, "How long a queued command waits for its device.", default: "3600", example: "1h"),
    ]

    let config: Config
    let host: PluginHost
    let mailboxes: CommandMailboxes
    let routes: [(template: PathTemplate, route: CoAPRoute)]
    private var loop: CoAPEventLoop?
    private var server: CoAPDeviceServer?

    init(config: Config, host: PluginHost) throws {
        self.config = config
        self.host = host
        guard config.max_body_size > 0 else { throw PluginError("max_body_size must be positive") }
        guard config.retry_after >= 0, config.retry_after < 86_400 else { throw PluginError("retry_after must be under a day") }
        try CoAPEventLoop.validate(listen: config.listen, dtls: config.dtls_listen)
        if config.dtls_certificate != nil, (config.dtls_listen ?? "").isEmpty { throw PluginError("dtls_certificate needs dtls_listen") }
        mailboxes = CommandMailboxes(capacity: max(1, config.max_queued_commands), ttl: config.command_ttl)
        func template(_ field: String, _ text: String, _ variables: Set<String>) throws -> PathTemplate {
            do { return try PathTemplate(text, variables: variables) } catch { throw PluginError("\(field): \(error)") }
        }
        let device: Set<String> = ["device"]
        routes = [
            (try template("telemetry_path", config.telemetry_path, device), .ingest(.telemetry, "telemetry")),
            (try template("events_path", config.events_path, device), .ingest(.event, "events")),
            (try template("attributes_path", config.attributes_path, device), .ingest(.attributes, "attributes")),
            (try template("commands_path", config.commands_path, device), .commands),
            (try template("results_path", config.results_path, ["device", "command"]), .result),
        ]
        guard routes[4].template.has("command") else { throw PluginError("results_path must name {command}") }
        let plain = config.listen.isEmpty ? [] : routes.filter { !$0.template.has("device") }
        if let r = plain.first { throw PluginError("\(r.template) has no {device}: only DTLS devices could use it; add {device} or drop listen") }
    }

    func start() throws {
        var server: CoAPDeviceServer?
        loop = try CoAPEventLoop.serve(name: "coap", listen: config.listen, dtls: config.dtls_listen, certificates: config.dtls_certificate,
                                       maxIdleSessions: config.max_idle_sessions, host: host) { loop in
            let s = CoAPDeviceServer(source: self, loop: loop)
            loop.sessionClosed = { [weak s] peer in s?.closed(peer) }
            s.install()
            server = s
        }
        self.server = server
    }

    func stop() {
        mailboxes.closeAll()
        loop?.stop()
        server = nil
        loop = nil
    }

    func downlink(_ message: Message, ack: Ack) -> Bool {
        mailboxes.deliver(PendingCommand(message: message, ack: ack, expires: Date().addingTimeInterval(config.command_ttl)))
        return true
    }
}

/// What a resource path leads to.
enum CoAPRoute: Sendable {
    case ingest(MessageKind, String)
    case commands
    case result
}
