import Foundation
import IoTCPluginKit

#if canImport(Glibc)
import Glibc
#endif

@_cdecl("iotc_plugin_entry") public func iotcPluginEntry(_ v: UnsafePointer<UInt32>?, _ n: Int) -> UnsafeRawPointer? {
    Plugin.entry(name: "file", version: "0.1.0", description: "Writes messages to local files as JSON lines.", components: [FileSink.self], offered: v, count: n)
}

/// Appends messages to a file, one JSON object per line, rotating by size. A message is acknowledged
/// once it is written (and, with `sync: every_batch`, on disk).
final class FileSink: Sink, @unchecked Sendable {
    struct Config: Decodable {
        var path: String
        var format: String
        var max_size: Int64
        var max_files: Int
        var sync: String
    }

    static let name = "file"
    static let summary = "Appends messages to a file as JSON lines, with size-based rotation."
    static let description = """
        Each line is one message. With `format: envelope` (the default) a line holds the envelope (id, times, \
        tenant, device, kind, topic, content type, metadata) and the payload, inline when it is JSON and as \
        `payload_base64` otherwise; with `format: payload` a line holds the payload alone. When the file \
        passes `max_size` it is renamed to `PATH.1` (older ones shift up to `PATH.<max_files>`) and a new \
        file is started. A message is acknowledged once its batch is written: with `sync: none` (the \
        default) each batch the hub hands over is appended at once, on the hub's delivery thread; with \
        `sync: every_batch` a writer thread appends what has gathered and flushes it to disk first.
        """
    static let fields: [ConfigField] = [
        ConfigField("path", .string, "File to append to; its folder is created if missing.", example: "/var/lib/iotc/telemetry.jsonl", required: true),
        ConfigField("format", .string, "What a line holds.", default: #""envelope""#, options: ["envelope", "payload"]),
        ConfigField("max_size", .byteSize, "Size at which the file is rotated.", default: "67108864", example: "64MiB"),
        ConfigField("max_files", .int, "Rotated files kept besides the current one.", default: "5"),
        ConfigField("sync", .string, "Whether to fsync each batch before acknowledging it.", default: #""none""#, options: ["none", "every_batch"]),
    ]

    private let config: Config
    private let host: PluginHost
    private let cond = NSCondition()
    private var buffer: [UInt8] = []
    private var tokens: [UInt64] = []
    private var stopping = false
    private var writer: WorkerThread?
    private var fd: Int32 = -1
    private var size: Int64 = 0

    init(config: Config, host: PluginHost) throws {
        guard config.max_size > 0 else { throw PluginError("max_size must be positive") }
        guard config.max_files >= 0 else { throw PluginError("max_files cannot be negative") }
        self.config = config
        self.host = host
    }

    func start() throws {
        let dir = (config.path as NSString).deletingLastPathComponent
        if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        try openFile()
        // Without sync, a batch is appended on the caller's thread: an append to the page cache costs
        // less than handing the batch to another thread and waking it. `fdatasync` can take
        // milliseconds, so with sync a writer thread does it while the hub goes on.
        if config.sync == "every_batch" {
            writer = WorkerThread(name: "fsync-\((config.path as NSString).lastPathComponent)") { [self] in run() }
        }
    }

    private func openFile() throws {
        fd = open(config.path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw PluginError("cannot open \(config.path): \(FileIO.errorText())") }
        var st = stat()
        fstat(fd, &st)
        size = Int64(st.st_size)
    }

    func write(_ message: Message, ack: Ack) -> Bool { write([message], acks: [ack]) == 1 }

    func write(_ messages: [Message], acks: [Ack]) -> Int {
        cond.lock()
        if stopping {
            cond.unlock()
            return 0
        }
        guard writer != nil else {
            // Written here and now (the hub hands a sink one batch at a time).
            buffer.removeAll(keepingCapacity: true)
            encode(messages, into: &buffer)
            let error = flush(buffer)
            cond.unlock()
            host.ack(acks.map(\.token), error.map { .retry($0) } ?? .success)
            return messages.count
        }
        let wasEmpty = buffer.isEmpty
        encode(messages, into: &buffer)
        for ack in acks { tokens.append(ack.token) }
        // The writer only waits while the buffer is empty.
        if wasEmpty { cond.signal() }
        cond.unlock()
        return messages.count
    }

    private func encode(_ messages: [Message], into out: inout [UInt8]) {
        for message in messages {
            if config.format == "payload" {
                out.append(contentsOf: message.payload.filter { $0 != 0x0A })
            } else {
                EnvelopeJSON.encode(message, into: &out)
            }
            out.append(0x0A)
        }
    }

    private func run() {
        var out: [UInt8] = []
        var done: [UInt64] = []
        cond.lock()
        while true {
            while buffer.isEmpty && !stopping { cond.wait() }
            if buffer.isEmpty && stopping { break }
            swap(&out, &buffer)
            swap(&done, &tokens)
            cond.unlock()
            let error = flush(out)
            host.ack(done, error.map { .retry($0) } ?? .success)
            out.removeAll(keepingCapacity: true)
            done.removeAll(keepingCapacity: true)
            cond.lock()
        }
        cond.unlock()
    }

    /// Writes a batch; returns an error text on failure.
    private func flush(_ bytes: [UInt8]) -> String? {
        if fd < 0 {
            do { try openFile() } catch { return "\(error)" }
        }
        if let failed = FileIO.writeAll(fd, bytes) { return "write to \(config.path) failed: \(failed)" }
        if config.sync == "every_batch", fdatasync(fd) != 0 {
            return "fdatasync of \(config.path) failed: \(FileIO.errorText())"
        }
        size += Int64(bytes.count)
        if size >= config.max_size { rotate() }
        return nil
    }

    private func rotate() {
        close(fd)
        fd = -1
        let fm = FileManager.default
        if config.max_files == 0 {
            try? fm.removeItem(atPath: config.path)
        } else {
            // Shift only the rotated files there are (PATH.1 up to the first missing one), so that the
            // work follows the files kept, not `max_files` (which may be any count).
            var last = 0
            while last < config.max_files, fm.fileExists(atPath: "\(config.path).\(last + 1)") { last += 1 }
            if last == config.max_files {
                try? fm.removeItem(atPath: "\(config.path).\(last)")
                last -= 1
            }
            for i in stride(from: last, through: 1, by: -1) {
                try? fm.moveItem(atPath: "\(config.path).\(i)", toPath: "\(config.path).\(i + 1)")
            }
            try? fm.moveItem(atPath: config.path, toPath: "\(config.path).1")
        }
        do { try openFile() } catch { host.log(.error, "\(error)") }
    }

    func stop() {
        cond.lock()
        stopping = true
        cond.signal()
        cond.unlock()
        writer?.join()
        if fd >= 0 { close(fd) }
        fd = -1
    }
}
