/// Sensor Measurement Lists (RFC 8428) in JSON and CBOR: a pack of records resolved against their base
/// fields. CoAP devices send it as telemetry and LwM2M clients as reads and notifications.
public enum SenML {
    /// One resolved record: its full name (base name + name), value, unit and time.
    public struct Record: Sendable, Equatable {
        public enum Value: Sendable, Equatable {
            case number(Double)
            case string(String)
            case bool(Bool)
            case data([UInt8])
        }

        public var name: String
        public var value: Value?
        public var sum: Double?
        public var unit: String?
        /// Seconds since the Unix epoch; values under 2^28 are relative to now (RFC 8428 §4.5.3).
        public var time: Double
        public var updateTime: Double?

        public init(name: String, value: Value? = nil, sum: Double? = nil, unit: String? = nil, time: Double = 0, updateTime: Double? = nil) {
            self.name = name
            self.value = value
            self.sum = sum
            self.unit = unit
            self.time = time
            self.updateTime = updateTime
        }
    }

    /// An invalid pack: the record (counting from 0) and what is wrong.
    public struct Error: Swift.Error, Sendable, Equatable, CustomStringConvertible {
        public var record: Int
        public var reason: String
        public var description: String { "SenML record \(record): \(reason)" }
    }

    /// The labels of both encodings: JSON names, and CBOR integer keys as their decimal text.
    private static let labels: [String: String] = [
        "-1": "bver", "-2": "bn", "-3": "bt", "-4": "bu", "-5": "bv", "-6": "bs",
        "0": "n", "1": "u", "2": "v", "3": "vs", "4": "vb", "5": "s", "6": "t", "7": "ut", "8": "vd",
    ]

    /// Resolves a decoded pack (an array of maps, from `JSON.decode` or `CBOR.decode`). `base64Data`:
    /// in JSON, `vd` is base64url text; in CBOR it is a byte string.
    public static func resolve(_ pack: IoTCPluginKit.Value, base64Data: Bool) throws(Error) -> [Record] {
        guard case .array(let items) = pack else { throw Error(record: 0, reason: "a SenML pack is an array of records") }
        var baseName = "", baseTime = 0.0, baseUnit: String?, baseValue = 0.0, baseSum = 0.0
        var records: [Record] = []
        records.reserveCapacity(items.count)
        for (i, item) in items.enumerated() {
            guard case .object(let fields) = item else { throw Error(record: i, reason: "a record is a map") }
            var name = "", unit: String?, time = 0.0, updateTime: Double?, sum: Double?
            var value: Record.Value?
            var values = 0
            func number(_ v: IoTCPluginKit.Value, _ label: String) throws(Error) -> Double {
                guard let d = v.number, d.isFinite else { throw Error(record: i, reason: "'\(label)' must be a number") }
                return d
            }
            func text(_ v: IoTCPluginKit.Value, _ label: String) throws(Error) -> String {
                guard case .string(let s) = v else { throw Error(record: i, reason: "'\(label)' must be a string") }
                return s
            }
            for (key, v) in fields {
                guard let label = labels[key] ?? (labels.values.contains(key) ? key : nil) else {
                    // Labels ending in '_' must be understood (RFC 8428 §4.4); others are extensions.
                    if key.hasSuffix("_") { throw Error(record: i, reason: "unsupported must-understand field '\(key.prefix(32))'") }
                    continue
                }
                switch label {
                case "bver":
                    guard case .int(let n) = v, n >= 1 else { throw Error(record: i, reason: "'bver' must be a positive integer") }
                    if n > 10 { throw Error(record: i, reason: "SenML version \(n) is not supported") }
                case "bn": baseName = try text(v, label)
                case "bt": baseTime = try number(v, label)
                case "bu": baseUnit = try text(v, label)
                case "bv": baseValue = try number(v, label)
                case "bs": baseSum = try number(v, label)
                case "n": name = try text(v, label)
                case "u": unit = try text(v, label)
                case "t": time = try number(v, label)
                case "ut": updateTime = try number(v, label)
                case "s": sum = try number(v, label)
                case "v": value = .number(try number(v, label)); values += 1
                case "vs": value = .string(try text(v, label)); values += 1
                case "vb":
                    guard case .bool(let b) = v else { throw Error(record: i, reason: "'vb' must be a boolean") }
                    value = .bool(b); values += 1
                case "vd":
                    if base64Data {
                        guard let bytes = Base64.decode(try text(v, label)) else { throw Error(record: i, reason: "'vd' must be base64url text") }
                        value = .data(bytes)
                    } else {
                        guard case .bytes(let b) = v else { throw Error(record: i, reason: "'vd' must be a byte string") }
                        value = .data(b)
                    }
                    values += 1
                default: break
                }
            }
            guard values <= 1 else { throw Error(record: i, reason: "a record has at most one of 'v', 'vs', 'vb' and 'vd'") }
            let full = baseName + name
            // A record of base fields only sets the bases for the records after it.
            if full.isEmpty, value == nil, sum == nil { continue }
            guard validName(full) else { throw Error(record: i, reason: "the name '\(full.prefix(64))' is not a valid SenML name") }
            if case .number(let d)? = value { value = .number(d + baseValue) }
            if let s = sum { sum = s + baseSum }
            records.append(Record(name: full, value: value, sum: sum, unit: unit ?? baseUnit, time: baseTime + time, updateTime: updateTime))
        }
        return records
    }

