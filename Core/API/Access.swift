import Foundation
import Hummingbird
import IoTCPluginKit
import IoTCStore

/// Who is calling: an API key and its tenant.
public struct Principal: Sendable {
    public let key: APIKey
    public let tenant: Tenant
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
struct Guard: Sendable {
    let accounts: Accounts

    func callAsFunction(
        _ access: Access, _ body: @escaping @Sendable (Request, BasicRequestContext, Principal) async throws -> Response
    ) -> @Sendable (Request, BasicRequestContext) async throws -> Response {
        { request, context in
            guard let header = request.headers[.authorization], header.hasPrefix("Bearer ") else {
                return unauthorized("this needs an API key: Authorization: Bearer iotc_...")
            }
            guard let (key, tenant) = try await accounts.authenticate(String(header.dropFirst(7))) else {
                return unauthorized("the API key is not valid: unknown, revoked or expired")
            }
            switch access {
            case .hub(let role):
                guard tenant.system else { return HubAPI.problem(.forbidden, "this is an operation on the hub itself: it needs a key of the system tenant") }
                guard key.role >= role else { return HubAPI.problem(.forbidden, "this needs the role \(role.rawValue) or higher; the key has \(key.role.rawValue)") }
            case .tenant(let role):
                guard key.role >= role else { return HubAPI.problem(.forbidden, "this needs the role \(role.rawValue) or higher; the key has \(key.role.rawValue)") }
            }
            return try await body(request, context, Principal(key: key, tenant: tenant))
        }
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
        let buffer: ByteBuffer
        do { buffer = try await request.body.collect(upTo: limit) } catch {
            throw APIProblem(.contentTooLarge, "the body is over \(limit) bytes")
        }
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

    func integer(_ name: String) throws -> Int64? {
        switch fields[name] {
        case nil, .null?: return nil
        case .int(let i)?: return i
        default: throw APIProblem(.badRequest, "the field '\(name)' should be an integer")
        }
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
