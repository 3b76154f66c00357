import Foundation

/// A named thread for a long-running loop, which can be joined with a deadline. The kernel's pipeline,
/// sink and write-ahead-log workers and plugins' own writers use it instead of polling for the end.
public final class WorkerThread: @unchecked Sendable {
    private let finished = DispatchSemaphore(value: 0)
    private let thread: Thread

    /// Starts `body` on a new thread. The name is what `top -H`, `ps -L` and debuggers show: Linux keeps
    /// its first 15 bytes (`osName`), so the part that tells threads apart should come first.
    public init(name: String, _ body: @escaping @Sendable () -> Void) {
        let done = finished
        let osName = Self.osName(name)
        // The thread lets go of `body` (and so of what it captured, often the loop's owner) before it
        // says it is done: Foundation's thread releases its block only after the block returns, a
        // moment after `join` did, so that a loop's owner could be freed then on this thread (a CoAP
        // source's socket was closed after its `stop` had returned, and a source restarted on the
        // same port could not bind it).
        let once = RunOnce(body)
        thread = Thread {
            #if os(Linux)
            // Foundation passes the whole name on, which Linux refuses past 15 bytes: the thread would
            // keep the name of the thread that made it. (`pthread_setname_np` is not imported here.)
            let fd = open("/proc/thread-self/comm", O_WRONLY)
            if fd >= 0 {
                _ = osName.withCString { write(fd, $0, strlen($0)) }
                close(fd)
            }
            #endif
            once.run()
            done.signal()
        }
        thread.name = name
        thread.start()
    }

    /// A body run once and dropped right after.
    private final class RunOnce: @unchecked Sendable {
        private var body: (@Sendable () -> Void)?
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
        func run() {
            body?()
            body = nil
        }
    }

    /// `name` cut to the 15 bytes a Linux thread name holds, at a character boundary.
    public static func osName(_ name: String) -> String {
        var bytes = 0
        let kept = name.unicodeScalars.prefix { bytes += $0.utf8.count; return bytes <= 15 }
        return String(String.UnicodeScalarView(kept))
    }

    /// Waits for the loop to return; false when `deadline` came first (nil: wait as long as it takes).
    @discardableResult
    public func join(until deadline: Date? = nil) -> Bool {
        guard let deadline else {
            finished.wait()
            finished.signal()
            return true
        }
        guard finished.wait(timeout: .now() + max(0, deadline.timeIntervalSinceNow)) == .success else { return false }
        finished.signal()  // later joins return at once
        return true
    }
}
