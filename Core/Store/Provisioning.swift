import Foundation
import IoTCPluginKit

/// A fleet provisioning key: devices that present it (with their own claim code) receive their own
/// credentials in its tenant, with its profile.
public struct ProvisioningKey: Sendable, Equatable {
    public var id: String
    public var tenant: String
    public var name: String
    public var profile: String
    public var createdAt: Int64
    public var expiresAt: Int64?
    public var revokedAt: Int64?
}

/// What a successful claim gives the device.
public struct ClaimedDevice: Sendable {
    public var tenant: String
    public var device: String
    public var credential: DeviceCredential
    public var token: String
}

/// Provisioning by claim, as fleet provisioning works elsewhere: an admin makes a fleet key and gives
/// each device a claim code (printed on it, or written at the factory); a device presents the fleet key,
/// its id and its code once, and gets its own token. Codes are kept as PBKDF2 hashes and count once.
public struct Provisioning: Sendable {
    public let store: any Store
    let clock: @Sendable () -> Int64

    public init(store: any Store, clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) }) {
        self.store = store
        self.clock = clock
    }

    /// A new fleet key: `iotcp_<id>_<32 letters and digits>`, returned here only.
    public func createKey(tenant: String, name: String, profile: String, expiresAt: Int64?) async throws -> (ProvisioningKey, String) {
        guard !name.isEmpty, name.unicodeScalars.count <= 200 else { throw AccountsError.invalid("a key name is 1 to 200 characters") }
        guard Accounts.isValidID(profile) else { throw AccountsError.invalid("a profile is 1 to 63 lower-case letters, digits and dashes") }
        if let expiresAt, expiresAt <= clock() { throw AccountsError.invalid("the expiry is in the past") }
        let (id, secret) = Accounts.newSecret()
        let fleetSecret = "iotcp_" + secret.dropFirst("iotc_".count)
        let now = clock()
        _ = try await store.execute("""
            INSERT INTO provisioning_keys (id, tenant_id, name, profile, hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)
            """, [.text(id), .text(tenant), .text(name), .text(profile), .blob(Accounts.hash(fleetSecret)), .integer(now), SQLValue(expiresAt)])
        return (ProvisioningKey(id: id, tenant: tenant, name: name, profile: profile, createdAt: now, expiresAt: expiresAt, revokedAt: nil), fleetSecret)
    }

    public func keys(tenant: String) async throws -> [ProvisioningKey] {
        try await store.query("SELECT * FROM provisioning_keys WHERE tenant_id = ? ORDER BY created_at, id", [.text(tenant)]).map(Self.key)
    }

    public func revokeKey(tenant: String, id: String) async throws -> Bool {
        try await store.execute("UPDATE provisioning_keys SET revoked_at = ? WHERE tenant_id = ? AND id = ? AND revoked_at IS NULL",
                                [.integer(clock()), .text(tenant), .text(id)]) == 1
    }

    /// Sets (or replaces, unless already claimed) a device's claim code.
    public func setClaimCode(tenant: String, device: String, code: String, expiresAt: Int64?) async throws {
        guard Devices.isValidID(device) else { throw AccountsError.invalid("a device id is 1 to 128 letters, digits and . _ : -") }
        guard (8...128).contains(code.unicodeScalars.count) else { throw AccountsError.invalid("a claim code is 8 to 128 characters") }
        if let expiresAt, expiresAt <= clock() { throw AccountsError.invalid("the expiry is in the past") }
        let hash = try Accounts.hashPassword(code)
        let now = clock()
        try await store.transaction { db in
            if let row = try await db.query("SELECT claimed_at FROM device_claims WHERE tenant_id = ? AND device_id = ?", [.text(tenant), .text(device)]).first {
                guard row.int("claimed_at") == nil else { throw AccountsError.conflict("device '\(device)' has been claimed already") }
                try await db.execute("UPDATE device_claims SET code_hash = ?, created_at = ?, expires_at = ? WHERE tenant_id = ? AND device_id = ?",
                                     [.text(hash), .integer(now), SQLValue(expiresAt), .text(tenant), .text(device)])
            } else {
                try await db.execute("INSERT INTO device_claims (tenant_id, device_id, code_hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                                     [.text(tenant), .text(device), .text(hash), .integer(now), SQLValue(expiresAt)])
            }
        }
    }

    /// A device claims its credentials: nil for a wrong, revoked or expired fleet key, an unknown
    /// device, a wrong or expired code, or a code already used (all alike, so that a guess learns
    /// nothing). The device is registered with the key's profile if it is not yet.
    public func claim(fleetKey: String, device: String, code: String, devices: Devices) async throws -> ClaimedDevice? {
        let now = clock()
        var key: ProvisioningKey?
        if let id = Accounts.keyID(of: fleetKey, prefix: "iotcp_"),
           let row = try await store.query("SELECT * FROM provisioning_keys WHERE id = ?", [.text(id)]).first,
           let stored = row.bytes("hash"), ConstantTime.equal(stored, Accounts.hash(fleetKey)) {
            key = Self.key(row)
        }
        var claim: Row?
        if let key {
            claim = try await store.query("SELECT * FROM device_claims WHERE tenant_id = ? AND device_id = ?", [.text(key.tenant), .text(device)]).first
        }
        // One slow hash on every path, so that how long a refusal takes tells nothing of why.
        let verified = Accounts.verifyPassword(code, claim?.string("code_hash") ?? Accounts.decoyHash)
        guard let key, key.revokedAt == nil, key.expiresAt.map({ $0 > now }) ?? true,
              let claim, verified, claim.int("claimed_at") == nil, claim.int("expires_at").map({ $0 > now }) ?? true else { return nil }
        // The code counts once, even when two claims race.
        guard try await store.execute("UPDATE device_claims SET claimed_at = ? WHERE tenant_id = ? AND device_id = ? AND claimed_at IS NULL",
                                      [.integer(now), .text(key.tenant), .text(device)]) == 1 else { return nil }
        if try await devices.get(tenant: key.tenant, id: device) == nil {
            do { _ = try await devices.create(tenant: key.tenant, id: device, profile: key.profile) } catch let e as StoreError where e.kind == .constraint {}
        }
        let (credential, token) = try await devices.issueToken(tenant: key.tenant, device: device)
        return ClaimedDevice(tenant: key.tenant, device: device, credential: credential, token: token)
    }

    static func key(_ r: Row) -> ProvisioningKey {
        ProvisioningKey(id: r.string("id") ?? "", tenant: r.string("tenant_id") ?? "", name: r.string("name") ?? "", profile: r.string("profile") ?? "default",
                        createdAt: r.int("created_at") ?? 0, expiresAt: r.int("expires_at"), revokedAt: r.int("revoked_at"))
    }
}
