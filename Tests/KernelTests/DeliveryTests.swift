import CIoTCPluginABI
import Foundation
import Testing
@testable import IoTCKernel
import IoTCPluginKit

/// The sink runtime's batched hand-off to sinks, and the C views that carry batches across the ABI.
@Suite struct DeliveryTests {
    /// A sink that takes at most `accept` messages per call (then says busy) and acknowledges them from
    /// another thread, recording what it took.
    /// A test sink that settles its writes through the runtime feeding it.
    protocol Settling: SinkTarget, AnyObject {
        var runtime: SinkRuntime? { get set }
    }

    final class ChoosySink: Settling, @unchecked Sendable {
        let lock = NSLock()
        var taken: [String] = []
        var calls = 0
        /// Read and changed under `lock`.
        var accept: Int
        let rejectID: String?
        /// How long a write takes when it is not made on `fastThread`, in microseconds.
        let delay: UInt32
        var fastThread: pthread_t?
        weak var runtime: SinkRuntime?

        init(accept: Int, rejectID: String? = nil, delay: UInt32 = 0) {
            self.accept = accept
            self.rejectID = rejectID
            self.delay = delay
        }

        func write(_ m: Message, token: UInt64) -> Int32 { write([m], tokens: [token]).refusal }

        func write(_ messages: [Message], tokens: [UInt64]) -> (taken: Int, refusal: Int32) {
            var n = 0
            if delay > 0, lock.withLock({ fastThread.map { pthread_equal($0, pthread_self()) == 0 } ?? true }) { usleep(delay) }
            lock.withLock {
                calls += 1
                for m in messages.prefix(accept) {
                    if m.id == rejectID { break }
                    taken.append(m.id)
                    n += 1
                }
            }
            let settled = Array(tokens.prefix(n))
            DispatchQueue.global().async { self.runtime?.ack(tokens: settled, result: IOTC_OK, reason: nil) }
            if n < messages.count, messages[n].id == rejectID { return (n, IOTC_ERR_INVALID) }
            return (n, n == messages.count ? IOTC_OK : IOTC_ERR_BUSY)
        }

        func stop() {}
    }

    /// Log lines collected from any thread.
    final class Lines: @unchecked Sendable {
        private let lock = NSLock()
        private var lines: [String] = []
        func append(_ line: String) { lock.withLock { lines.append(line) } }
        var all: [String] { lock.withLock { lines } }
    }

    /// A count shared between threads.
    final class Tally: @unchecked Sendable {
        private let lock = NSLock()
        private var n = 0
        func add(_ k: Int) { lock.withLock { n += k } }
        var value: Int { lock.withLock { n } }
    }

    /// A started runtime feeding `sink`; its log lines go to `log`.
    func started(_ sink: some Settling, _ options: DeliveryOptions = DeliveryOptions(), deadLetters: DeadLetterStore, name: String = "test",
                 log: @escaping @Sendable (String) -> Void = { _ in }) -> SinkRuntime {
        let runtime = SinkRuntime(name: name, instance: sink, options: options, deadLetters: deadLetters, log: log)
        sink.runtime = runtime
        runtime.start()
        return runtime
    }

    /// Options of a sink that retries without end, with these pauses.
    func retryingForever(initialBackoff: Double, maxBackoff: Double) -> DeliveryOptions {
        var options = DeliveryOptions()
        options.initialBackoff = initialBackoff
        options.maxBackoff = maxBackoff
        options.maxAttempts = 0
        return options
    }

    func deliveries(_ n: Int) -> [Delivery] {
        (0..<n).map { Delivery(message: Message(id: "m\($0)", topic: "t", payload: [UInt8($0 % 256)]), pipeline: "p", settlement: nil) }
    }

