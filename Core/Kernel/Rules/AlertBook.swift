import Foundation
import IoTCPluginKit

/// An alert as operators see it: raised by a rule for a key, with a lifecycle (active, acknowledged,
/// cleared, closed) and its history, who and when.
public struct Alert: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable, CaseIterable {
        case active, acknowledged, cleared, closed
    }
    public struct Event: Codable, Sendable, Equatable {
        public var at: Int64
        /// raised, repeated, cleared, reopened, acknowledged, closed, escalated; notified and
        /// notification_failed for what became of the rule's notifications.
        public var action: String
        /// The API key that acted; nil for the rule itself.
        public var by: String?
        /// The sink a notification went to, and why it failed.
        public var sink: String? = nil
        public var reason: String? = nil
    }
    public var id: String
    public var tenant: String
    public var rule: String
    public var key: String
    public var device: String
    public var severity: String
    public var message: String
    public var state: State
    public var raisedAt: Int64
    public var updatedAt: Int64
    /// How often the rule raised it: a raise while it is open, or soon after it cleared, folds into it.
    public var count: Int
    public var history: [Event]
    /// When it was escalated for staying unacknowledged; nil until then (and again once it reopens).
    public var escalatedAt: Int64?
    /// How many of its notifications could not be delivered (their sink gave up, and they went to
    /// the dead letters); nil while none failed.
    public var failedNotifications: Int? = nil

    /// History kept per alert at most: the first event and the latest ones.
    static let historyLimit = 200

    mutating func append(_ e: Event) {
        history.append(e)
        if history.count > Self.historyLimit { history.remove(at: 1) }
    }
}

/// Every pipeline's alerts, in `DATA/alerts.json`. Rule transitions come in as alert messages; the
/// operator API acknowledges, clears and closes. A raise while an alert for the same rule and key is
/// open, or within `foldWindow` of its clearing, folds into it (its count goes up, it reopens) rather
/// than opening another: duplicates become one alert, and a flapping condition one alert with a count.
public final class AlertBook: @unchecked Sendable {
    private var alerts: [Alert] = []
    private let lock = NSLock()
    /// The position of each (tenant, rule, key)'s alert that is not closed: the rule's transitions find
    /// it without a scan of the book (they come from the pipelines' workers, for whole fleets at once).
    private var open: [String: Int] = [:]
    private let file: URL?
    private var nextID: Int
    private var dirty = false
    private var savedAt = Date.distantPast
    /// Milliseconds after its clearing during which a new raise reopens an alert.
    public let foldWindow: Int64
    /// Alerts kept at most; the oldest closed (then cleared) ones go first.
    public let capacity: Int

    public init(file: URL?, foldWindow: Int64 = 10 * 60_000, capacity: Int = 10_000) {
        self.file = file
        self.foldWindow = foldWindow
        self.capacity = capacity
        if let file, let data = try? Data(contentsOf: file), let saved = try? JSONDecoder().decode([Alert].self, from: data) { alerts = saved }
        nextID = (alerts.compactMap { Int($0.id.dropFirst(2)) }.max() ?? 0) + 1
        reindex()
    }

    private static func openKey(_ tenant: String, _ rule: String, _ key: String) -> String { tenant + "\u{0}" + rule + "\u{0}" + key }

    private func reindex() {
        open = [:]
        for (i, a) in alerts.enumerated() where a.state != .closed { open[Self.openKey(a.tenant, a.rule, a.key)] = i }
    }

    /// Takes rule alert messages (payloads as the rule step makes them).
    public func record(_ messages: [CanonicalMessage]) {
        guard !messages.isEmpty else { return }
        lock.withLock {
            for m in messages {
                guard case .value(let p) = m.payload, case .string(let rule)? = p["rule"], case .string(let key)? = p["key"],
                      case .string(let state)? = p["state"] else { continue }
                let at = p["at"]?.number.map { Int64($0) } ?? m.receivedTime
                let tenant = m.tenant.isEmpty ? "default" : m.tenant
                let openKey = Self.openKey(tenant, rule, key)
                let open = self.open[openKey]
                if state == "raised" {
                    let message = if case .string(let s)? = p["message"] { s } else { "" }
                    if let i = open, alerts[i].state != .cleared || at - alerts[i].updatedAt <= foldWindow {
                        alerts[i].count += 1
                        alerts[i].append(.init(at: at, action: alerts[i].state == .cleared ? "reopened" : "repeated"))
                        if alerts[i].state == .cleared {
                            alerts[i].state = .active
                            alerts[i].escalatedAt = nil
                        }
                        alerts[i].message = message
                        alerts[i].updatedAt = at
                    } else {
                        let severity = if case .string(let s)? = p["severity"] { s } else { "major" }
                        alerts.append(Alert(id: "al\(nextID)", tenant: tenant, rule: rule, key: key, device: m.device, severity: severity,
                                            message: message, state: .active, raisedAt: at, updatedAt: at, count: 1,
                                            history: [.init(at: at, action: "raised")]))
                        self.open[openKey] = alerts.count - 1
                        nextID += 1
                    }
                } else if state == "cleared", let i = open, alerts[i].state != .cleared {
                    alerts[i].state = .cleared
                    alerts[i].updatedAt = at
                    alerts[i].append(.init(at: at, action: "cleared"))
                }
            }
            trim()
            dirty = true
        }
        // Many alerts at once (a fleet flapping) must not cost a file write each: at most one a second;
        // the pipelines' timers and the hub's stop write what is left.
        save(every: 1)
    }

