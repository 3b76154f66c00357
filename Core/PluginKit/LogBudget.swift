import Foundation
import Synchronization

/// At most `perSecond` log lines a second, with a burst of `burst`, for lines an outsider can cause
/// (failed logins): a client hammering wrong credentials does not flood the log. Lines held back are
/// counted, and the next line let through says how many.
public final class LogBudget: Sendable {
    private let perSecond: Double
    private let burst: Double
    private let state: Mutex<(tokens: Double, at: UInt64, held: Int)>

    public init(perSecond: Double = 1, burst: Double = 5) {
        self.perSecond = perSecond
        self.burst = burst
        state = Mutex((burst, DispatchTime.now().uptimeNanoseconds, 0))
    }

    /// Whether to log a line now: the number of lines held back since the last one let through, or nil
    /// to hold this one back.
    public func take(now: UInt64 = DispatchTime.now().uptimeNanoseconds) -> Int? {
        state.withLock { s in
            s.tokens = min(burst, s.tokens + Double(now &- s.at) / 1e9 * perSecond)
            s.at = now
            guard s.tokens >= 1 else {
                s.held += 1
                return nil
            }
            s.tokens -= 1
            defer { s.held = 0 }
            return s.held
        }
    }

    /// `line` to log now, saying how many lines were held back before it; nil to hold it back.
    public func line(_ line: @autoclosure () -> String) -> String? {
        take().map { held in line() + (held > 0 ? " (\(held) more not logged)" : "") }
    }
}

/// Tells of a recurring job's trouble once instead of on every try (a store that cannot write, a file
/// that cannot be saved): the first failure, and the first success after failures.
public final class FailureNotice: Sendable {
    private let failing = Atomic<Bool>(false)

    public init() {}

    /// Whether the job's last outcome was a failure.
    public var isFailing: Bool { failing.load(ordering: .relaxed) }

    /// Whether this failure is the first since the job last worked: log it then.
    public func failed() -> Bool { !failing.exchange(true, ordering: .relaxed) }

    /// Whether the job works again after failing: say so then.
    public func worked() -> Bool {
        // Read first: a job that works (the common case, once per batch on some paths) writes nothing.
        failing.load(ordering: .relaxed) && failing.exchange(false, ordering: .relaxed)
    }
}
