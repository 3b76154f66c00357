import ArgumentParser
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import IoTCKernel
import IoTCPluginKit

struct DeadLetters: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlq", abstract: "Inspect, replay and purge dead letters.",
        subcommands: [List.self, Replay.self, Purge.self])

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List dead letters (reads the data folder; works while the hub runs or not).")
        @Option(help: "Data folder.") var data = "data"
        @Flag(help: "Print JSON lines.") var json = false

        func run() throws {
            let store = try DeadLetterStore(directory: URL(fileURLWithPath: data).appendingPathComponent("dead-letters"))
            let entries = store.list()
            for e in entries {
                if json {
                    print(JSON.string(DeadLetterStore.json(e)))
                } else {
                    let place = e.sink.map { "sink \($0)" } ?? e.step.map { "step \($0)" } ?? "?"
                    print("\(e.id)  \(RFC3339.format(e.createdAt))  pipeline \(e.pipeline), \(place), attempts \(e.attempts): \(e.reason)")
                }
            }
            if !json { print("\(entries.count) dead letter(s)") }
        }
    }

    struct Replay: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Replay dead letters through the running hub (all, or the ids given).",
            discussion: "Needs an API key of the system tenant with the role operator or higher, in IOTC_API_KEY.")
        @Option(help: "Address of the running hub's API.") var api = "127.0.0.1:8080"
        @Argument(help: "Entry ids; none means all.") var ids: [String] = []

        func run() throws {
            let body = ids.isEmpty ? "{}" : JSON.string(.object(Value.Object([("ids", .array(ids.map { .string($0) }))])))
            let (status, text) = try APIClient.request("POST", "http://\(api)/v1/dead-letters/replay", body: body)
            print(text)
            if status != 200 { throw ExitCode(1) }
        }
    }

    struct Purge: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete dead letters (all, or the ids given).")
        @Option(help: "Data folder.") var data = "data"
        @Argument(help: "Entry ids; none means all.") var ids: [String] = []

        func run() throws {
            let store = try DeadLetterStore(directory: URL(fileURLWithPath: data).appendingPathComponent("dead-letters"))
            print("purged \(store.remove(ids: ids.isEmpty ? nil : ids)) dead letter(s)")
        }
    }
}

/// A small blocking HTTP client for talking to the running hub's API, with the API key from
/// IOTC_API_KEY (the environment, not an option: options show in process lists).
enum APIClient {
    static func request(_ method: String, _ url: String, body: String?) throws -> (Int, String) {
        guard let u = URL(string: url) else { throw ValidationError("invalid URL \(url)") }
        var r = URLRequest(url: u)
        r.httpMethod = method
        if let key = ProcessInfo.processInfo.environment["IOTC_API_KEY"], !key.isEmpty {
            r.setValue("Bearer \(key)", forHTTPHeaderField: "Authorization")
        }
        if let body {
            r.httpBody = Data(body.utf8)
            r.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        let result = ResultBox()
        let done = DispatchSemaphore(value: 0)
        URLSession.shared.dataTask(with: r) { data, response, error in
            result.value = (data, (response as? HTTPURLResponse)?.statusCode, error)
            done.signal()
        }.resume()
        done.wait()
        guard let (data, status, error) = result.value, error == nil, let status else {
            throw ValidationError("cannot reach the hub at \(url)")
        }
        return (status, String(decoding: data ?? Data(), as: UTF8.self))
    }

    final class ResultBox: @unchecked Sendable {
        var value: (Data?, Int?, (any Error)?)?
    }
}
