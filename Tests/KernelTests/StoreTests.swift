import Foundation
import Testing
import IoTCPluginKit
@testable import IoTCStore
import IoTCAPI
import Logging

/// A real PostgreSQL server from Debian's packages, in a temporary folder on a loopback port. initdb and
/// the server run as the user postgres when the tests run as root (PostgreSQL refuses to run as root); the server is
/// stopped with SIGINT (a fast shutdown).
final class PostgresServer {
    let port = freePort()
    let dir = TempDir()
    private var server: ChildProcess?

    static var binDirectory: String? {
        let base = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []).sorted { (Int($0) ?? 0) > (Int($1) ?? 0) }
        return versions.map { "\(base)/\($0)/bin" }.first { FileManager.default.isExecutableFile(atPath: "\($0)/initdb") }
    }

    private func command(_ tool: String, _ arguments: [String]) -> (String, [String]) {
        let exe = "\(Self.binDirectory!)/\(tool)"
        // setpriv executes the program in its own process (runuser would fork and keep signals from it).
        return getuid() == 0
            ? ("/usr/bin/setpriv", ["--reuid=postgres", "--regid=postgres", "--clear-groups", "--", exe] + arguments)
            : (exe, arguments)
    }

    /// `tls`: the server's certificate and key files (PEM), to take TLS connections too; `clientCA`: then
    /// it takes only TLS connections with a client certificate this authority issued, for the user its
    /// common name names.
    func start(tls: (certificate: String, key: String)? = nil, clientCA: String? = nil) throws {
        try #require(Self.binDirectory != nil, "PostgreSQL is not installed: run scripts/install-deps.sh test")
        if getuid() == 0 { chown(dir.path, postgresUID(), 0) }
        let data = dir.path + "/data"
        let (exe, args) = command("initdb", ["-D", data, "-U", "iotc", "--auth=trust", "-E", "UTF8", "--no-sync"])
        let (code, output) = try run(exe, args)
        try #require(code == 0, "initdb failed: \(output)")
        var settings = ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
        if let tls {
            // The server reads its key only when the key is its own and private.
            let cert = dir.path + "/server.crt", key = dir.path + "/server.key"
            try FileManager.default.copyItem(atPath: tls.certificate, toPath: cert)
            try FileManager.default.copyItem(atPath: tls.key, toPath: key)
            chmod(key, 0o600)
            if getuid() == 0 { for f in [cert, key] { chown(f, postgresUID(), 0) } }
            settings += ["-c", "ssl=on", "-c", "ssl_cert_file=\(cert)", "-c", "ssl_key_file=\(key)"]
            if let clientCA {
                let ca = dir.path + "/client-ca.pem"
                try FileManager.default.copyItem(atPath: clientCA, toPath: ca)
                if getuid() == 0 { chown(ca, postgresUID(), 0) }
                settings += ["-c", "ssl_ca_file=\(ca)"]
                try "hostssl all all 127.0.0.1/32 cert\nlocal all all trust\n".write(toFile: data + "/pg_hba.conf", atomically: false, encoding: .utf8)
            }
        }
        let (server, serverArgs) = command("postgres", ["-D", data, "-k", dir.path, "-p", "\(port)"] + settings)
        self.server = try ChildProcess(server, serverArgs)
        try #require(waitForPort(port), "PostgreSQL did not start: \(self.server?.log ?? "")")
        // The port opens before the server takes connections ("the database system is starting up").
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if try run("\(Self.binDirectory!)/pg_isready", ["-q", "-h", "127.0.0.1", "-p", "\(port)"]).0 == 0 { return }
            usleep(50_000)
        }
        Issue.record("PostgreSQL did not become ready: \(self.server?.log ?? "")")
    }

    /// A store on a fresh database of this server.
    func store(_ database: String) async throws -> any Store {
        let admin = try await PostgresStore(url: "postgres://iotc@127.0.0.1:\(port)/postgres")
        try await admin.execute("CREATE DATABASE \(database)")
        await admin.close()
        return try await openStore("postgres://iotc@127.0.0.1:\(port)/\(database)")
    }

    func stop() { server?.stop(SIGINT) }

    private func postgresUID() -> uid_t { getpwnam("postgres")?.pointee.pw_uid ?? 0 }
}

/// TLS to PostgreSQL, set with libpq's URL parameters (`sslmode`, `sslrootcert`), against real servers
/// with and without TLS.
@Suite(.serialized) struct PostgresTLSTests {
    /// Whether the store's connections to the server are encrypted, as the server sees them.
    func encrypted(_ url: String) async throws -> Bool {
        let store = try await PostgresStore(url: url)
        defer { Task { await store.close() } }
        let rows = try await store.query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", [])
        return rows.first?["ssl"] == .integer(1)
    }

