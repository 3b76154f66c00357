import Foundation
import IoTCPluginKit

#if canImport(Glibc)
import Glibc
#endif

/// A durable pipeline's write-ahead log. A message is appended (and fsync'd, in groups) before the
/// device is acknowledged; a "done" record follows once every sink has settled it. On open, messages
/// without a done record are returned for replay, and a torn record at the tail is ignored.
///
/// Record: `[u32 length][u32 crc32c][u8 type][u64 sequence][body]`, little-endian. The body of a message
/// record is the encoded message; a done-batch record's body is further u64 sequences.
///
/// A commit that fails (a full disk, an I/O error) fails its messages' completions and leaves nothing
/// of itself in the file: the segment is cut back to its last commit, or, where that is not possible,
/// the log goes on in a new segment. Each later commit tries the disk again, so the log writes again
/// as soon as the disk takes it. `report` hears of the first failure and of the first commit after it.
public final class WriteAheadLog: @unchecked Sendable {
    /// What the writer tells of the disk: a commit failed (with why) after commits that worked, or the
    /// first commit after failures worked.
    public enum Event: Sendable, Equatable {
        case failed(String)
        case writesAgain
    }

    public struct Entry: Sendable {
        public let sequence: UInt64
        public let message: CanonicalMessage
    }

    enum RecordType: UInt8 { case message = 1, done = 2, doneBatch = 3 }

    /// Longest a done record waits for a commit to carry it.
    static let doneFlushInterval = 0.1
    /// Commit delay: when at least `busyGroup` messages came while the last commit was on its way to
    /// disk (so they come whether or not commits finish: many senders), the writer lets the next group
    /// grow before it commits, so that one `fdatasync` (which costs about the same whatever it
    /// carries) covers more messages. It waits in steps of `commitDelayStep` microseconds while
    /// messages keep coming, at most `commitDelayLimit`; a step in which none came ends the wait.
    /// Senders that wait for each commit before sending more (one client with a window) bring
    /// nothing during a commit, and are never held.
    static let commitDelayStep: UInt32 = 100
    static let commitDelayLimit: UInt32 = 2000
    static let busyGroup = 32

    /// Segments roll over past this size.
    let segmentLimit: Int

    private let directory: URL
    private let wake = NSCondition()
    private var pending: [UInt8] = []
    private var pendingCompletions: [Arrival] = []
    private var nextSequence: UInt64 = 1
    /// The current segment's descriptor (a test puts a failing device in its place).
    private(set) var fd: Int32 = -1
    private var segmentSize = 0
    private var segmentFirst: UInt64 = 1
    /// Live (not done) messages per segment, by the segment's first sequence. Sequences only grow, so
    /// a message's segment is the last one that starts at or before its sequence.
    private var live: [UInt64: Int] = [:]
    private var segmentStarts: [UInt64] = []
    private var liveTotal = 0
    private var closed = false
    private var writer: WorkerThread?
    /// Whether the last commit failed: the first failure and the first commit after failures are reported.
    private let trouble = FailureNotice()
    private let report: @Sendable (Event) -> Void

