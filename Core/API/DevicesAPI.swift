import Foundation
import Hummingbird
import IoTCKernel
import IoTCPluginKit
import IoTCStore
import NIOCore

/// The device registry: a tenant's devices, with names, profiles and labels. Reads need a viewer key,
/// changes an admin key; the system tenant's keys may name another tenant with `?tenant=`.
enum DevicesAPI {
    static func add(to router: Router<HubRequestContext>, hub: Hub, devices: Devices, directory: RegistryDirectory, guarded: Guard) {
        router.get("/v1/devices", use: guarded(.tenant(.viewer)) { request, _, p in
            try await AccountsAPI.answer {
                let tenant = try await AccountsAPI.target(request, p)
                let query = Query(request)
                let limit = try query.limit()
                var label: (String, String)?
                if let l = try query.string("label") {
                    guard let colon = l.firstIndex(of: ":") else { throw APIProblem(.badRequest, "label reads KEY:VALUE") }
                    label = (String(l[..<colon]), String(l[l.index(after: colon)...]))
                }
                let page = try await devices.list(tenant: tenant, label: label, after: try query.string("after"), limit: limit)
                var o = Value.Object([("items", .array(page.map(json)))])
                // The next page starts after the last id of a full one.
                o["next"] = page.count == limit ? .string(page.last!.id) : .null
                return HubAPI.json(.object(o))
            }
        })
        router.post("/v1/devices", use: guarded(.tenant(.admin)) { request, _, p in
            try await AccountsAPI.answer {
                let body = try await JSONBody.read(request, allowed: ["id", "name", "profile", "labels"])
                let tenant = try await AccountsAPI.target(request, p)
                let d = try await devices.create(tenant: tenant, id: try body.string("id", required: true)!, name: try body.string("name") ?? "",
                                                 profile: try body.string("profile") ?? "default", labels: try body.strings("labels") ?? [:])
                directory.labelsChanged(tenant: tenant, device: d.id, d.labels)
                await p.record("device.create", target: d.id, tenant: tenant)
                return HubAPI.json(json(d), status: .created)
            }
        })
        // Bulk provisioning: a JSON list or CSV (`id,name,profile` with a header line) in, a report per row
        // out; with `tokens=true` each device created gets a token, shown in the report only.
        router.post("/v1/devices/bulk", use: guarded(.tenant(.admin)) { request, _, p in
            try await AccountsAPI.answer {
                let tenant = try await AccountsAPI.target(request, p)
                let withTokens = try Query(request).boolean("tokens") ?? false
                let isCSV = request.headers[.contentType]?.lowercased().hasPrefix("text/csv") == true
                let buffer = try await collect(request, upTo: 4 << 20)
                let rows = try isCSV ? csvRows(String(decoding: buffer.readableBytesView, as: UTF8.self)) : jsonRows(Array(buffer.readableBytesView))
                guard rows.count <= 10_000 else { throw APIProblem(.badRequest, "at most 10,000 devices per request") }
                let outcomes = try await devices.createMany(
                    tenant: tenant, rows.map { Devices.NewDevice(id: $0.id, name: $0.name, profile: $0.profile, labels: $0.labels) }, tokens: withTokens)
                var report: [Value] = []
                report.reserveCapacity(rows.count)
                var created = 0
                for (i, (row, outcome)) in zip(rows, outcomes).enumerated() {
                    var entry = Value.Object([("row", .int(Int64(i + 1))), ("id", .string(row.id))])
                    switch outcome {
                    case .created(let token):
                        entry["status"] = .string("created")
                        if let token { entry["token"] = .string(token) }
                        created += 1
                    case .exists(let why): entry["status"] = .string("exists"); entry["detail"] = .string(why)
                    case .invalid(let why): entry["status"] = .string("invalid"); entry["detail"] = .string(why)
                    }
                    report.append(.object(entry))
                }
                if withTokens, created > 0 { try await directory.refresh() }
                await p.record("device.bulk_create", target: "\(created) of \(rows.count) devices", tenant: tenant)
                return HubAPI.json(.object(Value.Object([("created", .int(Int64(created))), ("rows", .array(report))])))
            }
        })
        router.get("/v1/devices/:device", use: guarded(.tenant(.viewer)) { request, context, p in
            try await AccountsAPI.answer {
                let id = try DevicesAPI.device(context)
                let tenant = try await AccountsAPI.target(request, p)
                guard let d = try await devices.get(tenant: tenant, id: id) else { throw APIProblem(.notFound, "no device '\(id.prefix(128))'") }
                var o = json(d)
                if case .object(var fields) = o {
                    fields["state"] = hub.presence(tenant: tenant, device: id).map { p in
                        .object(Value.Object([("connected", .bool(p.connected)), ("source", .string(p.source)), ("remote_address", .string(p.remoteAddress)),
                                              ("since", .int(p.since)), ("last_seen", .int(p.lastSeen))]))
                    } ?? .null
                    o = .object(fields)
                }
                return HubAPI.json(o)
            }
        })
        router.patch("/v1/devices/:device", use: guarded(.tenant(.admin)) { request, context, p in
            try await AccountsAPI.answer {
                let id = try DevicesAPI.device(context)
                let tenant = try await AccountsAPI.target(request, p)
                let body = try await JSONBody.read(request, allowed: ["name", "profile", "labels"])
                guard let d = try await devices.update(tenant: tenant, id: id, name: try body.string("name"), profile: try body.string("profile"),
                                                       labels: try body.strings("labels")) else {
                    throw APIProblem(.notFound, "no device '\(id.prefix(128))'")
                }
                directory.labelsChanged(tenant: tenant, device: id, d.labels)
                await p.record("device.update", target: id, tenant: tenant)
                return HubAPI.json(json(d))
            }
        })
        router.get("/v1/devices/:device/attributes", use: guarded(.tenant(.viewer)) { request, context, p in
            try await AccountsAPI.answer {
                let id = try DevicesAPI.device(context)
                let tenant = try await AccountsAPI.target(request, p)
                guard let a = try await devices.attributes(tenant: tenant, id: id) else { throw APIProblem(.notFound, "no device '\(id.prefix(128))'") }
                return HubAPI.json(.object(a))
            }
        })
        router.put("/v1/devices/:device/attributes", use: guarded(.tenant(.admin)) { request, context, p in
            try await AccountsAPI.answer {
                let id = try DevicesAPI.device(context)
                let tenant = try await AccountsAPI.target(request, p)
                let buffer = try await collect(request, upTo: Devices.maxAttributesSize)
                guard case .object(let a)? = try? JSON.decode(Array(buffer.readableBytesView)) else {
                    throw APIProblem(.badRequest, "the body is a JSON object of attributes")
                }
                guard try await devices.setAttributes(tenant: tenant, id: id, a) else { throw APIProblem(.notFound, "no device '\(id.prefix(128))'") }
                // Devices fetch them from this hub's memory: load them now, not at the next refresh.
                try await directory.refresh()
                await p.record("device.attributes", target: id, tenant: tenant)
                return HubAPI.json(.object(a))
            }
        })
        router.delete("/v1/devices/:device", use: guarded(.tenant(.admin)) { request, context, p in
            try await AccountsAPI.answer {
                let id = try DevicesAPI.device(context)
                let tenant = try await AccountsAPI.target(request, p)
                guard try await devices.delete(tenant: tenant, id: id) else { throw APIProblem(.notFound, "no device '\(id.prefix(128))'") }
                directory.labelsChanged(tenant: tenant, device: id, nil)
                // Its credentials went with it: its open connections close.
                try await directory.refresh()
                await p.record("device.delete", target: id, tenant: tenant)
                return Response(status: .noContent)
            }
        })
    }

