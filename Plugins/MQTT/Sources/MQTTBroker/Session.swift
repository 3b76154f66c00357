import DequeModule
import MQTTCodec
import NIOConcurrencyHelpers
import NIOCore

/// A message as the broker routes it.
public struct BrokerMessage: Sendable {
    public var topic: String
    public var payload: ByteBuffer
    public var qos: UInt8
    public var retain: Bool
    /// The message's own MQTT 5 properties (payload format, content type, response topic, correlation
    /// data, user properties); topic alias, subscription identifiers and message expiry are per delivery.
    public var properties: [MQTTProperty]
    /// When the message expires (MQTT 5 Message Expiry Interval), nil when never.
    public var expiry: NIODeadline?

    public init(topic: String, payload: ByteBuffer, qos: UInt8, retain: Bool = false, properties: [MQTTProperty] = [], expiry: NIODeadline? = nil) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
        self.expiry = expiry
    }

    /// Seconds left before expiry, rounded up; nil when the message never expires, 0 when it has expired.
    func secondsLeft(now: @autoclosure () -> NIODeadline) -> UInt32? {
        guard let expiry else { return nil }
        let now = now()
        let left = (expiry - now).nanoseconds
        return left <= 0 ? 0 : UInt32(min((left + 999_999_999) / 1_000_000_000, Int64(UInt32.max)))
    }
}

/// What a link asks of its connection. Both may be called on any thread.
public protocol ClientLinkOwner: AnyObject, Sendable {
    /// Call `takePending` on the connection's event loop and write what it returns.
    func linkHasPendingBytes()
    /// Send DISCONNECT with this reason code and close (another connection took the session over).
    func linkMustDisconnect(_ reasonCode: UInt8)
}

/// The outbound side of one network connection: packets are encoded into one pending buffer that a
/// single flush per event-loop turn writes out. Thread-safe; sessions on any thread write into it.
public final class ClientLink: @unchecked Sendable {
    private let lock = NIOLock()
    /// Encoded packets not yet handed to the socket; nil when there are none (idle links hold no buffer).
    private var pending: ByteBuffer?
    private var flushScheduled = false
    private var writable = true
    private var aliases: [String: UInt16] = [:]
    private var closing = false

    /// Protocol version, set at CONNECT.
    public internal(set) var version: MQTTVersion = .v311
    /// The client's Receive Maximum, Maximum Packet Size and Topic Alias Maximum.
    var receiveMaximum = 65535
    var maximumPacketSize = Int.max
    var topicAliasMaximum: UInt16 = 0
    /// QoS 0 messages are dropped (and counted) while this many bytes wait for a slow client.
    public let maxPendingBytes: Int
    /// The connection (a weak reference: a link and its connection never keep each other alive).
    public weak var owner: ClientLinkOwner?
    /// Who is connected on it, set once at CONNECT.
    public internal(set) var identity: ClientIdentity?
    /// The tenant's part of the broker; topics are sent without its mount.
    public internal(set) var space = TenantSpace(tenant: "")

    public init(maxPendingBytes: Int = 4 << 20) {
        self.maxPendingBytes = maxPendingBytes
    }

    private func wake() { owner?.linkHasPendingBytes() }
    func disconnect(_ reasonCode: UInt8) { owner?.linkMustDisconnect(reasonCode) }

    /// Work for the connection's event loop, posted from other threads (completions from the hub).
    private var tasks: [PostedTask] = []
    /// A posted closure. Wrapped, because a closure stored in an array directly is converted to the
    /// array's generic form, an allocation per task.
    public struct PostedTask {
        public let run: @Sendable () -> Void
    }

    /// Runs `task` on the connection's event loop, with other posted tasks, before the next write:
    /// one hop for many completions instead of one each.
    public func post(_ task: @escaping @Sendable () -> Void) {
        let wakeNow: Bool = lock.withLock {
            guard !closing else { return false }
            tasks.append(PostedTask(run: task))
            guard !flushScheduled else { return false }
            flushScheduled = true
            return true
        }
        if wakeNow { wake() }
    }

