import Foundation
import IoTCPluginKit

// libFuzzer target: Modbus register maps. Input starting with '{' is a source config, which the plan
// must check (findings, never a crash); anything else picks a field (type, byte order, bit field) from
// its first bytes and decodes the rest as registers. Whatever decodes must encode without crashing,
// and exact types (integers within Int64 and non-NaN floats, unscaled) must encode back to the very
// registers read.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzModbusMap(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard bytes.count >= 4 else { return 0 }
    if bytes[0] == UInt8(ascii: "{") {
        if let config = try? JSONDecoder().decode(ModbusConfig.self, from: Data(bytes)) { _ = ModbusPlan.build(config) }
        return 0
    }
    let type = DataType.allCases[Int(bytes[0]) % DataType.allCases.count]
    let order = ByteOrder.allCases[Int(bytes[1]) % ByteOrder.allCases.count]
    let bit = Int(bytes[2] & 0x0F), bits = Int(bytes[3] & 0x0F) + 1
    let isBitField = bytes[2] & 0x80 != 0 && bit + bits <= 16
    let scaled = bytes[2] & 0x40 != 0
    let words = stride(from: 4, to: bytes.count - 1, by: 2).map { UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]) }
    let length = type == .string ? min(words.count, 125) : 0
    if type == .string, length == 0 { return 0 }
    let field = Field(name: "f", address: 0, type: isBitField ? nil : type, order: order, length: length, bit: isBitField ? bit : nil,
                      bits: isBitField ? bits : 1, scale: scaled ? 0.1 : 1, offset: scaled ? -40 : 0)
    guard words.count >= field.count else { return 0 }
    let read = words[0..<field.count]
    let value = field.decode(registers: read)
    let encoded = try? field.encode(value)
    // uint64 values past 2^63 - 1 travel as the nearest double (JSON numbers), so they are not exact.
    let beyondInt64: Bool = if type == .uint64, case .double = value { true } else { false }
    let exact = !isBitField && !scaled && type != .bool && type != .string && value != .null && !beyondInt64
    if exact, encoded != .registers(Array(read)) {
        fatalError("\(type) \(order): \(Array(read)) decoded to \(value) and encoded to \(String(describing: encoded))")
    }
    return 0
}
