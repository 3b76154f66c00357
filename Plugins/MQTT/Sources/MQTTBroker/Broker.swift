import Atomics
import MQTTCodec
import NIOConcurrencyHelpers
import NIOCore
import IoTCPluginKit

/// Counters for `$SYS` topics and the hub's metrics.
public final class BrokerCounters: Sendable {
    public let received = ManagedAtomic<Int>(0)
    public let sent = ManagedAtomic<Int>(0)
    public let dropped = ManagedAtomic<Int>(0)
    public let expired = ManagedAtomic<Int>(0)
    public let connected = ManagedAtomic<Int>(0)
    /// Client connections in memory, from accept until freed, whether or not they sent CONNECT: it
    /// comes back to the open sockets' count once closed ones are let go (else something holds them).
    public let held = ManagedAtomic<Int>(0)
    public let bytesReceived = ManagedAtomic<Int>(0)
    init() {}
}

extension ManagedAtomic where Value == Int {
    func add(_ n: Int) { wrappingIncrement(by: n, ordering: .relaxed) }
    public var value: Int { load(ordering: .relaxed) }
}

public struct BrokerConfig: Sendable {
    public var maximumQoS: UInt8 = 2
    public var retainAvailable = true
    public var sharedSubscriptions = true
    public var wildcardSubscriptions = true
    public var subscriptionIdentifiers = true
    /// Longest session expiry granted (seconds); MQTT 3.1.1 persistent sessions get this too.
    public var maximumSessionExpiry: UInt32 = 7 * 24 * 3600
    public var maximumRetained = 100_000
    /// Most bytes (topics and payloads) the retained messages may hold together (0: no limit); past
    /// it, as past `maximumRetained`, a new retained message is routed but not kept.
    public var maximumRetainedBytes = 0
    /// Most subscriptions one session may hold (0: no limit); a SUBSCRIBE past it is refused per filter
    /// with Quota exceeded (0x97; MQTT 3.1.1: 0x80).
    public var maximumSubscriptions = 0
    /// Most sessions the broker holds, connected or kept for offline clients (0: no limit); a CONNECT
    /// that would open one more is refused with Quota exceeded (0x97; MQTT 3.1.1: 0x03).
    public var maximumSessions = 0
    public var session = SessionLimits()
    public init() {}
}

/// Sessions, subscriptions and retained messages, and the routing between them. Thread-safe: the
/// connections of every event loop call it. Timers (will delay, session expiry) run on `timers`.
public final class Broker: @unchecked Sendable {
    public let config: BrokerConfig
    public let counters = BrokerCounters()
    private let lock = NIOLock()
    private let tree = SubscriptionTree()
    private var sessions: [String: Session] = [:]
    private var retained: [String: BrokerMessage] = [:]
    /// The topics of `retained`, for subscriptions to find theirs.
    private let retainedTopics = RetainedIndex()
    /// What `retained` holds, in `retainedSize` bytes.
    private var retainedBytes = 0
    /// Deliveries by topic, for topics whose match has no shared or no-local subscription; cleared
    /// whenever subscriptions change. Devices publish to the same few topics over and over.
    private var routes: [String: [Delivery]] = [:]
    static let maxCachedRoutes = 10_000
    /// Only topics up to this long are cached: the cache holds its keys, and 10,000 topics of 64 KiB
    /// (a client's, one PUBLISH each) would have held 655 MB.
    static let maxCachedTopicBytes = 256
    private let timers: EventLoop
    public let started = NIODeadline.now()

    public init(config: BrokerConfig, timers: EventLoop) {
        self.config = config
        self.timers = timers
    }

    // MARK: - Sessions

    /// Finds or creates the session for a connecting client. A clean start, or an expired session,
    /// gives a new one. A client still connected with this id is told to disconnect (0x8E).
    public func openSession(clientID: String, cleanStart: Bool, expiry: UInt32) -> (Session, present: Bool) {
        var willNow: BrokerMessage?
        var oldLink: ClientLink?
        let result: (Session, Bool) = lock.withLock {
            if let old = sessions[clientID] {
                old.expiryTimer?.cancel()
                old.expiryTimer = nil
                if let w = old.pendingWill {
                    w.timer.cancel()
                    old.pendingWill = nil
                    // A resumed session cancels a delayed will; a new session means the old one ended.
                    if cleanStart { willNow = w.message }
                }
                oldLink = old.takeOver()
                if !cleanStart {
                    old.expiryInterval = expiry
                    return (old, true)
                }
                endLocked(old)
            }
            let s = Session(clientID: clientID, limits: config.session, counters: counters)
            s.expiryInterval = expiry
            sessions[clientID] = s
            return (s, false)
        }
        if let oldLink {
            counters.connected.wrappingDecrement(ordering: .relaxed)
            oldLink.disconnect(MQTTReason.sessionTakenOver)
        }
        if let willNow { publish(willNow, from: nil) }
        return result
    }

