// libFuzzer target: LwM2M TLV decoding of arbitrary bytes. The decoder must throw, never crash, and
// whatever decodes must encode and decode again to equal entries.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLwM2MTLV(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let entries = try? TLV.decode(bytes) {
        guard let again = try? TLV.decode(TLV.encode(entries)), again == entries else { fatalError("TLV round trip changed \(bytes)") }
    }
    return 0
}
