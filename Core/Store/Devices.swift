import Foundation
import IoTCPluginKit

/// A device in the registry: its id within its tenant, a display name, a profile (its type) and labels.
public struct Device: Sendable, Equatable {
    public var tenant: String
    public var id: String
    public var name: String
    public var profile: String
    public var labels: [String: String]
    public var createdAt: Int64
}

/// The device registry. Every call names the tenant: a device of another tenant is never found.
public struct Devices: Sendable {
    public let store: any Store
    /// Milliseconds since 1970: when credentials expire.
    public let clock: @Sendable () -> Int64

    public init(store: any Store, clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) }) {
        self.store = store
        self.clock = clock
    }

    /// Device ids: 1 to 128 letters, digits and `.`, `_`, `:`, `-` (MAC addresses and serial numbers
    /// fit), safe in topics, URLs and file names.
    public static func isValidID(_ id: String) -> Bool {
        guard !id.isEmpty, id.utf8.count <= 128, id != ".", id != ".." else { return false }
        return id.utf8.allSatisfy { Accounts.isAlphanumeric($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: "-") }
    }

    /// Label keys: 1 to 63 letters, digits and `.`, `_`, `-`; values up to 256 characters.
    public static func isValidLabelKey(_ k: String) -> Bool {
        !k.isEmpty && k.utf8.count <= 63 && k.utf8.allSatisfy { Accounts.isAlphanumeric($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }
    }

    static func check(_ d: Device) throws {
        guard isValidID(d.id) else { throw AccountsError.invalid("a device id is 1 to 128 letters, digits and . _ : -") }
        guard d.name.unicodeScalars.count <= 200 else { throw AccountsError.invalid("a device name is at most 200 characters") }
        guard Accounts.isValidID(d.profile) else { throw AccountsError.invalid("a profile is 1 to 63 lower-case letters, digits and dashes") }
        guard d.labels.count <= 64 else { throw AccountsError.invalid("a device has at most 64 labels") }
        for (k, v) in d.labels {
            guard isValidLabelKey(k) else { throw AccountsError.invalid("label '\(k.prefix(64))': a key is 1 to 63 letters, digits and . _ -") }
            guard v.unicodeScalars.count <= 256 else { throw AccountsError.invalid("label '\(k)': a value is at most 256 characters") }
        }
    }

    public func create(tenant: String, id: String, name: String = "", profile: String = "default", labels: [String: String] = [:]) async throws -> Device {
        let d = Device(tenant: tenant, id: id, name: name, profile: profile, labels: labels, createdAt: clock())
        try Self.check(d)
        try await store.transaction { db in
            try await Accounts.requireTenant(db, tenant)
            guard try await db.query("SELECT id FROM devices WHERE tenant_id = ? AND id = ?", [.text(tenant), .text(id)]).isEmpty else {
                throw AccountsError.conflict("device '\(id)' exists")
            }
            try await db.execute("""
                INSERT INTO devices (tenant_id, id, name, profile, labels, created_at) VALUES (?, ?, ?, ?, ?, ?)
                """, [.text(tenant), .text(id), .text(name), .text(profile), .text(Self.encode(labels)), .integer(d.createdAt)])
        }
        return d
    }

    /// A device to register with `createMany`.
    public struct NewDevice: Sendable {
        public var id: String
        public var name: String
        public var profile: String
        public var labels: [String: String]

        public init(id: String, name: String = "", profile: String = "default", labels: [String: String] = [:]) {
            self.id = id
            self.name = name
            self.profile = profile
            self.labels = labels
        }
    }

    /// What `createMany` did with one row.
    public enum BulkOutcome: Sendable, Equatable {
        /// Registered, with its token when tokens were asked for (shown here only).
        case created(token: String?)
        /// The device exists, or an earlier row names it.
        case exists(String)
        case invalid(String)
    }

    /// Rows per INSERT statement of `createMany`: devices take six parameters, tokens seven.
    static let bulkRowsPerStatement = 100

    /// Registers many devices at once, each with a token when `tokens` is set: a row that is invalid,
    /// names a device that exists or repeats an earlier row's id is reported and skipped, and the
    /// rest are written in one transaction, a hundred rows per statement (one at a time, 10,000
    /// devices with tokens took seconds).
    public func createMany(tenant: String, _ rows: [NewDevice], tokens: Bool) async throws -> [BulkOutcome] {
        let now = clock()
        var outcomes = [BulkOutcome](repeating: .invalid(""), count: rows.count)
        var valid: [(row: Int, device: Device)] = []
        var seen = Set<String>()
        for (i, r) in rows.enumerated() {
            let d = Device(tenant: tenant, id: r.id, name: r.name, profile: r.profile, labels: r.labels, createdAt: now)
            do { try Self.check(d) } catch {
                outcomes[i] = .invalid((error as? AccountsError)?.description ?? "\(error)")
                continue
            }
            guard seen.insert(d.id).inserted else {
                outcomes[i] = .exists("device '\(d.id)' exists")
                continue
            }
            valid.append((i, d))
        }
        let devices = valid.map(\.device)
        let secrets = tokens ? valid.map { _ in Self.newToken() } : []
        // On PostgreSQL another writer may add one of these devices between the look-up and the insert:
        // the insert then fails whole, and the look-up, run again, finds it.
        var attempt = 0
        while true {
            attempt += 1
            do {
                let existing = try await store.transaction { db in
                    try await Self.insertAbsent(db, tenant: tenant, devices, secrets: secrets, now: now)
                }
                for (k, c) in valid.enumerated() {
                    outcomes[c.row] = existing.contains(c.device.id) ? .exists("device '\(c.device.id)' exists") : .created(token: tokens ? secrets[k].secret : nil)
                }
                return outcomes
            } catch let e as StoreError where e.kind == .constraint && attempt < 3 {
                continue
            }
        }
    }

    /// `createMany`'s transaction: finds which of `devices` exist, inserts the others, each with its
    /// token (`secrets[i]` for `devices[i]`) when there are secrets, and returns the ids that existed.
    private static func insertAbsent(_ db: any StoreConnection, tenant: String, _ devices: [Device], secrets: [(id: String, secret: String)],
                                     now: Int64) async throws -> Set<String> {
        try await Accounts.requireTenant(db, tenant)
        var existing = Set<String>()
        for run in devices.statementRuns(of: 500) {
            let marks = Array(repeating: "?", count: run.count).joined(separator: ", ")
            let found = try await db.query("SELECT id FROM devices WHERE tenant_id = ? AND id IN (\(marks))", [.text(tenant)] + run.map { .text($0.id) })
            existing.formUnion(found.compactMap { $0.string("id") })
        }
        let fresh = devices.indices.filter { !existing.contains(devices[$0].id) }
        for run in fresh.statementRuns(of: bulkRowsPerStatement) {
            try await db.execute("INSERT INTO devices (tenant_id, id, name, profile, labels, created_at) VALUES \(rowPlaceholders(run.count, columns: 6))",
                                 run.flatMap { k -> [SQLValue] in
                                     let d = devices[k]
                                     return [.text(tenant), .text(d.id), .text(d.name), .text(d.profile), .text(encode(d.labels)), .integer(now)]
                                 })
            guard !secrets.isEmpty else { continue }
            try await db.execute("""
                INSERT INTO device_credentials (id, tenant_id, device_id, kind, digest, created_at, expires_at)
                VALUES \(rowPlaceholders(run.count, columns: 7))
                """, run.flatMap { k -> [SQLValue] in
                    [.text(secrets[k].id), .text(tenant), .text(devices[k].id), .text(DeviceCredential.Kind.token.rawValue),
                     .blob(digest(secrets[k].secret)), .integer(now), .null]
                })
        }
        return existing
    }

    public func get(tenant: String, id: String) async throws -> Device? {
        try await store.query("SELECT * FROM devices WHERE tenant_id = ? AND id = ?", [.text(tenant), .text(id)]).first.map(Self.device)
    }

    /// For a row read in a transaction in order to be written back: on PostgreSQL it is locked until
    /// the transaction ends, so that two writers cannot each write back what the other changed. (SQLite
    /// runs one transaction at a time.)
    static func forUpdate(_ db: any StoreConnection) -> String { db.engine == .postgres ? " FOR UPDATE" : "" }

    /// Replaces the name, profile and labels given (nil leaves a field as it is), in one transaction.
    public func update(tenant: String, id: String, name: String?, profile: String?, labels: [String: String]?) async throws -> Device? {
        try await store.transaction { db in
            guard var d = try await db.query("SELECT * FROM devices WHERE tenant_id = ? AND id = ?\(Self.forUpdate(db))", [.text(tenant), .text(id)]).first.map(Self.device) else {
                return nil
            }
            if let name { d.name = name }
            if let profile { d.profile = profile }
            if let labels { d.labels = labels }
            try Self.check(d)
            try await db.execute("UPDATE devices SET name = ?, profile = ?, labels = ? WHERE tenant_id = ? AND id = ?",
                                 [.text(d.name), .text(d.profile), .text(Self.encode(d.labels)), .text(tenant), .text(id)])
            return d
        }
    }

    /// The largest attributes object, as JSON: devices fetch it whole, so it stays small.
    public static let maxAttributesSize = 16_384

    /// Replaces a device's attributes (the configuration the operator sets and the device fetches).
    /// Returns false when there is no such device.
    public func setAttributes(tenant: String, id: String, _ attributes: Value.Object) async throws -> Bool {
        let text = String(decoding: JSON.encode(.object(attributes)), as: UTF8.self)
        guard text.utf8.count <= Self.maxAttributesSize else { throw AccountsError.invalid("the attributes are over \(Self.maxAttributesSize) bytes as JSON") }
        return try await store.execute("UPDATE devices SET attributes = ? WHERE tenant_id = ? AND id = ?", [.text(text), .text(tenant), .text(id)]) == 1
    }

    /// Sets the fields given among a device's attributes, keeping the others, in one transaction (on
    /// PostgreSQL the device's row is locked while it is read, so that two nodes' merges cannot drop
    /// each other's fields). Returns the attributes as written, or nil when there is no such device.
    public func mergeAttributes(tenant: String, id: String, _ fields: Value.Object) async throws -> Value.Object? {
        try await store.transaction { db in
            guard let row = try await db.query("SELECT attributes FROM devices WHERE tenant_id = ? AND id = ?\(Self.forUpdate(db))", [.text(tenant), .text(id)]).first else {
                return nil
            }
            var current = Value.Object()
            if case .object(let o)? = try? JSON.decode(row.string("attributes") ?? "{}") { current = o }
            for (k, v) in fields { current[k] = v }
            let text = String(decoding: JSON.encode(.object(current)), as: UTF8.self)
            guard text.utf8.count <= Self.maxAttributesSize else { throw AccountsError.invalid("the attributes are over \(Self.maxAttributesSize) bytes as JSON") }
            try await db.execute("UPDATE devices SET attributes = ? WHERE tenant_id = ? AND id = ?", [.text(text), .text(tenant), .text(id)])
            return current
        }
    }

    /// A device's attributes, or nil when there is no such device.
    public func attributes(tenant: String, id: String) async throws -> Value.Object? {
        guard let row = try await store.query("SELECT attributes FROM devices WHERE tenant_id = ? AND id = ?", [.text(tenant), .text(id)]).first else { return nil }
        if case .object(let o)? = try? JSON.decode(row.string("attributes") ?? "{}") { return o }
        return Value.Object()
    }

    /// Every device that has attributes, with them as JSON (for the hub's in-memory directory).
    public func allAttributes() async throws -> [(tenant: String, device: String, json: [UInt8])] {
        try await store.query("SELECT tenant_id, id, attributes FROM devices WHERE attributes <> '{}'").map {
            ($0.string("tenant_id") ?? "", $0.string("id") ?? "", Array(($0.string("attributes") ?? "{}").utf8))
        }
    }

    /// Every device that has labels, with them (for the hub's device groups).
    public func allLabels() async throws -> [(tenant: String, device: String, labels: [String: String])] {
        try await store.query("SELECT tenant_id, id, labels FROM devices WHERE labels <> '{}'").map {
            let labels = ($0.string("labels").flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) } as? [String: String]) ?? [:]
            return ($0.string("tenant_id") ?? "", $0.string("id") ?? "", labels)
        }
    }

    public func delete(tenant: String, id: String) async throws -> Bool {
        try await store.execute("DELETE FROM devices WHERE tenant_id = ? AND id = ?", [.text(tenant), .text(id)]) == 1
    }

    /// A page of a tenant's devices in id order, after `after`, optionally with a label equal to a value.
    public func list(tenant: String, label: (key: String, value: String)? = nil, after: String? = nil, limit: Int = 100) async throws -> [Device] {
        var sql = "SELECT * FROM devices WHERE tenant_id = ?"
        var params: [SQLValue] = [.text(tenant)]
        if let label {
            guard Self.isValidLabelKey(label.key) else { throw AccountsError.invalid("'\(label.key.prefix(64))' is not a label key") }
            // The key is checked above, so it is safe inside the JSON path.
            sql += store.engine == .sqlite ? " AND json_extract(labels, '$.\"\(label.key)\"') = ?" : " AND (labels::jsonb ->> '\(label.key)') = ?"
            params.append(.text(label.value))
        }
        if let after {
            sql += " AND id > ?"
            params.append(.text(after))
        }
        sql += " ORDER BY id LIMIT ?"
        params.append(.integer(Int64(max(1, min(limit, 1000)))))
        return try await store.query(sql, params).map(Self.device)
    }

    static func encode(_ labels: [String: String]) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: labels, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    static func device(_ r: Row) -> Device {
        let labels = (r.string("labels").flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) } as? [String: String]) ?? [:]
        return Device(tenant: r.string("tenant_id") ?? "", id: r.string("id") ?? "", name: r.string("name") ?? "",
                      profile: r.string("profile") ?? "default", labels: labels, createdAt: r.int("created_at") ?? 0)
    }
}

