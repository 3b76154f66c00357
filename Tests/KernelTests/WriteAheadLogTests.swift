import CIoTCPluginABI
import Foundation
import Testing
@testable import IoTCKernel
import IoTCPluginKit

@Suite struct WriteAheadLogTests {
    func message(_ n: Int) -> CanonicalMessage {
        CanonicalMessage(Message(id: "m\(n)", device: "d", topic: "t/\(n)", contentType: "application/json", payload: Array("{\"n\":\(n)}".utf8),
                                 properties: [KeyValue("mqtt.user.k", "v")]), receivedTime: 42)
    }

    func appendSync(_ wal: WriteAheadLog, _ m: CanonicalMessage) -> UInt64 {
        final class Outcome: @unchecked Sendable { var ok = false }
        let outcome = Outcome()
        let done = DispatchSemaphore(value: 0)
        let seq = wal.append(m) { ok in
            outcome.ok = ok
            done.signal()
        }
        done.wait()
        #expect(outcome.ok, "the write-ahead log failed to write message \(m.id)")
        return seq
    }

    @Test func returnsUnfinishedMessagesAfterARestart() throws {
        let dir = TempDir()
        let wal = try WriteAheadLog(directory: dir.url)
        #expect(try wal.open().isEmpty)
        let seqs = (0..<5).map { appendSync(wal, message($0)) }
        wal.markDone(seqs[1])
        wal.markDone(seqs[3])
        wal.close()

        let again = try WriteAheadLog(directory: dir.url)
        let pending = try again.open()
        #expect(pending.map(\.message.id) == ["m0", "m2", "m4"])
        #expect(pending[0].message.properties == [KeyValue("mqtt.user.k", "v")])
        #expect(pending[2].message.payloadBytes == Array(#"{"n":4}"#.utf8))
        for e in pending { again.markDone(e.sequence) }
        again.close()
        #expect(try WriteAheadLog(directory: dir.url).open().isEmpty)
    }

    /// Many senders at once: messages keep coming while commits are on their way to disk, so the writer
    /// lets groups grow (the commit delay). Every append is confirmed once, and all come back in order.
    @Test func confirmsEveryMessageFromManySendersAndKeepsThemInOrder() throws {
        let dir = TempDir()
        let wal = try WriteAheadLog(directory: dir.url)
        #expect(try wal.open().isEmpty)
        final class Tally: @unchecked Sendable {
            let lock = NSLock()
            var confirmed = 0, failed = 0
        }
        let tally = Tally()
        let senders = 8, each = 1_500
        let all = DispatchGroup()
        DispatchQueue.concurrentPerform(iterations: senders) { s in
            for i in 0..<each {
                all.enter()
                wal.append(message(s * each + i)) { ok in
                    tally.lock.withLock { if ok { tally.confirmed += 1 } else { tally.failed += 1 } }
                    all.leave()
                }
            }
        }
        #expect(all.wait(timeout: .now() + 60) == .success)
        #expect(tally.confirmed == senders * each && tally.failed == 0)
        wal.close()

        let again = try WriteAheadLog(directory: dir.url)
        let pending = try again.open()
        #expect(pending.count == senders * each)
        #expect(zip(pending, pending.dropFirst()).allSatisfy { $0.sequence < $1.sequence })
        #expect(Set(pending.map(\.message.id)).count == senders * each)
        again.close()
    }

    @Test func batchedDoneRecordsSurviveARestart() throws {
        let dir = TempDir()
        let wal = try WriteAheadLog(directory: dir.url)
        _ = try wal.open()
        let seqs = (0..<6).map { appendSync(wal, message($0)) }
        wal.markDone([seqs[0], seqs[2], seqs[5]])
        wal.markDone([seqs[4]])
        #expect(wal.liveCount == 2)
        wal.close()
        #expect(try WriteAheadLog(directory: dir.url).open().map(\.message.id) == ["m1", "m3"])
    }

