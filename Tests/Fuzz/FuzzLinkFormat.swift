// libFuzzer target: the CoRE link format of LwM2M Register, Update and Discover payloads, from
// arbitrary bytes. The parser must throw, never crash, and whatever it reads must be written and read
// back to the same links.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLinkFormat(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    if let links = try? LinkFormat.parse(text, limit: 64) {
        let written = LinkFormat.write(links)
        guard let again = try? LinkFormat.parse(written, limit: 64), again == links else {
            fatalError("link format round trip changed \(links) (written \(written))")
        }
    }
    return 0
}
