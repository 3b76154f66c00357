import Foundation
import IoTCPluginKit
import Metrics

/// Messages that could not be delivered (retries exhausted, rejected by a sink) or processed (a step
/// failed): one JSON file each in the data directory, so they can be listed, replayed and purged. The
/// store is bounded in entries and in bytes: past `maxEntries` or `maxBytes` the oldest are removed down
/// to nine tenths of both, so that a stream of messages that keep failing cannot fill the disk (a
/// hundred thousand entries of 1 MB messages were 100 GB).
public final class DeadLetterStore: @unchecked Sendable {
    public struct Entry: Sendable {
        public var id: String
        public var createdAt: Int64
        public var pipeline: String
        /// The sink that gave up, or nil when a step failed.
        public var sink: String?
        /// The step that failed, or nil when delivery failed.
        public var step: String?
        public var reason: String
        public var attempts: Int
        public var message: CanonicalMessage
    }

    public let directory: URL
    /// Most entries kept.
    public let maxEntries: Int
    public static let defaultMaxEntries = 100_000
    /// Most bytes of entry files kept.
    public let maxBytes: Int
    public static let defaultMaxBytes = 1 << 30
    private let lock = NSLock()
    private var counter = 0
    /// Entries in the folder, and their bytes, as this store last counted them (`iotc dlq` may change
    /// the folder too).
    private var count: Int, bytes: Int
    /// One eviction at a time.
    private let evicting = NSLock()
    private let evictedCounter = Counter(label: "iotc_dead_letters_evicted_total")
    /// Told how many of the oldest entries were removed to make room.
    private let evicted: (@Sendable (Int) -> Void)?

    public init(directory: URL, maxEntries: Int = DeadLetterStore.defaultMaxEntries, maxBytes: Int = DeadLetterStore.defaultMaxBytes,
                evicted: (@Sendable (Int) -> Void)? = nil) throws {
        self.directory = directory
        self.maxEntries = max(1, maxEntries)
        self.maxBytes = max(1, maxBytes)
        self.evicted = evicted
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let names = Self.names(in: directory)
        count = names.count
        bytes = names.reduce(0) { $0 + Self.size(directory.path + "/" + $1) }
    }

