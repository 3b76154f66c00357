/// A resource path with placeholders, such as `/t/{device}` or `/r/{device}/{command}`: each
/// placeholder stands for one whole path segment.
public struct PathTemplate: Sendable, Equatable, CustomStringConvertible {
    enum Segment: Sendable, Equatable {
        case literal(String)
        case variable(String)
    }

    let segments: [Segment]
    public let description: String

    /// Parses a template; `variables` are the placeholder names allowed.
    public init(_ text: String, variables: Set<String>) throws(PathTemplateError) {
        description = text
        let parts = text.split(separator: "/", omittingEmptySubsequences: true)
        guard !parts.isEmpty else { throw PathTemplateError("the path '\(text)' is empty") }
        var seen = Set<String>()
        segments = try parts.map { (p: Substring) throws(PathTemplateError) -> Segment in
            if p.hasPrefix("{") && p.hasSuffix("}") {
                let name = String(p.dropFirst().dropLast())
                guard variables.contains(name) else {
                    throw PathTemplateError("unknown placeholder '{\(name)}' in '\(text)' (known: \(variables.sorted().map { "{\($0)}" }.joined(separator: ", ")))")
                }
                guard seen.insert(name).inserted else { throw PathTemplateError("'{\(name)}' appears twice in '\(text)'") }
                return .variable(name)
            }
            guard !p.contains("{"), !p.contains("}") else { throw PathTemplateError("a placeholder must be a whole segment in '\(text)'") }
            return .literal(String(p))
        }
    }

    /// Whether the template names this placeholder.
    public func has(_ variable: String) -> Bool { segments.contains(.variable(variable)) }

    /// The placeholders' values when `path` (segments, without slashes) matches, else nil. Empty
    /// segments never match a placeholder.
    public func match(_ path: [Substring]) -> [String: String]? {
        guard path.count == segments.count else { return nil }
        var values: [String: String] = [:]
        for (s, p) in zip(segments, path) {
            switch s {
            case .literal(let l): guard p == l else { return nil }
            case .variable(let name):
                guard !p.isEmpty else { return nil }
                values[name] = String(p)
            }
        }
        return values
    }
}

public struct PathTemplateError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
}
