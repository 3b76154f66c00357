import IoTCPluginKit

// The whole export: one line naming the plugin and its components.
@_cdecl("iotc_plugin_entry") public func iotcPluginEntry(_ v: UnsafePointer<UInt32>?, _ n: Int) -> UnsafeRawPointer? {
    Plugin.entry(name: "example", version: "1.0.0", description: "An example plugin built as its own package.", components: [TagStep.self], offered: v, count: n)
}

/// A pipeline step that adds a metadata entry to every message, and a second copy of the message when
/// asked to, to show that a step may emit several messages.
final class TagStep: Step, @unchecked Sendable {
    struct Config: Decodable {
        var key: String
        var value: String
        var duplicate: Bool
    }

    static let name = "tag"
    static let summary = "Adds a metadata entry to each message."
    static let fields: [ConfigField] = [
        ConfigField("key", .string, "Metadata key.", example: "origin", required: true),
        ConfigField("value", .string, "Metadata value.", example: "line-1", required: true),
        ConfigField("duplicate", .bool, "Also emit an untagged copy.", default: "false"),
    ]

    private let config: Config

    init(config: Config, host: PluginHost) throws {
        guard !config.key.isEmpty else { throw PluginError("key cannot be empty") }
        self.config = config
    }

    func process(_ message: Message) throws -> [Message] {
        var tagged = message
        tagged.metadata.append(KeyValue(config.key, config.value))
        return config.duplicate ? [tagged, message] : [tagged]
    }
}