    @Test func batchesThatAreTakenInPartKeepTheirOrderAndLoseNothing() throws {
        let dir = TempDir()
        let sink = ChoosySink(accept: 7)
        var options = DeliveryOptions()
        options.maxInFlight = 50
        let runtime = started(sink, options, deadLetters: try DeadLetterStore(directory: dir.url))
        runtime.enqueue(contentsOf: deliveries(500))
        #expect(eventually(timeout: 20) { runtime.queued == 0 })
        runtime.drainAndStop(deadline: Date().addingTimeInterval(5))
        let taken = sink.lock.withLock { sink.taken }
        #expect(taken == (0..<500).map { "m\($0)" })
        // Batches, not one call per message, but never more than the sink takes at once.
        #expect(sink.lock.withLock { sink.calls } < 500)
    }

    /// A pipeline hands over small batches while the sink's worker is still writing a backlog (the
    /// sink takes three at a time, and the worker's writes are slow): the sink still receives every
    /// message in order.
    @Test func batchesEnqueuedWhileTheWorkerWritesKeepTheirOrder() throws {
        let dir = TempDir()
        let sink = ChoosySink(accept: 3, delay: 5000)
        sink.fastThread = pthread_self()
        let runtime = started(sink, deadLetters: try DeadLetterStore(directory: dir.url))
        let all = deliveries(240)
        for start in stride(from: 0, to: all.count, by: 4) {
            runtime.enqueue(contentsOf: Array(all[start..<(start + 4)]))
            usleep(2000)
        }
        #expect(eventually(timeout: 20) { runtime.queued == 0 })
        runtime.drainAndStop(deadline: Date().addingTimeInterval(5))
        let taken = sink.lock.withLock { sink.taken }
        #expect(taken == (0..<240).map { "m\($0)" }, "first out of place: \(zip(taken, 0...).first { $0.0 != "m\($0.1)" }.map { "\($0)" } ?? "-")")
    }

    /// Feeds `all` from another thread to a sink that says busy to every write, for 1.5 s; `check` is
    /// told the most the runtime held meanwhile, how many the feeder handed over, and whether the sink
    /// was asked more than three times and took nothing. Then the sink takes everything, and every
    /// delivery must arrive, in order.
    func feedABusySink(_ options: DeliveryOptions, _ all: [Delivery], check: (_ most: Int, _ fed: Int, _ refusedOften: Bool) -> Void) throws {
        let dir = TempDir()
        let sink = ChoosySink(accept: 0, delay: 20_000)
        let runtime = started(sink, options, deadLetters: try DeadLetterStore(directory: dir.url))
        let fed = Tally()
        let feeder = Thread {
            for d in all {
                runtime.enqueue(d)
                fed.add(1)
            }
        }
        feeder.start()
        var most = 0
        let until = Date().addingTimeInterval(1.5)
        while Date() < until {
            most = max(most, runtime.queued)
            usleep(1000)
        }
        check(most, fed.value, sink.lock.withLock { sink.taken.isEmpty && sink.calls > 3 })
        sink.lock.withLock { sink.accept = 100 }
        #expect(eventually(timeout: 20) { fed.value == all.count && runtime.queued == 0 })
        runtime.drainAndStop(deadline: Date().addingTimeInterval(5))
        #expect(sink.lock.withLock { sink.taken } == all.map(\.message.id))
    }

    /// A sink that says busy to every write (as an MQTT sink does while its broker is away) holds its
    /// feeders back at the queue's size: the deliveries a refused write hands back do not leave room
    /// behind them while the write is out. Once the sink takes messages, every one arrives, in order.
    @Test func aBusySinkHoldsNoMoreThanItsQueue() throws {
        var options = DeliveryOptions()
        options.queueSize = 4
        try feedABusySink(options, deliveries(60)) { most, fed, refusedOften in
            #expect(most <= options.queueSize, "held at most the queue: \(most)")
            #expect(fed <= options.queueSize + 1 && refusedOften, "the feeder waits while the sink refuses (\(fed) handed over)")
        }
    }

