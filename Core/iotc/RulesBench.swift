import ArgumentParser
import Foundation
import IoTCKernel
import IoTCPluginKit

/// Rule evaluation figures: a pipeline (decode JSON, then five rules: a threshold with hysteresis, a
/// duration, a 1-minute window average, absence and a count of starts in an hour) fed by DEVICES
/// devices at RATE messages per second each, on simulated time, on this thread; the pipeline's timer
/// runs every simulated second. Prints messages and rule evaluations per second, and the memory the
/// rule state takes per device and rule.
struct RulesBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rules", abstract: "Rule evaluations per second and memory per device-rule state.")
    @OptionGroup var plugins: PluginOptions
    @Option(help: "Devices.") var devices = 10_000
    @Option(help: "Messages per second per device.") var rate = 10
    @Option(help: "Simulated seconds of traffic.") var seconds = 60

    static let pipeline = """
        sources:
          devices: { plugin: http }
        sinks:
          alerts: { plugin: log }
        pipelines:
          rules:
            from: [ devices ]
            steps:
              - decode: json
              - rule: { name: hot, raise: "temperature > 80", clear: "temperature < 75", to: [ alerts ] }
              - rule: { name: warm-for-30s, raise: "temperature > 70", for: 30s, to: [ alerts ] }
              - rule: { name: average, window: { over: 1m, of: "temperature" }, raise: "window.avg > 60", to: [ alerts ] }
              - rule: { name: silent, absent: 30s, to: [ alerts ] }
              - rule: { name: cycling, when: "state == 'start'", window: { over: 1h, of: "1" }, raise: "window.count > 500", to: [ alerts ] }
        """

    func run() throws {
        let set = plugins.load()
        let (config, _) = try HubConfigLoader(catalog: set.catalog).load(texts: [("rules-bench.yaml", Self.pipeline)])
        let clock = SimulatedTime()
        let processor = PipelineProcessor(config.pipelines[0], rules: RuleStates(), clock: { clock.now })
        // As in the hub, every alert transition is recorded in an alert book (in memory here).
        let book = AlertBook(file: nil)
        // A few payloads, encoded once: temperatures that cross the thresholds now and then, and one
        // start in a hundred messages.
        let payloads: [[UInt8]] = (0..<100).map { i in
            JSON.encode(["temperature": .double(50 + Double(i % 40)), "state": i == 0 ? "start" : "run"])
        }
        let names = (0..<devices).map { "d\($0)" }
        let stepMs = 1000.0 / Double(devices * rate)
        let start0 = clock.now
        let rss0 = residentBytes()
        var alerts = 0, errors = 0, n = 0
        let began = DispatchTime.now().uptimeNanoseconds
        for second in 0..<seconds {
            for k in 0..<(devices * rate) {
                clock.now = start0 + Int64(Double(second * 1000) + Double(k) * stepMs)
                let m = Message(kind: .telemetry, tenant: "bench", device: names[k % devices], topic: "devices/\(names[k % devices])/telemetry",
                                contentType: "application/json", payload: payloads[(k / devices + k * 7) % payloads.count], receivedTime: clock.now)
                let r = processor.process(CanonicalMessage(m, receivedTime: clock.now))
                book.record(r.alerts)
                alerts += r.outputs.count
                errors += r.ruleErrors.count
                n += 1
            }
            let ticked = processor.tick(now: start0 + Int64((second + 1) * 1000))
            book.record(ticked.alerts)
            alerts += ticked.outputs.count
        }
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - began) / 1e9
        let rss1 = residentBytes()
        let states = devices * 5
        print(String(format: "rules: %d devices x %d msg/s, 5 rules each (threshold, duration, 1-minute window average, absence, count in an hour), alerts recorded in an alert book, %d simulated s", devices, rate, seconds))
        print(String(format: "  messages        %9d in %.2f s = %.0f msg/s on one thread (target: %d msg/s)", n, elapsed, Double(n) / elapsed, devices * rate))
        print(String(format: "  rule evaluations %8.0f /s (5 per message); %d alert messages, %d rule errors", Double(n * 5) / elapsed, alerts, errors))
        print(String(format: "  rule state      %9.1f MiB resident for %d device-rule states = %.0f bytes each (the 1-minute window holds %d samples per device)",
                     Double(rss1 - rss0) / 1_048_576, states, Double(rss1 - rss0) / Double(states), 60 * rate))
    }

    private func residentBytes() -> Int {
        guard let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8), let pages = Int(s.split(separator: " ")[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}

/// The benchmark's clock, moved by hand.
final class SimulatedTime: @unchecked Sendable {
    var now: Int64 = 1_800_000_000_000
}
