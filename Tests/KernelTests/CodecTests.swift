import Testing
import IoTCPluginKit

@Suite struct JSONCodecTests {
    @Test func roundTripsValues() throws {
        let v: Value = ["a": 1, "b": [true, false, nil], "c": "x\"y\n\u{1}", "d": 2.5, "e": ["nested": -7]]
        let text = JSON.string(v)
        #expect(text == #"{"a":1,"b":[true,false,null],"c":"x\"y\n\u0001","d":2.5,"e":{"nested":-7}}"#)
        #expect(try JSON.decode(text) == v)
    }

    @Test func decodesEscapesAndSurrogates() throws {
        #expect(try JSON.decode(#""\u00e9\ud83d\ude00\/\t""#) == .string("é😀/\t"))
    }

    @Test(arguments: [
        ("", "empty JSON document"),
        ("{", "expected a string key"),
        ("[1,]", "unexpected character ']'"),
        ("01", "leading zero"),
        ("\"abc", "unterminated string"),
        ("{\"a\":1} x", "unexpected data after the JSON value"),
        ("\"\\ud800\"", "unpaired surrogate"),
        ("1e999", "number out of range"),
        ("tru", "invalid literal"),
    ])
    func rejectsMalformedInput(text: String, expected: String) {
        #expect {
            _ = try JSON.decode(text)
        } throws: { error in
            (error as? DecodeError)?.message.contains(expected) == true
        }
    }

    @Test func rejectsInvalidUTF8() {
        #expect(throws: DecodeError.self) { _ = try JSON.decode([0x22, 0xFF, 0xFE, 0x22]) }
    }

    @Test func limitsDepth() {
        let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect { _ = try JSON.decode(deep) } throws: { ($0 as? DecodeError)?.message.contains("deeper") == true }
        let ok = String(repeating: "[", count: 60) + String(repeating: "]", count: 60)
        #expect((try? JSON.decode(ok)) != nil)
    }

    @Test func bigIntegersBecomeDoubles() throws {
        #expect(try JSON.decode("9223372036854775807") == .int(.max))
        #expect(try JSON.decode("-9223372036854775808") == .int(.min))
        #expect(try JSON.decode("9223372036854775808") == .double(9223372036854775808))
        #expect(try JSON.decode("12345678901234567890123") == .double(12345678901234567890123))
    }

    /// Numbers are read as they are scanned where that is exact; every form must give the very double
    /// the full text conversion gives (the same bits, so -0.0 stays negative).
    @Test func numbersReadWhileScanningMatchTheFullConversion() throws {
        var texts = ["0", "-0", "0.0", "-0.0", "71.6", "0.1", "0.3", "1.7976931348623157", "9007199254740993.5",
                     "123456789012345.6", "1234567890123456.7", "0.0000000000000000000001", "0.00000000000000000000001",
                     "5e-324", "1.5E3", "2e+2", "-12.25", "99999999999999999999.5", "4.35", "1e22", "0.1e1"]
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            let whole = UInt64.random(in: 0...(1 << 40), using: &rng)
            let fraction = String(UInt64.random(in: 0...999_999_999_999, using: &rng)).prefix(Int.random(in: 1...12, using: &rng))
            texts.append("\(Bool.random(using: &rng) ? "-" : "")\(whole).\(fraction)")
        }
        for text in texts {
            let expected = Double(text)!
            switch try JSON.decode(text) {
            case .double(let d): #expect(d.bitPattern == expected.bitPattern, "\(text)")
            case .int(let i): #expect(Double(i) == expected && !text.contains("."), "\(text)")
            default: Issue.record("\(text) is not a number")
            }
        }
    }
}

