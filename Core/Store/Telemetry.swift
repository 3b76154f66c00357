import Foundation

/// One time-series point: a numeric value of a device's key at a time (milliseconds since the epoch).
public struct TelemetryPoint: Sendable, Equatable {
    public var tenant: String
    public var device: String
    public var key: String
    public var time: Int64
    public var value: Double

    public init(tenant: String, device: String, key: String, time: Int64, value: Double) {
        self.tenant = tenant
        self.device = device
        self.key = key
        self.time = time
        self.value = value
    }
}

/// Time series in the store: written in batches (a point written twice is kept once, so redelivery
/// after a crash changes nothing), read by device, key and time range, raw or in buckets.
public struct Telemetry: Sendable {
    public let store: any Store

    public init(store: any Store) { self.store = store }

    public enum Aggregate: String, Sendable, CaseIterable { case min, max, avg, sum, count, last }

    /// Rows per INSERT statement (five parameters each).
    static let rowsPerStatement = 200

    /// Writes points in one transaction.
    public func write(_ points: [TelemetryPoint]) async throws {
        guard !points.isEmpty else { return }
        try await store.transaction { db in
            for chunk in points.statementRuns(of: Self.rowsPerStatement) {
                var params: [SQLValue] = []
                params.reserveCapacity(chunk.count * 5)
                for p in chunk { params += [.text(p.tenant), .text(p.device), .text(p.key), .integer(p.time), .real(p.value)] }
                try await db.execute("""
                    INSERT INTO telemetry (tenant_id, device_id, key, ts, value) VALUES \(rowPlaceholders(chunk.count, columns: 5))
                    ON CONFLICT (tenant_id, device_id, key, ts) DO NOTHING
                    """, params)
            }
        }
    }

    /// Points of one key in [from, to), oldest first.
    public func points(tenant: String, device: String, key: String, from: Int64, to: Int64, limit: Int = 10_000) async throws -> [(time: Int64, value: Double)] {
        try await store.query("""
            SELECT ts, value FROM telemetry WHERE tenant_id = ? AND device_id = ? AND key = ? AND ts >= ? AND ts < ?
            ORDER BY ts LIMIT ?
            """, [.text(tenant), .text(device), .text(key), .integer(from), .integer(to), .integer(Int64(limit))])
            .map { ($0.int("ts") ?? 0, $0.double("value") ?? 0) }
    }

    /// One aggregate per bucket of `bucket` milliseconds in [from, to), oldest first; empty buckets
    /// are left out. A bucket is named by its start.
    /// One aggregate per bucket that has points, the first `limit` buckets.
    public func aggregate(tenant: String, device: String, key: String, from: Int64, to: Int64, bucket: Int64,
                          _ aggregate: Aggregate, limit: Int = 100_000) async throws -> [(time: Int64, value: Double)] {
        let range: [SQLValue] = [.text(tenant), .text(device), .text(key), .integer(from), .integer(to)]
        let rows: [Row]
        if aggregate == .last {
            // The latest point in each bucket.
            rows = try await store.query("""
                SELECT b, value FROM (
                    SELECT (ts - ?) / ? AS b, value, ROW_NUMBER() OVER (PARTITION BY (ts - ?) / ? ORDER BY ts DESC) AS rn
                    FROM telemetry WHERE tenant_id = ? AND device_id = ? AND key = ? AND ts >= ? AND ts < ?) AS ranked
                WHERE rn = 1 ORDER BY b LIMIT \(max(1, limit))
                """, [.integer(from), .integer(bucket), .integer(from), .integer(bucket)] + range)
        } else {
            let f = aggregate == .count ? "COUNT(value)" : "\(aggregate.rawValue.uppercased())(value)"
            rows = try await store.query("""
                SELECT (ts - ?) / ? AS b, \(f) AS value FROM telemetry
                WHERE tenant_id = ? AND device_id = ? AND key = ? AND ts >= ? AND ts < ?
                GROUP BY b ORDER BY b LIMIT \(max(1, limit))
                """, [.integer(from), .integer(bucket)] + range)
        }
        return rows.map { (from + ($0.int("b") ?? 0) * bucket, $0.double("value") ?? 0) }
    }

    /// The latest point of every key of a device.
    public func latest(tenant: String, device: String) async throws -> [(key: String, time: Int64, value: Double)] {
        try await store.query("""
            SELECT t.key, t.ts, t.value FROM telemetry t
            WHERE t.tenant_id = ? AND t.device_id = ?
              AND t.ts = (SELECT MAX(ts) FROM telemetry WHERE tenant_id = t.tenant_id AND device_id = t.device_id AND key = t.key)
            ORDER BY t.key
            """, [.text(tenant), .text(device)]).map { ($0.string("key") ?? "", $0.int("ts") ?? 0, $0.double("value") ?? 0) }
    }

    /// Deletes a tenant's points older than `before`; returns how many.
    @discardableResult
    public func deleteOlder(tenant: String, than before: Int64) async throws -> Int {
        try await store.execute("DELETE FROM telemetry WHERE tenant_id = ? AND ts < ?", [.text(tenant), .integer(before)])
    }
}
