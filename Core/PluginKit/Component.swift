import CIoTCPluginABI
import Foundation

/// What every source, sink and step has in common. A component is created from its decoded config,
/// started, used from any thread, stopped and released.
public protocol Component: AnyObject, Sendable {
    /// The configuration, decoded from JSON: defaults applied, durations in seconds, sizes in bytes.
    associatedtype Config: Decodable
    /// The name pipelines use (`http`, `mqtt_publish`).
    static var name: String { get }
    /// One line.
    static var summary: String { get }
    /// Markdown, for `iotc docs`.
    static var description: String { get }
    static var fields: [ConfigField] { get }

    init(config: Config, host: PluginHost) throws
    /// Checks a configuration beyond its field types (ranges, overlaps, references between fields),
    /// for `iotc check` and the hub's start, which locate each finding at the field its path names.
    /// The default finds nothing.
    static func check(_ config: Config) -> [ConfigFinding]
    /// Binds sockets, connects, starts threads. Throwing fails the start of the hub with the error.
    func start() throws
    /// Stops taking new work and settles what is in flight. Blocks until done.
    func stop()
}

extension Component {
    public static var description: String { "" }
    public static func check(_ config: Config) -> [ConfigFinding] { [] }
    public func start() throws {}
    public func stop() {}
}

/// A protocol adapter: receives messages from devices and submits them with `host.submit`.
public protocol Source: Component {
    /// Delivers a downlink message to a device this source holds; settle it with `ack`.
    /// Return false when this source has no downlink.
    func downlink(_ message: Message, ack: Ack) -> Bool
    /// Closes the connections of the device authenticated as `identity` (the kernel revoked its
    /// credentials); returns how many were closed. The default holds no connections.
    func disconnect(identityHandle: UInt64, reason: String) -> Int
}

extension Source {
    public func downlink(_ message: Message, ack: Ack) -> Bool { false }
    public func disconnect(identityHandle: UInt64, reason: String) -> Int { 0 }
}

/// A connector to a destination.
public protocol Sink: Component {
    /// Takes one message; settle it later with `ack`. Return false for backpressure (the kernel offers
    /// it again soon and no ack is expected).
    func write(_ message: Message, ack: Ack) -> Bool
    /// Takes several messages at once; `acks[i]` settles `messages[i]`. Returns how many it took, from
    /// the front (the rest are offered again soon). The default writes them one at a time; a sink that
    /// can take a batch under one lock or in one request implements it.
    func write(_ messages: [Message], acks: [Ack]) -> Int
}

extension Sink {
    public func write(_ messages: [Message], acks: [Ack]) -> Int {
        for i in messages.indices where !write(messages[i], ack: acks[i]) { return i }
        return messages.count
    }
}

/// A transformation: one message in, zero or more out.
public protocol Step: Component {
    func process(_ message: Message) throws -> [Message]
}

/// What a component's `check` found in its configuration.
public struct ConfigFinding: Sendable, Equatable, CustomStringConvertible {
    public enum Severity: UInt32, Sendable {
        case error = 0, warning, note
    }
    public var severity: Severity
    /// The field concerned, as keys and list indexes joined by dots (`devices.0.registers.3.address`);
    /// empty for the whole component.
    public var path: String
    public var text: String
    public var hint: String?

    public init(_ severity: Severity = .error, at path: String, _ text: String, hint: String? = nil) {
        self.severity = severity
        self.path = path
        self.text = text
        self.hint = hint
    }

    public var description: String { (path.isEmpty ? "" : "\(path): ") + text + (hint.map { " (\($0))" } ?? "") }
}

/// An error with text for the kernel's located error messages.
public struct PluginError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
