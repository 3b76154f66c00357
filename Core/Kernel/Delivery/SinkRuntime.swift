import CIoTCPluginABI
import Foundation
import IoTCPluginKit
import Metrics
import Synchronization

/// Counts down the deliveries of one input message of a durable pipeline; when all are settled (delivered
/// or dead-lettered) the message is done in the pipeline's write-ahead log. The pipeline holds one count
/// while it dispatches.
final class Settlement: Sendable {
    let wal: WriteAheadLog
    let sequence: UInt64
    private let remaining = Atomic<Int>(1)

    init(wal: WriteAheadLog, sequence: UInt64) {
        self.wal = wal
        self.sequence = sequence
    }

    func add(_ n: Int) { remaining.add(n, ordering: .relaxed) }

    /// Settles one delivery; true when it was the last.
    func settle() -> Bool { remaining.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 }
}

/// Collects the messages that became done while settling a batch, so that each log takes them in one
/// record and one lock.
struct DoneRecords {
    private var logs: [(wal: WriteAheadLog, sequences: [UInt64])] = []

    mutating func settle(_ s: Settlement?) {
        guard let s, s.settle() else { return }
        if let i = logs.firstIndex(where: { $0.wal === s.wal }) {
            logs[i].sequences.append(s.sequence)
        } else {
            logs.append((s.wal, [s.sequence]))
        }
    }

    /// Writes the done records; the collector can be reused.
    mutating func commit() {
        for l in logs { l.wal.markDone(l.sequences) }
        logs.removeAll(keepingCapacity: true)
    }
}

/// A message on its way to one sink.
struct Delivery: Sendable, Weighed {
    var message: Message
    var pipeline: String
    var settlement: Settlement?
    /// A rule's notification: its outcome is reported to the runtime's `notified`.
    var notification = false
    var attempts = 0
    var dueAt: UInt64 = 0
    var startedAt: UInt64 = 0

    var weight: Int { message.payload.count }
}

/// Feeds one sink: a bounded queue, at most `maxInFlight` unsettled writes, retries with exponential
/// backoff and jitter, and the dead-letter store once attempts run out or the sink rejects a message.
final class SinkRuntime: @unchecked Sendable {
    let name: String
    let instance: any SinkTarget
    let options: DeliveryOptions
    private let deadLetters: DeadLetterStore
    private let cond = NSCondition()
    private var ready = WeighedQueue<Delivery>()
    private var delayed: [Delivery] = []
    private var inFlight: [UInt64: Delivery] = [:]
    private var nextToken: UInt64 = 1
    private var stopping = false
    /// Messages of durable pipelines not retried because the sink is stopping (their logs replay them).
    private var leftForReplay = 0
    /// Set as the hub stops, before its pipelines drain (`shedDurableDeliveries`); and how many
    /// deliveries of durable pipelines were left to their logs at the stop without being tried (not
    /// queued for want of room, or queued while the sink was failing).
    private var shedding = false, shed = 0
    /// Whether the sink's last settled write failed and is being retried: the first such failure and the
    /// first success after it are logged, the failures between them only counted (retries metric).
    private let trouble = FailureNotice()
    /// The runtime that replaced this one in a reload: failed writes go to it instead of being retried.
    private var successor: SinkRuntime?
    /// While the sink reports backpressure, the worker pauses (doubling up to a second).
    private var pausedUntil: UInt64 = 0
    /// Who may be waiting on `cond`, so that wake-ups are sent only when someone listens.
    private var workerWaiting = false
    private var blockedEnqueuers = 0
    /// How many deliveries a write has in the plugin's hands (0: no write under way; the lock is
    /// released around it). Writes go one at a time, so that the sink receives messages in the order
    /// they were queued, and what a write hands back goes to the front of the queue before anything
    /// later is written. They count against the queue's room until the write returns: a busy sink hands
    /// them all back, and room made by taking them out would let the queue grow by its size on every
    /// refused write.
    private var inWrite = 0, inWriteBytes = 0
    private var writing: Bool { inWrite > 0 }
    /// Whether the queue is at its bound in count or in payload bytes (`queue_size`, `queue_bytes`); an
    /// empty queue always takes one message, however large. Must hold `cond`.
    private var full: Bool { ready.count + inWrite >= options.queueSize || ready.bytes + inWriteBytes >= options.queueBytes }
    private var pause = 0.01
    private var worker: WorkerThread?
    private let log: @Sendable (String) -> Void
    /// Told how each notification (a delivery marked so) ended: taken by the sink (failure nil) or
    /// dead-lettered (why). The hub records it on the alert.
    var notified: (@Sendable (_ message: Message, _ sink: String, _ failure: String?) -> Void)?

