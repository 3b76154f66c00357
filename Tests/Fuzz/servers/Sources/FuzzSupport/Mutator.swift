/// A small, fast, seedable generator: a run is repeated by its seed.
public struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

public enum Mutator {
    /// One to eight mutations of `input`: a flipped bit, an `interesting` byte (the protocol's
    /// delimiters and edge values), a byte inserted or removed, a run of up to 16 bytes copied
    /// elsewhere, the rest cut off, or a random byte.
    public static func mutate(_ input: [UInt8], interesting: [UInt8], using rng: inout some RandomNumberGenerator) -> [UInt8] {
        var b = input
        for _ in 0..<(Bool.random(using: &rng) ? 1 : Int.random(in: 2...8, using: &rng)) {
            guard !b.isEmpty else { b = [UInt8.random(in: 0...255, using: &rng)]; continue }
            let i = Int.random(in: 0..<b.count, using: &rng)
            switch Int.random(in: 0..<7, using: &rng) {
            case 0: b[i] ^= UInt8(1 << Int.random(in: 0..<8, using: &rng))
            case 1: b[i] = interesting.randomElement(using: &rng)!
            case 2: b.insert(UInt8.random(in: 0...255, using: &rng), at: i)
            case 3: b.remove(at: i)
            case 4:
                let n = Int.random(in: 1...min(16, b.count - i), using: &rng)
                b.insert(contentsOf: b[i..<(i + n)], at: Int.random(in: 0...b.count, using: &rng))
            case 5: b.removeSubrange(i...)
            default: b[i] = UInt8.random(in: 0...255, using: &rng)
            }
        }
        return b
    }
}
