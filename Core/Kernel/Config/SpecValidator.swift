import Foundation
import IoTCPluginKit

/// Checks YAML against a config spec and turns it into the JSON value a component receives: defaults
/// applied, `${env:NAME}` and `${file:PATH}` resolved, durations in seconds, byte sizes in bytes.
/// Every problem is recorded with its location; a secret's value never appears in a message.
struct SpecValidator {
    var diagnostics = Diagnostics()
    /// The values of secret fields and whatever references put in the file: messages about it and its
    /// components show none of them.
    var concealed = Concealed()
    /// Folder that `${file:...}` paths are relative to.
    let baseDirectory: String
    let environment: [String: String]
    /// Report unset `${env:...}` variables as warnings (for checking files away from their secrets).
    let missingEnvironmentIsWarning: Bool
    /// The payload fields the messages carry at the step being read, when known (declared by the
    /// pipeline's `fields`, or made by a `map` step): expressions that read another are warned of.
    var payloadFields: Set<String>?
    /// Where those fields were made known, for the hint.
    var payloadFieldsOrigin = ""

    init(baseDirectory: String, environment: [String: String] = ProcessInfo.processInfo.environment, missingEnvironmentIsWarning: Bool = false) {
        self.baseDirectory = baseDirectory
        self.environment = environment
        self.missingEnvironmentIsWarning = missingEnvironmentIsWarning
    }

    /// Validates a mapping; keys in `ignoring` belong to the caller.
    mutating func object(_ node: YAMLNode, fields: [ConfigField], context: String, ignoring: Set<String> = []) -> Value.Object {
        var out = Value.Object()
        guard case .mapping(let pairs, let loc) = node else {
            if !node.isNullScalar { diagnostics.error(node.location, "\(context) should be a mapping, not a \(node.typeName)") }
            for f in fields where f.required {
                diagnostics.error(node.location, "\(context) needs field '\(f.name)'", hint: f.example.map { "for example \(f.name): \($0)" })
            }
            return defaults(fields)
        }
        let known = Set(fields.map(\.name))
        for (key, keyLoc, value) in pairs where !ignoring.contains(key) {
            guard let field = fields.first(where: { $0.name == key }) else {
                let hint = Suggest.closest(key, in: Array(known) + Array(ignoring)).map { "did you mean '\($0)'?" }
                    ?? (known.isEmpty ? "\(context) takes no fields" : "known fields: \(known.sorted().joined(separator: ", "))")
                diagnostics.error(keyLoc, "unknown field '\(key)' in \(context)", hint: hint)
                continue
            }
            if field.deprecated { diagnostics.warning(keyLoc, "field '\(key)' of \(context) is deprecated", hint: field.description) }
            if field.secret, case .scalar(let s, _, let l) = value, !s.isEmpty, !s.hasPrefix("${") {
                diagnostics.warning(l, "secret field '\(key)' of \(context) is written in the file", hint: "use ${env:NAME} or ${file:PATH}")
            }
            if let v = self.value(value, field: field, context: "field '\(key)' of \(context)") { out[key] = v }
        }
        for f in fields where out[f.name] == nil {
            if let d = f.defaultJSON, let v = try? JSON.decode(d) {
                out[f.name] = v
            } else if f.required, !pairs.contains(where: { $0.key == f.name }) {
                diagnostics.error(loc, "\(context) needs field '\(f.name)'", hint: f.example.map { "for example \(f.name): \($0)" })
            }
        }
        return out
    }

    private func defaults(_ fields: [ConfigField]) -> Value.Object {
        var out = Value.Object()
        for f in fields { if let d = f.defaultJSON, let v = try? JSON.decode(d) { out[f.name] = v } }
        return out
    }

    mutating func value(_ node: YAMLNode, field: ConfigField, context: String) -> Value? {
        value(node, type: field.type, secret: field.secret, options: field.options, context: context)
    }

