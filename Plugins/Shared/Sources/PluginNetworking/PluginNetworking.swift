import Crypto
import Foundation
import IoTCPluginKit
import NIOSSL

// Network helpers that several plugins' servers share (linked statically into each plugin).

/// `HOST:PORT`, `:PORT` (all addresses) or `[IPv6]:PORT`.
public struct HostPort: Sendable, Equatable {
    public var host: String
    public var port: Int

    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        var h = String(text[..<colon])
        if h.hasPrefix("["), h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
        host = h.isEmpty ? "0.0.0.0" : h
        self.port = port
    }
}

/// A server's TLS files, as a plugin's `tls` config object gives them.
public struct ServerTLSFiles: Decodable, Sendable {
    public var certificate_file: String
    public var key_file: String
    public var client_ca_file: String?

    /// The config fields, for a plugin's spec.
    public static let fields: [ConfigField] = [
        ConfigField("certificate_file", .string, "PEM certificate chain.", required: true),
        ConfigField("key_file", .string, "PEM private key.", required: true),
        ConfigField("client_ca_file", .string, "PEM CA bundle; when set, clients must present a certificate it signed."),
    ]

    /// The server context; with `client_ca_file`, clients must present a certificate it signed.
    public func context() throws -> NIOSSLContext {
        do {
            var c = TLSConfiguration.makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMFile(certificate_file).map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: key_file, format: .pem)))
            if let client_ca_file {
                c.trustRoots = .file(client_ca_file)
                c.certificateVerification = .noHostnameVerification
            }
            return try NIOSSLContext(configuration: c)
        } catch {
            throw PluginError("TLS setup failed: \(error)")
        }
    }
}

public enum ServerTLS {
    /// Lower-case hex SHA-256 of a certificate's DER form: how the hub recognises a device's certificate.
    public static func fingerprint(_ cert: NIOSSLCertificate) -> String {
        guard let der = try? cert.toDERBytes() else { return "" }
        return SHA256.hash(data: der).map { String(format: "%02x", $0) }.joined()
    }
}