    /// The error the store gives for `url`, or nil when it connects.
    func failure(_ url: String) async -> String? {
        do {
            let store = try await PostgresStore(url: url)
            await store.close()
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func connectsOverTLSAndChecksTheServersCertificate() async throws {
        let certs = TempDir()
        try makeTestCertificates(in: certs)
        let server = PostgresServer()
        try server.start(tls: (certs.path + "/cert.pem", certs.path + "/key.pem"))
        defer { server.stop() }
        let base = "postgres://iotc@127.0.0.1:\(server.port)/postgres"
        // prefer (the default) and require encrypt without checking the certificate; verify-full checks
        // it against the given root, and the host (127.0.0.1, in the certificate's names).
        #expect(try await encrypted(base))
        #expect(try await encrypted(base + "?sslmode=require"))
        #expect(try await encrypted(base + "?sslmode=verify-full&sslrootcert=\(certs.path)/cert.pem"))
        #expect(try await encrypted(base + "?sslmode=verify-ca&sslrootcert=\(certs.path)/cert.pem"))
        #expect(try await !encrypted(base + "?sslmode=disable"))
        // A root that did not sign the server's certificate: no connection.
        let wrongRoot = await failure(base + "?sslmode=verify-full&sslrootcert=\(certs.path)/ca.pem")
        #expect(wrongRoot?.contains("sslmode=verify-full") == true, "\(wrongRoot ?? "connected")")
        // By a host name the certificate carries.
        let byName = await failure("postgres://iotc@localhost:\(server.port)/postgres?sslmode=verify-full&sslrootcert=\(certs.path)/cert.pem")
        #expect(byName == nil, "\(byName ?? "")")
    }

    /// verify-ca takes a certificate its root vouches for whatever host it names; verify-full also wants
    /// the host among its names.
    @Test func verifyFullAlsoChecksTheHostsName() async throws {
        let certs = TempDir()
        let (code, out) = try run("/usr/bin/env", ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                                                   "-keyout", certs.path + "/key.pem", "-out", certs.path + "/cert.pem", "-days", "1",
                                                   "-subj", "/CN=db.example", "-addext", "subjectAltName=DNS:db.example"])
        try #require(code == 0, "\(out)")
        let server = PostgresServer()
        try server.start(tls: (certs.path + "/cert.pem", certs.path + "/key.pem"))
        defer { server.stop() }
        let base = "postgres://iotc@127.0.0.1:\(server.port)/postgres?sslrootcert=\(certs.path)/cert.pem&sslmode="
        #expect(try await encrypted(base + "verify-ca"))
        let failed = await failure(base + "verify-full")
        #expect(failed?.contains("cannot connect to PostgreSQL") == true, "\(failed ?? "connected")")
    }

    /// A server that takes only client certificates: sslcert and sslkey present one.
    @Test func presentsAClientCertificate() async throws {
        let certs = TempDir()
        try makeTestCertificates(in: certs)
        for args in [["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", certs.path + "/iotc.key",
                      "-out", certs.path + "/iotc.csr", "-subj", "/CN=iotc"],
                     ["x509", "-req", "-in", certs.path + "/iotc.csr", "-CA", certs.path + "/ca.pem", "-CAkey", certs.path + "/ca.key",
                      "-CAcreateserial", "-out", certs.path + "/iotc.pem", "-days", "1"]] {
            let (code, out) = try run("/usr/bin/env", ["openssl"] + args)
            try #require(code == 0, "\(out)")
        }
        let server = PostgresServer()
        try server.start(tls: (certs.path + "/cert.pem", certs.path + "/key.pem"), clientCA: certs.path + "/ca.pem")
        defer { server.stop() }
        let base = "postgres://iotc@127.0.0.1:\(server.port)/postgres?sslmode=verify-full&sslrootcert=\(certs.path)/cert.pem"
        #expect(try await encrypted(base + "&sslcert=\(certs.path)/iotc.pem&sslkey=\(certs.path)/iotc.key"))
        #expect(await failure(base) != nil, "the server took a connection without a client certificate")
        let half = await failure(base + "&sslcert=\(certs.path)/iotc.pem")
        #expect(half?.contains("sslcert and sslkey go together") == true, "\(half ?? "connected")")
    }

    @Test func refusesWhatItCannotHonour() async throws {
        let server = PostgresServer()
        try server.start()
        defer { server.stop() }
        let password = "s3cret-Pw-4711"
        let base = "postgres://iotc:\(password)@127.0.0.1:\(server.port)/postgres"
        #expect(try await !encrypted(base), "prefer falls back to a plain connection")
        let required = await failure(base + "?sslmode=require")
        #expect(required?.contains("(sslmode=require): the server does not offer TLS") == true, "\(required ?? "connected")")
        let unknownMode = await failure(base + "?sslmode=sometimes")
        #expect(unknownMode?.contains("sslmode 'sometimes' is not one of disable, prefer, require, verify-ca, verify-full") == true, "\(unknownMode ?? "")")
        let unknownParameter = await failure(base + "?sslmod=require")
        #expect(unknownParameter?.contains("parameter 'sslmod' is not known") == true, "\(unknownParameter ?? "")")
        let missingFile = await failure(base + "?sslmode=verify-full&sslrootcert=/nonexistent/root.pem")
        #expect(missingFile?.contains("cannot read the store URL's sslrootcert '/nonexistent/root.pem'") == true, "\(missingFile ?? "")")
        // The URL's password appears in no error.
        for e in [required, unknownMode, unknownParameter, missingFile] { #expect(e != nil && e?.contains(password) == false, "\(e ?? "")") }
    }
}

/// One suite, both engines: every test runs on SQLite and on a real PostgreSQL server. Serialized:
/// starting a server waits on its port, and parallel starts would only compete for two cores.
@Suite(.serialized) struct StoreTests {
    /// Runs `body` on a fresh store of `engine`, and cleans up after it.
    func withStore(_ engine: StoreEngine, _ body: (any Store) async throws -> Void) async throws {
        switch engine {
        case .sqlite:
            let dir = TempDir()
            let store = try await openStore("sqlite:\(dir.path)/iotc.db")
            do { try await body(store) } catch {
                await store.close()
                throw error
            }
            await store.close()
        case .postgres:
            let server = PostgresServer()
            try server.start()
            defer { server.stop() }
            let store = try await server.store("iotc_test")
            do { try await body(store) } catch {
                await store.close()
                throw error
            }
            await store.close()
        }
    }

    /// A store with the tenant acme and one device of it, for the registry's tests.
    func withAcmeDevice(_ engine: StoreEngine, id: String, name: String = "", profile: String = "default",
                        _ body: (any Store, Devices) async throws -> Void) async throws {
        try await withStore(engine) { store in
            let devices = Devices(store: store)
            _ = try await Accounts(store: store).createTenant(id: "acme", name: "Acme")
            _ = try await devices.create(tenant: "acme", id: id, name: name, profile: profile)
            try await body(store, devices)
        }
    }

    @Test(arguments: StoreEngine.allCases)
    func migratesOnOpenAndOnlyOnce(_ engine: StoreEngine) async throws {
        try await withStore(engine) { store in
            let known = Schema.migrations.map { $0.version }
            let applied = try await Migrator.applied(on: store)
            #expect(applied == known)
            // Running again applies nothing.
            let again = try await Migrator(Schema.migrations).run(on: store)
            #expect(again.isEmpty)
            // A later migration is applied on the next start, once.
            let next = Schema.migrations + [Migration(1000, "a test column", ["ALTER TABLE tenants ADD COLUMN plan TEXT"])]
            let first = try await Migrator(next).run(on: store)
            #expect(first == [1000])
            let second = try await Migrator(next).run(on: store)
            #expect(second.isEmpty)
            // A hub that does not know migration 1000 refuses the database.
            await #expect(throws: StoreError.self) { try await Migrator(Schema.migrations).run(on: store) }
        }
    }

    @Test(arguments: StoreEngine.allCases)
    func aFailedMigrationLeavesNothingBehind(_ engine: StoreEngine) async throws {
        try await withStore(engine) { store in
            let broken = Schema.migrations + [Migration(1001, "half good", ["CREATE TABLE half (x BIGINT)", "CREATE TABLE oops ("])]
            await #expect(throws: StoreError.self) { try await Migrator(broken).run(on: store) }
            let applied = try await Migrator.applied(on: store)
            #expect(applied == Schema.migrations.map { $0.version })
            // The first statement was rolled back with the second.
            #expect(try await store.execute("CREATE TABLE half (x BIGINT)") >= 0)
        }
    }

    @Test(arguments: StoreEngine.allCases)
    func roundTripsEveryKindOfValue(_ engine: StoreEngine) async throws {
        try await withStore(engine) { store in
            let blob = engine == .sqlite ? "BLOB" : "BYTEA"
            try await store.execute("CREATE TABLE kinds (i BIGINT, r DOUBLE PRECISION, t TEXT, b \(blob), n TEXT)")
            let text = "naïve 'quoted' ? -- not a comment; 日本"
            let bytes: [UInt8] = [0, 1, 2, 255, 0x27, 0x3F]
            let changed = try await store.execute("INSERT INTO kinds (i, r, t, b, n) VALUES (?, ?, ?, ?, ?)",
                                                  [.integer(Int64.min), .real(-2.5), .text(text), .blob(bytes), .null])
            #expect(changed == 1)
            let rows = try await store.query("SELECT i, r, t, b, n FROM kinds WHERE t = ?", [.text(text)])
            try #require(rows.count == 1)
            #expect(rows[0]["i"] == .integer(Int64.min))
            #expect(rows[0]["r"] == .real(-2.5))
            #expect(rows[0].string("t") == text)
            #expect(rows[0].bytes("b") == bytes)
            #expect(rows[0]["n"] == .null)
            // A literal question mark in SQL text is not a parameter.
            #expect(try await store.query("SELECT '?' AS q").first?.string("q") == "?")
        }
    }

    @Test(arguments: StoreEngine.allCases)
    func transactionsCommitOrRollBackAsAWhole(_ engine: StoreEngine) async throws {
        try await withStore(engine) { store in
            let now: SQLValue = .integer(1)
            try await store.transaction { db in
                try await db.execute("INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)", ["acme", "Acme", now])
                try await db.execute("INSERT INTO devices (tenant_id, id, created_at) VALUES (?, ?, ?)", ["acme", "pump-1", now])
            }
            struct Abort: Error {}
            await #expect(throws: Abort.self) {
                try await store.transaction { db in
                    try await db.execute("INSERT INTO devices (tenant_id, id, created_at) VALUES (?, ?, ?)", ["acme", "pump-2", now])
                    throw Abort()
                }
            }
            #expect(try await store.query("SELECT id FROM devices ORDER BY id").map { $0.string("id") } == ["pump-1"])
        }
    }

    @Test(arguments: StoreEngine.allCases)
    func constraintsAreEnforcedAndReportedAsSuch(_ engine: StoreEngine) async throws {
        try await withStore(engine) { store in
            try await store.execute("INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)", ["acme", "Acme", 1])
            // A duplicate key, and a device of a tenant that does not exist.
            for (sql, params) in [("INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)", ["acme", "Again", 2] as [SQLValue]),
                                  ("INSERT INTO devices (tenant_id, id, created_at) VALUES (?, ?, ?)", ["nobody", "d", 1])] {
                do {
                    try await store.execute(sql, params)
                    Issue.record("\(sql) succeeded")
                } catch let e as StoreError {
                    #expect(e.kind == .constraint, "\(e)")
                }
            }
            // Deleting a tenant deletes its devices.
            try await store.execute("INSERT INTO devices (tenant_id, id, created_at) VALUES (?, ?, ?)", ["acme", "d", 1])
            #expect(try await store.execute("DELETE FROM tenants WHERE id = ?", ["acme"]) == 1)
            #expect(try await store.query("SELECT COUNT(*) AS n FROM devices").first?.int("n") == 0)
        }
    }

    @Test(arguments: StoreEngine.allCases)
    func concurrentWritersEachGetTheirTransaction(_ engine: StoreEngine) async throws {
        try await withStore(engine) { store in
            try await store.execute("CREATE TABLE counter (n BIGINT NOT NULL)")
            try await store.execute("INSERT INTO counter (n) VALUES (0)")
            let lock = engine == .postgres ? " FOR UPDATE" : ""
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<20 {
                    group.addTask {
                        try await store.transaction { db in
                            let n = try await db.query("SELECT n FROM counter" + lock).first?.int("n") ?? -1
                            try await db.execute("UPDATE counter SET n = ?", [.integer(n + 1)])
                        }
                    }
                }
                try await group.waitForAll()
            }
            #expect(try await store.query("SELECT n FROM counter").first?.int("n") == 20)
        }
    }