    /// The queue is bounded in payload bytes too (`queue_bytes`): 100 KB messages to a sink that says busy
    /// stop at 400 KB, well before the queue's count (1,024); an empty queue still takes a message larger
    /// than the bound. Before, only the count held: 1,024 messages of 1 MB each were 1 GB.
    @Test func aBusySinkHoldsNoMoreBytesThanItsQueue() throws {
        var options = DeliveryOptions()
        options.queueBytes = 400_000
        let all = (0..<40).map { Delivery(message: Message(id: "m\($0)", topic: "t", payload: [UInt8](repeating: 2, count: 100_000)), pipeline: "p", settlement: nil) }
            + [Delivery(message: Message(id: "huge", topic: "t", payload: [UInt8](repeating: 1, count: 500_000)), pipeline: "p", settlement: nil)]
        try feedABusySink(options, all) { most, fed, _ in
            // Four of 100 KB (and one more while a refused write is out); the 500 KB one, last, goes
            // once the queue is empty.
            #expect(most >= 4 && most <= 5, "held at most 400 KB: \(most) messages")
            #expect(fed >= 4 && fed <= 6, "the feeder waits while the sink refuses (\(fed) handed over)")
        }
    }

    /// A sink that takes every write and answers each with `answer` from another thread, or never
    /// when it is nil (an endpoint that hangs).
    final class ScriptedSink: Settling, @unchecked Sendable {
        let attempts = Tally()
        private let lock = NSLock()
        private var _answer: Int32?
        /// How the sink settles what it takes (nil: never); a test may change it.
        var answer: Int32? {
            get { lock.withLock { _answer } }
            set { lock.withLock { _answer = newValue } }
        }
        weak var runtime: SinkRuntime?
        init(answer: Int32?) { _answer = answer }
        func write(_ m: Message, token: UInt64) -> Int32 { write([m], tokens: [token]).refusal }
        func write(_ messages: [Message], tokens: [UInt64]) -> (taken: Int, refusal: Int32) {
            attempts.add(messages.count)
            if let answer { DispatchQueue.global().async { self.runtime?.ack(tokens: tokens, result: answer, reason: answer == IOTC_OK ? nil : "down") } }
            return (messages.count, IOTC_OK)
        }
        func stop() {}
    }

    /// A sink that starts failing is logged once with the reason, and once more when it writes again;
    /// the retries between are only counted (a webhook or file sink failing was silent until its
    /// messages reached the dead-letter store).
    @Test func logsASinkThatStartsFailingAndWhenItWritesAgain() throws {
        let dir = TempDir()
        let options = retryingForever(initialBackoff: 0.01, maxBackoff: 0.02)
        let lines = Lines()
        let sink = ScriptedSink(answer: IOTC_ERR_RETRY)
        let runtime = started(sink, options, deadLetters: try DeadLetterStore(directory: dir.url), name: "archive") { lines.append($0) }
        defer { runtime.drainAndStop(deadline: Date().addingTimeInterval(1)) }
        runtime.enqueue(contentsOf: deliveries(3))
        #expect(eventually(timeout: 10) { sink.attempts.value >= 20 })
        #expect(lines.all == ["sink 'archive' failed a write and retries it with backoff: down (until it writes again, further failures are counted in iotc_sink_retries_total, not logged)"])
        sink.answer = IOTC_OK
        #expect(eventually(timeout: 10) { runtime.queued == 0 })
        #expect(lines.all.last == "sink 'archive' writes again" && lines.all.count == 2, "\(lines.all)")
    }

