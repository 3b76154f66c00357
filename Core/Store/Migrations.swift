import Foundation

/// One versioned change to the schema. Its statements run in one transaction; the version is recorded
/// in `schema_migrations` in the same transaction, so a migration is applied once or not at all.
public struct Migration: Sendable {
    public let version: Int
    public let name: String
    let sqlite: [String]
    let postgres: [String]

    /// A migration whose SQL is the same on both engines.
    public init(_ version: Int, _ name: String, _ statements: [String]) {
        self.init(version, name, sqlite: statements, postgres: statements)
    }

    public init(_ version: Int, _ name: String, sqlite: [String], postgres: [String]) {
        self.version = version
        self.name = name
        self.sqlite = sqlite
        self.postgres = postgres
    }

    func statements(for engine: StoreEngine) -> [String] { engine == .sqlite ? sqlite : postgres }
}

/// Brings a store's schema up to date at start. Refuses a database that a newer hub has migrated
/// further than this one knows, rather than run against a schema it does not understand. On
/// PostgreSQL, several nodes starting at once take turns (an advisory lock).
public struct Migrator: Sendable {
    let migrations: [Migration]

    public init(_ migrations: [Migration]) {
        precondition(Set(migrations.map(\.version)).count == migrations.count, "migration versions must be unique")
        self.migrations = migrations.sorted { $0.version < $1.version }
    }

    /// Applies what is missing; returns the versions applied.
    @discardableResult
    public func run(on store: any Store) async throws -> [Int] {
        try await store.execute("""
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)
            """)
        let migrations = self.migrations
        return try await store.transaction { db in
            if db.engine == .postgres { _ = try await db.query("SELECT pg_advisory_xact_lock(7406177)") }
            let applied = Set(try await db.query("SELECT version FROM schema_migrations").compactMap { $0.int("version") })
            if let newest = applied.max(), let known = migrations.last?.version, newest > known {
                throw StoreError(.migration, "the database is at schema version \(newest), newer than this hub knows (\(known)); run a newer hub")
            }
            var done: [Int] = []
            for m in migrations where !applied.contains(Int64(m.version)) {
                for sql in m.statements(for: db.engine) {
                    do {
                        try await db.execute(sql)
                    } catch {
                        throw StoreError(.migration, "migration \(m.version) (\(m.name)) failed: \(error)")
                    }
                }
                try await db.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                                     [.integer(Int64(m.version)), .text(m.name), .integer(Int64(Date().timeIntervalSince1970 * 1000))])
                done.append(m.version)
            }
            return done
        }
    }

    /// The versions a store has applied.
    public static func applied(on store: any Store) async throws -> [Int] {
        try await store.query("SELECT version FROM schema_migrations ORDER BY version").compactMap { $0.int("version").map(Int.init) }
    }
}