    /// Records how a rule's notification ended, on the alerts it told of: an alert's transition or
    /// escalation names one (by its id, or its rule and key), a digest the keys it gathered. A failure
    /// (the sink gave up and the notification went to the dead letters) is counted on the alert.
    public func notified(_ m: Message, sink: String, failure: String?, at: Int64) {
        guard case .object(let p)? = try? JSON.decode(m.payload), case .string(let rule)? = p["rule"] else { return }
        let tenant = m.tenant.isEmpty ? "default" : m.tenant
        var keys: [String] = []
        if case .string(let k)? = p["key"] { keys.append(k) }
        for list in ["raised", "cleared"] {
            guard case .array(let entries)? = p[list] else { continue }
            for case .string(let k)? in entries.map({ $0["key"] }) { keys.append(k) }
        }
        let id = if case .string(let s)? = p["alert"] { s } else { nil as String? }
        lock.withLock {
            var touched = Set<Int>()
            for k in keys { if let i = open[Self.openKey(tenant, rule, k)] { touched.insert(i) } }
            if let id, let i = alerts.firstIndex(where: { $0.id == id && $0.tenant == tenant }) { touched.insert(i) }
            for i in touched.sorted() {
                alerts[i].append(.init(at: at, action: failure == nil ? "notified" : "notification_failed", sink: sink, reason: failure))
                if failure != nil { alerts[i].failedNotifications = (alerts[i].failedNotifications ?? 0) + 1 }
            }
            if !touched.isEmpty { dirty = true }
        }
        save(every: 1)
    }

    /// Alerts of `rule` active and unacknowledged for `after` milliseconds at `now`, not yet escalated:
    /// they are marked escalated (in their history) and returned.
    public func dueEscalations(rule: String, after: Int64, now: Int64) -> [Alert] {
        let due: [Alert] = lock.withLock {
            var out: [Alert] = []
            for i in alerts.indices where alerts[i].rule == rule && alerts[i].state == .active && alerts[i].escalatedAt == nil
                && now - alerts[i].raisedAt >= after {
                alerts[i].escalatedAt = now
                alerts[i].append(.init(at: now, action: "escalated"))
                out.append(alerts[i])
            }
            if !out.isEmpty { dirty = true }
            return out
        }
        if !due.isEmpty { save(every: 1) }
        return due
    }

    /// The tenant's alerts, newest first.
    public func list(tenant: String, state: Alert.State? = nil, rule: String? = nil, device: String? = nil, limit: Int = 100) -> [Alert] {
        lock.withLock {
            Array(alerts.reversed().lazy.filter { a in
                a.tenant == tenant && (state == nil || a.state == state) && (rule == nil || a.rule == rule) && (device == nil || a.device == device)
            }.prefix(limit))
        }
    }

    public func get(tenant: String, id: String) -> Alert? {
        lock.withLock { alerts.first { $0.id == id && $0.tenant == tenant } }
    }

    /// Why an operator's action was refused.
    public enum ActionError: Error, Equatable {
        case notFound
        case conflict(String)
    }

    public enum Action: String, Sendable {
        case acknowledge, clear, close
    }

    /// An operator acknowledges, clears or closes an alert. A closed alert takes no more actions.
    public func act(_ action: Action, tenant: String, id: String, by: String, at: Int64) throws(ActionError) -> Alert {
        let result: Result<Alert, ActionError> = lock.withLock {
            guard let i = alerts.firstIndex(where: { $0.id == id && $0.tenant == tenant }) else { return .failure(.notFound) }
            var a = alerts[i]
            switch (action, a.state) {
            case (_, .closed):
                return .failure(.conflict("the alert is closed"))
            case (.acknowledge, .active):
                a.state = .acknowledged
            case (.acknowledge, _):
                return .failure(.conflict("only an active alert can be acknowledged; this one is \(a.state.rawValue)"))
            case (.clear, .cleared):
                return .failure(.conflict("the alert is already cleared"))
            case (.clear, _):
                a.state = .cleared
            case (.close, _):
                a.state = .closed
            }
            a.updatedAt = at
            a.append(.init(at: at, action: action == .acknowledge ? "acknowledged" : action == .clear ? "cleared" : "closed", by: by))
            alerts[i] = a
            if a.state == .closed { open[Self.openKey(a.tenant, a.rule, a.key)] = nil }
            return .success(a)
        }
        let a = try result.get()
        lock.withLock { dirty = true }
        save()
        return a
    }

    /// Over capacity, drops to nine tenths of it in one pass (so that a full book is not trimmed on
    /// every transition): the oldest closed alerts first, then the oldest cleared, then the oldest.
    private func trim() {
        guard alerts.count > capacity else { return }
        var excess = alerts.count - capacity * 9 / 10
        var drop = [Bool](repeating: false, count: alerts.count)
        for state in [Alert.State.closed, .cleared, nil] {
            for i in alerts.indices where excess > 0 && !drop[i] && (state == nil || alerts[i].state == state) {
                drop[i] = true
                excess -= 1
            }
        }
        alerts = alerts.indices.filter { !drop[$0] }.map { alerts[$0] }
        reindex()
    }

    /// Writes the book to its file when it changed, at most every `interval` seconds (0: now).
    public func save(every interval: TimeInterval = 0) {
        guard let file else { return }
        let data: Data? = lock.withLock {
            guard dirty, Date().timeIntervalSince(savedAt) >= interval else { return nil }
            dirty = false
            savedAt = Date()
            return try? JSONEncoder().encode(alerts)
        }
        guard let data else { return }
        try? data.write(to: file, options: .atomic)
    }
}