    /// Decodes a SenML-JSON (`application/senml+json`) or SenML-CBOR (`application/senml+cbor`) pack.
    public static func decode(_ bytes: [UInt8], cbor: Bool) throws(Error) -> [Record] {
        let pack: IoTCPluginKit.Value
        do { pack = cbor ? try CBOR.decode(bytes) : try JSON.decode(bytes) } catch {
            throw Error(record: 0, reason: "not valid \(cbor ? "CBOR" : "JSON"): \(error)")
        }
        return try resolve(pack, base64Data: !cbor)
    }

    /// Encodes records as a SenML-JSON pack (names in full, no base fields).
    public static func encodeJSON(_ records: [Record]) -> [UInt8] {
        .init(JSON.encode(.array(records.map { r in .object(Value.Object(fields(r, data: { .string(Base64.encodeURL($0)) }).map { ($0.label, $0.value) })) })))
    }

    /// Encodes records as a SenML-CBOR pack (RFC 8428 §6: integer labels, data as a byte string).
    public static func encodeCBOR(_ records: [Record]) -> [UInt8] {
        // The array's head: its length in the initial byte, or in the 1, 2 or 4 bytes after it.
        let n = records.count
        var out: [UInt8] = n < 24 ? [0x80 | UInt8(n)] : n < 0x100 ? [0x98, UInt8(n)] : n < 0x10000 ? [0x99, UInt8(n >> 8), UInt8(n & 0xFF)]
            : [0x9A, UInt8(n >> 24 & 0xFF), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)]
        for r in records {
            let f = fields(r, data: { .bytes($0) })
            out.append(0xA0 | UInt8(f.count))
            for (label, value) in f {
                CBOR.encode(.int(Int64(cborLabels[label]!)), into: &out)
                CBOR.encode(value, into: &out)
            }
        }
        return out
    }

    private static let cborLabels: [String: Int] = ["n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4, "s": 5, "t": 6, "ut": 7, "vd": 8]

    /// A record's fields in order (name, unit, value, sum, time), with data in the encoding's form.
    private static func fields(_ r: Record, data: ([UInt8]) -> IoTCPluginKit.Value) -> [(label: String, value: IoTCPluginKit.Value)] {
        var o: [(String, IoTCPluginKit.Value)] = [("n", .string(r.name))]
        if let u = r.unit { o.append(("u", .string(u))) }
        switch r.value {
        case .number(let d)?: o.append(("v", d.rounded() == d && abs(d) < 1e15 ? .int(Int64(d)) : .double(d)))
        case .string(let s)?: o.append(("vs", .string(s)))
        case .bool(let b)?: o.append(("vb", .bool(b)))
        case .data(let b)?: o.append(("vd", data(b)))
        case nil: break
        }
        if let s = r.sum { o.append(("s", .double(s))) }
        if r.time != 0 { o.append(("t", .double(r.time))) }
        if let ut = r.updateTime { o.append(("ut", .double(ut))) }
        return o
    }

    /// RFC 8428 §4.5.1: starts with a letter or digit, then letters, digits, '-', ':', '.', '/' and '_'.
    /// A leading '/' is accepted too: LwM2M names records by object path ("/3303/0/5700").
    public static func validName(_ s: String) -> Bool {
        let u = s.utf8
        guard let first = u.first, isAlnum(first) || first == UInt8(ascii: "/") else { return false }
        return u.allSatisfy { isAlnum($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "_") }
    }

    private static func isAlnum(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c | 0x20 >= 0x61 && c | 0x20 <= 0x7A)
    }
}