    /// Tickets whose messages the hub settled, for the connection's event loop.
    private var settled: [SubmitTicket] = []

    /// A submitted message was settled: its ticket goes to the connection's event loop with the other
    /// settled ones and the posted tasks, before the next write.
    func settle(_ ticket: SubmitTicket) {
        let wakeNow: Bool = lock.withLock {
            guard !closing else { return false }
            settled.append(ticket)
            guard !flushScheduled else { return false }
            flushScheduled = true
            return true
        }
        if wakeNow { wake() }
    }

    /// Swaps the settled tickets into `buffer` (empty), so that neither array is allocated again.
    func takeSettled(swapping buffer: inout [SubmitTicket]) {
        lock.withLock { swap(&settled, &buffer) }
    }

    /// The posted tasks, to run before `takePending`. Called by the connection on its event loop.
    public func takeTasks() -> [PostedTask] {
        lock.withLock {
            guard !tasks.isEmpty else { return [] }
            defer { tasks = [] }
            return tasks
        }
    }

    /// Bytes encoded and not yet handed to the socket (they wait while it is not writable).
    public var pendingByteCount: Int { lock.withLock { pending?.readableBytes ?? 0 } }

    /// The bytes to write now, or nil. Called by the connection on its event loop.
    public func takePending() -> ByteBuffer? {
        lock.withLock {
            flushScheduled = false
            guard writable, let out = pending, out.readableBytes > 0 else { return nil }
            pending = nil
            return out
        }
    }

    /// The socket's writability, from the connection; pending bytes wait while it is not writable.
    public func setWritable(_ w: Bool) {
        let wakeNow: Bool = lock.withLock {
            writable = w
            guard w, (pending?.readableBytes ?? 0) > 0, !flushScheduled else { return false }
            flushScheduled = true
            return true
        }
        if wakeNow { wake() }
    }

    /// Stops taking packets and tasks (the connection is closing). Tasks still waiting are dropped, so
    /// that completions arriving later do not keep the connection alive; bytes already encoded stay for
    /// the transport's last write.
    func close() { lock.withLock { closing = true; tasks = []; settled = [] } }

    /// Encodes a control packet.
    public func send(_ packet: MQTTPacket) {
        append { MQTTPacketEncoder.write(packet, version: self.version, into: &$0) }
    }

    /// Encodes a PUBLISH for this client: its topic alias, its maximum packet size. Returns false when
    /// the client cannot take it (too large, or a QoS 0 message while the client is this far behind).
    func sendPublish(_ m: BrokerMessage, qos: UInt8, retain: Bool, duplicate: Bool, packetID: UInt16,
                     identifiers: [UInt32], expiry: UInt32?) -> Bool {
        lock.lock()
        if closing || (qos == 0 && (pending?.readableBytes ?? 0) > maxPendingBytes) {
            lock.unlock()
            return false
        }
        let v5 = version == .v5
        var extras = MQTTPacketEncoder.PublishExtras(messageExpiry: v5 ? expiry : nil, subscriptionIdentifiers: v5 ? identifiers : [])
        var topic = space.clientTopic(m.topic)
        var newAlias: UInt16?
        if v5, topicAliasMaximum > 0 {
            if let a = aliases[m.topic] {
                extras.topicAlias = a
                topic = ""
            } else if aliases.count < Int(topicAliasMaximum) {
                let a = UInt16(aliases.count + 1)
                extras.topicAlias = a
                newAlias = a
            }
        }
        let size = MQTTPacketEncoder.publishSize(topicLength: topic.utf8.count, payloadLength: m.payload.readableBytes, qos: qos,
                                                 properties: v5 ? m.properties : nil, extras: extras)
        guard size <= maximumPacketSize else {
            lock.unlock()
            return false
        }
        if let newAlias { aliases[m.topic] = newAlias }
        if pending == nil { pending = ByteBuffer() }
        MQTTPacketEncoder.writePublish(topic: topic, payload: m.payload, qos: qos, retain: retain, duplicate: duplicate,
                                       packetID: packetID, properties: v5 ? m.properties : nil, extras: extras, into: &pending!)
        let wakeNow = writable && !flushScheduled
        if wakeNow { flushScheduled = true }
        lock.unlock()
        if wakeNow { wake() }
        return true
    }