    /// A connection closed. `will` is published now, after its delay, or when the session ends,
    /// whichever comes first; a session with expiry 0 ends now.
    public func closed(_ session: Session, link: ClientLink, will: BrokerMessage?, willDelay: UInt32) {
        guard session.detach(link) else {
            // Taken over by a new connection. A resumed session cancels a delayed will; an ended one
            // (the new connection started clean) or a will without delay publishes it.
            if let will, willDelay == 0 || lock.withLock({ session.ended }) { publish(will, from: nil) }
            return
        }
        counters.connected.wrappingDecrement(ordering: .relaxed)
        var publishNow: BrokerMessage?
        lock.withLock {
            let expiry = session.expiryInterval
            if expiry == 0 {
                publishNow = will
                endLocked(session)
                return
            }
            if let will {
                if willDelay == 0 {
                    publishNow = will
                } else {
                    let delay = min(willDelay, expiry)
                    let timer = timers.scheduleTask(in: .seconds(Int64(delay))) { [weak self, weak session] in
                        guard let self, let session else { return }
                        let w: BrokerMessage? = self.lock.withLock {
                            defer { session.pendingWill = nil }
                            return session.pendingWill?.message
                        }
                        if let w { self.publish(w, from: nil) }
                    }
                    session.pendingWill = (will, timer)
                }
            }
            if expiry != UInt32.max {
                session.expiryTimer = timers.scheduleTask(in: .seconds(Int64(expiry))) { [weak self, weak session] in
                    guard let self, let session else { return }
                    let will: BrokerMessage? = self.lock.withLock {
                        guard !session.isConnected, self.sessions[session.clientID] === session else { return nil }
                        let w = session.pendingWill?.message
                        session.pendingWill?.timer.cancel()
                        session.pendingWill = nil
                        self.endLocked(session)
                        return w
                    }
                    if let will { self.publish(will, from: nil) }
                }
            }
        }
        if let publishNow { publish(publishNow, from: nil) }
    }

    /// Changes a session's expiry (MQTT 5 DISCONNECT may).
    public func setExpiry(_ session: Session, _ expiry: UInt32) {
        lock.withLock { session.expiryInterval = expiry }
    }

    /// Marks a connection established (after CONNACK is written).
    public func attach(_ session: Session, link: ClientLink, resumed: Bool) {
        counters.connected.wrappingIncrement(ordering: .relaxed)
        session.attach(link, resumed: resumed)
    }

    private func endLocked(_ s: Session) {
        if !s.subscriptions.isEmpty { routes.removeAll(keepingCapacity: true) }
        for (filter, _) in s.subscriptions {
            let (group, f) = Self.split(filter)
            tree.remove(f, group: group, session: s)
        }
        s.subscriptions = [:]
        s.ended = true
        if sessions[s.clientID] === s { sessions[s.clientID] = nil }
    }

    public var sessionCount: Int { lock.withLock { sessions.count } }

    /// Whether a client may have the session `key` (its own, or a new one within `maximumSessions`).
    /// Connects in flight at once may pass it together by a few.
    public func mayOpenSession(_ key: String) -> Bool {
        guard config.maximumSessions > 0 else { return true }
        return lock.withLock { sessions[key] != nil || sessions.count < config.maximumSessions }
    }
    public var subscriptionCount: Int { lock.withLock { tree.count } }
    public var retainedCount: Int { lock.withLock { retained.count } }
    /// Topics whose deliveries are cached.
    public var cachedRouteCount: Int { lock.withLock { routes.count } }
    public func session(_ clientID: String) -> Session? { lock.withLock { sessions[clientID] } }

    /// Tells every connected client whose identity matches to disconnect with `reasonCode`; returns how
    /// many were told.
    @discardableResult
    public func disconnect(where matches: (ClientIdentity) -> Bool, reasonCode: UInt8) -> Int {
        let all = lock.withLock { Array(sessions.values) }
        var n = 0
        for s in all {
            guard let link = s.currentLink, let identity = link.identity, matches(identity) else { continue }
            link.disconnect(reasonCode)
            n += 1
        }
        return n
    }

    // MARK: - Subscriptions

    /// Most levels of a topic or filter the broker keeps or routes: a client's (checked as it comes,
    /// with a reason code) and a tenant's mount. What goes past it, from wherever it comes (a command
    /// from the API), is neither kept nor routed.
    static let maximumLevels = Topics.maximumLevels + 2

    static func split(_ filter: String) -> (group: String?, filter: String) {
        if let s = SharedFilter(filter) { return (s.group, s.filter) }
        return (nil, filter)
    }