/// A device credential as stored: a token's SHA-256 (the token itself is shown once), or a client
/// certificate's SHA-256 fingerprint for mutual TLS.
public struct DeviceCredential: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable { case token, certificate, psk }
    public var id: String
    public var tenant: String
    public var device: String
    public var kind: Kind
    /// SHA-256 of the token, or of the certificate (its fingerprint).
    public var digest: [UInt8]
    public var createdAt: Int64
    public var expiresAt: Int64?
    public var revokedAt: Int64?
    /// The device's profile (filled in by `activeCredentials`, for topic access).
    public var profile = "default"
    /// A pre-shared key's identity, and its key sealed under the hub's secret key.
    public var identity: String?
    public var sealedKey: [UInt8]?

    public var active: Bool { revokedAt == nil }
}

extension Devices {
    /// Issues a token for a device: `iotcd_<id>_<32 letters and digits>`, returned here only.
    public func issueToken(tenant: String, device: String, expiresAt: Int64? = nil) async throws -> (DeviceCredential, String) {
        let (id, secret) = Self.newToken()
        let c = try await add(tenant: tenant, device: device, id: id, kind: .token, digest: Self.digest(secret), expiresAt: expiresAt)
        return (c, secret)
    }

    /// Registers a client certificate by its SHA-256 fingerprint (hex, with or without colons).
    public func addCertificate(tenant: String, device: String, fingerprint: String, expiresAt: Int64? = nil) async throws -> DeviceCredential {
        guard let digest = Self.fingerprintBytes(fingerprint) else {
            throw AccountsError.invalid("a fingerprint is the certificate's SHA-256 in hex (64 digits, colons allowed)")
        }
        return try await add(tenant: tenant, device: device, id: Self.newToken().id, kind: .certificate, digest: digest, expiresAt: expiresAt)
    }

