import Foundation
import IoTCPluginKit
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

@_cdecl("iotc_plugin_entry") public func iotcPluginEntry(_ v: UnsafePointer<UInt32>?, _ n: Int) -> UnsafeRawPointer? {
    Plugin.entry(name: "email", version: "0.1.0", description: "Notifications by e-mail over SMTP with STARTTLS.", components: [SMTPSink.self], offered: v, count: n)
}

/// Sends each message as an e-mail: alerts from rule steps, or anything a pipeline routes here.
final class SMTPSink: Sink, @unchecked Sendable {
    struct Config: Decodable {
        var server: String
        var tls: String
        var ca_file: String?
        var server_name: String?
        var username: String?
        var password: String?
        var from: String
        var to: [String]
        var subject: String
        var body: String
        var timeout: Double
    }

    static let name = "smtp"
    static let summary = "E-mail over SMTP (STARTTLS by default): a mail per message, subject and body from templates."
    static let description = """
        Each message becomes one e-mail to `to`, sent over its own SMTP session: EHLO, STARTTLS \
        (required unless `tls: none`; `tls: implicit` for port 465), AUTH PLAIN when `username` is set, \
        MAIL, RCPT, DATA. `subject` and `body` are templates: `{name}` is a field of the message's JSON \
        payload (`{value.temperature}` goes deeper), and `{msg.device}`, `{msg.topic}`, `{msg.kind}` \
        name the envelope; a missing field is empty. The defaults suit alert messages from rule steps. \
        A 4xx answer or a lost connection is retried by the hub (backoff, then dead letters); a 5xx answer \
        fails the message at once.
        """
    static let fields: [ConfigField] = [
        ConfigField("server", .string, "SMTP server as host:port.", example: "smtp.example.com:587", required: true),
        ConfigField("tls", .string, "starttls (upgrade after EHLO, required), implicit (TLS from the start, port 465) or none.", default: #""starttls""#, options: ["starttls", "implicit", "none"]),
        ConfigField("ca_file", .string, "PEM CA bundle to verify the server with, instead of the system's."),
        ConfigField("server_name", .string, "Name to verify the server's certificate against; default the host of server."),
        ConfigField("username", .string, "User for AUTH PLAIN (sent only over TLS).", example: "alerts@example.com"),
        ConfigField("password", .string, "Password for AUTH PLAIN.", example: "${env:SMTP_PASSWORD}", secret: true),
        ConfigField("from", .string, "Sender address.", example: "iotc@example.com", required: true),
        ConfigField("to", .list(.string), "Recipient addresses.", example: "[ ops@example.com ]", required: true),
        ConfigField("subject", .string, "Subject template.", default: #""[{severity}] {rule} {state}: {message}""#),
        ConfigField("body", .string, "Body template.", default: #""{message}\n\nrule: {rule}\nstate: {state}\nseverity: {severity}\ndevice: {msg.device}\nkey: {key}\n""#),
        ConfigField("timeout", .duration, "Time allowed for the connection and for each answer.", default: "30", example: "10s"),
    ]

    let config: Config
    let host: PluginHost
    private let server: (host: String, port: Int)
    private let ssl: NIOSSLContext?
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    /// Mails go one at a time, in the order they came: an alert's clearing never lands before it.
    private let outbox: AsyncStream<(Message, Ack)>.Continuation
    private let sender: Task<Void, Never>
    /// The connection of the mail being sent, closed at stop; and the sender's end, which the stop
    /// waits for before it shuts the group down (a session would otherwise use a loop that is gone).
    private let current = NIOLockedValueBox<(channel: Channel?, stopping: Bool)>((nil, false))
    private let senderDone = DispatchSemaphore(value: 0)

    init(config: Config, host: PluginHost) throws {
        self.config = config
        self.host = host
        guard let colon = config.server.lastIndex(of: ":"), let port = Int(config.server[config.server.index(after: colon)...]), (1...65535).contains(port) else {
            throw PluginError("server must be host:port, not '\(config.server)'")
        }
        server = (String(config.server[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]")), port)
        guard !config.to.isEmpty else { throw PluginError("to needs at least one address") }
        for a in [config.from] + config.to where !a.contains("@") || a.contains(where: { $0 == "<" || $0 == ">" || $0 == "\r" || $0 == "\n" }) {
            throw PluginError("'\(a)' is not an e-mail address")
        }
        if config.username != nil, config.tls == "none" { throw PluginError("username needs TLS: the password would cross the network in the clear") }
        if config.tls == "none" {
            ssl = nil
        } else {
            var c = TLSConfiguration.makeClientConfiguration()
            if let ca = config.ca_file { c.trustRoots = .file(ca) }
            ssl = try NIOSSLContext(configuration: c)
        }
        let (stream, continuation) = AsyncStream.makeStream(of: (Message, Ack).self)
        outbox = continuation
        let session = SMTPSession(host: server.host, port: server.port, tls: config.tls, sslContext: ssl,
                                  serverName: config.server_name ?? (server.host.first?.isNumber == true ? nil : server.host),
                                  username: config.username, password: config.password, timeout: .milliseconds(Int64(config.timeout * 1000)))
        let (from, to, group) = (config.from, config.to, group)
        let render = { [config] (m: Message) in Self.render(m, config) }
        let (current, senderDone) = (current, senderDone)
        sender = Task(executorPreference: LoopTaskExecutor(group.next())) {
            defer { senderDone.signal() }
            for await (message, ack) in stream {
                do {
                    try await session.send(from: from, to: to, data: render(message), group: group) { channel in
                        let stopping = current.withLockedValue { c -> Bool in
                            c.channel = channel
                            return c.stopping
                        }
                        if stopping { channel.close(promise: nil) }
                    }
                    ack.succeed()
                } catch _ where current.withLockedValue({ $0.stopping }) {
                    ack.retry("the smtp sink stopped")
                } catch let e as SMTPError {
                    host.log(.warning, "mail not sent: \(e)")
                    if e.transient { ack.retry(e.description) } else { ack.reject(e.description) }
                } catch {
                    ack.retry("\(error)")
                }
                current.withLockedValue { $0.channel = nil }
            }
        }
    }

    func stop() {
        outbox.finish()
        sender.cancel()
        current.withLockedValue { c -> Channel? in
            c.stopping = true
            return c.channel
        }?.close(promise: nil)
        _ = senderDone.wait(timeout: .now() + .seconds(5))
        try? group.syncShutdownGracefully()
    }

    func write(_ message: Message, ack: Ack) -> Bool {
        outbox.yield((message, ack))
        return true
    }

    /// The mail: headers and a UTF-8 body.
    static func render(_ m: Message, _ config: Config) -> String {
        let payload = (try? JSON.decode(m.payload)) ?? .null
        let subject = TextTemplate.fill(config.subject, m, payload: payload).replacingOccurrences(of: "\n", with: " ")
        let body = TextTemplate.fill(config.body, m, payload: payload)
        let domain = config.from.split(separator: "@").last.map(String.init) ?? "iotc.local"
        return [
            "From: \(config.from)", "To: \(config.to.joined(separator: ", "))", "Subject: \(Self.encodedWord(subject))",
            "Date: \(RFC5322.format(Int64(Date().timeIntervalSince1970 * 1000)))", "Message-ID: <\(UUID().uuidString)@\(domain)>", "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit", "", body,
        ].joined(separator: "\r\n")
    }

    /// A header value in RFC 2047 form when it is not plain ASCII.
    static func encodedWord(_ s: String) -> String {
        s.utf8.allSatisfy({ $0 < 0x80 && $0 >= 0x20 }) ? s : "=?utf-8?B?\(Data(s.utf8).base64EncodedString())?="
    }
}
