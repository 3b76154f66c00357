import Foundation
import IoTCPluginKit

/// A certificate authority a tenant registered: client certificates it issues authenticate devices of
/// that tenant, named by the certificate's subject common name, with the authority's profile.
public struct CertificateAuthority: Sendable, Equatable {
    public var id: String
    public var tenant: String
    public var name: String
    /// The authority's subject, as text (`CN=Fleet CA,O=Example`).
    public var subject: String
    /// SHA-256 of its DER form.
    public var fingerprint: [UInt8]
    /// Its certificate, DER.
    public var certificate: [UInt8]
    public var profile: String
    /// When the authority's own certificate expires (milliseconds since the epoch).
    public var notAfter: Int64
    public var createdAt: Int64
    /// The revocation list it published last (DER), and when it was set.
    public var revocationList: [UInt8]? = nil
    public var revocationListSetAt: Int64? = nil
}

/// The tenants' certificate authorities. Parsing and checking a certificate is the caller's (the
/// store keeps what it is given); one authority belongs to one tenant only.
public struct CertificateAuthorities: Sendable {
    public let store: any Store
    let clock: @Sendable () -> Int64

    public init(store: any Store, clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) }) {
        self.store = store
        self.clock = clock
    }

    public func create(tenant: String, name: String, subject: String, certificate der: [UInt8], fingerprint: [UInt8], profile: String,
                       notAfter: Int64) async throws -> CertificateAuthority {
        guard !name.isEmpty, name.unicodeScalars.count <= 200 else { throw AccountsError.invalid("a name is 1 to 200 characters") }
        guard Accounts.isValidID(profile) else { throw AccountsError.invalid("a profile is 1 to 63 lower-case letters, digits and dashes") }
        let ca = CertificateAuthority(id: Devices.newToken().id, tenant: tenant, name: name, subject: subject, fingerprint: fingerprint,
                                      certificate: der, profile: profile, notAfter: notAfter, createdAt: clock())
        try await store.transaction { db in
            // Whose devices a certificate names must never be in doubt: no authority is registered twice.
            guard try await db.query("SELECT id FROM certificate_authorities WHERE fingerprint = ?", [.blob(fingerprint)]).isEmpty else {
                throw AccountsError.conflict("this certificate authority is already registered")
            }
            try await db.execute("""
                INSERT INTO certificate_authorities (id, tenant_id, name, subject, fingerprint, certificate, profile, not_after, created_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                """, [.text(ca.id), .text(tenant), .text(name), .text(subject), .blob(fingerprint), .blob(der), .text(profile),
                      .integer(notAfter), .integer(ca.createdAt)])
        }
        return ca
    }

    public func list(tenant: String) async throws -> [CertificateAuthority] {
        try await store.query("SELECT * FROM certificate_authorities WHERE tenant_id = ? ORDER BY created_at, id", [.text(tenant)]).map(Self.row)
    }

    public func get(tenant: String, id: String) async throws -> CertificateAuthority? {
        try await store.query("SELECT * FROM certificate_authorities WHERE tenant_id = ? AND id = ?", [.text(tenant), .text(id)]).first.map(Self.row)
    }

    /// Every tenant's authorities, for the hub's authentication.
    public func all() async throws -> [CertificateAuthority] {
        try await store.query("SELECT * FROM certificate_authorities ORDER BY created_at, id").map(Self.row)
    }

    /// Sets (or, with nil, removes) an authority's revocation list. Checking that the authority signed
    /// it is the caller's.
    public func setRevocationList(tenant: String, id: String, _ der: [UInt8]?) async throws -> Bool {
        try await store.execute("UPDATE certificate_authorities SET crl = ?, crl_updated_at = ? WHERE tenant_id = ? AND id = ?",
                                [der.map { .blob($0) } ?? .null, der == nil ? .null : .integer(clock()), .text(tenant), .text(id)]) == 1
    }

    /// Sets an authority's revocation list only while the one in force is still `current` (as the
    /// caller read it, nil for none), so that of two lists put at once an older one cannot land last
    /// and bring back what the newer one revoked. False when the authority is gone or its list changed.
    public func replaceRevocationList(tenant: String, id: String, _ der: [UInt8], current: [UInt8]?) async throws -> Bool {
        let same = store.engine == .postgres ? "crl IS NOT DISTINCT FROM ?" : "crl IS ?"
        return try await store.execute("UPDATE certificate_authorities SET crl = ?, crl_updated_at = ? WHERE tenant_id = ? AND id = ? AND \(same)",
                                       [.blob(der), .integer(clock()), .text(tenant), .text(id), current.map { .blob($0) } ?? .null]) == 1
    }

    /// Removes an authority: its certificates stop authenticating (open connections close).
    public func delete(tenant: String, id: String) async throws -> Bool {
        try await store.execute("DELETE FROM certificate_authorities WHERE tenant_id = ? AND id = ?", [.text(tenant), .text(id)]) == 1
    }

    static func row(_ r: Row) -> CertificateAuthority {
        CertificateAuthority(id: r.string("id") ?? "", tenant: r.string("tenant_id") ?? "", name: r.string("name") ?? "",
                             subject: r.string("subject") ?? "", fingerprint: r.bytes("fingerprint") ?? [], certificate: r.bytes("certificate") ?? [],
                             profile: r.string("profile") ?? "default", notAfter: r.int("not_after") ?? 0, createdAt: r.int("created_at") ?? 0,
                             revocationList: r.bytes("crl"), revocationListSetAt: r.int("crl_updated_at"))
    }
}