    private let delivered: Counter
    private let retried: Counter
    private let deadLettered: Counter
    private let latency: Metrics.Timer
    private let depth: Gauge

    init(name: String, instance: any SinkTarget, options: DeliveryOptions, deadLetters: DeadLetterStore, log: @escaping @Sendable (String) -> Void) {
        self.name = name
        self.instance = instance
        self.options = options
        self.deadLetters = deadLetters
        self.log = log
        delivered = Counter(label: "iotc_sink_delivered_total", dimensions: [("sink", name)])
        retried = Counter(label: "iotc_sink_retries_total", dimensions: [("sink", name)])
        deadLettered = Counter(label: "iotc_dead_letters_total", dimensions: [("sink", name)])
        latency = Metrics.Timer(label: "iotc_sink_latency_seconds", dimensions: [("sink", name)], preferredDisplayUnit: .seconds)
        depth = Gauge(label: "iotc_queue_depth", dimensions: [("queue", "sink:\(name)")])
    }

    func start() {
        worker = WorkerThread(name: "sink-\(name)") { [self] in run() }
    }

    /// Queues a delivery, waiting while the queue is full (this is how pressure reaches pipelines).
    func enqueue(_ d: Delivery) { enqueue(contentsOf: [d]) }

    /// Most deliveries handed to the plugin in one call.
    static let batchLimit = 256

    /// Queues deliveries in order, waiting for room as needed. When nothing is queued ahead and the sink
    /// has room in flight, the caller's thread writes to the sink itself, sparing a hand-off.
    func enqueue(contentsOf list: consuming [Delivery]) {
        cond.lock()
        // Replaced in a reload: what still comes here (a pipeline that read the old sink map) goes on to
        // the new instance, as what was queued here did.
        if stopping, let next = successor {
            cond.unlock()
            next.enqueue(contentsOf: list)
            return
        }
        // The common case, all of it written at once: the list is handed on, not copied.
        if !list.isEmpty, mayWriteNow, list.count <= min(options.maxInFlight - inFlight.count, Self.batchLimit) {
            write(consume list)
            cond.unlock()
            return
        }
        var i = 0
        while i < list.count {
            if mayWriteNow {
                let n = min(list.count - i, options.maxInFlight - inFlight.count, Self.batchLimit)
                write(Array(list[i..<(i + n)]))
                i += n
                continue
            }
            while full && !stopping && !(shedding && list[i].settlement != nil) {
                blockedEnqueuers += 1
                cond.wait()
                blockedEnqueuers -= 1
            }
            if stopping, let next = successor {
                cond.unlock()
                next.enqueue(contentsOf: Array(list[i...]))
                return
            }
            if full && !stopping {
                // Shed (see `shedDurableDeliveries`): left unsettled in its pipeline's write-ahead log.
                shed += 1
                i += 1
                continue
            }
            while i < list.count && (!full || stopping) {
                ready.append(list[i])
                i += 1
            }
            wake()
        }
        cond.unlock()
    }

    /// Queues a delivery only if there is room now, never waiting (for callers that must not block,
    /// such as the operator API's dead-letter replay, which runs on the process's shared task pool);
    /// false when the queue is full or the sink is stopping.
    func offer(_ d: Delivery) -> Bool {
        cond.lock()
        defer { cond.unlock() }
        guard !stopping else { return false }
        if mayWriteNow {
            write([d])
            return true
        }
        guard !full else { return false }
        ready.append(d)
        wake()
        return true
    }