    /// Stopping, a failing sink keeps retrying a message that nothing else keeps until the deadline, but
    /// leaves one from a durable pipeline to its write-ahead log at once (the next start replays it):
    /// a stop with a webhook endpoint down took the whole 30 s before.
    @Test func stoppingLeavesDurableMessagesToTheirLogAndRetriesTheRest() throws {
        let dir = TempDir()
        let options = retryingForever(initialBackoff: 0.05, maxBackoff: 0.1)
        func runtime(_ sink: ScriptedSink) throws -> SinkRuntime {
            self.started(sink, options, deadLetters: try DeadLetterStore(directory: dir.url.appendingPathComponent("dead-letters")))
        }
        let walDirectory = dir.url.appendingPathComponent("wal")
        let wal = try WriteAheadLog(directory: walDirectory)
        #expect(try wal.open().isEmpty)
        let written = DispatchSemaphore(value: 0)
        let sequence = wal.append(CanonicalMessage(Message(id: "kept", topic: "t", payload: [1]), receivedTime: 1)) { _ in written.signal() }
        written.wait()

        let durableSink = ScriptedSink(answer: IOTC_ERR_RETRY)
        let durable = try runtime(durableSink)
        durable.enqueue(Delivery(message: Message(id: "kept", topic: "t", payload: [1]), pipeline: "p", settlement: Settlement(wal: wal, sequence: sequence)))
        #expect(eventually(timeout: 10) { durableSink.attempts.value >= 3 })
        var started = Date()
        durable.drainAndStop(deadline: Date().addingTimeInterval(5))
        #expect(Date().timeIntervalSince(started) < 1, "stopped after \(Date().timeIntervalSince(started)) s")
        wal.close()
        #expect(try WriteAheadLog(directory: walDirectory).open().map(\.message.id) == ["kept"], "the log still holds it")

        let plainSink = ScriptedSink(answer: IOTC_ERR_RETRY)
        let plain = try runtime(plainSink)
        plain.enqueue(contentsOf: deliveries(1))
        #expect(eventually(timeout: 10) { plainSink.attempts.value >= 3 })
        let before = plainSink.attempts.value
        started = Date()
        plain.drainAndStop(deadline: Date().addingTimeInterval(1.5))
        #expect(Date().timeIntervalSince(started) > 1.2, "a message nothing else keeps is retried until the deadline")
        #expect(plainSink.attempts.value > before + 3)
    }

    /// Stopping, a sink that is failing does not write the durable pipelines' messages still queued:
    /// each write here fails after a second, and five of them would hold the stop five seconds; they are
    /// left to the write-ahead log (the next start replays them), and only the write out waits.
    @Test func aFailingSinkLeavesQueuedDurableMessagesToTheirLogAsItStops() throws {
        final class SlowFailure: Settling, @unchecked Sendable {
            let attempts = Tally()
            weak var runtime: SinkRuntime?
            func write(_ m: Message, token: UInt64) -> Int32 { write([m], tokens: [token]).refusal }
            func write(_ messages: [Message], tokens: [UInt64]) -> (taken: Int, refusal: Int32) {
                attempts.add(messages.count)
                DispatchQueue.global().asyncAfter(deadline: .now() + 1) { self.runtime?.ack(tokens: tokens, result: IOTC_ERR_RETRY, reason: "down") }
                return (messages.count, IOTC_OK)
            }
            func stop() {}
        }
        let dir = TempDir()
        var options = retryingForever(initialBackoff: 0.01, maxBackoff: 0.02)
        options.maxInFlight = 1
        let wal = try WriteAheadLog(directory: dir.url.appendingPathComponent("wal"))
        #expect(try wal.open().isEmpty)
        defer { wal.close() }
        let sink = SlowFailure()
        let runtime = started(sink, options, deadLetters: try DeadLetterStore(directory: dir.url.appendingPathComponent("dead-letters")))
        runtime.enqueue(contentsOf: (0..<6).map { i in
            let m = Message(id: "m\(i)", topic: "t", payload: [UInt8(i)])
            return Delivery(message: m, pipeline: "p", settlement: Settlement(wal: wal, sequence: wal.append(CanonicalMessage(m, receivedTime: 1)) { _ in }))
        })
        // The first write has failed and is being retried: the sink is failing.
        #expect(eventually(timeout: 10) { sink.attempts.value >= 2 })
        let started = Date()
        runtime.drainAndStop(deadline: Date().addingTimeInterval(20))
        #expect(Date().timeIntervalSince(started) < 2, "stopped after \(Date().timeIntervalSince(started)) s")
        #expect(sink.attempts.value == 2, "no queued message was written while stopping: \(sink.attempts.value) writes")
    }

