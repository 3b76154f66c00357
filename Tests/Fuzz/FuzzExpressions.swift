// libFuzzer target: the expression language. Any text must parse or be refused with an error, and any
// expression that parses must evaluate or fail within its cost bound, never crash or hang.
import IoTCPluginKit

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzExpressions(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    guard let e = try? Expression(text) else { return 0 }
    let payload: Value = ["temperature": 21.5, "name": "pump", "tags": ["a", "b"], "n": 3, "nested": ["x": [1, 2, 3]]]
    var context = EvaluationContext(payload: payload, metadata: [KeyValue("site", "a")], now: 1_767_225_600_000)
    _ = try? e.evaluate(&context)
    return 0
}
