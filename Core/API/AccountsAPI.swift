import Foundation
import Hummingbird
import IoTCPluginKit
import IoTCKernel
import IoTCStore

/// Tenants and API keys. A tenant's keys see only that tenant: another tenant's resources answer 404,
/// as if they did not exist. Keys of the system tenant administer all tenants.
enum AccountsAPI {
    static func add(to router: Router<HubRequestContext>, accounts: Accounts, audit: AuditLog, guarded: Guard) {
        router.get("/v1/whoami", use: guarded(.tenant(.viewer)) { _, _, p in
            HubAPI.json(.object(Value.Object([("key", json(p.key)), ("tenant", json(p.tenant))])))
        })

        router.get("/v1/tenants", use: guarded(.tenant(.viewer)) { _, _, p in
            let list = p.tenant.system ? try await accounts.tenants() : [p.tenant]
            return HubAPI.json(.object(Value.Object([("items", .array(list.map(json)))])))
        })
        router.post("/v1/tenants", use: guarded(.hub(.owner)) { request, _, p in
            try await answer {
                let body = try await JSONBody.read(request, allowed: ["id", "name"])
                let id = try body.string("id", required: true)!
                let tenant = try await accounts.createTenant(id: id, name: try body.string("name") ?? id)
                // A new tenant comes with its owner key, shown in this answer only.
                let (key, secret) = try await accounts.createKey(tenant: tenant.id, name: "owner key", role: .owner)
                await p.record("tenant.create", target: tenant.id)
                await p.record("api_key.create", target: key.id, tenant: tenant.id, detail: "owner key of a new tenant")
                return HubAPI.json(.object(Value.Object([("tenant", json(tenant)), ("owner_key", json(key, secret: secret))])), status: .created)
            }
        })
        router.get("/v1/tenants/:tenant", use: guarded(.tenant(.viewer)) { _, context, p in
            let id = try context.parameter("tenant")
            guard p.tenant.system || id == p.tenant.id, let t = try await accounts.tenant(id) else { return notFound("tenant", id) }
            return HubAPI.json(json(t))
        })
        // A tenant's owner sets its retention; the system tenant's owners may set any tenant's.
        router.patch("/v1/tenants/:tenant", use: guarded(.tenant(.owner)) { request, context, p in
            try await answer {
                let id = try context.parameter("tenant")
                guard p.tenant.system || id == p.tenant.id else { throw APIProblem(.notFound, "no tenant '\(id.prefix(64))'") }
                let body = try await JSONBody.read(request, allowed: ["retention_days"])
                guard let days = try body.integer("retention_days") else { throw APIProblem(.badRequest, "nothing to change: retention_days") }
                guard try await accounts.setRetention(tenant: id, days: days), let t = try await accounts.tenant(id) else {
                    throw APIProblem(.notFound, "no tenant '\(id.prefix(64))'")
                }
                await p.record("tenant.update", target: id, tenant: id, detail: "retention_days \(days)")
                return HubAPI.json(json(t))
            }
        })
        router.delete("/v1/tenants/:tenant", use: guarded(.hub(.owner)) { _, context, p in
            let id = try context.parameter("tenant")
            guard try await accounts.deleteTenant(id) else { return notFound("tenant", id, "(the system tenant cannot be deleted)") }
            await p.record("tenant.delete", target: id)
            return Response(status: .noContent)
        })

        router.get("/v1/api-keys", use: guarded(.tenant(.admin)) { request, _, p in
            try await answer {
                let tenant = try await target(request, p)
                return HubAPI.json(.object(Value.Object([("items", .array(try await accounts.keys(tenant: tenant).map { json($0) }))])))
            }
        })
        router.post("/v1/api-keys", use: guarded(.tenant(.admin)) { request, _, p in
            try await answer {
                let body = try await JSONBody.read(request, allowed: ["name", "role", "expires_in", "scopes"])
                let tenant = try await target(request, p)
                let roleName = try body.string("role") ?? Role.viewer.rawValue
                guard let role = Role(rawValue: roleName) else {
                    throw APIProblem(.badRequest, "unknown role '\(roleName.prefix(32))'; roles: \(Role.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                // Nobody hands out more than they hold.
                guard role <= p.key.role else { throw APIProblem(.forbidden, "a key with the role \(p.key.role.rawValue) cannot create a key with the role \(role.rawValue)") }
                let expiresAt = try body.expiry()
                let scopes = try body.list("scopes") ?? []
                // Nor reaches further than they do: a limited key makes keys limited to (part of) its scopes.
                if !p.key.scopes.isEmpty, scopes.isEmpty || !Set(scopes).isSubset(of: p.key.scopes) {
                    throw APIProblem(.forbidden, "a key limited to \(p.key.scopes.joined(separator: ", ")) can only make keys limited to some of those")
                }
                let (key, secret) = try await accounts.createKey(tenant: tenant, name: try body.string("name", required: true)!, role: role,
                                                                 expiresAt: expiresAt, scopes: scopes)
                await p.record("api_key.create", target: key.id, tenant: tenant, detail: "role \(role.rawValue)")
                return HubAPI.json(json(key, secret: secret), status: .created)
            }
        })
        router.delete("/v1/api-keys/:key", use: guarded(.tenant(.admin)) { request, context, p in
            try await answer {
                let id = try context.parameter("key")
                let tenant = try await target(request, p)
                guard try await accounts.revokeKey(tenant: tenant, id: id) else { return notFound("API key", id) }
                await p.record("api_key.revoke", target: id, tenant: tenant)
                return Response(status: .noContent)
            }
        })
    }

    /// Team members: admins manage a tenant's users; a user logs in with e-mail and password for a
    /// session key (12 hours, the user's role). Login attempts per user are limited (5 at once, then
    /// one a minute), and failures are audited.
    static func addUsers(to router: Router<HubRequestContext>, accounts: Accounts, audit: AuditLog, guarded: Guard) {
        router.get("/v1/users", use: guarded(.tenant(.admin)) { request, _, p in
            try await answer {
                let tenant = try await target(request, p)
                return HubAPI.json(.object(Value.Object([("items", .array(try await accounts.users(tenant: tenant).map(json)))])))
            }
        })
        router.post("/v1/users", use: guarded(.tenant(.admin)) { request, _, p in
            try await answer {
                let body = try await JSONBody.read(request, allowed: ["email", "name", "role", "password"])
                let tenant = try await target(request, p)
                let roleName = try body.string("role") ?? Role.viewer.rawValue
                guard let role = Role(rawValue: roleName) else { throw APIProblem(.badRequest, "unknown role '\(roleName.prefix(32))'") }
                guard role <= p.key.role else { throw APIProblem(.forbidden, "a key with the role \(p.key.role.rawValue) cannot create a user with the role \(role.rawValue)") }
                let user = try await accounts.createUser(tenant: tenant, email: try body.string("email", required: true)!, name: try body.string("name") ?? "",
                                                         role: role, password: try body.string("password", required: true)!)
                await p.record("user.create", target: user.email, tenant: tenant, detail: "role \(role.rawValue)")
                return HubAPI.json(json(user), status: .created)
            }
        })
        router.delete("/v1/users/:email", use: guarded(.tenant(.admin)) { request, context, p in
            try await answer {
                let email = try context.parameter("email")
                let tenant = try await target(request, p)
                guard try await accounts.deleteUser(tenant: tenant, email: email) else { throw APIProblem(.notFound, "no user '\(email.prefix(64))'") }
                await p.record("user.delete", target: email, tenant: tenant)
                return Response(status: .noContent)
            }
        })
        let attempts = RateLimiter(rate: 1.0 / 60, burst: 5)
        router.post("/v1/login") { request, context in
            try await answer {
                let body = try await JSONBody.read(request, allowed: ["tenant", "email", "password"])
                let tenant = try body.string("tenant", required: true)!, email = try body.string("email", required: true)!.lowercased()
                let password = try body.string("password", required: true)!
                if let wait = attempts.take(tenant + "/" + email) { return HubAPI.tooManyRequests("too many login attempts for this user", wait: wait) }
                guard let (key, secret) = try await accounts.login(tenant: tenant, email: email, password: password) else {
                    _ = try? await audit.record(AuditEntry(tenant: Accounts.isValidID(tenant) ? tenant : "system", actor: "user:\(email.prefix(254))",
                                                           action: "auth.failed", target: "POST /v1/login", source: context.caller,
                                                           outcome: "denied", detail: "wrong e-mail or password"))
                    var r = HubAPI.problem(.unauthorized, "wrong tenant, e-mail or password")
                    r.headers[.wwwAuthenticate] = #"Bearer realm="iotc""#
                    return r
                }
                _ = try? await audit.record(AuditEntry(tenant: tenant, actor: "user:\(email)", action: "user.login", target: key.id, source: context.caller))
                return HubAPI.json(json(key, secret: secret), status: .created)
            }
        }
    }

    static func json(_ u: User) -> Value {
        .object(Value.Object([("email", .string(u.email)), ("name", .string(u.name)), ("role", .string(u.role.rawValue)),
                              ("tenant", .string(u.tenant)), ("created_at", .int(u.createdAt))]))
    }

    static func addAudit(to router: Router<HubRequestContext>, audit: AuditLog, guarded: Guard) {
        router.get("/v1/audit", use: guarded(.tenant(.admin)) { request, _, p in
            try await answer {
                let q = request.uri.queryParameters
                let tenant = try await target(request, p)
                // The system tenant's admins see every tenant's entries unless they name one.
                let all = p.tenant.system && q.get("tenant") == nil
                let query = Query(request)
                let entries = try await audit.entries(tenant: all ? nil : tenant, action: try query.string("action"),
                                                      before: try query.integer("before", 0...(1 << 62)), limit: try query.limit())
                return HubAPI.json(.object(Value.Object([("items", .array(entries.map(json)))])))
            }
        })
    }

    static func json(_ e: AuditEntry) -> Value {
        .object(Value.Object([
            ("seq", .int(e.sequence)), ("at", .int(e.at)), ("tenant", .string(e.tenant)), ("actor", .string(e.actor)),
            ("action", .string(e.action)), ("target", .string(e.target)), ("source", .string(e.source)),
            ("outcome", .string(e.outcome)), ("detail", .string(e.detail)),
            ("hash", .string(e.hash.map { String(format: "%02x", $0) }.joined())),
        ]))
    }

    /// The tenant a request acts on: the caller's own, or (for the system tenant's keys) the one `?tenant=` names.
    static func target(_ request: Request, _ p: Principal) async throws -> String {
        let named = try Query(request).string("tenant")
        if let named, !Accounts.isValidID(named) { throw APIProblem(.badRequest, "?tenant is a tenant id: 1 to 63 lower-case letters, digits and dashes") }
        let tenant = try target(named, p)
        if tenant != p.tenant.id, try await p.accounts.tenant(tenant) == nil { throw APIProblem(.notFound, "no tenant '\(tenant)'") }
        return tenant
    }

    static func target(_ named: String?, _ p: Principal) throws -> String {
        guard let named, named != p.tenant.id else { return p.tenant.id }
        // Another tenant's keys answer as if the tenant did not exist.
        guard p.tenant.system else { throw APIProblem(.notFound, "no tenant '\(named.prefix(64))'") }
        return named
    }

    /// Runs a handler, turning refusals into problem documents.
    static func answer(_ body: () async throws -> Response) async throws -> Response {
        do {
            return try await body()
        } catch let e as APIProblem {
            return HubAPI.problem(e.status, e.detail)
        } catch let e as StoreError where e.kind == .constraint {
            // Two requests raced past the existence checks: the database's constraint decided.
            return HubAPI.problem(.conflict, "it exists already, or what it refers to is gone")
        } catch let e as AccountsError {
            switch e {
            case .invalid(let d): return HubAPI.problem(.badRequest, d)
            case .conflict(let d): return HubAPI.problem(.conflict, d)
            case .notFound(let d): return HubAPI.problem(.notFound, d)
            }
        }
    }

    private static func notFound(_ what: String, _ id: String, _ note: String = "") -> Response {
        HubAPI.problem(.notFound, "no \(what) '\(id.prefix(64))'" + (note.isEmpty ? "" : " \(note)"))
    }

    static func json(_ t: Tenant) -> Value {
        .object(Value.Object([("id", .string(t.id)), ("name", .string(t.name)), ("system", .bool(t.system)), ("created_at", .int(t.createdAt)),
                              ("retention_days", .int(t.retentionDays))]))
    }

    /// A key as the API shows it: never the secret, except once, in the answer that created it.
    static func json(_ k: APIKey, secret: String? = nil) -> Value {
        var o = Value.Object([
            ("id", .string(k.id)), ("prefix", .string(k.prefix)), ("tenant", .string(k.tenant)), ("name", .string(k.name)),
            ("role", .string(k.role.rawValue)), ("created_at", .int(k.createdAt)),
            ("expires_at", k.expiresAt.map { .int($0) } ?? .null), ("last_used_at", k.lastUsedAt.map { .int($0) } ?? .null),
            ("revoked_at", k.revokedAt.map { .int($0) } ?? .null), ("scopes", .array(k.scopes.map(Value.string))),
        ])
        if let secret { o["secret"] = .string(secret) }
        return .object(o)
    }
}
