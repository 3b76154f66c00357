/// Text with `{path}` parts filled from a message, for sinks that write text (mail subjects, chat
/// messages): a path reads the JSON payload (`{rule}`, `{value.temperature}`), and `{msg.device}`,
/// `{msg.topic}`, `{msg.kind}` and `{msg.tenant}` read the envelope. A missing field is empty.
public enum TextTemplate {
    public static func fill(_ template: String, _ m: Message, payload: Value? = nil) -> String {
        let payload = payload ?? (try? JSON.decode(m.payload)) ?? .null
        var out = ""
        var rest = Substring(template)
        while let open = rest.firstIndex(of: "{"), let close = rest[open...].firstIndex(of: "}") {
            out += rest[..<open]
            let path = rest[rest.index(after: open)..<close]
            switch path {
            case "msg.device": out += m.device
            case "msg.topic": out += m.topic
            case "msg.kind": out += m.kind.name
            case "msg.tenant": out += m.tenant
            default:
                var v: Value? = payload
                for part in path.split(separator: ".") { v = v?[String(part)] }
                switch v {
                case .string(let s)?: out += s
                case .int(let i)?: out += String(i)
                case .double(let d)?: out += String(d)
                case .bool(let b)?: out += String(b)
                case nil, .null?: break
                case let x?: out += String(decoding: JSON.encode(x), as: UTF8.self)
                }
            }
            rest = rest[rest.index(after: close)...]
        }
        return out + rest
    }
}
