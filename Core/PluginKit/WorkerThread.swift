import Foundation

/// A named thread for a long-running loop, which can be joined with a deadline. The kernel's pipeline,
/// sink and write-ahead-log workers and plugins' own writers use it instead of polling for the end.
public final class WorkerThread: @unchecked Sendable {
    private let finished = DispatchSemaphore(value: 0)
    private let thread: Thread

    /// Starts `body` on a new thread.
    public init(name: String, _ body: @escaping @Sendable () -> Void) {
        let done = finished
        thread = Thread {
            body()
            done.signal()
        }
        thread.name = name
        thread.start()
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
