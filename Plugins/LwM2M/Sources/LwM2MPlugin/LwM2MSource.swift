import CoAPRuntime
import Foundation
import IoTCPluginKit
import LwM2MCodec

@_cdecl("iotc_plugin_entry") public func iotcPluginEntry(_ v: UnsafePointer<UInt32>?, _ n: Int) -> UnsafeRawPointer? {
    Plugin.entry(name: "lwm2m", version: "0.1.0", description: "An OMA LwM2M 1.1 server: registration, device management and observations, on UDP or DTLS-PSK.", components: [LwM2MSource.self], offered: v, count: n)
}

/// An LwM2M 1.1 server (1.0 clients accepted) on libcoap: clients register, the hub reads, writes,
/// executes and observes their objects, and observed values become canonical telemetry.
final class LwM2MSource: Source, @unchecked Sendable {
    struct Config: Decodable {
        var listen: String
        var dtls_listen: String?
        var dtls_certificate: ServerCertificates?
        var max_idle_sessions: Int
        var default_lifetime: Double
        var max_lifetime: Double
        var observe: [String]
        var object_definitions: [String]
        var max_registrations: Int
        var max_body_size: Int
        var queue_mode_listen: Double
        var bootstrap: Bootstrap?

        struct Bootstrap: Decodable {
            var server_uri: String
            var short_server_id: Int
            var lifetime: Double
            var binding: String
        }
    }

