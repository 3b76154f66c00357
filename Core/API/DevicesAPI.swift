import Foundation
import Hummingbird
import IoTCPluginKit
import IoTCStore

/// The device registry: a tenant's devices, with names, profiles and labels. Reads need a viewer key,
/// changes an admin key; the system tenant's keys may name another tenant with `?tenant=`.
enum DevicesAPI {
    static func add(to router: Router<HubRequestContext>, devices: Devices, guarded: Guard) {
        router.get("/v1/devices", use: guarded(.tenant(.viewer)) { request, _, p in
            try await AccountsAPI.answer {
                let q = request.uri.queryParameters
                let tenant = try AccountsAPI.target(q.get("tenant"), p)
                let limit = q.get("limit").flatMap(Int.init) ?? 100
                guard (1...1000).contains(limit) else { throw APIProblem(.badRequest, "limit is from 1 to 1000") }
                var label: (String, String)?
                if let l = q.get("label") {
                    guard let colon = l.firstIndex(of: ":") else { throw APIProblem(.badRequest, "label reads KEY:VALUE") }
                    label = (String(l[..<colon]), String(l[l.index(after: colon)...]))
                }
                let page = try await devices.list(tenant: tenant, label: label, after: q.get("after"), limit: limit)
                var o = Value.Object([("items", .array(page.map(json)))])
                // The next page starts after the last id of a full one.
                o["next"] = page.count == limit ? .string(page.last!.id) : .null
                return HubAPI.json(.object(o))
            }
        })
        router.post("/v1/devices", use: guarded(.tenant(.admin)) { request, _, p in
            try await AccountsAPI.answer {
                let body = try await JSONBody.read(request, allowed: ["id", "name", "profile", "labels", "tenant"])
                let tenant = try AccountsAPI.target(try body.string("tenant"), p)
                let d = try await devices.create(tenant: tenant, id: try body.string("id", required: true)!, name: try body.string("name") ?? "",
                                                 profile: try body.string("profile") ?? "default", labels: try body.strings("labels") ?? [:])
                await p.record("device.create", target: d.id, tenant: tenant)
                return HubAPI.json(json(d), status: .created)
            }
        })
        router.get("/v1/devices/:device", use: guarded(.tenant(.viewer)) { request, context, p in
            try await AccountsAPI.answer {
                let id = try context.parameters.require("device")
                let tenant = try AccountsAPI.target(request.uri.queryParameters.get("tenant"), p)
                guard let d = try await devices.get(tenant: tenant, id: id) else { throw APIProblem(.notFound, "no device '\(id.prefix(128))'") }
                return HubAPI.json(json(d))
            }
        })
        router.patch("/v1/devices/:device", use: guarded(.tenant(.admin)) { request, context, p in
            try await AccountsAPI.answer {
                let id = try context.parameters.require("device")
                let tenant = try AccountsAPI.target(request.uri.queryParameters.get("tenant"), p)
                let body = try await JSONBody.read(request, allowed: ["name", "profile", "labels"])
                guard let d = try await devices.update(tenant: tenant, id: id, name: try body.string("name"), profile: try body.string("profile"),
                                                       labels: try body.strings("labels")) else {
                    throw APIProblem(.notFound, "no device '\(id.prefix(128))'")
                }
                await p.record("device.update", target: id, tenant: tenant)
                return HubAPI.json(json(d))
            }
        })
        router.delete("/v1/devices/:device", use: guarded(.tenant(.admin)) { request, context, p in
            try await AccountsAPI.answer {
                let id = try context.parameters.require("device")
                let tenant = try AccountsAPI.target(request.uri.queryParameters.get("tenant"), p)
                guard try await devices.delete(tenant: tenant, id: id) else { throw APIProblem(.notFound, "no device '\(id.prefix(128))'") }
                await p.record("device.delete", target: id, tenant: tenant)
                return Response(status: .noContent)
            }
        })
    }

    static func json(_ d: Device) -> Value {
        .object(Value.Object([
            ("id", .string(d.id)), ("tenant", .string(d.tenant)), ("name", .string(d.name)), ("profile", .string(d.profile)),
            ("labels", .object(Value.Object(d.labels.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) }))),
            ("created_at", .int(d.createdAt)),
        ]))
    }
}
