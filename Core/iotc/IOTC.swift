import ArgumentParser
import Foundation

@main
struct IOTC: AsyncParsableCommand {
    static let version = "0.1.0"
    static let configuration = CommandConfiguration(
        commandName: "iotc",
        abstract: "IoT Connect Center: a connectivity hub for devices on MQTT, HTTP, CoAP, LwM2M and Modbus.",
        version: version,
        subcommands: [Serve.self, Check.self, TestPipelines.self, Plugins.self, Docs.self, DeadLetters.self],
        defaultSubcommand: Serve.self
    )
}