    @Test(arguments: StoreEngine.allCases)
    func apiKeysAreShownOnceStoredHashedAndCheckedOnUse(_ engine: StoreEngine) async throws {
        try await withStore(engine) { store in
            final class Clock: @unchecked Sendable { var now: Int64 = 1_000_000 }
            let clock = Clock()
            let accounts = Accounts(store: store) { clock.now }
            // The first start creates the system tenant and an owner key; later starts create nothing.
            let first = try #require(try await accounts.bootstrap())
            #expect(first.hasPrefix("iotc_"))
            let again = try await accounts.bootstrap()
            #expect(again == nil)
            let owner = try #require(try await accounts.authenticate(first))
            #expect(owner.key.role == .owner && owner.tenant.system && owner.tenant.id == "system")

            _ = try await accounts.createTenant(id: "acme", name: "Acme")
            await #expect(throws: AccountsError.self) { try await accounts.createTenant(id: "acme", name: "Again") }
            await #expect(throws: AccountsError.self) { try await accounts.createTenant(id: "../etc", name: "Bad") }
            let (key, secret) = try await accounts.createKey(tenant: "acme", name: "ci", role: .viewer, expiresAt: clock.now + 10_000)
            #expect(try await accounts.authenticate(secret)?.tenant.id == "acme")
            // Only a hash is stored: the secret is nowhere in the table.
            let stored = try await store.query("SELECT * FROM api_keys WHERE id = ?", [.text(key.id)])
            #expect(!stored.isEmpty)
            for v in stored[0].values { if case .text(let t) = v { #expect(!t.contains(secret.suffix(32))) } }
            // A wrong secret with the right id, a malformed one, and an expired key are refused.
            var wrong = Array(secret)
            wrong[wrong.count - 1] = wrong.last == "a" ? "b" : "a"
            #expect(try await accounts.authenticate(String(wrong)) == nil)
            #expect(try await accounts.authenticate("iotc_x") == nil)
            clock.now += 20_000
            #expect(try await accounts.authenticate(secret) == nil)
            // Revoked keys stop working at once; another tenant cannot revoke them.
            let (other, otherSecret) = try await accounts.createKey(tenant: "acme", name: "ops", role: .operator)
            #expect(try await accounts.revokeKey(tenant: "system", id: other.id) == false)
            #expect(try await accounts.authenticate(otherSecret) != nil)
            #expect(try await accounts.revokeKey(tenant: "acme", id: other.id))
            #expect(try await accounts.authenticate(otherSecret) == nil)
            // Deleting a tenant takes its keys; the system tenant stays.
            #expect(try await accounts.deleteTenant("system") == false)
            #expect(try await accounts.deleteTenant("acme"))
            #expect(try await accounts.keys(tenant: "acme").isEmpty)
        }
    }

    /// An entry the store cannot take (SQLite's page limit standing in for a full disk) is an error of
    /// the kind `unavailable`, and the hub's log says which entry was lost (callers go on: the change it
    /// records is done).
    @Test func anAuditEntryThatCannotBeAppendedIsLogged() async throws {
        let capture = LogCapture()
        try await withStore(.sqlite) { store in
            let audit = AuditLog(store: store, logger: Logger(label: "test") { _ in capture })
            let pages = try await store.query("PRAGMA page_count").first?.int("page_count") ?? 0
            _ = try await store.query("PRAGMA max_page_count = \(pages)")
            var failure: StoreError?
            for i in 0..<500 where failure == nil {
                do {
                    try await audit.record(AuditEntry(tenant: "acme", actor: "key:k1", action: "device.create", target: "sensor-\(i)",
                                                      detail: String(repeating: "d", count: 200)))
                } catch let e as StoreError { failure = e }
            }
            #expect(failure?.kind == .unavailable, "\(String(describing: failure))")
            let lines = capture.lines
            #expect(lines.count == 1 && lines[0].hasPrefix("error cannot append to the audit log: device.create by key:k1 on 'sensor-")
                    && lines[0].contains("database or disk is full"), "\(lines)")
        }
    }

    @Test(arguments: StoreEngine.allCases)
    func theAuditChainDetectsAnEditedOrDeletedEntry(_ engine: StoreEngine) async throws {
        try await withStore(engine) { store in
            let audit = AuditLog(store: store)
            for i in 1...5 {
                try await audit.record(AuditEntry(tenant: i % 2 == 0 ? "acme" : "system", actor: "key:k\(i)", action: "tenant.create",
                                                  target: "t\(i)", source: "127.0.0.1", detail: "entry \(i)"))
            }
            let intact = try await audit.verify()
            #expect(intact == AuditLog.Verification(entries: 5, firstBroken: nil, reason: nil))
            let acme = try await audit.entries(tenant: "acme")
            #expect(acme.map(\.sequence) == [4, 2])
            // Someone edits entry 3 in the database: the chain breaks there.
            try await store.execute("UPDATE audit_log SET detail = ? WHERE seq = 3", ["nothing happened"])
            let edited = try await audit.verify()
            #expect(edited.firstBroken == 3, "\(edited)")
            // Putting the text back heals it; deleting entry 2 is caught as a gap.
            try await store.execute("UPDATE audit_log SET detail = ? WHERE seq = 3", ["entry 3"])
            #expect(try await audit.verify().firstBroken == nil)
            try await store.execute("DELETE FROM audit_log WHERE seq = 2")
            let deleted = try await audit.verify()
            #expect(deleted.firstBroken == 3 && deleted.reason?.contains("missing") == true, "\(deleted)")
        }
    }

    @Test(arguments: StoreEngine.allCases)
    func devicesBelongToOneTenantAndFilterByLabel(_ engine: StoreEngine) async throws {
        try await withStore(engine) { store in
            let accounts = Accounts(store: store)
            _ = try await accounts.createTenant(id: "acme", name: "Acme")
            _ = try await accounts.createTenant(id: "globex", name: "Globex")
            let devices = Devices(store: store)
            for i in 0..<25 {
                _ = try await devices.create(tenant: "acme", id: String(format: "pump-%02d", i), name: "Pump \(i)",
                                             labels: ["site": i % 2 == 0 ? "north" : "south", "rack": "r\(i % 5)"])
            }
            _ = try await devices.create(tenant: "globex", id: "pump-00", labels: ["site": "north"])
            await #expect(throws: AccountsError.self) { try await devices.create(tenant: "acme", id: "pump-00") }
            await #expect(throws: AccountsError.self) { try await devices.create(tenant: "nobody", id: "pump-00") }
            for bad in ["", "../x", "a/b", "a b", String(repeating: "x", count: 129)] {
                await #expect(throws: AccountsError.self, "\(bad)") { try await devices.create(tenant: "acme", id: bad) }
            }
            await #expect(throws: AccountsError.self) { try await devices.create(tenant: "acme", id: "x", labels: ["bad key'": "v"]) }
            // The same id in two tenants: two devices, each seen by its own tenant only.
            #expect(try await devices.get(tenant: "globex", id: "pump-00")?.labels == ["site": "north"])
            #expect(try await devices.get(tenant: "acme", id: "pump-00")?.name == "Pump 0")
            #expect(try await devices.get(tenant: "globex", id: "pump-01") == nil)
            // Pages in id order, and a label filter.
            let first = try await devices.list(tenant: "acme", limit: 10)
            let second = try await devices.list(tenant: "acme", after: first.last?.id, limit: 10)
            #expect(first.count == 10 && second.count == 10 && second.first?.id == "pump-10")
            let north = try await devices.list(tenant: "acme", label: ("site", "north"), limit: 100)
            #expect(north.count == 13 && north.allSatisfy { $0.labels["site"] == "north" && $0.tenant == "acme" })
            // Updates change what is named; deletes are per tenant.
            let updated = try await devices.update(tenant: "acme", id: "pump-01", name: nil, profile: "pump", labels: ["site": "east"])
            #expect(updated?.name == "Pump 1" && updated?.profile == "pump" && updated?.labels == ["site": "east"])
            #expect(try await devices.update(tenant: "globex", id: "pump-01", name: "x", profile: nil, labels: nil) == nil)
            #expect(try await devices.delete(tenant: "globex", id: "pump-02") == false)
            #expect(try await devices.delete(tenant: "acme", id: "pump-02"))
            // A tenant's devices go with it.
            #expect(try await accounts.deleteTenant("globex"))
            #expect(try await devices.list(tenant: "globex").isEmpty)
        }
    }

    @Test(arguments: StoreEngine.allCases)
    func telemetryIsWrittenOnceAndReadInBuckets(_ engine: StoreEngine) async throws {
        try await withStore(engine) { store in
            let t = Telemetry(store: store)
            // Ten minutes of one point a second (values 0...599), another key, another device, another tenant.
            var points = (0..<600).map { TelemetryPoint(tenant: "acme", device: "pump-1", key: "rpm", time: 1_000_000 + Int64($0) * 1000, value: Double($0)) }
            points.append(TelemetryPoint(tenant: "acme", device: "pump-1", key: "temp", time: 1_000_000, value: 21.5))
            points.append(TelemetryPoint(tenant: "acme", device: "pump-2", key: "rpm", time: 1_000_000, value: -1))
            points.append(TelemetryPoint(tenant: "globex", device: "pump-1", key: "rpm", time: 1_000_000, value: -2))
            try await t.write(points)
            // Written again (a redelivery): nothing changes.
            try await t.write(Array(points.prefix(10)))
            let raw = try await t.points(tenant: "acme", device: "pump-1", key: "rpm", from: 1_000_000, to: 1_010_000)
            #expect(raw.map(\.value) == (0..<10).map(Double.init))
            let from: Int64 = 1_000_000, to: Int64 = 1_600_000
            func agg(_ a: Telemetry.Aggregate) async throws -> [Double] {
                try await t.aggregate(tenant: "acme", device: "pump-1", key: "rpm", from: from, to: to, bucket: 60_000, a).map(\.value)
            }
            #expect(try await agg(.count) == Array(repeating: 60, count: 10))
            #expect(try await agg(.min) == (0..<10).map { Double($0 * 60) })
            #expect(try await agg(.max) == (0..<10).map { Double($0 * 60 + 59) })
            #expect(try await agg(.last) == (0..<10).map { Double($0 * 60 + 59) })
            // Bucket k holds 60k ... 60k + 59.
            let sums: [Double] = (0..<10).map { k in Double(3600 * k + 1770) }
            #expect(try await agg(.sum) == sums)
            #expect(try await agg(.avg) == (0..<10).map { Double($0 * 60) + 29.5 })
            let buckets = try await t.aggregate(tenant: "acme", device: "pump-1", key: "rpm", from: from, to: to, bucket: 60_000, .count)
            #expect(buckets.map(\.time) == (0..<10).map { from + Int64($0) * 60_000 })
            let latest = try await t.latest(tenant: "acme", device: "pump-1")
            #expect(latest.map(\.key) == ["rpm", "temp"] && latest[0].value == 599 && latest[1].value == 21.5)
            #expect(try await t.latest(tenant: "globex", device: "pump-1").map(\.value) == [-2])
            #expect(try await t.deleteOlder(tenant: "acme", than: 1_300_000) == 302)
            #expect(try await t.points(tenant: "acme", device: "pump-1", key: "rpm", from: 0, to: .max).count == 300)
        }
    }

    @Test(arguments: StoreEngine.allCases)
    func usersLogInWithAPasswordKeptAsASlowHash(_ engine: StoreEngine) async throws {
        try await withStore(engine) { store in
            let accounts = Accounts(store: store)
            _ = try await accounts.createTenant(id: "acme", name: "Acme")
            let password = "correct horse battery staple"
            _ = try await accounts.createUser(tenant: "acme", email: "Ada@Example.com", name: "Ada", role: .operator, password: password)
            await #expect(throws: AccountsError.self) { try await accounts.createUser(tenant: "acme", email: "ada@example.com", name: "", role: .viewer, password: password) }
            await #expect(throws: AccountsError.self) { try await accounts.createUser(tenant: "acme", email: "bob@example.com", name: "", role: .viewer, password: "short") }
            await #expect(throws: AccountsError.self) { try await accounts.createUser(tenant: "acme", email: "not an address", name: "", role: .viewer, password: password) }
            let stored = try await store.query("SELECT password_hash FROM users").first?.string("password_hash") ?? ""
            #expect(stored.hasPrefix("pbkdf2-sha256$210000$") && !stored.contains(password))
            // The right password gives a session key with the user's role; anything else gives nothing.
            let session = try #require(try await accounts.login(tenant: "acme", email: "ada@example.com", password: password))
            #expect(session.key.role == .operator && session.key.expiresAt != nil)
            #expect(try await accounts.authenticate(session.secret)?.tenant.id == "acme")
            #expect(try await accounts.login(tenant: "acme", email: "ada@example.com", password: password + "!") == nil)
            #expect(try await accounts.login(tenant: "acme", email: "nobody@example.com", password: password) == nil)
            #expect(try await accounts.login(tenant: "other", email: "ada@example.com", password: password) == nil)
            #expect(try await accounts.deleteUser(tenant: "acme", email: "ADA@example.com"))
            #expect(try await accounts.users(tenant: "acme").isEmpty)
        }
    }

    @Test(arguments: StoreEngine.allCases)
    func commandsMoveThroughTheirStatusesOnce(_ engine: StoreEngine) async throws {
        try await withStore(engine) { store in
            final class Clock: @unchecked Sendable { var now: Int64 = 1_000_000 }
            let clock = Clock()
            let commands = Commands(store: store, clock: { clock.now })
            let c = try await commands.create(tenant: "acme", device: "pump-1", name: "start", payload: #"{"rpm":900}"#, expiresAt: 1_060_000)
            clock.now += 1
            let late = try await commands.create(tenant: "acme", device: "pump-1", name: "stop", payload: "{}", expiresAt: 1_010_000)
            #expect(try await commands.queued().map(\.id) == [c.id, late.id])
            // Only the device the command is for, in its tenant, can answer it.
            #expect(try await !commands.complete(tenant: "globex", device: "pump-1", id: c.id, succeeded: true, result: "{}"))
            #expect(try await !commands.complete(tenant: "acme", device: "pump-2", id: c.id, succeeded: true, result: "{}"))
            #expect(try await commands.get(tenant: "globex", id: c.id) == nil)
            #expect(try await commands.markDelivered(id: c.id))
            #expect(try await !commands.markDelivered(id: c.id))
            #expect(try await commands.complete(tenant: "acme", device: "pump-1", id: c.id, succeeded: false, result: #"{"error":"jammed"}"#))
            // Answered once: a second answer changes nothing.
            #expect(try await !commands.complete(tenant: "acme", device: "pump-1", id: c.id, succeeded: true, result: "{}"))
            let done = try #require(try await commands.get(tenant: "acme", id: c.id))
            #expect(done.status == .failed && done.result == #"{"error":"jammed"}"# && done.deliveredAt == 1_000_001 && done.completedAt == 1_000_001)
            // Past its expiry a queued command expires, and an answer after that is refused.
            clock.now = 1_020_000
            #expect(try await commands.queued().isEmpty)
            #expect(try await commands.expire() == 1)
            #expect(try await !commands.complete(tenant: "acme", device: "pump-1", id: late.id, succeeded: true, result: "{}"))
            let expired = try #require(try await commands.get(tenant: "acme", id: late.id))
            #expect(expired.status == .expired && expired.detail == "not delivered before the expiry")
            #expect(try await commands.list(tenant: "acme", device: "pump-1", limit: 10).map(\.status) == [.expired, .failed])
            #expect(try await commands.list(tenant: "acme", device: "pump-1", status: .failed, limit: 10).map(\.id) == [c.id])
        }
    }

    @Test(arguments: StoreEngine.allCases)
    func devicesClaimTheirOwnCredentialsOnce(_ engine: StoreEngine) async throws {
        try await withStore(engine) { store in
            let accounts = Accounts(store: store), devices = Devices(store: store), provisioning = Provisioning(store: store)
            _ = try await accounts.createTenant(id: "acme", name: "Acme")
            let (key, secret) = try await provisioning.createKey(tenant: "acme", name: "line 3", profile: "meter", expiresAt: nil)
            #expect(secret.hasPrefix("iotcp_") && key.profile == "meter")
            try await provisioning.setClaimCode(tenant: "acme", device: "meter-7", code: "K7-55-AB-19", expiresAt: nil)
            let stored = try await store.query("SELECT code_hash FROM device_claims").first?.string("code_hash") ?? ""
            #expect(stored.hasPrefix("pbkdf2-sha256$") && !stored.contains("K7-55"))
            // Wrong code, wrong key, unknown device: nothing.
            #expect(try await provisioning.claim(fleetKey: secret, device: "meter-7", code: "K7-55-AB-18", devices: devices) == nil)
            #expect(try await provisioning.claim(fleetKey: secret + "x", device: "meter-7", code: "K7-55-AB-19", devices: devices) == nil)
            #expect(try await provisioning.claim(fleetKey: secret, device: "meter-8", code: "K7-55-AB-19", devices: devices) == nil)
            // The right ones: the device is registered with the key's profile and gets its own token, once.
            let claimed = try #require(try await provisioning.claim(fleetKey: secret, device: "meter-7", code: "K7-55-AB-19", devices: devices))
            #expect(claimed.tenant == "acme" && claimed.token.hasPrefix("iotcd_"))
            #expect(try await devices.get(tenant: "acme", id: "meter-7")?.profile == "meter")
            #expect(try await devices.activeCredentials().map(\.id) == [claimed.credential.id])
            #expect(try await provisioning.claim(fleetKey: secret, device: "meter-7", code: "K7-55-AB-19", devices: devices) == nil)
            await #expect(throws: AccountsError.self) { try await provisioning.setClaimCode(tenant: "acme", device: "meter-7", code: "another code", expiresAt: nil) }
            // A revoked fleet key claims nothing more.
            try await provisioning.setClaimCode(tenant: "acme", device: "meter-9", code: "K9-00-00-01", expiresAt: nil)
            #expect(try await provisioning.revokeKey(tenant: "acme", id: key.id))
            #expect(try await provisioning.claim(fleetKey: secret, device: "meter-9", code: "K9-00-00-01", devices: devices) == nil)
        }
    }

    /// Bulk provisioning: valid rows are created together with their tokens; a row that is invalid,
    /// names an existing device or repeats an earlier row is reported and skipped.
    @Test(arguments: StoreEngine.allCases)
    func manyDevicesAreCreatedAtOnce(_ engine: StoreEngine) async throws {
        try await withAcmeDevice(engine, id: "meter-3", name: "old") { store, devices in
            var rows = (0..<250).map { Devices.NewDevice(id: "meter-\($0)", profile: "meter", labels: ["site": "north"]) }
            rows.insert(Devices.NewDevice(id: "bad id"), at: 5)
            rows.insert(Devices.NewDevice(id: "meter-0", name: "again"), at: 7)
            let outcomes = try await devices.createMany(tenant: "acme", rows, tokens: true)
            #expect(outcomes.count == rows.count)
            if case .invalid = outcomes[5] {} else { Issue.record("row 6: \(outcomes[5])") }
            #expect(outcomes[7] == .exists("device 'meter-0' exists"))
            #expect(outcomes[rows.firstIndex { $0.id == "meter-3" }!] == .exists("device 'meter-3' exists"))
            #expect(try await devices.get(tenant: "acme", id: "meter-3")?.name == "old")
            let created = zip(rows, outcomes).compactMap { r, o -> (String, String)? in
                if case .created(let token?) = o { (r.id, token) } else { nil }
            }
            #expect(created.count == 249)
            let last = try await devices.get(tenant: "acme", id: "meter-249")
            #expect(last?.profile == "meter" && last?.labels == ["site": "north"] && last?.name == "")
            // Each token is the device's own credential.
            let active = try await devices.activeCredentials()
            for (device, token) in created {
                let c = active.first { $0.id == Devices.tokenID(token) }
                #expect(c?.device == device && c?.tenant == "acme" && c?.digest == Devices.digest(token), "\(device)")
            }
            // Without tokens, and into a tenant that does not exist.
            #expect(try await devices.createMany(tenant: "acme", [Devices.NewDevice(id: "valve-1")], tokens: false) == [.created(token: nil)])
            await #expect(throws: AccountsError.self) { try await devices.createMany(tenant: "nobody", [Devices.NewDevice(id: "x")], tokens: false) }
        }
    }

    /// Merges of a device's attributes that run at once keep each other's fields.
    @Test(arguments: StoreEngine.allCases)
    func attributeMergesAtOnceKeepEachOthersFields(_ engine: StoreEngine) async throws {
        try await withAcmeDevice(engine, id: "valve-9") { store, devices in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<40 {
                    group.addTask { _ = try await devices.mergeAttributes(tenant: "acme", id: "valve-9", ["k\(i)": .int(Int64(i))]) }
                }
                try await group.waitForAll()
            }
            let attributes = try #require(try await devices.attributes(tenant: "acme", id: "valve-9"))
            #expect(attributes.count == 40 && (0..<40).allSatisfy { attributes["k\($0)"] == .int(Int64($0)) }, "\(attributes)")
            #expect(try await devices.mergeAttributes(tenant: "acme", id: "nobody", ["a": 1]) == nil)
            await #expect(throws: AccountsError.self) {
                try await devices.mergeAttributes(tenant: "acme", id: "valve-9", ["big": .string(String(repeating: "x", count: 20_000))])
            }
        }
    }

