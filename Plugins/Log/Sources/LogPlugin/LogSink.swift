import IoTCPluginKit

@_cdecl("iotc_plugin_entry") public func iotcPluginEntry(_ v: UnsafePointer<UInt32>?, _ n: Int) -> UnsafeRawPointer? {
    Plugin.entry(name: "log", version: "0.1.0", description: "Logs messages, for debugging pipelines.", components: [LogSink.self], offered: v, count: n)
}

/// Writes each message to the hub's log and acknowledges it at once.
final class LogSink: Sink, @unchecked Sendable {
    struct Config: Decodable {
        var level: String
        var format: String
    }

    static let name = "log"
    static let summary = "Logs each message through the hub's logger (for debugging)."
    static let description = "Each message is logged as one JSON line (the envelope and payload) or as its payload text, then acknowledged."
    static let fields: [ConfigField] = [
        ConfigField("level", .string, "Log level.", default: #""info""#, options: ["trace", "debug", "info", "notice", "warning", "error"]),
        ConfigField("format", .string, "What is logged.", default: #""envelope""#, options: ["envelope", "payload"]),
    ]

    private let level: PluginHost.LogLevel
    private let format: String
    private let host: PluginHost

    init(config: Config, host: PluginHost) throws {
        let levels: [String: PluginHost.LogLevel] = ["trace": .trace, "debug": .debug, "info": .info, "notice": .notice, "warning": .warning, "error": .error]
        guard let l = levels[config.level] else { throw PluginError("unknown log level '\(config.level)'") }
        level = l
        format = config.format
        self.host = host
    }

    func write(_ message: Message, ack: Ack) -> Bool {
        var line: [UInt8] = []
        if format == "payload" { line = message.payload } else { EnvelopeJSON.encode(message, into: &line) }
        host.log(level, String(decoding: line, as: UTF8.self))
        ack.succeed()
        return true
    }
}
