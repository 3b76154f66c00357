import Foundation
import IoTCPluginKit

/// A `rule` step: an alert per key (the device by default) that is raised when `raise` holds (for
/// `for` continuously, by message time) and cleared when `clear` holds, or when `raise` no longer does.
/// A separate `clear` condition gives hysteresis: raise at 80, clear at 75. Each change of state is an
/// alert message, sent to the step's `to` sinks; the message that caused it goes on through the
/// pipeline unchanged.
public struct RuleConfig: Sendable {
    public var name: String
    public var raise: Expression
    public var clear: Expression?
    /// Milliseconds `raise` must hold before the alert is raised; 0 raises at once.
    public var holdFor: Int64
    /// What the state is kept per; nil: the device.
    public var key: Expression?
    public var severity: String
    public var message: Template?
    public var to: [String]
    /// Only messages for which this holds are evaluated (and enter the window); nil: all.
    public var when: Expression? = nil
    /// A sliding window of a value per key, whose aggregates the conditions read as `window.avg` etc.
    public var window: Window? = nil
    /// An absence rule: raised by the pipeline's timer when a key has sent nothing for this many
    /// milliseconds (by the hub's clock), cleared by its next message. `raise` is unused.
    public var absent: Int64? = nil
    /// A command sent to the alert's device when the alert is raised (or cleared).
    public var command: CommandAction? = nil
    /// Milliseconds over which the rule's alerts for its sinks are gathered into one digest message
    /// (an incident across a fleet is one notification, not one per device); nil sends each at once.
    /// The alert book still records every transition as it happens.
    public var group: Int64? = nil
    /// Alerts still active and unacknowledged this many milliseconds after they were raised are sent,
    /// once, to these sinks too (the on-call's pager after the team's chat).
    public var escalate: (after: Int64, to: [String])? = nil
    /// At most one notification per alert (rule and key) to `to` in this many milliseconds; the
    /// transitions in between are held, and the last one is sent when the time is up if it differs
    /// from what was last sent. The alert book still records each.
    public var throttle: Int64? = nil

    public struct CommandAction: Sendable {
        public var name: String
        /// "raised", "cleared" or both.
        public var on: Set<String>
        /// Sinks that carry it to the device: `downlink` sinks.
        public var to: [String]
        /// Send it to the devices of the alert's tenant whose labels match these (values are templates
        /// over the alert, as `{device}` or `{value.site}`) instead of to the alert's device.
        public var group: [(label: String, value: Template)]? = nil
    }

