import Atomics
import Foundation
import IoTCPluginKit
import Metrics

/// A message waiting for a pipeline, with what must happen once it is settled.
struct PipelineInput: Sendable, Weighed {
    var message: CanonicalMessage
    var settlement: Settlement?

    var weight: Int {
        switch message.payload {
        case .bytes(let b): b.count
        case .value: message.decodedFrom?.count ?? 0
        }
    }
}

/// Runs one pipeline: a bounded input queue, one worker that applies the steps, and dispatch of the
/// results to sink queues (or the error output). The processor and sinks can be swapped on reload
/// without losing queued messages.
final class PipelineRuntime: @unchecked Sendable {
    let name: String
    private let cond = NSCondition()
    private var queue = WeighedQueue<PipelineInput>()
    private var capacity: Int, byteCapacity: Int
    private var processor: PipelineProcessor
    private var sinks: [String: SinkRuntime]
    private var stopping = false
    /// The queue's length, and the length it may reach (0 once stopping), mirrored out of the lock for
    /// `hasRoom`, which every submission asks (twice: as a source checks a topic, then as it submits):
    /// under the lock those asks made the source's thread sleep on it whenever the worker held it.
    private let length = ManagedAtomic<Int>(0)
    private let limit: ManagedAtomic<Int>
    /// The same for the queue's payload bytes (`queue_bytes`).
    private let bytes = ManagedAtomic<Int>(0)
    private let byteLimit: ManagedAtomic<Int>
    /// The worker had messages at its last look, and is napping rather than waiting to be woken.
    private var busy = false, napping = false
    /// How long the worker naps after a busy moment: the most it adds to a message's latency.
    static let nap: TimeInterval = 0.000_2
    private var worker: WorkerThread?
    private(set) var wal: WriteAheadLog?
    /// Where the rules' alerts are recorded for operators (the hub's alert book).
    var alerts: AlertBook?
    private let deadLetters: DeadLetterStore
    private let log: @Sendable (String) -> Void

    private let received: Counter
    private let sent: Counter
    private let errored: Counter
    private let filtered: Counter
    private let depth: Gauge

    init(processor: PipelineProcessor, sinks: [String: SinkRuntime], wal: WriteAheadLog?, deadLetters: DeadLetterStore,
         log: @escaping @Sendable (String) -> Void) {
        name = processor.config.name
        self.processor = processor
        self.sinks = sinks
        self.wal = wal
        self.deadLetters = deadLetters
        self.log = log
        capacity = processor.config.queueSize
        byteCapacity = processor.config.queueBytes
        limit = ManagedAtomic(processor.config.queueSize)
        byteLimit = ManagedAtomic(processor.config.queueBytes)
        received = Counter(label: "iotc_messages_in_total", dimensions: [("pipeline", name)])
        sent = Counter(label: "iotc_messages_out_total", dimensions: [("pipeline", name)])
        errored = Counter(label: "iotc_messages_errored_total", dimensions: [("pipeline", name)])
        filtered = Counter(label: "iotc_messages_filtered_total", dimensions: [("pipeline", name)])
        depth = Gauge(label: "iotc_queue_depth", dimensions: [("queue", "pipeline:\(name)")])
    }

    var config: PipelineConfig { cond.withLock { processor.config } }
    var isDurable: Bool { wal != nil }
    var queued: Int { cond.withLock { queue.count } }

    func start() {
        worker = WorkerThread(name: "pipe-\(name)") { [self] in run() }
    }

    /// Swaps in a new definition; queued messages go through the new steps.
    func update(processor: PipelineProcessor, sinks: [String: SinkRuntime]) {
        cond.withLock {
            self.processor = processor
            self.sinks = sinks
            capacity = processor.config.queueSize
            byteCapacity = processor.config.queueBytes
            limit.store(stopping ? 0 : capacity, ordering: .relaxed)
            byteLimit.store(byteCapacity, ordering: .relaxed)
        }
    }

    func attach(wal: WriteAheadLog) { cond.withLock { self.wal = wal } }

