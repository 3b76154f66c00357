import Foundation
import Hummingbird
import IoTCKernel
import IoTCPluginKit

/// Alerts the rules raised: list and look up (viewer), acknowledge, clear and close (operator). Each
/// action is in the alert's history and in the audit log.
enum AlertsAPI {
    static func add(to router: Router<HubRequestContext>, book: AlertBook, guarded: Guard) {
        router.get("/v1/alerts", use: guarded(.tenant(.viewer)) { request, _, p in
            let tenant = try await target(request, p)
            let query = Query(request)
            var state: Alert.State?
            if let s = try query.string("state") {
                guard let v = Alert.State(rawValue: s) else {
                    throw APIProblem(.badRequest, "state is one of \(Alert.State.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                state = v
            }
            let items = book.list(tenant: tenant, state: state, rule: try query.string("rule"), device: try query.string("device"), limit: try query.limit())
            return HubAPI.json(.object(Value.Object([("items", .array(items.map(json)))])))
        })
        router.get("/v1/alerts/:id", use: guarded(.tenant(.viewer)) { request, context, p in
            let tenant = try await target(request, p)
            let id = try context.parameter("id")
            guard let a = book.get(tenant: tenant, id: id) else { throw APIProblem(.notFound, "no alert '\(id.prefix(64))'") }
            return HubAPI.json(json(a))
        })
        for action in [AlertBook.Action.acknowledge, .clear, .close] {
            router.post("/v1/alerts/:id/\(action.rawValue)", use: guarded(.tenant(.operator)) { request, context, p in
                let tenant = try await target(request, p)
                let id = try context.parameter("id")
                do {
                    let a = try book.act(action, tenant: tenant, id: id, by: "key:\(p.key.id)", at: Int64(Date().timeIntervalSince1970 * 1000))
                    await p.record("alert.\(action.rawValue)", target: id, tenant: tenant, detail: "\(a.rule) \(a.key)")
                    return HubAPI.json(json(a))
                } catch let e as AlertBook.ActionError {
                    switch e {
                    case .notFound: throw APIProblem(.notFound, "no alert '\(id.prefix(64))'")
                    case .conflict(let why): throw APIProblem(.conflict, why)
                    }
                }
            })
        }
    }

    /// The tenant a request names. The system tenant's keys also reach the alerts of the hub's token-list
    /// devices (tenant `default`), which has no account.
    static func target(_ request: Request, _ p: Principal) async throws -> String {
        if p.tenant.system, try Query(request).string("tenant") == "default" { return "default" }
        return try await AccountsAPI.target(request, p)
    }

    static func json(_ a: Alert) -> Value {
        .object(Value.Object([
            ("id", .string(a.id)), ("tenant", .string(a.tenant)), ("rule", .string(a.rule)), ("key", .string(a.key)), ("device", .string(a.device)),
            ("severity", .string(a.severity)), ("message", .string(a.message)), ("state", .string(a.state.rawValue)),
            ("raised_at", .int(a.raisedAt)), ("updated_at", .int(a.updatedAt)), ("count", .int(Int64(a.count))),
            ("failed_notifications", .int(Int64(a.failedNotifications ?? 0))),
            ("history", .array(a.history.map { e in
                var o = Value.Object([("at", .int(e.at)), ("action", .string(e.action)), ("by", e.by.map(Value.string) ?? .null)])
                if let s = e.sink { o["sink"] = .string(s) }
                if let r = e.reason { o["reason"] = .string(r) }
                return .object(o)
            })),
        ]))
    }
}
