import IoTCPluginKit

/// The four Modbus data tables.
public enum Table: String, Sendable, CaseIterable {
    case coil, discrete_input, holding, input

    /// Coils and discrete inputs hold bits; holding and input registers 16-bit words.
    public var holdsBits: Bool { self == .coil || self == .discrete_input }
    /// Coils and holding registers can be written.
    public var writable: Bool { self == .coil || self == .holding }
    /// The most bits or registers one read request may ask for (Modbus application protocol 1.1b3,
    /// functions 1 to 4).
    public var maxRead: Int { holdsBits ? 2000 : 125 }
    /// The read function code.
    public var readFunction: UInt8 {
        switch self {
        case .coil: 1
        case .discrete_input: 2
        case .holding: 3
        case .input: 4
        }
    }
    /// How listings name it.
    public var label: String {
        switch self {
        case .coil: "coils"
        case .discrete_input: "discrete inputs"
        case .holding: "holding registers"
        case .input: "input registers"
        }
    }
}

/// The value type of a field.
public enum DataType: String, Sendable, CaseIterable {
    case bool, int16, uint16, int32, uint32, int64, uint64, float32, float64, string

    /// Registers one value spans (strings: their configured length).
    public var registers: Int {
        switch self {
        case .bool, .int16, .uint16: 1
        case .int32, .uint32, .float32: 2
        case .int64, .uint64, .float64: 4
        case .string: 0
        }
    }

    public var isNumber: Bool { self != .bool && self != .string }
    var isSigned: Bool { self == .int16 || self == .int32 || self == .int64 }
}

/// How a value's bytes are laid out over its registers, named by where the bytes A (most significant)
/// to D land: ABCD is big-endian throughout (the Modbus default), DCBA little-endian, BADC swaps the
/// bytes within each register, CDAB swaps the order of the registers. For 64-bit values the same two
/// swaps apply to all four registers; a 16-bit value only has its bytes swapped (BADC, DCBA).
public enum ByteOrder: String, Sendable, CaseIterable {
    case ABCD, DCBA, BADC, CDAB

    var swapsBytes: Bool { self == .BADC || self == .DCBA }
    var reversesWords: Bool { self == .CDAB || self == .DCBA }
}

/// One named value in a device's register map.
public struct Field: Sendable, Equatable {
    public var name: String
    public var table: Table
    /// Protocol address of the first register or bit (0-based, as on the wire).
    public var address: Int
    public var type: DataType
    public var order: ByteOrder
    /// Registers a string spans.
    public var length: Int
    /// A bit field: the lowest bit (0 = least significant) of the register it lives in, and its width.
    public var bit: Int?
    public var bits: Int
    public var scale: Double
    public var offset: Double
    public var unit: String?
    /// Smallest change that counts as a change (with `send: changes`).
    public var deadband: Double
    public var writable: Bool

    public init(name: String, table: Table = .holding, address: Int, type: DataType? = nil, order: ByteOrder = .ABCD, length: Int = 0,
                bit: Int? = nil, bits: Int = 1, scale: Double = 1, offset: Double = 0, unit: String? = nil, deadband: Double = 0,
                writable: Bool? = nil) {
        self.name = name
        self.table = table
        self.address = address
        self.type = type ?? (table.holdsBits || bit != nil && bits == 1 ? .bool : .uint16)
        self.order = order
        self.length = length
        self.bit = bit
        self.bits = bits
        self.scale = scale
        self.offset = offset
        self.unit = unit
        self.deadband = deadband
        self.writable = writable ?? table.writable
    }

    /// Bits (coils, discrete inputs) or registers the field spans.
    public var count: Int {
        if table.holdsBits || bit != nil { return 1 }
        return type == .string ? length : type.registers
    }

    /// The last address the field spans.
    public var end: Int { address + count - 1 }

    var scaled: Bool { scale != 1 || offset != 0 }

    // MARK: - Decoding

    /// The value of a bit-table field.
    public func decode(bit value: UInt8) -> Value { .bool(value != 0) }

    /// The value of a register field from exactly `count` registers as read.
    public func decode(registers words: ArraySlice<UInt16>) -> Value {
        if let bit {
            let raw = (UInt64(words[words.startIndex]) >> UInt64(bit)) & ((1 << UInt64(bits)) - 1)
            if bits == 1, !scaled { return .bool(raw != 0) }
            return number(Double(raw), exact: .int(Int64(raw)))
        }
        let bytes = ordered(words)
        switch type {
        case .bool:
            return .bool(bytes.contains { $0 != 0 })
        case .string:
            var end = bytes.endIndex
            while end > bytes.startIndex, bytes[end - 1] == 0 || bytes[end - 1] == 0x20 { end -= 1 }
            // Devices pad with NULs; a NUL inside ends the text as in C.
            let text = bytes[..<end].prefix { $0 != 0 }
            return .string(String(decoding: text, as: UTF8.self))
        case .float32:
            let f = Float(bitPattern: UInt32(truncatingIfNeeded: bigEndian(bytes)))
            return number(Double(f), exact: nil)
        case .float64:
            return number(Double(bitPattern: bigEndian(bytes)), exact: nil)
        default:
            let raw = bigEndian(bytes)
            let width = UInt64(bytes.count * 8)
            if type.isSigned {
                // Sign-extend from the value's width.
                let shift = 64 - width
                let v = Int64(bitPattern: raw << shift) >> Int64(shift)
                return number(Double(v), exact: .int(v))
            }
            if raw > UInt64(Int64.max) { return number(Double(raw), exact: .double(Double(raw))) }
            return number(Double(raw), exact: .int(Int64(raw)))
        }
    }