    /// A reload replaces a sink whose endpoint hangs: what was queued goes to the new instance, and so
    /// does a delivery a pipeline was still waiting to queue on the old one (it would have been left
    /// in the old queue, which nobody writes once the old instance stops).
    @Test func aReplacedSinkPassesOnWhatWasQueuedAndWhatWasStillComing() throws {
        let dir = TempDir()
        var options = DeliveryOptions()
        options.maxInFlight = 1
        options.queueSize = 1
        let hanging = ScriptedSink(answer: nil)
        let old = SinkRuntime(name: "test", instance: hanging, options: options, deadLetters: try DeadLetterStore(directory: dir.url)) { _ in }
        old.start()
        let all = deliveries(3)
        old.enqueue(all[0])  // written, never settled
        old.enqueue(all[1])  // queued
        #expect(eventually { hanging.attempts.value == 1 && old.queued == 2 })
        let fed = Tally()
        let feeder = Thread {
            old.enqueue(all[2])  // waits for room
            fed.add(1)
        }
        feeder.start()
        usleep(200_000)
        #expect(fed.value == 0, "the third waits for room")
        let fresh = ChoosySink(accept: 100)
        let successor = started(fresh, deadLetters: try DeadLetterStore(directory: dir.url))
        old.drainAndStop(deadline: Date().addingTimeInterval(1), successor: successor)
        #expect(eventually(timeout: 5) { fed.value == 1 && fresh.lock.withLock { fresh.taken.count } == 2 })
        #expect(fresh.lock.withLock { fresh.taken } == ["m1", "m2"])
        successor.drainAndStop(deadline: Date().addingTimeInterval(5))
    }

    @Test func aMessageTheSinkRefusesGoesToTheDeadLettersAndTheRestGoOn() throws {
        let dir = TempDir()
        let sink = ChoosySink(accept: 100, rejectID: "m3")
        let store = try DeadLetterStore(directory: dir.url)
        let runtime = started(sink, deadLetters: store)
        runtime.enqueue(contentsOf: deliveries(10))
        #expect(eventually(timeout: 10) { runtime.queued == 0 })
        runtime.drainAndStop(deadline: Date().addingTimeInterval(5))
        #expect(sink.lock.withLock { sink.taken } == ["m0", "m1", "m2", "m4", "m5", "m6", "m7", "m8", "m9"])
        #expect(store.list().map(\.message.id) == ["m3"])
    }

    /// The dead-letter store cannot write (its folder is gone, a file in its place): a durable message the
    /// sink refuses is not settled, so it stays in its write-ahead log for the next start, and the log
    /// says so; before, it was settled and lost.
    @Test func aDurableMessageWhoseDeadLetterCannotBeWrittenStaysInItsLog() throws {
        let dir = TempDir()
        let letters = dir.url.appendingPathComponent("dead-letters")
        let store = try DeadLetterStore(directory: letters)
        try FileManager.default.removeItem(at: letters)
        try Data("not a folder".utf8).write(to: letters)
        let walDirectory = dir.url.appendingPathComponent("wal")
        let wal = try WriteAheadLog(directory: walDirectory)
        #expect(try wal.open().isEmpty)
        let written = DispatchSemaphore(value: 0)
        let message = Message(id: "refused", topic: "t", payload: [1])
        let sequence = wal.append(CanonicalMessage(message, receivedTime: 1)) { _ in written.signal() }
        written.wait()
        let lines = Lines()
        let runtime = started(ScriptedSink(answer: IOTC_ERR_INVALID), deadLetters: store, log: { lines.append($0) })
        runtime.enqueue(Delivery(message: message, pipeline: "p", settlement: Settlement(wal: wal, sequence: sequence)))
        #expect(eventually(timeout: 10) { lines.all.contains { $0.contains("cannot write the dead letter of message refused") } })
        runtime.drainAndStop(deadline: Date().addingTimeInterval(5))
        #expect(lines.all.contains { $0.contains("stays in the write-ahead log of pipeline 'p'") }, "\(lines.all)")
        wal.close()
        #expect(try WriteAheadLog(directory: walDirectory).open().map(\.message.id) == ["refused"], "the log no longer holds it")
    }

