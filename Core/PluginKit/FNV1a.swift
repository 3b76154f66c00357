/// FNV-1a, 64 bits: a fast fingerprint of bytes (entity tags of representations), not for security.
public enum FNV1a {
    public static func hash(_ bytes: [UInt8]) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }
}
