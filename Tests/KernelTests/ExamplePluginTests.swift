import Foundation
import Testing
@testable import IoTCKernel
import IoTCPluginKit

/// A plugin built as a separate Swift package (docs/example-plugin) loads into the hub without
/// rebuilding it, and its step runs inside a pipeline.
@Suite struct ExamplePluginTests {
    @Test(.timeLimit(.minutes(10)))
    func buildsLoadsAndRunsInAPipeline() throws {
        let package = Build.packageRoot + "/docs/example-plugin"
        let scratch = Build.packageRoot + "/.build-example-plugin"
        let (code, output) = try run("/usr/bin/env", ["swift", "build", "--package-path", package, "--scratch-path", scratch,
                                                      "--product", "iotc-plugin-example"])
        #expect(code == 0, "swift build failed:\n\(output.suffix(3000))")
        let path = scratch + "/debug/libiotc-plugin-example.so"
        let example = try PluginLoader.load(path)
        #expect(example.name == "example")
        #expect(example.components.map(\.entry.name) == ["tag"])
        #expect(example.components[0].entry.kind == .step)

        let plugins = PluginSet(Build.plugins.libraries + [example])
        let dir = TempDir()
        dir.write("p.yaml", """
            sources: { devices: { plugin: http } }
            sinks: { out: { plugin: log } }
            pipelines:
              tagged:
                from: [ devices ]
                steps:
                  - decode: json
                  - tag: { key: origin, value: example, duplicate: true }
                to: [ out ]
            """)
        let tests = dir.write("p_test.yaml", """
            tests:
              - name: tags and duplicates
                pipeline: tagged
                input: [ { payload: { a: 1 } } ]
                expect:
                  sinks:
                    out:
                      - { payload: { a: 1 }, metadata: { origin: example } }
                      - { payload: { a: 1 }, condition: "!has(meta, 'origin')" }
            """)
        let outcomes = try PipelineTestRunner(plugins: plugins).run(file: tests)
        #expect(outcomes.map(\.failures) == [[]])
        // The step's config is checked against its spec like any built-in one.
        #expect(throws: ConfigurationError.self) {
            _ = try HubConfigLoader(catalog: plugins.catalog, environment: [:]).load(texts: [("x.yaml", """
                sources: { devices: { plugin: http } }
                pipelines: { p: { from: [ devices ], steps: [ { tag: { key: a } } ] } }
                """)])
        }
    }
}
