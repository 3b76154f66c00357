import ArgumentParser
import Foundation
import IoTCKernel

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check pipeline files and report every problem with file:line:column.")

    @OptionGroup var plugins: PluginOptions
    @Flag(help: "Report unset ${env:...} variables as warnings (to check files away from their secrets).") var ignoreMissingEnv = false
    @Flag(name: .shortAndLong, help: "Also print the notes plugins derive from their configs (such as a Modbus source's request plan).") var verbose = false
    @Argument(help: "Pipeline files.") var files: [String]

    func run() throws {
        let set = plugins.load()
        do {
            let (config, warnings) = try HubConfigLoader(catalog: set.catalog, missingEnvironmentIsWarning: ignoreMissingEnv).load(files: files)
            printDiagnostics(warnings)
            if verbose { for n in config.notes { print(n) } }
            print("ok: \(config.sources.count) sources, \(config.sinks.count) sinks, \(config.pipelines.count) pipelines" + (warnings.isEmpty ? "" : ", \(warnings.count) warnings"))
        } catch {
            printDiagnostics(error.diagnostics.filter { verbose || $0.severity != .note })
            FileHandle.standardError.write(Data("\(error.diagnostics.filter { $0.severity == .error }.count) error(s)\n".utf8))
            throw ExitCode(1)
        }
    }
}

struct Plugins: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the plugins found: name, version, ABI version, components and their config fields.")

    @OptionGroup var plugins: PluginOptions
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let (libraries, errors) = PluginLoader.discover(in: plugins.searchPath)
        if json {
            print(PluginListing.json(libraries, errors: errors))
            return
        }
        print(PluginListing.text(libraries))
        for e in errors { print("error: \(e)") }
        if !errors.isEmpty { throw ExitCode(1) }
    }
}