    private func append(_ write: (inout ByteBuffer) -> Void) {
        let wakeNow: Bool = lock.withLock {
            guard !closing else { return false }
            if pending == nil { pending = ByteBuffer() }
            write(&pending!)
            guard writable, !flushScheduled else { return false }
            flushScheduled = true
            return true
        }
        if wakeNow { wake() }
    }
}

/// What a session does when its queue of messages for an offline or slow client is full.
public enum QueueFullPolicy: String, Sendable {
    /// Keep the queue, drop the new message (counted).
    case dropNew = "drop_new"
    /// Drop the oldest queued message (counted) to make room.
    case dropOldest = "drop_oldest"
}

public struct SessionLimits: Sendable {
    public var maxQueued: Int
    /// Most payload bytes queued (0: no limit): with `maxQueued` alone, a session could hold that many
    /// messages of the largest size.
    public var maxQueuedBytes: Int
    public var policy: QueueFullPolicy
    /// Queue QoS 0 messages for offline clients too.
    public var queueQoS0: Bool
    /// Most payload bytes of QoS 1 and 2 messages in flight to the client, sent and not yet
    /// acknowledged (0: no limit but the client's Receive Maximum); past it messages wait in the queue.
    /// One message is always let through. Without it, a client that stops reading held up to 65,535
    /// messages (its Receive Maximum) in flight, each kept for sending again and written out: memory
    /// no queue bound limited.
    public var maxInflightBytes: Int
    public init(maxQueued: Int = 1000, maxQueuedBytes: Int = 0, policy: QueueFullPolicy = .dropNew, queueQoS0: Bool = false,
                maxInflightBytes: Int = 0) {
        self.maxQueued = maxQueued
        self.maxQueuedBytes = maxQueuedBytes
        self.policy = policy
        self.queueQoS0 = queueQoS0
        self.maxInflightBytes = maxInflightBytes
    }
}

/// The state of one MQTT session: subscriptions, QoS 1 and 2 messages in flight both ways, and the
/// queue of messages for a client that is offline or whose receive window is full. It outlives
/// network connections (persistent sessions) and is thread-safe.
public final class Session: @unchecked Sendable {
    public let clientID: String
    private let lock = NIOLock()
    private let limits: SessionLimits
    private let counters: BrokerCounters

    // Guarded by the broker's lock.
    var matchEpoch: UInt64 = 0
    var subscriptions: [String: (options: MQTTSubscriptionOptions, identifier: UInt32?)] = [:]
    var expiryInterval: UInt32 = 0
    var expiryTimer: Scheduled<Void>?
    var pendingWill: (message: BrokerMessage, timer: Scheduled<Void>)?
    var ended = false

    // Guarded by `lock`.
    private var link: ClientLink?
    private struct Outbound {
        var message: BrokerMessage
        var qos: UInt8
        var retain: Bool
        var identifiers: [UInt32]
        /// PUBREC received and PUBREL sent (QoS 2).
        var released = false
        var sequence: UInt64
    }
    private var inflight: [UInt16: Outbound] = [:]
    /// The payload bytes in `inflight`.
    private var inflightBytes = 0
    private var queue = Deque<Outbound>()
    /// The payload bytes in `queue`.
    private var queuedBytes = 0
    private var nextPacketID: UInt16 = 0
    private var sequence: UInt64 = 0
    /// Packet ids of QoS 2 messages received and not yet released by PUBREL.
    private var awaitingRelease: Set<UInt16> = []

    init(clientID: String, limits: SessionLimits, counters: BrokerCounters) {
        self.clientID = clientID
        self.limits = limits
        self.counters = counters
    }

