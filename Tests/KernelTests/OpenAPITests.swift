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