    /// Opens the log in `directory`, returning the messages that were never completed.
    public init(directory: URL, segmentLimit: Int = 32 << 20, report: @escaping @Sendable (Event) -> Void = { _ in }) throws {
        self.directory = directory
        self.segmentLimit = segmentLimit
        self.report = report
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    /// Reads what the last run left and starts a fresh segment holding the unfinished messages.
    public func open() throws -> [Entry] {
        let segments = try FileManager.default.contentsOfDirectory(atPath: directory.path)
            .filter { $0.hasPrefix("wal-") && $0.hasSuffix(".log") }.sorted()
        var messages: [(UInt64, CanonicalMessage)] = []
        var done = Set<UInt64>()
        var maxSequence: UInt64 = 0
        for name in segments {
            guard let data = FileManager.default.contents(atPath: directory.appendingPathComponent(name).path) else { continue }
            let b = [UInt8](data)
            var i = 0
            while b.count - i >= 8 {
                let length = Int(UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24)
                let crc = UInt32(b[i + 4]) | UInt32(b[i + 5]) << 8 | UInt32(b[i + 6]) << 16 | UInt32(b[i + 7]) << 24
                guard length >= 9, b.count - i - 8 >= length else { break }
                let body = b[(i + 8)..<(i + 8 + length)]
                guard CRC32C.checksum(body) == crc else { break }
                var seq: UInt64 = 0
                for k in 0..<8 { seq |= UInt64(body[body.startIndex + 1 + k]) << (8 * UInt64(k)) }
                maxSequence = max(maxSequence, seq)
                switch RecordType(rawValue: body[body.startIndex]) {
                case .message: if let m = MessageCodec.decode(body[(body.startIndex + 9)...]) { messages.append((seq, m)) }
                case .done: done.insert(seq)
                case .doneBatch:
                    done.insert(seq)
                    var k = body.startIndex + 9
                    while k + 8 <= body.endIndex {
                        var more: UInt64 = 0
                        for j in 0..<8 { more |= UInt64(body[k + j]) << (8 * UInt64(j)) }
                        done.insert(more)
                        k += 8
                    }
                case nil: break
                }
                i += 8 + length
            }
        }
        nextSequence = maxSequence + 1
        segmentFirst = nextSequence
        segmentStarts = [segmentFirst]
        try openSegment()
        var entries: [Entry] = []
        for (oldSequence, m) in messages where !done.contains(oldSequence) {
            let seq = nextSequence
            nextSequence += 1
            appendRecord(.message, seq, m)
            live[segmentFirst, default: 0] += 1
            liveTotal += 1
            entries.append(Entry(sequence: seq, message: m))
        }
        try flushPending()
        for name in segments where name != segmentName(segmentFirst) {
            try? FileManager.default.removeItem(at: directory.appendingPathComponent(name))
        }
        writer = WorkerThread(name: "wal-\(directory.lastPathComponent)") { [weak self] in self?.writeLoop() }
        return entries
    }

    /// Appends a message; `completion(true)` runs once it is on disk. Returns its sequence number.
    @discardableResult
    public func append(_ message: CanonicalMessage, completion: @escaping @Sendable (Bool) -> Void) -> UInt64 {
        append(message, completion: Arrival(completion))
    }

    @discardableResult
    func append(_ message: CanonicalMessage, completion: Arrival) -> UInt64 {
        wake.lock()
        defer { wake.unlock() }
        if closed {
            completion(false)
            return 0
        }
        let seq = nextSequence
        nextSequence += 1
        appendRecord(.message, seq, message)
        live[segmentFirst, default: 0] += 1
        liveTotal += 1
        pendingCompletions.append(completion)
        wake.signal()
        return seq
    }

    /// Records that every sink has settled a message.
    public func markDone(_ sequence: UInt64) { markDone(CollectionOfOne(sequence)) }

    /// Records that every sink has settled these messages, in one record.
    public func markDone(_ sequences: some Collection<UInt64>) {
        guard let first = sequences.first else { return }
        wake.lock()
        defer { wake.unlock() }
        guard !closed else { return }
        if sequences.count == 1 {
            appendRecord(.done, first, nil)
        } else {
            appendRecord(.doneBatch, first, nil, more: sequences.dropFirst())
        }
        for seq in sequences {
            guard let segment = segmentStarts.last(where: { $0 <= seq }) else { continue }
            liveTotal -= 1
            live[segment, default: 1] -= 1
        }
        dropFinishedSegments()
        // No wake-up: done records need no sync and ride along with the next commit, or go out within
        // `doneFlushInterval` (a done record lost to a crash only means a message is delivered again).
    }

    /// Messages appended and not yet done.
    public var liveCount: Int {
        wake.lock()
        defer { wake.unlock() }
        return liveTotal
    }

    /// Writes what is pending and stops the writer.
    public func close() {
        wake.lock()
        closed = true
        wake.signal()
        wake.unlock()
        writer?.join()
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// Deletes the oldest segments whose messages are all done, oldest first and never the current one.
    /// In order, because records appended while a segment rolls over land in the next file: a segment
    /// goes only once everything before it has gone. Must hold `wake`.
    private func dropFinishedSegments() {
        while let first = segmentStarts.first, first != segmentFirst, (live[first] ?? 0) <= 0 {
            segmentStarts.removeFirst()
            live[first] = nil
            try? FileManager.default.removeItem(at: directory.appendingPathComponent(segmentName(first)))
        }
    }

    private func segmentName(_ first: UInt64) -> String { String(format: "wal-%020llu.log", first) }

    private func openSegment() throws {
        if fd >= 0 { Glibc.close(fd) }
        let path = directory.appendingPathComponent(segmentName(segmentFirst)).path
        fd = Glibc.open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw HubError("cannot open \(path): \(FileIO.errorText())") }
        segmentSize = 0
        // Make the new file's directory entry durable too.
        let dfd = Glibc.open(directory.path, O_RDONLY | O_DIRECTORY)
        if dfd >= 0 { fsync(dfd); Glibc.close(dfd) }
    }

    private func appendRecord(_ type: RecordType, _ seq: UInt64, _ m: CanonicalMessage?, more: some Collection<UInt64> = EmptyCollection()) {
        let start = pending.count
        pending.append(contentsOf: repeatElement(0, count: 8))  // length and checksum, filled in below
        pending.append(type.rawValue)
        withUnsafeBytes(of: seq.littleEndian) { pending.append(contentsOf: $0) }
        if let m { MessageCodec.encode(m, into: &pending) }
        for s in more { withUnsafeBytes(of: s.littleEndian) { pending.append(contentsOf: $0) } }
        let length = UInt32(pending.count - start - 8)
        let crc = CRC32C.checksum(pending[(start + 8)...])
        for k in 0..<4 {
            pending[start + k] = UInt8(truncatingIfNeeded: length >> (8 * UInt32(k)))
            pending[start + 4 + k] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(k)))
        }
    }

    /// Writes `bytes` to the current segment; `sync` makes them durable. Called by the writer thread
    /// without the lock held (and by `open` before the writer starts).
    private func write(_ bytes: [UInt8], sync: Bool) throws {
        if fd < 0 { try openSegment() }  // a segment that could not be opened after a failure
        if let failed = FileIO.writeAll(fd, bytes) { throw HubError("write failed: \(failed)") }
        if sync, fdatasync(fd) != 0 { throw HubError("fdatasync failed: \(FileIO.errorText())") }
    }

    /// Must hold `wake`; used only before the writer thread starts.
    private func flushPending() throws {
        guard !pending.isEmpty else { return }
        try write(pending, sync: true)
        segmentSize += pending.count
        pending.removeAll(keepingCapacity: true)
    }

    /// Leaves nothing of a failed commit in the log: the segment is cut back to its last commit, so that
    /// a torn record does not end the segment for the records after it; where it cannot be cut, the log
    /// goes on in a new segment. The writer thread, holding `wake`.
    private func discardFailedCommit() {
        if fd >= 0, ftruncate(fd, off_t(segmentSize)) == 0 { return }
        startSegment()
    }

    /// Goes on in a new segment, named after the next sequence. When it cannot be opened, the next
    /// commit tries again. The writer thread, holding `wake`.
    private func startSegment() {
        if segmentStarts.last != nextSequence {
            segmentFirst = nextSequence
            segmentStarts.append(segmentFirst)
        }
        try? openSegment()
        dropFinishedSegments()
    }

    private func writeLoop() {
        var spare: [UInt8] = []
        var spareCompletions: [Arrival] = []
        var cameDuringCommit = 0
        wake.lock()
        while true {
            // Sleep until a message needs committing; done records alone wait up to doneFlushInterval.
            while pendingCompletions.isEmpty && !closed {
                if pending.isEmpty { wake.wait() } else if !wake.wait(until: Date().addingTimeInterval(Self.doneFlushInterval)) { break }
            }
            if pending.isEmpty && closed { break }
            if pending.isEmpty && pendingCompletions.isEmpty { continue }
            if cameDuringCommit >= Self.busyGroup {
                var waited: UInt32 = 0
                var seen = pendingCompletions.count
                while waited < Self.commitDelayLimit && !closed {
                    wake.unlock()
                    usleep(Self.commitDelayStep)
                    wake.lock()
                    waited += Self.commitDelayStep
                    if pendingCompletions.count == seen { break }
                    seen = pendingCompletions.count
                }
            }
            // Group commit: everything appended meanwhile goes to disk with one fdatasync, written
            // without the lock so that appends go on while the disk works. Done records alone need no sync.
            // Two buffers of each kind trade places, each kept uniquely referenced so that appends reuse
            // its capacity (a shared one would be copied, then grown again from empty, on every batch).
            var completions: [Arrival] = []
            swap(&completions, &pendingCompletions)
            swap(&pendingCompletions, &spareCompletions)
            var batch: [UInt8] = []
            swap(&batch, &pending)
            swap(&pending, &spare)
            wake.unlock()
            var ok = true
            var error: String?
            do {
                try write(batch, sync: !completions.isEmpty)
            } catch let e {
                ok = false
                error = "\(e)"
            }
            wake.lock()
            cameDuringCommit = completions.isEmpty ? 0 : pendingCompletions.count
            var event: Event?
            if let error {
                // What was appended meanwhile stays pending and tries the disk at the next commit.
                discardFailedCommit()
                if trouble.failed() { event = .failed(error) }
            } else {
                if trouble.worked() { event = .writesAgain }
                segmentSize += batch.count
                if segmentSize > segmentLimit { startSegment() }
            }
            batch.removeAll(keepingCapacity: true)
            swap(&spare, &batch)
            wake.unlock()
            if let event { report(event) }
            for c in completions { c(ok) }
            completions.removeAll(keepingCapacity: true)
            wake.lock()
            swap(&spareCompletions, &completions)
        }
        wake.unlock()
    }
}