    /// Time series written by the `store` sink: raw points or aggregates over buckets, and the latest
    /// point of every key.
    static let times: ClosedRange<Int64> = -(1 << 53)...(1 << 53)

    /// The `{device}` of a path: a malformed id is a 400 (as the OpenAPI document says), never a lookup.
    static func device(_ context: HubRequestContext) throws -> String {
        let id = try context.parameter("device")
        guard Devices.isValidID(id) else { throw APIProblem(.badRequest, "a device id is 1 to 128 letters, digits and . _ : -") }
        return id
    }

    static func addTelemetry(to router: Router<HubRequestContext>, telemetry: Telemetry, devices: Devices, guarded: Guard) {
        /// A device the hub knows: one in the registry, or one it has telemetry of (devices of the
        /// pipeline files, and registry devices deleted since, until their data is removed).
        @Sendable func known(_ tenant: String, _ device: String) async throws -> [(key: String, time: Int64, value: Double)] {
            let latest = try await telemetry.latest(tenant: tenant, device: device)
            if latest.isEmpty, try await devices.get(tenant: tenant, id: device) == nil { throw APIProblem(.notFound, "no device '\(device.prefix(128))'") }
            return latest
        }
        router.get("/v1/devices/:device/telemetry", use: guarded(.tenant(.viewer)) { request, context, p in
            try await AccountsAPI.answer {
                let device = try DevicesAPI.device(context)
                let tenant = try await AccountsAPI.target(request, p)
                _ = try await known(tenant, device)
                let q = Query(request)
                guard let key = try q.string("key"), !key.isEmpty else { throw APIProblem(.badRequest, "name the series: ?key=temperature") }
                // Times within ±2^53 ms (ages either side of the epoch): differences cannot overflow.
                let to = try q.integer("to", Self.times) ?? Int64(Date().timeIntervalSince1970 * 1000) + 1
                let from = try q.integer("from", Self.times) ?? to - 86_400_000
                let limit = try q.limit(max: 100_000, fallback: 10_000)
                var o = Value.Object([("device", .string(device)), ("key", .string(key)), ("from", .int(from)), ("to", .int(to))])
                let points: [(time: Int64, value: Double)]
                let name = try q.string("agg") ?? "avg"
                guard let agg = Telemetry.Aggregate(rawValue: name) else {
                    throw APIProblem(.badRequest, "agg is one of \(Telemetry.Aggregate.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                if let bucket = try q.integer("bucket", 1...(1 << 53)) {
                    points = try await telemetry.aggregate(tenant: tenant, device: device, key: key, from: from, to: to, bucket: bucket, agg, limit: limit)
                    o["bucket"] = .int(bucket)
                    o["agg"] = .string(agg.rawValue)
                } else {
                    points = try await telemetry.points(tenant: tenant, device: device, key: key, from: from, to: to, limit: limit)
                }
                o["points"] = .array(points.map { .array([.int($0.time), .double($0.value)]) })
                return HubAPI.json(.object(o))
            }
        })
        router.get("/v1/devices/:device/telemetry/latest", use: guarded(.tenant(.viewer)) { request, context, p in
            try await AccountsAPI.answer {
                let device = try DevicesAPI.device(context)
                let tenant = try await AccountsAPI.target(request, p)
                let latest = try await known(tenant, device)
                return HubAPI.json(.object(Value.Object(latest.map { ($0.key, .object(Value.Object([("time", .int($0.time)), ("value", .double($0.value))]))) })))
            }
        })
    }

    /// Credentials: tokens (shown once, at creation) and client-certificate fingerprints. A change
    /// reaches the hub's authentication at once.
    static func addCredentials(to router: Router<HubRequestContext>, devices: Devices, directory: RegistryDirectory, guarded: Guard) {
        router.get("/v1/devices/:device/credentials", use: guarded(.tenant(.admin)) { request, context, p in
            try await AccountsAPI.answer {
                let id = try DevicesAPI.device(context)
                let tenant = try await AccountsAPI.target(request, p)
                guard try await devices.get(tenant: tenant, id: id) != nil else { throw APIProblem(.notFound, "no device '\(id.prefix(128))'") }
                let list = try await devices.credentials(tenant: tenant, device: id)
                return HubAPI.json(.object(Value.Object([("items", .array(list.map { json($0) }))])))
            }
        })
        router.post("/v1/devices/:device/credentials", use: guarded(.tenant(.admin)) { request, context, p in
            try await AccountsAPI.answer {
                let id = try DevicesAPI.device(context)
                let tenant = try await AccountsAPI.target(request, p)
                let body = try await JSONBody.read(request, allowed: ["kind", "fingerprint", "identity", "key", "expires_in"])
                let expiresAt = try body.expiry()
                let kind = try body.string("kind") ?? "token"
                // Each kind takes its own fields only.
                let fields: [String: Set<String>] = ["token": [], "certificate": ["fingerprint"], "psk": ["identity", "key"]]
                guard let own = fields[kind] else { throw APIProblem(.badRequest, "unknown credential kind '\(kind.prefix(32))'; kinds: token, certificate, psk") }
                if let other = ["fingerprint", "identity", "key"].first(where: { !own.contains($0) && body.fields[$0] != nil && body.fields[$0] != .null }) {
                    throw APIProblem(.badRequest, "a credential of kind \(kind) has no \(other)")
                }
                let answer: Value
                switch kind {
                case "token":
                    let (c, token) = try await devices.issueToken(tenant: tenant, device: id, expiresAt: expiresAt)
                    answer = json(c, token: token)
                case "certificate":
                    let fingerprint = try body.string("fingerprint", required: true)!
                    answer = json(try await devices.addCertificate(tenant: tenant, device: id, fingerprint: fingerprint, expiresAt: expiresAt))
                default:
                    guard let box = directory.box else { throw APIProblem(.conflict, "this hub has no secret key to keep pre-shared keys with") }
                    var key: [UInt8]?
                    if let hex = try body.string("key") {
                        guard !hex.contains(":"), let bytes = Devices.hexBytes(hex) else { throw APIProblem(.badRequest, "key is the pre-shared key in hex") }
                        key = bytes
                    }
                    let (c, secret) = try await devices.addPresharedKey(tenant: tenant, device: id, identity: try body.string("identity", required: true)!,
                                                                        key: key, box: box, expiresAt: expiresAt)
                    answer = json(c, key: secret)
                }
                try await directory.refresh()
                await p.record("device.credential.create", target: id, tenant: tenant)
                return HubAPI.json(answer, status: .created)
            }
        })
        router.delete("/v1/devices/:device/credentials/:credential", use: guarded(.tenant(.admin)) { request, context, p in
            try await AccountsAPI.answer {
                let id = try DevicesAPI.device(context), credential = try context.parameter("credential")
                let tenant = try await AccountsAPI.target(request, p)
                guard try await devices.revokeCredential(tenant: tenant, device: id, id: credential) else {
                    throw APIProblem(.notFound, "device '\(id.prefix(128))' has no credential '\(credential.prefix(64))'")
                }
                try await directory.refresh()
                await p.record("device.credential.revoke", target: "\(id)/\(credential)", tenant: tenant)
                return Response(status: .noContent)
            }
        })
    }

    /// A credential as the API shows it: a token's secret only in the answer that created it, a
    /// certificate's fingerprint always.
    static func json(_ c: DeviceCredential, token: String? = nil, key: [UInt8]? = nil) -> Value {
        var o = Value.Object([
            ("id", .string(c.id)), ("device", .string(c.device)), ("kind", .string(c.kind.rawValue)), ("created_at", .int(c.createdAt)),
            ("expires_at", c.expiresAt.map { .int($0) } ?? .null), ("revoked_at", c.revokedAt.map { .int($0) } ?? .null),
        ])
        if c.kind == .certificate { o["fingerprint"] = .string(c.digest.map { String(format: "%02x", $0) }.joined()) }
        if let token { o["token"] = .string(token) }
        if let identity = c.identity { o["identity"] = .string(identity) }
        if let key { o["key"] = .string(key.map { String(format: "%02x", $0) }.joined()) }
        return .object(o)
    }

    struct Row {
        var id: String
        var name = ""
        var profile = "default"
        var labels: [String: String] = [:]
    }

    /// `{"devices": [{"id": ..., "name": ..., "profile": ..., "labels": {...}}, ...]}`
    static func jsonRows(_ bytes: [UInt8]) throws -> [Row] {
        guard case .object(let o)? = try? JSON.decode(bytes), o.keys == ["devices"], case .array(let items)? = o["devices"] else {
            throw APIProblem(.badRequest, #"the body should be {"devices": [{"id": "...", ...}]} (or CSV with Content-Type: text/csv)"#)
        }
        return try items.enumerated().map { i, item in
            guard case .object(let d) = item else { throw APIProblem(.badRequest, "row \(i + 1) should be an object") }
            let fields = JSONBody(fields: d)
            if let unknown = d.keys.first(where: { !["id", "name", "profile", "labels"].contains($0) }) {
                throw APIProblem(.badRequest, "row \(i + 1): unknown field '\(unknown.prefix(64))'; known fields: id, name, labels, profile")
            }
            do {
                var row = Row(id: try fields.string("id", required: true)!)
                row.name = try fields.string("name") ?? ""
                row.profile = try fields.string("profile") ?? "default"
                row.labels = try fields.strings("labels") ?? [:]
                return row
            } catch let e as APIProblem {
                throw APIProblem(.badRequest, "row \(i + 1): \(e.detail)")
            }
        }
    }

    /// A header line naming the columns (`id` required; `name`, `profile`), then one device a line.
    /// Fields may be quoted with double quotes (a doubled quote inside stands for one).
    static func csvRows(_ text: String) throws -> [Row] {
        var lines = text.split(whereSeparator: \.isNewline).map(String.init).filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
        guard !lines.isEmpty else { throw APIProblem(.badRequest, "the CSV is empty") }
        let header = csvFields(lines.removeFirst()).map { $0.lowercased() }
        guard let idColumn = header.firstIndex(of: "id") else { throw APIProblem(.badRequest, "the CSV header needs an id column") }
        if let unknown = header.first(where: { !["id", "name", "profile"].contains($0) }) {
            throw APIProblem(.badRequest, "unknown CSV column '\(unknown.prefix(64))'; columns: id, name, profile")
        }
        return lines.map { line in
            let f = csvFields(line)
            func field(_ name: String) -> String? { header.firstIndex(of: name).flatMap { $0 < f.count ? f[$0] : nil } }
            return Row(id: idColumn < f.count ? f[idColumn] : "", name: field("name") ?? "", profile: field("profile").flatMap { $0.isEmpty ? nil : $0 } ?? "default")
        }
    }

    static func csvFields(_ line: String) -> [String] {
        var fields: [String] = [], current = "", quoted = false
        var chars = line.makeIterator()
        while let c = chars.next() {
            if quoted {
                if c == "\"" {
                    // A doubled quote is a quote; a single one ends the quoted part.
                    var lookahead = chars
                    if lookahead.next() == "\"" { current.append("\""); chars = lookahead } else { quoted = false }
                } else {
                    current.append(c)
                }
            } else if c == "\"" {
                quoted = true
            } else if c == "," {
                fields.append(current.trimmingCharacters(in: .whitespaces))
                current = ""
            } else {
                current.append(c)
            }
        }
        fields.append(current.trimmingCharacters(in: .whitespaces))
        return fields
    }

    static func json(_ d: Device) -> Value {
        .object(Value.Object([
            ("id", .string(d.id)), ("tenant", .string(d.tenant)), ("name", .string(d.name)), ("profile", .string(d.profile)),
            ("labels", .object(Value.Object(d.labels.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) }))),
            ("created_at", .int(d.createdAt)),
        ]))
    }
}
