/// Text from bytes that must be well-formed UTF-8 (JSON and CBOR strings, MQTT strings and topics).
///
/// The standard library's `String(validating:as:)` is generic over the encoding and looks up type
/// metadata on each call, which showed as a few per cent of the CPU in decoding small JSON documents.
/// Most keys, topics and values are ASCII: those are checked here eight bytes at a time and taken as they
/// are; anything else goes through the full validation.
public enum UTF8Text {
    /// The bytes as a string when they are well-formed UTF-8, else nil.
    public static func string(_ bytes: UnsafeRawBufferPointer) -> String? {
        let b = UnsafeBufferPointer(start: bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), count: bytes.count)
        return isASCII(bytes) ? String(decoding: b, as: UTF8.self) : String(validating: b, as: UTF8.self)
    }

    /// The bytes as a string when they are well-formed UTF-8, else nil.
    public static func string(_ bytes: UnsafeBufferPointer<UInt8>) -> String? { string(UnsafeRawBufferPointer(bytes)) }

    /// The bytes as a string when they are well-formed UTF-8, else nil.
    public static func string(_ bytes: some Collection<UInt8>) -> String? {
        bytes.withContiguousStorageIfAvailable { string($0) } ?? string(Array(bytes))
    }

    /// Whether every byte is below 0x80.
    public static func isASCII(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress else { return true }
        let n = bytes.count
        var i = 0
        while n - i >= 8 {
            if base.loadUnaligned(fromByteOffset: i, as: UInt64.self) & 0x8080_8080_8080_8080 != 0 { return false }
            i += 8
        }
        while i < n {
            if base.load(fromByteOffset: i, as: UInt8.self) >= 0x80 { return false }
            i += 1
        }
        return true
    }
}
