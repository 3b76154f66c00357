import Foundation
import Hummingbird
import IoTCKernel
import IoTCPluginKit
import IoTCStore

/// Device commands: send one (and wait for the answer, or leave it queued for an offline device until
/// it expires), list a device's commands, look one up. An operator key sends; a viewer key reads.
enum CommandsAPI {
    static func add(to router: Router<HubRequestContext>, hub: Hub, center: CommandCenter, devices: Devices, guarded: Guard) {
        router.post("/v1/devices/:device/commands", use: guarded(.tenant(.operator)) { request, context, p in
            try await AccountsAPI.answer {
                let (tenant, device) = try await resolve(context, request, p, devices)
                let body = try await JSONBody.read(request, allowed: ["name", "payload", "timeout", "expires_in", "source"])
                let name = try body.string("name") ?? "command"
                guard isTopicLevel(name) else {
                    throw APIProblem(.badRequest, "name is 1 to 64 characters, without '/', '+', '#' or control characters")
                }
                let timeout = try body.number("timeout") ?? 30
                guard (0...300).contains(timeout) else { throw APIProblem(.badRequest, "timeout (seconds to wait for the answer) is from 0 to 300") }
                let expiresIn = try body.integer("expires_in") ?? 86400
                guard (1...(30 * 86400)).contains(expiresIn) else { throw APIProblem(.badRequest, "expires_in is in seconds, from 1 to 30 days") }
                let source = try body.string("source")
                if let source, !hub.hasDownlinkSource(source) { throw APIProblem(.notFound, "no source named '\(source.prefix(64))' that sends to devices") }
                let sent = try await center.send(tenant: tenant, device: device, name: name, payload: body.fields["payload"] ?? .object(Value.Object()),
                                                 expiresIn: TimeInterval(expiresIn), source: source)
                await p.record("command.send", target: "device \(device)", tenant: tenant, detail: "\(name) (\(sent.id), \(sent.status.rawValue))")
                // A device that is offline gets it when it connects: nothing to wait for now.
                let now = sent.status == .queued ? sent : try await center.wait(tenant: tenant, id: sent.id, timeout: timeout) ?? sent
                return HubAPI.json(json(now), status: now.status.isFinal ? .ok : .accepted)
            }
        })
        router.get("/v1/devices/:device/commands", use: guarded(.tenant(.viewer)) { request, context, p in
            try await AccountsAPI.answer {
                let (tenant, device) = try await resolve(context, request, p, devices)
                let query = Query(request)
                let limit = try query.limit()
                var status: DeviceCommand.Status?
                if let s = try query.string("status") {
                    guard let v = DeviceCommand.Status(rawValue: s) else {
                        throw APIProblem(.badRequest, "status is one of \(DeviceCommand.Status.allCases.map(\.rawValue).joined(separator: ", "))")
                    }
                    status = v
                }
                let items = try await center.commands.list(tenant: tenant, device: device, status: status, limit: limit)
                return HubAPI.json(.object(Value.Object([("items", .array(items.map(json)))])))
            }
        })
        router.get("/v1/devices/:device/commands/:id", use: guarded(.tenant(.viewer)) { request, context, p in
            try await AccountsAPI.answer {
                let (tenant, device) = try await resolve(context, request, p, devices)
                let id = try context.parameter("id")
                guard let c = try await center.commands.get(tenant: tenant, id: id), c.device == device else {
                    throw APIProblem(.notFound, "no command '\(id.prefix(64))' for device '\(device.prefix(64))'")
                }
                return HubAPI.json(json(c))
            }
        })
    }

    /// The tenant and device a request names. The device must be in the tenant's registry; the system
    /// tenant's keys may also command devices of the hub's token list (tenant `default`), which are not.
    static func resolve(_ context: HubRequestContext, _ request: Request, _ p: Principal, _ devices: Devices) async throws -> (String, String) {
        let tenant = try await AccountsAPI.target(request, p)
        let device = try DevicesAPI.device(context)
        if try await devices.get(tenant: tenant, id: device) != nil { return (tenant, device) }
        if p.tenant.system, tenant == p.tenant.id, isTopicLevel(device) { return ("default", device) }
        throw APIProblem(.notFound, "no device '\(device.prefix(64))'")
    }

    /// Whether `s` can be one level of a topic: 1 to 64 characters, no `/`, `+`, `#` or control characters.
    static func isTopicLevel(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 64 && !s.utf8.contains { $0 < 0x20 || $0 == 0x7F || $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") }
    }

    static func json(_ c: DeviceCommand) -> Value {
        var o = Value.Object([
            ("id", .string(c.id)), ("device", .string(c.device)), ("name", .string(c.name)), ("status", .string(c.status.rawValue)),
            ("payload", (try? JSON.decode(Array(c.payload.utf8))) ?? .null),
            ("created_at", .int(c.createdAt)), ("expires_at", .int(c.expiresAt)),
        ])
        o["delivered_at"] = c.deliveredAt.map(Value.int) ?? .null
        o["completed_at"] = c.completedAt.map(Value.int) ?? .null
        o["result"] = c.result.flatMap { try? JSON.decode(Array($0.utf8)) } ?? .null
        if !c.detail.isEmpty { o["detail"] = .string(c.detail) }
        return .object(o)
    }
}
