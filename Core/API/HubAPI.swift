import Foundation
import Hummingbird
import IoTCKernel
import IoTCPluginKit
import IoTCStore
import NIOConcurrencyHelpers
import NIOCore
import Prometheus

/// The operator API: health, Prometheus metrics, pipelines, plugins, dead letters, device commands,
/// tenants and API keys. Everything under /v1 needs an API key; health, readiness and metrics do not.
public enum HubAPI {
    /// Builds the router.
    public static func router(
        hub: Hub, accounts: Accounts, directory: RegistryDirectory, commands: CommandCenter, pipelines: PipelineFiles,
        registry: PrometheusCollectorRegistry, version: String
    ) -> Router<HubRequestContext> {
        let router = Router(context: HubRequestContext.self)
        router.add(middleware: UnroutedRequests())
        let audit = AuditLog(store: accounts.store)
        let guarded = Guard(accounts: accounts, audit: audit) { hub.takeAPIRequest(key: $0) }
        AccountsAPI.add(to: router, accounts: accounts, audit: audit, guarded: guarded)
        AccountsAPI.addAudit(to: router, audit: audit, guarded: guarded)
        AccountsAPI.addUsers(to: router, accounts: accounts, audit: audit, guarded: guarded)
        let devices = Devices(store: accounts.store)
        DevicesAPI.add(to: router, hub: hub, devices: devices, directory: directory, guarded: guarded)
        DevicesAPI.addCredentials(to: router, devices: devices, directory: directory, guarded: guarded)
        DevicesAPI.addTelemetry(to: router, telemetry: Telemetry(store: accounts.store), devices: Devices(store: accounts.store), guarded: guarded)
        CommandsAPI.add(to: router, hub: hub, center: commands, devices: devices, guarded: guarded)
        AlertsAPI.add(to: router, book: hub.alerts, guarded: guarded)
        ProvisioningAPI.add(to: router, provisioning: Provisioning(store: accounts.store), devices: devices, directory: directory, audit: audit, guarded: guarded)
        CertificateAuthoritiesAPI.add(to: router, authorities: CertificateAuthorities(store: accounts.store), directory: directory, guarded: guarded)
        router.get("/health") { _, _ in json(["status": "ok"]) }
        router.get("/ready") { _, _ in json(["status": "ready"]) }
        // Built at the first request: an idle hub does not carry it.
        let description = NIOLockedValueBox<[UInt8]?>(nil)
        router.get("/openapi.json") { _, _ in
            let bytes = description.withLockedValue { cached in
                if cached == nil { cached = JSON.encode(OpenAPI.document(version: version)) }
                return cached!
            }
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
        }
        router.get("/metrics") { _, _ in
            var buffer: [UInt8] = []
            registry.emit(into: &buffer)
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(bytes: buffer)))
        }
        router.get("/v1/pipelines", use: guarded(.hub(.viewer)) { _, _, _ in
            let s = hub.status
            return json(.object(Value.Object([
                ("pipelines", .array(s.pipelines.map { .object(Value.Object([("name", .string($0.name)), ("durable", .bool($0.durable)), ("queued", .int(Int64($0.queued)))])) })),
                ("sources", .array(s.sources.map { .object(Value.Object([("name", .string($0.name)), ("plugin", .string($0.component))])) })),
                ("sinks", .array(s.sinks.map { .object(Value.Object([("name", .string($0.name)), ("plugin", .string($0.component)), ("queued", .int(Int64($0.queued)))])) })),
                ("files", .array(pipelines.files.map { .string(($0 as NSString).lastPathComponent) })),
            ])))
        })
        // A pipeline file's new text: checked with the other files as they are (validate), or checked,
        // written (the old text kept as FILE.bak) and applied (PUT).
        router.post("/v1/pipelines/validate", use: guarded(.hub(.operator)) { request, _, _ in
            let name = try Query(request).string("file") ?? (pipelines.files.first.map { ($0 as NSString).lastPathComponent } ?? "")
            guard let file = pipelines.file(named: name) else { throw APIProblem(.notFound, "no pipeline file '\(name.prefix(64))'") }
            let (errors, warnings) = pipelines.validate(replacing: file, with: try await yamlBody(request))
            return json(.object(Value.Object([("valid", .bool(errors.isEmpty)), ("errors", .array(errors.map { .string($0.description) })),
                                              ("warnings", .array(warnings.map { .string($0.description) }))])))
        })
        router.put("/v1/pipelines/files/:name", use: guarded(.hub(.admin)) { request, context, p in
            let name = try context.parameter("name")
            guard let file = pipelines.file(named: name) else { throw APIProblem(.notFound, "no pipeline file '\(name.prefix(64))'") }
            let problems = await pipelines.apply(replacing: file, with: try await yamlBody(request))
            await p.record("pipelines.apply", target: name, outcome: problems == nil ? "ok" : "failed", detail: problems.map { "\($0.count) errors" } ?? "")
            if let problems { return invalidPipelines(problems) }
            return json(["status": "applied"])
        })
        router.post("/v1/pipelines/reload", use: guarded(.hub(.operator)) { _, _, p in
            let problems = await pipelines.reload()
            await p.record("pipelines.reload", target: "pipelines", outcome: problems == nil ? "ok" : "failed",
                           detail: problems.map { "\($0.count) errors" } ?? "")
            if let problems { return invalidPipelines(problems) }
            return json(["status": "reloaded"])
        })
        router.get("/v1/plugins", use: guarded(.hub(.viewer)) { _, _, _ in
            json(.array(hub.plugins.libraries.map { p in
                .object(Value.Object([
                    ("name", .string(p.name)), ("version", .string(p.version)), ("abi_version", .int(Int64(p.abiVersion))), ("path", .string(p.path)),
                    ("components", .array(p.components.map { .object(Value.Object([("name", .string($0.entry.name)), ("kind", .string($0.entry.kind.rawValue))])) })),
                ]))
            }))
        })
        router.get("/v1/dead-letters", use: guarded(.hub(.viewer)) { request, _, _ in
            let query = Query(request)
            let limit = try query.limit(max: 100_000)
            let page = hub.deadLetters.page(after: try query.string("after"), limit: limit)
            return json(.object(Value.Object([
                ("total", .int(Int64(page.total))),
                ("items", .array(page.entries.map(DeadLetterStore.json))),
                // The next page starts after the last id of a full one.
                ("next", page.entries.count == limit ? .string(page.entries.last!.id) : .null),
            ])))
        })
        router.post("/v1/dead-letters/replay", use: guarded(.hub(.operator)) { request, _, p in
            let ids = try await idsFromBody(request)
            let (replayed, skipped, left) = hub.replayDeadLetters(ids: ids)
            await p.record("dead_letters.replay", target: ids.map { "\($0.count) ids" } ?? "all", detail: "\(replayed) replayed, \(left) left")
            return json(.object(Value.Object([("replayed", .int(Int64(replayed))), ("skipped", .array(skipped.map { .string($0) })),
                                              ("left", .int(Int64(left)))])))
        })
        router.delete("/v1/dead-letters", use: guarded(.hub(.operator)) { request, _, p in
            let ids = request.uri.queryParameters.getAll("id")
            let n = hub.deadLetters.remove(ids: ids.isEmpty ? nil : ids)
            await p.record("dead_letters.purge", target: ids.isEmpty ? "all" : "\(ids.count) ids", detail: "\(n) purged")
            return json(.object(Value.Object([("purged", .int(Int64(n)))])))
        })
        return router
    }

    /// 422 with every problem, `file:line:column: error: message (hint)`.
    static func invalidPipelines(_ problems: [Diagnostic]) -> Response {
        problem(.unprocessableContent, "the pipeline files have errors; the running configuration is unchanged",
                extra: [("errors", .array(problems.map { .string($0.description) }))])
    }

    /// A pipeline file's text from a request body (UTF-8, up to 1 MiB).
    static func yamlBody(_ request: Request) async throws -> String {
        let buffer = try await collect(request, upTo: 1 << 20)
        guard let text = String(validating: buffer.readableBytesView, as: UTF8.self) else { throw APIProblem(.badRequest, "the body is not UTF-8 text") }
        return text
    }

    /// `{"ids": [...]}`, or nil for an empty body (meaning all).
    private static func idsFromBody(_ request: Request) async throws -> [String]? {
        let body = try await JSONBody.read(request, allowed: ["ids"], limit: 1 << 20, emptyIsNull: true)
        guard let body else { return nil }
        switch body.fields["ids"] {
        case nil, .null?: return nil
        case .array(let items)?:
            return try items.map { item in
                guard case .string(let s) = item else { throw APIProblem(.badRequest, "ids is a list of strings") }
                return s
            }
        default: throw APIProblem(.badRequest, "ids is a list of strings")
        }
    }

    static func json(_ value: Value, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: JSON.encode(value))))
    }

    static func json(_ fields: KeyValuePairs<String, String>, status: HTTPResponse.Status = .ok) -> Response {
        json(.object(Value.Object(fields.map { ($0.key, .string($0.value)) })), status: status)
    }

    /// 429 with `Retry-After` (whole seconds, at least one).
    static func tooManyRequests(_ what: String, wait: Double) -> Response {
        let seconds = max(1, Int(wait.rounded(.up)))
        var r = problem(.tooManyRequests, "\(what); try again in \(seconds) s")
        r.headers[.retryAfter] = "\(seconds)"
        return r
    }

    /// An RFC 9457 problem document.
    static func problem(_ status: HTTPResponse.Status, _ detail: String, extra: [(String, Value)] = []) -> Response {
        let o = Value.Object([("type", "about:blank"), ("title", .string(status.reasonPhrase)), ("status", .int(Int64(status.code))), ("detail", .string(detail))] + extra)
        return Response(status: status, headers: [.contentType: "application/problem+json"], body: .init(byteBuffer: ByteBuffer(bytes: JSON.encode(.object(o)))))
    }
}