    /// A file's size, 0 when it is gone.
    private static func size(_ path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_size) : 0
    }

    /// The entries' file names, oldest first (an id starts with its time and a sequence number).
    private static func names(in directory: URL) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? [])
            .filter { $0.hasSuffix(".json") && !$0.hasPrefix(".") }.sorted()
    }

    /// Stores an entry (written to a temporary file and renamed, so a crash leaves no half entry).
    @discardableResult
    public func add(pipeline: String, sink: String?, step: String?, reason: String, attempts: Int, message: CanonicalMessage) throws -> String {
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let id: String = lock.withLock {
            counter += 1
            return String(format: "%013lld-%06d-%04x", now, counter % 1_000_000, UInt16.random(in: 0...UInt16.max))
        }
        let entry = Entry(id: id, createdAt: now, pipeline: pipeline, sink: sink, step: step, reason: reason, attempts: attempts, message: message)
        // Plain system calls: this runs on a pipeline's thread for each message that fails.
        let encoded = JSON.encode(Self.value(entry))
        if let failed = FileIO.replace(directory.path + "/\(id).json", with: encoded) { throw HubError(failed) }
        let full = lock.withLock { () -> Bool in
            count += 1
            bytes += encoded.count
            return count > maxEntries || bytes > maxBytes
        }
        if full { evictOldest() }
        return id
    }

    /// Removes the oldest entries down to nine tenths of `maxEntries` and of `maxBytes`, so that the
    /// folder is listed once per tenth of a bound rather than once per entry.
    private func evictOldest() {
        evicting.lock()
        defer { evicting.unlock() }
        let all = Self.names(in: directory)
        let folder = directory.path + "/"
        let sizes = all.map { Self.size(folder + $0) }
        var left = all.count, leftBytes = sizes.reduce(0, +)
        let keep = maxEntries - maxEntries / 10, keepBytes = maxBytes - maxBytes / 10
        var removed = 0
        if left > maxEntries || leftBytes > maxBytes {
            for (name, size) in zip(all, sizes) where left > keep || leftBytes > keepBytes {
                left -= 1
                leftBytes -= size
                if unlink(folder + name) == 0 { removed += 1 }
            }
        }
        lock.withLock { (count, bytes) = (left, leftBytes) }
        guard removed > 0 else { return }
        evictedCounter.increment(by: Int64(removed))
        evicted?(removed)
    }

    /// Every entry, oldest first.
    public func list() -> [Entry] { page(after: nil, limit: .max).entries }

    /// Up to `limit` entries, oldest first, from the one after the id `after` (nil: the first), and
    /// how many there are in all. Only the entries returned are read.
    public func page(after: String?, limit: Int) -> (total: Int, entries: [Entry]) {
        let all = Self.names(in: directory)
        let start = after.map { a in all.firstIndex { $0 > a + ".json" } ?? all.endIndex } ?? all.startIndex
        let entries = all[start...].prefix(max(0, limit)).compactMap { entry(id: String($0.dropLast(5))) }
        return (all.count, entries)
    }

    public func entry(id: String) -> Entry? {
        guard !id.contains("/"), let data = FileManager.default.contents(atPath: directory.appendingPathComponent("\(id).json").path),
              let v = try? JSON.decode([UInt8](data))
        else { return nil }
        return Self.entry(v)
    }

    /// Removes entries; nil removes all. Returns how many were removed.
    @discardableResult
    public func remove(ids: [String]?) -> Int {
        let targets = ids ?? Self.names(in: directory).map { String($0.dropLast(5)) }
        let folder = directory.path + "/"
        var n = 0, freed = 0
        for id in targets where !id.contains("/") {
            let size = Self.size(folder + id + ".json")
            if unlink(folder + id + ".json") == 0 {
                n += 1
                freed += size
            }
        }
        lock.withLock {
            count = max(0, count - n)
            bytes = max(0, bytes - freed)
        }
        return n
    }

    static func value(_ e: Entry) -> Value {
        var o = Value.Object()
        o["id"] = .string(e.id)
        o["created_at"] = .string(RFC3339.format(e.createdAt))
        o["pipeline"] = .string(e.pipeline)
        o["sink"] = e.sink.map { .string($0) } ?? .null
        o["step"] = e.step.map { .string($0) } ?? .null
        o["reason"] = .string(e.reason)
        o["attempts"] = .int(Int64(e.attempts))
        o["message"] = messageValue(e.message)
        return .object(o)
    }

    /// A message as JSON: the envelope, with the payload inline when it is JSON and base64 otherwise.
    public static func messageValue(_ m: CanonicalMessage) -> Value {
        var o = Value.Object()
        o["id"] = .string(m.id)
        o["kind"] = .string(m.kind.name)
        o["tenant"] = .string(m.tenant)
        o["device"] = .string(m.device)
        o["topic"] = .string(m.topic)
        o["content_type"] = .string(m.contentType)
        o["received_at"] = .int(m.receivedTime)
        o["device_time"] = m.deviceTime.map { .int($0) } ?? .null
        o["qos"] = .int(Int64(m.qos))
        o["payload_base64"] = .string(Base64.encode(m.payloadBytes))
        o["properties"] = .object(Value.Object(m.properties.map { ($0.key, .string($0.value)) }))
        o["metadata"] = .object(Value.Object(m.metadata.map { ($0.key, .string($0.value)) }))
        return .object(o)
    }

    static func message(_ v: Value) -> CanonicalMessage? {
        guard case .object(let o) = v, case .string(let b64)? = o["payload_base64"], let payload = Base64.decode(b64) else { return nil }
        func s(_ k: String) -> String { if case .string(let x)? = o[k] { x } else { "" } }
        func pairs(_ k: String) -> [KeyValue] {
            guard case .object(let p)? = o[k] else { return [] }
            return p.compactMap { k, v in if case .string(let s) = v { KeyValue(k, s) } else { nil } }
        }
        let received: Int64 = if case .int(let r)? = o["received_at"] { r } else { 0 }
        let deviceTime: Int64? = if case .int(let r)? = o["device_time"] { r } else { nil }
        let qos: UInt8 = if case .int(let q)? = o["qos"] { UInt8(clamping: q) } else { 1 }
        let m = Message(id: s("id"), kind: MessageKind(name: s("kind")) ?? .telemetry, tenant: s("tenant"), device: s("device"),
                        topic: s("topic"), contentType: s("content_type"), payload: payload, deviceTime: deviceTime,
                        receivedTime: received, qos: qos, properties: pairs("properties"), metadata: pairs("metadata"))
        return CanonicalMessage(m, receivedTime: received)
    }

    static func entry(_ v: Value) -> Entry? {
        guard case .object(let o) = v, case .string(let id)? = o["id"], let m = o["message"].flatMap(message) else { return nil }
        func s(_ k: String) -> String? { if case .string(let x)? = o[k] { x } else { nil } }
        let attempts: Int = if case .int(let a)? = o["attempts"] { Int(a) } else { 0 }
        return Entry(id: id, createdAt: s("created_at").flatMap(RFC3339.parse) ?? 0, pipeline: s("pipeline") ?? "",
                     sink: s("sink"), step: s("step"), reason: s("reason") ?? "", attempts: attempts, message: m)
    }

    /// The JSON form of an entry, as `iotc dlq list` and the API show it.
    public static func json(_ e: Entry) -> Value { value(e) }
}
