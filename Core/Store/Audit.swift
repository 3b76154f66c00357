import Crypto
import Foundation
import Logging

/// One audit entry: who did what to what, when, from where, and how it ended. Never a secret.
public struct AuditEntry: Sendable, Equatable {
    public var sequence: Int64
    public var at: Int64
    /// The tenant the entry belongs to (the caller's, or the one acted on).
    public var tenant: String
    /// A key id (`key:ID`), `cli`, or `anonymous`.
    public var actor: String
    /// A dotted verb: `tenant.create`, `api_key.revoke`, `auth.failed`, ...
    public var action: String
    public var target: String
    /// The caller's address.
    public var source: String
    /// `ok`, `denied` or `failed`.
    public var outcome: String
    public var detail: String
    public var hash: [UInt8]

    public init(tenant: String, actor: String, action: String, target: String = "", source: String = "", outcome: String = "ok", detail: String = "") {
        sequence = 0
        at = 0
        self.tenant = tenant
        self.actor = actor
        self.action = action
        self.target = target
        self.source = source
        self.outcome = outcome
        self.detail = detail
        hash = []
    }
}

/// The tamper-evident audit log: an append-only table in which each entry carries the SHA-256 of its
/// own fields and of the previous entry's hash. Editing, deleting or reordering a row breaks the chain
/// from there on, and `verify` names the first entry that no longer fits.
public struct AuditLog: Sendable {
    public let store: any Store
    let clock: @Sendable () -> Int64

    /// Where an entry that could not be appended is told of: callers go on (the change it records is
    /// done), so the hub's log keeps what the audit log could not.
    let logger: Logger

    public init(store: any Store, clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) },
                logger: Logger = Logger(label: "iotc.audit")) {
        self.store = store
        self.clock = clock
        self.logger = logger
    }

    /// Appends an entry; entries are chained in the order they commit. One that cannot be appended (the
    /// store cannot write) is logged as an error, then the error is thrown.
    @discardableResult
    public func record(_ entry: AuditEntry) async throws -> AuditEntry {
        do {
            return try await append(entry)
        } catch {
            logger.error("cannot append to the audit log: \(entry.action) by \(entry.actor) on '\(entry.target)' (\(entry.outcome)): \(error)")
            throw error
        }
    }

    private func append(_ entry: AuditEntry) async throws -> AuditEntry {
        let now = clock()
        return try await store.transaction { db in
            // One chain: concurrent writers on PostgreSQL (several nodes) take turns.
            if db.engine == .postgres { _ = try await db.query("SELECT pg_advisory_xact_lock(7406178)") }
            let last = try await db.query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").first
            var e = entry
            e.sequence = (last?.int("seq") ?? 0) + 1
            e.at = now
            e.hash = Self.hash(e, previous: last?.bytes("hash") ?? [])
            try await db.execute("""
                INSERT INTO audit_log (seq, at, tenant_id, actor, action, target, source, outcome, detail, hash)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """, [.integer(e.sequence), .integer(e.at), .text(e.tenant), .text(e.actor), .text(e.action), .text(e.target),
                      .text(e.source), .text(e.outcome), .text(e.detail), .blob(e.hash)])
            return e
        }
    }

    /// Entries, newest first; `tenant` nil means all tenants.
    public func entries(tenant: String?, action: String? = nil, before: Int64? = nil, limit: Int = 100) async throws -> [AuditEntry] {
        var sql = "SELECT * FROM audit_log WHERE 1 = 1"
        var params: [SQLValue] = []
        if let tenant { sql += " AND tenant_id = ?"; params.append(.text(tenant)) }
        if let action { sql += " AND action = ?"; params.append(.text(action)) }
        if let before { sql += " AND seq < ?"; params.append(.integer(before)) }
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(.integer(Int64(max(1, min(limit, 1000)))))
        return try await store.query(sql, params).map(Self.entry)
    }

    /// The outcome of checking the chain.
    public struct Verification: Sendable, Equatable {
        public var entries: Int
        /// The first entry whose hash does not match its fields and its predecessor, or whose sequence
        /// number leaves a gap (a deleted row).
        public var firstBroken: Int64?
        public var reason: String?
    }

    /// Walks the whole chain in order.
    public func verify() async throws -> Verification {
        var previous: [UInt8] = []
        var expected: Int64 = 1
        var count = 0
        var after: Int64 = 0
        while true {
            let page = try await store.query("SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT 1000", [.integer(after)]).map(Self.entry)
            for e in page {
                count += 1
                if e.sequence != expected {
                    return Verification(entries: count, firstBroken: e.sequence, reason: "entries \(expected) to \(e.sequence - 1) are missing")
                }
                if e.hash != Self.hash(e, previous: previous) {
                    return Verification(entries: count, firstBroken: e.sequence, reason: "its fields or its place in the chain were changed")
                }
                previous = e.hash
                expected += 1
                after = e.sequence
            }
            if page.count < 1000 { break }
        }
        return Verification(entries: count, firstBroken: nil, reason: nil)
    }

    /// SHA-256 over the previous hash and every field, each length-prefixed so that no two different
    /// entries encode alike.
    static func hash(_ e: AuditEntry, previous: [UInt8]) -> [UInt8] {
        var h = SHA256()
        func put(_ bytes: [UInt8]) {
            withUnsafeBytes(of: UInt32(bytes.count).littleEndian) { h.update(bufferPointer: $0) }
            h.update(data: bytes)
        }
        put(previous)
        withUnsafeBytes(of: e.sequence.littleEndian) { h.update(bufferPointer: $0) }
        withUnsafeBytes(of: e.at.littleEndian) { h.update(bufferPointer: $0) }
        for field in [e.tenant, e.actor, e.action, e.target, e.source, e.outcome, e.detail] { put(Array(field.utf8)) }
        return Array(h.finalize())
    }

    static func entry(_ r: Row) -> AuditEntry {
        var e = AuditEntry(tenant: r.string("tenant_id") ?? "", actor: r.string("actor") ?? "", action: r.string("action") ?? "",
                           target: r.string("target") ?? "", source: r.string("source") ?? "", outcome: r.string("outcome") ?? "",
                           detail: r.string("detail") ?? "")
        e.sequence = r.int("seq") ?? 0
        e.at = r.int("at") ?? 0
        e.hash = r.bytes("hash") ?? []
        return e
    }
}
