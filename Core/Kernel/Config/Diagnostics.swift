/// A place in a pipeline file.
public struct SourceLocation: Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int
    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }
    public var description: String { "\(file):\(line):\(column)" }

    /// The location `n` characters further along the same line.
    func advanced(by n: Int) -> SourceLocation { SourceLocation(file: file, line: line, column: column + n) }
}

/// One problem found in a pipeline file: where, what, and how to fix it.
public struct Diagnostic: Error, Sendable, Equatable, CustomStringConvertible {
    /// A note is information, not a problem: a plan a plugin derived from its config.
    public enum Severity: String, Sendable { case error, warning, note }
    public var location: SourceLocation
    public var severity: Severity
    public var message: String
    public var hint: String?

    public init(_ severity: Severity = .error, at location: SourceLocation, _ message: String, hint: String? = nil) {
        self.location = location
        self.severity = severity
        self.message = message
        self.hint = hint
    }

    public var description: String {
        "\(location): \(severity.rawValue): \(message)" + (hint.map { " (\($0))" } ?? "")
    }
}

/// Collects every problem instead of stopping at the first.
public struct Diagnostics: Sendable {
    public private(set) var items: [Diagnostic] = []
    public init() {}

    public var hasErrors: Bool { items.contains { $0.severity == .error } }
    public var errors: [Diagnostic] { items.filter { $0.severity == .error } }

    mutating func error(_ at: SourceLocation, _ message: String, hint: String? = nil) {
        items.append(Diagnostic(.error, at: at, message, hint: hint))
    }

    mutating func warning(_ at: SourceLocation, _ message: String, hint: String? = nil) {
        items.append(Diagnostic(.warning, at: at, message, hint: hint))
    }

    mutating func append(_ d: Diagnostic) { items.append(d) }
    mutating func append(contentsOf other: Diagnostics) { items += other.items }

    mutating func sort() {
        items.sort { ($0.location.file, $0.location.line, $0.location.column) < ($1.location.file, $1.location.line, $1.location.column) }
    }
}

/// The error thrown when a configuration has errors: all of them, in file order.
public struct ConfigurationError: Error, CustomStringConvertible, Sendable {
    public var diagnostics: [Diagnostic]
    public var description: String { diagnostics.map(\.description).joined(separator: "\n") }
}
