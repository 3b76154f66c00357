import Crypto
import Foundation
import IoTCNetworking
import IoTCPluginKit
import NIOCore
import NIOSSL
import Synchronization

// Network helpers that several plugins' servers share (linked statically into each plugin).

/// A server's TLS files, as a plugin's `tls` config object gives them.
public struct ServerTLSFiles: Decodable, Sendable {
    public var certificate_file: String
    public var key_file: String
    public var client_ca_file: String?
    /// none, optional or required.
    public var client_certificate: String?

    /// The config fields, for a plugin's spec.
    public static let fields: [ConfigField] = [
        ConfigField("certificate_file", .string, "PEM certificate chain.", required: true),
        ConfigField("key_file", .string, "PEM private key.", required: true),
        ConfigField("client_ca_file", .string, "PEM CA bundle; when set, clients must present a certificate it signed (checked in the TLS handshake)."),
        ConfigField("client_certificate", .string, "Ask clients for a certificate. Without client_ca_file, the hub decides at authentication whether to trust it: a certificate registered for a device by its fingerprint, or one issued by a certificate authority a tenant registered (the device is its common name). optional lets devices without one in (they authenticate otherwise).",
                    default: #""none""#, options: ["none", "optional", "required"]),
    ]

    /// Whether clients are asked for certificates.
    public var requestsClientCertificates: Bool { client_ca_file != nil || (client_certificate ?? "none") != "none" }

    /// The server context: with `client_ca_file`, clients must present a certificate it signed; with
    /// `client_certificate` alone, they are asked for one, which the hub judges when they authenticate.
    public func context() throws -> NIOSSLContext {
        do {
            var c = TLSConfiguration.makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMFile(certificate_file).map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: key_file, format: .pem)))
            if let client_ca_file {
                c.trustRoots = .file(client_ca_file)
                c.certificateVerification = client_certificate == "optional" ? .optionalVerification : .noHostnameVerification
            } else if let mode = client_certificate, mode != "none" {
                c.certificateVerification = mode == "optional" ? .optionalVerification : .noHostnameVerification
            }
            return try NIOSSLContext(configuration: c)
        } catch {
            throw PluginError("TLS setup failed: \(error)")
        }
    }

    /// The TLS handler for one connection. Asked for with `client_certificate` and no `client_ca_file`,
    /// any chain a client presents passes the handshake (which still proves the client holds the leaf's
    /// key) and is kept for `ServerTLS.presentedChain`: the hub trusts it or not when the device
    /// authenticates.
    public func handler(_ context: NIOSSLContext) throws -> NIOSSLServerHandler {
        guard client_ca_file == nil, let mode = client_certificate, mode != "none" else { return NIOSSLServerHandler(context: context) }
        return NIOSSLServerHandler(context: context, customVerificationCallbackWithMetadata: { chain, promise in
            promise.succeed(.certificateVerified(VerificationMetadata(ValidatedCertificateChain(chain))))
        })
    }
}

/// A client's TLS files (the MQTT bridge to its broker, a webhook to its endpoint), as a plugin's `tls`
/// config object gives them: the roots that vouch for the server, and a certificate of our own for
/// servers that ask for one.
public struct ClientTLSFiles: Decodable, Sendable {
    public var ca_file: String?
    public var certificate_file: String?
    public var key_file: String?
    /// The name to check in the server's certificate instead of its host (plugins that offer it).
    public var server_name: String?

    /// The config fields, for a plugin's spec; `server` names the other side ("broker", "endpoint").
    public static func fields(server: String, serverName: Bool) -> [ConfigField] {
        [
            ConfigField("ca_file", .string, "PEM CA bundle to verify the \(server) with; the system's when unset."),
            ConfigField("certificate_file", .string, "PEM client certificate, for \(server)s that require one (with key_file)."),
            ConfigField("key_file", .string, "PEM client key."),
        ] + (serverName ? [ConfigField("server_name", .string, "Name to verify in the \(server)'s certificate; the server host when unset.")] : [])
    }

    /// The client configuration: the server's certificate is always verified, against `ca_file` or the
    /// system's roots.
    public func configuration() throws -> TLSConfiguration {
        var c = TLSConfiguration.makeClientConfiguration()
        guard (certificate_file == nil) == (key_file == nil) else { throw PluginError("tls: certificate_file and key_file go together") }
        do {
            if let ca_file { c.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca_file)) }
            if let certificate_file, let key_file {
                c.certificateChain = try NIOSSLCertificate.fromPEMFile(certificate_file).map { .certificate($0) }
                c.privateKey = .privateKey(try NIOSSLPrivateKey(file: key_file, format: .pem))
            }
        } catch {
            throw PluginError("tls: cannot read the certificate or key files: \(error)")
        }
        return c
    }
}

