import Foundation
import NIOConcurrencyHelpers

/// Token buckets by key (a device, an API key): each holds up to `burst` tokens and refills at `rate`
/// per second; a request takes one. Idle buckets are forgotten, so memory follows the active keys.
public final class RateLimiter: Sendable {
    public let rate: Double
    public let burst: Double
    private struct Bucket {
        var tokens: Double
        var at: Double
    }
    private let buckets = NIOLockedValueBox<[String: Bucket]>([:])
    private let clock: @Sendable () -> Double
    static let maxKeys = 100_000

    public init(rate: Double, burst: Double, clock: @escaping @Sendable () -> Double = { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }) {
        self.rate = rate
        self.burst = max(1, burst)
        self.clock = clock
    }

    /// Takes a token for `key`: nil when allowed, else the seconds until one is available.
    public func take(_ key: String) -> Double? {
        let now = clock()
        return buckets.withLockedValue { all -> Double? in
            var b = all[key] ?? Bucket(tokens: burst, at: now)
            b.tokens = min(burst, b.tokens + (now - b.at) * rate)
            b.at = now
            if b.tokens >= 1 {
                b.tokens -= 1
                if all.count >= Self.maxKeys, all[key] == nil { Self.forgetFull(&all, now: now, rate: rate, burst: burst) }
                all[key] = b
                return nil
            }
            all[key] = b
            return (1 - b.tokens) / rate
        }
    }

    /// Drops buckets that have refilled completely: a new one would start the same.
    private static func forgetFull(_ all: inout [String: Bucket], now: Double, rate: Double, burst: Double) {
        all = all.filter { $0.value.tokens + (now - $0.value.at) * rate < burst }
    }
}

/// Request limits from the pipeline files' `limits` section; 0 means no limit.
public struct LimitsConfig: Sendable, Equatable {
    public var deviceMessagesPerSecond: Double = 0
    public var deviceBurst: Double = 0
    public var apiRequestsPerSecond: Double = 0
    public var apiBurst: Double = 0
    public init() {}
}