    /// Scaled when the field has a scale or offset; not-a-number and infinities (a meter's "no value")
    /// become null, which JSON can carry.
    private func number(_ d: Double, exact: Value?) -> Value {
        if scaled {
            // A decimal scale (0.1, 0.01) divides by its inverse, which is exact: 615 × 0.1 would be
            // 61.50000000000001, 615 / 10 is 61.5.
            let inverse = (1 / scale).rounded()
            let v = (abs(1 / scale - inverse) < 1e-9 && inverse != 0 ? d / inverse : d * scale) + offset
            return v.isFinite ? .double(v) : .null
        }
        if let exact { return exact }
        return d.isFinite ? .double(d) : .null
    }

    /// The value's bytes, most significant first, from registers in this field's byte order.
    func ordered(_ words: ArraySlice<UInt16>) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(words.count * 2)
        let sequence: [UInt16] = order.reversesWords && type != .string ? words.reversed() : Array(words)
        for w in sequence {
            let hi = UInt8(w >> 8), lo = UInt8(w & 0xFF)
            if order.swapsBytes { out += [lo, hi] } else { out += [hi, lo] }
        }
        return out
    }

    private func bigEndian(_ bytes: [UInt8]) -> UInt64 { bytes.reduce(0) { $0 << 8 | UInt64($1) } }

    // MARK: - Encoding

    /// What a write of `value` to this field puts on the wire.
    public enum Encoded: Equatable, Sendable {
        case bit(Bool)
        case registers([UInt16])
        /// A bit field: the bits to change in the register (`mask`), and their new value.
        case bitsInRegister(mask: UInt16, value: UInt16)
    }

    /// Encodes a value for writing, by the same map that decodes it.
    public func encode(_ value: Value) throws(MapError) -> Encoded {
        if table.holdsBits { return .bit(try boolean(value)) }
        if let bit {
            let raw: UInt64
            if bits == 1, !scaled { raw = try boolean(value) ? 1 : 0 } else { raw = try unsigned(value, max: (1 << UInt64(bits)) - 1) }
            let mask = UInt16(((1 << UInt64(bits)) - 1) << UInt64(bit))
            return .bitsInRegister(mask: mask, value: UInt16(raw << UInt64(bit)) & mask)
        }
        var bytes: [UInt8]
        switch type {
        case .bool:
            bytes = [0, try boolean(value) ? 1 : 0]
        case .string:
            guard case .string(let s) = value else { throw MapError("'\(name)' takes a string") }
            bytes = Array(s.utf8)
            guard bytes.count <= length * 2 else { throw MapError("'\(name)' holds at most \(length * 2) bytes, not \(bytes.count)") }
            bytes += [UInt8](repeating: 0, count: length * 2 - bytes.count)
        case .float32:
            let f = Float(try raw(value))
            guard f.isFinite else { throw MapError("\(value) is out of range for '\(name)' (float32)") }
            bytes = Self.bytes(UInt64(f.bitPattern), count: 4)
        case .float64:
            bytes = Self.bytes(try raw(value).bitPattern, count: 8)
        default:
            let width = type.registers * 16
            if case .int(let i) = value, !scaled {
                // Integers go exactly, without a trip through Double (64-bit values need every bit).
                let fits = type.isSigned ? width == 64 || (-(Int64(1) << (width - 1))..<(Int64(1) << (width - 1))).contains(i)
                    : i >= 0 && (width == 64 || i < Int64(1) << width)
                guard fits else { throw MapError("\(i) is out of range for '\(name)' (\(type.rawValue))") }
                bytes = Self.bytes(UInt64(bitPattern: i), count: width / 8)
                break
            }
            let r = (try raw(value)).rounded()
            if type.isSigned {
                let limit = Double(sign: .plus, exponent: width - 1, significand: 1)
                guard r >= -limit, r < limit, let i = Int64(exactly: r) else { throw MapError("\(value) is out of range for '\(name)' (\(type.rawValue))") }
                bytes = Self.bytes(UInt64(bitPattern: i), count: width / 8)
            } else {
                let limit = Double(sign: .plus, exponent: width, significand: 1)
                guard r >= 0, r < limit, let u = UInt64(exactly: r) else { throw MapError("\(value) is out of range for '\(name)' (\(type.rawValue))") }
                bytes = Self.bytes(u, count: width / 8)
            }
        }
        // Back from most-significant-first to this field's order on the wire.
        var words: [UInt16] = stride(from: 0, to: bytes.count, by: 2).map { i in
            order.swapsBytes ? UInt16(bytes[i + 1]) << 8 | UInt16(bytes[i]) : UInt16(bytes[i]) << 8 | UInt16(bytes[i + 1])
        }
        if order.reversesWords, type != .string { words.reverse() }
        return .registers(words)
    }

    private static func bytes(_ v: UInt64, count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: v >> UInt64(8 * (count - 1 - $0))) }
    }

    private func boolean(_ value: Value) throws(MapError) -> Bool {
        switch value {
        case .bool(let b): return b
        case .int(0), .int(1): return value == .int(1)
        default: throw MapError("'\(name)' takes true or false")
        }
    }

    /// The raw (unscaled) number for a value.
    private func raw(_ value: Value) throws(MapError) -> Double {
        guard let n = value.number else { throw MapError("'\(name)' takes a number") }
        let r = (n - offset) / scale
        guard r.isFinite else { throw MapError("\(value) is out of range for '\(name)'") }
        return r
    }

    private func unsigned(_ value: Value, max: UInt64) throws(MapError) -> UInt64 {
        let r = (try raw(value)).rounded()
        guard r >= 0, r <= Double(max) else { throw MapError("\(value) is out of range for '\(name)' (0 to \(max) raw)") }
        return UInt64(r)
    }
}

/// A value that does not fit a field, or a map that cannot be.
public struct MapError: Error, CustomStringConvertible, Sendable, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
