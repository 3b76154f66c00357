import Foundation
import Hummingbird
import IoTCPluginKit
import IoTCStore
import NIOCore

/// The API's request context: Hummingbird's, and the caller's address for the audit log.
public struct HubRequestContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }

    var caller: String { remoteAddress?.ipAddress ?? remoteAddress?.description ?? "" }

    /// A path parameter, percent-decoded (`%3A` is `:`, `%40` is `@`); malformed escapes are a 400.
    func parameter(_ name: String) throws -> String {
        let raw = try parameters.require(name)
        guard raw.contains("%") else { return raw }
        guard let decoded = raw.removingPercentEncoding else { throw APIProblem(.badRequest, "the path's \(name) has a malformed %-escape") }
        return decoded
    }
}

/// Who is calling: an API key and its tenant, and where from.
public struct Principal: Sendable {
    public let key: APIKey
    public let tenant: Tenant
    let source: String
    let audit: AuditLog
    let accounts: Accounts

    /// Appends to the audit log what this caller did (to its own tenant unless another is named).
    func record(_ action: String, target: String, tenant: String? = nil, outcome: String = "ok", detail: String = "") async {
        _ = try? await audit.record(AuditEntry(tenant: tenant ?? self.tenant.id, actor: "key:\(key.id)", action: action,
                                               target: target, source: source, outcome: outcome, detail: detail))
    }
}

/// What an endpoint needs of the caller's key.
enum Access {
    /// A key of the system tenant with at least this role: the hub's own operations (pipelines,
    /// plugins, dead letters, tenants).
    case hub(Role)
    /// A key of any tenant with at least this role; the handler confines it to its tenant.
    case tenant(Role)
}

/// Wraps a handler so that it runs only for a valid key with the access it needs. Missing or invalid
/// keys get 401 with `WWW-Authenticate: Bearer`, too little access 403; nothing else runs.
/// Failed authentications and refusals go to the audit log.
struct Guard: Sendable {
    let accounts: Accounts
    let audit: AuditLog
    /// The API key rate limit: the seconds to wait, or nil when the call may go ahead.
    let limit: @Sendable (String) -> Double?

    func callAsFunction(
        _ access: Access, _ body: @escaping @Sendable (Request, HubRequestContext, Principal) async throws -> Response
    ) -> @Sendable (Request, HubRequestContext) async throws -> Response {
        { request, context in
            let what = "\(request.method.rawValue) \(request.uri.path)"
            guard let header = request.headers[.authorization], header.hasPrefix("Bearer ") else {
                await failed(context, what, "no API key")
                return unauthorized("this needs an API key: Authorization: Bearer iotc_...")
            }
            let secret = String(header.dropFirst(7))
            guard let (key, tenant) = try await accounts.authenticate(secret) else {
                // The key's id, never its secret.
                await failed(context, what, Accounts.keyID(of: secret).map { "key id \($0): unknown, revoked or expired" } ?? "not an iotc_ key")
                return unauthorized("the API key is not valid: unknown, revoked or expired")
            }
            if let wait = limit(key.id) { return HubAPI.tooManyRequests("this API key is over its request rate", wait: wait) }
            let principal = Principal(key: key, tenant: tenant, source: context.caller, audit: audit, accounts: accounts)
            let needed: Role
            switch access {
            case .hub(let role):
                needed = role
                guard tenant.system else {
                    await principal.record("access.denied", target: what, outcome: "denied", detail: "needs a key of the system tenant")
                    return HubAPI.problem(.forbidden, "this is an operation on the hub itself: it needs a key of the system tenant")
                }
            case .tenant(let role):
                needed = role
            }
            guard key.role >= needed else {
                await principal.record("access.denied", target: what, outcome: "denied", detail: "needs the role \(needed.rawValue)")
                return HubAPI.problem(.forbidden, "this needs the role \(needed.rawValue) or higher; the key has \(key.role.rawValue)")
            }
            // A key limited to some areas of the API (the OpenAPI document's tags) reaches only those.
            if !key.scopes.isEmpty, let scope = OpenAPI.scope(method: request.method.rawValue, path: request.uri.path), !key.reaches(scope) {
                await principal.record("access.denied", target: what, outcome: "denied", detail: "outside the key's scopes (needs \(scope))")
                return HubAPI.problem(.forbidden, "this key is limited to \(key.scopes.joined(separator: ", ")); this is in \(scope)")
            }
            // Refusals (APIProblem, store constraints) answer as problem documents, whatever the handler.
            return try await AccountsAPI.answer { try await body(request, context, principal) }
        }
    }

    private func failed(_ context: HubRequestContext, _ what: String, _ detail: String) async {
        _ = try? await audit.record(AuditEntry(tenant: "system", actor: "anonymous", action: "auth.failed", target: what,
                                               source: context.caller, outcome: "denied", detail: detail))
    }

    private func unauthorized(_ detail: String) -> Response {
        var r = HubAPI.problem(.unauthorized, detail)
        r.headers[.wwwAuthenticate] = #"Bearer realm="iotc""#
        return r
    }
}

/// A request body that is a JSON object with only known fields; anything else is a 400 with the reason.
struct JSONBody {
    let fields: Value.Object

