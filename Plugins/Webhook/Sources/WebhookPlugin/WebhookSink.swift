import AsyncHTTPClient
import Crypto
import Foundation
import IoTCPluginKit
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import PluginNetworking

@_cdecl("iotc_plugin_entry") public func iotcPluginEntry(_ v: UnsafePointer<UInt32>?, _ n: Int) -> UnsafeRawPointer? {
    Plugin.entry(name: "webhook", version: "0.1.0", description: "Delivers messages to an HTTP endpoint.", components: [WebhookSink.self], offered: v, count: n)
}

/// POSTs each message to a URL, signed with HMAC-SHA256 when a secret is set.
final class WebhookSink: Sink, @unchecked Sendable {
    struct Config: Decodable {
        var url: String
        var method: String
        var headers: [String: String]
        var secret: String?
        var timeout: Double
        var max_concurrency: Int
        var format: String
        var text: String
        var tls: ClientTLSFiles?
    }

    static let name = "webhook"
    static let summary = "POSTs each message to an HTTP(S) endpoint, signed with HMAC-SHA256."
    static let description = """
        The body is the message payload (`format: payload`, the default), the JSON envelope \
        (`format: envelope`), or a chat message (`format: chat`): `{"text": ...}` from the `text` template, \
        the shape Slack and Microsoft Teams incoming webhooks take (the default text suits rule alerts). Headers: `Content-Type`, `X-IoTC-Message-Id`, `X-IoTC-Device`, `X-IoTC-Topic`, \
        `X-IoTC-Timestamp` (Unix seconds) and, when `secret` is set, \
        `X-IoTC-Signature: sha256=HEX` where HEX is the lower-case HMAC-SHA256, keyed with the secret, of \
        `TIMESTAMP + "." + BODY`. A receiver recomputes it, compares in constant time and rejects old \
        timestamps to stop replays.

        A 2xx answer acknowledges the message. 408, 429, 5xx, time-outs and connection errors are retried \
        by the hub with backoff; any other status rejects the message to the dead-letter store. At most \
        `max_concurrency` requests are in flight. An https endpoint's certificate is verified against the \
        system's roots, or `tls.ca_file`; `tls.certificate_file` and `tls.key_file` present a client \
        certificate to endpoints that ask for one.
        """
    static let fields: [ConfigField] = [
        ConfigField("url", .string, "Endpoint URL (http or https).", example: "https://ops.example.com/iot", required: true),
        ConfigField("method", .string, "HTTP method.", default: #""POST""#, options: ["POST", "PUT"]),
        ConfigField("headers", .map(.string), "Extra request headers.", default: "{}"),
        ConfigField("secret", .string, "Key for the HMAC-SHA256 signature header.", example: "${env:WEBHOOK_SECRET}", secret: true),
        ConfigField("timeout", .duration, "Time allowed for one request.", default: "10", example: "10s"),
        ConfigField("max_concurrency", .int, "Requests in flight at once.", default: "16"),
        ConfigField("format", .string, "The request body: the payload, the JSON envelope, or chat: {\"text\": ...} from the text template, which Slack and Microsoft Teams incoming webhooks take.", default: #""payload""#, options: ["payload", "envelope", "chat"]),
        ConfigField("tls", .object(ClientTLSFiles.fields(server: "endpoint", serverName: false)), "TLS settings for an https url."),
        ConfigField("text", .string, "With format: chat, the message text; {field} from the payload, {msg.device} from the envelope.", default: #""[{severity}] {rule} {state}: {message}""#),
    ]

    private let config: Config
    private let host: PluginHost
    private let url: URL
    private let clientConfiguration: HTTPClient.Configuration
    /// Made at the first delivery: a sink that has sent nothing holds no client, nor its code in memory.
    private let madeClient = NIOLockedValueBox<HTTPClient?>(nil)
    private var client: HTTPClient {
        madeClient.withLockedValue { made in
            if let made { return made }
            let c = HTTPClient(eventLoopGroupProvider: .singleton, configuration: clientConfiguration)
            made = c
            return c
        }
    }
    private let inFlight = NIOLockedValueBox(0)
    private let key: SymmetricKey?

    init(config: Config, host: PluginHost) throws {
        guard let url = URL(string: config.url), let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https", url.host != nil else {
            throw PluginError("url '\(config.url)' is not an http or https URL")
        }
        guard config.max_concurrency > 0 else { throw PluginError("max_concurrency must be positive") }
        self.config = config
        self.host = host
        self.url = url
        key = config.secret.map { SymmetricKey(data: Array($0.utf8)) }
        var c = HTTPClient.Configuration()
        c.timeout = .init(connect: .seconds(Int64(max(1, config.timeout))), read: .milliseconds(Int64(config.timeout * 1000)))
        c.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: config.max_concurrency)
        if let tls = config.tls {
            guard scheme == "https" else { throw PluginError("tls is set but url '\(config.url)' is not https") }
            c.tlsConfiguration = try tls.configuration()
        }
        clientConfiguration = c
    }

    /// The signature header value for a body sent at `timestamp`.
    static func signature(key: SymmetricKey, timestamp: String, body: [UInt8]) -> String {
        var mac = HMAC<SHA256>(key: key)
        mac.update(data: Array(timestamp.utf8))
        mac.update(data: [UInt8(ascii: ".")])
        mac.update(data: body)
        return "sha256=" + mac.finalize().map { String(format: "%02x", $0) }.joined()
    }

    func write(_ message: Message, ack: Ack) -> Bool {
        let admitted = inFlight.withLockedValue { n -> Bool in
            guard n < config.max_concurrency else { return false }
            n += 1
            return true
        }
        guard admitted else { return false }
        var body: [UInt8] = []
        switch config.format {
        case "envelope": EnvelopeJSON.encode(message, into: &body)
        case "chat": body = JSON.encode(["text": .string(TextTemplate.fill(config.text, message))])
        default: body = message.payload
        }
        do {
            let request = try HTTPClient.Request(url: url, method: HTTPMethod(rawValue: config.method))
            var r = request
            r.headers.add(name: "Content-Type", value: config.format == "payload" ? message.contentType : "application/json")
            r.headers.add(name: "User-Agent", value: "iotc-webhook/0.1")
            r.headers.add(name: "X-IoTC-Message-Id", value: message.id)
            r.headers.add(name: "X-IoTC-Device", value: message.device)
            r.headers.add(name: "X-IoTC-Topic", value: message.topic)
            let timestamp = String(Int(Date().timeIntervalSince1970))
            r.headers.add(name: "X-IoTC-Timestamp", value: timestamp)
            if let key { r.headers.add(name: "X-IoTC-Signature", value: Self.signature(key: key, timestamp: timestamp, body: body)) }
            for (k, v) in config.headers { r.headers.replaceOrAdd(name: k, value: v) }
            r.body = .bytes(body)
            let started = DispatchTime.now().uptimeNanoseconds
            // The answer's status settles the delivery as soon as it comes: a body sent slowly, or cut by
            // the deadline, does not turn an accepted message into a retry (and a second delivery).
            let delegate = StatusOnly { [url] status in
                let code = status.code
                if (200..<300).contains(code) {
                    ack.succeed()
                } else if code == 408 || code == 429 || code >= 500 {
                    ack.retry("\(url.host ?? "") answered \(code)")
                } else {
                    ack.reject("\(url.host ?? "") answered \(code)")
                }
            }
            client.execute(request: r, delegate: delegate, deadline: .now() + .milliseconds(Int64(config.timeout * 1000))).futureResult.whenComplete { [self] result in
                inFlight.withLockedValue { $0 -= 1 }
                host.metric(.histogram, "iotc_webhook_request_seconds", Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9)
                // Completion runs on the request's event loop, as the delegate does.
                if case .failure(let error) = result, !delegate.answered {
                    ack.retry("request to \(url.host ?? "") failed: \(error)")
                }
            }
        } catch {
            inFlight.withLockedValue { $0 -= 1 }
            ack.reject("cannot build the request: \(error)")
        }
        return true
    }

    func stop() {
        // Requests in flight get a short grace; shutting the client down cancels the rest, and their
        // failures settle them as retries (a durable pipeline sends them again after a restart).
        let deadline = Date().addingTimeInterval(2)
        while inFlight.withLockedValue({ $0 }) > 0 && Date() < deadline { usleep(2000) }
        try? madeClient.withLockedValue({ $0 })?.syncShutdown()
    }
}

/// Takes a response's status, hands it to `decide` at once, and lets the body go by unread: only the
/// status decides a delivery, and an endpoint's body, however large or slow, is not held (the default
/// delegate keeps it all in memory, and only completes once it has all come).
final class StatusOnly: HTTPClientResponseDelegate, @unchecked Sendable {
    typealias Response = Void
    private let decide: (HTTPResponseStatus) -> Void
    /// Whether the answer's head came (read on the request's event loop only).
    private(set) var answered = false

    init(decide: @escaping (HTTPResponseStatus) -> Void) { self.decide = decide }

    func didReceiveHead(task: HTTPClient.Task<Response>, _ head: HTTPResponseHead) -> EventLoopFuture<Void> {
        // An informational head (1xx) is not the answer.
        if !answered, head.status.code >= 200 {
            answered = true
            decide(head.status)
        }
        return task.eventLoop.makeSucceededVoidFuture()
    }

    func didReceiveBodyPart(task: HTTPClient.Task<Response>, _ buffer: ByteBuffer) -> EventLoopFuture<Void> {
        task.eventLoop.makeSucceededVoidFuture()
    }

    func didFinishRequest(task: HTTPClient.Task<Response>) throws {}
}
