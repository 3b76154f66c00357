import CModbus
import Foundation
import ModbusMap

/// Why a Modbus request failed.
struct WireFailure: Error, Sendable, Equatable {
    enum Kind: String, Sendable {
        /// The device answered with a Modbus exception.
        case exception
        /// No answer in time.
        case timeout
        /// An RTU frame with a bad CRC.
        case crc
        /// A short, malformed or mismatched response.
        case malformed
        /// The connection broke, or could not be made.
        case connection
    }
    var kind: Kind
    /// The exception code, for `.exception`.
    var exception: Int?
    var detail: String

    /// Whether the connection is no longer usable.
    var closesConnection: Bool { kind == .connection }
    /// Whether the device answered at all (it is there, whatever it said).
    var deviceAnswered: Bool { kind == .exception || kind == .crc || kind == .malformed }

    static let exceptionNames = [
        1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "server device failure",
        5: "acknowledge", 6: "server device busy", 8: "memory parity error", 10: "gateway path unavailable",
        11: "gateway target device failed to respond",
    ]

    /// The failure libmodbus reported through errno.
    static func last(_ what: String) -> WireFailure {
        let e = iotc_modbus_errno()
        let text = String(cString: modbus_strerror(e))
        let base = Int32(MODBUS_ENOBASE)
        switch e {
        case base + 1...base + 11:
            let code = Int(e - base)
            return WireFailure(kind: .exception, exception: code, detail: "\(what): exception \(code) (\(exceptionNames[code] ?? text))")
        case base + 12: return WireFailure(kind: .crc, detail: "\(what): bad CRC")
        case base + 13...base + 17: return WireFailure(kind: .malformed, detail: "\(what): \(text)")
        case ETIMEDOUT: return WireFailure(kind: .timeout, detail: "\(what): no response in time")
        default: return WireFailure(kind: .connection, detail: "\(what): \(text)")
        }
    }
}

/// One libmodbus context: a TCP connection or an open serial line. Used from its link's thread only.
final class Wire {
    private var ctx: OpaquePointer?
    let link: Link
    let serial: SerialSettings?

    init(link: Link, serial: SerialSettings?) {
        self.link = link
        self.serial = serial
    }

    deinit { close() }

    var isOpen: Bool { ctx != nil }

    func open(timeout: Double) throws(WireFailure) {
        close()
        let c: OpaquePointer?
        switch link {
        case .tcp(let host, let port):
            c = modbus_new_tcp_pi(host, String(port))
        case .serial(let port):
            let s = serial ?? SerialSettings(baud: 9600, parity: "N", dataBits: 8, stopBits: 1)
            c = modbus_new_rtu(port, Int32(s.baud), CChar(s.parity.asciiValue ?? 78), Int32(s.dataBits), Int32(s.stopBits))
        }
        guard let c else { throw WireFailure.last("cannot set up \(link)") }
        setTimeout(c, timeout)
        guard modbus_connect(c) == 0 else {
            let failure = WireFailure.last("cannot connect to \(link)")
            modbus_free(c)
            throw WireFailure(kind: .connection, detail: failure.detail)
        }
        ctx = c
    }

    func close() {
        guard let c = ctx else { return }
        modbus_close(c)
        modbus_free(c)
        ctx = nil
    }

    private func setTimeout(_ c: OpaquePointer, _ seconds: Double) {
        let whole = UInt32(seconds)
        modbus_set_response_timeout(c, whole, UInt32((seconds - Double(whole)) * 1_000_000))
    }

    /// Addresses the next requests to `unit` with this response timeout.
    func target(unit: Int, timeout: Double) {
        guard let c = ctx else { return }
        modbus_set_slave(c, Int32(unit))
        setTimeout(c, timeout)
    }

    /// After a timeout or a bad frame, drops whatever is still arriving so that it is not taken for
    /// the next answer.
    private func recover(_ f: WireFailure) -> WireFailure {
        if f.closesConnection { close() } else if let c = ctx { modbus_flush(c) }
        return f
    }

    private func context(_ what: String) throws(WireFailure) -> OpaquePointer {
        guard let c = ctx else { throw WireFailure(kind: .connection, detail: "\(what): not connected to \(link)") }
        return c
    }

    /// Reads registers into `words` (count of them) or bits into `bits`.
    func read(_ r: ReadRequest, words: inout [UInt16], bits: inout [UInt8]) throws(WireFailure) {
        let what = "reading \(r.description)"
        let c = try context(what)
        let n: Int32
        switch r.table {
        case .coil, .discrete_input:
            if bits.count < r.count { bits = [UInt8](repeating: 0, count: r.count) }
            n = bits.withUnsafeMutableBufferPointer { b in
                r.table == .coil ? modbus_read_bits(c, Int32(r.address), Int32(r.count), b.baseAddress)
                    : modbus_read_input_bits(c, Int32(r.address), Int32(r.count), b.baseAddress)
            }
        case .holding, .input:
            if words.count < r.count { words = [UInt16](repeating: 0, count: r.count) }
            n = words.withUnsafeMutableBufferPointer { w in
                r.table == .holding ? modbus_read_registers(c, Int32(r.address), Int32(r.count), w.baseAddress)
                    : modbus_read_input_registers(c, Int32(r.address), Int32(r.count), w.baseAddress)
            }
        }
        if n < 0 { throw recover(WireFailure.last(what)) }
        if Int(n) != r.count { throw recover(WireFailure(kind: .malformed, detail: "\(what): \(n) values in the answer, not \(r.count)")) }
    }

    func writeBits(address: Int, _ values: [Bool]) throws(WireFailure) {
        let what = "writing coil\(values.count == 1 ? "" : "s") \(address)"
        let c = try context(what)
        let r: Int32 = values.count == 1 ? modbus_write_bit(c, Int32(address), values[0] ? 1 : 0)
            : values.map { $0 ? UInt8(1) : 0 }.withUnsafeBufferPointer { modbus_write_bits(c, Int32(address), Int32(values.count), $0.baseAddress) }
        if r < 0 { throw recover(WireFailure.last(what)) }
    }

    /// One register with function 6, several with function 16.
    func writeRegisters(address: Int, _ words: [UInt16]) throws(WireFailure) {
        let what = "writing holding register\(words.count == 1 ? "" : "s") \(address)"
        let c = try context(what)
        let r: Int32 = words.count == 1 ? modbus_write_register(c, Int32(address), words[0])
            : words.withUnsafeBufferPointer { modbus_write_registers(c, Int32(address), Int32(words.count), $0.baseAddress) }
        if r < 0 { throw recover(WireFailure.last(what)) }
    }

    func readHolding(_ address: Int) throws(WireFailure) -> UInt16 {
        var words = [UInt16](repeating: 0, count: 1), bits: [UInt8] = []
        try read(ReadRequest(table: .holding, address: address, count: 1, fields: []), words: &words, bits: &bits)
        return words[0]
    }
}
