import Foundation
import Testing
@testable import IoTCKernel
import IoTCPluginKit

@Suite struct PipelineProcessorTests {
    func processor(_ steps: String, to: String = "[ out ]", errors: String = "[]") throws -> PipelineProcessor {
        let yaml = """
            sources: { devices: { plugin: http } }
            sinks:
              out: { plugin: webhook, url: "http://x" }
              alarms: { plugin: webhook, url: "http://x" }
            pipelines:
              p:
                from: [ devices ]
                steps:
            \(steps.split(separator: "\n").map { "      " + $0 }.joined(separator: "\n"))
                to: \(to)
                errors: \(errors)
            """
        let c = try HubConfigLoader(catalog: testCatalog, environment: [:]).load(texts: [("p.yaml", yaml)]).0
        return PipelineProcessor(c.pipelines[0], clock: { 1_000 })
    }

    func message(_ json: String, topic: String = "devices/d1/telemetry", contentType: String = "application/json") -> CanonicalMessage {
        CanonicalMessage(Message(device: "d1", topic: topic, contentType: contentType, payload: Array(json.utf8)), receivedTime: 1_000)
    }

    @Test func decodesMapsAndSetsMetadata() throws {
        let p = try processor("""
            - decode: json
            - map: { temperature_c: "round((temperature_f - 32) / 1.8, 1)", meta.unit: "'C'", location.site: "'line-1'", msg.topic: "'out/' + msg.device" }
            """)
        let r = p.process(message(#"{"temperature_f": 100}"#))
        #expect(r.failures.isEmpty)
        let out = try #require(r.outputs.first)
        #expect(out.sinks == ["out"])
        #expect(out.message.payload == .value(["temperature_c": 37.8, "location": ["site": "line-1"]]))
        #expect(out.message.metadata("unit") == "C")
        #expect(out.message.topic == "out/d1")
        #expect(String(decoding: out.message.payloadBytes, as: UTF8.self) == #"{"temperature_c":37.8,"location":{"site":"line-1"}}"#)
    }

    /// `set` writes nested fields in place: objects on the way are made when missing, their other
    /// members stay, and a field inside something that is not an object fails the step and leaves the
    /// message as it came.
    @Test func setWritesNestedFieldsAndRefusesThemInsideNonObjects() throws {
        let p = try processor("- decode: json\n- set: { a.b.c: \"1\", a.b.d: \"a.x\", a.e: \"a.b.keep\", f: \"[1]\" }")
        let r = p.process(message(#"{"a": {"b": {"keep": true}, "x": 0}, "z": 2}"#))
        #expect(try #require(r.outputs.first).message.payload == .value(["a": ["b": ["keep": true, "c": 1, "d": 0], "x": 0, "e": true], "z": 2, "f": [1]]))
        let refused = try processor("- decode: json\n- set: { z.y: \"1\" }").process(message(#"{"z": 2}"#))
        #expect(refused.outputs.isEmpty)
        let failure = try #require(refused.failures.first)
        #expect(failure.reason == "cannot set field 'y' inside a number")
        #expect(failure.message.payloadBytes == Array(#"{"z": 2}"#.utf8))
        let deeper = try processor("- decode: json\n- set: { a.z.y: \"1\" }").process(message(#"{"a": {"z": "s"}}"#))
        #expect(deeper.failures.first?.reason == "cannot set field 'y' inside a string")
    }

    /// A payload that steps only read leaves as the device sent it; one a step changed is encoded again.
    @Test func aPayloadOnlyReadLeavesAsTheDeviceSentIt() throws {
        let sent = #"{ "t" : 21.50, "n": 1e2, "s": "\u00e9" }"#
        let read = try processor("- decode: auto\n- filter: \"t > 20\"\n- set: { meta.checked: \"'yes'\" }").process(message(sent))
        let kept = try #require(read.outputs.first?.message)
        #expect(kept.payloadBytes == Array(sent.utf8))
        #expect(kept.pluginMessage.payload == Array(sent.utf8) && kept.pluginMessage.contentType == "application/json")
        #expect(kept.payload == .value(["t": 21.5, "n": 100.0, "s": "é"]), "the steps still read the decoded value")
        let changed = try processor("- decode: auto\n- set: { ok: \"true\" }").process(message(sent))
        let encoded = try #require(changed.outputs.first?.message.payloadBytes)
        #expect(encoded != Array(sent.utf8) && String(decoding: encoded, as: UTF8.self).hasSuffix(#""ok":true}"#))
        #expect(try JSON.decode(encoded) == ["t": 21.5, "n": 100.0, "s": "é", "ok": true])
        // Changing the content type alone also means encoding again.
        let retyped = try processor("- decode: auto\n- set: { msg.content_type: \"'application/cbor'\" }").process(message(sent))
        #expect(try #require(retyped.outputs.first?.message.payloadBytes) == CBOR.encode(["t": 21.5, "n": 100.0, "s": "é"]))
    }

    /// `decode: auto` on a payload without a content type (MQTT 3.1.1): JSON when it parses as JSON,
    /// labelled as such, the device's bytes kept; anything else, or a named type without a codec, fails.
    @Test(arguments: ["", "application/octet-stream"])
    func autoDecodesUntypedJSON(contentType: String) throws {
        let p = try processor("- decode: auto")
        let sent = #"{"t": 21.5}"#
        let out = try #require(p.process(message(sent, contentType: contentType)).outputs.first?.message)
        #expect(out.payload == .value(["t": 21.5]) && out.contentType == "application/json")
        #expect(out.payloadBytes == Array(sent.utf8))
        let refused = p.process(message("not json", contentType: contentType))
        #expect(refused.outputs.isEmpty && refused.failures.first?.reason.contains("(and the payload is not JSON)") == true)
        let named = p.process(message(sent, contentType: "text/plain"))
        #expect(named.outputs.isEmpty && named.failures.first?.reason == "cannot decode content type 'text/plain'; name a codec: decode: json")
    }

    @Test func setKeepsOtherFields() throws {
        let r = try processor("- decode: auto\n- set: { ok: \"true\" }").process(message(#"{"a": 1}"#))
        #expect(r.outputs.first?.message.payload == .value(["a": 1, "ok": true]))
    }

    @Test func filtersAndCounts() throws {
        let p = try processor("- decode: json\n- filter: \"v > 10\"")
        #expect(p.process(message(#"{"v": 5}"#)).filtered == 1)
        #expect(p.process(message(#"{"v": 50}"#)).outputs.count == 1)
    }

    @Test func routesByTopicAndCondition() throws {
        let p = try processor("""
            - decode: json
            - route:
                - { topic: "devices/+/alarm", to: [ alarms ] }
                - { when: "level > 3", to: [ alarms ], continue: true }
            """)
        #expect(p.process(message("{}", topic: "devices/d1/alarm")).outputs.map(\.sinks) == [["alarms"]])
        #expect(p.process(message(#"{"level": 5}"#)).outputs.map(\.sinks) == [["alarms"], ["out"]])
        #expect(p.process(message(#"{"level": 1}"#)).outputs.map(\.sinks) == [["out"]])
    }

    @Test func sendsUnhandledMessagesToTheErrorOutputWithTheReason() throws {
        let p = try processor("- decode: json\n- map: { t: \"temperature * 2\" }", errors: "[ alarms ]")
        let notJSON = p.process(message("not json"))
        #expect(notJSON.outputs.isEmpty)
        let f = try #require(notJSON.failures.first)
        #expect(f.step == "decode")
        #expect(f.reason.hasPrefix("payload is not valid JSON"))
        #expect(f.errorOutputMessage.metadata("error_step") == "decode (step 1)")
        #expect(f.errorOutputMessage.payloadBytes == Array("not json".utf8))
        let missing = p.process(message(#"{"humidity": 3}"#))
        #expect(missing.failures.first?.reason == "expression: field 'temperature' is missing")
        #expect(p.process(message("{}", contentType: "text/plain")).failures.isEmpty == false)
    }

    @Test func encodesToCBOR() throws {
        let r = try processor("- decode: json\n- encode: cbor").process(message(#"{"a": 1}"#))
        let out = try #require(r.outputs.first?.message)
        #expect(out.contentType == "application/cbor")
        #expect(try CBOR.decode(out.payloadBytes) == ["a": 1])
    }
}