    static func read(_ request: Request, allowed: Set<String>, limit: Int = 64 << 10) async throws -> JSONBody {
        try await read(request, allowed: allowed, limit: limit, emptyIsNull: false)!
    }

    /// As `read`; an empty body is nil when `emptyIsNull`.
    static func read(_ request: Request, allowed: Set<String>, limit: Int, emptyIsNull: Bool) async throws -> JSONBody? {
        let buffer = try await collect(request, upTo: limit)
        if emptyIsNull, buffer.readableBytes == 0 { return nil }
        let value: Value
        do { value = try JSON.decode(Array(buffer.readableBytesView)) } catch {
            throw APIProblem(.badRequest, "the body is not valid JSON: \(error)")
        }
        guard case .object(let o) = value else { throw APIProblem(.badRequest, "the body should be a JSON object") }
        if let unknown = o.keys.first(where: { !allowed.contains($0) }) {
            throw APIProblem(.badRequest, "unknown field '\(unknown.prefix(64))'; known fields: \(allowed.sorted().joined(separator: ", "))")
        }
        return JSONBody(fields: o)
    }

    func string(_ name: String, required: Bool = false) throws -> String? {
        switch fields[name] {
        case nil, .null?:
            if required { throw APIProblem(.badRequest, "the field '\(name)' is required") }
            return nil
        case .string(let s)?: return s
        default: throw APIProblem(.badRequest, "the field '\(name)' should be a string")
        }
    }

    /// A list of strings.
    func list(_ name: String) throws -> [String]? {
        switch fields[name] {
        case nil, .null?: return nil
        case .array(let items)?:
            return try items.map { item in
                guard case .string(let s) = item else { throw APIProblem(.badRequest, "'\(name)' should be a list of strings") }
                return s
            }
        default: throw APIProblem(.badRequest, "the field '\(name)' should be a list of strings")
        }
    }

    /// An object of strings (labels).
    func strings(_ name: String) throws -> [String: String]? {
        switch fields[name] {
        case nil, .null?: return nil
        case .object(let o)?:
            var out: [String: String] = [:]
            for (k, v) in o {
                guard case .string(let s) = v else { throw APIProblem(.badRequest, "'\(name).\(k.prefix(64))' should be a string") }
                out[k] = s
            }
            return out
        default: throw APIProblem(.badRequest, "the field '\(name)' should be an object of strings")
        }
    }

    /// `expires_in` (seconds, one minute to ten years) as an expiry time in milliseconds since the epoch.
    func expiry() throws -> Int64? {
        guard let seconds = try integer("expires_in") else { return nil }
        guard (60...(10 * 365 * 86400)).contains(seconds) else { throw APIProblem(.badRequest, "expires_in is in seconds, from 60 to ten years") }
        return Int64(Date().timeIntervalSince1970 * 1000) + seconds * 1000
    }

    func number(_ name: String) throws -> Double? {
        switch fields[name] {
        case nil, .null?: return nil
        case .int(let i)?: return Double(i)
        case .double(let d)?: return d
        default: throw APIProblem(.badRequest, "the field '\(name)' should be a number")
        }
    }

    func integer(_ name: String) throws -> Int64? {
        switch fields[name] {
        case nil, .null?: return nil
        case .int(let i)?: return i
        case .double(let d)? where d == d.rounded() && abs(d) < 9e15: return Int64(d)
        default: throw APIProblem(.badRequest, "the field '\(name)' should be an integer")
        }
    }
}

/// A request's whole body, at most `limit` bytes; a larger one is a 413 that says the limit.
func collect(_ request: Request, upTo limit: Int) async throws -> ByteBuffer {
    do { return try await request.body.collect(upTo: limit) } catch {
        throw APIProblem(.contentTooLarge, "the body is over \(limit) bytes")
    }
}

/// A request's query parameters, checked: a value given twice, or a number that is not one, is a 400
/// with the reason, never silently a default.
struct Query {
    let request: Request

    init(_ request: Request) { self.request = request }

    func string(_ name: String) throws -> String? {
        let all = request.uri.queryParameters.getAll(name)
        guard all.count <= 1 else { throw APIProblem(.badRequest, "?\(name) is given \(all.count) times") }
        return all.first
    }

    func integer(_ name: String, _ range: ClosedRange<Int64>) throws -> Int64? {
        guard let text = try string(name) else { return nil }
        guard let v = Int64(text), range.contains(v) else {
            throw APIProblem(.badRequest, "?\(name) is an integer from \(range.lowerBound) to \(range.upperBound)")
        }
        return v
    }

    /// `?limit=`: 1 to `max`, `fallback` when absent.
    func limit(max: Int64 = 1000, fallback: Int64 = 100) throws -> Int { Int(try integer("limit", 1...max) ?? fallback) }

    func boolean(_ name: String) throws -> Bool? {
        guard let text = try string(name) else { return nil }
        guard text == "true" || text == "false" else { throw APIProblem(.badRequest, "?\(name) is true or false") }
        return text == "true"
    }
}

/// An error that answers as a problem document.
struct APIProblem: Error {
    let status: HTTPResponse.Status
    let detail: String
    init(_ status: HTTPResponse.Status, _ detail: String) {
        self.status = status
        self.detail = detail
    }
}
