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

    /// The path with each placeholder filled from `values` ("/a/b"), or nil when one has no value.
    public func filled(_ values: [String: String]) -> String? {
        var path = ""
        for s in segments {
            switch s {
            case .literal(let l): path += "/" + l
            case .variable(let n):
                guard let v = values[n] else { return nil }
                path += "/" + v
            }
        }
        return path.isEmpty ? "/" : path
    }

    /// The match when `path` (segments, without slashes) fits the template, else nil. Empty segments
    /// never match a placeholder.
    public func match(_ path: [Substring]) -> PathMatch? {
        guard path.count == segments.count else { return nil }
        for (s, p) in zip(segments, path) {
            switch s {
            case .literal(let l): guard p == l else { return nil }
            case .variable: guard !p.isEmpty else { return nil }
            }
        }
        return PathMatch(template: self, path: path)
    }
}

/// A path that fits a template: the placeholders' values are read from it on demand (a request
/// handler asks for one or two), so that matching builds no dictionary.
public struct PathMatch: Sendable {
    let template: PathTemplate
    let path: [Substring]

    /// The value of a placeholder, or nil when the template has none of that name.
    public subscript(_ name: String) -> String? {
        for (s, p) in zip(template.segments, path) {
            if case .variable(let n) = s, n == name { return String(p) }
        }
        return nil
    }
}

public struct PathTemplateError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
}