    /// Called as the hub stops, before its pipelines drain: from then on a delivery of a durable
    /// pipeline does not wait for room in this sink's full queue; it is left unsettled in its
    /// pipeline's write-ahead log, which sends it again at the next start. Without this, a pipeline's
    /// worker waited on a full sink whose endpoint was down until the stop's deadline (30 s), though
    /// everything it held was safe in its log. Deliveries of other pipelines still wait (a stop drains them).
    func shedDurableDeliveries() {
        cond.lock()
        shedding = true
        if blockedEnqueuers > 0 { cond.broadcast() }
        cond.unlock()
    }

    /// Whether a caller may write to the plugin itself: nothing queued ahead, no write under way, room in
    /// flight, and no pause after a refusal. Must hold `cond`.
    private var mayWriteNow: Bool {
        !writing && ready.isEmpty && delayed.isEmpty && inFlight.count < options.maxInFlight && !stopping
            && DispatchTime.now().uptimeNanoseconds >= pausedUntil
    }

    /// Hands deliveries to the plugin, in one call when it takes batches. Must hold `cond`; releases it
    /// around the call.
    private func write(_ batch: consuming [Delivery]) {
        let count = batch.count
        var bytes = 0
        var tokens: [UInt64] = []
        tokens.reserveCapacity(count)
        var messages: [Message] = []
        messages.reserveCapacity(count)
        let now = DispatchTime.now().uptimeNanoseconds
        // Each delivery is moved into `inFlight` (taken from the back, in order), not copied.
        batch.withUnsafeMutableBufferPointer { $0.reverse() }
        while var d = batch.popLast() {
            let token = nextToken
            nextToken += 1
            d.startedAt = now
            bytes += d.weight
            messages.append(d.message)
            inFlight[token] = d
            tokens.append(token)
        }
        inWrite = count
        inWriteBytes = bytes
        cond.unlock()
        let (taken, refusal) = instance.write(messages, tokens: tokens)
        cond.lock()
        defer {
            inWrite = 0
            inWriteBytes = 0
            // The worker has work now only if deliveries queued up behind this write (or it is
            // draining), and pipelines waiting for room may have some; otherwise nobody is woken.
            if !ready.isEmpty || stopping || blockedEnqueuers > 0 { wake() }
        }
        if taken > 0 { pause = 0.01 }
        guard taken < count else { return }
        // What was not taken goes back to the front of the queue, in order.
        var rest: [Delivery] = []
        for k in taken..<count { if let d = inFlight.removeValue(forKey: tokens[k]) { rest.append(d) } }
        guard !rest.isEmpty else { return }
        var failed: Delivery?
        if refusal != IOTC_ERR_BUSY {
            failed = rest.removeFirst()
            failed?.attempts += 1
        } else {
            pausedUntil = DispatchTime.now().uptimeNanoseconds + UInt64(pause * 1e9)
            pause = min(1, pause * 2)
        }
        for d in rest.reversed() { ready.prepend(d) }
        wake()
        if let failed {
            cond.unlock()
            toDeadLetters(failed, "the sink refused the message (code \(refusal))")
            cond.lock()
        }
    }

    /// Must hold `cond`.
    private func wake() {
        if workerWaiting || blockedEnqueuers > 0 { cond.broadcast() }
    }

    var queued: Int { cond.withLock { ready.count + delayed.count + inFlight.count } }

    /// Settles a write (called from the plugin's threads).
    func ack(token: UInt64, result: Int32, reason: String?) { ack(tokens: CollectionOfOne(token), result: result, reason: reason) }

