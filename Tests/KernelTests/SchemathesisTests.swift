import Foundation
import Testing
import IoTCPluginKit

/// schemathesis drives the running API from its own OpenAPI document: valid and invalid requests,
/// every operation, and checks each answer against the document (status codes, content types,
/// schemas, invalid input refused, valid input taken, 405 for other methods). It must find nothing.
@Suite(.serialized) struct SchemathesisTests {
    @Test func theAPIKeepsToItsOpenAPIDocument() throws {
        let schemathesis = Build.packageRoot + "/.venv/bin/schemathesis"
        try #require(FileManager.default.isExecutableFile(atPath: schemathesis), "no schemathesis in .venv: run scripts/install-deps.sh test")
        let dir = TempDir()
        let apiPort = freePort(), httpPort = freePort()
        let file = dir.write("hub.yaml", """
            sources: { devices: { plugin: http, listen: "127.0.0.1:\(httpPort)" } }
            sinks: { out: { plugin: log } }
            pipelines: { t: { from: [ "devices:devices/+/telemetry" ], to: [ out ] } }
            """)
        let hub = try ProcessTests().serve(file, data: dir.path + "/data", api: apiPort)
        defer { hub.stop() }
        let api = "http://127.0.0.1:\(apiPort)"
        #expect(eventually { http("GET", "\(api)/health")?.status == 200 }, "hub did not start: \(hub.log)")
        // As the system tenant's owner, and as another tenant's owner (who meets 403 and 404 where the
        // system tenant would act).
        let created = http("POST", "\(api)/v1/tenants", body: Array(#"{"id": "fuzz"}"#.utf8),
                           headers: ["Authorization": "Bearer \(ProcessTests.ownerKey)", "Content-Type": "application/json"])
        let tenantKey = try #require((try? JSON.decode(created?.body ?? ""))?["owner_key"]?["secret"]?.string)
        // A certificate authority's PEM is valid only when it is a real CA certificate, and a revocation
        // list only when that authority signed it, which no schema can say: neither is expected to take
        // any schema-valid text (every other check still applies to them).
        let config = dir.write("schemathesis.toml", """
            [[operations]]
            include-path = "/v1/certificate-authorities"
            include-method = "POST"
            checks.positive_data_acceptance.enabled = false

            [[operations]]
            include-path = "/v1/certificate-authorities/{authority}/crl"
            include-method = "PUT"
            checks.positive_data_acceptance.enabled = false
            """)
        for key in [ProcessTests.ownerKey, tenantKey] {
            let (code, output) = try run(schemathesis, [
                "--config-file", config, "run", "\(api)/openapi.json", "--header", "Authorization: Bearer \(key)",
                "--max-examples", "40", "--seed", "20261127", "--generation-database", "none", "--request-timeout", "20",
                "--no-color", "--workers", "1",
            ])
            #expect(code == 0, "\(output.suffix(6000))")
        }
    }
}
