import Foundation
import Testing
@testable import IoTCKernel

@Suite struct PipelineTestRunnerTests {
    @Test func reportsEveryMismatch() throws {
        let dir = TempDir()
        dir.write("p.yaml", """
            sources: { devices: { plugin: http } }
            sinks: { out: { plugin: log }, bad: { plugin: log } }
            pipelines:
              p:
                from: [ devices ]
                steps: [ { decode: json }, { filter: "v > 0" }, { map: { w: "v * 2" } } ]
                to: [ out ]
                errors: [ bad ]
            """)
        let file = dir.write("p_test.yaml", """
            tests:
              - name: right
                pipeline: p
                input: [ { payload: { v: 2 } } ]
                expect: { sinks: { out: [ { payload: { w: 4 } } ] } }
              - name: wrong payload, metadata, topic and condition
                pipeline: p
                input: [ { payload: { v: 2 } } ]
                expect: { sinks: { out: [ { payload: { w: 5 }, metadata: { x: y }, topic: other, condition: "w < 0" } ] } }
              - name: wrong counts
                pipeline: p
                input: [ { payload: { v: 0 } }, { payload_text: "nope" } ]
                expect: { sinks: { out: [ {} ], bad: [] }, errors: [], filtered: 0 }
              - name: unknown pipeline
                pipeline: q
                input: []
            """)
        let outcomes = try PipelineTestRunner(plugins: Build.plugins).run(file: file)
        #expect(outcomes.map(\.name) == ["right", "wrong payload, metadata, topic and condition", "wrong counts", "unknown pipeline"])
        #expect(outcomes[0].failures == [])
        #expect(outcomes[1].failures == [
            #"sink 'out' message 1: payload is {"w":4}, expected {"w":5}"#,
            "sink 'out' message 1: topic is 'devices/test-device/telemetry', expected 'other'",
            "sink 'out' message 1: metadata 'x' is missing, expected 'y'",
            "sink 'out' message 1: condition 'w < 0' is false",
        ])
        #expect(outcomes[2].failures.count == 4)
        #expect(outcomes[2].failures[0].hasPrefix("sink 'out': expected 1 message(s), got 0"))
        #expect(outcomes[2].failures[1].hasPrefix("sink 'bad': expected 0 message(s), got 1"))
        #expect(outcomes[2].failures[2].hasPrefix("expected 0 step error(s), got 1: decode: payload is not valid JSON"))
        #expect(outcomes[2].failures[3] == "expected 0 filtered message(s), got 1")
        #expect(outcomes[3].failures.first?.contains("no pipeline named 'q'") == true)
    }
}
