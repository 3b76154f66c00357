import ArgumentParser
import Foundation
import IoTCKernel

struct Docs: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write one Markdown page per plugin and the pipeline JSON Schema from the plugins' config specs.")

    @OptionGroup var plugins: PluginOptions
    @Option(help: "Output folder.") var out = "docs"
    @Flag(help: "Write nothing; fail when the files on disk are stale.") var check = false

    func run() throws {
        let (libraries, errors) = PluginLoader.discover(in: plugins.searchPath)
        for e in errors { FileHandle.standardError.write(Data("warning: \(e)\n".utf8)) }
        var stale: [String] = []
        for (name, content) in DocsGenerator.generate(libraries) {
            let path = (out as NSString).appendingPathComponent(name)
            let current = FileManager.default.contents(atPath: path).flatMap { String(data: $0, encoding: .utf8) }
            if current == content { continue }
            if check {
                stale.append(path)
            } else {
                try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try content.write(toFile: path, atomically: true, encoding: .utf8)
                print("wrote \(path)")
            }
        }
        if !stale.isEmpty {
            for s in stale { FileHandle.standardError.write(Data("stale: \(s)\n".utf8)) }
            FileHandle.standardError.write(Data("the generated docs are out of date: run `iotc docs`\n".utf8))
            throw ExitCode(1)
        }
        if check { print("docs are up to date") }
    }
}
