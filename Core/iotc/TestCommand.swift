import ArgumentParser
import Foundation
import IoTCKernel

struct TestPipelines: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "test", abstract: "Run pipeline test files (*_test.yaml) with sources and sinks mocked.")

    @OptionGroup var plugins: PluginOptions
    @Argument(help: "Test files or folders to search for *_test.yaml.") var paths: [String] = ["pipelines"]

    func run() throws {
        let set = plugins.load()
        let files = PipelineTestRunner.testFiles(in: paths)
        guard !files.isEmpty else {
            FileHandle.standardError.write(Data("no *_test.yaml files found in \(paths.joined(separator: ", "))\n".utf8))
            throw ExitCode(1)
        }
        var passed = 0, failed = 0
        for f in files {
            do {
                for o in try PipelineTestRunner(plugins: set).run(file: f) {
                    if o.passed {
                        passed += 1
                        print("PASS \(f): \(o.name)")
                    } else {
                        failed += 1
                        print("FAIL \(f): \(o.name)")
                        for p in o.failures { print("     \(p)") }
                    }
                }
            } catch {
                failed += 1
                print("FAIL \(f): the file could not be loaded")
                for d in error.diagnostics { print("     \(d)") }
            }
        }
        print("\(passed) passed, \(failed) failed")
        if failed > 0 { throw ExitCode(1) }
    }
}
