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
        /// The component's own checks of a config (`iotc_component.check`); nil when it has none.
        public var check: (@Sendable (Value.Object) -> [ConfigFinding])?

        public init(name: String, kind: ComponentKind, plugin: String, summary: String, description: String, fields: [ConfigField],
                    check: (@Sendable (Value.Object) -> [ConfigFinding])? = nil) {
            self.name = name
            self.kind = kind
            self.plugin = plugin
            self.summary = summary
            self.description = description
            self.fields = fields
            self.check = check
        }
    }

    /// Components the kernel provides itself: in every catalog, documented and in the schema like
    /// plugins' ones.
    static let builtins = [DownlinkSink.entry, StoreSink.entry, PipelineSink.entry, AttributesSink.entry]

    public private(set) var entries: [Entry] = []
    public init(_ entries: [Entry] = []) { self.entries = entries }

    public func entry(_ kind: ComponentKind, _ name: String) -> Entry? {
        entries.first { $0.kind == kind && $0.name == name }
    }

    public func names(_ kind: ComponentKind) -> [String] { entries.filter { $0.kind == kind }.map(\.name) }
}
