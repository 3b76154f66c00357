import Crypto
import Foundation
import IoTCPluginKit

/// What a key may do, from least to most.
public enum Role: String, Sendable, CaseIterable, Comparable, Codable {
    /// Reads.
    case viewer
    /// Reads, and runs the fleet: commands, reloads, dead-letter replay.
    case `operator`
    /// All of that, and the tenant's keys and members.
    case admin
    /// All of that, and the tenant itself.
    case owner

    var rank: Int { Role.allCases.firstIndex(of: self)! }
    public static func < (a: Role, b: Role) -> Bool { a.rank < b.rank }
}

/// A customer account. The system tenant (created at first start) administers the hub itself.
public struct Tenant: Sendable, Equatable {
    public var id: String
    public var name: String
    public var system: Bool
    public var createdAt: Int64
    /// Days of telemetry kept; 0 keeps it all.
    public var retentionDays: Int64 = 0
}

/// An API key as stored: never the secret, only its SHA-256.
public struct APIKey: Sendable, Equatable {
    public var id: String
    public var tenant: String
    public var name: String
    public var role: Role
    public var createdAt: Int64
    public var expiresAt: Int64?
    public var lastUsedAt: Int64?
    public var revokedAt: Int64?
    /// The areas of the API the key is limited to (`APIKey.scopes`); empty for all of them.
    public var scopes: [String] = []

    /// The API's areas a key can be limited to.
    public static let allScopes = ["accounts", "alerts", "audit", "commands", "devices", "hub", "provisioning", "telemetry"]

    /// Whether the key may reach an area.
    public func reaches(_ scope: String) -> Bool { scopes.isEmpty || scopes.contains(scope) }

    /// The part of the secret that may be shown: `iotc_` and the key's id.
    public var prefix: String { "iotc_\(id)" }
}

/// Tenants and their API keys. A key's secret reads `iotc_<id>_<random>`: the prefix lets secret scanners
/// recognise a leaked key, the id finds its row without scanning, and only a hash of the whole secret is
/// stored (the random part has 190 bits, so a fast hash is enough: nothing is left to guess).
public struct Accounts: Sendable {
    /// Within a transaction that adds something to a tenant: the tenant must exist.
    static func requireTenant(_ db: any StoreConnection, _ tenant: String) async throws {
        guard try await !db.query("SELECT id FROM tenants WHERE id = ?", [.text(tenant)]).isEmpty else {
            throw AccountsError.notFound("no tenant '\(tenant.prefix(64))'")
        }
    }

    public let store: any Store
    let clock: @Sendable () -> Int64

