import Foundation

/// The JSON line form of a message that sinks write (file, log): the envelope, with the payload inline
/// when it is valid JSON and as base64 otherwise.
public enum EnvelopeJSON {
    public static func encode(_ m: Message, into out: inout [UInt8]) {
        out.append(contentsOf: #"{"id":"#.utf8)
        JSON.encodeString(m.id, into: &out)
        if let t = m.receivedTime {
            out.append(contentsOf: #","received_at":""#.utf8)
            RFC3339.write(t, into: &out)
            out.append(UInt8(ascii: "\""))
        }
        if let t = m.deviceTime {
            out.append(contentsOf: #","device_time":""#.utf8)
            RFC3339.write(t, into: &out)
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
        pairs(#","metadata":{"#, m.metadata, &out)
        pairs(#","properties":{"#, m.properties, &out)
        out.append(UInt8(ascii: "}"))
    }

    /// `opening` is the member's name and the object's opening brace, as a literal (no text is built
    /// per message).
    private static func pairs(_ opening: StaticString, _ kv: [KeyValue], _ out: inout [UInt8]) {
        guard !kv.isEmpty else { return }
        out.append(contentsOf: UnsafeBufferPointer(start: opening.utf8Start, count: opening.utf8CodeUnitCount))
        for (i, p) in kv.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            JSON.encodeString(p.key, into: &out)
            out.append(UInt8(ascii: ":"))
            JSON.encodeString(p.value, into: &out)
        }
        out.append(UInt8(ascii: "}"))
    }
}

/// RFC 3339 times as milliseconds since the epoch, without Foundation's formatters (slow, and on the
/// per-message path). Written in UTC (`2026-01-02T03:04:05.678Z`); read with any offset.
public enum RFC3339 {
    public static func format(_ ms: Int64) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(24)
        write(ms, into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends the text to `out` without building strings (it is on the per-message path): the 24 bytes
    /// are filled in place and appended once (an append per field cost three times as much).
    public static func write(_ ms: Int64, into out: inout [UInt8]) {
        let (d, t) = split(ms)
        let (y, m, day) = civil(d)
        var text: (UInt64, UInt64, UInt64) = (0, 0, 0)  // `YYYY-MM-DDTHH:MM:SS.mmmZ`
        withUnsafeMutableBytes(of: &text) { b in
            func digits(_ v: Int64, at: Int, _ n: Int) {
                var v = v < 0 ? 0 : v
                for i in stride(from: at + n - 1, through: at, by: -1) {
                    b[i] = UInt8(truncatingIfNeeded: 48 + v % 10)
                    v /= 10
                }
            }
            digits(y, at: 0, 4); b[4] = UInt8(ascii: "-"); digits(m, at: 5, 2); b[7] = UInt8(ascii: "-"); digits(day, at: 8, 2)
            b[10] = UInt8(ascii: "T"); digits(t / 3_600_000, at: 11, 2); b[13] = UInt8(ascii: ":"); digits(t / 60_000 % 60, at: 14, 2)
            b[16] = UInt8(ascii: ":"); digits(t / 1000 % 60, at: 17, 2); b[19] = UInt8(ascii: "."); digits(t % 1000, at: 20, 3)
            b[23] = UInt8(ascii: "Z")
            out.append(contentsOf: b)
        }
    }

    /// Days since the epoch and milliseconds into that day (UTC).
    static func split(_ ms: Int64) -> (days: Int64, ms: Int64) {
        let (days, rem) = ms.quotientAndRemainder(dividingBy: 86_400_000)
        return rem < 0 ? (days - 1, rem + 86_400_000) : (days, rem)
    }

    public static func parse(_ s: String) -> Int64? {
        let c = Array(s.utf8)
        func num(_ from: Int, _ n: Int) -> Int64? {
            guard from + n <= c.count else { return nil }
            var v: Int64 = 0
            for k in from..<from + n {
                guard c[k] >= 48, c[k] <= 57 else { return nil }
                v = v * 10 + Int64(c[k] - 48)
            }
            return v
        }
        guard c.count >= 20, let y = num(0, 4), c[4] == 45, let mo = num(5, 2), c[7] == 45, let d = num(8, 2),
              c[10] == 84 || c[10] == 116 || c[10] == 32, let h = num(11, 2), c[13] == 58, let mi = num(14, 2), c[16] == 58,
              let sec = num(17, 2), (1...12).contains(mo), (1...31).contains(d), h < 24, mi < 60, sec < 61
        else { return nil }
        var i = 19, frac: Int64 = 0
        if i < c.count, c[i] == 46 {
            i += 1
            var digits = 0
            while i < c.count, c[i] >= 48, c[i] <= 57 {
                if digits < 3 { frac = frac * 10 + Int64(c[i] - 48) }
                digits += 1
                i += 1
            }
            guard digits > 0 else { return nil }
            for _ in digits..<3 where digits < 3 { frac *= 10 }
        }
        guard i < c.count else { return nil }
        var offset: Int64 = 0
        if c[i] == 90 || c[i] == 122 {
            i += 1
        } else if c[i] == 43 || c[i] == 45, let oh = num(i + 1, 2), i + 3 < c.count, c[i + 3] == 58, let om = num(i + 4, 2) {
            offset = (oh * 60 + om) * 60_000 * (c[i] == 45 ? -1 : 1)
            i += 6
        } else {
            return nil
        }
        guard i == c.count else { return nil }
        return days(fromCivil: y, mo, d) * 86_400_000 + (h * 3600 + mi * 60 + sec) * 1000 + frac - offset
    }

    // Howard Hinnant's civil-calendar algorithms.

    /// The civil date of a day since the epoch.
    static func civil(_ d: Int64) -> (year: Int64, month: Int64, day: Int64) {
        let z = d + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (m <= 2 ? 1 : 0), m, day)
    }

    /// Days since the epoch of a civil date (UTC).
    public static func days(fromCivil y0: Int64, _ m: Int64, _ d: Int64) -> Int64 {
        let y = m <= 2 ? y0 - 1 : y0
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }
}

/// Dates as e-mail writes them (RFC 5322), without Foundation's formatters.
public enum RFC5322 {
    /// An RFC 5322 date (e-mail's `Date:` header) in UTC: `Fri, 27 Nov 2026 14:09:31 +0000`.
    public static func format(_ ms: Int64) -> String {
        let (d, t) = RFC3339.split(ms)
        let (y, m, day) = RFC3339.civil(d)
        let weekdays = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]  // 1970-01-01 was a Thursday
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ v: Int64) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(weekdays[Int(((d % 7) + 7) % 7)]), \(two(day)) \(months[Int(m - 1)]) \(y) \(two(t / 3_600_000)):\(two(t / 60_000 % 60)):\(two(t / 1000 % 60)) +0000"
    }
}
