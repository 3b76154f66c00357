import Foundation
import IoTCPluginKit
import ModbusMap
import Testing

/// Register maps without I/O: decoding and encoding of every type in every byte order, the read
/// plan, and the checks `iotc check` reports.
@Suite struct ModbusMapTests {
    func field(_ type: DataType, _ order: ByteOrder = .ABCD, length: Int = 0) -> Field {
        Field(name: "x", address: 0, type: type, order: order, length: length)
    }

    @Test func wireLayoutsFollowTheByteOrderNames() throws {
        // float32 1.5 is 0x3FC00000: bytes A=3F B=C0 C=00 D=00.
        let expected: [ByteOrder: [UInt16]] = [.ABCD: [0x3FC0, 0x0000], .CDAB: [0x0000, 0x3FC0], .BADC: [0xC03F, 0x0000], .DCBA: [0x0000, 0xC03F]]
        for (order, words) in expected {
            let f = field(.float32, order)
            #expect(try f.encode(.double(1.5)) == .registers(words), "\(order)")
            #expect(f.decode(registers: words[...]) == .double(1.5), "\(order)")
        }
        // int32 0x01020304 and uint64 0x0102030405060708.
        #expect(try field(.int32, .CDAB).encode(.int(0x0102_0304)) == .registers([0x0304, 0x0102]))
        #expect(try field(.uint64, .DCBA).encode(.int(0x0102_0304_0506_0708)) == .registers([0x0807, 0x0605, 0x0403, 0x0201]))
        #expect(try field(.uint64, .BADC).encode(.int(0x0102_0304_0506_0708)) == .registers([0x0201, 0x0403, 0x0605, 0x0807]))
        // 16-bit values only swap their bytes.
        #expect(try field(.uint16, .DCBA).encode(.int(0x1234)) == .registers([0x3412]))
        #expect(try field(.uint16, .CDAB).encode(.int(0x1234)) == .registers([0x1234]))
    }

    @Test func everyTypeAndOrderRoundTrips() throws {
        let samples: [DataType: [Value]] = [
            .int16: [.int(-32768), .int(-1), .int(0), .int(32767)],
            .uint16: [.int(0), .int(65535), .int(4660)],
            .int32: [.int(-2_147_483_648), .int(-123_456), .int(2_147_483_647)],
            .uint32: [.int(0), .int(4_294_967_295), .int(305_419_896)],
            .int64: [.int(Int64.min), .int(-1), .int(Int64.max)],
            .uint64: [.int(0), .int(Int64.max), .double(18_446_744_073_709_549_568)],
            .float32: [.double(21.5), .double(-0.25), .double(3.4028234663852886e38)],
            .float64: [.double(-1234.5678), .double(Double.leastNormalMagnitude), .double(1e300)],
            .bool: [.bool(true), .bool(false)],
        ]
        for order in ByteOrder.allCases {
            for (type, values) in samples {
                let f = field(type, order)
                for v in values {
                    guard case .registers(let words) = try f.encode(v) else { Issue.record("\(type)"); continue }
                    #expect(words.count == type.registers)
                    #expect(f.decode(registers: words[...]) == v, "\(type) \(order) \(v)")
                }
            }
            let s = field(.string, order, length: 4)
            guard case .registers(let words) = try s.encode("pump-7") else { Issue.record("string"); continue }
            #expect(words.count == 4 && s.decode(registers: words[...]) == "pump-7", "\(order)")
        }
        // ABCD strings are in reading order; BADC swaps each pair of characters (a common meter quirk).
        #expect(try field(.string, .ABCD, length: 2).encode("AB") == .registers([0x4142, 0]))
        #expect(try field(.string, .BADC, length: 2).encode("AB") == .registers([0x4241, 0]))
        #expect(field(.string, length: 3).decode(registers: [0x4142, 0x4320, 0x2000][...]) == "ABC")
    }

