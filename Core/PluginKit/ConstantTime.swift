/// Comparisons whose time does not depend on where two secrets (or their digests) differ.
public enum ConstantTime {
    /// True when `a` and `b` hold the same bytes; takes as long for a first-byte mismatch as for a match.
    /// Inlinable: callers get it specialized for their collections (it runs on every device authentication).
    @inlinable public static func equal(_ a: some Collection<UInt8>, _ b: some Collection<UInt8>) -> Bool {
        guard a.count == b.count else { return false }
        var diff: UInt8 = 0
        for (x, y) in zip(a, b) { diff |= x ^ y }
        return diff == 0
    }
}
