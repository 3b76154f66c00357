/// Text that messages must not show: the values of secret fields, and whatever a `${env:...}` or
/// `${file:...}` reference brought into a pipeline file (which may be any file the hub can read, or
/// any of its environment). Messages about a component (its plugin's errors, log lines and check
/// findings) show "…" in place of any 8 bytes in a row that such a value holds, so that a value quoted
/// in part (one line of it, or cut short) is hidden too; a value of 4 to 7 bytes is hidden where it
/// appears whole. Shorter ones are left, as hiding them would hide most of any message and reveal little.
public struct Concealed: Sendable {
    /// Every run of 8 bytes in the longer values, as a number.
    private var runs: Set<UInt64> = []
    private var short: [[UInt8]] = []
    public init() {}

    public var isEmpty: Bool { runs.isEmpty && short.isEmpty }

    mutating func add(_ value: String) {
        let b = Array(value.utf8)
        if b.count >= 8 {
            for i in 0...(b.count - 8) { runs.insert(Self.run(b, i)) }
        } else if b.count >= 4, !short.contains(b) {
            short.append(b)
        }
    }

    private static func run(_ b: [UInt8], _ i: Int) -> UInt64 {
        var v: UInt64 = 0
        for k in 0..<8 { v = v << 8 | UInt64(b[i + k]) }
        return v
    }

    public func callAsFunction(_ text: String) -> String {
        guard !isEmpty else { return text }
        let b = Array(text.utf8)
        var hide = [Bool](repeating: false, count: b.count)
        var any = false
        if b.count >= 8, !runs.isEmpty {
            for i in 0...(b.count - 8) where runs.contains(Self.run(b, i)) {
                for k in i..<(i + 8) { hide[k] = true }
                any = true
            }
        }
        for w in short where b.count >= w.count {
            for i in 0...(b.count - w.count) where !hide[i] && b[i..<(i + w.count)].elementsEqual(w) {
                for k in i..<(i + w.count) { hide[k] = true }
                any = true
            }
        }
        guard any else { return text }
        // Hidden runs take whole characters: a UTF-8 continuation byte next to one is hidden too.
        for i in b.indices where hide[i] {
            var l = i
            while l > 0, b[l] & 0xC0 == 0x80 { l -= 1; hide[l] = true }
            var r = i
            while r + 1 < b.count, b[r + 1] & 0xC0 == 0x80 { r += 1; hide[r] = true }
        }
        var out: [UInt8] = []
        out.reserveCapacity(b.count)
        for i in b.indices {
            if !hide[i] { out.append(b[i]) } else if i == 0 || !hide[i - 1] { out += Array("…".utf8) }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