    /// Settles writes that share one outcome, under one lock (called from the plugin's threads).
    func ack(tokens: some Collection<UInt64>, result: Int32, reason: String?) {
        var settled: [Delivery] = []
        settled.reserveCapacity(tokens.count)
        var retrying = 0
        var handed: [Delivery] = []
        cond.lock()
        for token in tokens {
            guard var d = inFlight.removeValue(forKey: token) else { continue }
            if result == IOTC_ERR_RETRY {
                d.attempts += 1
                // Stopping, a failed write goes to the runtime that replaced this one; without one, a
                // message in a write-ahead log is left unsettled rather than retried: the next start
                // replays it, and a failing sink does not hold the stop until its deadline.
                if stopping, successor != nil {
                    handed.append(d)
                    retrying += 1
                    continue
                }
                if stopping, d.settlement != nil {
                    leftForReplay += 1
                    retrying += 1
                    continue
                }
                if options.maxAttempts == 0 || d.attempts < options.maxAttempts {
                    schedule(d)
                    retrying += 1
                    continue
                }
            } else if result != IOTC_OK {
                d.attempts += 1
            }
            settled.append(d)
        }
        // The worker has something to do only if deliveries wait for the slot just freed, a retry was
        // scheduled, or it is draining; otherwise an ack wakes nobody.
        if workerWaiting && (!ready.isEmpty || retrying > 0 || stopping) { cond.broadcast() }
        let next = successor
        var changed: Bool?  // the sink started failing (true) or writes again (false)
        if result == IOTC_OK, !settled.isEmpty, trouble.worked() {
            changed = false
        } else if result == IOTC_ERR_RETRY, retrying > 0, !stopping, trouble.failed() {
            changed = true
        }
        cond.unlock()
        switch changed {
        case true?: log("sink '\(name)' failed a write and retries it with backoff: \(reason ?? "no reason given") (until it writes again, further failures are counted in iotc_sink_retries_total, not logged)")
        case false?: log("sink '\(name)' writes again")
        case nil: break
        }
        if !handed.isEmpty { next?.adopt(handed) }
        if result == IOTC_OK {
            let now = DispatchTime.now().uptimeNanoseconds
            var done = DoneRecords()
            for k in settled.indices {  // read in place: a copy of each delivery would cost more than the reads
                latency.recordNanoseconds(Int64(now &- settled[k].startedAt))
                done.settle(settled[k].settlement)
            }
            done.commit()
            delivered.increment(by: Int64(settled.count))
            if let notified { for d in settled where d.notification { notified(d.message, name, nil) } }
            return
        }
        if retrying > 0 { retried.increment(by: Int64(retrying)) }
        for d in settled {
            let why = result == IOTC_ERR_RETRY
                ? "gave up after \(d.attempts) attempts: \(reason ?? "no reason given")"
                : "rejected by the sink: \(reason ?? "no reason given")"
            toDeadLetters(d, why)
        }
    }

    private func toDeadLetters(_ d: Delivery, _ reason: String) {
        deadLettered.increment()
        do {
            try deadLetters.add(pipeline: d.pipeline, sink: name, step: nil, reason: reason, attempts: d.attempts,
                                message: CanonicalMessage(d.message, receivedTime: d.message.receivedTime ?? 0))
            log("message \(d.message.id) for sink '\(name)' moved to the dead-letter store: \(reason)")
        } catch {
            if d.notification { notified?(d.message, name, reason) }
            guard d.settlement == nil else {
                // Not settled: the message stays in its pipeline's write-ahead log, replayed at the next start.
                log("cannot write the dead letter of message \(d.message.id) for sink '\(name)' (\(error)); it stays in the write-ahead log of pipeline '\(d.pipeline)', which delivers it again at the next start")
                return
            }
            log("cannot write the dead letter of message \(d.message.id) for sink '\(name)' (\(error)); the message is lost (its pipeline is not durable)")
            return
        }
        if d.notification { notified?(d.message, name, reason) }
        var done = DoneRecords()
        done.settle(d.settlement)
        done.commit()
    }

    /// Must hold `cond`.
    private func schedule(_ d: Delivery, after seconds: Double? = nil) {
        var d = d
        let backoff = seconds ?? {
            let base = min(options.maxBackoff, options.initialBackoff * pow(2, Double(max(0, d.attempts - 1))))
            return Double.random(in: (base / 2)...max(base / 2, base))
        }()
        d.dueAt = DispatchTime.now().uptimeNanoseconds + UInt64(backoff * 1e9)
        let i = delayed.firstIndex { $0.dueAt > d.dueAt } ?? delayed.endIndex
        delayed.insert(d, at: i)
    }

