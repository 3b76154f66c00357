import Foundation
import IoTCPluginKit
import Logging

/// Runs pipeline test files (`*_test.yaml`): input messages in; expected sink outputs, errors and
/// filtered counts out; sources and sinks mocked, so nothing connects anywhere.
///
/// ```yaml
/// files: [ default.yaml ]          # pipelines under test; default: this file's name without _test
/// env: { OPS_SECRET: test }        # variables for ${env:...}
/// tests:
///   - name: converts to celsius
///     pipeline: telemetry
///     now: 2026-01-01T00:00:00Z    # the clock for now()
///     input:
///       - { device: s1, topic: devices/s1/telemetry, payload: { temperature_f: 212 } }
///     expect:
///       sinks:
///         archive:
///           - { payload: { temperature_c: 100 }, metadata: { site: line-1 }, condition: "temperature_c > 99" }
///       errors: [ { step: map, reason_contains: missing } ]
///       filtered: 0
/// ```
public struct PipelineTestRunner {
    public let plugins: PluginSet

    public init(plugins: PluginSet) { self.plugins = plugins }

    public struct Outcome: Sendable {
        public var file: String
        public var name: String
        public var failures: [String]
        public var passed: Bool { failures.isEmpty }
    }

    /// Finds `*_test.yaml` files under the paths (files are taken as they are).
    public static func testFiles(in paths: [String]) -> [String] {
        var out: [String] = []
        for p in paths {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: p, isDirectory: &isDir) else { continue }
            if !isDir.boolValue { out.append(p); continue }
            let e = FileManager.default.enumerator(atPath: p)
            while let f = e?.nextObject() as? String {
                if f.hasSuffix("_test.yaml") || f.hasSuffix("_test.yml") { out.append((p as NSString).appendingPathComponent(f)) }
            }
        }
        return out.sorted()
    }

    public func run(file: String) throws(ConfigurationError) -> [Outcome] {
        guard let data = FileManager.default.contents(atPath: file), let text = String(data: data, encoding: .utf8) else {
            throw ConfigurationError(diagnostics: [Diagnostic(at: .init(file: file, line: 1, column: 1), "cannot read file")])
        }
        guard let root = try YAMLNode.parse(text, file: file), case .mapping = root else {
            throw ConfigurationError(diagnostics: [Diagnostic(at: .init(file: file, line: 1, column: 1), "a test file is a mapping with 'tests'")])
        }
        var v = SpecValidator(baseDirectory: (file as NSString).deletingLastPathComponent)
        let o = v.object(root, fields: Self.fileFields, context: "test file")
        if v.diagnostics.hasErrors { throw ConfigurationError(diagnostics: v.diagnostics.errors) }
        let dir = (file as NSString).deletingLastPathComponent
        var files: [String] = []
        if case .array(let list)? = o["files"], !list.isEmpty {
            files = list.compactMap { if case .string(let s) = $0 { s.hasPrefix("/") ? s : (dir as NSString).appendingPathComponent(s) } else { nil } }
        } else {
            let base = (file as NSString).lastPathComponent.replacingOccurrences(of: "_test.yaml", with: ".yaml").replacingOccurrences(of: "_test.yml", with: ".yml")
            files = [(dir as NSString).appendingPathComponent(base)]
        }
        var env = ProcessInfo.processInfo.environment
        if case .object(let e)? = o["env"] { for (k, x) in e { if case .string(let s) = x { env[k] = s } } }
        let (config, _) = try HubConfigLoader(catalog: plugins.catalog, environment: env).load(files: files)
        let temp = FileManager.default.temporaryDirectory.appendingPathComponent("iotc-test-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: temp) }
        guard let hub = try? Hub(plugins: plugins, dataDirectory: temp, logger: Logger(label: "iotc.test")) else {
            throw ConfigurationError(diagnostics: [Diagnostic(at: .init(file: file, line: 1, column: 1), "cannot create a scratch folder")])
        }
        var outcomes: [Outcome] = []
        guard case .sequence(let tests, _)? = root["tests"] else { return [] }
        for t in tests { outcomes.append(runTest(t, file: file, config: config, hub: hub)) }
        return outcomes
    }

    static let fileFields: [ConfigField] = [
        ConfigField("files", .list(.string), "Pipeline files under test.", default: "[]"),
        ConfigField("env", .map(.string), "Environment variables for ${env:...}.", default: "{}"),
        ConfigField("tests", .list(.object(testFields)), "Test cases.", required: true),
    ]

    static let messageFields: [ConfigField] = [
        ConfigField("source", .string, "Source the message comes from."),
        ConfigField("device", .string, "Device id.", default: #""test-device""#),
        ConfigField("tenant", .string, "Tenant.", default: #""default""#),
        ConfigField("topic", .string, "Topic; default devices/DEVICE/telemetry."),
        ConfigField("kind", .string, "Message kind.", default: #""telemetry""#, options: MessageKind.allCases.map(\.name)),
        ConfigField("content_type", .string, "Content type.", default: #""application/json""#),
        ConfigField("payload", .any, "Payload, encoded by the content type."),
        ConfigField("payload_text", .string, "Payload as raw text."),
        ConfigField("metadata", .map(.string), "Metadata.", default: "{}"),
        ConfigField("properties", .map(.string), "Protocol properties.", default: "{}"),
        ConfigField("after", .duration, "Simulated time that passes before this message (rules' `for`, now()): a ten-minute test runs in a moment.", example: "5m"),
        ConfigField("at", .string, "The simulated time of this message, RFC 3339 (instead of after)."),
        ConfigField("wait", .duration, "No message: only simulated time passes, and the pipeline's timer runs (absence rules).", example: "10m"),
    ]

    static let expectedFields: [ConfigField] = [
        ConfigField("payload", .any, "Expected payload (decoded by the content type; numbers compare by value)."),
        ConfigField("payload_text", .string, "Expected raw payload text."),
        ConfigField("metadata", .map(.string), "Metadata the output must have (others may exist)."),
        ConfigField("topic", .string, "Expected topic."),
        ConfigField("device", .string, "Expected device."),
        ConfigField("kind", .string, "Expected kind."),
        ConfigField("content_type", .string, "Expected content type."),
        ConfigField("condition", .string, "Expression that must be true of the output."),
    ]

    static let testFields: [ConfigField] = [
        ConfigField("name", .string, "Test name.", required: true),
        ConfigField("pipeline", .string, "Pipeline under test.", required: true),
        ConfigField("now", .string, "Clock for now(), RFC 3339."),
        ConfigField("devices", .list(.object([
            ConfigField("id", .string, "Device id.", required: true),
            ConfigField("tenant", .string, "Its tenant.", default: #""default""#),
            ConfigField("labels", .map(.string), "Its labels.", default: "{}"),
        ])), "Registered devices, for rule commands to device groups (by label).", default: "[]"),
        ConfigField("input", .list(.object(messageFields)), "Messages fed to the pipeline in order.", required: true),
        ConfigField("expect", .object([
            ConfigField("sinks", .map(.list(.object(expectedFields))), "Expected outputs per sink, in order; sinks not named are not checked."),
            ConfigField("errors", .list(.object([
                ConfigField("step", .string, "The step that failed."),
                ConfigField("reason_contains", .string, "Text the reason contains."),
            ])), "Expected step failures, in order."),
            ConfigField("filtered", .int, "Messages a filter should drop."),
            ConfigField("rule_errors", .int, "Messages a rule step could not evaluate (they go on)."),
        ]), "What must come out.", default: "{}"),
    ]

    private func runTest(_ node: YAMLNode, file: String, config: HubConfig, hub: Hub) -> Outcome {
        var v = SpecValidator(baseDirectory: (file as NSString).deletingLastPathComponent)
        let t = v.object(node, fields: Self.testFields, context: "test")
        let name = t["name"].flatMap { if case .string(let s) = $0 { s } else { nil } } ?? "line \(node.location.line)"
        var outcome = Outcome(file: file, name: name, failures: v.diagnostics.errors.map(\.description))
        guard outcome.passed, case .string(let pipelineName)? = t["pipeline"] else { return outcome }
        guard let p = config.pipelines.first(where: { $0.name == pipelineName }) else {
            outcome.failures.append("\(node.location): no pipeline named '\(pipelineName)'")
            return outcome
        }
        var now = Int64(Date().timeIntervalSince1970 * 1000)
        if case .string(let s)? = t["now"] {
            guard let ms = RFC3339.parse(s) else {
                outcome.failures.append("\(node.location): 'now' is not RFC 3339")
                return outcome
            }
            now = ms
        }
        let clock = SimulatedClock(now)
        var registered: [(tenant: String, id: String, labels: [String: String])] = []
        if case .array(let list)? = t["devices"] {
            for case .object(let d) in list {
                guard case .string(let id)? = d["id"] else { continue }
                let tenant = if case .string(let s)? = d["tenant"] { s } else { "default" }
                var labels: [String: String] = [:]
                if case .object(let l)? = d["labels"] { for (k, v) in l { if case .string(let s) = v { labels[k] = s } } }
                registered.append((tenant, id, labels))
            }
        }
        let devices = registered
        let processor: PipelineProcessor
        do {
            processor = try hub.makeProcessor(p).withClock({ clock.now }, devices: { tenant, labels in
                devices.filter { d in d.tenant == tenant && labels.allSatisfy { d.labels[$0.key] == $0.value } }.map(\.id).sorted()
            })
        } catch {
            outcome.failures.append("\(node.location): \(error)")
            return outcome
        }
        var outputs: [String: [CanonicalMessage]] = [:]
        var failures: [PipelineProcessor.Failure] = []
        var filtered = 0, ruleErrors = 0
        if case .array(let inputs)? = t["input"] {
            func collect(_ r: PipelineProcessor.Result) { for o in r.outputs { for s in o.sinks { outputs[s, default: []].append(o.message) } } }
            for case .object(let i) in inputs {
                if let wait = i["wait"]?.number {
                    clock.now += Int64(wait * 1000)
                    collect(processor.tick(now: clock.now))
                    continue
                }
                if let after = i["after"]?.number { clock.now += Int64(after * 1000) }
                if case .string(let s)? = i["at"] {
                    guard let ms = RFC3339.parse(s) else {
                        outcome.failures.append("\(node.location): input 'at' is not RFC 3339: \(s)")
                        return outcome
                    }
                    clock.now = ms
                }
                // The timer runs before each message, as it would have while time passed.
                collect(processor.tick(now: clock.now))
                let m = message(i, now: clock.now)
                let r = processor.process(m)
                for o in r.outputs { for s in o.sinks { outputs[s, default: []].append(o.message) } }
                for f in r.failures {
                    failures.append(f)
                    for s in p.errors { outputs[s, default: []].append(f.errorOutputMessage) }
                }
                filtered += r.filtered
                ruleErrors += r.ruleErrors.count
            }
        }
        guard case .object(let expect)? = t["expect"] else { return outcome }
        if case .object(let sinks)? = expect["sinks"] {
            for (sink, list) in sinks {
                guard case .array(let expected) = list else { continue }
                let got = outputs[sink] ?? []
                if got.count != expected.count {
                    outcome.failures.append("sink '\(sink)': expected \(expected.count) message(s), got \(got.count)" + (failures.isEmpty ? "" : "; step errors: " + failures.map { "\($0.step): \($0.reason)" }.joined(separator: "; ")))
                }
                for (k, (e, g)) in zip(expected, got).enumerated() {
                    guard case .object(let want) = e else { continue }
                    for problem in compare(want, g, now: now) { outcome.failures.append("sink '\(sink)' message \(k + 1): \(problem)") }
                }
            }
        }
        if case .array(let errs)? = expect["errors"] {
            if errs.count != failures.count {
                outcome.failures.append("expected \(errs.count) step error(s), got \(failures.count)" + (failures.isEmpty ? "" : ": " + failures.map { "\($0.step): \($0.reason)" }.joined(separator: "; ")))
            }
            for (k, (e, f)) in zip(errs, failures).enumerated() {
                guard case .object(let want) = e else { continue }
                if case .string(let step)? = want["step"], step != f.step { outcome.failures.append("error \(k + 1): expected step '\(step)', got '\(f.step)'") }
                if case .string(let text)? = want["reason_contains"], !f.reason.contains(text) {
                    outcome.failures.append("error \(k + 1): reason '\(f.reason)' does not contain '\(text)'")
                }
            }
        }
        if case .int(let n)? = expect["rule_errors"], Int(n) != ruleErrors {
            outcome.failures.append("expected \(n) rule error(s), got \(ruleErrors)")
        }
        if case .int(let n)? = expect["filtered"], Int(n) != filtered {
            outcome.failures.append("expected \(n) filtered message(s), got \(filtered)")
        }
        return outcome
    }

    private func message(_ i: Value.Object, now: Int64) -> CanonicalMessage {
        func s(_ k: String) -> String? { if case .string(let x)? = i[k] { x } else { nil } }
        func pairs(_ k: String) -> [KeyValue] {
            guard case .object(let o)? = i[k] else { return [] }
            return o.compactMap { key, v in if case .string(let x) = v { KeyValue(key, x) } else { nil } }
        }
        let device = s("device") ?? "test-device"
        let contentType = s("content_type") ?? "application/json"
        var payload: [UInt8] = []
        if let text = s("payload_text") { payload = Array(text.utf8) } else if let v = i["payload"] {
            payload = (PayloadCodec(contentType: contentType) ?? .json).encode(v)
        }
        let m = Message(id: "test", kind: MessageKind(name: s("kind") ?? "telemetry") ?? .telemetry, tenant: s("tenant") ?? "default",
                        device: device, topic: s("topic") ?? "devices/\(device)/telemetry", contentType: contentType, payload: payload,
                        receivedTime: now, qos: 1, properties: pairs("properties"), metadata: pairs("metadata"))
        return CanonicalMessage(m, receivedTime: now)
    }

    private func compare(_ want: Value.Object, _ got: CanonicalMessage, now: Int64) -> [String] {
        var problems: [String] = []
        var decoded: Value?
        switch got.payload {
        case .value(let v): decoded = v
        case .bytes(let b): decoded = try? PayloadCodec(contentType: got.contentType)?.decode(b)
        }
        if let expected = want["payload"] {
            if decoded.map({ !ValueOrder.equal($0, expected) }) ?? true {
                problems.append("payload is \(decoded.map(JSON.string) ?? String(decoding: got.payloadBytes, as: UTF8.self)), expected \(JSON.string(expected))")
            }
        }
        if case .string(let text)? = want["payload_text"], String(decoding: got.payloadBytes, as: UTF8.self) != text {
            problems.append("payload text is '\(String(decoding: got.payloadBytes, as: UTF8.self))', expected '\(text)'")
        }
        for (field, actual) in [("topic", got.topic), ("device", got.device), ("kind", got.kind.name), ("content_type", got.contentType)] {
            if case .string(let e)? = want[field], e != actual { problems.append("\(field) is '\(actual)', expected '\(e)'") }
        }
        if case .object(let meta)? = want["metadata"] {
            for (k, v) in meta {
                guard case .string(let e) = v else { continue }
                let actual = got.metadata(k)
                if actual != e { problems.append("metadata '\(k)' is \(actual.map { "'\($0)'" } ?? "missing"), expected '\(e)'") }
            }
        }
        if case .string(let cond)? = want["condition"] {
            do {
                let e = try Expression(cond)
                var c = EvaluationContext(payload: decoded ?? .bytes(got.payloadBytes), metadata: got.metadata, envelope: got.evaluationEnvelope, now: now)
                if try !e.test(&c) { problems.append("condition '\(cond)' is false") }
            } catch {
                problems.append("condition '\(cond)': \(error.message)")
            }
        }
        return problems
    }
}

/// The clock of one pipeline test: inputs move it on with `after` and `at`.
final class SimulatedClock: @unchecked Sendable {
    var now: Int64
    init(_ now: Int64) { self.now = now }
}

extension PipelineProcessor {
    /// The same pipeline with another clock and registry.
    func withClock(_ clock: @escaping @Sendable () -> Int64, devices: @escaping @Sendable (_ tenant: String, _ labels: [KeyValue]) -> [String]) -> PipelineProcessor {
        PipelineProcessor(config, pluginSteps: pluginSteps, rules: RuleStates(), devices: devices, clock: clock)
    }
}
