// libFuzzer target: the XML reader and object definitions (LwM2M object_definitions files) on
// arbitrary bytes. Reading must end in definitions or an error located inside the document, never a
// crash; what reads must have as many end events as start events, properly nested.
import Foundation

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzObjectXML(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    var open: [String] = []
    do {
        try XMLReader.read(bytes) { event, line, column throws(XMLReader.Failure) in
            precondition(line >= 1 && column >= 1, "a location before the document")
            switch event {
            case .start(let name, _): open.append(name)
            case .end(let name): precondition(open.popLast() == name, "</\(name)> out of order")
            case .text: precondition(!open.isEmpty, "text outside the root")
            }
        }
        precondition(open.isEmpty, "elements left open")
    } catch {
        precondition(error.line >= 1 && error.column >= 1 && error.line <= bytes.count + 1, "a failure outside the document")
    }
    _ = try? ObjectXML.parse(Data(bytes), file: "fuzz.xml")
    return 0
}