    @Test func dropsFinishedSegmentsOldestFirstOnly() throws {
        let dir = TempDir()
        func segments() throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".log") }.sorted() }
        // About one message per segment: every commit rolls over to a new file.
        let wal = try WriteAheadLog(directory: dir.url, segmentLimit: 16)
        _ = try wal.open()
        let seqs = (0..<5).map { appendSync(wal, message($0)) }
        let before = try segments().count
        #expect(before >= 4, "only \(before) segments")
        // Later segments are all done, but the first still holds m0: nothing may go yet.
        wal.markDone(Array(seqs[1...]))
        #expect(try segments().count == before)
        wal.markDone(seqs[0])
        // Everything is done: only the current segment is left.
        #expect(try segments().count == 1)
        wal.close()
        #expect(try WriteAheadLog(directory: dir.url).open().isEmpty)
    }

    /// The disk fails (here the segment's descriptor is /dev/full, which fails every write with ENOSPC):
    /// the messages of the failed commit and those appended meanwhile are refused, not one completion
    /// waits for ever, the failure and the recovery are reported once each, and the log writes again
    /// (in a new segment, as /dev/full cannot be cut back), keeping what it confirmed before and after.
    @Test func aFailingDiskRefusesMessagesUntilItWritesAgain() throws {
        let dir = TempDir()
        final class Events: @unchecked Sendable {
            let lock = NSLock()
            var seen: [WriteAheadLog.Event] = []
        }
        let events = Events()
        let wal = try WriteAheadLog(directory: dir.url) { e in events.lock.withLock { events.seen.append(e) } }
        _ = try wal.open()
        _ = appendSync(wal, message(0))

        let full = open("/dev/full", O_WRONLY | O_CLOEXEC)
        try #require(full >= 0, "no /dev/full")
        let segment = wal.fd
        #expect(dup2(full, segment) == segment)
        close(full)
        final class Outcomes: @unchecked Sendable {
            let lock = NSLock()
            var refused = 0, confirmed = 0
        }
        let outcomes = Outcomes()
        let all = DispatchGroup()
        DispatchQueue.concurrentPerform(iterations: 4) { s in
            for i in 0..<50 {
                all.enter()
                wal.append(message(100 + s * 50 + i)) { ok in
                    outcomes.lock.withLock { if ok { outcomes.confirmed += 1 } else { outcomes.refused += 1 } }
                    all.leave()
                }
            }
        }
        #expect(all.wait(timeout: .now() + 30) == .success, "a completion never came")
        #expect(outcomes.refused >= 1 && outcomes.refused + outcomes.confirmed == 200)
        let failure = events.lock.withLock { events.seen.first }
        guard case .failed(let why)? = failure else { Issue.record("no failure reported: \(String(describing: failure))"); return }
        #expect(why.contains("No space left on device"), "\(why)")

        _ = appendSync(wal, message(1))
        #expect(events.lock.withLock { events.seen.count } == 2 && events.lock.withLock { events.seen.last } == .writesAgain)
        wal.close()
        let back = try WriteAheadLog(directory: dir.url).open().map(\.message.id)
        #expect(back.first == "m0" && back.last == "m1" && back.count == 2 + outcomes.confirmed, "\(back)")
    }

    @Test func ignoresATornRecordAtTheTail() throws {
        let dir = TempDir()
        let wal = try WriteAheadLog(directory: dir.url)
        _ = try wal.open()
        _ = appendSync(wal, message(1))
        _ = appendSync(wal, message(2))
        wal.close()
        let file = try #require(try FileManager.default.contentsOfDirectory(atPath: dir.path).first { $0.hasSuffix(".log") })
        let path = dir.url.appendingPathComponent(file).path
        var bytes = [UInt8](FileManager.default.contents(atPath: path)!)
        bytes.removeLast(5)  // a crash in the middle of the last write
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect(try WriteAheadLog(directory: dir.url).open().map(\.message.id) == ["m1"])
    }

    @Test func ignoresACorruptRecord() throws {
        let dir = TempDir()
        let wal = try WriteAheadLog(directory: dir.url)
        _ = try wal.open()
        _ = appendSync(wal, message(1))
        wal.close()
        let file = try #require(try FileManager.default.contentsOfDirectory(atPath: dir.path).first { $0.hasSuffix(".log") })
        let path = dir.url.appendingPathComponent(file).path
        var bytes = [UInt8](FileManager.default.contents(atPath: path)!)
        bytes[bytes.count - 3] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect(try WriteAheadLog(directory: dir.url).open().isEmpty)
    }
}

