import Foundation

/// The JSON line form of a message that sinks write (file, log): the envelope, with the payload inline
/// when it is valid JSON and as base64 otherwise.
public enum EnvelopeJSON {
    public static func encode(_ m: Message, into out: inout [UInt8]) {
        out.append(contentsOf: #"{"id":"#.utf8)
        JSON.encodeString(m.id, into: &out)
        if let t = m.receivedTime {
            out.append(contentsOf: #","received_at":"#.utf8)
            JSON.encodeString(RFC3339Text.format(t), into: &out)
        }
        if let t = m.deviceTime {
            out.append(contentsOf: #","device_time":"#.utf8)
            JSON.encodeString(RFC3339Text.format(t), into: &out)
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

/// RFC 3339 UTC text for milliseconds since the epoch.
public enum RFC3339Text {
    public static func format(_ ms: Int64) -> String {
        let (days, rem) = ms.quotientAndRemainder(dividingBy: 86_400_000)
        let d = rem < 0 ? days - 1 : days, t = rem < 0 ? rem + 86_400_000 : rem
        let z = d + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
        func pad(_ v: Int64, _ n: Int) -> String { let s = String(v); return String(repeating: "0", count: max(0, n - s.count)) + s }
        return "\(pad(y, 4))-\(pad(m, 2))-\(pad(day, 2))T\(pad(t / 3_600_000, 2)):\(pad(t / 60_000 % 60, 2)):\(pad(t / 1000 % 60, 2)).\(pad(t % 1000, 3))Z"
    }
}