    /// Two updates of a device at once, one of its name and one of its labels, keep each other's change.
    @Test(arguments: StoreEngine.allCases)
    func updatesAtOnceKeepEachOthersChanges(_ engine: StoreEngine) async throws {
        try await withAcmeDevice(engine, id: "pump-1") { store, devices in
            for round in 0..<20 {
                async let named = devices.update(tenant: "acme", id: "pump-1", name: "pump \(round)", profile: nil, labels: nil)
                async let labelled = devices.update(tenant: "acme", id: "pump-1", name: nil, profile: nil, labels: ["round": "\(round)"])
                _ = try await (named, labelled)
                let d = try await devices.get(tenant: "acme", id: "pump-1")
                #expect(d?.name == "pump \(round)" && d?.labels == ["round": "\(round)"], "round \(round): \(String(describing: d))")
            }
        }
    }

    /// Multi-row statements come in a few shapes, whatever the number of rows, so that the prepared
    /// statements the SQLite engine caches are not one per remainder.
    @Test func multiRowStatementsTakeAFewShapes() {
        var shapes = Set<Int>()
        for count in 0...1_000 {
            let rows = Array(0..<count)
            let runs = rows.statementRuns(of: 200)
            #expect(runs.flatMap { $0 } == rows)
            shapes.formUnion(runs.map(\.count))
        }
        #expect(shapes == [200, 128, 64, 32, 16, 8, 4, 2, 1])
    }