    @Test func scaleOffsetAndBitFieldsApplyBothWays() throws {
        let scaled = Field(name: "t", address: 0, type: .int16, scale: 0.1, offset: -40)
        #expect(scaled.decode(registers: [615][...]) == .double(21.5))
        #expect(try scaled.encode(.double(21.5)) == .registers([615]))
        #expect(throws: MapError.self) { try scaled.encode(.double(4000)) }  // 44000 raw is past int16
        let alarm = Field(name: "alarm", address: 3, bit: 4)
        #expect(alarm.type == .bool)
        #expect(alarm.decode(registers: [0b1_0000][...]) == .bool(true) && alarm.decode(registers: [0b0_1111][...]) == .bool(false))
        #expect(try alarm.encode(.bool(true)) == .bitsInRegister(mask: 0x0010, value: 0x0010))
        let mode = Field(name: "mode", address: 3, bit: 12, bits: 4)
        #expect(mode.decode(registers: [0xA123][...]) == .int(10))
        #expect(try mode.encode(.int(5)) == .bitsInRegister(mask: 0xF000, value: 0x5000))
        #expect(throws: MapError.self) { try mode.encode(.int(16)) }
        // Not-a-number from a meter is null, which JSON carries.
        #expect(field(.float32).decode(registers: [0x7FC0, 0][...]) == .null)
        #expect(throws: MapError.self) { try field(.uint16).encode(.int(-1)) }
        #expect(throws: MapError.self) { try field(.uint16).encode("text") }
        #expect(try Field(name: "c", table: .coil, address: 0).encode(.bool(true)) == .bit(true))
    }

    @Test func contiguousAddressesMergeWithinTheProtocolLimits() {
        let fields = [
            Field(name: "a", address: 0, type: .float32), Field(name: "b", address: 2, type: .uint16),
            Field(name: "c", address: 10, type: .uint16), Field(name: "d", table: .input, address: 0),
            Field(name: "e", table: .coil, address: 0), Field(name: "f", table: .coil, address: 1),
            Field(name: "g", address: 3, bit: 0), Field(name: "h", address: 3, bit: 1),
        ]
        let plan = ModbusPlan.plan(fields, maxGap: 0)
        #expect(plan.map(\.description) == ["coils 0–1", "holding registers 0–3", "holding registers 10–10", "input registers 0–0"])
        #expect(plan[1].fields.map { fields[$0].name } == ["a", "b", "g", "h"])
        // A gap of 6 registers is read in vain with max_gap 6, not with 5.
        #expect(ModbusPlan.plan(fields, maxGap: 6).filter { $0.table == .holding }.map(\.description) == ["holding registers 0–10"])
        #expect(ModbusPlan.plan(fields, maxGap: 5).filter { $0.table == .holding }.count == 2)
        // 200 contiguous registers take two reads (125 is the most one read returns); 2000 coils one.
        let many = (0..<100).map { Field(name: "r\($0)", address: $0 * 2, type: .uint32) }
        #expect(ModbusPlan.plan(many, maxGap: 0).map(\.description) == ["holding registers 0–123", "holding registers 124–199"])
        let coils = (0..<2001).map { Field(name: "c\($0)", table: .coil, address: $0) }
        #expect(ModbusPlan.plan(coils, maxGap: 0).map(\.count) == [2000, 1])
    }

    func build(_ json: String) throws -> (devices: [DeviceMap], findings: [ConfigFinding]) {
        ModbusPlan.build(try JSONDecoder().decode(ModbusConfig.self, from: Data(json.utf8)))
    }

    func errors(_ json: String) throws -> [String] {
        try build(json).findings.filter { $0.severity == .error }.map { "\($0.path): \($0.text)" }
    }

