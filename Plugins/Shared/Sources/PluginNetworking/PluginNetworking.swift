import Crypto
import Foundation
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

public enum ServerTLS {
    /// A server TLS context from PEM files; with `clientCA`, clients must present a certificate it signed.
    public static func context(certificateFile: String, keyFile: String, clientCAFile: String?) throws -> NIOSSLContext {
        do {
            var c = TLSConfiguration.makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMFile(certificateFile).map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem)))
            if let clientCAFile {
                c.trustRoots = .file(clientCAFile)
                c.certificateVerification = .noHostnameVerification
            }
            return try NIOSSLContext(configuration: c)
        } catch {
            throw TLSSetupError(description: "TLS setup failed: \(error)")
        }
    }

    /// Lower-case hex SHA-256 of a certificate's DER form: how the hub recognises a device's certificate.
    public static func fingerprint(_ cert: NIOSSLCertificate) -> String {
        guard let der = try? cert.toDERBytes() else { return "" }
        return SHA256.hash(data: der).map { String(format: "%02x", $0) }.joined()
    }
}

public struct TLSSetupError: Error, CustomStringConvertible {
    public var description: String
}
