import Testing
import IoTCPluginKit

struct SenMLTests {
    @Test func resolvesBaseFieldsInJSON() throws {
        let pack = #"[{"bn":"urn:dev:ow:10e2073a01080063:","bt":1.320067464e+09,"bu":"%RH","v":20},{"u":"lon","v":24.30621},{"n":"temp","u":"Cel","t":10,"v":23.1,"bv":1},{"n":"on","vb":true},{"n":"blob","vd":"aGk"}]"#
        let r = try SenML.decode(Array(pack.utf8), cbor: false)
        #expect(r.count == 5)
        #expect(r[0] == SenML.Record(name: "urn:dev:ow:10e2073a01080063:", value: .number(20), unit: "%RH", time: 1.320067464e9))
        #expect(r[1].unit == "lon" && r[1].name == "urn:dev:ow:10e2073a01080063:")
        #expect(r[2].name == "urn:dev:ow:10e2073a01080063:temp" && r[2].value == .number(24.1) && r[2].time == 1.320067474e9)
        #expect(r[3].value == .bool(true) && r[3].unit == "%RH")
        #expect(r[4].value == .data(Array("hi".utf8)))
    }

    @Test func readsCBORLabelsAndByteStrings() throws {
        // [{-2: "/3303/0/", 0: "5700", 2: 21.5}, {0: "5701", 3: "Cel"}, {0: "x", 8: h'0102'}]
        let cbor: [UInt8] = [0x83, 0xA3, 0x21, 0x68] + Array("/3303/0/".utf8) + [0x00, 0x64] + Array("5700".utf8) + [0x02, 0xF9, 0x4D, 0x60]
            + [0xA2, 0x00, 0x64] + Array("5701".utf8) + [0x03, 0x63] + Array("Cel".utf8)
            + [0xA2, 0x00, 0x61, 0x78, 0x08, 0x42, 0x01, 0x02]
        let r = try SenML.decode(cbor, cbor: true)
        #expect(r.map(\.name) == ["/3303/0/5700", "/3303/0/5701", "/3303/0/x"])
        #expect(r[0].value == .number(21.5) && r[1].value == .string("Cel") && r[2].value == .data([1, 2]))
    }

    @Test func refusesWrongTypesAndAmbiguousRecords() {
        let bad: [(String, String)] = [
            (#"{"n":"a","v":1}"#, "a SenML pack is an array"),
            (#"[{"n":"a","v":"1"}]"#, "'v' must be a number"),
            (#"[{"n":"a","vb":1}]"#, "'vb' must be a boolean"),
            (#"[{"n":1,"v":1}]"#, "'n' must be a string"),
            (#"[{"n":"a","v":1,"vs":"x"}]"#, "at most one"),
            (#"[{"n":"a","v":1,"x_":2}]"#, "must-understand"),
            (#"[{"n":"-bad","v":1}]"#, "not a valid SenML name"),
            (#"[{"n":"a b","v":1}]"#, "not a valid SenML name"),
            (#"[{"v":1}]"#, "not a valid SenML name"),
            (#"[{"n":"a","vd":"*"}]"#, "base64url"),
            (#"[{"bver":99,"n":"a","v":1}]"#, "version"),
            (#"[1]"#, "a record is a map"),
        ]
        for (text, reason) in bad {
            #expect(throws: SenML.Error.self, "\(text)") { try SenML.decode(Array(text.utf8), cbor: false) }
            do { _ = try SenML.decode(Array(text.utf8), cbor: false) } catch { #expect(error.reason.contains(reason), "\(text): \(error)") }
        }
    }

    @Test func encodesWhatItDecodes() throws {
        let records = [SenML.Record(name: "/3303/0/5700", value: .number(21.5), unit: "Cel"), SenML.Record(name: "n", value: .bool(false)),
                       SenML.Record(name: "s", value: .string("x")), SenML.Record(name: "d", value: .data([0xFB, 0xFF]))]
        #expect(try SenML.decode(SenML.encodeJSON(records), cbor: false) == records)
        #expect(try SenML.decode(SenML.encodeCBOR(records), cbor: true) == records)
        // RFC 8428 §6: integer labels, data as a byte string: [{0: "d", 8: h'FBFF'}].
        #expect(SenML.encodeCBOR([records[3]]) == [0x81, 0xA2, 0x00, 0x61, 0x64, 0x08, 0x42, 0xFB, 0xFF])
        // Long packs have their length after the array's initial byte.
        let many = (0..<300).map { SenML.Record(name: "r\($0)", value: .number(Double($0))) }
        let encoded = SenML.encodeCBOR(many)
        #expect(encoded.prefix(3) == [0x99, 0x01, 0x2C])
        #expect(try SenML.decode(encoded, cbor: true) == many)
    }
}