    /// The SQLite engine's settings: the write-ahead journal, and statement journals in memory (in
    /// temporary files, each multi-row write spilled its statement journal with a write call per page).
    /// The second is set before the library's first connection, or not at all.
    @Test func sqliteKeepsItsJournalsWhereItShould() async throws {
        let dir = TempDir()
        let store = try await openStore("sqlite:\(dir.path)/iotc.db")
        #expect(try await store.query("PRAGMA journal_mode").first?.string("journal_mode") == "wal")
        #expect(SQLiteStore.statementJournalsInMemory)
        await store.close()
    }

    @Test(arguments: StoreEngine.allCases)
    func deviceStatesAreKeptAndReplaced(_ engine: StoreEngine) async throws {
        try await withStore(engine) { store in
            let devices = Devices(store: store)
            let first = DeviceState(tenant: "acme", device: "pump-1", connected: true, source: "broker", remoteAddress: "10.0.0.7:5000", since: 100, lastSeen: 150)
            try await devices.saveStates([first, DeviceState(tenant: "globex", device: "pump-1", connected: false, source: "web", remoteAddress: "", since: 1, lastSeen: 2)])
            var later = first
            later.connected = false
            later.since = 200
            later.lastSeen = 200
            try await devices.saveStates([later])
            let states = try await devices.states().sorted { $0.tenant < $1.tenant }
            #expect(states == [later, DeviceState(tenant: "globex", device: "pump-1", connected: false, source: "web", remoteAddress: "", since: 1, lastSeen: 2)])

            // A fleet's worth at once (several statements), with one device twice in one statement's rows:
            // the later state counts.
            var fleet = (0..<250).map {
                DeviceState(tenant: "fleet", device: "meter-\($0)", connected: true, source: "broker", remoteAddress: "10.1.0.\($0 % 250):1883", since: Int64($0), lastSeen: Int64($0))
            }
            var gone = fleet[7]
            gone.connected = false
            gone.lastSeen = 1_000
            fleet.insert(gone, at: 20)
            try await devices.saveStates(fleet)
            let saved = try await devices.states().filter { $0.tenant == "fleet" }
            #expect(saved.count == 250)
            #expect(Set(saved.map(\.device)) == Set((0..<250).map { "meter-\($0)" }))
            #expect(saved.first { $0.device == "meter-7" } == gone)
            #expect(saved.first { $0.device == "meter-249" } == fleet.last)
        }
    }