    public static let commandFields: [ConfigField] = [
        ConfigField("name", .string, "The command's name (devices/{device}/commands/{name}/{id}).", example: "defrost", required: true),
        ConfigField("on", .string, "Which transitions send it.", default: #""raised""#, options: ["raised", "cleared", "both"]),
        ConfigField("to", .list(.string), "Sinks that carry it to the device: downlink sinks.", example: "[ to-devices ]", required: true),
        ConfigField("group", .map(.string), "Send it to every device of the alert's tenant whose labels match these instead (a device group); values may be templates over the alert, such as {value.site}.", example: "{ zone: north, role: pump }"),
    ]

    public struct Window: Sendable {
        /// Milliseconds of history kept.
        public var over: Int64
        /// The number each message adds.
        public var of: Expression
        /// Samples kept per key at most (the oldest go first).
        public var maxSamples: Int
        /// Fixed windows one after another (aligned to multiples of `over` since the epoch), each
        /// judged once when it is complete, instead of one sliding over every message.
        public var tumbling = false
    }

    public static let windowFields: [ConfigField] = [
        ConfigField("over", .duration, "How much history the window holds, by message time.", example: "10m", required: true),
        ConfigField("of", .string, "The number each message adds (an expression).", example: "\"temperature\"", required: true),
        ConfigField("max_samples", .int, "Samples kept per key at most; the oldest go first.", default: "10000"),
        ConfigField("tumbling", .bool, "Fixed windows one after another (aligned to multiples of over), each judged once when the first message after it arrives, instead of a window sliding with every message; it keeps running aggregates, not samples.", default: "false"),
    ]

    public static let severities = ["critical", "major", "minor", "warning", "info"]

    /// The fields of a rule step, for validation and docs.
    public static let fields: [ConfigField] = [
        ConfigField("name", .string, "The rule's name: alerts carry it, and its state is kept under it.", example: "freezer-warm", required: true),
        ConfigField("raise", .string, "Condition that raises the alert (an expression); every rule but an absence rule has one.", example: "\"temperature > -10\""),
        ConfigField("absent", .duration, "An absence rule instead: raised by a timer when a key (device) has sent nothing for this long, cleared by its next message.", example: "10m"),
        ConfigField("clear", .string, "Condition that clears it; without it, the alert clears when raise is false. Hysteresis: raise at 80, clear at 75.", example: "\"temperature < -12\""),
        ConfigField("for", .duration, "How long raise must hold, by message time, before the alert is raised.", default: "0", example: "5m"),
        ConfigField("key", .string, "Expression the state is kept per; default the device.", example: "\"meta.site\""),
        ConfigField("severity", .string, "Severity of the alert.", default: #""major""#, options: severities),
        ConfigField("message", .string, "Alert text; {expression} parts are filled from the message.", example: "\"{msg.device} is at {temperature} °C\""),
        ConfigField("to", .list(.string), "Sinks that receive the alert messages (raised and cleared).", default: "[]", example: "[ alerts ]"),
        ConfigField("when", .string, "Only messages for which this holds are evaluated and enter the window (an expression).", example: "\"state == 'on'\""),
        ConfigField("group", .duration, "Gather the alerts for `to` over this long into one digest message (raised and cleared keys, counts), so that an incident across a fleet is one notification; the alert book still records each.", example: "1m"),
        ConfigField("escalate", .object([
            ConfigField("after", .duration, "How long an alert may stay active and unacknowledged.", example: "30m", required: true),
            ConfigField("to", .list(.string), "Sinks that receive the escalation.", example: "[ pager ]", required: true),
        ]), "Send an alert that stays active and unacknowledged for `after` to these sinks too, once (checked by the pipeline's timer against the alert book)."),
        ConfigField("throttle", .duration, "At most one notification per alert (rule and key) to `to` this often: the transitions in between are held, and the latest is sent when the time is up if it differs from the last one sent (with the number suppressed); the alert book still records each.", example: "15m"),
        ConfigField("command", .object(commandFields), "Also send the alert's device (or a group of devices) a command (its payload is the alert) when the alert is raised or cleared, through downlink sinks."),
        ConfigField("window", .object(windowFields), "A sliding window per key: raise and clear read window.avg, window.min, window.max, window.sum, window.count, window.first, window.last and window.rate (change per second from first to last)."),
    ]
}

/// Text with `{expression}` parts.
public struct Template: Sendable {
    enum Part: Sendable {
        case text(String)
        /// An expression and the offset of its text in the template's.
        case expression(Expression, offset: Int)
    }
    let parts: [Part]

    /// Parses `text`; the error carries the offset (in characters) of the part that failed.
    public init(_ text: String) throws(ExpressionError) {
        var parts: [Part] = []
        var rest = Substring(text)
        while let open = rest.firstIndex(of: "{") {
            if open > rest.startIndex { parts.append(.text(String(rest[..<open]))) }
            guard let close = rest[open...].firstIndex(of: "}") else {
                throw ExpressionError("'{' without '}' in the template", at: text.distance(from: text.startIndex, to: open))
            }
            let source = String(rest[rest.index(after: open)..<close])
            do { parts.append(.expression(try Expression(source), offset: text.distance(from: text.startIndex, to: open) + 1)) } catch {
                throw ExpressionError(error.message, at: text.distance(from: text.startIndex, to: open) + 1 + error.offset)
            }
            rest = rest[rest.index(after: close)...]
        }
        if !rest.isEmpty { parts.append(.text(String(rest))) }
        self.parts = parts
    }

    /// The payload fields its parts read, with offsets in the template's text.
    public var fieldReferences: [(name: String, offset: Int)] {
        parts.flatMap { p -> [(name: String, offset: Int)] in
            guard case .expression(let e, let at) = p else { return [] }
            return e.fieldReferences.map { ($0.name, at + $0.offset) }
        }
    }

    /// The text, with each part's value (`?` where one cannot be evaluated).
    func render(_ context: EvaluationContext) -> String {
        var out = ""
        for p in parts {
            switch p {
            case .text(let t): out += t
            case .expression(let e, _):
                var c = context
                switch try? e.evaluate(&c) {
                case .string(let s)?: out += s
                case .int(let i)?: out += String(i)
                case .double(let d)?: out += d == d.rounded() && abs(d) < 1e15 ? String(Int64(d)) : String(d)
                case .bool(let b)?: out += String(b)
                case let v?: out += String(decoding: JSON.encode(v), as: UTF8.self)
                case nil: out += "?"
                }
            }
        }
        return out
    }
}

/// The state of every rule of a pipeline, per key. It outlives reloads of the pipeline (the hub keeps
/// one per pipeline name), so a reload neither raises nor clears anything by itself.
public final class RuleStates: @unchecked Sendable {
    struct State: Codable {
        var active = false
        /// When `raise` started to hold, while waiting out `for`.
        var pendingSince: Int64?
        var raisedAt: Int64 = 0
        /// The window's samples (time, value), oldest first, from `head` on.
        var samples: [Sample] = []
        var head = 0
        /// For absence rules: when the key was last heard from, and whose it was.
        var lastSeen: Int64 = 0
        var tenant = "", device = ""

        struct Sample: Codable {
            var t: Int64
            var v: Double
        }
        /// A tumbling window's running aggregates: it keeps no samples.
        var running: Running?

        struct Running: Codable {
            var count = 0
            var sum = 0.0, min = Double.infinity, max = -Double.infinity
            var first: Sample, last: Sample

            init(_ s: Sample) {
                first = s
                last = s
                add(s)
            }

            mutating func add(_ s: Sample) {
                count += 1
                sum += s.v
                min = Swift.min(min, s.v)
                max = Swift.max(max, s.v)
                last = s
            }
        }
    }
    /// By rule, tenant and key (`stateID`): two tenants' devices of the same id are two states.
    private var states: [String: State] = [:]
    private let lock = NSLock()

    static func stateID(_ rule: String, tenant: String, key: String) -> String { rule + "\u{0}" + tenant + "\u{0}" + key }

    /// The rule, tenant and key of a state's id.
    static func parts(_ id: String) -> (rule: Substring, tenant: Substring, key: Substring) {
        let p = id.split(separator: "\u{0}", maxSplits: 2, omittingEmptySubsequences: false)
        return p.count == 3 ? (p[0], p[1], p[2]) : (p[0], "", p.count > 1 ? p[1] : "")
    }
    /// Where the states are kept between runs; nil keeps them in memory only.
    private let file: URL?
    private var dirty = false
    private var savedAt = Date.distantPast

    /// States kept in `file` (read now when it exists), or in memory only.
    public init(file: URL? = nil) {
        self.file = file
        if let file, let data = try? Data(contentsOf: file), let saved = try? JSONDecoder().decode([String: State].self, from: data) {
            // States written before they were kept per tenant (rule and key only) take the tenant the
            // state knows, or the one of the pipeline files' devices.
            for (id, s) in saved {
                let p = Self.parts(id)
                states[id.split(separator: "\u{0}", omittingEmptySubsequences: false).count == 3 ? id
                       : Self.stateID(String(p.rule), tenant: s.tenant.isEmpty ? "default" : s.tenant, key: String(p.key))] = s
            }
        }
    }

    /// Writes the states to their file when they changed, at most every `interval` seconds (0: now).
    public func save(every interval: TimeInterval = 0) {
        guard let file else { return }
        let snapshot: [String: State]? = lock.withLock {
            guard dirty, Date().timeIntervalSince(savedAt) >= interval else { return nil }
            dirty = false
            savedAt = Date()
            // The window's dropped samples are not kept.
            return states.mapValues { s in
                var c = s
                c.samples = Array(s.samples[s.head...])
                c.head = 0
                return c
            }
        }
        guard let snapshot, let data = try? JSONEncoder().encode(snapshot) else { return }
        try? FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        try? data.write(to: file, options: .atomic)
    }

    /// Alerts active now, as (rule, key).
    public var active: [(rule: String, key: String)] {
        lock.withLock { states.filter(\.value.active).map { k, _ in let p = Self.parts(k); return (String(p.rule), String(p.key)) } }
            .sorted { ($0.rule, $0.key) < ($1.rule, $1.key) }
    }

    /// Alerts waiting for their rule's digest, by rule and tenant (a digest never mixes tenants):
    /// when the first came, and the alerts.
    private var digests: [String: (since: Int64, alerts: [CanonicalMessage])] = [:]

    /// Per alert (rule, tenant and key) of a throttled rule: when its sinks were last sent one, in
    /// which state, and the latest transition held since, with how many were held.
    private var throttles: [String: (sentAt: Int64, state: String, held: CanonicalMessage?, suppressed: Int)] = [:]

    /// What of an alert goes to its rule's sinks now: nothing when the rule has none; with `throttle`,
    /// at most one per alert per interval (the others are held for `dueThrottled`); with `group`, it
    /// waits for the rule's digest.
    func notify(_ rule: RuleConfig, _ alert: CanonicalMessage, now: Int64) -> CanonicalMessage? {
        guard !rule.to.isEmpty else { return nil }
        if let interval = rule.throttle, !admit(rule, alert, interval: interval, now: now) { return nil }
        if rule.group != nil {
            gather(rule, alert, at: alert.receivedTime)
            return nil
        }
        return alert
    }

    private func admit(_ rule: RuleConfig, _ alert: CanonicalMessage, interval: Int64, now: Int64) -> Bool {
        guard case .value(let p) = alert.payload, case .string(let key)? = p["key"] else { return true }
        let state = alert.metadata("alert_state") ?? ""
        let id = Self.stateID(rule.name, tenant: alert.tenant, key: key)
        return lock.withLock {
            if let t = throttles[id], now - t.sentAt < interval {
                throttles[id] = (t.sentAt, t.state, alert, t.suppressed + 1)
                return false
            }
            throttles[id] = (now, state, nil, 0)
            return true
        }
    }

    /// The held transitions of a throttled rule whose interval is over at `now`: the latest of each
    /// alert, with `suppressed` (how many were held) in its payload, unless it is in the state that
    /// was last sent (raised, cleared and raised again tells the sinks nothing new). Alerts quiet for
    /// a whole interval are forgotten.
    func dueThrottled(_ rule: RuleConfig, interval: Int64, now: Int64) -> [CanonicalMessage] {
        let prefix = rule.name + "\u{0}"
        return lock.withLock {
            var out: [CanonicalMessage] = []
            for (id, t) in throttles where id.hasPrefix(prefix) && now - t.sentAt >= interval {
                guard var held = t.held, let state = held.metadata("alert_state"), state != t.state else {
                    throttles[id] = nil
                    continue
                }
                if case .value(.object(var o)) = held.payload {
                    o["suppressed"] = .int(Int64(t.suppressed))
                    held.payload = .value(.object(o))
                }
                throttles[id] = (now, state, nil, 0)
                out.append(held)
            }
            return out.sorted { $0.id < $1.id }
        }
    }

    /// Holds an alert for its rule's next digest.
    func gather(_ rule: RuleConfig, _ alert: CanonicalMessage, at time: Int64) {
        lock.withLock {
            let id = rule.name + "\u{0}" + alert.tenant
            var d = digests[id] ?? (time, [])
            d.alerts.append(alert)
            digests[id] = d
        }
    }

    /// The gathered alerts of a rule whose digests are due at `now` (taken), one list per tenant.
    func dueDigests(_ rule: RuleConfig, every: Int64, now: Int64) -> [[CanonicalMessage]] {
        lock.withLock {
            let prefix = rule.name + "\u{0}"
            let due = digests.filter { $0.key.hasPrefix(prefix) && now - $0.value.since >= every }.sorted { $0.key < $1.key }
            for (k, _) in due { digests[k] = nil }
            return due.map(\.value.alerts)
        }
    }

    /// An absence rule heard from a key: its time is noted, and an active alert clears.
    func heard(_ rule: RuleConfig, key: String, time: Int64, tenant: String, device: String) -> Transition? {
        let id = Self.stateID(rule.name, tenant: tenant, key: key)
        return lock.withLock {
            var s = states[id] ?? State()
            defer { states[id] = s }
            dirty = true
            s.lastSeen = max(s.lastSeen, time)
            s.tenant = tenant
            s.device = device
            guard s.active else { return nil }
            s.active = false
            return .cleared(raisedAt: s.raisedAt)
        }
    }

    /// Keys of an absence rule silent for its duration at `now` and not yet raised; they are raised.
    func silent(_ rule: RuleConfig, after: Int64, now: Int64) -> [(key: String, tenant: String, device: String, lastSeen: Int64)] {
        let prefix = rule.name + "\u{0}"
        return lock.withLock {
            var out: [(String, String, String, Int64)] = []
            for (id, s) in states where !s.active && s.lastSeen > 0 && now - s.lastSeen >= after && id.hasPrefix(prefix) {
                dirty = true
                states[id]?.active = true
                states[id]?.raisedAt = now
                out.append((String(Self.parts(id).key), s.tenant, s.device, s.lastSeen))
            }
            return out.sorted { $0.0 < $1.0 }
        }
    }

    /// Adds a sample to the key's window, drops what fell out of it, and returns its aggregates.
    func window(_ rule: RuleConfig, _ w: RuleConfig.Window, tenant: String, key: String, time: Int64, value: Double) -> Value? {
        let id = Self.stateID(rule.name, tenant: tenant, key: key)
        lock.lock()
        defer { lock.unlock() }
        var s = states[id] ?? State()
        defer { states[id] = s }
        dirty = true
        if w.tumbling {
            // A sample in a later window completes the current one: judge that, start the next. Only
            // running aggregates are kept, whatever the window's length.
            let bucket = time - ((time % w.over) + w.over) % w.over
            let sample = State.Sample(t: time, v: value)
            guard let r = s.running, r.first.t < bucket else {
                if s.running == nil { s.running = State.Running(sample) } else { s.running?.add(sample) }
                return nil
            }
            s.running = State.Running(sample)
            return Self.aggregates(count: r.count, sum: r.sum, min: r.min, max: r.max, first: r.first, last: r.last)
        }
        s.samples.append(.init(t: time, v: value))
        while s.head < s.samples.count, s.samples[s.head].t < time - w.over || s.samples.count - s.head > w.maxSamples { s.head += 1 }
        if s.head > 64, s.head * 2 > s.samples.count {
            s.samples.removeFirst(s.head)
            s.head = 0
        }
        return Self.aggregates(s.samples[s.head...])
    }

    static func aggregates(_ live: ArraySlice<State.Sample>) -> Value {
        var sum = 0.0, lo = Double.infinity, hi = -Double.infinity
        for sample in live {
            sum += sample.v
            lo = min(lo, sample.v)
            hi = max(hi, sample.v)
        }
        return aggregates(count: live.count, sum: sum, min: lo, max: hi, first: live.first!, last: live.last!)
    }

    static func aggregates(count: Int, sum: Double, min lo: Double, max hi: Double, first: State.Sample, last: State.Sample) -> Value {
        let seconds = Double(last.t - first.t) / 1000
        return .object(Value.Object([
            ("count", .int(Int64(count))), ("sum", .double(sum)), ("avg", .double(sum / Double(count))),
            ("min", .double(lo)), ("max", .double(hi)), ("first", .double(first.v)), ("last", .double(last.v)),
            ("rate", .double(seconds > 0 ? (last.v - first.v) / seconds : 0)),
        ]))
    }

    /// Evaluates `rule` on a message (its conditions already tested by the caller's closure) and
    /// returns the alert message for a change of state, if any.
    func evaluate(_ rule: RuleConfig, tenant: String, key: String, time: Int64, raise: () throws -> Bool, clear: () throws -> Bool) rethrows -> Transition? {
        let id = Self.stateID(rule.name, tenant: tenant, key: key)
        lock.lock()
        defer { lock.unlock() }
        var s = states[id] ?? State()
        let before = (s.active, s.pendingSince)
        defer {
            if (s.active, s.pendingSince) != before { dirty = true }
            states[id] = s
        }
        if !s.active {
            guard try raise() else {
                s.pendingSince = nil
                return nil
            }
            let since = s.pendingSince ?? time
            s.pendingSince = since
            guard time - since >= rule.holdFor else { return nil }
            s.active = true
            s.pendingSince = nil
            s.raisedAt = time
            return .raised(since: since)
        }
        guard try clear() else { return nil }
        s.active = false
        return .cleared(raisedAt: s.raisedAt)
    }

    enum Transition {
        case raised(since: Int64)
        case cleared(raisedAt: Int64)
    }
}

extension PipelineProcessor {
    /// Runs a rule on a message: the alert message for a change of state, if any. A condition that
    /// cannot be evaluated (a missing field) throws, and the caller counts it as a rule error.
    func evaluate(_ rule: RuleConfig, _ m: CanonicalMessage, context start: EvaluationContext) throws -> CanonicalMessage? {
        var context = start
        if let when = rule.when {
            var c = context
            guard try when.test(&c) else { return nil }
        }
        var c = context
        let key: String
        if let k = rule.key {
            switch try k.evaluate(&c) {
            case .string(let s): key = s
            case .null: key = ""
            case let v: key = String(decoding: JSON.encode(v), as: UTF8.self)
            }
        } else {
            key = m.device
        }
        if rule.absent != nil {
            // Silence is measured on the hub's clock: a device's own clock may be off.
            guard let t = rules.heard(rule, key: key, time: m.receivedTime, tenant: m.tenant, device: m.device) else { return nil }
            return alert(rule, t, key: key, tenant: m.tenant, device: m.device, time: m.receivedTime, context: context, id: m.id)
        }
        let time = m.deviceTime ?? m.receivedTime
        if let w = rule.window {
            var c = context
            guard let value = try w.of.evaluate(&c).number else { throw ExpressionError("window value '\(w.of)' is not a number", at: 0) }
            // A tumbling window is judged only when one is complete.
            guard let aggregates = rules.window(rule, w, tenant: m.tenant, key: key, time: time, value: value) else { return nil }
            if case .object(var o) = context.payload {
                o["window"] = aggregates
                context.payload = .object(o)
            } else {
                context.payload = .object(["window": aggregates])
            }
        }
        let transition = try rules.evaluate(rule, tenant: m.tenant, key: key, time: time,
            raise: { var c = context; return try rule.raise.test(&c) },
            clear: {
                var c = context
                if let clear = rule.clear { return try clear.test(&c) }
                return !(try rule.raise.test(&c))
            })
        guard let transition else { return nil }
        return alert(rule, transition, key: key, tenant: m.tenant, device: m.device, time: time, context: context, id: m.id)
    }

    /// The pipeline's timer, at `now`: alerts of absence rules whose keys fell silent (in `alerts`, for
    /// the alert book, and in `outputs` for the rule's sinks), held notifications of throttled rules,
    /// and digests due.
    public func tick(now: Int64) -> Result {
        var result = Result()
        var out: [Output] = []
        for step in config.steps {
            guard case .rule(let rule) = step.kind else { continue }
            if let interval = rule.throttle {
                for held in rules.dueThrottled(rule, interval: interval, now: now) {
                    if rule.group != nil {
                        rules.gather(rule, held, at: now)
                    } else {
                        out.append(Output(message: held, sinks: rule.to, notification: true))
                    }
                }
            }
            if let every = rule.group {
                for alerts in rules.dueDigests(rule, every: every, now: now) {
                    out.append(Output(message: digest(rule, alerts, now: now), sinks: rule.to, notification: true))
                }
            }
            guard let after = rule.absent else { continue }
            for s in rules.silent(rule, after: after, now: now) {
                var envelope = EvaluationContext.Envelope()
                envelope.device = s.device
                envelope.tenant = s.tenant
                let context = EvaluationContext(payload: .object(["silent_for": .int(now - s.lastSeen)]), envelope: envelope, now: now)
                let alert = alert(rule, .raised(since: s.lastSeen), key: s.key, tenant: s.tenant, device: s.device, time: now, context: context,
                                  id: "\(rule.name)-\(s.key)-\(now)")
                // The alert book records it now, whether or not its sinks hear of it now.
                result.alerts.append(alert)
                if let n = rules.notify(rule, alert, now: now) { out.append(Output(message: n, sinks: rule.to, notification: true)) }
                out += commands(rule, alert)
            }
        }
        result.outputs = out
        return result
    }

    /// Escalations due by `now`: alerts of this pipeline's rules still active and unacknowledged after
    /// their rule's `escalate.after`, as messages for `escalate.to` (state `escalated`).
    public func escalations(_ book: AlertBook, now: Int64) -> [Output] {
        var out: [Output] = []
        for step in config.steps {
            guard case .rule(let rule) = step.kind, let e = rule.escalate else { continue }
            for a in book.dueEscalations(rule: rule.name, after: e.after, now: now) {
                let payload: Value.Object = ["rule": .string(a.rule), "severity": .string(a.severity), "key": .string(a.key), "device": .string(a.device),
                                             "state": "escalated", "alert": .string(a.id), "since": .int(a.raisedAt), "at": .int(now),
                                             "message": .string(a.message), "count": .int(Int64(a.count))]
                let m = Message(id: "\(a.id)-escalated-\(now)", kind: .event, tenant: a.tenant, device: a.device, topic: "alerts/\(rule.name)",
                                contentType: "application/json", deviceTime: now, receivedTime: now, qos: 1,
                                metadata: [KeyValue("rule", rule.name), KeyValue("alert_state", "escalated"), KeyValue("alert_id", a.id)])
                var c = CanonicalMessage(m, receivedTime: now)
                c.payload = .value(.object(payload))
                out.append(Output(message: c, sinks: e.to, notification: true))
            }
        }
        return out
    }

    /// One message for a rule's gathered alerts: which keys were raised and cleared, and how many.
    func digest(_ rule: RuleConfig, _ alerts: [CanonicalMessage], now: Int64) -> CanonicalMessage {
        func entries(_ state: String) -> [Value] {
            alerts.filter { $0.metadata("alert_state") == state }.compactMap { a -> Value? in
                guard case .value(let p) = a.payload else { return nil }
                return .object(Value.Object([("key", p["key"] ?? .null), ("device", p["device"] ?? .null), ("at", p["at"] ?? .null),
                                             ("message", p["message"] ?? .null)]))
            }
        }
        let raised = entries("raised"), cleared = entries("cleared")
        func keys(_ list: [Value]) -> String {
            let names = list.prefix(10).compactMap { if case .string(let k)? = $0["key"] { k } else { nil } }
            return names.joined(separator: ", ") + (list.count > 10 ? " and \(list.count - 10) more" : "")
        }
        var text: [String] = []
        if !raised.isEmpty { text.append("\(raised.count) raised (\(keys(raised)))") }
        if !cleared.isEmpty { text.append("\(cleared.count) cleared (\(keys(cleared)))") }
        let first = alerts[0]
        let payload: Value.Object = ["rule": .string(rule.name), "severity": .string(rule.severity), "state": "digest",
                                     "message": .string(text.joined(separator: ", ")), "count": .int(Int64(alerts.count)),
                                     "raised": .array(raised), "cleared": .array(cleared), "at": .int(now)]
        let m = Message(id: first.id + "-digest", kind: .event, tenant: first.tenant, device: "", topic: "alerts/\(rule.name)",
                        contentType: "application/json", deviceTime: now, receivedTime: now, qos: 1,
                        metadata: [KeyValue("rule", rule.name), KeyValue("alert_state", "digest")])
        var out = CanonicalMessage(m, receivedTime: now)
        out.payload = .value(.object(payload))
        return out
    }

    /// The commands a rule sends with an alert for this transition: none, one to the alert's device, or
    /// one to each device of its group (the devices of the alert's tenant with the group's labels).
    func commands(_ rule: RuleConfig, _ alert: CanonicalMessage) -> [Output] {
        guard let c = rule.command, let state = alert.metadata("alert_state"), c.on.contains(state), !c.to.isEmpty else { return [] }
        var targets = [alert.device]
        if let group = c.group {
            let payload: Value = if case .value(let p) = alert.payload { p } else { .null }
            let context = EvaluationContext(payload: payload, metadata: alert.metadata, envelope: alert.evaluationEnvelope, now: alert.receivedTime)
            let labels = group.map { KeyValue($0.label, $0.value.render(context)) }
            targets = devices(alert.tenant.isEmpty ? "default" : alert.tenant, labels)
        }
        return targets.map { device in
            var m = alert
            let id = alert.id + "-" + c.name + (c.group == nil ? "" : "-" + device)
            m.kind = .command
            m.device = device
            m.topic = CommandTopics.command(device: device, name: c.name, id: id)
            m.id = id
            m.setMetadata("command", c.name)
            m.setMetadata("command_id", id)
            return Output(message: m, sinks: c.to)
        }
    }

    /// Whether a pipeline has rules, which its runtime's timer serves: it raises absence rules and
    /// saves the state of all of them.
    static func hasTimers(_ config: PipelineConfig) -> Bool {
        config.steps.contains { if case .rule = $0.kind { true } else { false } }
    }

    private func alert(_ rule: RuleConfig, _ transition: RuleStates.Transition, key: String, tenant: String, device: String, time: Int64,
                       context: EvaluationContext, id: String) -> CanonicalMessage {
        var o: Value.Object = ["rule": .string(rule.name), "severity": .string(rule.severity), "key": .string(key), "device": .string(device)]
        switch transition {
        case .raised(let since):
            o["state"] = "raised"
            o["since"] = .int(since)
        case .cleared(let raisedAt):
            o["state"] = "cleared"
            o["raised_at"] = .int(raisedAt)
        }
        o["at"] = .int(time)
        if let t = rule.message { o["message"] = .string(t.render(context)) }
        o["value"] = context.payload
        let alert = Message(id: id + "-" + rule.name, kind: .event, tenant: tenant, device: device, topic: "alerts/\(rule.name)",
                            contentType: "application/json", deviceTime: time, receivedTime: time, qos: 1,
                            metadata: [KeyValue("rule", rule.name), KeyValue("alert_state", transition.name)])
        var out = CanonicalMessage(alert, receivedTime: time)
        out.payload = .value(.object(o))
        return out
    }
}

extension RuleStates.Transition {
    var name: String {
        switch self {
        case .raised: "raised"
        case .cleared: "cleared"
        }
    }
}