    private func add(tenant: String, device: String, id: String, kind: DeviceCredential.Kind, digest: [UInt8], expiresAt: Int64?) async throws -> DeviceCredential {
        let now = clock()
        try await store.transaction { db in
            guard try await !db.query("SELECT id FROM devices WHERE tenant_id = ? AND id = ?", [.text(tenant), .text(device)]).isEmpty else {
                throw AccountsError.notFound("no device '\(device.prefix(128))'")
            }
            if kind == .certificate, try await !db.query("SELECT id FROM device_credentials WHERE digest = ? AND revoked_at IS NULL", [.blob(digest)]).isEmpty {
                throw AccountsError.conflict("this certificate is already registered")
            }
            try await db.execute("""
                INSERT INTO device_credentials (id, tenant_id, device_id, kind, digest, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)
                """, [.text(id), .text(tenant), .text(device), .text(kind.rawValue), .blob(digest), .integer(now), SQLValue(expiresAt)])
        }
        return DeviceCredential(id: id, tenant: tenant, device: device, kind: kind, digest: digest, createdAt: now, expiresAt: expiresAt)
    }

    public func credentials(tenant: String, device: String) async throws -> [DeviceCredential] {
        try await store.query("SELECT * FROM device_credentials WHERE tenant_id = ? AND device_id = ? ORDER BY created_at, id",
                              [.text(tenant), .text(device)]).map(Self.credential)
    }