    /// Whether the queue takes more; read without the lock, so a few racing submitters may overshoot.
    var hasRoom: Bool {
        length.load(ordering: .relaxed) < limit.load(ordering: .relaxed) && bytes.load(ordering: .relaxed) < byteLimit.load(ordering: .relaxed)
    }

    /// Whether the queue is at its bound in count or in payload bytes (an empty queue takes one
    /// message, however large); must hold `cond`.
    private var full: Bool { queue.count >= capacity || queue.bytes >= byteCapacity }

    /// Mirrors the queue's length and bytes for `hasRoom`; must hold `cond`.
    private func mirror() {
        length.store(queue.count, ordering: .relaxed)
        bytes.store(queue.bytes, ordering: .relaxed)
    }

    /// Takes a message from a source. On a durable pipeline it is logged first and `durable` is told
    /// when it is on disk (a pipeline without a log takes `.nobody`). Capacity was checked by the
    /// caller; a few racing submitters may overshoot it. The message is moved into the queue, not copied.
    func accept(_ message: consuming CanonicalMessage, durable: Arrival) {
        let settlement = wal.map { Settlement(wal: $0, sequence: $0.append(message, completion: durable)) }
        let input = PipelineInput(message: message, settlement: settlement)
        cond.lock()
        queue.append(consume input)
        mirror()
        // The worker only ever waits on an empty queue; while it naps (it was busy a moment ago) it
        // looks again by itself, so a steady stream of messages does not wake it once each.
        if queue.count == 1 && !napping { cond.signal() }
        cond.unlock()
    }

    /// Queues a message, waiting for room (for replay from the write-ahead log or the dead-letter store).
    func push(_ input: consuming PipelineInput) {
        cond.lock()
        while full && !stopping { cond.wait() }
        queue.append(input)
        mirror()
        cond.broadcast()
        cond.unlock()
    }

    /// Queues a message only if there is room now, never waiting (see `SinkRuntime.offer`); false when
    /// the queue is full or the pipeline is stopping.
    func offer(_ input: consuming PipelineInput) -> Bool {
        cond.lock()
        defer { cond.unlock() }
        guard !stopping, !full else { return false }
        queue.append(input)
        mirror()
        cond.broadcast()
        return true
    }

    /// Runs the pipeline's timer (absence rules) and hands its alerts to their sinks.
    private func tick() {
        let (processor, sinks) = cond.withLock { (self.processor, self.sinks) }
        var out = 0
        let now = processor.clock()
        let ticked = processor.tick(now: now)
        var outputs = ticked.outputs
        alerts?.record(ticked.alerts)
        if let alerts { outputs += processor.escalations(alerts, now: now) }
        for o in outputs {
            let m = o.message.pluginMessage
            for name in o.sinks {
                guard let sink = sinks[name] else { continue }
                sink.enqueue(contentsOf: [Delivery(message: m, pipeline: self.name, settlement: nil, notification: o.notification)])
                out += 1
            }
        }
        if out > 0 { sent.increment(by: Int64(out)) }
    }

    /// How often the timer runs, for pipelines that have one.
    static let tickInterval: TimeInterval = 1