    @Test func impossibleAndOverlappingMapsAreFoundWithTheirPaths() throws {
        let bad = try errors("""
            {"devices": [{"device": "m1", "tcp": "127.0.0.1:502", "registers": [
              {"name": "a", "address": 0, "type": "int32"},
              {"name": "b", "address": 1},
              {"name": "c", "address": 65535, "type": "float32"},
              {"name": "d", "address": 5, "bit": 14, "bits": 4},
              {"name": "e", "address": 6, "bit": 0}, {"name": "f", "address": 6, "bit": 0, "bits": 2},
              {"name": "g", "address": 7, "bit": 2}, {"name": "h", "address": 7, "bit": 3},
              {"name": "s", "address": 8, "type": "string"},
              {"name": "i", "table": "input", "address": 0, "writable": true},
              {"name": "j", "table": "coil", "address": 0, "type": "float32"},
              {"name": "a", "address": 20}
            ], "groups": [{"name": "slow", "interval": 60, "registers": [{"name": "k", "address": 21, "type": "uint32"}]}]}]}
            """)
        #expect(bad.contains("devices.0.registers.1.address: 'b' (holding registers 1–1) overlaps 'a' (0–1)"), "\(bad)")
        #expect(bad.contains("devices.0.registers.2.address: 'c' spans 65535 to 65536, past the last address 65535"), "\(bad)")
        #expect(bad.contains("devices.0.registers.3.bits: a 4-bit field from bit 14 does not fit in a 16-bit register"), "\(bad)")
        #expect(bad.contains { $0.hasPrefix("devices.0.registers.5.address: 'f'") }, "\(bad)")
        #expect(!bad.contains { $0.contains("'h'") }, "disjoint bit fields of one register may share it: \(bad)")
        #expect(bad.contains("devices.0.registers.8.length: a string spans 1 to 125 registers; set length"), "\(bad)")
        #expect(bad.contains("devices.0.registers.9.writable: input registers are read-only in Modbus"), "\(bad)")
        #expect(bad.contains("devices.0.registers.10.type: coils hold bits: the type can only be bool"), "\(bad)")
        #expect(bad.contains("devices.0.registers.11.name: 'a' is already the name of registers.0"), "\(bad)")
        // Across groups too: k (21–22) overlaps nothing, but the second 'a' at 20 does not overlap k either.
        #expect(!bad.contains { $0.contains("'k'") }, "\(bad)")

        let links = try errors("""
            {"devices": [
              {"device": "m1", "tcp": "127.0.0.1:502", "unit": 1, "registers": [{"name": "a", "address": 0}]},
              {"device": "m1", "tcp": "127.0.0.1:502", "unit": 1, "registers": [{"name": "a", "address": 0}]},
              {"device": "m3", "serial": {"port": "/dev/ttyS0", "baud": 9600}, "unit": 0, "registers": [{"name": "a", "address": 0}]},
              {"device": "m4", "serial": {"port": "/dev/ttyS0", "baud": 19200}, "registers": [{"name": "a", "address": 0}]},
              {"device": "m5", "tcp": "nowhere", "registers": []},
              {"device": "m6", "registers": [{"name": "a", "address": 0}]}
            ]}
            """)
        #expect(links.contains("devices.1.device: device 'm1' is already polled by devices item 1"), "\(links)")
        #expect(links.contains("devices.1.unit: unit 1 on tcp 127.0.0.1:502 is already devices item 1"), "\(links)")
        #expect(links.contains("devices.2.unit: unit 0 is out of range 1 to 247"), "\(links)")
        #expect(links.contains("devices.3.serial: /dev/ttyS0 is set up differently by devices item 3"), "\(links)")
        #expect(links.contains("devices.4.tcp: 'nowhere' is not host:port"), "\(links)")
        #expect(links.contains("devices.4.registers: device 'm5' has no registers to poll"), "\(links)")
        #expect(links.contains("devices.5: device 'm6' needs tcp or serial"), "\(links)")
    }

    @Test func aGoodMapPlansItsReadsAsNotes() throws {
        let (devices, findings) = try build("""
            {"devices": [{"device": "m1", "tcp": "[::1]:1502", "unit": 3, "interval": 1, "send": "changes", "registers": [
              {"name": "v", "table": "input", "address": 0, "type": "float32"}, {"name": "i", "table": "input", "address": 2, "type": "float32"}],
              "groups": [{"name": "slow", "interval": 60, "registers": [{"name": "serial", "address": 100, "type": "string", "length": 4}]}]}]}
            """)
        #expect(findings.allSatisfy { $0.severity == .note }, "\(findings)")
        #expect(findings.map(\.text) == [
            "device 'm1' group 'default' every 1s: 1 read: input registers 0–3 (v, i)",
            "device 'm1' group 'slow' every 1m: 1 read: holding registers 100–103 (serial)",
        ])
        #expect(devices[0].link == .tcp(host: "::1", port: 1502) && devices[0].unit == 3 && devices[0].sendChanges)
    }
}
