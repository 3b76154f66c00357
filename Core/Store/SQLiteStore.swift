import CSQLite
import Foundation

/// The embedded engine: one SQLite file in write-ahead-log mode. One connection, used by one statement
/// at a time on its own serial queue (callers never block a cooperative thread); a transaction holds
/// the connection until it ends. Prepared statements are cached by their text.
public final class SQLiteStore: Store, @unchecked Sendable {
    public var engine: StoreEngine { .sqlite }
    let path: String
    private var db: OpaquePointer?
    private let queue = DispatchQueue(label: "iotc-store-sqlite")
    private let mutex = AsyncMutex()
    /// Only touched on `queue`.
    private var statements: [String: OpaquePointer] = [:]

    public init(path: String) throws {
        self.path = path
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        _ = Self.statementJournalsInMemory
        var handle: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        guard sqlite3_open_v2(path, &handle, flags, nil) == SQLITE_OK, let handle else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close(handle)
            throw StoreError(.connection, "cannot open SQLite database \(path): \(message)")
        }
        db = handle
        sqlite3_busy_timeout(handle, 5000)
        for pragma in ["PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON"] {
            _ = try run(pragma, [])
        }
    }

    /// Set once, before the first connection: a multi-row write of telemetry or device states keeps a
    /// statement journal of every page it changes, and in a temporary file that cost a write call per
    /// page. (`temp_store=MEMORY` would do it too, but also moves the telemetry queries' GROUP BY
    /// sorts from the page cache to SQLite's in-memory store, 10 to 15 % slower.)
    static let statementJournalsInMemory: Bool = iotc_sqlite3_statement_journals_in_memory() == SQLITE_OK

    deinit {
        for s in statements.values { sqlite3_finalize(s) }
        if let db { sqlite3_close_v2(db) }
    }

    public func close() async {
        await mutex.lock()
        queue.sync {
            for s in statements.values { sqlite3_finalize(s) }
            statements = [:]
            if let db { sqlite3_close_v2(db) }
            db = nil
        }
        await mutex.unlock()
    }

    @discardableResult
    public func execute(_ sql: String, _ parameters: [SQLValue]) async throws -> Int {
        try await locked { try await self.onQueue { try self.run(sql, parameters).changes } }
    }

    public func query(_ sql: String, _ parameters: [SQLValue]) async throws -> [Row] {
        try await locked { try await self.onQueue { try self.run(sql, parameters).rows } }
    }

    public func transaction<T: Sendable>(_ body: @Sendable (any StoreConnection) async throws -> T) async throws -> T {
        try await locked {
            // IMMEDIATE: take the write lock now, so that two writers never deadlock upgrading.
            _ = try await self.onQueue { try self.run("BEGIN IMMEDIATE", []) }
            do {
                let result = try await body(Transaction(store: self))
                _ = try await self.onQueue { try self.run("COMMIT", []) }
                return result
            } catch {
                _ = try? await self.onQueue { try self.run("ROLLBACK", []) }
                throw error
            }
        }
    }

    /// Statements inside a transaction: the connection is already held.
    struct Transaction: StoreConnection {
        let store: SQLiteStore
        var engine: StoreEngine { .sqlite }
        func execute(_ sql: String, _ parameters: [SQLValue]) async throws -> Int {
            try await store.onQueue { try store.run(sql, parameters).changes }
        }
        func query(_ sql: String, _ parameters: [SQLValue]) async throws -> [Row] {
            try await store.onQueue { try store.run(sql, parameters).rows }
        }
    }

    private func locked<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        await mutex.lock()
        do {
            let r = try await body()
            await mutex.unlock()
            return r
        } catch {
            await mutex.unlock()
            throw error
        }
    }

    private func onQueue<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { k in
            queue.async { k.resume(with: Result { try body() }) }
        }
    }

    /// Prepares (or reuses), binds and steps one statement. Must run on `queue` (or in `init`).
    private func run(_ sql: String, _ parameters: [SQLValue]) throws -> (rows: [Row], changes: Int) {
        guard let db else { throw StoreError(.connection, "the store is closed") }
        let stmt: OpaquePointer
        if let cached = statements[sql] {
            stmt = cached
        } else {
            var s: OpaquePointer?
            guard sqlite3_prepare_v2(db, sql, -1, &s, nil) == SQLITE_OK, let s else { throw error(db) }
            stmt = s
            if statements.count < 256 { statements[sql] = s }
        }
        let cached = statements[sql] == stmt
        defer {
            if cached {
                sqlite3_reset(stmt)
                sqlite3_clear_bindings(stmt)
            } else {
                sqlite3_finalize(stmt)
            }
        }
        let expected = Int(sqlite3_bind_parameter_count(stmt))
        guard expected == parameters.count else {
            throw StoreError(.statement, "the statement takes \(expected) parameters, \(parameters.count) were given")
        }
        for (i, p) in parameters.enumerated() {
            let index = Int32(i + 1)
            let r: Int32 = switch p {
            case .null: sqlite3_bind_null(stmt, index)
            case .integer(let v): sqlite3_bind_int64(stmt, index, v)
            case .real(let v): sqlite3_bind_double(stmt, index, v)
            case .text(let v): sqlite3_bind_text(stmt, index, v, -1, sqliteTransient)
            case .blob(let v): v.withUnsafeBytes { sqlite3_bind_blob(stmt, index, $0.baseAddress, Int32($0.count), sqliteTransient) }
            }
            guard r == SQLITE_OK else { throw error(db) }
        }
        let columnCount = Int(sqlite3_column_count(stmt))
        let columns = (0..<columnCount).map { String(cString: sqlite3_column_name(stmt, Int32($0))) }
        var rows: [Row] = []
        while true {
            let r = sqlite3_step(stmt)
            if r == SQLITE_DONE { break }
            guard r == SQLITE_ROW else { throw error(db) }
            var values: [SQLValue] = []
            values.reserveCapacity(columnCount)
            for c in 0..<Int32(columnCount) {
                switch sqlite3_column_type(stmt, c) {
                case SQLITE_INTEGER: values.append(.integer(sqlite3_column_int64(stmt, c)))
                case SQLITE_FLOAT: values.append(.real(sqlite3_column_double(stmt, c)))
                case SQLITE_TEXT: values.append(.text(String(cString: sqlite3_column_text(stmt, c))))
                case SQLITE_BLOB:
                    let n = Int(sqlite3_column_bytes(stmt, c))
                    let p = sqlite3_column_blob(stmt, c)
                    values.append(.blob(p.map { Array(UnsafeRawBufferPointer(start: $0, count: n)) } ?? []))
                default: values.append(.null)
                }
            }
            rows.append(Row(columns: columns, values: values))
        }
        return (rows, Int(sqlite3_changes(db)))
    }

    private func error(_ db: OpaquePointer) -> StoreError {
        let code = sqlite3_extended_errcode(db)
        let message = String(cString: sqlite3_errmsg(db))
        let kind: StoreError.Kind = switch code & 0xFF {
        case SQLITE_CONSTRAINT: .constraint
        case SQLITE_FULL, SQLITE_IOERR, SQLITE_BUSY, SQLITE_LOCKED, SQLITE_NOMEM, SQLITE_CANTOPEN, SQLITE_READONLY: .unavailable
        default: .statement
        }
        return StoreError(kind, "SQLite: \(message)")
    }
}

/// SQLite copies bound text and blobs with this destructor value.
private let sqliteTransient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

/// A lock for async code: waiters queue in order and no thread blocks.
actor AsyncMutex {
    private var held = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func lock() async {
        if !held {
            held = true
            return
        }
        await withCheckedContinuation { waiters.append($0) }
    }

    func unlock() {
        if waiters.isEmpty { held = false } else { waiters.removeFirst().resume() }
    }
}
