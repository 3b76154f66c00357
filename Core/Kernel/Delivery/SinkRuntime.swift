import CIoTCPluginABI
import Foundation
import IoTCPluginKit
import Metrics

/// Counts down the deliveries of one input message; runs `onSettled` when all are settled (delivered or
/// dead-lettered). The pipeline holds one count while it dispatches.
final class Settlement: @unchecked Sendable {
    private let lock = NSLock()
    private var remaining = 1
    private let onSettled: @Sendable () -> Void

    init(_ onSettled: @escaping @Sendable () -> Void) { self.onSettled = onSettled }

    func add(_ n: Int) { lock.withLock { remaining += n } }

    func settle() {
        let done = lock.withLock { () -> Bool in
            remaining -= 1
            return remaining == 0
        }
        if done { onSettled() }
    }
}

/// A message on its way to one sink.
struct Delivery: Sendable {
    var message: Message
    var pipeline: String
    var settlement: Settlement?
    var attempts = 0
    var dueAt: UInt64 = 0
    var startedAt: UInt64 = 0
}

/// Feeds one sink: a bounded queue, at most `maxInFlight` unsettled writes, retries with exponential
/// backoff and jitter, and the dead-letter store once attempts run out or the sink rejects a message.
final class SinkRuntime: @unchecked Sendable {
    let name: String
    let instance: any SinkTarget
    let options: DeliveryOptions
    private let deadLetters: DeadLetterStore
    private let cond = NSCondition()
    private var ready = RingBuffer<Delivery>()
    private var delayed: [Delivery] = []
    private var inFlight: [UInt64: Delivery] = [:]
    private var nextToken: UInt64 = 1
    private var stopping = false
    /// While the sink reports backpressure, the worker pauses (doubling up to a second).
    private var pausedUntil: UInt64 = 0
    /// Who may be waiting on `cond`, so that wake-ups are sent only when someone listens.
    private var workerWaiting = false
    private var blockedEnqueuers = 0
    private var pause = 0.01
    private var worker: WorkerThread?
    private let log: @Sendable (String) -> Void

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
        worker = WorkerThread(name: "iotc-sink-\(name)") { [self] in run() }
    }

    /// Queues a delivery, waiting while the queue is full (this is how pressure reaches pipelines).
    func enqueue(_ d: Delivery) { enqueue(contentsOf: [d]) }

    /// Queues deliveries in order, waiting for room as needed. When nothing is queued ahead and the sink
    /// has room in flight, the caller's thread writes to the sink itself, sparing a hand-off per message.
    func enqueue(contentsOf list: [Delivery]) {
        cond.lock()
        var i = 0
        while i < list.count {
            if ready.isEmpty && delayed.isEmpty && inFlight.count < options.maxInFlight && !stopping,
               DispatchTime.now().uptimeNanoseconds >= pausedUntil {
                write(list[i])
                i += 1
                continue
            }
            while ready.count >= options.queueSize && !stopping {
                blockedEnqueuers += 1
                cond.wait()
                blockedEnqueuers -= 1
            }
            while i < list.count && (ready.count < options.queueSize || stopping) {
                ready.append(list[i])
                i += 1
            }
            wake()
        }
        cond.unlock()
    }

    /// Hands one delivery to the plugin. Must hold `cond`; releases it around the call.
    private func write(_ delivery: Delivery) {
        var d = delivery
        let token = nextToken
        nextToken += 1
        d.startedAt = DispatchTime.now().uptimeNanoseconds
        inFlight[token] = d
        if blockedEnqueuers > 0 { cond.broadcast() }
        cond.unlock()
        let r = instance.write(d.message, token: token)
        cond.lock()
        if r == IOTC_OK {
            pause = 0.01
        } else if inFlight.removeValue(forKey: token) != nil {
            if r == IOTC_ERR_BUSY {
                ready.prepend(d)
                pausedUntil = DispatchTime.now().uptimeNanoseconds + UInt64(pause * 1e9)
                pause = min(1, pause * 2)
                wake()
            } else {
                d.attempts += 1
                cond.unlock()
                toDeadLetters(d, "the sink refused the message (code \(r))")
                cond.lock()
            }
        }
    }

    /// Must hold `cond`.
    private func wake() {
        if workerWaiting || blockedEnqueuers > 0 { cond.broadcast() }
    }

    var queued: Int { cond.withLock { ready.count + delayed.count + inFlight.count } }

    /// Settles a write (called from the plugin's threads).
    func ack(token: UInt64, result: Int32, reason: String?) {
        cond.lock()
        guard var d = inFlight.removeValue(forKey: token) else {
            cond.unlock()
            return
        }
        var deadLetter: String?
        var retrying = false
        switch result {
        case IOTC_OK:
            break
        case IOTC_ERR_RETRY:
            d.attempts += 1
            if options.maxAttempts > 0 && d.attempts >= options.maxAttempts {
                deadLetter = "gave up after \(d.attempts) attempts: \(reason ?? "no reason given")"
            } else {
                schedule(d)
                retrying = true
            }
        default:
            d.attempts += 1
            deadLetter = "rejected by the sink: \(reason ?? "no reason given")"
        }
        // The worker has something to do only if deliveries wait for the slot just freed, a retry was
        // scheduled, or it is draining; otherwise an ack wakes nobody.
        if workerWaiting && (!ready.isEmpty || retrying || stopping) { cond.broadcast() }
        cond.unlock()
        if result == IOTC_OK {
            latency.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds &- d.startedAt))
            delivered.increment()
            d.settlement?.settle()
        } else if let why = deadLetter {
            toDeadLetters(d, why)
        } else {
            retried.increment()
        }
    }

    private func toDeadLetters(_ d: Delivery, _ reason: String) {
        deadLettered.increment()
        do {
            try deadLetters.add(pipeline: d.pipeline, sink: name, step: nil, reason: reason, attempts: d.attempts,
                                message: CanonicalMessage(d.message, receivedTime: d.message.receivedTime ?? 0))
            log("message \(d.message.id) for sink '\(name)' moved to the dead-letter store: \(reason)")
        } catch {
            log("cannot write dead letter for sink '\(name)': \(error)")
        }
        d.settlement?.settle()
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
            if now >= pausedUntil, !ready.isEmpty && inFlight.count < options.maxInFlight, let d = ready.popFirst() {
                depth.record(ready.count + delayed.count)
                write(d)
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

    /// Delivers what is queued (retries included, until `deadline`), then stops the plugin.
    func drainAndStop(deadline: Date) {
        cond.lock()
        stopping = true
        cond.broadcast()
        cond.unlock()
        if worker?.join(until: deadline) == false {
            // Out of time: what is left stays unsettled, so a durable pipeline replays it on the next start.
            cond.lock()
            log("sink '\(name)' stopped with \(ready.count + delayed.count + inFlight.count) messages unsettled")
            ready = RingBuffer()
            delayed.removeAll()
            cond.broadcast()
            cond.unlock()
        }
        instance.stop()
    }
}