    private func run() {
        var batch: [PipelineInput] = []
        batch.reserveCapacity(64)
        var result = PipelineProcessor.Result()
        var done = DoneRecords()
        var nextTick = Date().addingTimeInterval(Self.tickInterval)
        while true {
            if Date() >= nextTick {
                let processor = cond.withLock { self.processor }
                if processor.hasTimers { tick() }  // absence rules; nothing when there are none
                // Rule state reaches the data folder every 10 s when it changed (and at stop).
                processor.rules.save(every: 10)
                alerts?.save(every: 1)
                nextTick = Date().addingTimeInterval(Self.tickInterval)
            }
            cond.lock()
            if queue.isEmpty && !stopping && busy {
                // Busy a moment ago: nap briefly instead of asking each producer for a wake-up.
                napping = true
                _ = cond.wait(until: Date(timeIntervalSinceNow: Self.nap))
                napping = false
                busy = !queue.isEmpty
            }
            var timerDue = false
            while queue.isEmpty && !stopping {
                // A pipeline with a timer wakes for it; others sleep until there is work.
                guard self.processor.hasTimers else {
                    cond.wait()
                    continue
                }
                if !cond.wait(until: nextTick) {
                    timerDue = true
                    break
                }
            }
            if timerDue && queue.isEmpty {
                cond.unlock()
                continue
            }
            busy = true
            if queue.isEmpty && stopping {
                cond.unlock()
                break
            }
            while batch.count < 64, let i = queue.popFirst() { batch.append(i) }
            let taken = batch.count, left = queue.count
            mirror()
            let processor = self.processor, sinks = self.sinks
            cond.broadcast()
            cond.unlock()
            // Outside the lock, which every submission takes: the shorter the worker holds it, the
            // less often a source's thread has to sleep on it and be woken.
            depth.record(left)
            // Taken from the back, in order, so that each input is moved out rather than copied (the
            // buffer's reverse moves elements; the array's copies each one it swaps).
            batch.withUnsafeMutableBufferPointer { $0.reverse() }
            var out = 0, failed = 0, dropped = 0
            // Deliveries are handed to each sink once per batch: one lock and one wake-up, not one per message.
            // A pipeline has few sinks: they are told apart by identity in a short list.
            var deliveries: [(sink: SinkRuntime, list: [Delivery])] = []
            func deliver(_ sink: SinkRuntime, _ d: Delivery) {
                if let k = deliveries.firstIndex(where: { $0.sink === sink }) {
                    deliveries[k].list.append(d)
                } else {
                    deliveries.append((sink, [d]))
                }
            }
            while let input = batch.popLast() {
                processor.process(input.message, into: &result)
                dropped += result.filtered
                if !result.alerts.isEmpty { alerts?.record(result.alerts) }
                for e in result.ruleErrors {
                    Counter(label: "iotc_rule_errors_total", dimensions: [("pipeline", name), ("rule", e.rule)]).increment()
                }
                let s = input.settlement
                for o in result.outputs {
                    let m = o.message.pluginMessage
                    for sinkName in o.sinks {
                        guard let sink = sinks[sinkName] else { continue }
                        s?.add(1)
                        deliver(sink, Delivery(message: m, pipeline: name, settlement: s, notification: o.notification))
                        out += 1
                    }
                }
                for f in result.failures {
                    failed += 1
                    let errorSinks = processor.config.errors.compactMap { sinks[$0] }
                    if errorSinks.isEmpty {
                        do {
                            try deadLetters.add(pipeline: name, sink: nil, step: f.step, reason: f.reason, attempts: 1, message: f.message)
                        } catch {
                            if let s {
                                // A share never settled: the message stays in the write-ahead log, replayed at the next start.
                                s.add(1)
                                log("cannot write the dead letter of message \(f.message.id) for pipeline '\(name)' (\(error)); it stays in the pipeline's write-ahead log and goes through the pipeline again at the next start")
                            } else {
                                log("cannot write the dead letter of message \(f.message.id) for pipeline '\(name)' (\(error)); the message is lost (the pipeline is not durable)")
                            }
                        }
                    } else {
                        let pm = f.errorOutputMessage.pluginMessage
                        for sink in errorSinks {
                            s?.add(1)
                            deliver(sink, Delivery(message: pm, pipeline: name, settlement: s))
                        }
                    }
                }
                done.settle(s)
            }
            done.commit()
            // Moved out, so that each list reaches its sink without a copy (the order across sinks is free).
            while let (sink, list) = deliveries.popLast() { sink.enqueue(contentsOf: list) }
            received.increment(by: Int64(taken))
            if out > 0 { sent.increment(by: Int64(out)) }
            if failed > 0 { errored.increment(by: Int64(failed)) }
            if dropped > 0 { filtered.increment(by: Int64(dropped)) }
            batch.removeAll(keepingCapacity: true)
            // The last message's outputs are not kept until the next batch.
            result.removeAll()
        }
    }

    /// Processes what is queued, then stops the worker.
    func drainAndStop(deadline: Date) {
        cond.lock()
        stopping = true
        limit.store(0, ordering: .relaxed)
        cond.broadcast()
        cond.unlock()
        worker?.join(until: deadline)
    }
}

