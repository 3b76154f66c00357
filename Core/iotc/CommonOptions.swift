import ArgumentParser
import Foundation
import IoTCKernel

/// Where plugins are looked for.
struct PluginOptions: ParsableArguments {
    @Option(name: .customLong("plugins"), help: "A folder to load plugins from (repeatable). Also read: IOTC_PLUGIN_PATH, then the folder of the iotc executable.")
    var directories: [String] = []

    var searchPath: [String] {
        var dirs = directories
        if let env = ProcessInfo.processInfo.environment["IOTC_PLUGIN_PATH"] { dirs += env.split(separator: ":").map(String.init) }
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().path
        dirs.append(exe)
        dirs.append(exe + "/plugins")
        return dirs
    }

    /// Loads plugins; problems with single files are printed and do not stop the others.
    func load(quiet: Bool = false) -> PluginSet {
        let (plugins, errors) = PluginLoader.discover(in: searchPath)
        if !quiet { for e in errors { FileHandle.standardError.write(Data("warning: \(e)\n".utf8)) } }
        let set = PluginSet(plugins)
        if !quiet { for c in set.conflicts { FileHandle.standardError.write(Data("warning: \(c) is offered by more than one plugin; the first loaded is used\n".utf8)) } }
        return set
    }
}

func printDiagnostics(_ d: [Diagnostic]) {
    for x in d { FileHandle.standardError.write(Data("\(x)\n".utf8)) }
}

struct ExitFailure: Error {}