    public func revokeCredential(tenant: String, device: String, id: String) async throws -> Bool {
        try await store.execute("UPDATE device_credentials SET revoked_at = ? WHERE tenant_id = ? AND device_id = ? AND id = ? AND revoked_at IS NULL",
                                [.integer(clock()), .text(tenant), .text(device), .text(id)]) == 1
    }

    /// The registry's revisions, moved by triggers in the changing transaction, whichever node
    /// writes (migrations 17 and 18): `all` with every change to devices, their credentials and the
    /// certificate authorities; `credentials` only with what authenticates (credentials, authorities,
    /// devices added or removed, a device's profile), not with attributes, labels or names. Read them
    /// before what they cover: a change committed in between is then loaded early and seen again,
    /// never missed.
    public func registryRevision() async throws -> (all: Int64, credentials: Int64) {
        guard let row = try await store.query("SELECT revision, credentials FROM registry_revision WHERE id = 1").first,
              let all = row.int("revision"), let credentials = row.int("credentials") else {
            throw StoreError(.migration, "the registry revision is missing")
        }
        return (all, credentials)
    }

    /// Every credential in force (not revoked, not expired), for the hub's in-memory directory.
    public func activeCredentials() async throws -> [DeviceCredential] {
        try await store.query("""
            SELECT c.*, d.profile FROM device_credentials c JOIN devices d ON d.tenant_id = c.tenant_id AND d.id = c.device_id
            WHERE c.revoked_at IS NULL AND (c.expires_at IS NULL OR c.expires_at > ?)
            """, [.integer(clock())]).map { r in
            var c = Self.credential(r)
            c.profile = r.string("profile") ?? "default"
            return c
        }
    }