    /// A dead letter for message `i`.
    private func addLetter(_ store: DeadLetterStore, _ i: Int) throws {
        try store.add(pipeline: "p", sink: nil, step: "decode", reason: "bad \(i)", attempts: 1,
                      message: CanonicalMessage(Message(id: "m\(i)", payload: [UInt8(i % 256)]), receivedTime: 1))
    }

    @Test func theDeadLetterStoreKeepsTheNewestUpToItsBound() throws {
        let dir = TempDir()
        let evicted = Tally()
        let store = try DeadLetterStore(directory: dir.url, maxEntries: 20) { n in evicted.add(n) }
        for i in 0..<45 { try addLetter(store, i) }
        let kept = store.list().map(\.message.id)
        // Past 20, the oldest go, down to 18 (nine tenths).
        #expect(kept.count >= 18 && kept.count <= 20, "\(kept.count) kept")
        #expect(kept == (45 - kept.count..<45).map { "m\($0)" }, "the newest are kept, in order")
        #expect(evicted.value == 45 - kept.count)
        // A store opened on the same folder counts what is there.
        let reopened = try DeadLetterStore(directory: dir.url, maxEntries: 20)
        #expect(reopened.page(after: nil, limit: 1).total == kept.count)
    }

    /// The store is bounded in bytes too: 30 entries of about 10 KB under a 100 KB bound keep the newest
    /// 8 or 9 (nine tenths of it after an eviction); removing entries gives their bytes back. Before,
    /// only the count held: 100,000 entries of 1 MB messages were 100 GB.
    @Test func theDeadLetterStoreIsBoundedInBytes() throws {
        let dir = TempDir()
        let evicted = Tally()
        let store = try DeadLetterStore(directory: dir.url, maxBytes: 100_000) { n in evicted.add(n) }
        func add(_ i: Int) throws {
            var m = CanonicalMessage(Message(id: "m\(i)", topic: "t", payload: Array(String(repeating: "x", count: 10_000).utf8)), receivedTime: 0)
            m.tenant = "default"
            try store.add(pipeline: "p", sink: "s", step: nil, reason: "r", attempts: 1, message: m)
        }
        for i in 0..<30 { try add(i) }
        let kept = store.list().map(\.message.id)
        #expect(kept.count >= 6 && kept.count <= 9, "\(kept.count) kept")
        #expect(kept == (30 - kept.count..<30).map { "m\($0)" }, "the newest are kept, in order")
        #expect(evicted.value == 30 - kept.count)
        // Emptied by hand, it takes as many again before it evicts.
        #expect(store.remove(ids: nil) == kept.count)
        for i in 30..<37 { try add(i) }
        #expect(store.list().count == 7 && evicted.value == 30 - kept.count)
    }

    @Test func deadLettersAreListedAPageAtATime() throws {
        let dir = TempDir()
        let store = try DeadLetterStore(directory: dir.url)
        for i in 0..<25 { try addLetter(store, i) }
        var seen: [String] = []
        var after: String?
        var pages = 0
        repeat {
            let page = store.page(after: after, limit: 10)
            #expect(page.total == 25)
            seen += page.entries.map(\.message.id)
            after = page.entries.count == 10 ? page.entries.last?.id : nil
            pages += 1
        } while after != nil && pages < 10
        #expect(seen == (0..<25).map { "m\($0)" })
        #expect(pages == 3)
        #expect(store.page(after: "zzz", limit: 10).entries.isEmpty, "after every id: nothing")
        #expect(store.remove(ids: nil) == 25 && store.page(after: nil, limit: 10).total == 0)
    }

