import Foundation
import IoTCPluginKit
import TimerSchedule

@_cdecl("iotc_plugin_entry") public func iotcPluginEntry(_ v: UnsafePointer<UInt32>?, _ n: Int) -> UnsafeRawPointer? {
    Plugin.entry(name: "timer", version: "0.1.0", description: "Messages on a schedule: every interval, or by cron expression.", components: [TimerSource.self], offered: v, count: n)
}

/// A source of ticks for periodic jobs (reports, checks): each timer fires every `every`, or at the
/// minutes a cron expression names, and each firing is a message on `timers/{name}`.
final class TimerSource: Source, @unchecked Sendable {
    struct Config: Decodable {
        var timers: [Timer]
        struct Timer: Decodable {
            var name: String
            var every: Double?
            var cron: String?
            var payload: AnyValue?
        }
    }

    /// Any JSON value, decoded into a `Value`.
    struct AnyValue: Decodable {
        var value: Value
        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if c.decodeNil() { value = .null }
            else if let b = try? c.decode(Bool.self) { value = .bool(b) }
            else if let i = try? c.decode(Int64.self) { value = .int(i) }
            else if let d = try? c.decode(Double.self) { value = .double(d) }
            else if let s = try? c.decode(String.self) { value = .string(s) }
            else if let a = try? c.decode([AnyValue].self) { value = .array(a.map(\.value)) }
            else { value = .object(Value.Object(try c.decode([String: AnyValue].self).map { ($0.key, $0.value.value) }.sorted { $0.0 < $1.0 })) }
        }
    }

    static let name = "timer"
    static let summary = "Messages on a schedule (every 1m, or a cron expression in UTC) for periodic jobs."
    static let description = """
        Each timer fires every `every` (counted from the start) or at the minutes its `cron` expression \
        names (five fields, UTC: minute hour day-of-month month day-of-week, with `*`, ranges, steps and \
        lists). A firing is an `event` message on `timers/{name}` with the payload `{"timer": NAME, "at": \
        MS, "count": N}` and the timer's own `payload` fields. A firing missed because the pipeline was full \
        is counted (`iotc_timer_missed_total`), not sent late.
        """
    static let fields: [ConfigField] = [
        ConfigField("timers", .list(.object([
            ConfigField("name", .string, "The timer's name: its topic is timers/{name}.", example: "hourly-report", required: true),
            ConfigField("every", .duration, "Interval between firings.", example: "1m"),
            ConfigField("cron", .string, "Cron expression (UTC) instead of every.", example: "\"0 2 * * *\""),
            ConfigField("payload", .any, "Fields added to each firing's payload.", example: "{ report: daily }"),
        ])), "The timers.", required: true),
    ]

    static func check(_ config: Config) -> [ConfigFinding] {
        var out: [ConfigFinding] = []
        var names = Set<String>()
        if config.timers.isEmpty { out.append(ConfigFinding(at: "timers", "no timers")) }
        for (i, t) in config.timers.enumerated() {
            if !CommandTopics.isDeviceID(t.name) { out.append(ConfigFinding(at: "timers.\(i).name", "'\(t.name)' cannot be a topic level")) }
            if !names.insert(t.name).inserted { out.append(ConfigFinding(at: "timers.\(i).name", "timer '\(t.name)' is defined twice")) }
            switch (t.every, t.cron) {
            case (nil, nil): out.append(ConfigFinding(at: "timers.\(i)", "timer '\(t.name)' needs every or cron"))
            case (_?, _?): out.append(ConfigFinding(at: "timers.\(i).cron", "timer '\(t.name)' has both every and cron", hint: "keep one"))
            case (let e?, nil) where e < 0.1: out.append(ConfigFinding(at: "timers.\(i).every", "every must be at least 100ms"))
            case (nil, let c?):
                do { _ = try CronSchedule(c) } catch { out.append(ConfigFinding(at: "timers.\(i).cron", error.description)) }
            default: break
            }
            if let p = t.payload?.value, case .object = p {} else if t.payload != nil {
                out.append(ConfigFinding(at: "timers.\(i).payload", "payload must be a mapping of fields"))
            }
        }
        return out
    }

    private struct Scheduled {
        var name: String
        var every: Double?
        var cron: CronSchedule?
        var extra: Value.Object
        var next: Date
        var count: Int64 = 0
    }

    let host: PluginHost
    private var timers: [Scheduled] = []
    private let condition = NSCondition()
    private var stopping = false
    private var thread: WorkerThread?

    init(config: Config, host: PluginHost) throws {
        self.host = host
        let now = Date()
        for t in config.timers {
            var extra = Value.Object()
            if case .object(let o)? = t.payload?.value { extra = o }
            let cron = try t.cron.map { c in try CronSchedule(c) }
            let next = t.every.map { now.addingTimeInterval($0) } ?? cron?.next(after: now) ?? .distantFuture
            timers.append(Scheduled(name: t.name, every: t.every, cron: cron, extra: extra, next: next))
        }
    }

    func start() throws {
        thread = WorkerThread(name: "timers") { [self] in run() }
    }

    func stop() {
        condition.withLock {
            stopping = true
            condition.signal()
        }
        thread?.join()
    }

    private func run() {
        while true {
            let due = timers.map(\.next).min() ?? .distantFuture
            condition.lock()
            while !stopping, Date() < due { _ = condition.wait(until: due) }
            let stop = stopping
            condition.unlock()
            if stop { return }
            let now = Date()
            for i in timers.indices where timers[i].next <= now {
                timers[i].count += 1
                var o = timers[i].extra
                o["timer"] = .string(timers[i].name)
                o["at"] = .int(Int64(timers[i].next.timeIntervalSince1970 * 1000))
                o["count"] = .int(timers[i].count)
                let status = host.submit(Message(kind: .event, topic: "timers/\(timers[i].name)", contentType: "application/json",
                                                 payload: JSON.encode(.object(o)), deviceTime: Int64(now.timeIntervalSince1970 * 1000), qos: 1,
                                                 properties: [KeyValue("timer.name", timers[i].name)]))
                if status != .queued { host.metric(.counter, "iotc_timer_missed_total", labels: [KeyValue("timer", timers[i].name)], 1) }
                // The next firing stays on its grid; firings already past are skipped, not caught up.
                if let every = timers[i].every {
                    var next = timers[i].next.addingTimeInterval(every)
                    while next <= now { next = next.addingTimeInterval(every) }
                    timers[i].next = next
                } else {
                    timers[i].next = timers[i].cron?.next(after: now) ?? .distantFuture
                }
            }
        }
    }
}