    mutating func value(_ node: YAMLNode, type: FieldType, secret: Bool = false, options: [String] = [], context: String) -> Value? {
        func wrong() -> Value? {
            diagnostics.error(node.location, "\(context) should be a \(type.name), not a \(node.typeName)")
            return nil
        }
        switch type {
        case .any: return any(node)
        case .object(let fields): return .object(object(node, fields: fields, context: context))
        case .list(let element):
            let items: [YAMLNode]
            switch node {
            case .sequence(let s, _): items = s
            case .scalar where element != .any && !node.isNullScalar:
                items = [node]  // a single value where a list is expected is a list of one
            default: return wrong()
            }
            return .array(items.enumerated().compactMap { i, n in value(n, type: element, secret: secret, context: "item \(i + 1) of \(context)") })
        case .map(let element):
            guard case .mapping(let pairs, _) = node else { return wrong() }
            var o = Value.Object()
            for (k, _, v) in pairs { if let x = value(v, type: element, secret: secret, context: "'\(k)' of \(context)") { o[k] = x } }
            return .object(o)
        default: break
        }
        guard case .scalar(let raw, let quoted, let loc) = node else { return wrong() }
        guard let text = resolve(raw, at: loc, secret: secret, context: context) else { return nil }
        if secret { concealed.add(text) }
        // What a message may show of the value: nothing of a secret, or of what a reference brought in.
        let shown = secret || raw.contains("${") ? "…" : text
        switch type {
        case .string:
            if !options.isEmpty, !options.contains(text) {
                let hint = Suggest.closest(text, in: options).map { "did you mean '\($0)'?" } ?? "one of: \(options.joined(separator: ", "))"
                diagnostics.error(loc, "\(context) cannot be '\(shown)'", hint: hint)
                return nil
            }
            if !quoted, YAMLNode.isNull(text) { return wrong() }
            return .string(text)
        case .int:
            guard let i = Int64(text) else { return wrong() }
            return .int(i)
        case .float:
            guard let d = Double(text), d.isFinite else { return wrong() }
            return .double(d)
        case .bool:
            guard let b = YAMLNode.bool(text) else { return wrong() }
            return .bool(b)
        case .duration:
            guard let s = Durations.seconds(text) else {
                diagnostics.error(loc, "\(context) is not a duration: '\(shown)'", hint: "write it like 250ms, 5s, 1m or 2h")
                return nil
            }
            guard s <= Durations.longest else {
                diagnostics.error(loc, "\(context) is too long: '\(shown)'", hint: "at most 100 years: 36500d")
                return nil
            }
            return .double(s)
        case .byteSize:
            guard let b = ByteSizes.bytes(text) else {
                diagnostics.error(loc, "\(context) is not a byte size: '\(shown)'", hint: "write it like 512, 64KiB or 1MiB")
                return nil
            }
            guard b <= ByteSizes.largest else {
                diagnostics.error(loc, "\(context) is too large: '\(shown)'", hint: "at most 1 PiB: 1048576GiB")
                return nil
            }
            return .int(b)
        default: return nil
        }
    }

    /// A YAML node as a value, scalars typed by YAML's core schema.
    mutating func any(_ node: YAMLNode) -> Value {
        switch node {
        case .scalar(let s, let quoted, let loc):
            let text = resolve(s, at: loc, secret: false, context: "value") ?? s
            if quoted { return .string(text) }
            if YAMLNode.isNull(text) { return .null }
            if let b = YAMLNode.bool(text) { return .bool(b) }
            if let i = Int64(text) { return .int(i) }
            if let d = Double(text), d.isFinite, text.contains(where: { $0.isNumber }) { return .double(d) }
            return .string(text)
        case .sequence(let items, _): return .array(items.map { any($0) })
        case .mapping(let pairs, _): return .object(Value.Object(pairs.map { ($0.key, any($0.value)) }))
        }
    }