    func sample(_ i: Int) -> Message {
        let properties: [KeyValue] = i == 0 ? [] : [KeyValue("mqtt.user.site", "plant \(i)"), KeyValue("é", "ü")]
        let deviceTime: Int64? = i == 1 ? nil : Int64(1000 + i)
        return Message(id: "id-\(i)", kind: .event, tenant: "tenant-\(i)", device: "a device with a long name \(i)",
                       topic: "devices/\(i)/events", contentType: "application/json", payload: Array("{\"i\":\(i)}".utf8),
                       deviceTime: deviceTime, receivedTime: 2000, qos: UInt8(i % 3), properties: properties,
                       metadata: [KeyValue("m", String(repeating: "x", count: 100 * i))])
    }

    @Test func cViewsOfABatchCarryEveryField() {
        let messages: [Message] = (0..<3).map(sample) + [Message()]
        let copies: [Message] = Message.withCMessages(messages) { views in (0..<views.count).map { Message(views.baseAddress! + $0) } }
        #expect(copies.count == messages.count)
        for (a, b) in zip(messages, copies) {
            #expect(a.id == b.id)
            #expect(a.kind == b.kind)
            #expect(a.tenant == b.tenant)
            #expect(a.device == b.device)
            #expect(a.topic == b.topic)
            #expect(a.contentType == b.contentType)
            #expect(a.payload == b.payload)
            #expect(a.deviceTime == b.deviceTime)
            #expect(a.receivedTime == b.receivedTime)
            #expect(a.qos == b.qos)
            #expect(a.properties == b.properties)
            #expect(a.metadata == b.metadata)
        }
    }

    /// Text read from the ABI: common long strings come back as the same literal, others are copied;
    /// either way the text is the bytes, and bad UTF-8 is repaired.
    @Test func textFromTheABIIsTheBytes() {
        func read(_ bytes: [UInt8]) -> String {
            bytes.withUnsafeBufferPointer { b in
                b.withMemoryRebound(to: CChar.self) { String(iotc_str(ptr: $0.baseAddress, len: $0.count)) }
            }
        }
        for text in ["application/json", "application/octet-stream", "coap.content_format", "application/jsox",
                     "application/json+x", "applicatio", "", "a/much/longer/topic/than/fifteen/bytes", "température/ü"] {
            #expect(read(Array(text.utf8)) == text)
        }
        #expect(read([0x61, 0x70, 0x70, 0x6C, 0x69, 0x63, 0x61, 0x74, 0x69, 0x6F, 0x6E, 0x2F, 0x6A, 0x73, 0x6F, 0xFF]) == "application/jso\u{FFFD}")
    }
}

@Suite struct RateLimiterTests {
    @Test func refillsAtItsRateUpToTheBurst() {
        final class Clock: @unchecked Sendable { var now = 100.0 }
        let clock = Clock()
        let limiter = RateLimiter(rate: 2, burst: 3) { clock.now }
        // The burst at once, then one every half second; keys do not share buckets.
        #expect((0..<3).allSatisfy { _ in limiter.take("a") == nil })
        let wait = limiter.take("a")
        #expect(wait != nil && abs(wait! - 0.5) < 1e-9)
        #expect(limiter.take("b") == nil)
        clock.now += 0.5
        #expect(limiter.take("a") == nil)
        #expect(limiter.take("a") != nil)
        // A long pause refills to the burst, not beyond.
        clock.now += 60
        #expect((0..<3).allSatisfy { _ in limiter.take("a") == nil })
        #expect(limiter.take("a") != nil)
    }
}
