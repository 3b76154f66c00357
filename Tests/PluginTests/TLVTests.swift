import LwM2MCodec
import Testing

struct TLVTests {
    /// The Device object instance example of OMA-TS-LightweightM2M-Core 1.1 §7.4.3 (first resources).
    static let device: [UInt8] = [0xC8, 0x00, 0x14] + Array("Open Mobile Alliance".utf8)
        + [0xC8, 0x01, 0x16] + Array("Lightweight M2M Client".utf8)
        + [0x86, 0x06, 0x41, 0x00, 0x01, 0x41, 0x01, 0x05]
        + [0xC1, 0x09, 0x64]

    @Test func decodesTheSpecificationsDeviceExample() throws {
        let entries = try TLV.decode(Self.device)
        #expect(entries.map(\.id) == [0, 1, 6, 9])
        #expect(entries[0] == TLV.Entry(kind: .resource, id: 0, value: Array("Open Mobile Alliance".utf8)))
        #expect(entries[2].kind == .multipleResource && entries[2].children == [
            TLV.Entry(kind: .resourceInstance, id: 0, value: [1]), TLV.Entry(kind: .resourceInstance, id: 1, value: [5]),
        ])
        #expect(TLV.integer(entries[3].value) == 100)
        #expect(TLV.encode(entries) == Self.device, "the shortest encoding is the specification's")
    }

    @Test func nestsObjectInstancesAndUsesLongForms() throws {
        let long = [UInt8](repeating: 7, count: 300)
        let entries = [TLV.Entry(kind: .objectInstance, id: 0x1234, children: [
            TLV.Entry(kind: .resource, id: 5700, value: TLV.bytes(float: 21.5)),
            TLV.Entry(kind: .resource, id: 1, value: long),
            TLV.Entry(kind: .multipleResource, id: 2, children: [TLV.Entry(kind: .resourceInstance, id: 300, value: TLV.bytes(integer: -70000))]),
        ])]
        let bytes = TLV.encode(entries)
        #expect(bytes[0] == 0x20 | 0x10 && bytes[1] == 0x12 && bytes[2] == 0x34, "16-bit id, 16-bit length (the body is over 255 bytes): \(bytes.prefix(4))")
        let back = try TLV.decode(bytes)
        #expect(back == entries)
        #expect(TLV.float(back[0].children[0].value) == 21.5)
        #expect(TLV.integer(back[0].children[2].children[0].value) == -70000)
        #expect(TLV.integer([0xFF]) == -1 && TLV.integer([0x00, 0x80]) == 128 && TLV.integer([1, 2, 3]) == nil)
        #expect(TLV.boolean([1]) == true && TLV.boolean([2]) == nil)
        #expect(TLV.objectLink([0, 3, 0, 1])! == (3, 1))
    }

    @Test func refusesWrongLengthsAndNestings() {
        let bad: [([UInt8], String)] = [
            ([0xC8, 0x00], "truncated header"),
            ([0xC1, 0x00], "runs past the end"),
            ([0xC8, 0x00, 0x05, 0x41], "runs past the end"),
            ([0xF8, 0x00], "truncated header"),
            ([0x03, 0x00, 0x41, 0x00, 0x01], "resourceInstance inside objectInstance"),
            ([0x83, 0x00, 0xC1, 0x00, 0x01], "resource inside multipleResource"),
            ([0x05, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00], "objectInstance inside objectInstance"),
            ([0x86, 0x06, 0x41, 0x00, 0x01, 0x41, 0x01], "runs past the end"),
        ]
        for (bytes, reason) in bad {
            do {
                _ = try TLV.decode(bytes)
                Issue.record("decoded \(bytes)")
            } catch {
                #expect(error.reason.contains(reason), "\(bytes): \(error)")
            }
        }
    }
}