    @Test(arguments: StoreEngine.allCases)
    func presharedKeysAreSealedAndFoundByIdentity(_ engine: StoreEngine) async throws {
        try await withAcmeDevice(engine, id: "valve-3", profile: "valve") { store, devices in
            let box = try SecretBox(key: Array(repeating: 7, count: 32))
            let given = Array(0..<16).map(UInt8.init)
            let (c, key) = try await devices.addPresharedKey(tenant: "acme", device: "valve-3", identity: "valve-3@acme", key: given, box: box)
            #expect(key == given && c.kind == .psk)
            let (_, made) = try await devices.addPresharedKey(tenant: "acme", device: "valve-3", identity: "valve-3b", key: nil, box: box)
            #expect(made.count == 16 && made != given)
            // The identity is unique among keys in force; the key is never stored as given.
            await #expect(throws: AccountsError.self) { try await devices.addPresharedKey(tenant: "acme", device: "valve-3", identity: "valve-3@acme", key: nil, box: box) }
            await #expect(throws: AccountsError.self) { try await devices.addPresharedKey(tenant: "acme", device: "valve-3", identity: "x", key: [1, 2], box: box) }
            let sealed = try #require(try await store.query("SELECT sealed_key FROM device_credentials WHERE id = ?", [.text(c.id)]).first?.bytes("sealed_key"))
            #expect(sealed.count > 16 && !(0...(sealed.count - 16)).contains { Array(sealed[$0..<($0 + 16)]) == given })
            // The directory finds device and key by identity, with the same secret key only, until revoked.
            let directory = RegistryDirectory(devices: devices, box: box)
            try await directory.refresh()
            let found = try #require(directory.presharedKey(identity: "valve-3@acme"))
            #expect(found.grant.tenant == "acme" && found.grant.device == "valve-3" && found.grant.profile == "valve" && found.key == given)
            let stranger = RegistryDirectory(devices: devices, box: try SecretBox(key: Array(repeating: 8, count: 32)))
            try await stranger.refresh()
            #expect(stranger.presharedKey(identity: "valve-3@acme") == nil)
            #expect(try await devices.revokeCredential(tenant: "acme", device: "valve-3", id: c.id))
            try await directory.refresh()
            #expect(directory.presharedKey(identity: "valve-3@acme") == nil && directory.presharedKey(identity: "valve-3b") != nil)
        }
    }

