import Foundation

/// The JSON line form of a message that sinks write (file, log): the envelope, with the payload inline
/// when it is valid JSON and as base64 otherwise.
public enum EnvelopeJSON {
    public static func encode(_ m: Message, into out: inout [UInt8]) {
        out.append(contentsOf: #"{"id":"#.utf8)
        JSON.encodeString(m.id, into: &out)
        if let t = m.receivedTime {
            out.append(contentsOf: #","received_at":""#.utf8)
            RFC3339Text.write(t, into: &out)
            out.append(UInt8(ascii: "\""))
        }
        if let t = m.deviceTime {
            out.append(contentsOf: #","device_time":""#.utf8)
            RFC3339Text.write(t, into: &out)
            out.append(UInt8(ascii: "\""))
        }
        out.append(contentsOf: #","tenant":"#.utf8)
        JSON.encodeString(m.tenant, into: &out)
        out.append(contentsOf: #","device":"#.utf8)
        JSON.encodeString(m.device, into: &out)
        out.append(contentsOf: #","kind":"#.utf8)
        JSON.encodeString(m.kind.name, into: &out)
        out.append(contentsOf: #","topic":"#.utf8)
        JSON.encodeString(m.topic, into: &out)
        out.append(contentsOf: #","content_type":"#.utf8)
        JSON.encodeString(m.contentType, into: &out)
        if MediaType(m.contentType) == .json, JSON.validate(m.payload) {
            out.append(contentsOf: #","payload":"#.utf8)
            // Valid JSON: copied as it is, minus surrounding white space (no line breaks inside a line).
            var body = m.payload[...]
            while let f = body.first, f == 0x20 || f == 0x0A || f == 0x0D || f == 0x09 { body = body.dropFirst() }
            while let l = body.last, l == 0x20 || l == 0x0A || l == 0x0D || l == 0x09 { body = body.dropLast() }
            if body.contains(0x0A) || body.contains(0x0D) { JSON.encode(try! JSON.decode(m.payload), into: &out) } else { out.append(contentsOf: body) }
        } else {
            out.append(contentsOf: #","payload_base64":"#.utf8)
            JSON.encodeString(Base64.encode(m.payload), into: &out)
        }
        pairs("metadata", m.metadata, &out)
        pairs("properties", m.properties, &out)
        out.append(UInt8(ascii: "}"))
    }

    private static func pairs(_ name: String, _ kv: [KeyValue], _ out: inout [UInt8]) {
        guard !kv.isEmpty else { return }
        out.append(contentsOf: ",\"\(name)\":{".utf8)
        for (i, p) in kv.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            JSON.encodeString(p.key, into: &out)
            out.append(UInt8(ascii: ":"))
            JSON.encodeString(p.value, into: &out)
        }
        out.append(UInt8(ascii: "}"))
    }
}

/// RFC 3339 UTC text for milliseconds since the epoch (`2026-01-02T03:04:05.678Z`).
public enum RFC3339Text {
    public static func format(_ ms: Int64) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(24)
        write(ms, into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends the text to `out` without building strings (it is on the per-message path).
    public static func write(_ ms: Int64, into out: inout [UInt8]) {
        let (days, rem) = ms.quotientAndRemainder(dividingBy: 86_400_000)
        let d = rem < 0 ? days - 1 : days, t = rem < 0 ? rem + 86_400_000 : rem
        // Howard Hinnant's days-to-civil algorithm.
        let z = d + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
        func digits(_ v: Int64, _ n: Int) {
            var v = v < 0 ? 0 : v
            var buf: (UInt8, UInt8, UInt8, UInt8) = (48, 48, 48, 48)
            withUnsafeMutableBytes(of: &buf) { b in
                for i in stride(from: n - 1, through: 0, by: -1) {
                    b[i] = UInt8(48 + v % 10)
                    v /= 10
                }
                out.append(contentsOf: b.prefix(n))
            }
        }
        digits(y, 4); out.append(UInt8(ascii: "-")); digits(m, 2); out.append(UInt8(ascii: "-")); digits(day, 2)
        out.append(UInt8(ascii: "T")); digits(t / 3_600_000, 2); out.append(UInt8(ascii: ":")); digits(t / 60_000 % 60, 2)
        out.append(UInt8(ascii: ":")); digits(t / 1000 % 60, 2); out.append(UInt8(ascii: ".")); digits(t % 1000, 3)
        out.append(UInt8(ascii: "Z"))
    }
}
