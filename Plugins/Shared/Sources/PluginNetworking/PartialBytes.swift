import IoTCPluginKit
import Synchronization

/// A server's budget of bytes held in requests or packets not yet all in, over all its connections:
/// each connection is bounded by its largest request, but many slow senders at once are bounded only
/// here. A connection whose bytes would take the total past the limit is refused, unless it is the
/// only one holding any (so one request of the largest size always fits).
public final class PartialBytes: Sendable {
    public let limit: Int
    private let total = Atomic<Int>(0)

    public init(limit: Int) { self.limit = limit }

    /// The config field that sets the limit.
    public static func field(_ what: String, refusal: String) -> ConfigField {
        ConfigField("max_partial_bytes", .byteSize, "Bytes of \(what) not yet all in, over all connections (slow or large senders); past it, \(refusal).",
                    default: "67108864", example: "64MiB", advanced: true)
    }

    public var held: Int { total.load(ordering: .relaxed) }

    /// One connection's share, updated on its event loop.
    public struct Share: Sendable {
        private var held = 0
        public init() {}

        /// Counts `bytes` (what the connection holds now) in `budget`; false when that takes the total
        /// past the limit while other connections hold bytes too.
        public mutating func hold(_ bytes: Int, in budget: PartialBytes) -> Bool {
            guard bytes != held else { return true }
            let total = budget.total.wrappingAdd(bytes - held, ordering: .relaxed).newValue
            held = bytes
            return bytes == 0 || total <= budget.limit || total == bytes
        }

        /// Gives the connection's bytes back (it closes, or is refused).
        public mutating func release(from budget: PartialBytes) {
            guard held != 0 else { return }
            budget.total.wrappingSubtract(held, ordering: .relaxed)
            held = 0
        }
    }
}