    static func newToken() -> (id: String, secret: String) {
        let (id, secret) = Accounts.newSecret()
        return (id, "iotcd_" + secret.dropFirst("iotc_".count))
    }

    /// The credential id in a device token, if it is one.
    public static func tokenID(_ token: String) -> String? {
        Accounts.parse(token, prefix: "iotcd_")?.id
    }

    public static func digest(_ secret: String) -> [UInt8] { Accounts.hash(secret) }

    /// A SHA-256 fingerprint in hex (colons allowed) as bytes.
    public static func fingerprintBytes(_ hex: String) -> [UInt8]? { hexBytes(hex).flatMap { $0.count == 32 ? $0 : nil } }

    /// Hex digits (colons allowed between them) as bytes; nil when anything else is there.
    public static func hexBytes(_ hex: String) -> [UInt8]? {
        func value(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
            default: nil
            }
        }
        let digits = Array(hex.utf8.filter { $0 != UInt8(ascii: ":") })
        guard !digits.isEmpty, digits.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(digits.count / 2)
        for i in stride(from: 0, to: digits.count, by: 2) {
            guard let hi = value(digits[i]), let lo = value(digits[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
        }
        return out
    }

    static func credential(_ r: Row) -> DeviceCredential {
        var c = DeviceCredential(id: r.string("id") ?? "", tenant: r.string("tenant_id") ?? "", device: r.string("device_id") ?? "",
                                 kind: DeviceCredential.Kind(rawValue: r.string("kind") ?? "") ?? .token, digest: r.bytes("digest") ?? [],
                                 createdAt: r.int("created_at") ?? 0, expiresAt: r.int("expires_at"), revokedAt: r.int("revoked_at"))
        c.identity = r.string("identity")
        c.sealedKey = r.bytes("sealed_key")
        return c
    }

    /// Gives a device a DTLS pre-shared key (for CoAP and LwM2M): `identity` is what the device
    /// presents in the handshake, unique among the keys in force; `key` (16 to 64 bytes) is made when
    /// not given. The key is returned here and kept sealed; the listing shows the identity only.
    public func addPresharedKey(tenant: String, device: String, identity: String, key: [UInt8]?, box: SecretBox,
                                expiresAt: Int64? = nil) async throws -> (DeviceCredential, [UInt8]) {
        guard (1...128).contains(identity.utf8.count), identity.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else {
            throw AccountsError.invalid("a PSK identity is 1 to 128 printable ASCII characters")
        }
        var rng = SystemRandomNumberGenerator()
        let key = key ?? (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
        guard (16...64).contains(key.count) else { throw AccountsError.invalid("a pre-shared key is 16 to 64 bytes (32 to 128 hex digits)") }
        let id = Self.newToken().id, digest = Self.digest("psk:" + identity), sealed = try box.seal(key)
        let now = clock()
        try await store.transaction { db in
            guard try await !db.query("SELECT id FROM devices WHERE tenant_id = ? AND id = ?", [.text(tenant), .text(device)]).isEmpty else {
                throw AccountsError.notFound("no device '\(device.prefix(128))'")
            }
            if try await !db.query("SELECT id FROM device_credentials WHERE digest = ? AND revoked_at IS NULL", [.blob(digest)]).isEmpty {
                throw AccountsError.conflict("this PSK identity is in use")
            }
            try await db.execute("""
                INSERT INTO device_credentials (id, tenant_id, device_id, kind, digest, created_at, expires_at, identity, sealed_key)
                VALUES (?, ?, ?, 'psk', ?, ?, ?, ?, ?)
                """, [.text(id), .text(tenant), .text(device), .blob(digest), .integer(now), SQLValue(expiresAt), .text(identity), .blob(sealed)])
        }
        var c = DeviceCredential(id: id, tenant: tenant, device: device, kind: .psk, digest: digest, createdAt: now, expiresAt: expiresAt)
        c.identity = identity
        return (c, key)
    }
}

/// What the hub last saw of a device (milliseconds since the epoch).
public struct DeviceState: Sendable, Equatable {
    public var tenant: String
    public var device: String
    public var connected: Bool
    public var source: String
    public var remoteAddress: String
    /// When it connected (or disconnected, when not connected).
    public var since: Int64
    public var lastSeen: Int64

    public init(tenant: String, device: String, connected: Bool, source: String, remoteAddress: String, since: Int64, lastSeen: Int64) {
        self.tenant = tenant
        self.device = device
        self.connected = connected
        self.source = source
        self.remoteAddress = remoteAddress
        self.since = since
        self.lastSeen = lastSeen
    }
}

extension Devices {
    /// Rows per INSERT statement of `saveStates` (seven parameters each).
    static let stateRowsPerStatement = 100

    /// Writes device states (one transaction, a row per device, replaced; of two states of one device,
    /// the later in the list). Rows go in multi-row statements: a busy hub saves thousands of states
    /// every 2 seconds, and a statement each cost a hop to the store's thread (SQLite) or a round trip
    /// (PostgreSQL) per row.
    public func saveStates(_ states: [DeviceState]) async throws {
        guard !states.isEmpty else { return }
        // One row per device: PostgreSQL refuses a statement that would update a row twice.
        var latest: [String: Int] = [:]
        for (i, s) in states.enumerated() { latest[s.tenant + "/" + s.device] = i }
        let rows = latest.count == states.count ? states : latest.values.sorted().map { states[$0] }
        try await store.transaction { db in
            for chunk in rows.statementRuns(of: Self.stateRowsPerStatement) {
                var params: [SQLValue] = []
                params.reserveCapacity(chunk.count * 7)
                for s in chunk {
                    params += [.text(s.tenant), .text(s.device), .integer(s.connected ? 1 : 0), .text(s.source), .text(s.remoteAddress),
                               .integer(s.since), .integer(s.lastSeen)]
                }
                try await db.execute("""
                    INSERT INTO device_state (tenant_id, device_id, connected, source, remote_address, since, last_seen)
                    VALUES \(rowPlaceholders(chunk.count, columns: 7))
                    ON CONFLICT (tenant_id, device_id) DO UPDATE SET connected = excluded.connected, source = excluded.source,
                        remote_address = excluded.remote_address, since = excluded.since, last_seen = excluded.last_seen
                    """, params)
            }
        }
    }

    /// Every device state kept.
    public func states() async throws -> [DeviceState] {
        try await store.query("SELECT * FROM device_state").map { r in
            DeviceState(tenant: r.string("tenant_id") ?? "", device: r.string("device_id") ?? "", connected: r.int("connected") == 1,
                        source: r.string("source") ?? "", remoteAddress: r.string("remote_address") ?? "", since: r.int("since") ?? 0,
                        lastSeen: r.int("last_seen") ?? 0)
        }
    }
}
