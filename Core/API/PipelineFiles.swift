import Foundation
import IoTCKernel
import IoTCPluginKit
import Logging

/// The pipeline files the hub runs: reloaded on SIGHUP and through the API, checked and replaced
/// through the API. A file is replaced only when the whole set, with its new text, is valid; the
/// running configuration is never left half applied.
public final class PipelineFiles: Sendable {
    let hub: Hub
    let loader: HubConfigLoader
    public let files: [String]
    public let logger: Logger
    private let writing = NSLock()

    public init(hub: Hub, loader: HubConfigLoader, files: [String], logger: Logger) {
        self.hub = hub
        self.loader = loader
        self.files = files
        self.logger = logger
    }

    /// The file a name (its last path component, as the API shows it) stands for.
    public func file(named name: String) -> String? { files.first { ($0 as NSString).lastPathComponent == name } }

    /// Re-reads the files and applies them; returns the problems when they are not valid.
    public func reload() async -> [Diagnostic]? {
        do {
            let (config, warnings) = try loader.load(files: files)
            for w in warnings { logger.warning("\(w)") }
            try await Self.onOwnThread { [hub] in try hub.reload(config) }
            logger.info("reloaded \(files.joined(separator: ", ")): \(config.pipelines.count) pipelines")
            return nil
        } catch let e as ConfigurationError {
            for d in e.diagnostics { logger.error("\(d)") }
            logger.error("reload refused: the running configuration is unchanged")
            return e.diagnostics
        } catch {
            logger.error("reload failed: \(error)")
            return [Diagnostic(at: .init(file: files.first ?? "", line: 1, column: 1), "\(error)")]
        }
    }

    /// Runs blocking work on a thread of its own. A reload waits for the sinks it retires (up to 30 s
    /// for one whose endpoint does not answer) and for a reload under way: on the async tasks' pool,
    /// one thread per core, two reloads at once held every thread and the API answered nothing.
    static func onOwnThread(_ work: @escaping @Sendable () throws -> Void) async throws {
        try await withCheckedThrowingContinuation { (done: CheckedContinuation<Void, any Error>) in
            _ = WorkerThread(name: "reload") { done.resume(with: Result { try work() }) }
        }
    }

    /// Checks the files as they would be with `text` in place of `file`: (errors, warnings).
    public func validate(replacing file: String, with text: String) -> (errors: [Diagnostic], warnings: [Diagnostic]) {
        var texts: [(file: String, text: String)] = []
        for f in files {
            if f == file { texts.append((f, text)); continue }
            guard let data = FileManager.default.contents(atPath: f), let t = String(data: data, encoding: .utf8) else {
                return ([Diagnostic(at: .init(file: f, line: 1, column: 1), "cannot read file")], [])
            }
            texts.append((f, t))
        }
        do {
            let (_, warnings) = try loader.load(texts: texts)
            return ([], warnings)
        } catch {
            return (error.diagnostics.filter { $0.severity == .error }, error.diagnostics.filter { $0.severity == .warning })
        }
    }

    /// Replaces `file` with `text` when the set stays valid (the old text kept as `FILE.bak`), then
    /// applies it. Returns the problems, or nil when it was applied.
    public func apply(replacing file: String, with text: String) async -> [Diagnostic]? {
        if let problems = write(file, text) { return problems }
        return await reload()
    }

    /// Checks and writes one replacement at a time: two at once would each be checked against the
    /// files as they were (together they may not be valid), and would write the same temporary file.
    private func write(_ file: String, _ text: String) -> [Diagnostic]? {
        writing.withLock { writeNow(file, text) }
    }

    private func writeNow(_ file: String, _ text: String) -> [Diagnostic]? {
        let (errors, _) = validate(replacing: file, with: text)
        guard errors.isEmpty else { return errors }
        do {
            let temporary = file + ".new"
            try Data(text.utf8).write(to: URL(fileURLWithPath: temporary))
            if FileManager.default.fileExists(atPath: file) {
                try? FileManager.default.removeItem(atPath: file + ".bak")
                try FileManager.default.copyItem(atPath: file, toPath: file + ".bak")
            }
            guard rename(temporary, file) == 0 else { throw CocoaError(.fileWriteUnknown) }
        } catch {
            return [Diagnostic(at: .init(file: file, line: 1, column: 1), "cannot write the file: \(error)")]
        }
        return nil
    }
}
