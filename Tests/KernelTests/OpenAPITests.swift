import Foundation
import Hummingbird
import Logging
import Prometheus
import Testing
@testable import IoTCAPI
import IoTCKernel
import IoTCPluginKit
import IoTCStore

/// The OpenAPI document is kept true: it names every route of the router and no other. (The running
/// API is checked against it by schemathesis, in `SchemathesisTests`.)
@Suite struct OpenAPITests {
    @Test func describesEveryRouteAndNoOther() async throws {
        let dir = TempDir()
        let hub = try makeHub(dir)
        let store = try await openStore("sqlite:\(dir.path)/iotc.db")
        let router = HubAPI.router(hub: hub, accounts: Accounts(store: store), directory: RegistryDirectory(devices: Devices(store: store)),
                                   commands: CommandCenter(hub: hub, commands: Commands(store: store), logger: Logger(label: "test")),
                                   pipelines: PipelineFiles(hub: hub, loader: HubConfigLoader(catalog: Build.plugins.catalog), files: [], logger: Logger(label: "test")),
                                   registry: PrometheusCollectorRegistry(), version: "test")
        // Hummingbird writes parameters as ":name", OpenAPI as "{name}".
        let routes = Set(router.routes.map { route in
            "\(route.method.rawValue.lowercased()) " + route.path.description.split(separator: "/", omittingEmptySubsequences: false)
                .map { $0.hasPrefix(":") ? "{\($0.dropFirst())}" : String($0) }.joined(separator: "/")
        })
        let documented = Set(OpenAPI.operations.map { "\($0.method) \($0.path)" })
        #expect(routes.subtracting(documented).isEmpty, "not in the document: \(routes.subtracting(documented).sorted())")
        #expect(documented.subtracting(routes).isEmpty, "documented but not routed: \(documented.subtracting(routes).sorted())")
        // The areas an API key can be limited to are the document's tags (but session, open to every key).
        let tags = Set(OpenAPI.operations.filter { $0.path.hasPrefix("/v1/") }.map(\.tag)).subtracting(["session"])
        #expect(tags == Set(APIKey.allScopes), "\(tags.sorted()) vs \(APIKey.allScopes)")
        // It is JSON that says it is OpenAPI 3.1, and every reference resolves.
        let text = String(decoding: JSON.encode(OpenAPI.document(version: "test")), as: UTF8.self)
        let document = try JSON.decode(Array(text.utf8))
        #expect(document["openapi"] == "3.1.0")
        let names = text.split(separator: "#/components/schemas/").dropFirst().map { $0.prefix { $0 != "\"" } }
        for name in Set(names) { #expect(document["components"]?["schemas"]?[String(name)] != nil, "no schema \(name)") }
        await store.close()
    }
}

/// The API over a store that cannot write: SQLite's page limit stands in for a full disk (it fails the
/// same way, "database or disk is full").
@Suite struct StoreUnavailableTests {
    @Test func aStoreThatCannotWriteGets503WithRetryAfterAndReadsGoOn() async throws {
        let dir = TempDir()
        let hub = try makeHub(dir)
        let store = try await openStore("sqlite:\(dir.path)/iotc.db")
        let accounts = Accounts(store: store)
        let owner = try #require(try await accounts.bootstrap())
        let router = HubAPI.router(hub: hub, accounts: accounts, directory: RegistryDirectory(devices: Devices(store: store)),
                                   commands: CommandCenter(hub: hub, commands: Commands(store: store), logger: Logger(label: "test")),
                                   pipelines: PipelineFiles(hub: hub, loader: HubConfigLoader(catalog: Build.plugins.catalog), files: [], logger: Logger(label: "test")),
                                   registry: PrometheusCollectorRegistry(), version: "test")
        final class Port: @unchecked Sendable { var value = 0 }
        let port = Port()
        let running = DispatchSemaphore(value: 0)
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                              onServerRunning: { channel in port.value = channel.localAddress?.port ?? 0; running.signal() },
                              logger: Logger(label: "test"))
        let server = Task { try await app.runService(gracefulShutdownSignals: []) }
        defer { server.cancel() }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in DispatchQueue.global().async { running.wait(); c.resume() } }
        func call(_ method: String, _ path: String, _ body: String? = nil) async -> HTTPResult? {
            await withCheckedContinuation { c in
                DispatchQueue.global().async {
                    c.resume(returning: http(method, "http://127.0.0.1:\(port.value)\(path)", body: body.map { Array($0.utf8) },
                                             headers: ["Authorization": "Bearer \(owner)", "Content-Type": "application/json"]))
                }
            }
        }
        // No more pages than now: devices are created until the room left in them is used up.
        let pages = try await store.query("PRAGMA page_count").first?.int("page_count") ?? 0
        #expect(pages > 0)
        _ = try await store.query("PRAGMA max_page_count = \(pages)")
        var refused: HTTPResult?
        for i in 0..<500 where refused == nil {
            let r = await call("POST", "/v1/devices", #"{"id": "sensor-\#(i)", "name": "\#(String(repeating: "n", count: 200))"}"#)
            if r?.status != 201 { refused = r }
        }
        #expect(refused?.status == 503, "\(String(describing: refused))")
        #expect(refused?.headers["retry-after"] == "5")
        #expect(refused?.headers["content-type"] == "application/problem+json")
        #expect(refused?.body.contains("database or disk is full") == true, "\(refused?.body ?? "")")
        let read = await call("GET", "/v1/devices")
        #expect(read?.status == 200, "a read needs no room: \(String(describing: read))")
        await store.close()
    }
}
