import IoTCPluginKit

/// Runs one message through a pipeline's steps. Pure: no queues, no I/O (plugin steps aside), so the
/// runtime and `iotc test` share it.
public struct PipelineProcessor: Sendable {
    public let config: PipelineConfig
    /// Plugin steps by index in `config.steps`.
    let pluginSteps: [Int: @Sendable (CanonicalMessage) throws -> [CanonicalMessage]]
    let clock: @Sendable () -> Int64
    /// The ids of a tenant's devices whose labels include these (a rule command's device group).
    let devices: @Sendable (_ tenant: String, _ labels: [KeyValue]) -> [String]
    /// The state of the pipeline's rule steps (kept across reloads by the hub).
    let rules: RuleStates
    /// Whether it has rules, which its runtime's timer serves (absence, saving their state).
    public let hasTimers: Bool

    /// A message leaving the pipeline for some sinks.
    public struct Output: Sendable {
        public var message: CanonicalMessage
        public var sinks: [String]
        /// A rule's notification (an alert, digest or escalation): whether its sinks took it or not is
        /// recorded on the alert.
        public var notification = false
    }

    /// A message a step could not handle.
    public struct Failure: Sendable, Error {
        public var message: CanonicalMessage
        public var step: String
        public var stepIndex: Int
        public var reason: String
        public var pipeline: String

        /// The message as the pipeline's error output receives it: the input, with `error`,
        /// `error_step` and `error_pipeline` metadata.
        public var errorOutputMessage: CanonicalMessage {
            var m = message
            m.setMetadata("error", reason)
            m.setMetadata("error_step", "\(step) (step \(stepIndex + 1))")
            m.setMetadata("error_pipeline", pipeline)
            return m
        }
    }

    public struct Result: Sendable {
        public var outputs: [Output] = []
        public var failures: [Failure] = []
        /// Messages that a filter dropped.
        public var filtered = 0
        /// Rule steps that could not evaluate a message (a missing field): the message went on.
        public var ruleErrors: [(rule: String, reason: String)] = []
        /// Every alert message the rules made (also those whose rule sends them to no sink), for the
        /// hub's alert book.
        public var alerts: [CanonicalMessage] = []

        /// Empties the result, keeping its lists' room for the next message.
        public mutating func removeAll() {
            outputs.removeAll(keepingCapacity: true)
            failures.removeAll(keepingCapacity: true)
            ruleErrors.removeAll(keepingCapacity: true)
            alerts.removeAll(keepingCapacity: true)
            filtered = 0
        }
    }

    public init(
        _ config: PipelineConfig,
        pluginSteps: [Int: @Sendable (CanonicalMessage) throws -> [CanonicalMessage]] = [:],
        rules: RuleStates = RuleStates(),
        devices: @escaping @Sendable (_ tenant: String, _ labels: [KeyValue]) -> [String] = { _, _ in [] },
        clock: @escaping @Sendable () -> Int64
    ) {
        self.config = config
        self.pluginSteps = pluginSteps
        self.rules = rules
        self.devices = devices
        self.clock = clock
        hasTimers = Self.hasTimers(config)
    }

    public func process(_ message: CanonicalMessage) -> Result {
        var result = Result()
        run(message, from: 0, &result)
        return result
    }

    /// The same into a result the caller reuses from message to message: emptied first, its lists
    /// keep their room, so that a pipeline's worker does not allocate them for every message.
    public func process(_ message: CanonicalMessage, into result: inout Result) {
        result.removeAll()
        run(message, from: 0, &result)
    }