public enum ServerTLS {
    /// The certificate chain a TLS client presented (DER, leaf first), and its leaf's fingerprint; empty
    /// when it presented none or the channel has no TLS.
    public static func presented(_ pipeline: ChannelPipeline.SynchronousOperations) -> (chain: [[UInt8]], fingerprint: String) {
        guard let tls = try? pipeline.handler(type: NIOSSLServerHandler.self) else { return ([], "") }
        // With the hub judging certificates, the whole chain was kept in the handshake; with a CA
        // file, the leaf is what identifies the device.
        let chain = tls.peerValidatedCertificateChain.map(Array.init) ?? tls.peerCertificate.map { [$0] } ?? []
        return (chain.compactMap { try? $0.toDERBytes() }, chain.first.map(fingerprint) ?? "")
    }

    /// Lower-case hex SHA-256 of a certificate's DER form: how the hub recognises a device's certificate.
    public static func fingerprint(_ cert: NIOSSLCertificate) -> String {
        guard let der = try? cert.toDERBytes() else { return "" }
        return SHA256.hash(data: der).map { String(format: "%02x", $0) }.joined()
    }
}

/// At most `limit` connections open at once on a source's listeners (0: no limit). A connection over
/// the limit is closed as it is accepted, before anything is read from it, and counted; the others are
/// not disturbed, and the hub keeps descriptors for its other sources and its API.
public final class ConnectionLimit: Sendable {
    public let limit: Int
    private let open = Atomic<Int>(0)
    private let refusedSoFar = Atomic<Int>(0)
    /// Told of each refused connection (for a metric and an occasional log line), on its event loop.
    private let onRefused: @Sendable (_ refusedSoFar: Int) -> Void

    public struct Reached: Error, CustomStringConvertible {
        public var description: String { "the source's max_connections is reached" }
    }

    public init(_ limit: Int, onRefused: @escaping @Sendable (_ refusedSoFar: Int) -> Void = { _ in }) {
        self.limit = limit
        self.onRefused = onRefused
    }

    /// A source's limit: each refusal counts in `iotc_connections_refused_total`, and is logged at most
    /// once a second (`LogBudget`: a flood of connections does not flood the log).
    public convenience init(_ limit: Int, host: PluginHost, source: String) {
        let budget = LogBudget()
        self.init(limit) { n in
            host.metric(.counter, "iotc_connections_refused_total", 1)
            if budget.take() != nil {
                host.log(.warning, "\(source): max_connections (\(limit)) reached; \(n) connection\(n == 1 ? "" : "s") refused so far")
            }
        }
    }

    /// The config field, for a plugin's spec.
    public static let field = ConfigField("max_connections", .int,
        "Most connections open at once (0: no limit); one over it is closed as it is accepted and counted in iotc_connections_refused_total.",
        default: "0")

    /// Takes a place for a newly accepted `channel`, given back when it closes. Throws when every place
    /// is taken: a child channel initializer that throws has its channel closed by NIO.
    public func admit(_ channel: Channel) throws {
        guard limit > 0 else { return }
        guard open.add(1, ordering: .relaxed).newValue <= limit else {
            open.subtract(1, ordering: .relaxed)
            onRefused(refusedSoFar.add(1, ordering: .relaxed).newValue)
            throw Reached()
        }
        channel.closeFuture.whenComplete { [self] _ in open.subtract(1, ordering: .relaxed) }
    }
}

extension AcceptFailures {
    /// Adds the handler to a source's listening channel (for a `serverChannelInitializer`): it logs
    /// and counts through the host.
    public static func install(on channel: Channel, host: PluginHost, source: String) -> EventLoopFuture<Void> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(AcceptFailures(
                listener: source, remedy: "raise the open-file limit, or set max_connections", log: { host.log(.error, $0) }, count: { host.metric(.counter, "iotc_accept_failures_total", 1) }))
        }
    }
}

/// Hands work from the hub's threads to a plugin's event loops: a message's verdict, a command, a
/// publish. Such work can come after the plugin stopped (a durable pipeline's log commits once a
/// reload has stopped the source), and NIO refuses a task on a loop group that has shut down (it logs
/// an error, and in strict mode, which is to become its default, crashes). The plugin closes the gate
/// before it shuts its group down; work that comes later runs its `otherwise` instead, which gives
/// back what the work held (a command to retry, a publish to offer again).
public final class LoopGate: Sendable {
    private let state = Mutex(true)

    public init() {}

    /// Queues `job` on `loop` while the gate is open; else runs `otherwise` here.
    public func execute(on loop: EventLoop, _ job: @escaping @Sendable () -> Void, otherwise: () -> Void = {}) {
        let queued = state.withLock { open -> Bool in
            if open { loop.execute(job) }
            return open
        }
        if !queued { otherwise() }
    }

    /// No work is queued from now on. Call before the group shuts down.
    public func close() { state.withLock { $0 = false } }
}