    static let name = "lwm2m"
    static let summary = "LwM2M 1.1 server (UDP and DTLS-PSK): registration, device management, observations as telemetry."
    static let description = """
        Clients register at `/rd` (`POST /rd?ep=NAME&lt=SECONDS&lwm2m=1.1&b=U` with their objects in link \
        format), update (`POST /rd/{id}`) and de-register (`DELETE /rd/{id}`); a registration whose \
        lifetime passes without an update ends, and the device is marked offline. The endpoint name is the \
        device id: over DTLS it must be the device the PSK identity belongs to; on plain UDP the hub's \
        authentication decides (`auth.allow_anonymous`, or `token=` in the registration's query).

        API commands to a registered device are LwM2M operations, named by the command and given by its \
        payload: `read` and `discover` (`path`, optional `format`: `tlv`, `senml-json`, `senml-cbor`, \
        `text`, `cbor`, `lwm2m-cbor`), `write` (`path` and `value`, or `values` by resource id; `replace` for PUT), \
        `write-attributes` (`path`, `attributes` such as `{"pmin": 10}`), `execute` (`path`, optional \
        `args`), `create` (`path` of the object, `values`, optional `instance`), `delete` (`path`), \
        `observe` and `cancel-observe` (`path`), and the LwM2M 1.1 composite operations on several \
        resources at once: `read-composite`, `observe-composite` and `cancel-observe-composite` (`paths`), \
        `write-composite` (`values` by resource path), in SenML-JSON or SenML-CBOR (`format`). Each answer comes back as the command's result: \
        `{"ok": true, "code": "2.05", "values": {"/3/0/9": 87}}` or `{"ok": false, "code": "4.04", "error": \
        "Not Found"}`. Contents are read in TLV, LwM2M JSON, SenML-JSON, SenML-CBOR, CBOR, LwM2M CBOR, text and opaque; writes go as TLV (or, for a client whose registration lists the formats it reads without TLV, SenML-CBOR or SenML-JSON), or with `"format"` as SenML-JSON, SenML-CBOR or text (one resource).

        Notifications of observed resources (from the `observe` paths, started at registration for the \
        objects a client lists and at an Update that adds one, or from `observe` commands) become telemetry on `devices/{ep}/telemetry`: \
        a JSON object named from the object model (`{"temperature": 21.5}` from /3303/0/5700; instance \
        n > 0 adds `_n`), with the properties `lwm2m.path`, `lwm2m.endpoint`, `lwm2m.object_version`, \
        `coap.observe` and `coap.content_format`. Registration, update, de-registration and expiry are \
        `lifecycle` messages on `devices/{ep}/lifecycle` when a pipeline reads them. Values a registered \
        client reports with Send (`POST /dp`, SenML-JSON, SenML-CBOR or LwM2M CBOR) become telemetry the same way, one \
        message per object, with the property `lwm2m.operation` = `send`.

        A client in queue mode (binding `UQ` in 1.0, the `Q` parameter in 1.1) is sent requests only while \
        it listens, for `queue_mode_listen` after it last spoke; commands to it meanwhile wait and go when \
        it next registers or updates.
        """
    static let fields: [ConfigField] = [
        ConfigField("listen", .string, "UDP address and port; empty for none.", default: #""0.0.0.0:5683""#, example: "127.0.0.1:5683"),
        ConfigField("dtls_listen", .string, "UDP address and port for DTLS with pre-shared keys from the device registry.", example: "0.0.0.0:5684"),
        ServerCertificates.field,
        CoAPEventLoop.maxIdleSessionsField,
        ConfigField("default_lifetime", .duration, "Lifetime of a registration that names none (the specification's default).", default: "86400", example: "24h"),
        ConfigField("max_lifetime", .duration, "Longest lifetime a client may ask for; longer ones are shortened to it.", default: "604800", example: "7d"),
        ConfigField("observe", .list(.string), "Paths observed on every registration whose object list has the object (or when an Update adds the object), e.g. /3303/0/5700.", default: "[]", example: "[/3303/0/5700, /3/0/9]"),
        ConfigField("object_definitions", .list(.string), "OMA LwM2M XML object definition files to load beside the built-in objects 0 to 7, 3303, 3304, 3311 and 3342.", default: "[]"),
        ConfigField("queue_mode_listen", .duration, "How long a queue-mode client (binding Q, or the Q parameter) listens after it last spoke; commands to it wait for its next update after that.", default: "93", example: "93s", advanced: true),
        ConfigField("max_registrations", .int, "Registrations held at most; more are refused with 5.03.", default: "100000", advanced: true),
        ConfigField("max_body_size", .byteSize, "Largest body taken from a client, request or response, after block-wise reassembly; a larger request gets 4.13, a larger response fails its command.", default: "1048576", example: "1MiB", advanced: true),
        ConfigField("bootstrap", .object([
            ConfigField("server_uri", .string, "The LwM2M server clients are sent to: coap://HOST:PORT (no security) or coaps://HOST:PORT (the pre-shared key the client bootstrapped with, so it must bootstrap over DTLS).", example: "coaps://hub.example.com:5684", required: true),
            ConfigField("short_server_id", .int, "The server's Short Server ID.", default: "1"),
            ConfigField("lifetime", .duration, "The registration lifetime written into the client's server account.", default: "86400", example: "1h"),
            ConfigField("binding", .string, "The binding written into it.", default: #""U""#),
        ]), "Also be the clients' bootstrap server (POST /bs on the same listeners): each client that asks is given one server account, for server_uri, by Bootstrap-Delete, Bootstrap-Discover (to find free instances), Bootstrap-Write of a Security and a Server instance (in the format the request's pct asks for: TLV, SenML JSON or SenML CBOR; TLV by default), and Bootstrap-Finish."),
    ]

    /// Mistakes `iotc check` locates at their field, before the hub starts.
    static func check(_ config: Config) -> [ConfigFinding] {
        var out: [ConfigFinding] = []
        for (i, text) in config.observe.enumerated() where LwM2MPath(text) == nil {
            out.append(ConfigFinding(at: "observe.\(i)", "'\(text)' is not an LwM2M path", hint: "such as /3303/0/5700"))
        }
        if config.default_lifetime < 1 { out.append(ConfigFinding(at: "default_lifetime", "default_lifetime must be at least 1 s")) }
        if config.max_lifetime < config.default_lifetime { out.append(ConfigFinding(at: "max_lifetime", "max_lifetime must be at least default_lifetime")) }
        if config.queue_mode_listen <= 0 { out.append(ConfigFinding(at: "queue_mode_listen", "queue_mode_listen must be longer than 0")) }
        if config.max_body_size <= 0 { out.append(ConfigFinding(at: "max_body_size", "max_body_size must be positive")) }
        if config.dtls_certificate != nil, (config.dtls_listen ?? "").isEmpty {
            out.append(ConfigFinding(at: "dtls_certificate", "dtls_certificate needs dtls_listen"))
        }
        if let b = config.bootstrap {
            if !(b.server_uri.hasPrefix("coap://") || b.server_uri.hasPrefix("coaps://")) {
                out.append(ConfigFinding(at: "bootstrap.server_uri", "server_uri must be a coap:// or coaps:// URI", hint: "coaps://hub.example.com:5684"))
            }
            if !(1...65534).contains(b.short_server_id) { out.append(ConfigFinding(at: "bootstrap.short_server_id", "short_server_id must be 1 to 65534")) }
            if b.lifetime < 1 { out.append(ConfigFinding(at: "bootstrap.lifetime", "lifetime must be at least 1 s")) }
            if b.binding.isEmpty || !b.binding.allSatisfy({ "UMHTSNQ".contains($0) }) {
                out.append(ConfigFinding(at: "bootstrap.binding", "binding must be binding letters (U, T, S, N, Q)"))
            }
            if b.server_uri.hasPrefix("coaps://"), (config.dtls_listen ?? "").isEmpty {
                out.append(ConfigFinding(.warning, at: "bootstrap.server_uri",
                                         "a coaps server account carries the key the client bootstrapped with over DTLS, and this source has no dtls_listen",
                                         hint: "clients must bootstrap over DTLS elsewhere, or set dtls_listen"))
            }
        }
        return out
    }

    let config: Config
    let host: PluginHost
    let values: ResourceValues
    let observePaths: [LwM2MPath]
    /// What the bootstrap interface writes into clients; nil when it is off.
    let bootstrap: BootstrapPlan?
    private var loop: CoAPEventLoop?
    private var server: LwM2MServer?

    init(config: Config, host: PluginHost) throws {
        self.config = config
        self.host = host
        // `check` has refused what is wrong in the settings before this runs.
        try CoAPEventLoop.validate(listen: config.listen, dtls: config.dtls_listen)
        observePaths = config.observe.compactMap(LwM2MPath.init)
        var objects = ObjectRegistry()
        for file in config.object_definitions {
            guard let data = FileManager.default.contents(atPath: file) else { throw PluginError("object_definitions: cannot read \(file)") }
            do { objects.add(try ObjectXML.parse(data, file: file)) } catch { throw PluginError("object_definitions: \(error)") }
        }
        values = ResourceValues(objects: objects)
        do {
            bootstrap = try config.bootstrap.map { b throws(ResourceValues.Error) in
                try BootstrapPlan(serverURI: b.server_uri, shortServerID: b.short_server_id, lifetime: Int(b.lifetime), binding: b.binding)
            }
        } catch {
            throw PluginError("bootstrap: \(error)")
        }
    }

    func start() throws {
        var server: LwM2MServer?
        loop = try CoAPEventLoop.serve(name: "lwm2m", listen: config.listen, dtls: config.dtls_listen, certificates: config.dtls_certificate,
                                       maxIdleSessions: config.max_idle_sessions, host: host) { loop in
            let s = LwM2MServer(source: self, loop: loop)
            loop.sessionClosed = { [weak s] peer in s?.closed(peer) }
            s.install()
            server = s
        }
        self.server = server
    }

    func stop() {
        loop?.stop()
        server?.stopped()
        server = nil
        loop = nil
    }

    func downlink(_ message: Message, ack: Ack) -> Bool {
        guard let loop, let server else {
            ack.retry("the lwm2m source is stopped")
            return true
        }
        loop.execute { server.command(message, ack: ack) }
        return true
    }
}