    public init(store: any Store, clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) }) {
        self.store = store
        self.clock = clock
    }

    /// Tenant ids and key ids are safe in URLs, topics and file names.
    public static func isValidID(_ id: String) -> Bool {
        guard let first = id.utf8.first, id.utf8.count <= 63, first != UInt8(ascii: "-") else { return false }
        return id.utf8.allSatisfy { (0x61...0x7A).contains($0) || (0x30...0x39).contains($0) || $0 == UInt8(ascii: "-") }
    }

    // MARK: - Bootstrap

    /// On the first start (no system tenant yet): creates the system tenant `system` and an owner key for it,
    /// and returns the key's secret to show once. `presetKey` (an `iotc_` secret made elsewhere, e.g. by
    /// deployment tooling) is used instead of a new one. Nil when the hub was set up before.
    public func bootstrap(presetKey: String? = nil) async throws -> String? {
        try await store.transaction { db in
            guard try await db.query("SELECT id FROM tenants WHERE system = 1 LIMIT 1").isEmpty else { return nil }
            let now = clock()
            try await db.execute("INSERT INTO tenants (id, name, system, created_at) VALUES (?, ?, 1, ?)", ["system", "System", .integer(now)])
            let secret: String
            let id: String
            if let presetKey {
                guard let parsed = Self.parse(presetKey) else {
                    throw AccountsError.invalid("the preset key is not an iotc_ key (iotc_<id>_<at least 32 letters and digits>)")
                }
                (id, secret) = (parsed.id, presetKey)
            } else {
                (id, secret) = Self.newSecret()
            }
            try await Self.insertKey(db, id: id, secret: secret, tenant: "system", name: "bootstrap owner key", role: .owner, now: now, expiresAt: nil)
            return secret
        }
    }

    // MARK: - Tenants

    public func createTenant(id: String, name: String) async throws -> Tenant {
        guard Self.isValidID(id) else { throw AccountsError.invalid("a tenant id is 1 to 63 lower-case letters, digits and dashes, not starting with a dash") }
        guard !name.isEmpty, name.unicodeScalars.count <= 200 else { throw AccountsError.invalid("a tenant name is 1 to 200 characters") }
        let now = clock()
        do {
            try await store.execute("INSERT INTO tenants (id, name, system, created_at) VALUES (?, ?, 0, ?)", [.text(id), .text(name), .integer(now)])
        } catch let e as StoreError where e.kind == .constraint {
            throw AccountsError.conflict("tenant '\(id)' exists")
        }
        return Tenant(id: id, name: name, system: false, createdAt: now)
    }

    public func tenants() async throws -> [Tenant] {
        try await store.query("SELECT id, name, system, created_at, retention_days FROM tenants ORDER BY id").map(Self.tenant)
    }

    public func tenant(_ id: String) async throws -> Tenant? {
        try await store.query("SELECT id, name, system, created_at, retention_days FROM tenants WHERE id = ?", [.text(id)]).first.map(Self.tenant)
    }

    /// Sets how many days of telemetry a tenant keeps (0: all); false when there is no such tenant.
    public func setRetention(tenant: String, days: Int64) async throws -> Bool {
        guard (0...36500).contains(days) else { throw AccountsError.invalid("retention_days is from 0 (keep all) to 36500") }
        return try await store.execute("UPDATE tenants SET retention_days = ? WHERE id = ?", [.integer(days), .text(tenant)]) == 1
    }

    /// Deletes telemetry older than each tenant's retention; returns how many points went.
    @discardableResult
    public func applyRetention() async throws -> Int {
        var deleted = 0
        let telemetry = Telemetry(store: store)
        for t in try await tenants() where t.retentionDays > 0 {
            deleted += try await telemetry.deleteOlder(tenant: t.id, than: clock() - t.retentionDays * 86_400_000)
        }
        return deleted
    }

    /// Deletes a tenant with everything it owns. The system tenant cannot be deleted.
    public func deleteTenant(_ id: String) async throws -> Bool {
        try await store.execute("DELETE FROM tenants WHERE id = ? AND system = 0", [.text(id)]) == 1
    }

    // MARK: - Keys

    /// Creates a key; the secret is returned here and never again.
    public func createKey(tenant: String, name: String, role: Role, expiresAt: Int64? = nil, scopes: [String] = []) async throws -> (key: APIKey, secret: String) {
        guard !name.isEmpty, name.unicodeScalars.count <= 200 else { throw AccountsError.invalid("a key name is 1 to 200 characters") }
        if let unknown = scopes.first(where: { !APIKey.allScopes.contains($0) }) {
            throw AccountsError.invalid("unknown scope '\(unknown.prefix(32))'; scopes: \(APIKey.allScopes.joined(separator: ", "))")
        }
        let scopes = Array(Set(scopes)).sorted()
        if let expiresAt, expiresAt <= clock() { throw AccountsError.invalid("the expiry is in the past") }
        let (id, secret) = Self.newSecret()
        let now = clock()
        try await store.transaction { db in
            try await Self.requireTenant(db, tenant)
            try await Self.insertKey(db, id: id, secret: secret, tenant: tenant, name: name, role: role, now: now, expiresAt: expiresAt)
            if !scopes.isEmpty { try await db.execute("UPDATE api_keys SET scopes = ? WHERE id = ?", [.text(scopes.joined(separator: ",")), .text(id)]) }
        }
        var key = APIKey(id: id, tenant: tenant, name: name, role: role, createdAt: now, expiresAt: expiresAt)
        key.scopes = scopes
        return (key, secret)
    }

    public func keys(tenant: String) async throws -> [APIKey] {
        try await store.query("SELECT \(Self.keyColumns) FROM api_keys k WHERE k.tenant_id = ? ORDER BY k.created_at, k.id", [.text(tenant)]).map(Self.key)
    }

    /// Revokes a key of `tenant`; false when that tenant has no such key.
    public func revokeKey(tenant: String, id: String) async throws -> Bool {
        try await store.execute("UPDATE api_keys SET revoked_at = ? WHERE tenant_id = ? AND id = ? AND revoked_at IS NULL",
                                [.integer(clock()), .text(tenant), .text(id)]) == 1
    }

    /// The key and tenant a secret belongs to, when it is valid: known, not revoked, not expired.
    public func authenticate(_ secret: String) async throws -> (key: APIKey, tenant: Tenant)? {
        guard let parsed = Self.parse(secret) else { return nil }
        let rows = try await store.query("""
            SELECT \(Self.keyColumns), k.hash, t.name AS tenant_name, t.system, t.created_at AS tenant_created_at
            FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.id = ?
            """, [.text(parsed.id)])
        guard let row = rows.first, let stored = row.bytes("hash"), ConstantTime.equal(stored, Self.hash(secret)) else { return nil }
        let key = Self.key(row)
        let now = clock()
        guard key.revokedAt == nil, key.expiresAt.map({ $0 > now }) ?? true else { return nil }
        // Last use, at most once a minute per key; bookkeeping that does not keep the key out when the
        // store cannot write (a full disk).
        if (key.lastUsedAt ?? 0) < now - 60_000 {
            _ = try? await store.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", [.integer(now), .text(key.id)])
        }
        let tenant = Tenant(id: key.tenant, name: row.string("tenant_name") ?? "", system: row.int("system") == 1,
                            createdAt: row.int("tenant_created_at") ?? 0)
        return (key, tenant)
    }

    // MARK: - Internals

    static let keyColumns = "k.id, k.tenant_id, k.name, k.role, k.created_at, k.expires_at, k.last_used_at, k.revoked_at, k.scopes"

    private static func insertKey(_ db: any StoreConnection, id: String, secret: String, tenant: String, name: String, role: Role,
                                  now: Int64, expiresAt: Int64?) async throws {
        try await db.execute("""
            INSERT INTO api_keys (id, tenant_id, name, role, hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)
            """, [.text(id), .text(tenant), .text(name), .text(role.rawValue), .blob(hash(secret)), .integer(now), SQLValue(expiresAt)])
    }

    static let alphabet = Array("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)

    /// A new key id (12 lower-case letters and digits) and secret (`iotc_<id>_<32 letters and digits>`).
    static func newSecret() -> (id: String, secret: String) {
        var rng = SystemRandomNumberGenerator()
        let id = String(decoding: (0..<12).map { _ in alphabet[Int.random(in: 0..<36, using: &rng)] }, as: UTF8.self)
        let random = String(decoding: (0..<32).map { _ in alphabet[Int.random(in: 0..<62, using: &rng)] }, as: UTF8.self)
        return (id, "iotc_\(id)_\(random)")
    }

    /// The id part of a well-formed secret, safe to log.
    public static func keyID(of secret: String, prefix: StaticString = "iotc_") -> String? { parse(secret, prefix: prefix)?.id }

    /// The id and random part of `PREFIX<id>_<random>` (API keys: `iotc_`; device tokens: `iotcd_`).
    /// Checked on every authentication, so byte by byte.
    static func parse(_ secret: String, prefix: StaticString = "iotc_") -> (id: String, random: Substring)? {
        let p = prefix.withUTF8Buffer { String(decoding: $0, as: UTF8.self) }
        guard secret.utf8.count <= 200, secret.hasPrefix(p) else { return nil }
        let rest = secret.dropFirst(prefix.utf8CodeUnitCount)
        guard let sep = rest.utf8.firstIndex(of: UInt8(ascii: "_")) else { return nil }
        let id = String(rest[..<sep]), random = rest[rest.utf8.index(after: sep)...]
        guard isValidID(id), random.utf8.count >= 32, random.utf8.allSatisfy(isAlphanumeric) else { return nil }
        return (id, random)
    }

    /// One of `alphabet`: an ASCII letter or digit.
    static func isAlphanumeric(_ c: UInt8) -> Bool {
        (0x30...0x39).contains(c) || (0x41...0x5A).contains(c) || (0x61...0x7A).contains(c)
    }

    static func hash(_ secret: String) -> [UInt8] { Array(SHA256.hash(data: Array(secret.utf8))) }


    private static func tenant(_ r: Row) -> Tenant {
        Tenant(id: r.string("id") ?? "", name: r.string("name") ?? "", system: r.int("system") == 1, createdAt: r.int("created_at") ?? 0,
               retentionDays: r.int("retention_days") ?? 0)
    }

    private static func key(_ r: Row) -> APIKey {
        var k = APIKey(id: r.string("id") ?? "", tenant: r.string("tenant_id") ?? "", name: r.string("name") ?? "",
                       role: Role(rawValue: r.string("role") ?? "") ?? .viewer, createdAt: r.int("created_at") ?? 0,
                       expiresAt: r.int("expires_at"), lastUsedAt: r.int("last_used_at"), revokedAt: r.int("revoked_at"))
        k.scopes = (r.string("scopes") ?? "").split(separator: ",").map(String.init)
        return k
    }
}

/// Why an accounts operation was refused; the API maps each case to its status.
public enum AccountsError: Error, CustomStringConvertible, Sendable {
    case invalid(String)
    case conflict(String)
    case notFound(String)

    public var description: String {
        switch self {
        case .invalid(let s), .conflict(let s), .notFound(let s): s
        }
    }
}
