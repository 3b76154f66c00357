import Foundation

/// A value bound to or read from a statement. The same five kinds on both engines: SQLite's storage
/// classes, and on PostgreSQL `bigint`, `double precision`, `text` and `bytea` (booleans and smaller
/// integers read as integers).
public enum SQLValue: Sendable, Equatable, Hashable {
    case null
    case integer(Int64)
    case real(Double)
    case text(String)
    case blob([UInt8])
}

extension SQLValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByNilLiteral, ExpressibleByFloatLiteral {
    public init(stringLiteral value: String) { self = .text(value) }
    public init(integerLiteral value: Int64) { self = .integer(value) }
    public init(nilLiteral: ()) { self = .null }
    public init(floatLiteral value: Double) { self = .real(value) }

    public init(_ s: String?) { self = s.map { .text($0) } ?? .null }
    public init(_ i: Int64?) { self = i.map { .integer($0) } ?? .null }
    public init(_ i: Int) { self = .integer(Int64(i)) }
}

/// One result row: values in column order, readable by column name.
public struct Row: Sendable, Equatable {
    public let columns: [String]
    public let values: [SQLValue]

    public init(columns: [String], values: [SQLValue]) {
        self.columns = columns
        self.values = values
    }

    public subscript(_ column: String) -> SQLValue {
        guard let i = columns.firstIndex(of: column) else { return .null }
        return values[i]
    }

    public func string(_ column: String) -> String? {
        switch self[column] {
        case .text(let s): s
        case .integer(let i): String(i)
        case .real(let d): String(d)
        case .blob(let b): String(decoding: b, as: UTF8.self)
        case .null: nil
        }
    }

    public func int(_ column: String) -> Int64? {
        switch self[column] {
        case .integer(let i): i
        case .real(let d): Int64(exactly: d.rounded(.towardZero))
        case .text(let s): Int64(s)
        default: nil
        }
    }

    public func double(_ column: String) -> Double? {
        switch self[column] {
        case .real(let d): d
        case .integer(let i): Double(i)
        case .text(let s): Double(s)
        default: nil
        }
    }

    public func bytes(_ column: String) -> [UInt8]? {
        switch self[column] {
        case .blob(let b): b
        case .text(let s): Array(s.utf8)
        default: nil
        }
    }
}

/// The engines a store can run on.
public enum StoreEngine: String, Sendable, CaseIterable {
    case sqlite
    case postgres
}

/// Statements on one connection. SQL is written once for both engines, with `?` placeholders (the
/// PostgreSQL engine numbers them); where the dialects differ, a caller asks `engine`.
public protocol StoreConnection: Sendable {
    var engine: StoreEngine { get }
    /// Runs a statement; returns the number of rows it changed.
    @discardableResult
    func execute(_ sql: String, _ parameters: [SQLValue]) async throws -> Int
    func query(_ sql: String, _ parameters: [SQLValue]) async throws -> [Row]
}

extension StoreConnection {
    @discardableResult
    public func execute(_ sql: String) async throws -> Int { try await execute(sql, []) }
    public func query(_ sql: String) async throws -> [Row] { try await query(sql, []) }
}

/// The hub's store: tenants, devices, credentials, audit and telemetry live here. Two engines pass the
/// same tests: SQLite, embedded (one file in the data directory, nothing to install), and PostgreSQL,
/// for scale and for several hub nodes sharing one database.
public protocol Store: StoreConnection {
    /// Runs `body` in one transaction: committed when it returns, rolled back when it throws.
    func transaction<T: Sendable>(_ body: @Sendable (any StoreConnection) async throws -> T) async throws -> T
    func close() async
}

/// A store failure, with the engine's own message (never the statement's parameters, which may hold
/// secrets).
public struct StoreError: Error, CustomStringConvertible, Sendable {
    /// `unavailable`: the store cannot do it now, whatever was asked (its disk is full, an I/O error,
    /// it is busy or out of memory, the connection to the server is lost); worth trying again later.
    public enum Kind: Sendable { case connection, statement, constraint, migration, unavailable }
    public var kind: Kind
    public var description: String

    public init(_ kind: Kind, _ description: String) {
        self.kind = kind
        self.description = description
    }
}

/// Opens a store from its URL: `sqlite:PATH` (a file, created when missing) or
/// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`. Schema migrations run before it is returned.
public func openStore(_ url: String, migrations: [Migration] = Schema.migrations) async throws -> any Store {
    let store: any Store
    if url.hasPrefix("sqlite:") {
        store = try SQLiteStore(path: String(url.dropFirst("sqlite:".count)))
    } else if url.hasPrefix("postgres://") || url.hasPrefix("postgresql://") {
        store = try await PostgresStore(url: url)
    } else {
        throw StoreError(.connection, "unknown store URL (use sqlite:PATH or postgres://USER@HOST:PORT/DATABASE)")
    }
    do {
        try await Migrator(migrations).run(on: store)
    } catch {
        await store.close()
        throw error
    }
    return store
}

/// `(?, ?), (?, ?)`: the VALUES of a multi-row statement of `rows` rows of `columns` parameters.
func rowPlaceholders(_ rows: Int, columns: Int) -> String {
    let row = "(" + Array(repeating: "?", count: columns).joined(separator: ", ") + ")"
    return Array(repeating: row, count: rows).joined(separator: ", ")
}

extension Collection {
    /// The rows in runs for multi-row statements: runs of `limit`, then the rest in runs of powers of
    /// two, so that the statements prepared and cached for them take a few shapes (the SQLite engine
    /// keeps 256), not one per remainder.
    func statementRuns(of limit: Int) -> [SubSequence] {
        var runs: [SubSequence] = []
        var rest = self[...]
        while !rest.isEmpty {
            var n = Swift.min(limit, rest.count)
            if n < limit { n = 1 << (Int.bitWidth - 1 - n.leadingZeroBitCount) }  // the largest power of two ≤ n
            runs.append(rest.prefix(n))
            rest = rest.dropFirst(n)
        }
        return runs
    }
}