/// The hub's schema, in order. Never edit a released migration: add the next one.
public enum Schema {
    public static let migrations: [Migration] = [
        Migration(1, "tenants and devices", [
            """
            CREATE TABLE tenants (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                created_at BIGINT NOT NULL)
            """,
            """
            CREATE TABLE devices (
                tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
                id TEXT NOT NULL,
                name TEXT NOT NULL DEFAULT '',
                profile TEXT NOT NULL DEFAULT 'default',
                labels TEXT NOT NULL DEFAULT '{}',
                created_at BIGINT NOT NULL,
                PRIMARY KEY (tenant_id, id))
            """,
            "CREATE INDEX devices_by_profile ON devices (tenant_id, profile)",
        ]),
        Migration(2, "system tenant and API keys", sqlite: apiKeys(binary: "BLOB"), postgres: apiKeys(binary: "BYTEA")),
        Migration(3, "audit log", sqlite: auditLog(binary: "BLOB"), postgres: auditLog(binary: "BYTEA")),
        Migration(4, "device credentials", sqlite: deviceCredentials(binary: "BLOB"), postgres: deviceCredentials(binary: "BYTEA")),
        // Points are keyed by what identifies them, so a redelivered one is written once; the key order
        // serves range reads of one device's key. Not tied to devices: telemetry of a device removed
        // from the registry stays until retention removes it.
        Migration(5, "telemetry", [
            """
            CREATE TABLE telemetry (
                tenant_id TEXT NOT NULL,
                device_id TEXT NOT NULL,
                key TEXT NOT NULL,
                ts BIGINT NOT NULL,
                value DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (tenant_id, device_id, key, ts))
            """,
        ]),
        Migration(6, "users", [
            """
            CREATE TABLE users (
                tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
                email TEXT NOT NULL,
                name TEXT NOT NULL,
                role TEXT NOT NULL,
                password_hash TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (tenant_id, email))
            """,
        ]),
        Migration(7, "telemetry retention per tenant", ["ALTER TABLE tenants ADD COLUMN retention_days BIGINT NOT NULL DEFAULT 0"]),
        // Commands to devices and what became of them. Not tied to devices by a foreign key: devices of the
        // token list are not in the registry.
        Migration(8, "device commands", [
            """
            CREATE TABLE commands (
                id TEXT PRIMARY KEY,
                tenant_id TEXT NOT NULL,
                device_id TEXT NOT NULL,
                name TEXT NOT NULL,
                payload TEXT NOT NULL,
                status TEXT NOT NULL,
                result TEXT,
                detail TEXT NOT NULL DEFAULT '',
                created_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL,
                delivered_at BIGINT,
                completed_at BIGINT)
            """,
            "CREATE INDEX commands_by_device ON commands (tenant_id, device_id, created_at)",
            "CREATE INDEX commands_pending ON commands (status, expires_at)",
        ]),
        // Devices of the pipeline files' token list (and anonymous ones) belong to the tenant `default`:
        // a tenant like any other, so that its telemetry and commands can be named through the API.
        Migration(9, "the default tenant", [
            "INSERT INTO tenants (id, name, created_at) VALUES ('default', 'Devices of the pipeline files', 0) ON CONFLICT (id) DO NOTHING",
        ]),
        // Provisioning by claim: fleet keys that let devices obtain their own credentials, and the
        // claim codes that each device presents (kept as slow hashes, as passwords are).
        Migration(10, "provisioning by claim", sqlite: provisioning(binary: "BLOB"), postgres: provisioning(binary: "BYTEA")),
        // What the hub last saw of each device, written behind every few seconds, so that last seen
        // survives a restart.
        Migration(11, "device state", [
            """
            CREATE TABLE device_state (
                tenant_id TEXT NOT NULL,
                device_id TEXT NOT NULL,
                connected BIGINT NOT NULL,
                source TEXT NOT NULL,
                remote_address TEXT NOT NULL,
                since BIGINT NOT NULL,
                last_seen BIGINT NOT NULL,
                PRIMARY KEY (tenant_id, device_id))
            """,
        ]),
        // DTLS pre-shared keys: the identity a device presents, and its key sealed under the hub's secret key.
        Migration(12, "pre-shared keys", sqlite: presharedKeys(binary: "BLOB"), postgres: presharedKeys(binary: "BYTEA")),
        // What an API key may reach beyond its role: the API's areas it is limited to (empty: all).
        Migration(13, "API key scopes", ["ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT ''"]),
        // Attributes the operator sets for a device (its configuration), which devices fetch.
        Migration(14, "device attributes", ["ALTER TABLE devices ADD COLUMN attributes TEXT NOT NULL DEFAULT '{}'"]),
        // Certificate authorities a tenant registers: client certificates they issue authenticate
        // devices named by their subject's common name. A CA belongs to one tenant only.
        Migration(15, "certificate authorities", sqlite: certificateAuthorities(binary: "BLOB"), postgres: certificateAuthorities(binary: "BYTEA")),
        // The revocation list an authority publishes (DER): the certificates it lists stop authenticating.
        Migration(16, "certificate revocation lists",
                  sqlite: ["ALTER TABLE certificate_authorities ADD COLUMN crl BLOB", "ALTER TABLE certificate_authorities ADD COLUMN crl_updated_at BIGINT"],
                  postgres: ["ALTER TABLE certificate_authorities ADD COLUMN crl BYTEA", "ALTER TABLE certificate_authorities ADD COLUMN crl_updated_at BIGINT"]),
        // A counter that every change to what authenticates devices moves (devices, their credentials,
        // certificate authorities), in the changing transaction itself, by triggers: whichever node or
        // tool writes. The hub's in-memory directory reads it every few seconds and reloads only when it
        // moved, instead of reading every device's credentials each time.
        Migration(17, "registry revision", sqlite: registryRevision(sqlite: true), postgres: registryRevision(sqlite: false)),
        // A second counter beside it, `credentials`, that only what authenticates moves: credentials,
        // authorities, devices added or removed, a device's profile. Writing attributes (an `attributes`
        // sink may do so for every message) moves `revision` alone, so the directory reloads the
        // attributes without reading every credential again.
        Migration(18, "credentials revision", sqlite: credentialsRevision(sqlite: true), postgres: credentialsRevision(sqlite: false)),
    ]

