import ArgumentParser
import Foundation

@main
struct IOTC: AsyncParsableCommand {
    static func main() async {
        // A parent (a test runner, a supervisor's thread) may have started us with these blocked;
        // shutdown and reload must still reach us.
        var signals = sigset_t()
        sigemptyset(&signals)
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&signals, s) }
        pthread_sigmask(SIG_UNBLOCK, &signals, nil)
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }

    static let version = "0.1.0"
    static let configuration = CommandConfiguration(
        commandName: "iotc",
        abstract: "IoT Connect Center: a connectivity hub for devices on MQTT, HTTP, CoAP, LwM2M and Modbus.",
        version: version,
        subcommands: [Serve.self, Check.self, TestPipelines.self, Plugins.self, Docs.self, DeadLetters.self, Audit.self, Bench.self],
        defaultSubcommand: Serve.self
    )
}
