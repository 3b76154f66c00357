import Crypto
import Foundation
import IoTCPluginKit

/// Checks device credentials against the static tokens of the pipeline files. Tokens are kept only as
/// SHA-256 digests and compared in constant time.
struct DeviceAuthenticator: Sendable {
    private struct Entry: Sendable {
        var device: String
        var tenant: String
        var digest: [UInt8]
    }
    private let entries: [Entry]
    let allowAnonymous: Bool

    init(_ config: AuthConfig) {
        entries = config.tokens.map { Entry(device: $0.device, tenant: $0.tenant, digest: Array(SHA256.hash(data: Array($0.token.utf8)))) }
        allowAnonymous = config.allowAnonymous
    }

    /// The tenant and device for these credentials, or nil.
    func authenticate(_ c: Credentials) -> (tenant: String, device: String)? {
        if c.secret.isEmpty {
            guard allowAnonymous, !c.device.isEmpty else { return nil }
            return ("default", c.device)
        }
        let digest = Array(SHA256.hash(data: Array(c.secret.utf8)))
        var match: Entry?
        for e in entries where ConstantTime.equal(e.digest, digest) && (c.device.isEmpty || c.device == e.device) { match = e }
        return match.map { ($0.tenant, $0.device) }
    }

}

/// A source of device identities beyond the pipeline files' static tokens: the device registry. Called
/// from plugin threads on every connect (and HTTP request), so it must answer from memory.
public protocol DeviceDirectory: AnyObject, Sendable {
    /// The tenant and device for these credentials, and the credential's id (the hub closes the
    /// device's connections when it is revoked), or nil when they are unknown, revoked or expired.
    func authenticate(_ c: Credentials) -> DirectoryGrant?
    /// The device and key for a DTLS pre-shared key identity, while the key is in force.
    func presharedKey(identity: String) -> (grant: DirectoryGrant, key: [UInt8])?
    /// A device's attributes (the configuration the operator set) as a JSON object, or nil for none.
    func attributes(tenant: String, device: String) -> [UInt8]?
    /// Sets some of a registered device's attributes, keeping the others (the `attributes` sink):
    /// false when there is no such device.
    func mergeAttributes(tenant: String, device: String, _ fields: Value.Object) async throws -> Bool
    /// The ids of the tenant's devices whose labels include all of these (a device group), sorted.
    func devices(tenant: String, labels: [KeyValue]) -> [String]
}

extension DeviceDirectory {
    public func presharedKey(identity: String) -> (grant: DirectoryGrant, key: [UInt8])? { nil }
    public func attributes(tenant: String, device: String) -> [UInt8]? { nil }
    public func mergeAttributes(tenant: String, device: String, _ fields: Value.Object) async throws -> Bool { false }
    public func devices(tenant: String, labels: [KeyValue]) -> [String] { [] }
}

/// A device the directory recognised: its tenant and id, the credential it used (the hub closes the
/// device's connections when it is revoked), the authority that vouched for that credential if any (a
/// certificate authority: revoking it revokes the grant too) and its profile (which decides its topic
/// access).
public struct DirectoryGrant: Sendable, Equatable {
    public var tenant: String
    public var device: String
    public var credential: String
    public var issuer: String?
    public var profile: String

    public init(tenant: String, device: String, credential: String, issuer: String? = nil, profile: String = "default") {
        self.tenant = tenant
        self.device = device
        self.credential = credential
        self.issuer = issuer
        self.profile = profile
    }
}