    private func run(_ start: CanonicalMessage, from first: Int, _ result: inout Result) {
        var m = start
        var index = first
        while index < config.steps.count {
            do {
                // Read in place: a copy of the whole step per message shows in profiles.
                switch config.steps[index].kind {
                case .decode(let codec):
                    if case .bytes(let bytes) = m.payload {
                        if let c = codec ?? PayloadCodec(contentType: m.contentType) {
                            do { m.setDecoded(try c.decode(bytes), from: bytes, contentType: c.contentType) } catch {
                                throw StepError("payload is not valid \(c.rawValue.uppercased()): \(error)")
                            }
                        } else {
                            // `auto` without a content type (MQTT 3.1.1 has none): JSON when it parses as
                            // JSON, parsed once (this is every such message's path through `decode: auto`).
                            let untyped = m.contentType.isEmpty || m.contentType == "application/octet-stream"
                            guard untyped, let v = try? PayloadCodec.json.decode(bytes) else {
                                throw StepError("cannot decode content type '\(m.contentType)'\(untyped ? " (and the payload is not JSON)" : ""); name a codec: decode: json")
                            }
                            m.setDecoded(v, from: bytes, contentType: PayloadCodec.json.contentType)
                        }
                    }
                case .encode(let codec):
                    if case .value(let v) = m.payload { m.payload = .bytes(codec.encode(v)) } else if let from = PayloadCodec(contentType: m.contentType), from != codec, case .bytes(let b) = m.payload {
                        m.payload = .bytes(codec.encode(try from.decode(b)))
                    }
                    m.contentType = codec.contentType
                case .map(let assignments):
                    try assign(assignments, to: &m, replacing: true)
                case .set(let assignments):
                    try assign(assignments, to: &m, replacing: false)
                case .filter(let e):
                    var c = context(m)
                    if !(try e.test(&c)) {
                        result.filtered += 1
                        return
                    }
                case .route(let cases):
                    if let rc = try cases.first(where: { try matches($0, m) }) {
                        result.outputs.append(Output(message: m, sinks: rc.to))
                        if !rc.continues { return }
                    }
                case .rule(let rule):
                    // A rule that cannot evaluate a message counts an error; the message goes on.
                    do {
                        if let alert = try evaluate(rule, m, context: context(m)) {
                            result.alerts.append(alert)
                            if let n = rules.notify(rule, alert, now: clock()) { result.outputs.append(Output(message: n, sinks: rule.to, notification: true)) }
                            result.outputs += commands(rule, alert)
                        }
                    } catch {
                        result.ruleErrors.append((rule.name, (error as? ExpressionError).map { "expression: \($0.message)" } ?? "\(error)"))
                    }
                case .plugin:
                    guard let run = pluginSteps[index] else { throw StepError("plugin step is not loaded") }
                    let outs = try run(m)
                    guard outs.count == 1 else {
                        // Zero or several messages: each goes through the rest of the pipeline, in order.
                        for out in outs { self.run(out, from: index + 1, &result) }
                        return
                    }
                    m = outs[0]
                }
            } catch {
                let reason = (error as? StepError)?.description ?? (error as? ExpressionError).map { "expression: \($0.message)" } ?? "\(error)"
                result.failures.append(Failure(message: start, step: config.steps[index].name, stepIndex: index, reason: reason, pipeline: config.name))
                return
            }
            index += 1
        }
        if !config.to.isEmpty { result.outputs.append(Output(message: m, sinks: config.to)) }
    }

    private func context(_ m: CanonicalMessage) -> EvaluationContext {
        // Expressions that only read the envelope or metadata work on undecoded payloads too.
        let payload: Value = switch m.payload {
        case .value(let v): v
        case .bytes(let b): .bytes(b)
        }
        return EvaluationContext(payload: payload, metadata: m.metadata, envelope: m.evaluationEnvelope, now: clock())
    }

    private func matches(_ rc: RouteCase, _ m: CanonicalMessage) throws -> Bool {
        if let t = rc.topic, !t.matches(m.topic) { return false }
        for kv in rc.metadata where m.metadata(kv.key) != kv.value { return false }
        if let w = rc.when {
            var c = context(m)
            return try w.test(&c)
        }
        return true
    }

    private func assign(_ assignments: [Assignment], to m: inout CanonicalMessage, replacing: Bool) throws {
        var c = context(m)
        var payload: Value = replacing ? .object(Value.Object()) : c.payload
        if !replacing, case .bytes = payload, assignments.contains(where: { if case .field = $0.target { true } else { false } }) {
            throw StepError("payload is not decoded; add '- decode: json' before this step")
        }
        for a in assignments {
            // Each expression sees the message as it came into the step.
            let v = try a.expression.evaluate(&c)
            switch a.target {
            case .field(let path):
                guard !path.isEmpty else { payload = v; continue }
                try Self.set(&payload, path[...], v)
            case .metadata(let key):
                m.setMetadata(key, ExpressionFunction.text(v))
            case .envelope(let field):
                let text = ExpressionFunction.text(v)
                switch field {
                case "topic": m.topic = text
                case "device": m.device = text
                case "tenant": m.tenant = text
                case "content_type": m.contentType = text
                case "kind":
                    guard let k = MessageKind(name: text) else { throw StepError("'\(text)' is not a message kind") }
                    m.kind = k
                default: break
                }
            }
        }
        if replacing || assignments.contains(where: { if case .field = $0.target { true } else { false } }) {
            m.payload = .value(payload)
            if PayloadCodec(contentType: m.contentType) == nil { m.contentType = PayloadCodec.json.contentType }
        }
    }

    /// Sets the field at `path` in place: each object on the way is taken out of its parent while it
    /// changes, so that it is the only reference to its members (a copy of the object per field set
    /// showed in profiles of `map` steps).
    private static func set(_ target: inout Value, _ path: ArraySlice<String>, _ v: Value) throws {
        guard let key = path.first else {
            target = v
            return
        }
        guard case .object(var o) = target else { throw StepError("cannot set field '\(key)' inside a \(target.typeName)") }
        target = .null
        defer { target = .object(o) }
        guard path.count > 1 else {
            o[key] = v
            return
        }
        var child = o[key] ?? .object(Value.Object())
        guard case .object = child else { throw StepError("cannot set field '\(path.dropFirst().first!)' inside a \(child.typeName)") }
        o[key] = .null
        defer { o[key] = child }
        try set(&child, path.dropFirst(), v)
    }
}

/// Why a step could not handle a message.
struct StepError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
