import Foundation
import Yams

/// A YAML node that remembers where it was written.
public indirect enum YAMLNode: Sendable {
    case scalar(String, quoted: Bool, SourceLocation)
    case mapping([(key: String, keyLocation: SourceLocation, value: YAMLNode)], SourceLocation)
    case sequence([YAMLNode], SourceLocation)

    public var location: SourceLocation {
        switch self {
        case .scalar(_, _, let l), .mapping(_, let l), .sequence(_, let l): l
        }
    }

    /// A short description of the node's type for error messages.
    var typeName: String {
        switch self {
        case .scalar(let s, let quoted, _):
            if quoted { return "string" }
            if YAMLNode.isNull(s) { return "null" }
            if YAMLNode.bool(s) != nil { return "boolean" }
            if Int64(s) != nil { return "integer" }
            if Double(s) != nil { return "number" }
            return "string"
        case .mapping: return "mapping"
        case .sequence: return "list"
        }
    }

    static func isNull(_ s: String) -> Bool { ["", "~", "null", "Null", "NULL"].contains(s) }
    static func bool(_ s: String) -> Bool? {
        switch s {
        case "true", "True", "TRUE": true
        case "false", "False", "FALSE": false
        default: nil
        }
    }

    var isMapping: Bool {
        if case .mapping = self { return true }
        return false
    }

    /// The string of a scalar.
    var string: String? {
        if case .scalar(let s, _, _) = self { return s }
        return nil
    }

    var isNullScalar: Bool {
        if case .scalar(let s, false, _) = self { return YAMLNode.isNull(s) }
        return false
    }

    /// The value of a key in a mapping.
    subscript(key: String) -> YAMLNode? {
        guard case .mapping(let pairs, _) = self else { return nil }
        return pairs.first { $0.key == key }?.value
    }

    /// The node a dotted path of keys and list indexes names (`devices.0.registers.3.address`), or
    /// the deepest one that exists on the way.
    func descendant(_ path: String) -> YAMLNode {
        var node = self
        for part in path.split(separator: ".") {
            switch node {
            case .mapping(let pairs, _):
                guard let next = pairs.first(where: { $0.key == part })?.value else { return node }
                node = next
            case .sequence(let items, _):
                guard let i = Int(part), items.indices.contains(i) else { return node }
                node = items[i]
            case .scalar:
                return node
            }
        }
        return node
    }

    /// Parses YAML text. Syntax errors and duplicate keys come back as located diagnostics.
    public static func parse(_ text: String, file: String) throws(ConfigurationError) -> YAMLNode? {
        let root: Node?
        do {
            // The basic resolver: scalars are typed by the config specs, not by YAML's implicit tags (whose
            // regular expressions would load ICU, about 3.5 MiB resident, for nothing).
            root = try Yams.compose(yaml: text, .basic)
        } catch let e as YamlError {
            throw ConfigurationError(diagnostics: [diagnostic(e, file: file)])
        } catch {
            throw ConfigurationError(diagnostics: [Diagnostic(at: .init(file: file, line: 1, column: 1), "cannot read YAML: \(error)")])
        }
        guard let root else { return nil }
        var diagnostics = Diagnostics()
        var budget = nodeLimit
        let node = convert(root, file: file, &diagnostics, budget: &budget)
        if diagnostics.hasErrors { throw ConfigurationError(diagnostics: diagnostics.items) }
        return node
    }

    private static func diagnostic(_ e: YamlError, file: String) -> Diagnostic {
        func loc(_ m: Mark) -> SourceLocation { .init(file: file, line: m.line, column: m.column) }
        switch e {
        case .scanner(let ctx, let problem, let mark, _), .parser(let ctx, let problem, let mark, _), .composer(let ctx, let problem, let mark, _):
            return Diagnostic(at: loc(mark), "invalid YAML: \(problem)", hint: ctx.map { "\($0.text) at \($0.mark.line):\($0.mark.column)" })
        case .reader(let problem, _, _, _):
            return Diagnostic(at: .init(file: file, line: 1, column: 1), "cannot read YAML: \(problem)", hint: "the file must be UTF-8 text")
        case .duplicatedKeysInMapping(let duplicates, let ctx):
            return Diagnostic(at: loc(ctx.mark), "duplicate key \(duplicates.map { "'\($0)'" }.joined(separator: ", "))",
                              hint: "each key may appear once in a mapping")
        default:
            return Diagnostic(at: .init(file: file, line: 1, column: 1), "invalid YAML: \(e)")
        }
    }

    /// The most nodes a file may stand for. An alias repeats its anchor's nodes, so a few lines of
    /// aliases of aliases ("billion laughs") could otherwise stand for billions of them, and take the
    /// hub's memory while it reads the file.
    static let nodeLimit = 250_000

    private static func convert(_ node: Node, file: String, _ d: inout Diagnostics, budget: inout Int) -> YAMLNode {
        let loc = node.mark.map { SourceLocation(file: file, line: $0.line, column: $0.column) }
            ?? SourceLocation(file: file, line: 1, column: 1)
        // `budget` is the nodes left, and -1 once one too many was met (reported once, then nothing more is read).
        guard budget > 0 else {
            if budget == 0 {
                d.error(loc, "the file stands for more than \(nodeLimit) YAML nodes", hint: "each alias repeats all of its anchor's nodes; use fewer aliases")
                budget = -1
            }
            return .scalar("", quoted: false, loc)
        }
        budget -= 1
        switch node {
        case .scalar(let s):
            return .scalar(s.string, quoted: s.style != .plain, loc)
        case .mapping(let m):
            var pairs: [(key: String, keyLocation: SourceLocation, value: YAMLNode)] = []
            for (k, v) in m where budget >= 0 {
                let keyNode = convert(k, file: file, &d, budget: &budget)
                guard case .scalar(let key, _, let keyLoc) = keyNode else {
                    d.error(keyNode.location, "mapping keys must be plain text")
                    continue
                }
                if pairs.contains(where: { $0.key == key }) {
                    d.error(keyLoc, "duplicate key '\(key)'", hint: "each key may appear once in a mapping")
                    continue
                }
                pairs.append((key, keyLoc, convert(v, file: file, &d, budget: &budget)))
            }
            return .mapping(pairs, loc)
        case .sequence(let s):
            var items: [YAMLNode] = []
            for item in s where budget >= 0 { items.append(convert(item, file: file, &d, budget: &budget)) }
            return .sequence(items, loc)
        case .alias:
            // The composer has already put the anchor's node in each alias's place.
            d.error(loc, "unresolved YAML alias")
            return .scalar("", quoted: false, loc)
        }
    }
}