    /// The tables whose changes move the registry revision.
    static let registryTables = ["devices", "device_credentials", "certificate_authorities"]

    private static func registryRevision(sqlite: Bool) -> [String] {
        let create = [
            "CREATE TABLE registry_revision (id INTEGER PRIMARY KEY CHECK (id = 1), revision BIGINT NOT NULL)",
            "INSERT INTO registry_revision (id, revision) VALUES (1, 0)",
        ]
        let bump = "UPDATE registry_revision SET revision = revision + 1 WHERE id = 1"
        if sqlite {
            // SQLite has row triggers only, one event each.
            return create + registryTables.flatMap { table in
                ["INSERT", "UPDATE", "DELETE"].map { event in
                    "CREATE TRIGGER \(table)_\(event.lowercased())_moves_registry_revision AFTER \(event) ON \(table) BEGIN \(bump); END"
                }
            }
        }
        // One bump per statement, however many rows it changed.
        return create + [
            "CREATE FUNCTION move_registry_revision() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \(bump); RETURN NULL; END $$",
        ] + registryTables.map { table in
            "CREATE TRIGGER \(table)_moves_registry_revision AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON \(table) FOR EACH STATEMENT EXECUTE FUNCTION move_registry_revision()"
        }
    }

    private static func credentialsRevision(sqlite: Bool) -> [String] {
        let add = "ALTER TABLE registry_revision ADD COLUMN credentials BIGINT NOT NULL DEFAULT 0"
        let both = "UPDATE registry_revision SET revision = revision + 1, credentials = credentials + 1 WHERE id = 1"
        // What a device row carries into a credential in force: its identity and its profile.
        let authenticating = "OLD.tenant_id <> NEW.tenant_id OR OLD.id <> NEW.id OR OLD.profile <> NEW.profile"
        if sqlite {
            let events = ["INSERT", "UPDATE", "DELETE"]
            let drops = registryTables.flatMap { t in events.map { "DROP TRIGGER \(t)_\($0.lowercased())_moves_registry_revision" } }
            var creates: [String] = []
            for t in registryTables {
                for e in events {
                    let name = "\(t)_\(e.lowercased())_moves_registry_revision"
                    if t == "devices" && e == "UPDATE" {
                        creates.append("""
                            CREATE TRIGGER \(name) AFTER UPDATE ON devices BEGIN UPDATE registry_revision SET revision = revision + 1, \
                            credentials = credentials + (CASE WHEN \(authenticating) THEN 1 ELSE 0 END) WHERE id = 1; END
                            """)
                    } else {
                        creates.append("CREATE TRIGGER \(name) AFTER \(e) ON \(t) BEGIN \(both); END")
                    }
                }
            }
            return [add] + drops + creates
        }
        return [
            add,
            // The credential tables' triggers call this one: now it moves both counters.
            "CREATE OR REPLACE FUNCTION move_registry_revision() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \(both); RETURN NULL; END $$",
            "CREATE FUNCTION move_devices_revision() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN UPDATE registry_revision SET revision = revision + 1 WHERE id = 1; RETURN NULL; END $$",
            "DROP TRIGGER devices_moves_registry_revision ON devices",
            "CREATE TRIGGER devices_moves_registry_revision AFTER INSERT OR DELETE OR TRUNCATE ON devices FOR EACH STATEMENT EXECUTE FUNCTION move_registry_revision()",
            "CREATE TRIGGER devices_update_moves_registry_revision AFTER UPDATE ON devices FOR EACH STATEMENT EXECUTE FUNCTION move_devices_revision()",
            "CREATE TRIGGER devices_update_moves_credentials_revision AFTER UPDATE ON devices FOR EACH ROW WHEN (\(authenticating)) EXECUTE FUNCTION move_registry_revision()",
        ]
    }