    public var isConnected: Bool { lock.withLock { link != nil } }
    /// The connection the session is attached to, if any.
    var currentLink: ClientLink? { lock.withLock { link } }
    public var queuedCount: Int { lock.withLock { queue.count } }
    public var queuedByteCount: Int { lock.withLock { queuedBytes } }
    public var inflightCount: Int { lock.withLock { inflight.count } }
    public var inflightByteCount: Int { lock.withLock { inflightBytes } }

    /// Whether another message may go in flight to `link`. Lock held.
    private func windowOpen(_ link: ClientLink) -> Bool {
        inflight.count < link.receiveMaximum && (limits.maxInflightBytes == 0 || inflightBytes < limits.maxInflightBytes)
    }

    /// Takes a message out of flight. Lock held.
    private func land(_ id: UInt16) -> Bool {
        guard let o = inflight.removeValue(forKey: id) else { return false }
        inflightBytes -= o.message.payload.readableBytes
        return true
    }

    /// Hands a message to this session: written to the client, put in flight, or queued.
    @discardableResult
    func deliver(_ m: BrokerMessage, qos: UInt8, retain: Bool, identifiers: [UInt32]) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        let expiry = m.secondsLeft(now: .now())
        if expiry == 0 {
            counters.expired.add(1)
            return false
        }
        if let link {
            if qos == 0 {
                let ok = link.sendPublish(m, qos: 0, retain: retain, duplicate: false, packetID: 0, identifiers: identifiers, expiry: expiry)
                if ok { counters.sent.add(1) } else { counters.dropped.add(1) }
                return ok
            }
            if queue.isEmpty, windowOpen(link) {
                return send(Outbound(message: m, qos: qos, retain: retain, identifiers: identifiers, sequence: 0), link, expiry)
            }
        } else if qos == 0, !limits.queueQoS0 {
            counters.dropped.add(1)
            return false
        }
        return enqueue(Outbound(message: m, qos: qos, retain: retain, identifiers: identifiers, sequence: 0))
    }

    private func enqueue(_ o: Outbound) -> Bool {
        let size = o.message.payload.readableBytes
        func full() -> Bool {
            queue.count >= limits.maxQueued || (limits.maxQueuedBytes > 0 && queuedBytes + size > limits.maxQueuedBytes)
        }
        if full() {
            // A message larger than the whole allowance is never queued; otherwise, by the policy.
            guard limits.policy == .dropOldest, limits.maxQueuedBytes == 0 || size <= limits.maxQueuedBytes else {
                counters.dropped.add(1)
                return false
            }
            while full(), let dropped = queue.popFirst() {
                queuedBytes -= dropped.message.payload.readableBytes
                counters.dropped.add(1)
            }
        }
        queue.append(o)
        queuedBytes += size
        return true
    }

    /// Puts a QoS 1 or 2 message in flight and writes it. Lock held.
    private func send(_ o: Outbound, _ link: ClientLink, _ expiry: UInt32?) -> Bool {
        if o.qos == 0 {
            let ok = link.sendPublish(o.message, qos: 0, retain: o.retain, duplicate: false, packetID: 0, identifiers: o.identifiers, expiry: expiry)
            if ok { counters.sent.add(1) } else { counters.dropped.add(1) }
            return ok
        }
        repeat { nextPacketID &+= 1 } while nextPacketID == 0 || inflight[nextPacketID] != nil
        var entry = o
        sequence += 1
        entry.sequence = sequence
        guard link.sendPublish(o.message, qos: o.qos, retain: o.retain, duplicate: false, packetID: nextPacketID, identifiers: o.identifiers, expiry: expiry) else {
            // Larger than the client accepts: discarded as if delivered (MQTT 5 section 3.1.2.11.4).
            counters.dropped.add(1)
            return false
        }
        inflight[nextPacketID] = entry
        inflightBytes += o.message.payload.readableBytes
        counters.sent.add(1)
        return true
    }

    /// Moves queued messages into the client's receive window. Lock held.
    private func refill() {
        guard let link else { return }
        let now = NIODeadline.now()
        while windowOpen(link), let o = queue.popFirst() {
            queuedBytes -= o.message.payload.readableBytes
            let expiry = o.message.secondsLeft(now: now)
            if expiry == 0 {
                counters.expired.add(1)
                continue
            }
            _ = send(o, link, expiry)
        }
    }

    /// A new network connection for this session. `resumed`: the session existed, so messages in
    /// flight are sent again (PUBLISH with DUP, or PUBREL) before queued ones.
    func attach(_ link: ClientLink, resumed: Bool) {
        lock.withLock {
            self.link = link
            if resumed {
                let now = NIODeadline.now()
                for (id, o) in inflight.sorted(by: { $0.value.sequence < $1.value.sequence }) {
                    if o.released {
                        link.send(.pubrel(MQTTPacketAck(packetID: id)))
                    } else {
                        _ = link.sendPublish(o.message, qos: o.qos, retain: o.retain, duplicate: true, packetID: id,
                                             identifiers: o.identifiers, expiry: o.message.secondsLeft(now: now))
                    }
                }
            } else {
                inflight = [:]
                inflightBytes = 0
                awaitingRelease = []
            }
            refill()
        }
    }

    /// Detaches the current connection for a new one; returns it so that it can be told to go.
    func takeOver() -> ClientLink? {
        lock.withLock {
            defer { link = nil }
            return link
        }
    }

    /// The connection went away. Returns false when another connection had already taken over.
    func detach(_ link: ClientLink) -> Bool {
        lock.withLock {
            guard self.link === link else { return false }
            self.link = nil
            return true
        }
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) from the client. Returns false for an unknown packet id.
    @discardableResult
    func completed(_ id: UInt16) -> Bool {
        lock.withLock {
            guard land(id) else { return false }
            refill()
            return true
        }
    }

    /// PUBREC from the client: answers PUBREL, or (reason 0x80 or more) ends the exchange.
    func received(_ id: UInt16, reasonCode: UInt8) -> Bool {
        lock.withLock {
            guard inflight[id] != nil else { return false }
            if reasonCode >= 0x80 {
                _ = land(id)
                refill()
            } else {
                inflight[id]!.released = true
                link?.send(.pubrel(MQTTPacketAck(packetID: id)))
            }
            return true
        }
    }

    /// Records an incoming QoS 2 packet id. Returns false when it is a duplicate of one not yet released.
    func beginIncoming(_ id: UInt16) -> Bool { lock.withLock { awaitingRelease.insert(id).inserted } }
    func isAwaitingRelease(_ id: UInt16) -> Bool { lock.withLock { awaitingRelease.contains(id) } }
    /// PUBREL: returns whether the id was awaiting release.
    func release(_ id: UInt16) -> Bool { lock.withLock { awaitingRelease.remove(id) != nil } }
    var awaitingReleaseCount: Int { lock.withLock { awaitingRelease.count } }
}

