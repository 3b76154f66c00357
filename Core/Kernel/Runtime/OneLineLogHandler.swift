import Logging

/// Writes each log record as one line, whatever it quotes. Log records quote what devices and API
/// callers sent (an MQTT client id, user name or topic, a CoAP path, a key's id), and those may hold
/// line breaks: written as they are, a device could add lines of its own making to the hub's log. Here
/// control characters in the message and in metadata are escaped before the wrapped handler writes.
public struct OneLineLogHandler: LogHandler {
    private var inner: any LogHandler

    public init(_ inner: any LogHandler) { self.inner = inner }

    public func log(event: LogEvent) {
        var e = event
        e.message = Logger.Message(stringLiteral: Self.oneLine(event.message.description))
        e.metadata = event.metadata?.mapValues(Self.oneLine)
        inner.log(event: e)
    }

    public var metadataProvider: Logger.MetadataProvider? {
        get { inner.metadataProvider }
        set { inner.metadataProvider = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue.map(Self.oneLine) }
    }

    public var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue.mapValues(Self.oneLine) }
    }

    public var logLevel: Logger.Level {
        get { inner.logLevel }
        set { inner.logLevel = newValue }
    }

    static func oneLine(_ value: Logger.Metadata.Value) -> Logger.Metadata.Value {
        switch value {
        case .string(let s): .string(oneLine(s))
        case .stringConvertible(let c): .string(oneLine(c.description))
        case .array(let a): .array(a.map(oneLine))
        case .dictionary(let d): .dictionary(d.mapValues(oneLine))
        }
    }

    /// The text with its line breaks and other control characters (C0 but tab, DEL, C1, and the
    /// Unicode line and paragraph separators) written as escapes: `\n`, `\r`, `\u{1B}`.
    public static func oneLine(_ text: String) -> String {
        func isControl(_ s: Unicode.Scalar) -> Bool {
            (s.value < 0x20 && s != "\t") || (0x7F...0x9F).contains(s.value) || s.value == 0x2028 || s.value == 0x2029
        }
        guard text.unicodeScalars.contains(where: isControl) else { return text }
        var out = String.UnicodeScalarView()
        for s in text.unicodeScalars {
            guard isControl(s) else {
                out.append(s)
                continue
            }
            let escape = switch s {
            case "\n": "\\n"
            case "\r": "\\r"
            default: "\\u{" + String(s.value, radix: 16, uppercase: true) + "}"
            }
            out.append(contentsOf: escape.unicodeScalars)
        }
        return String(out)
    }
}