    private static func certificateAuthorities(binary: String) -> [String] {
        [
            """
            CREATE TABLE certificate_authorities (
                id TEXT PRIMARY KEY,
                tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
                name TEXT NOT NULL,
                subject TEXT NOT NULL,
                fingerprint \(binary) NOT NULL UNIQUE,
                certificate \(binary) NOT NULL,
                profile TEXT NOT NULL,
                not_after BIGINT NOT NULL,
                created_at BIGINT NOT NULL)
            """,
            "CREATE INDEX certificate_authorities_by_tenant ON certificate_authorities (tenant_id)",
        ]
    }

    private static func provisioning(binary: String) -> [String] {
        [
            """
            CREATE TABLE provisioning_keys (
                id TEXT PRIMARY KEY,
                tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
                name TEXT NOT NULL,
                profile TEXT NOT NULL,
                hash \(binary) NOT NULL,
                created_at BIGINT NOT NULL,
                expires_at BIGINT,
                revoked_at BIGINT)
            """,
            """
            CREATE TABLE device_claims (
                tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
                device_id TEXT NOT NULL,
                code_hash TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                expires_at BIGINT,
                claimed_at BIGINT,
                PRIMARY KEY (tenant_id, device_id))
            """,
        ]
    }

    private static func presharedKeys(binary: String) -> [String] {
        [
            "ALTER TABLE device_credentials ADD COLUMN identity TEXT",
            "ALTER TABLE device_credentials ADD COLUMN sealed_key \(binary)",
        ]
    }

    private static func deviceCredentials(binary: String) -> [String] {
        [
            """
            CREATE TABLE device_credentials (
                id TEXT PRIMARY KEY,
                tenant_id TEXT NOT NULL,
                device_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                digest \(binary) NOT NULL,
                created_at BIGINT NOT NULL,
                expires_at BIGINT,
                revoked_at BIGINT,
                FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, id) ON DELETE CASCADE)
            """,
            "CREATE INDEX device_credentials_by_device ON device_credentials (tenant_id, device_id)",
            "CREATE INDEX device_credentials_by_digest ON device_credentials (digest)",
        ]
    }

    /// Not tied to tenants by a foreign key: the record of a deleted tenant stays, and so does the chain.
    private static func auditLog(binary: String) -> [String] {
        [
            """
            CREATE TABLE audit_log (
                seq BIGINT PRIMARY KEY,
                at BIGINT NOT NULL,
                tenant_id TEXT NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                target TEXT NOT NULL,
                source TEXT NOT NULL,
                outcome TEXT NOT NULL,
                detail TEXT NOT NULL,
                hash \(binary) NOT NULL)
            """,
            "CREATE INDEX audit_log_by_tenant ON audit_log (tenant_id, seq)",
        ]
    }

    private static func apiKeys(binary: String) -> [String] {
        [
            "ALTER TABLE tenants ADD COLUMN system BIGINT NOT NULL DEFAULT 0",
            """
            CREATE TABLE api_keys (
                id TEXT PRIMARY KEY,
                tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
                name TEXT NOT NULL,
                role TEXT NOT NULL,
                hash \(binary) NOT NULL,
                created_at BIGINT NOT NULL,
                expires_at BIGINT,
                last_used_at BIGINT,
                revoked_at BIGINT)
            """,
            "CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id)",
        ]
    }
}