@Suite struct ValueObjectTests {
    /// Past a few members the decoders find repeated keys by a hash index instead of a scan: the objects
    /// must come out exactly as setting each member in turn makes them.
    @Test(arguments: [10, 16, 17, 20_000])
    func largeObjectsKeepOrderAndFindEveryKey(n: Int) throws {
        let text = "{" + (0..<n).map { #""k\#($0)":\#($0)"# }.joined(separator: ",") + "}"
        guard case .object(var o) = try JSON.decode(text) else { Issue.record("not an object"); return }
        #expect(o.count == n)
        #expect(o.keys.prefix(3) == ["k0", "k1", "k2"])
        // Looked up by a scan (an object keeps no index): a sample of keys, the last one included.
        let sample = Array(stride(from: 0, to: n, by: max(1, n / 100))) + [n - 1]
        #expect(sample.allSatisfy { o["k\($0)"] == .int(Int64($0)) })
        o["k5"] = "five"
        #expect(o.count == n && o["k5"] == "five" && o.keys[5] == "k5")
        // Repeated keys, before and after the index starts: the last value, in the first key's place.
        let repeated = "{" + (0..<40).map { #""r\#($0 % 20)":\#($0)"# }.joined(separator: ",") + "}"
        var expected = Value.Object()
        for i in 0..<40 { expected["r\(i % 20)"] = .int(Int64(i)) }
        #expect(try JSON.decode(repeated) == .object(expected))
        #expect(expected.count == 20 && expected["r3"] == .int(23) && expected.keys[3] == "r3")
        // CBOR maps go through the same builder: {"a": 1, "b": 2, "a": 3}.
        #expect(try CBOR.decode([0xA3, 0x61, 0x61, 0x01, 0x61, 0x62, 0x02, 0x61, 0x61, 0x03]) == ["a": 3, "b": 2])
    }
}

@Suite struct UTF8TextTests {
    /// The ASCII shortcut must agree with the full validation wherever the first non-ASCII byte falls
    /// (inside or after the eight-byte words), for valid and malformed sequences alike.
    @Test func agreesWithTheFullValidation() {
        let tails: [[UInt8]] = [[], [0xC3, 0xA9], [0xE2, 0x82, 0xAC], [0xF0, 0x9F, 0x98, 0x80], [0xFF], [0xC3], [0xC0, 0xAF],
                                [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0x80], [0xE2, 0x82]]
        for prefix in 0...17 {
            for tail in tails {
                for suffix in [0, 1, 9] {
                    let bytes = Array(repeating: UInt8(ascii: "a"), count: prefix) + tail + Array(repeating: UInt8(ascii: "z"), count: suffix)
                    let expected = String(validating: bytes, as: UTF8.self)
                    #expect(UTF8Text.string(bytes) == expected, "\(bytes)")
                    #expect(bytes.withUnsafeBytes { UTF8Text.isASCII($0) } == tail.isEmpty, "\(bytes)")
                }
            }
        }
    }

    @Test func decoderStringsRejectMalformedUTF8() throws {
        // JSON key and value, CBOR text: the decoders read strings through UTF8Text.
        #expect(throws: DecodeError.self) { _ = try JSON.decode([0x7B, 0x22, 0x61, 0xC3, 0x22, 0x3A, 0x31, 0x7D]) }
        #expect(throws: DecodeError.self) { _ = try CBOR.decode([0x62, 0xC3, 0x28]) }
        #expect(try JSON.decode(Array(#"{"température":"été"}"#.utf8)) == ["température": "été"])
    }
}

@Suite struct CBORCodecTests {
    /// Vectors from RFC 8949 appendix A.
    @Test(arguments: [
        ("00", Value.int(0)), ("17", .int(23)), ("1818", .int(24)), ("1903e8", .int(1000)), ("3903e7", .int(-1000)),
        ("f4", .bool(false)), ("f5", .bool(true)), ("f6", .null), ("f93c00", .double(1.0)), ("fa47c35000", .double(100000.0)),
        ("fb3ff199999999999a", .double(1.1)), ("6161", .string("a")), ("4401020304", .bytes([1, 2, 3, 4])),
        ("83010203", .array([1, 2, 3])), ("a26161016162820203", Value.object(.init([("a", Value.int(1)), ("b", Value.array([2, 3]))]))),
        ("9f018202039f0405ffff", .array([1, [2, 3], [4, 5]])), ("7f657374726561646d696e67ff", .string("streaming")),
        ("c11a514b67b0", .int(1363896240)), ("f90400", .double(6.103515625e-05)),
    ])
    func decodesSpecVectors(hex: String, expected: Value) throws {
        let bytes = stride(from: 0, to: hex.count, by: 2).map { UInt8(hex.dropFirst($0).prefix(2), radix: 16)! }
        #expect(try CBOR.decode(bytes) == expected)
    }

    @Test func roundTrips() throws {
        let v: Value = ["t": 21.5, "n": -3, "s": "x", "b": .bytes([0, 255]), "l": [nil, true]]
        #expect(try CBOR.decode(CBOR.encode(v)) == v)
    }

    @Test func integerKeysBecomeText() throws {
        // SenML-CBOR: {-2: "urn:dev", 2: 21.5}
        #expect(try CBOR.decode([0xA2, 0x21, 0x67] + Array("urn:dev".utf8) + [0x02, 0xF9, 0x4D, 0x60]) == ["-2": "urn:dev", "2": 21.5])
    }

    @Test(arguments: [[0x18], [0x62, 0x61], [0x9F, 0x01], [0xFF], [0x5F, 0x61, 0x61, 0xFF], [0x1C], [0x62, 0xFF, 0xFE], [0x01, 0x02]] as [[UInt8]])
    func rejectsMalformed(bytes: [UInt8]) {
        #expect(throws: DecodeError.self) { _ = try CBOR.decode(bytes) }
    }

    @Test func refusesHugeDeclaredLengths() {
        #expect(throws: DecodeError.self) { _ = try CBOR.decode([0x9B, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]) }
        let deep = [UInt8](repeating: 0x81, count: 200) + [0x00]
        #expect(throws: DecodeError.self) { _ = try CBOR.decode(deep) }
    }
}

/// Times written without Foundation's formatters, against Python's `datetime` and `email.utils`.
@Suite struct TimeFormatTests {
    static let cases: [(Int64, String, String)] = [
        (0, "1970-01-01T00:00:00.000Z", "Thu, 01 Jan 1970 00:00:00 +0000"),
        (1_795_785_169_700, "2026-11-27T13:12:49.700Z", "Fri, 27 Nov 2026 13:12:49 +0000"),
        (951_868_799_999, "2000-02-29T23:59:59.999Z", "Tue, 29 Feb 2000 23:59:59 +0000"),
        (-1, "1969-12-31T23:59:59.999Z", "Wed, 31 Dec 1969 23:59:59 +0000"),
    ]

    @Test(arguments: cases.indices)
    func formatsAndParses(_ i: Int) {
        let (ms, rfc3339, rfc5322) = Self.cases[i]
        #expect(RFC3339.format(ms) == rfc3339)
        #expect(RFC3339.parse(rfc3339) == ms)
        #expect(RFC5322.format(ms) == rfc5322)
    }
}