    /// Adds a subscription; returns whether one already existed for this filter. Retained messages
    /// to send follow the retain-handling option (never for shared subscriptions).
    @discardableResult
    public func subscribe(_ session: Session, filter: String, options: MQTTSubscriptionOptions, identifier: UInt32?) -> Bool {
        let (group, f) = Self.split(filter)
        guard Topics.levels(f) <= Self.maximumLevels else { return false }
        var toSend: [BrokerMessage] = []
        let existed: Bool = lock.withLock {
            routes.removeAll(keepingCapacity: true)
            let existed = tree.insert(f, group: group, Subscription(session: session, options: options, identifier: identifier))
            session.subscriptions[filter] = (options, identifier)
            if group == nil, options.retainHandling == 0 || (options.retainHandling == 1 && !existed) {
                retainedTopics.forEachMatch(f) { topic in if let m = retained[topic] { toSend.append(m) } }
            }
            return existed
        }
        for m in toSend {
            session.deliver(m, qos: min(m.qos, options.qos), retain: true, identifiers: identifier.map { [$0] } ?? [])
        }
        return existed
    }

    /// The filters `session` subscribes to (as the broker keys them: tenant-spaced, shared ones whole).
    public func subscriptionFilters(of session: Session) -> Set<String> {
        lock.withLock { Set(session.subscriptions.keys) }
    }

    /// Removes a subscription; returns whether it existed.
    public func unsubscribe(_ session: Session, filter: String) -> Bool {
        let (group, f) = Self.split(filter)
        return lock.withLock {
            session.subscriptions[filter] = nil
            routes.removeAll(keepingCapacity: true)
            return tree.remove(f, group: group, session: session)
        }
    }

    // MARK: - Publishing

    /// Routes a message to every matching subscription and updates the retained store. Returns the
    /// number of sessions it went to.
    @discardableResult
    public func publish(_ m: BrokerMessage, from publisher: Session?) -> Int {
        var deliveries: [Delivery] = []
        let routed = lock.withLock { () -> Bool in
            let cached = routes[m.topic]
            // A cached topic is short, so within the bound; only others are counted.
            if cached == nil, Topics.levels(m.topic) > Self.maximumLevels { return false }
            if m.retain, config.retainAvailable { retain(m) }
            if let cached {
                deliveries = cached
                return true
            }
            let cacheable = tree.match(m.topic, publisher: publisher, into: &deliveries)
            if cacheable, m.topic.utf8.count <= Self.maxCachedTopicBytes {
                if routes.count >= Self.maxCachedRoutes { routes.removeAll(keepingCapacity: true) }
                routes[m.topic] = deliveries
            }
            return true
        }
        guard routed else { return 0 }
        for d in deliveries {
            d.session.deliver(m, qos: min(m.qos, d.qos), retain: d.retainAsPublished && m.retain, identifiers: d.identifiers)
        }
        return deliveries.count
    }

    /// Keeps `m` as its topic's retained message (an empty payload clears it), within the count and
    /// byte bounds: past them a new one is not kept. A message that replaces another always clears it
    /// (MQTT: it replaces any retained message of its topic), and is kept itself if it fits: a later
    /// subscriber never gets the value it replaced. Under the lock.
    private func retain(_ m: BrokerMessage) {
        let previous = retained.removeValue(forKey: m.topic)
        let old = previous.map(Self.retainedSize) ?? 0
        retainedBytes -= old
        let size = Self.retainedSize(m)
        guard m.payload.readableBytes > 0, old > 0 || retained.count < config.maximumRetained,
              config.maximumRetainedBytes == 0 || retainedBytes + size <= config.maximumRetainedBytes else {
            if previous != nil { retainedTopics.remove(m.topic) }
            return
        }
        retained[m.topic] = m
        retainedBytes += size
        if previous == nil { retainedTopics.insert(m.topic) }
    }

    static func retainedSize(_ m: BrokerMessage) -> Int { m.topic.utf8.count + m.payload.readableBytes }

    /// Bytes the retained messages hold (topics and payloads).
    public var retainedByteCount: Int { lock.withLock { retainedBytes } }

    /// Publishes broker statistics under `$SYS/broker/` as retained messages.
    public func publishStatistics(version: String) {
        let uptime = (NIODeadline.now() - started).nanoseconds / 1_000_000_000
        let stats: [(String, String)] = [
            ("version", "iotc mqtt \(version)"),
            ("uptime", "\(uptime) seconds"),
            ("clients/connected", "\(counters.connected.value)"),
            ("clients/total", "\(sessionCount)"),
            ("messages/received", "\(counters.received.value)"),
            ("messages/sent", "\(counters.sent.value)"),
            ("messages/dropped", "\(counters.dropped.value)"),
            ("messages/expired", "\(counters.expired.value)"),
            ("bytes/received", "\(counters.bytesReceived.value)"),
            ("subscriptions/count", "\(subscriptionCount)"),
            ("retained messages/count", "\(retainedCount)"),
        ]
        for (topic, value) in stats {
            publish(BrokerMessage(topic: "$SYS/broker/" + topic, payload: ByteBuffer(string: value), qos: 0, retain: true), from: nil)
        }
    }
}