// MARK: - Persistence

/// A message in a state file: one MQTT 5 PUBLISH (topic, payload, QoS, retain and properties, the
/// remaining expiry as Message Expiry Interval), length-prefixed. The codec is the format.
enum StoredMessage {
    static func write(_ m: BrokerMessage, qos: UInt8, retain: Bool, into b: inout ByteBuffer) {
        var packet = ByteBuffer()
        MQTTPacketEncoder.writePublish(topic: m.topic, payload: m.payload, qos: qos, retain: retain, duplicate: false, packetID: qos > 0 ? 1 : 0,
                                       properties: m.properties, extras: .init(messageExpiry: m.secondsLeft(now: .now())), into: &packet)
        b.writeInteger(UInt32(packet.readableBytes))
        b.writeBuffer(&packet)
    }

    static func read(_ b: inout ByteBuffer) throws -> (BrokerMessage, qos: UInt8, retain: Bool) {
        guard let n: UInt32 = b.readInteger(), var packet = b.readSlice(length: Int(n)) else { throw StateFileError("truncated message") }
        var decoder = MQTTPacketDecoder(version: .v5)
        guard case .publish(let p)? = try decoder.decode(buffer: &packet) else { throw StateFileError("a stored message is not a PUBLISH") }
        var own: [MQTTProperty] = []
        var expiry: NIODeadline?
        for prop in p.properties {
            if prop.identifier == MQTTProperty.messageExpiryInterval { expiry = .now() + .seconds(Int64(prop.integer ?? 0)) } else { own.append(prop) }
        }
        return (BrokerMessage(topic: p.topic, payload: p.payload, qos: p.qos, retain: p.retain, properties: own, expiry: expiry), p.qos, p.retain)
    }
}

