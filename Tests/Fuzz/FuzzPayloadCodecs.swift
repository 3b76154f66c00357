// libFuzzer target: JSON, CBOR and SenML decoding of arbitrary bytes. Decoders must throw, never crash,
// and whatever decodes must encode and decode again to an equal value (SenML: to records again).
import IoTCPluginKit

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPayloadCodecs(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let v = try? JSON.decode(bytes) {
        guard let again = try? JSON.decode(JSON.encode(v)), again == v else { fatalError("JSON round trip changed \(bytes)") }
    }
    if let v = try? CBOR.decode(bytes), !containsNaN(v) {
        guard let again = try? CBOR.decode(CBOR.encode(v)), again == v else { fatalError("CBOR round trip changed \(bytes)") }
    }
    for cbor in [false, true] {
        if let records = try? SenML.decode(bytes, cbor: cbor), records.allSatisfy({ r in if case .number(let d)? = r.value { d.isFinite } else { true } }) {
            guard (try? SenML.decode(SenML.encodeJSON(records), cbor: false)) != nil else { fatalError("SenML records did not encode: \(bytes)") }
            // Both encodings keep every record whole: names, units, values, sums, times and update times.
            guard (try? SenML.decode(SenML.encodeJSON(records), cbor: false)) == records, (try? SenML.decode(SenML.encodeCBOR(records), cbor: true)) == records else {
                fatalError("SenML records did not round-trip: \(bytes)")
            }
        }
    }
    return 0
}

private func containsNaN(_ v: Value) -> Bool {
    switch v {
    case .double(let d): d.isNaN
    case .array(let a): a.contains(where: containsNaN)
    case .object(let o): o.values.contains(where: containsNaN)
    default: false
    }
}