// MARK: - Persistence

extension Broker {
    static let stateMagic = "IOTCMQ01"

    /// Retained messages and every session that outlives its connection (expiry above zero), as bytes
    /// for a state file. Connected sessions are written as they are: they resume after a restart.
    public func saveState() -> ByteBuffer {
        var b = ByteBuffer()
        b.writeString(Self.stateMagic)
        let (retainedNow, sessionsNow): ([BrokerMessage], [(Session, [(String, MQTTSubscriptionOptions, UInt32?)], UInt32)]) = lock.withLock {
            // $SYS statistics are the running broker's own; they are published afresh after a restart.
            (retained.values.filter { !$0.topic.hasPrefix("$SYS/") },
             sessions.values.filter { $0.expiryInterval > 0 }.map { s in (s, s.subscriptions.map { ($0.key, $0.value.options, $0.value.identifier) }, s.expiryInterval) })
        }
        b.writeInteger(UInt32(retainedNow.count))
        for m in retainedNow { StoredMessage.write(m, qos: m.qos, retain: true, into: &b) }
        b.writeInteger(UInt32(sessionsNow.count))
        for (s, subs, expiry) in sessionsNow {
            b.writeStateString(s.clientID)
            b.writeInteger(expiry)
            b.writeInteger(UInt32(subs.count))
            for (filter, o, id) in subs {
                b.writeStateString(filter)
                b.writeInteger(o.qos | (o.noLocal ? 4 : 0) | (o.retainAsPublished ? 8 : 0) | (o.retainHandling << 4))
                b.writeInteger(id ?? 0)
            }
            s.writeState(into: &b)
        }
        return b
    }

    /// Restores what `saveState` wrote, into a broker that has no sessions yet. Restored sessions are
    /// disconnected, and expire `expiry` seconds after the restart unless their clients come back.
    @discardableResult
    public func restoreState(_ bytes: ByteBuffer) throws -> (sessions: Int, retained: Int) {
        var b = bytes
        guard b.readString(length: Self.stateMagic.utf8.count) == Self.stateMagic else { throw StateFileError("not a state file of this version") }
        var retainedIn: [BrokerMessage] = []
        for _ in 0..<(try b.readStateInteger(UInt32.self)) { retainedIn.append(try StoredMessage.read(&b).0) }
        var restored: [(Session, [(String, MQTTSubscriptionOptions, UInt32?)])] = []
        for _ in 0..<(try b.readStateInteger(UInt32.self)) {
            let s = Session(clientID: try b.readStateString(), limits: config.session, counters: counters)
            s.expiryInterval = try b.readStateInteger()
            var subs: [(String, MQTTSubscriptionOptions, UInt32?)] = []
            for _ in 0..<(try b.readStateInteger(UInt32.self)) {
                let filter = try b.readStateString()
                let o: UInt8 = try b.readStateInteger()
                let id: UInt32 = try b.readStateInteger()
                subs.append((filter, MQTTSubscriptionOptions(qos: o & 3, noLocal: o & 4 != 0, retainAsPublished: o & 8 != 0, retainHandling: (o >> 4) & 3), id == 0 ? nil : id))
            }
            try s.readState(from: &b)
            restored.append((s, subs))
        }
        lock.withLock {
            for m in retainedIn { retain(m) }
            routes.removeAll(keepingCapacity: true)
            for (s, subs) in restored where sessions[s.clientID] == nil {
                sessions[s.clientID] = s
                for (filter, options, id) in subs {
                    let (group, f) = Self.split(filter)
                    // A state file may come from before the level bound.
                    guard Topics.levels(f) <= Self.maximumLevels else { continue }
                    tree.insert(f, group: group, Subscription(session: s, options: options, identifier: id))
                    s.subscriptions[filter] = (options, id)
                }
                if s.expiryInterval != UInt32.max {
                    s.expiryTimer = timers.scheduleTask(in: .seconds(Int64(s.expiryInterval))) { [weak self, weak s] in
                        guard let self, let s else { return }
                        self.lock.withLock {
                            guard !s.isConnected, self.sessions[s.clientID] === s else { return }
                            self.endLocked(s)
                        }
                    }
                }
            }
        }
        return (restored.count, retainedIn.count)
    }
}
