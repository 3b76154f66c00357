import Foundation

/// A command sent to a device, and what became of it.
public struct DeviceCommand: Sendable, Equatable {
    /// `queued` (waiting for the device), `delivered` (the device has it), `succeeded` or `failed`
    /// (the device answered), `expired` (not delivered, or not answered, before its expiry).
    public enum Status: String, Sendable, CaseIterable {
        case queued, delivered, succeeded, failed, expired
        public var isFinal: Bool { self == .succeeded || self == .failed || self == .expired }
    }

    public var id: String
    public var tenant: String
    public var device: String
    public var name: String
    /// JSON text.
    public var payload: String
    public var status: Status
    /// The device's answer (JSON text).
    public var result: String?
    public var detail: String
    public var createdAt: Int64
    public var expiresAt: Int64
    public var deliveredAt: Int64?
    public var completedAt: Int64?
}

/// Commands in the store. Every change of status is one conditional UPDATE, so a late answer cannot
/// undo an expiry, and an answer counts once.
public struct Commands: Sendable {
    public let store: any Store
    let clock: @Sendable () -> Int64

    public init(store: any Store, clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) }) {
        self.store = store
        self.clock = clock
    }

    static let idAlphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789".utf8)

    /// A new command id: `cmd-` and 20 random characters (a valid MQTT topic level and URL segment).
    public static func newID() -> String {
        var g = SystemRandomNumberGenerator()
        return "cmd-" + String(decoding: (0..<20).map { _ in idAlphabet[Int(g.next(upperBound: UInt(idAlphabet.count)))] }, as: UTF8.self)
    }

    public func create(tenant: String, device: String, name: String, payload: String, expiresAt: Int64) async throws -> DeviceCommand {
        let now = clock()
        let c = DeviceCommand(id: Self.newID(), tenant: tenant, device: device, name: name, payload: payload, status: .queued, result: nil,
                              detail: "", createdAt: now, expiresAt: expiresAt, deliveredAt: nil, completedAt: nil)
        _ = try await store.execute("""
            INSERT INTO commands (id, tenant_id, device_id, name, payload, status, created_at, expires_at)
            VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)
            """, [.text(c.id), .text(tenant), .text(device), .text(name), .text(payload), .integer(now), .integer(expiresAt)])
        return c
    }

    public func get(tenant: String, id: String) async throws -> DeviceCommand? {
        try await store.query("SELECT * FROM commands WHERE tenant_id = ? AND id = ?", [.text(tenant), .text(id)]).first.map(Self.command)
    }

    /// A device's latest commands, newest first, optionally of one status.
    public func list(tenant: String, device: String, status: DeviceCommand.Status? = nil, limit: Int) async throws -> [DeviceCommand] {
        var sql = "SELECT * FROM commands WHERE tenant_id = ? AND device_id = ?"
        var params: [SQLValue] = [.text(tenant), .text(device)]
        if let status {
            sql += " AND status = ?"
            params.append(.text(status.rawValue))
        }
        sql += " ORDER BY created_at DESC, id DESC LIMIT \(max(1, min(limit, 1000)))"
        return try await store.query(sql, params).map(Self.command)
    }

    /// Commands still waiting for their device and not expired, oldest first.
    public func queued(limit: Int = 1000) async throws -> [DeviceCommand] {
        try await store.query("SELECT * FROM commands WHERE status = 'queued' AND expires_at > ? ORDER BY created_at, id LIMIT \(limit)",
                              [.integer(clock())]).map(Self.command)
    }

    /// How many commands are still open (queued, or delivered and not answered).
    public func openCount() async throws -> Int {
        Int(try await store.query("SELECT COUNT(*) AS n FROM commands WHERE status IN ('queued', 'delivered')").first?.int("n") ?? 0)
    }

    /// Queued → delivered. False when it was no longer queued.
    @discardableResult
    public func markDelivered(id: String) async throws -> Bool {
        try await store.execute("UPDATE commands SET status = 'delivered', delivered_at = ? WHERE id = ? AND status = 'queued'",
                                [.integer(clock()), .text(id)]) > 0
    }

    /// The device's answer: queued or delivered → succeeded or failed. Only the device the command was
    /// for can answer it, and only before its expiry. False when nothing changed.
    @discardableResult
    public func complete(tenant: String, device: String, id: String, succeeded: Bool, result: String) async throws -> Bool {
        let now = clock()
        return try await store.execute("""
            UPDATE commands SET status = ?, result = ?, completed_at = ?, delivered_at = COALESCE(delivered_at, ?)
            WHERE id = ? AND tenant_id = ? AND device_id = ? AND status IN ('queued', 'delivered') AND expires_at > ?
            """, [.text(succeeded ? "succeeded" : "failed"), .text(result), .integer(now), .integer(now),
                  .text(id), .text(tenant), .text(device), .integer(now)]) > 0
    }

    /// Marks every queued or delivered command past its expiry as expired; returns how many.
    @discardableResult
    public func expire() async throws -> Int {
        let now = clock()
        return try await store.execute("""
            UPDATE commands SET completed_at = ?,
                detail = CASE WHEN status = 'queued' THEN 'not delivered before the expiry' ELSE 'not answered before the expiry' END,
                status = 'expired'
            WHERE status IN ('queued', 'delivered') AND expires_at <= ?
            """, [.integer(now), .integer(now)])
    }

    static func command(_ r: Row) -> DeviceCommand {
        DeviceCommand(id: r.string("id") ?? "", tenant: r.string("tenant_id") ?? "", device: r.string("device_id") ?? "",
                      name: r.string("name") ?? "", payload: r.string("payload") ?? "null",
                      status: r.string("status").flatMap(DeviceCommand.Status.init(rawValue:)) ?? .queued,
                      result: r.string("result"), detail: r.string("detail") ?? "", createdAt: r.int("created_at") ?? 0,
                      expiresAt: r.int("expires_at") ?? 0, deliveredAt: r.int("delivered_at"), completedAt: r.int("completed_at"))
    }
}