    /// Certificate authorities and device labels on both engines: an authority belongs to one tenant,
    /// and the directory's device groups follow labels.
    @Test(arguments: StoreEngine.allCases)
    func authoritiesAndLabelsLoadIntoTheDirectory(_ engine: StoreEngine) async throws {
        try await withStore(engine) { store in
            let accounts = Accounts(store: store), devices = Devices(store: store), authorities = CertificateAuthorities(store: store)
            _ = try await accounts.createTenant(id: "acme", name: "Acme")
            _ = try await accounts.createTenant(id: "umbrella", name: "Umbrella")
            let der: [UInt8] = [0x30, 0x03, 0x02, 0x01, 0x01], fingerprint = Array(repeating: UInt8(9), count: 32)
            let ca = try await authorities.create(tenant: "acme", name: "fleet", subject: "CN=Fleet CA", certificate: der, fingerprint: fingerprint,
                                                  profile: "sensor", notAfter: 1_900_000_000_000)
            await #expect(throws: AccountsError.self) {
                try await authorities.create(tenant: "umbrella", name: "same", subject: "CN=Fleet CA", certificate: der, fingerprint: fingerprint,
                                             profile: "default", notAfter: 1_900_000_000_000)
            }
            #expect(try await authorities.list(tenant: "acme") == [ca])
            #expect(try await authorities.list(tenant: "umbrella").isEmpty)
            #expect(try await authorities.get(tenant: "umbrella", id: ca.id) == nil)
            #expect(try await authorities.get(tenant: "acme", id: ca.id)?.certificate == der)
            // Its revocation list is set, replaced and removed within its tenant only.
            #expect(try await !authorities.setRevocationList(tenant: "umbrella", id: ca.id, [1, 2, 3]))
            #expect(try await authorities.setRevocationList(tenant: "acme", id: ca.id, [1, 2, 3]))
            let listed = try await authorities.get(tenant: "acme", id: ca.id)
            #expect(listed?.revocationList == [1, 2, 3] && listed?.revocationListSetAt != nil)
            #expect(try await authorities.setRevocationList(tenant: "acme", id: ca.id, nil))
            let cleared = try await authorities.get(tenant: "acme", id: ca.id)
            #expect(cleared?.revocationList == nil && cleared?.revocationListSetAt == nil)
            // A list replaces the one in force only while that is still the one its caller checked.
            #expect(try await authorities.replaceRevocationList(tenant: "acme", id: ca.id, [4], current: nil))
            #expect(try await !authorities.replaceRevocationList(tenant: "acme", id: ca.id, [5], current: nil))
            #expect(try await !authorities.replaceRevocationList(tenant: "acme", id: ca.id, [5], current: [1, 2, 3]))
            #expect(try await !authorities.replaceRevocationList(tenant: "umbrella", id: ca.id, [5], current: [4]))
            #expect(try await authorities.get(tenant: "acme", id: ca.id)?.revocationList == [4])
            #expect(try await authorities.replaceRevocationList(tenant: "acme", id: ca.id, [5], current: [4]))
            #expect(try await authorities.get(tenant: "acme", id: ca.id)?.revocationList == [5])
            #expect(try await !authorities.delete(tenant: "umbrella", id: ca.id))
            #expect(try await authorities.delete(tenant: "acme", id: ca.id))
            #expect(try await authorities.all().isEmpty)

            _ = try await devices.create(tenant: "acme", id: "pump-1", labels: ["site": "north", "role": "pump"])
            _ = try await devices.create(tenant: "acme", id: "pump-2", labels: ["site": "south", "role": "pump"])
            _ = try await devices.create(tenant: "umbrella", id: "pump-9", labels: ["site": "north", "role": "pump"])
            let directory = RegistryDirectory(devices: devices, authorities: authorities)
            try await directory.refresh()
            #expect(directory.devices(tenant: "acme", labels: [KeyValue("role", "pump")]) == ["pump-1", "pump-2"])
            #expect(directory.devices(tenant: "acme", labels: [KeyValue("role", "pump"), KeyValue("site", "north")]) == ["pump-1"])
            #expect(directory.devices(tenant: "acme", labels: [KeyValue("site", "east")]).isEmpty)
            directory.labelsChanged(tenant: "acme", device: "pump-2", ["site": "north", "role": "pump"])
            #expect(directory.devices(tenant: "acme", labels: [KeyValue("site", "north")]) == ["pump-1", "pump-2"])
            directory.labelsChanged(tenant: "acme", device: "pump-1", nil)
            #expect(directory.devices(tenant: "acme", labels: [KeyValue("site", "north")]) == ["pump-2"])
        }
    }

    /// The directory reads the registry again only when it changed, whoever changed it (here plain SQL,
    /// as another node or tool would), or when a credential in force expired; and then it names what is
    /// no longer in force, for its connections to be closed.
    @Test(arguments: StoreEngine.allCases)
    func theDirectoryReloadsOnlyWhenTheRegistryChangedOrACredentialExpired(_ engine: StoreEngine) async throws {
        try await withStore(engine) { store in
            final class Clock: @unchecked Sendable {
                let lock = NSLock()
                var ms: Int64 = 1_800_000_000_000
                var now: Int64 { lock.withLock { ms } }
                func advance(_ d: Int64) { lock.withLock { ms += d } }
            }
            final class Gone: @unchecked Sendable {
                let lock = NSLock()
                var ids: [Set<String>] = []
            }
            let clock = Clock(), gone = Gone()
            let accounts = Accounts(store: store), devices = Devices(store: store, clock: { clock.now })
            _ = try await accounts.createTenant(id: "acme", name: "Acme")
            _ = try await devices.create(tenant: "acme", id: "pump-1")
            let (lasting, lastingToken) = try await devices.issueToken(tenant: "acme", device: "pump-1")
            let (brief, briefToken) = try await devices.issueToken(tenant: "acme", device: "pump-1", expiresAt: clock.now + 60_000)
            let directory = RegistryDirectory(devices: devices) { ids in gone.lock.withLock { gone.ids.append(ids) } }
            func accepts(_ token: String) -> Bool { directory.authenticate(Credentials(protocolName: "mqtt", secret: token)) != nil }

            let r0 = try await devices.registryRevision()
            try await directory.refresh()
            #expect(directory.reloads == 1 && accepts(lastingToken) && accepts(briefToken))
            try await directory.refresh()
            try await directory.refresh()
            #expect(directory.reloads == 1, "nothing changed, nothing expired: not read again")
            #expect(try await devices.registryRevision() == r0)

            // Attributes written (as an `attributes` sink does for each message) move the registry's
            // revision but not the credentials': the attributes are read again, the credentials are not.
            #expect(try await devices.setAttributes(tenant: "acme", id: "pump-1", ["mode": .string("eco")]))
            let r1 = try await devices.registryRevision()
            #expect(r1.all > r0.all && r1.credentials == r0.credentials)
            try await directory.refresh()
            #expect(directory.reloads == 1)
            #expect(directory.attributes(tenant: "acme", device: "pump-1").map { try? JSON.decode($0) } == .object(["mode": .string("eco")]))
            // A new profile changes the grant a credential gives: the credentials are read again.
            _ = try await devices.update(tenant: "acme", id: "pump-1", name: nil, profile: "valve", labels: nil)
            #expect(try await devices.registryRevision().credentials > r0.credentials)
            try await directory.refresh()
            #expect(directory.reloads == 2 && directory.authenticate(Credentials(protocolName: "mqtt", secret: lastingToken))?.profile == "valve")
            let r2 = try await devices.registryRevision()

            // Another writer revokes the lasting token: the revision moves, the directory reloads, and
            // names the credential.
            _ = try await store.execute("UPDATE device_credentials SET revoked_at = 1 WHERE id = ?", [.text(lasting.id)])
            #expect(try await devices.registryRevision().credentials > r2.credentials)
            try await directory.refresh()
            #expect(directory.reloads == 3 && !accepts(lastingToken) && accepts(briefToken))
            #expect(gone.lock.withLock { gone.ids } == [[lasting.id]])
            try await directory.refresh()
            #expect(directory.reloads == 3)

            // Nothing is written when the brief token expires: its time alone makes the directory reload.
            clock.advance(59_000)
            try await directory.refresh()
            #expect(directory.reloads == 3 && accepts(briefToken))
            clock.advance(1_000)
            #expect(!accepts(briefToken), "refused at its expiry, before any reload")
            try await directory.refresh()
            #expect(directory.reloads == 4)
            #expect(gone.lock.withLock { gone.ids } == [[lasting.id], [brief.id]])
            try await directory.refresh()
            #expect(directory.reloads == 4, "no credential left to expire")

            // A new token, and the tenant's removal (its devices and credentials go by cascade).
            let (fresh, freshToken) = try await devices.issueToken(tenant: "acme", device: "pump-1")
            try await directory.refresh()
            #expect(directory.reloads == 5 && accepts(freshToken))
            _ = try await store.execute("DELETE FROM tenants WHERE id = 'acme'")
            try await directory.refresh()
            #expect(directory.reloads == 6 && !accepts(freshToken))
            #expect(gone.lock.withLock { gone.ids }.last == [fresh.id])
        }
    }

    @Test(arguments: StoreEngine.allCases)
    func attributesAreSetPerDeviceAndLoadedIntoTheDirectory(_ engine: StoreEngine) async throws {
        try await withAcmeDevice(engine, id: "valve-3") { store, devices in
            _ = try await devices.create(tenant: "acme", id: "valve-4")
            #expect(try await devices.attributes(tenant: "acme", id: "valve-3") == Value.Object())
            let config: Value.Object = ["interval": .int(30), "mode": .string("eco"), "limits": .array([.double(1.5), .int(9)])]
            #expect(try await devices.setAttributes(tenant: "acme", id: "valve-3", config))
            #expect(try await devices.attributes(tenant: "acme", id: "valve-3") == config)
            #expect(try await !devices.setAttributes(tenant: "acme", id: "nobody", config))
            #expect(try await devices.attributes(tenant: "default", id: "valve-3") == nil, "another tenant's device is not found")
            await #expect(throws: AccountsError.self) {
                try await devices.setAttributes(tenant: "acme", id: "valve-4", ["blob": .string(String(repeating: "x", count: Devices.maxAttributesSize))])
            }
            let directory = RegistryDirectory(devices: devices)
            try await directory.refresh()
            #expect(directory.attributes(tenant: "acme", device: "valve-3").map { try? JSON.decode($0) } == .object(config))
            #expect(directory.attributes(tenant: "acme", device: "valve-4") == nil, "devices without attributes are not held")
        }
    }

    /// Keys, device tokens and fleet keys share one form, `PREFIX<id>_<32 or more letters and digits>`,
    /// read on every authentication.
    @Test func secretsAreReadByTheirPrefixIdAndRandomPart() {
        let random = "aB3" + String(repeating: "x9Z", count: 10)
        #expect(Accounts.keyID(of: "iotc_k3y-1_" + random) == "k3y-1")
        #expect(Devices.tokenID("iotcd_d3v_" + random) == "d3v")
        #expect(Accounts.keyID(of: "iotcp_fl33t_" + random, prefix: "iotcp_") == "fl33t")
        #expect(Accounts.keyID(of: Accounts.newSecret().secret) != nil)
        for bad in ["iotcd_k3y_" + random, "iotc_k3y" + random, "iotc_k3y_" + random.dropFirst(3), "iotc_k3y_" + random + "-",
                    "iotc_k3y_" + random + "é", "iotc_K3Y_" + random, "iotc__" + random, "iotc_-k_" + random, "iotc_k_" + random + String(repeating: "a", count: 200)] {
            #expect(Accounts.keyID(of: bad) == nil, "\(bad)")
        }
        #expect(Devices.tokenID("iotc_d3v_" + random) == nil && Accounts.keyID(of: "iotc_fl33t_" + random, prefix: "iotcp_") == nil)
    }

    @Test func aPresetBootstrapKeyIsUsedAsGiven() async throws {
        let dir = TempDir()
        let store = try await openStore("sqlite:\(dir.path)/iotc.db")
        let preset = "iotc_deploytool01_" + String(repeating: "Ab3", count: 11)
        #expect(try await Accounts(store: store).bootstrap(presetKey: preset) == preset)
        #expect(try await Accounts(store: store).authenticate(preset)?.key.role == .owner)
        await store.close()
        let other = try await openStore("sqlite:\(dir.path)/other.db")
        await #expect(throws: AccountsError.self) { try await Accounts(store: other).bootstrap(presetKey: "not-a-key") }
        await other.close()
    }

    @Test func numbersPlaceholdersOutsideQuotesAndComments() {
        let (sql, n) = PostgresStore.numberPlaceholders("SELECT ?, '?', \"a?\" -- ?\n, ?")
        #expect(sql == "SELECT $1, '?', \"a?\" -- ?\n, $2")
        #expect(n == 2)
    }

    @Test func refusesUnknownStoreURLsAndNamesNoPassword() async {
        await #expect(throws: StoreError.self) { try await openStore("mysql://x") }
        do {
            _ = try await openStore("postgres://iotc:hunter2@127.0.0.1:\(freePort())/db")
            Issue.record("connected to a closed port")
        } catch {
            #expect(!"\(error)".contains("hunter2"), "\(error)")
        }
    }
}
