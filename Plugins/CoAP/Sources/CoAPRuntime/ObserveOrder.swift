import Foundation

/// The order of notifications (RFC 7641 §3.4): datagrams may come out of order, so a notification is
/// used only when it is fresher than the last one used, by its Observe sequence number (24 bits,
/// wrapping) or because more than 128 s passed since that one.
public struct ObserveOrder: Sendable, Equatable {
    public private(set) var sequence: UInt32
    public private(set) var at: TimeInterval

    public init(sequence: UInt32, at: TimeInterval) {
        self.sequence = sequence & 0xFF_FFFF
        self.at = at
    }

    /// Whether a notification numbered `sequence` that came at `now` is fresher; if so it becomes the last.
    public mutating func take(_ sequence: UInt32, at now: TimeInterval) -> Bool {
        let v1 = Int64(self.sequence), v2 = Int64(sequence & 0xFF_FFFF)
        let fresher = (v1 < v2 && v2 - v1 < 1 << 23) || (v1 > v2 && v1 - v2 > 1 << 23) || now > at + 128
        if fresher { self = ObserveOrder(sequence: sequence, at: now) }
        return fresher
    }
}
