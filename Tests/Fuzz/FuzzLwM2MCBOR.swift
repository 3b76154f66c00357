// libFuzzer target: plain CBOR and LwM2M CBOR decoding of arbitrary bytes. The decoder must throw,
// never crash, and every value it returns names a resource or resource instance (3 or 4 ids).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLwM2MCBOR(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    _ = try? LwM2MCBOR.value(bytes)
    if let entries = try? LwM2MCBOR.entries(bytes, limit: 64) {
        guard entries.count <= 64, entries.allSatisfy({ (3...4).contains($0.path.count) && !$0.path.contains(65535) }) else {
            fatalError("LwM2M CBOR gave a path that is not a resource: \(bytes)")
        }
    }
    return 0
}
