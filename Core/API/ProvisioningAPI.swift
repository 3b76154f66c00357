import Foundation
import Hummingbird
import IoTCKernel
import IoTCPluginKit
import IoTCStore

/// Provisioning by claim: fleet keys and claim codes (admins), and the claim itself (devices, with no
/// API key: the fleet key and the device's code are its proof).
enum ProvisioningAPI {
    static func add(to router: Router<HubRequestContext>, provisioning: Provisioning, devices: Devices, directory: RegistryDirectory,
                    audit: AuditLog, guarded: Guard) {
        router.get("/v1/provisioning-keys", use: guarded(.tenant(.admin)) { request, _, p in
            let tenant = try await AccountsAPI.target(request, p)
            return HubAPI.json(.object(Value.Object([("items", .array(try await provisioning.keys(tenant: tenant).map { json($0) }))])))
        })
        router.post("/v1/provisioning-keys", use: guarded(.tenant(.admin)) { request, _, p in
            let tenant = try await AccountsAPI.target(request, p)
            let body = try await JSONBody.read(request, allowed: ["name", "profile", "expires_in"])
            let (key, secret) = try await provisioning.createKey(tenant: tenant, name: try body.string("name", required: true)!,
                                                                 profile: try body.string("profile") ?? "default", expiresAt: try body.expiry())
            await p.record("provisioning_key.create", target: key.id, tenant: tenant, detail: "profile \(key.profile)")
            return HubAPI.json(json(key, secret: secret), status: .created)
        })
        router.delete("/v1/provisioning-keys/:key", use: guarded(.tenant(.admin)) { request, context, p in
            let tenant = try await AccountsAPI.target(request, p)
            let id = try context.parameter("key")
            guard try await provisioning.revokeKey(tenant: tenant, id: id) else { throw APIProblem(.notFound, "no provisioning key '\(id.prefix(64))'") }
            await p.record("provisioning_key.revoke", target: id, tenant: tenant)
            return Response(status: .noContent)
        })
        router.put("/v1/devices/:device/claim-code", use: guarded(.tenant(.admin)) { request, context, p in
            let tenant = try await AccountsAPI.target(request, p)
            let device = try DevicesAPI.device(context)
            let body = try await JSONBody.read(request, allowed: ["code", "expires_in"])
            let expiresAt = try body.expiry()
            try await provisioning.setClaimCode(tenant: tenant, device: device, code: try body.string("code", required: true)!, expiresAt: expiresAt)
            await p.record("device.claim_code.set", target: device, tenant: tenant)
            var o = Value.Object([("device", .string(device))])
            o["expires_at"] = expiresAt.map(Value.int) ?? .null
            return HubAPI.json(.object(o))
        })
        // Guessing a device's code is limited as guessing a password is (5 tries, then one a minute), and
        // each address to a steady second's worth; failures are audited.
        let perDevice = RateLimiter(rate: 1.0 / 60, burst: 5), perAddress = RateLimiter(rate: 1, burst: 60)
        router.post("/v1/claim") { request, context in
            try await AccountsAPI.answer {
                let body = try await JSONBody.read(request, allowed: ["provisioning_key", "device", "code"])
                let fleetKey = try body.string("provisioning_key", required: true)!
                let device = try body.string("device", required: true)!, code = try body.string("code", required: true)!
                let keyID = Accounts.keyID(of: fleetKey, prefix: "iotcp_") ?? "invalid"
                if let wait = perAddress.take(context.caller) ?? perDevice.take(keyID + "/" + device.prefix(128)) {
                    return HubAPI.tooManyRequests("too many claims", wait: wait)
                }
                guard Devices.isValidID(device), let claimed = try await provisioning.claim(fleetKey: fleetKey, device: device, code: code, devices: devices) else {
                    _ = try? await audit.record(AuditEntry(tenant: "system", actor: "device:\(device.prefix(128))", action: "device.claim.failed",
                                                           target: "provisioning key \(keyID)", source: context.caller, outcome: "denied"))
                    var r = HubAPI.problem(.unauthorized, "wrong provisioning key, device or claim code, or the code was used already")
                    r.headers[.wwwAuthenticate] = #"Bearer realm="iotc""#
                    return r
                }
                try await directory.refresh()
                _ = try? await audit.record(AuditEntry(tenant: claimed.tenant, actor: "device:\(claimed.device)", action: "device.claim",
                                                       target: claimed.credential.id, source: context.caller, detail: "provisioning key \(keyID)"))
                return HubAPI.json(.object(Value.Object([("tenant", .string(claimed.tenant)), ("device", .string(claimed.device)),
                                                         ("credential", DevicesAPI.json(claimed.credential, token: claimed.token))])), status: .created)
            }
        }
    }

    static func json(_ k: ProvisioningKey, secret: String? = nil) -> Value {
        var o = Value.Object([("id", .string(k.id)), ("name", .string(k.name)), ("profile", .string(k.profile)), ("created_at", .int(k.createdAt))])
        o["expires_at"] = k.expiresAt.map(Value.int) ?? .null
        o["revoked_at"] = k.revokedAt.map(Value.int) ?? .null
        if let secret { o["secret"] = .string(secret) }
        return .object(o)
    }
}