    private func run() {
        cond.lock()
        while true {
            let now = DispatchTime.now().uptimeNanoseconds
            while let first = delayed.first, first.dueAt <= now {
                ready.prepend(delayed.removeFirst())
            }
            if stopping && ready.isEmpty && delayed.isEmpty && inFlight.isEmpty { break }
            if now >= pausedUntil, !writing, !ready.isEmpty && inFlight.count < options.maxInFlight {
                var batch: [Delivery] = []
                let n = min(ready.count, options.maxInFlight - inFlight.count, Self.batchLimit)
                batch.reserveCapacity(n)
                while batch.count < n, let d = ready.popFirst() { batch.append(d) }
                depth.record(ready.count + delayed.count)
                write(consume batch)
                continue
            }
            var due = delayed.first?.dueAt
            if pausedUntil > now, !ready.isEmpty { due = min(due ?? .max, pausedUntil) }
            workerWaiting = true
            if let due {
                let wait = Double(due &- now) / 1e9
                _ = cond.wait(until: Date(timeIntervalSinceNow: max(0.001, wait)))
            } else {
                cond.wait()
            }
            workerWaiting = false
        }
        cond.unlock()
    }

    /// Delivers what is queued, then stops the plugin. Retries wait until `deadline` only for messages
    /// that nothing else keeps: one from a durable pipeline waiting for a retry is left in its log, which
    /// replays it on the next start (a retry that comes due while stopping is left there too), and so
    /// are its queued ones when the sink is failing.
    ///
    /// With a `successor` (a reload replaced this sink), nothing waits on this instance: what is queued
    /// or waiting for a retry goes to the successor at once, ahead of what it has, and so does a write
    /// still out that fails; only writes out wait for this instance (until `deadline`). A sink whose
    /// endpoint was wrong is fixed by a reload, and its messages go to the new one.
    func drainAndStop(deadline: Date, successor: SinkRuntime? = nil) {
        cond.lock()
        stopping = true
        var handed: [Delivery] = []
        if let successor {
            self.successor = successor
            handed = delayed
            while let d = ready.popFirst() { handed.append(d) }
            delayed.removeAll()
            // Handed on before anyone waiting here wakes: what they forward then comes after these.
            // (The successor's lock is only ever taken inside this one, never the other way.)
            if !handed.isEmpty { successor.adopt(handed) }
        } else {
            let kept = delayed.count
            delayed.removeAll { $0.settlement != nil }
            leftForReplay += kept - delayed.count
            // A failing sink (its last write failed) is not given the durable pipelines' queued
            // messages to write as it stops: each would likely fail too, after its time-out, and hold
            // the stop; their logs send them at the next start. A sink that works flushes them.
            if trouble.isFailing {
                var rest = WeighedQueue<Delivery>()
                while let d = ready.popFirst() {
                    if d.settlement == nil { rest.append(d) } else { shed += 1 }
                }
                ready = rest
            }
        }
        cond.broadcast()
        cond.unlock()
        if !handed.isEmpty {
            log("sink '\(name)': \(handed.count) queued message\(handed.count == 1 ? "" : "s") handed to its new instance")
        }
        if worker?.join(until: deadline) == false {
            // Out of time: what is left stays unsettled, so a durable pipeline replays it on the next start.
            cond.lock()
            log("sink '\(name)' stopped with \(ready.count + delayed.count + inFlight.count) messages unsettled")
            ready = WeighedQueue()
            delayed.removeAll()
            cond.broadcast()
            cond.unlock()
        }
        if let n = cond.withLock({ shed > 0 ? shed : nil }) {
            log("sink '\(name)': \(n) message\(n == 1 ? "" : "s") of durable pipelines not written as it stopped (its queue was full, or it was failing) will be sent again from \(n == 1 ? "its pipeline's" : "their pipelines'") write-ahead log on the next start")
        }
        if let n = cond.withLock({ leftForReplay > 0 ? leftForReplay : nil }) {
            log("sink '\(name)': \(n) message\(n == 1 ? "" : "s") that failed will be sent again from \(n == 1 ? "its pipeline's" : "their pipelines'") write-ahead log on the next start")
        }
        instance.stop()
    }

    /// Takes deliveries a replaced runtime of this sink did not make, ahead of the queue (they came
    /// first), beyond its bound (they were admitted under the old one's).
    func adopt(_ deliveries: [Delivery]) {
        cond.lock()
        for var d in deliveries.reversed() {
            d.dueAt = 0
            ready.prepend(d)
        }
        wake()
        cond.unlock()
    }
}
