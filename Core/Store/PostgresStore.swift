import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO

/// The PostgreSQL engine, for scale and for several hub nodes on one database: a pool of connections
/// (postgres-nio), statements written with `?` placeholders like the SQLite engine's and numbered here.
public final class PostgresStore: Store, @unchecked Sendable {
    public var engine: StoreEngine { .postgres }
    private let client: PostgresClient
    private let runner: Task<Void, Never>

    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?PARAMETERS]`; the password may also come from
    /// PGPASSWORD. The parameters are libpq's for TLS (`TLSSettings`).
    public init(url: String, logger: Logger = Logger(label: "iotc.store")) async throws {
        guard let c = URLComponents(string: url), let host = c.host, !host.isEmpty, let user = c.user, !user.isEmpty else {
            throw StoreError(.connection, "a PostgreSQL store URL reads postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
        }
        let database = String(c.path.drop { $0 == "/" })
        let password = c.password?.removingPercentEncoding ?? ProcessInfo.processInfo.environment["PGPASSWORD"]
        let port = c.port ?? 5432, username = user.removingPercentEncoding ?? user
        let tls = try TLSSettings(c.queryItems ?? [])
        // One direct connection first: the pool would keep retrying a server that is not there, and
        // its error names the cause. The URL's password is never part of the message.
        do {
            let probe = try await PostgresConnection.connect(
                on: MultiThreadedEventLoopGroup.singleton.any(),
                configuration: .init(host: host, port: port, username: username, password: password,
                                     database: database.isEmpty ? nil : database, tls: try tls.connectionTLS()),
                id: 0, logger: logger).get()
            try await probe.close()
        } catch {
            throw StoreError(.connection, "cannot connect to PostgreSQL at \(host):\(port) as \(username) (sslmode=\(tls.mode.rawValue)): \(Self.describe(error))")
        }
        var config = PostgresClient.Configuration(host: host, port: port, username: username, password: password,
                                                  database: database.isEmpty ? nil : database, tls: tls.clientTLS)
        config.options.maximumConnections = 8
        let client = PostgresClient(configuration: config, backgroundLogger: logger)
        self.client = client
        runner = Task { await client.run() }
    }

    /// TLS to the server, from the URL's parameters as libpq reads them: `sslmode` (`disable`; `prefer`,
    /// the default: TLS when the server offers it; `require`: TLS or no connection; `verify-ca`: and a
    /// certificate that `sslrootcert`, or the system's roots, vouch for; `verify-full`: and one that
    /// names the host), `sslrootcert`, and `sslcert` with `sslkey` for a client certificate. `prefer`
    /// and `require` check no certificate, as in libpq: they keep out eavesdroppers, not impostors.
    struct TLSSettings {
        enum Mode: String, CaseIterable {
            case disable, prefer, require, verifyCA = "verify-ca", verifyFull = "verify-full"
        }
        var mode = Mode.prefer
        var configuration = TLSConfiguration.makeClientConfiguration()

        init(_ items: [URLQueryItem]) throws {
            var rootFile: String?, certFile: String?, keyFile: String?
            for item in items {
                let value = item.value ?? ""
                switch item.name {
                case "sslmode":
                    guard let m = Mode(rawValue: value) else {
                        throw StoreError(.connection, "sslmode '\(value)' is not one of \(Mode.allCases.map(\.rawValue).joined(separator: ", "))")
                    }
                    mode = m
                case "sslrootcert": rootFile = value
                case "sslcert": certFile = value
                case "sslkey": keyFile = value
                default:
                    throw StoreError(.connection, "the store URL's parameter '\(item.name)' is not known (known: sslmode, sslrootcert, sslcert, sslkey)")
                }
            }
            switch mode {
            case .disable, .prefer, .require: configuration.certificateVerification = .none
            case .verifyCA: configuration.certificateVerification = .noHostnameVerification
            case .verifyFull: configuration.certificateVerification = .fullVerification
            }
            func read<T>(_ parameter: String, _ path: String, _ load: (String) throws -> T) throws -> T {
                do { return try load(path) } catch {
                    throw StoreError(.connection, "cannot read the store URL's \(parameter) '\(path)': \(error)")
                }
            }
            if let rootFile {
                configuration.trustRoots = .certificates(try read("sslrootcert", rootFile) { try NIOSSLCertificate.fromPEMFile($0) })
            }
            guard (certFile == nil) == (keyFile == nil) else { throw StoreError(.connection, "the store URL's sslcert and sslkey go together") }
            if let certFile, let keyFile {
                configuration.certificateChain = try read("sslcert", certFile) { try NIOSSLCertificate.fromPEMFile($0).map { .certificate($0) } }
                configuration.privateKey = .privateKey(try read("sslkey", keyFile) { try NIOSSLPrivateKey(file: $0, format: .pem) })
            }
        }

        var clientTLS: PostgresClient.Configuration.TLS {
            switch mode {
            case .disable: .disable
            case .prefer: .prefer(configuration)
            case .require, .verifyCA, .verifyFull: .require(configuration)
            }
        }

        func connectionTLS() throws -> PostgresConnection.Configuration.TLS {
            switch mode {
            case .disable: .disable
            case .prefer: .prefer(try NIOSSLContext(configuration: configuration))
            case .require, .verifyCA, .verifyFull: .require(try NIOSSLContext(configuration: configuration))
            }
        }
    }

    public func close() async {
        runner.cancel()
        _ = await runner.value
    }

    @discardableResult
    public func execute(_ sql: String, _ parameters: [SQLValue]) async throws -> Int {
        try await client.withConnection { try await Self.run($0, sql, parameters).changes }
    }

    public func query(_ sql: String, _ parameters: [SQLValue]) async throws -> [Row] {
        try await client.withConnection { try await Self.run($0, sql, parameters).rows }
    }

    public func transaction<T: Sendable>(_ body: @Sendable (any StoreConnection) async throws -> T) async throws -> T {
        try await client.withConnection { conn in
            _ = try await Self.run(conn, "BEGIN", [])
            do {
                let result = try await body(Transaction(connection: conn))
                _ = try await Self.run(conn, "COMMIT", [])
                return result
            } catch {
                _ = try? await Self.run(conn, "ROLLBACK", [])
                throw error
            }
        }
    }

    struct Transaction: StoreConnection, @unchecked Sendable {
        let connection: PostgresConnection
        var engine: StoreEngine { .postgres }
        func execute(_ sql: String, _ parameters: [SQLValue]) async throws -> Int {
            try await PostgresStore.run(connection, sql, parameters).changes
        }
        func query(_ sql: String, _ parameters: [SQLValue]) async throws -> [Row] {
            try await PostgresStore.run(connection, sql, parameters).rows
        }
    }

    static func run(_ conn: PostgresConnection, _ sql: String, _ parameters: [SQLValue]) async throws -> (rows: [Row], changes: Int) {
        let (text, count) = numberPlaceholders(sql)
        guard count == parameters.count else {
            throw StoreError(.statement, "the statement takes \(count) parameters, \(parameters.count) were given")
        }
        let binds: [PostgresData] = parameters.map {
            switch $0 {
            case .null: .null
            case .integer(let v): PostgresData(int64: v)
            case .real(let v): PostgresData(double: v)
            case .text(let v): PostgresData(string: v)
            case .blob(let v): PostgresData(bytes: v)
            }
        }
        let result: PostgresQueryResult
        do {
            result = try await conn.query(text, binds).get()
        } catch {
            throw StoreError(kind(of: error), "PostgreSQL: \(describe(error))")
        }
        let rows = try result.rows.map { row in
            var columns: [String] = [], values: [SQLValue] = []
            for cell in row {
                columns.append(cell.columnName)
                values.append(try value(cell))
            }
            return Row(columns: columns, values: values)
        }
        return (rows, result.metadata.rows ?? 0)
    }

    private static func value(_ cell: PostgresCell) throws -> SQLValue {
        guard cell.bytes != nil else { return .null }
        switch cell.dataType {
        case .int2, .int4, .int8, .oid: return .integer(try cell.decode(Int64.self))
        case .bool: return .integer(try cell.decode(Bool.self) ? 1 : 0)
        case .float4, .float8: return .real(try cell.decode(Double.self))
        case .numeric: return .real(Double(try cell.decode(String.self)) ?? .nan)
        case .bytea: return .blob(Array(try cell.decode(ByteBuffer.self).readableBytesView))
        default:
            if let s = try? cell.decode(String.self) { return .text(s) }
            return .blob(Array(cell.bytes!.readableBytesView))
        }
    }

    /// `?` becomes `$1`, `$2`, ...; question marks inside quotes, identifiers and comments stay.
    static func numberPlaceholders(_ sql: String) -> (String, Int) {
        var out = "", n = 0
        var quote: Character?
        var lineComment = false
        var previous: Character = " "
        for ch in sql {
            if lineComment {
                if ch == "\n" { lineComment = false }
            } else if let q = quote {
                if ch == q { quote = nil }
            } else if ch == "'" || ch == "\"" {
                quote = ch
            } else if ch == "-" && previous == "-" {
                lineComment = true
            } else if ch == "?" {
                n += 1
                out += "$\(n)"
                previous = ch
                continue
            }
            out.append(ch)
            previous = ch
        }
        return (out, n)
    }

    /// SQLSTATE class 23 is an integrity constraint violation; 53 (insufficient resources: a full disk,
    /// out of memory, too many connections), 08 (connection exception) and 57P (the server shutting
    /// down or restarting) say the store cannot work now. An error without a SQLSTATE did not come
    /// from the server: the connection failed.
    private static func kind(of error: any Error) -> StoreError.Kind {
        guard let state = sqlState(error) else { return .unavailable }
        if state.hasPrefix("23") { return .constraint }
        if state.hasPrefix("53") || state.hasPrefix("08") || state.hasPrefix("57P") { return .unavailable }
        return .statement
    }

    /// The server's SQLSTATE, from either error type postgres-nio throws.
    private static func sqlState(_ error: any Error) -> String? {
        if let e = error as? PSQLError { return e.serverInfo?[.sqlState] }
        if case .server(let e) = error as? PostgresError { return e.fields[.sqlState] }
        return nil
    }

    private static func describe(_ error: any Error) -> String {
        if let e = error as? PSQLError {
            if e.code == .sslUnsupported { return "the server does not offer TLS" }
            if let underlying = e.underlying { return e.serverInfo?[.message] ?? "\(e.code): \(underlying)" }
            return e.serverInfo?[.message] ?? "\(e.code)"
        }
        if case .server(let e) = error as? PostgresError { return e.fields[.message] ?? e.description }
        return "\(error)"
    }
}