    /// Substitutes `${env:NAME}` and `${file:PATH}`; `$${` writes a literal `${`.
    mutating func resolve(_ text: String, at loc: SourceLocation, secret: Bool, context: String) -> String? {
        guard text.contains("${") else { return text }
        var out = ""
        var rest = Substring(text)
        while let r = rest.range(of: "${") {
            if r.lowerBound > rest.startIndex, rest[rest.index(before: r.lowerBound)] == "$" {
                out += rest[..<rest.index(before: r.lowerBound)] + "${"
                rest = rest[r.upperBound...]
                continue
            }
            out += rest[..<r.lowerBound]
            guard let end = rest[r.upperBound...].firstIndex(of: "}") else {
                diagnostics.error(loc, "unterminated '${' in \(context)", hint: "write ${env:NAME} or ${file:PATH}")
                return nil
            }
            let reference = rest[r.upperBound..<end]
            if reference.hasPrefix("env:") {
                let name = String(reference.dropFirst(4))
                guard let v = environment[name] else {
                    guard missingEnvironmentIsWarning else {
                        diagnostics.error(loc, "environment variable '\(name)' used by \(context) is not set")
                        return nil
                    }
                    diagnostics.warning(loc, "environment variable '\(name)' used by \(context) is not set")
                    out += "${env:\(name)}"
                    rest = rest[rest.index(after: end)...]
                    continue
                }
                out += v
                concealed.add(v)
            } else if reference.hasPrefix("file:") {
                var path = String(reference.dropFirst(5))
                if !path.hasPrefix("/") { path = baseDirectory + "/" + path }
                guard let data = FileManager.default.contents(atPath: path), let s = String(data: data, encoding: .utf8) else {
                    diagnostics.error(loc, "cannot read file '\(path)' used by \(context)")
                    return nil
                }
                let v = s.hasSuffix("\n") ? String(s.dropLast()) : s
                out += v
                concealed.add(v)
            } else {
                diagnostics.error(loc, "unknown reference '${\(secret ? "…" : String(reference))}' in \(context)", hint: "write ${env:NAME} or ${file:PATH}")
                return nil
            }
            rest = rest[rest.index(after: end)...]
        }
        return out + rest
    }
}

/// Durations as pipeline files write them.
public enum Durations {
    /// The longest duration a file may give: 100 years. Components turn durations into nanoseconds in
    /// 64 bits, add them to the clock and double backoffs up to them; under this bound none of that
    /// overflows (292 years of nanoseconds fit).
    public static let longest: Double = 36_500 * 86_400

    /// "250ms", "5s", "1m", "2h", "1h30m", "1.5s", or a plain number of seconds.
    public static func seconds(_ text: String) -> Double? {
        let t = text.trimmingCharacters(in: .whitespaces)
        if let d = Double(t), d >= 0, d.isFinite { return d }
        var total = 0.0, number = "", i = t.startIndex, sawUnit = false
        while i < t.endIndex {
            let c = t[i]
            if c.isNumber || c == "." { number.append(c); i = t.index(after: i); continue }
            var unit = ""
            while i < t.endIndex, t[i].isLetter { unit.append(t[i]); i = t.index(after: i) }
            guard let n = Double(number), n >= 0 else { return nil }
            let scale: Double
            switch unit {
            case "ms": scale = 0.001
            case "s": scale = 1
            case "m": scale = 60
            case "h": scale = 3600
            case "d": scale = 86400
            default: return nil
            }
            total += n * scale
            number = ""
            sawUnit = true
        }
        return sawUnit && number.isEmpty ? total : nil
    }
}

/// Byte sizes as pipeline files write them.
public enum ByteSizes {
    /// The largest byte size a file may give: 1 PiB. Components scale sizes by small factors (a budget
    /// of eight bodies, say); under this bound none of that overflows 64 bits.
    public static let largest: Int64 = 1 << 50

    public static func bytes(_ text: String) -> Int64? {
        let t = text.trimmingCharacters(in: .whitespaces)
        let digits = t.prefix { $0.isNumber }
        guard let n = Int64(digits) else { return nil }
        let units: [String: Int64] = ["": 1, "B": 1, "KB": 1000, "MB": 1_000_000, "GB": 1_000_000_000,
                                      "KiB": 1024, "MiB": 1 << 20, "GiB": 1 << 30]
        guard let scale = units[t.dropFirst(digits.count).trimmingCharacters(in: .whitespaces)] else { return nil }
        let (v, overflow) = n.multipliedReportingOverflow(by: scale)
        return overflow ? nil : v
    }
}
