import IoTCPluginKit

/// Source, sink or step.
public enum ComponentKind: String, Sendable, CaseIterable {
    case source, sink, step
}

/// What the kernel knows of every component the loaded plugins offer.
public struct ComponentCatalog: Sendable {
    public struct Entry: Sendable {
        public var name: String
        public var kind: ComponentKind
        public var plugin: String
        public var summary: String
        public var description: String
        public var fields: [ConfigField]
    }

    /// Components the kernel provides itself: in every catalog, documented and in the schema like
    /// plugins' ones.
    static let builtins = [DownlinkSink.entry, StoreSink.entry]

    public private(set) var entries: [Entry] = []
    public init(_ entries: [Entry] = []) { self.entries = entries }

    public func entry(_ kind: ComponentKind, _ name: String) -> Entry? {
        entries.first { $0.kind == kind && $0.name == name }
    }

    public func names(_ kind: ComponentKind) -> [String] { entries.filter { $0.kind == kind }.map(\.name) }
}