@Suite struct CRC32CTests {
    /// Bit by bit, as the definition reads: the reference the table-driven version must match.
    func reference(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes {
            c ^= UInt32(b)
            for _ in 0..<8 { c = c & 1 != 0 ? 0x82F6_3B78 ^ (c >> 1) : c >> 1 }
        }
        return c ^ 0xFFFF_FFFF
    }

    @Test func matchesTheStandardCheckValueAndTheDefinition() {
        // The check value of CRC-32C (Castagnoli) for "123456789" (RFC 3720, appendix B.4).
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8]()) == 0)
        var rng = SystemRandomNumberGenerator()
        for length in [1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000] {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            #expect(CRC32C.checksum(bytes) == reference(bytes), "length \(length)")
            #expect(CRC32C.checksum(bytes[1...]) == reference(Array(bytes[1...])), "slice of length \(length - 1)")
        }
    }

    /// The processor's instruction (where there is one) and the tables agree, at every length and
    /// alignment a record can have.
    @Test func theInstructionAndTheTablesAgree() throws {
        #if arch(x86_64) && os(Linux)
        // The instruction is used exactly where the processor has it: otherwise the comparison below
        // would compare the tables with themselves.
        let cpuinfo = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        let hasIt = cpuinfo.split(separator: "\n").contains { $0.hasPrefix("flags") && $0.split(separator: " ").contains("sse4_2") }
        #expect(CRC32C.hardware == hasIt)
        #endif
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<600).map { _ in UInt8.random(in: 0...255, using: &rng) }
        bytes.withUnsafeBytes { all in
            for start in 0..<9 {
                for length in 0...(all.count - start) {
                    let p = UnsafeRawBufferPointer(rebasing: all[start..<(start + length)])
                    if CRC32C.checksum(p) != CRC32C.software(p) {
                        Issue.record("start \(start), length \(length)")
                        return
                    }
                }
            }
        }
        #expect(CRC32C.software(UnsafeRawBufferPointer(start: nil, count: 0)) == 0)
    }
}

/// What the log tells once a message is on disk: a closure, a plugin's C callback with its context, or
/// a latch over several pipelines.
@Suite struct ArrivalTests {
    final class Told: @unchecked Sendable {
        private let lock = NSLock()
        private var results: [Int32] = []
        func add(_ r: Int32) { lock.withLock { results.append(r) } }
        var all: [Int32] { lock.withLock { results } }
    }

    @Test func tellsAPluginThroughItsCallbackAndContext() {
        let told = Told()
        let callback: iotc_submit_done_fn = { context, result in
            Unmanaged<Told>.fromOpaque(context!).takeUnretainedValue().add(result)
        }
        let context = Unmanaged.passUnretained(told).toOpaque()
        Arrival(plugin: callback, context: context)(true)
        Arrival(plugin: callback, context: context)(false)
        #expect(told.all == [IOTC_OK, IOTC_ERR_INTERNAL])
        withExtendedLifetime(told) {}
    }

    @Test func aLatchTellsOnceAllHaveArrivedAndFailsIfAnyFailed() {
        let told = Told()
        let done = Arrival { told.add($0 ? IOTC_OK : IOTC_ERR_INTERNAL) }
        let three = Arrival.all(3, then: done)
        three(true)
        three(true)
        #expect(told.all.isEmpty)
        three(true)
        #expect(told.all == [IOTC_OK])
        let two = Arrival.all(2, then: done)
        two(false)
        two(true)
        #expect(told.all == [IOTC_OK, IOTC_ERR_INTERNAL])
        Arrival.nobody(true)
        Arrival.all(1, then: done)(true)
        #expect(told.all == [IOTC_OK, IOTC_ERR_INTERNAL, IOTC_OK])
    }
}
