import Foundation

/// The order of notifications (RFC 7641 §3.4): datagrams may come out of order, so a notification is
/// used only when it is fresher than the last one used, by its Observe sequence number (24 bits,
/// wrapping) or because more than 128 s passed since that one. The first is always used.
public struct ObserveOrder: Sendable {
    /// The last notification used: its sequence number and when it came.
    public private(set) var last: (sequence: UInt32, at: TimeInterval)?

    public init() {}

    /// Whether a notification numbered `sequence` that came at `now` is fresher; if so it becomes the last.
    public mutating func take(_ sequence: UInt32, at now: TimeInterval) -> Bool {
        let v2 = Int64(sequence & 0xFF_FFFF)
        if let (s, at) = last {
            let v1 = Int64(s)
            guard (v1 < v2 && v2 - v1 < 1 << 23) || (v1 > v2 && v1 - v2 > 1 << 23) || now > at + 128 else { return false }
        }
        last = (UInt32(v2), now)
        return true
    }
}