public struct StateFileError: Error, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = "MQTT state file: \(d)" }
}

extension ByteBuffer {
    mutating func writeStateString(_ s: String) {
        writeInteger(UInt32(s.utf8.count))
        writeString(s)
    }

    mutating func readStateString() throws -> String {
        guard let n: UInt32 = readInteger(), let s = readString(length: Int(n)) else { throw StateFileError("truncated string") }
        return s
    }

    mutating func readStateInteger<T: FixedWidthInteger>(_: T.Type = T.self) throws -> T {
        guard let v: T = readInteger() else { throw StateFileError("truncated number") }
        return v
    }
}

extension Session {
    /// Writes what outlives a restart: expiry, the next packet id, messages in flight and queued, and
    /// QoS 2 ids awaiting release. Subscriptions are written by the broker.
    func writeState(into b: inout ByteBuffer) {
        lock.withLock {
            b.writeInteger(nextPacketID)
            b.writeInteger(UInt32(inflight.count))
            for (id, o) in inflight.sorted(by: { $0.value.sequence < $1.value.sequence }) {
                b.writeInteger(id)
                b.writeInteger(UInt8(o.released ? 1 : 0))
                Self.write(o, into: &b)
            }
            b.writeInteger(UInt32(queue.count))
            for o in queue { Self.write(o, into: &b) }
            b.writeInteger(UInt32(awaitingRelease.count))
            for id in awaitingRelease.sorted() { b.writeInteger(id) }
        }
    }

    private static func write(_ o: Outbound, into b: inout ByteBuffer) {
        b.writeInteger(UInt32(o.identifiers.count))
        for id in o.identifiers { b.writeInteger(id) }
        StoredMessage.write(o.message, qos: o.qos, retain: o.retain, into: &b)
    }

    func readState(from b: inout ByteBuffer) throws {
        let next: UInt16 = try b.readStateInteger()
        var flight: [UInt16: Outbound] = [:]
        var sequence: UInt64 = 0
        for _ in 0..<(try b.readStateInteger(UInt32.self)) {
            let id: UInt16 = try b.readStateInteger()
            let released: UInt8 = try b.readStateInteger()
            var o = try Self.readOutbound(&b)
            o.released = released == 1
            sequence += 1
            o.sequence = sequence
            flight[id] = o
        }
        var queued = Deque<Outbound>()
        for _ in 0..<(try b.readStateInteger(UInt32.self)) { queued.append(try Self.readOutbound(&b)) }
        var awaiting = Set<UInt16>()
        for _ in 0..<(try b.readStateInteger(UInt32.self)) { awaiting.insert(try b.readStateInteger()) }
        lock.withLock {
            nextPacketID = next
            inflight = flight
            inflightBytes = flight.values.reduce(0) { $0 + $1.message.payload.readableBytes }
            self.sequence = sequence
            queue = queued
            queuedBytes = queued.reduce(0) { $0 + $1.message.payload.readableBytes }
            awaitingRelease = awaiting
        }
    }

    private static func readOutbound(_ b: inout ByteBuffer) throws -> Outbound {
        var ids: [UInt32] = []
        for _ in 0..<(try b.readStateInteger(UInt32.self)) { ids.append(try b.readStateInteger()) }
        let (m, qos, retain) = try StoredMessage.read(&b)
        return Outbound(message: m, qos: qos, retain: retain, identifiers: ids, sequence: 0)
    }
}
