import Foundation
import Testing
@testable import IoTCKernel
import IoTCPluginKit
import IoTCStore

/// The iotc executable as users run it, with real peers.
@Suite(.serialized) struct ProcessTests {
    func pipelineFile(_ dir: TempDir, httpPort: Int, brokerPort: Int) -> String {
        dir.write("hub.yaml", """
            sources:
              devices: { plugin: http, listen: "127.0.0.1:\(httpPort)" }
            sinks:
              broker: { plugin: mqtt_publish, server: "127.0.0.1:\(brokerPort)", topic: "hub/{device}", qos: 1, reconnect_initial: 100ms, reconnect_max: 500ms }
            pipelines:
              telemetry:
                from: [ devices ]
                durable: true
                to: [ broker ]
            auth: { allow_anonymous: true }
            """)
    }

    /// The system tenant's owner key for hubs these tests start (set at first start through IOTC_BOOTSTRAP_KEY).
    static let ownerKey = "iotc_processtests_" + String(repeating: "K3y", count: 11)
    let owner = ["Authorization": "Bearer \(ProcessTests.ownerKey)"]

    /// `iotc serve FILE` as a child process, with its data folder, API port and the plugins built here;
    /// `arguments` follow, `environment` (by default the owner key these tests use) is added to the
    /// process's own, and `openFileLimit` runs it under `ulimit -n`.
    func serve(_ file: String, data: String, api: Int, store: String? = nil, arguments: [String] = [], openFileLimit: Int? = nil,
               environment: [String: String] = ["IOTC_BOOTSTRAP_KEY": ProcessTests.ownerKey]) throws -> ChildProcess {
        let command = [Build.iotc, "serve", file, "--data", data, "--api", "127.0.0.1:\(api)", "--plugins", Build.directory]
            + (store.map { ["--store", $0] } ?? []) + arguments
        guard let openFileLimit else { return try ChildProcess(command[0], Array(command.dropFirst()), environment: environment) }
        return try ChildProcess("/bin/sh", ["-c", "ulimit -n \(openFileLimit) && exec \"$0\" \"$@\""] + command, environment: environment)
    }

    @Test func deliversEveryAcknowledgedMessageAfterKillMinus9() throws {
        try requirePeer(Mosquitto.installed, "mosquitto")
        let dir = TempDir()
        let httpPort = freePort(), apiPort = freePort()
        let broker = Mosquitto()
        let file = pipelineFile(dir, httpPort: httpPort, brokerPort: broker.port)
        // The broker is down: messages are acknowledged once they are in the write-ahead log.
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        #expect(waitForPort(httpPort), "hub did not start: \(hub.log)")
        var accepted: [Int] = []
        for i in 0..<40 {
            if postJSON("http://127.0.0.1:\(httpPort)/v1/devices/d\(i % 4)/telemetry", #"{"seq":\#(i)}"#)?.status == 202 { accepted.append(i) }
        }
        #expect(accepted.count == 40)
        hub.stop(SIGKILL)

        try broker.start()
        defer { broker.stop() }
        let sub = try broker.subscribe("hub/#")
        defer { sub.stop() }
        let again = try serve(file, data: dir.path + "/data", api: apiPort)
        defer { again.stop() }
        let delivered = eventually(timeout: 30) {
            let seqs = Set(sub.log.split(separator: "\n").compactMap { line -> Int? in
                guard line.hasPrefix("hub/"), let brace = line.firstIndex(of: "{") else { return nil }
                return (try? JSON.decode(String(line[brace...])))?["seq"].flatMap { if case .int(let n) = $0 { Int(n) } else { nil } }
            })
            return seqs == Set(accepted)
        }
        #expect(delivered, "missing after restart; hub log:\n\(again.log.suffix(2000))\nsubscriber:\n\(sub.log.suffix(2000))")
        #expect(again.log.contains("replaying 40 messages from the write-ahead log"))
    }

    /// The same under load: four MQTT clients publish QoS 1 as fast as the hub acknowledges, group
    /// commits of the write-ahead log in flight, while the broker the pipeline delivers to is down (so
    /// what was acknowledged is still queued), and the hub is killed among them. Every publish that
    /// got its PUBACK is delivered after the restart.
    @Test func deliversEveryAcknowledgedMQTTPublishAfterKillMinus9UnderLoad() throws {
        try requirePeer(Mosquitto.installed, "mosquitto")
        let python = Build.packageRoot + "/.venv/bin/python"
        try #require(FileManager.default.isExecutableFile(atPath: python), "no .venv: run scripts/install-deps.sh test")
        let dir = TempDir()
        let mqttPort = freePort(), apiPort = freePort()
        let broker = Mosquitto()
        let acked = dir.path + "/acked"
        let file = dir.write("hub.yaml", """
            sources:
              devices: { plugin: mqtt, listen: "127.0.0.1:\(mqttPort)", authentication: static, anonymous: { publish: [ "#" ] } }
            sinks:
              broker: { plugin: mqtt_publish, server: "127.0.0.1:\(broker.port)", topic: "hub/out", qos: 1, reconnect_initial: 100ms, reconnect_max: 500ms }
            pipelines: { t: { from: [ "devices:load/#" ], durable: true, steps: [ { decode: json } ], to: [ broker ] } }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        #expect(waitForPort(mqttPort), "hub did not start: \(hub.log)")
        let load = try ChildProcess(python, [Build.packageRoot + "/Tests/Support/mqtt_peers.py", "publish_until_dropped", "127.0.0.1", "\(mqttPort)"],
                                    environment: ["IOTC_ACKED_FILE": acked])
        // Killed while the pipeline's queue fills (its sink's queue, 1,024, is full first; the pipeline
        // stops taking at 978 to 1,023, with the messages the sink holds for a retry).
        let taken = #/iotc_messages_in_total\{pipeline="t"\} (\d+)/#
        #expect(eventually(timeout: 30) {
            (http("GET", "http://127.0.0.1:\(apiPort)/metrics")?.body.firstMatch(of: taken)).flatMap { Int($0.1) } ?? 0 >= 900
        }, "too few messages: \(load.log)\n\(hub.log.suffix(2000))\n\(http("GET", "http://127.0.0.1:\(apiPort)/metrics")?.body.split(separator: "\n").filter { $0.contains("mqtt") || $0.contains("pipeline") } ?? [])")
        hub.stop(SIGKILL)
        #expect(eventually(timeout: 30) { !load.process.isRunning })
        #expect(load.process.terminationStatus == 0, "\(load.log)")
        var expected = Set<String>()
        for line in ((try? String(contentsOfFile: acked, encoding: .utf8)) ?? "").split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2 { expected.insert("\(parts[0]) \(parts[1])") }
        }
        // At least a load worth the name was acknowledged (not all the pipeline took: PUBACKs still on
        // their way, and those of commits in flight, are not counted by the clients).
        #expect(expected.count >= 200, "\(expected.count) acknowledged")

        try broker.start()
        defer { broker.stop() }
        let sub = try broker.subscribe("hub/#")
        defer { sub.stop() }
        func delivered() -> Set<String> {
            Set(sub.log.split(separator: "\n").compactMap { line -> String? in
                guard line.hasPrefix("hub/"), let brace = line.firstIndex(of: "{"), let m = try? JSON.decode(String(line[brace...])),
                      case .string(let client)? = m["client"], case .int(let seq)? = m["seq"] else { return nil }
                return "\(client) \(seq)"
            })
        }
        let again = try serve(file, data: dir.path + "/data", api: apiPort)
        defer { again.stop() }
        #expect(eventually(timeout: 60) { delivered().isSuperset(of: expected) },
                "\(expected.subtracting(delivered()).count) of \(expected.count) acknowledged messages missing; hub log:\n\(again.log.suffix(2000))")
    }

    @Test func drainsOnSIGTERMAndReloadsOnSIGHUP() throws {
        let dir = TempDir()
        let httpPort = freePort(), apiPort = freePort()
        let out = dir.path + "/out.jsonl"
        let file = dir.write("hub.yaml", """
            sources: { devices: { plugin: http, listen: "127.0.0.1:\(httpPort)" } }
            sinks: { out: { plugin: file, path: "\(out)" } }
            pipelines: { t: { from: [ devices ], to: [ out ] } }
            auth: { allow_anonymous: true }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        #expect(waitForPort(apiPort), "hub did not start: \(hub.log)")
        #expect(eventually { hub.log.contains("IoT Connect Center") }, "no banner: \(hub.log)")
        #expect(http("GET", "http://127.0.0.1:\(apiPort)/health")?.status == 200)
        // A broken file on SIGHUP leaves the running configuration alone.
        try "pipelines: { t: { from: [ nowhere ] } }".write(toFile: file, atomically: true, encoding: .utf8)
        hub.signal(SIGHUP)
        #expect(eventually { hub.log.contains("reload refused") })
        #expect(hub.log.contains("undefined source 'nowhere'"))
        #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/a/telemetry", #"{"n":0}"#)?.status == 202)
        for i in 1...200 { _ = postJSON("http://127.0.0.1:\(httpPort)/v1/devices/a/telemetry", #"{"n":\#(i)}"#) }
        #expect(hub.stop(SIGTERM) == 0)
        #expect(hub.log.contains("stopped"))
        #expect(jsonLines(out).count == 201)
        #expect(!hub.log.contains("Fatal error"))
        // What uses the store stops before it closes: no task fails against a closed store at the end.
        #expect(!hub.log.contains("store is closed"), "\(hub.log.suffix(500))")
    }

    /// Devices observing their commands and attributes over CoAP as the source restarts (a reload that
    /// changes it) and as the hub stops: the observations' hold on their sessions ends with the source
    /// (libcoap aborted the process, asserting that no session was still referenced).
    @Test func reloadsAndStopsWhileCoAPDevicesObserve() throws {
        let client = try #require(which("coap-client-openssl"), "coap-client-openssl is missing: run scripts/install-deps.sh test")
        let dir = TempDir()
        let udp = freePort(), apiPort = freePort()
        let out = dir.path + "/out.jsonl"
        func config(retryAfter: Int) -> String {
            """
            sources: { coap: { plugin: coap, listen: "127.0.0.1:\(udp)", retry_after: \(retryAfter)s } }
            sinks: { out: { plugin: file, path: "\(out)" } }
            pipelines: { t: { from: [ "coap:devices/+/telemetry" ], to: [ out ] } }
            auth: { allow_anonymous: true }
            """
        }
        let file = dir.write("hub.yaml", config(retryAfter: 3))
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        defer { hub.stop() }
        #expect(eventually { hub.log.contains("coap source listening") }, "hub did not start: \(hub.log)")
        let observers = try ["c/valve-1", "a/valve-2"].map { try ChildProcess(client, ["-s", "60", "-v", "7", "coap://127.0.0.1:\(udp)/\($0)"]) }
        defer { for o in observers { o.stop() } }
        #expect(eventually { observers.allSatisfy { $0.log.contains("Observe:") } }, "\(observers.map(\.log))")
        try config(retryAfter: 4).write(toFile: file, atomically: true, encoding: .utf8)
        hub.signal(SIGHUP)
        #expect(eventually { hub.log.contains("reloaded") }, "\(hub.log.suffix(2000))")
        // The new source serves, and the process is the same one.
        #expect(eventually(timeout: 5) {
            (try? coapClient(["-m", "post", "-t", "json", "-e", #"{"n":1}"#, "coap://127.0.0.1:\(udp)/t/valve-1", "-v", "7"]))?.contains("c:2.04") == true
        }, "\(hub.log.suffix(2000))")
        #expect(eventually { jsonLines(out).count == 1 })
        // Observed again, then stopped with the observations open.
        let again = try ChildProcess(client, ["-s", "60", "-v", "7", "coap://127.0.0.1:\(udp)/c/valve-3"])
        defer { again.stop() }
        #expect(eventually { again.log.contains("Observe:") }, "\(again.log)")
        #expect(hub.stop(SIGTERM) == 0, "\(hub.log.suffix(3000))")
        #expect(!hub.log.contains("Assertion") && !hub.log.contains("crashed"), "\(hub.log.suffix(3000))")
    }

    /// LwM2M clients that register and then answer nothing, so the server's own requests to them (it
    /// observes configured paths) are still under way as a reload restarts the source and as the hub
    /// stops: freeing the source's context, libcoap reports those requests unanswered, and the source
    /// that had set the handler was gone by then (the hub crashed on every such stop).
    @Test func reloadsAndStopsWhileRequestsToLwM2MClientsAreUnanswered() throws {
        let dir = TempDir()
        let udp = freePort(), apiPort = freePort()
        func config(_ v: Int) -> String {
            """
            sources: { lw: { plugin: lwm2m, listen: "127.0.0.1:\(udp)", observe: [ "/3303/0/5700", "/3/0" ], max_idle_sessions: 100\(v) } }
            sinks: { out: { plugin: file, path: "\(dir.path)/out.jsonl" } }
            pipelines: { t: { from: [ "lw:devices/+/lifecycle" ], to: [ out ] } }
            auth: { allow_anonymous: true }
            """
        }
        let file = dir.write("hub.yaml", config(1))
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        defer { hub.stop() }
        #expect(eventually { hub.log.contains("lwm2m source listening") }, "hub did not start: \(hub.log)")
        // CON POST /rd?ep=silent-N, Content-Format 40, listing the Device and Temperature objects; then silence.
        func register(_ n: Int) throws -> UDPSocket {
            let socket = try UDPSocket(port: udp)
            let ep = Array("ep=silent-\(n)".utf8)
            socket.send([0x40, 0x02, 0x10, UInt8(n), 0xB2] + Array("rd".utf8) + [0x11, 0x28, 0x30 | UInt8(ep.count)] + ep + [0xFF] + Array("</1/0>,</3/0>,</3303/0>".utf8))
            return socket
        }
        var clients = try (1...3).map(register)
        #expect(clients.allSatisfy { $0.receive()?[1] == 0x41 }, "2.01 Created for each")
        Thread.sleep(forTimeInterval: 1)  // the server's observe requests are out, waiting for answers
        try config(2).write(toFile: file, atomically: true, encoding: .utf8)
        hub.signal(SIGHUP)
        #expect(eventually { hub.log.contains("reloaded") }, "\(hub.log.suffix(2000))")
        clients += try (4...6).map(register)
        #expect(clients.suffix(3).allSatisfy { $0.receive()?[1] == 0x41 }, "2.01 Created by the new source")
        Thread.sleep(forTimeInterval: 1)
        #expect(hub.stop(SIGTERM) == 0, "\(hub.log.suffix(3000))")
        #expect(!hub.log.contains("Fatal error") && !hub.log.contains("crashed"), "\(hub.log.suffix(3000))")
    }

    /// Devices send over MQTT, HTTP and CoAP into a durable pipeline while its three sources restart
    /// with every reload (a changed setting each time): every message the hub acknowledged reaches the
    /// sink. With SwiftNIO's strict mode, which crashes where a task is handed to a loop group that has
    /// shut down (a verdict that comes after its source stopped), the hub neither crashes nor logs that.
    @Test func losesNoAcknowledgedMessageAcrossReloadsUnderLoad() throws {
        let python = Build.packageRoot + "/.venv/bin/python"
        try #require(FileManager.default.isExecutableFile(atPath: python), "no .venv: run scripts/install-deps.sh test")
        let dir = TempDir()
        let mqttPort = freePort(), httpPort = freePort(), udp = freePort(), apiPort = freePort()
        let out = dir.path + "/out.jsonl"
        func config(_ v: Int) -> String {
            """
            sources:
              coap: { plugin: coap, listen: "127.0.0.1:\(udp)", retry_after: \(v)s }
              mqtt: { plugin: mqtt, listen: "127.0.0.1:\(mqttPort)", connect_timeout: \(v)s }
              http: { plugin: http, listen: "127.0.0.1:\(httpPort)", max_body_size: \(v)KiB }
            sinks: { out: { plugin: file, path: "\(out)" } }
            pipelines:
              t:
                from: [ "coap:devices/+/telemetry", "mqtt:devices/+/telemetry", "http:devices/+/telemetry" ]
                durable: true
                steps: [ { decode: json } ]
                to: [ out ]
            auth: { allow_anonymous: true }
            """
        }
        let file = dir.write("hub.yaml", config(2))
        let hub = try serve(file, data: dir.path + "/data", api: apiPort,
                            environment: ["IOTC_BOOTSTRAP_KEY": Self.ownerKey, "SWIFTNIO_STRICT": "1"])
        defer { hub.stop() }
        #expect(waitForPort(mqttPort) && waitForPort(httpPort), "hub did not start: \(hub.log)")
        let acked = dir.path + "/acked.json"
        let load = try ChildProcess(python, [Build.packageRoot + "/Tests/Support/acked_load.py", "10", "\(mqttPort)", "\(httpPort)", "\(udp)", acked])
        for v in 3...8 {
            Thread.sleep(forTimeInterval: 1.4)
            try config(v).write(toFile: file, atomically: true, encoding: .utf8)
            hub.signal(SIGHUP)
        }
        #expect(eventually(timeout: 30) { !load.process.isRunning }, "\(load.log)")
        #expect(hub.log.components(separatedBy: "reloaded").count - 1 == 6, "\(hub.log.suffix(3000))")
        #expect(hub.stop(SIGTERM) == 0, "\(hub.log.suffix(3000))")
        #expect(!hub.log.contains("Fatal error") && !hub.log.contains("EventLoop that has already shut down"), "\(hub.log.suffix(3000))")
        let delivered = Set(jsonLines(out).compactMap { $0["payload"]?["id"]?.string })
        let sent = try #require(try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: acked))) as? [String: [String]], "\(load.log)")
        for kind in ["mqtt", "http", "coap"] {
            let ids = sent[kind] ?? []
            #expect(ids.count >= 50, "\(kind): only \(ids.count) acknowledged: \(load.log)")
            let missing = ids.filter { !delivered.contains($0) }
            #expect(missing.isEmpty, "\(kind): \(missing.count) of \(ids.count) acknowledged messages missing, e.g. \(missing.prefix(5))")
        }
    }

    /// Two reloads through the API while a sink they replace waits on an endpoint that does not answer
    /// (each reload waits up to 30 s for it): the API still answers at once. The reloads ran on the
    /// async tasks' pool, one thread per core, and held all of it on this machine (/health took 30 s).
    @Test func answersWhileReloadsWaitForASlowSink() throws {
        let silent = try #require(SilentServer())
        let dir = TempDir()
        let httpPort = freePort(), apiPort = freePort()
        func config(_ path: String) -> String {
            """
            sources: { devices: { plugin: http, listen: "127.0.0.1:\(httpPort)" } }
            sinks: { hook: { plugin: webhook, url: "http://127.0.0.1:\(silent.port)/\(path)", timeout: 60s } }
            pipelines: { t: { from: [ devices ], to: [ hook ] } }
            auth: { allow_anonymous: true }
            """
        }
        let file = dir.write("hub.yaml", config("a"))
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        defer { hub.stop(SIGKILL) }
        #expect(waitForPort(httpPort), "hub did not start: \(hub.log)")
        for i in 0..<3 { #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/d/telemetry", #"{"n":\#(i)}"#)?.status == 202) }
        Thread.sleep(forTimeInterval: 0.5)
        let api = "http://127.0.0.1:\(apiPort)"
        for path in ["b", "c"] {
            try config(path).write(toFile: file, atomically: true, encoding: .utf8)
            Thread { _ = http("POST", "\(api)/v1/pipelines/reload", headers: self.owner, timeout: 90) }.start()
            Thread.sleep(forTimeInterval: 0.5)
        }
        let asked = Date()
        #expect(http("GET", "\(api)/health", timeout: 40)?.status == 200)
        #expect(Date().timeIntervalSince(asked) < 5, "the API took \(Date().timeIntervalSince(asked)) s to answer")
    }

    /// A plugin's log line that quotes a value a reference brought in shows "…" in its place.
    @Test func pluginLogLinesConcealReferencedValues() throws {
        let dir = TempDir()
        let httpPort = freePort(), apiPort = freePort()
        let file = dir.write("hub.yaml", """
            sources: { devices: { plugin: http, listen: "${env:IOTC_TEST_LISTEN}" } }
            sinks: { out: { plugin: log } }
            pipelines: { p: { from: [ devices ], to: [ out ] } }
            auth: { allow_anonymous: true }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort,
                            environment: ["IOTC_BOOTSTRAP_KEY": Self.ownerKey, "IOTC_TEST_LISTEN": "127.0.0.1:\(httpPort)"])
        defer { hub.stop() }
        #expect(waitForPort(httpPort), "hub did not start: \(hub.log)")
        #expect(eventually { hub.log.contains("http source listening on …") }, "\(hub.log)")
        #expect(!hub.log.contains("127.0.0.1:\(httpPort)"), "\(hub.log)")
    }

    /// A sink that starts failing is logged with its plugin's reason, and the reason is concealed like the
    /// sink's other messages: here the file sink's path came from the environment, and the disk is full.
    @Test func logsASinksFirstFailureWithItsReasonConcealed() throws {
        try #require(FileManager.default.fileExists(atPath: "/dev/full"), "no /dev/full")
        let dir = TempDir()
        let httpPort = freePort(), apiPort = freePort()
        let file = dir.write("hub.yaml", """
            sources: { devices: { plugin: http, listen: "127.0.0.1:\(httpPort)" } }
            sinks: { archive: { plugin: file, path: "${env:IOTC_TEST_ARCHIVE}", retry: { initial_backoff: 10ms, max_backoff: 20ms } } }
            pipelines: { p: { from: [ devices ], to: [ archive ] } }
            auth: { allow_anonymous: true }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort,
                            environment: ["IOTC_BOOTSTRAP_KEY": Self.ownerKey, "IOTC_TEST_ARCHIVE": "/dev/full"])
        defer { hub.stop() }
        #expect(waitForPort(httpPort), "hub did not start: \(hub.log)")
        #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/d/telemetry", #"{"n":1}"#)?.status == 202)
        #expect(eventually { hub.log.contains("sink 'archive' failed a write and retries it with backoff: write to … failed: No space left on device") },
                "\(hub.log.suffix(1000))")
        // Retried every 20 ms since, and logged once.
        usleep(300_000)
        #expect(hub.log.components(separatedBy: "sink 'archive' failed a write").count == 2, "\(hub.log.suffix(1000))")
        #expect(!hub.log.contains("/dev/full"), "\(hub.log.suffix(1000))")
    }

    /// Operators tell the hub's threads apart in `top -H` and `ps -L` by name: Linux keeps 15 bytes of it.
    @Test func namesItsThreadsAfterTheirPipelinesAndSinks() throws {
        let dir = TempDir()
        let httpPort = freePort(), apiPort = freePort()
        let file = dir.write("hub.yaml", """
            sources: { devices: { plugin: http, listen: "127.0.0.1:\(httpPort)" } }
            sinks: { archive: { plugin: file, path: "\(dir.path)/out.jsonl", sync: every_batch } }
            pipelines: { telemetry: { from: [ devices ], durable: true, to: [ archive ] } }
            auth: { allow_anonymous: true }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        defer { hub.stop() }
        #expect(waitForPort(httpPort), "hub did not start: \(hub.log)")
        let pid = hub.process.processIdentifier
        let names = Set(((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []).compactMap {
            (try? String(contentsOfFile: "/proc/\(pid)/task/\($0)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        })
        for expected in ["pipe-telemetry", "sink-archive", "wal-telemetry", "fsync-out.jsonl"] {
            #expect(names.contains(expected), "no thread named \(expected) among \(names.sorted())")
        }
        #expect(WorkerThread.osName("pipe-a-rather-long-name") == "pipe-a-rather-l")
        #expect(WorkerThread.osName("sink-é-ééééééé") == "sink-é-ééé")  // 14 bytes: cut between characters, not inside one
    }

    /// Out of file descriptors (the hub runs with an open-file limit of 128 and clients hold more
    /// connections than that), a listener does not spin on the accept that fails: the hub uses next to
    /// no CPU, says why in its log, and takes new clients again once descriptors are free. Before, the
    /// listener took a core, tens of thousands of failed accepts a second (the HTTP source's listener
    /// and the operator API's have the same guard; the API's listener spun as well, and kept spinning
    /// when the server's own backoff handler was left to it).
    @Test func aListenerOutOfFileDescriptorsWaitsInsteadOfSpinning() throws {
        let dir = TempDir()
        let mqttPort = freePort(), httpPort = freePort(), apiPort = freePort()
        let file = dir.write("hub.yaml", """
            sources:
              devices: { plugin: mqtt, listen: "127.0.0.1:\(mqttPort)", authentication: static, anonymous: { publish: [ "#" ] }, connect_timeout: 60s }
              web: { plugin: http, listen: "127.0.0.1:\(httpPort)" }
            sinks:
              out: { plugin: file, path: "\(dir.path)/out.jsonl" }
            pipelines: { t: { from: [ "devices:t/#", "web" ], to: [ out ] } }
            auth: { allow_anonymous: true }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort, openFileLimit: 128)
        defer { _ = hub.stop(timeout: 5) }
        #expect(waitForPort(mqttPort) && waitForPort(httpPort), "hub did not start: \(hub.log)")
        func cpuTicks() -> Int {
            let fields = ((try? String(contentsOfFile: "/proc/\(hub.process.processIdentifier)/stat", encoding: .utf8)) ?? "")
                .split(separator: ")").last?.split(separator: " ") ?? []
            return fields.count > 12 ? (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0) : 0
        }
        var held = (0..<160).compactMap { _ in RawSocket(port: mqttPort) }
        #expect(held.count == 160)
        #expect(eventually(timeout: 10) { hub.log.contains("mqtt: cannot accept connections") }, "\(hub.log.suffix(1500))")
        // Out of descriptors now (for a minute: the MQTT connections it took send no CONNECT, and
        // connect_timeout is 60 s): the API's listener cannot accept either.
        held += (0..<10).compactMap { _ in RawSocket(port: apiPort) }
        #expect(held.count == 170)
        usleep(500_000)
        let before = cpuTicks()
        usleep(2_000_000)
        let used = cpuTicks() - before
        #expect(used < 60, "\(used) ticks of CPU in 2 s while out of descriptors (a spinning listener takes about 200)")
        #expect(eventually(timeout: 10) { hub.log.contains("api: cannot accept connections") }, "\(hub.log.suffix(1500))")
        // Freed: the hub first accepts and closes what waited in the backlog, then new clients get in.
        held.removeAll()
        let mosquittoPub = try #require(which("mosquitto_pub"), "mosquitto-clients is missing: run scripts/install-deps.sh test")
        #expect(eventually(timeout: 15) {
            (try? run(mosquittoPub, ["-h", "127.0.0.1", "-p", "\(mqttPort)", "-q", "1", "-t", "t/after", "-m", #"{"n":1}"#]))?.0 == 0
        }, "\(hub.log.suffix(1500))")
        #expect(eventually { jsonLines(dir.path + "/out.jsonl").contains { $0["topic"] == "t/after" } })
        #expect(eventually {
            http("POST", "http://127.0.0.1:\(httpPort)/v1/devices/d1/telemetry", body: Array(#"{"n":2}"#.utf8), headers: ["Content-Type": "application/json"])?.status == 202
        })
        let metrics = http("GET", "http://127.0.0.1:\(apiPort)/metrics")?.body ?? ""
        #expect(metrics.contains("iotc_accept_failures_total{listener=\"api\"}"), "\(metrics.split(separator: "\n").filter { $0.contains("accept") })")
    }

    /// Failed device authentications are all counted, but logged and audited at most once a second
    /// per address (a burst of 5): a client hammering wrong credentials floods neither.
    @Test func failedAuthenticationsDoNotFloodTheLog() throws {
        let dir = TempDir()
        let mqttPort = freePort(), apiPort = freePort()
        let file = dir.write("hub.yaml", """
            sources: { broker: { plugin: mqtt, listen: "127.0.0.1:\(mqttPort)", authentication: hub } }
            sinks: { out: { plugin: log } }
            pipelines: { t: { from: [ broker ], to: [ out ] } }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        defer { hub.stop() }
        #expect(waitForPort(apiPort), "\(hub.log)")
        let body = mqttString("MQTT") + [4, 0xC2, 0, 60] + mqttString("d1") + mqttString("d1") + mqttString("wrong")
        for _ in 0..<20 {
            let socket = try #require(RawSocket(port: mqttPort))
            socket.send([0x10, UInt8(body.count)] + body)
            #expect(socket.readBytes(4, timeout: 3) == [0x20, 0x02, 0x00, 0x04], "CONNACK 4, bad user name or password")
        }
        #expect(eventually {
            http("GET", "http://127.0.0.1:\(apiPort)/metrics")?.body.contains("iotc_auth_failures_total 20") == true
        }, "\(http("GET", "http://127.0.0.1:\(apiPort)/metrics")?.body.split(separator: "\n").filter { $0.contains("auth_failures") } ?? [])")
        let logged = hub.log.components(separatedBy: "device authentication failed").count - 1
        #expect((5...7).contains(logged), "\(logged) lines logged")
        let audited = http("GET", "http://127.0.0.1:\(apiPort)/v1/audit?action=device.auth.failed", headers: owner)?.body ?? ""
        #expect((5...7).contains(audited.components(separatedBy: "device.auth.failed").count - 1), "\(audited.prefix(300))")
    }

    /// The operator API closes a connection that sends no request, or none whole, within
    /// --api-idle-timeout; a kept-alive connection that keeps asking is served.
    @Test func theAPIClosesIdleConnections() throws {
        let dir = TempDir()
        let apiPort = freePort()
        let file = dir.write("hub.yaml", "sinks: { out: { plugin: log } }\n")
        let hub = try serve(file, data: dir.path + "/data", api: apiPort, arguments: ["--api-idle-timeout", "1"])
        defer { hub.stop() }
        #expect(waitForPort(apiPort), "\(hub.log)")
        let silent = try #require(RawSocket(port: apiPort)), trickling = try #require(RawSocket(port: apiPort)), busy = try #require(RawSocket(port: apiPort))
        let began = Date()
        for byte in "GET /health HTTP/1.1\r\nHost: x\r\n".utf8.prefix(15) {
            trickling.send([byte])
            busy.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(busy.readResponses(1, timeout: 2).first?.hasPrefix("HTTP/1.1 200") == true)
            usleep(150_000)
        }
        #expect(silent.isClosed(timeout: 2) && trickling.isClosed(timeout: 2), "closed within the idle time-out")
        #expect(Date().timeIntervalSince(began) < 5)
        busy.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(busy.readResponses(1, timeout: 2).first?.hasPrefix("HTTP/1.1 200") == true, "a connection in use stays")
    }

    @Test func checksAndAppliesPipelineFilesThroughTheAPI() throws {
        let dir = TempDir()
        let httpPort = freePort(), apiPort = freePort()
        let out = dir.path + "/out.jsonl"
        let original = """
            sources: { devices: { plugin: http, listen: "127.0.0.1:\(httpPort)" } }
            sinks: { out: { plugin: file, path: "\(out)" } }
            pipelines: { t: { from: [ devices ], to: [ out ] } }
            auth: { allow_anonymous: true }
            """
        let file = dir.write("hub.yaml", original)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        defer { hub.stop() }
        let api = "http://127.0.0.1:\(apiPort)"
        #expect(waitForPort(httpPort) && eventually { http("GET", "\(api)/health")?.status == 200 }, "\(hub.log)")
        func send(_ method: String, _ path: String, _ text: String) -> HTTPResult {
            http(method, api + path, body: Array(text.utf8), headers: owner.merging(["Content-Type": "application/yaml"]) { a, _ in a })
                ?? HTTPResult(status: 0, headers: [:], body: "")
        }
        #expect(http("GET", "\(api)/v1/pipelines", headers: owner)?.body.contains(#""files":["hub.yaml"]"#) == true)
        // A broken text: every problem with its place, and nothing changes.
        let broken = original.replacingOccurrences(of: "from: [ devices ]", with: "from: [ nowhere ]")
        let checked = send("POST", "/v1/pipelines/validate", broken)
        #expect(checked.status == 200 && checked.body.contains(#""valid":false"#) && checked.body.contains("hub.yaml:3:")
                && checked.body.contains("undefined source 'nowhere'"), "\(checked.body)")
        #expect(send("PUT", "/v1/pipelines/files/hub.yaml", broken).status == 422)
        #expect(try String(contentsOfFile: file, encoding: .utf8) == original)
        #expect(send("PUT", "/v1/pipelines/files/..%2Fhub.yaml", original).status == 404)
        // A good one: valid, then written (the old one kept) and running, without a restart.
        let filtered = original.replacingOccurrences(of: "to: [ out ]", with: #"steps: [ { decode: json }, { filter: "n > 1" } ], to: [ out ]"#)
        #expect(send("POST", "/v1/pipelines/validate?file=hub.yaml", filtered).body.contains(#""valid":true"#))
        #expect(send("PUT", "/v1/pipelines/files/hub.yaml", filtered).status == 200)
        #expect(try String(contentsOfFile: file, encoding: .utf8) == filtered && String(contentsOfFile: file + ".bak", encoding: .utf8) == original)
        for n in [1, 2] { #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/a/telemetry", #"{"n":\#(n)}"#)?.status == 202) }
        #expect(eventually { jsonLines(out).count == 1 } && jsonLines(out).first?["payload"]?["n"] == 2, "\(jsonLines(out))")
        #expect(http("GET", "\(api)/v1/audit?action=pipelines.apply", headers: owner)?.body.contains(#""target":"hub.yaml""#) == true)
    }

    @Test func exportsMQTTServerMetrics() throws {
        let dir = TempDir()
        let mqttPort = freePort(), apiPort = freePort()
        let file = dir.write("hub.yaml", """
            sources: { devices: { plugin: mqtt, listen: "127.0.0.1:\(mqttPort)", authentication: static, anonymous: { publish: [ "#" ], subscribe: [ "#" ] } } }
            sinks: { out: { plugin: log } }
            pipelines: { t: { from: [ "devices:none/#" ], to: [ out ] } }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        #expect(waitForPort(mqttPort), "hub did not start: \(hub.log)")
        let sub = try ChildProcess("/usr/bin/env", ["mosquitto_sub", "-h", "127.0.0.1", "-p", "\(mqttPort)", "-t", "a/#"])
        for _ in 0..<3 { _ = try run("/usr/bin/env", ["mosquitto_pub", "-h", "127.0.0.1", "-p", "\(mqttPort)", "-t", "a/b", "-m", "x"]) }
        // Sockets closed before and after their CONNECT are let go (each held about 1 KiB for good).
        for i in 0..<40 {
            let socket = try #require(RawSocket(port: mqttPort))
            if i.isMultiple(of: 2) {
                socket.send([0x10, 0x0D, 0x00, 0x04] + Array("MQTT".utf8) + [0x04, 0x02, 0x00, 0x3C, 0x00, 0x01, 0x63, 0xE0, 0x00])
                _ = socket.readBytes(4)
            }
        }
        // Reported every five seconds.
        #expect(eventually(timeout: 15) {
            let text = http("GET", "http://127.0.0.1:\(apiPort)/metrics")?.body ?? ""
            return text.contains(#"iotc_mqtt_connections{plugin="mqtt",source="devices"} 1.0"#)
                && text.contains(#"iotc_mqtt_sockets{plugin="mqtt",source="devices"} 1.0"#)
                && text.contains(#"iotc_mqtt_messages_received_total{plugin="mqtt",source="devices"} 3"#)
        }, "\(http("GET", "http://127.0.0.1:\(apiPort)/metrics")?.body.split(separator: "\n").filter { $0.contains("mqtt") } ?? [])")
        sub.stop()
        hub.stop()
    }

    /// A source's max_connections: one over it is closed as it is accepted (counted, and logged at most once
    /// a second); those in are not disturbed, and a place that frees is taken again. MQTT counts its
    /// TCP and WebSocket listeners together.
    @Test func closesConnectionsOverASourcesLimit() throws {
        let dir = TempDir()
        let httpPort = freePort(), mqttPort = freePort(), wsPort = freePort(), apiPort = freePort()
        let file = dir.write("hub.yaml", """
            sources:
              devices: { plugin: http, listen: "127.0.0.1:\(httpPort)", max_connections: 2 }
              mqtt:
                plugin: mqtt
                listen: "127.0.0.1:\(mqttPort)"
                websocket: { listen: "127.0.0.1:\(wsPort)" }
                max_connections: 2
            sinks: { out: { plugin: file, path: "\(dir.path)/out.jsonl" } }
            pipelines: { t: { from: [ devices ], to: [ out ] } }
            auth: { allow_anonymous: true }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        defer { hub.stop() }
        // The sources listen before the API does. Their ports are not probed: a probe would take a place
        // until the hub saw it close.
        #expect(waitForPort(apiPort), "hub did not start: \(hub.log)")
        let post = "POST /v1/devices/d/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        let a = try #require(RawSocket(port: httpPort)), b = try #require(RawSocket(port: httpPort))
        a.send(post)
        #expect(a.readResponses(1).first?.hasPrefix("HTTP/1.1 202") == true)
        let over = try #require(RawSocket(port: httpPort))
        #expect(over.isClosed(timeout: 2), "a third connection is closed")
        b.send(post)
        #expect(b.readResponses(1).first?.hasPrefix("HTTP/1.1 202") == true, "the two in are not disturbed")
        shutdown(a.fd, Int32(SHUT_RDWR))
        var kept: [RawSocket] = []  // open until the test ends, so that each try takes a place if it can
        #expect(eventually {
            guard let c = RawSocket(port: httpPort) else { return false }
            kept.append(c)
            c.send(post)
            return c.readResponses(1, timeout: 1).first?.hasPrefix("HTTP/1.1 202") == true
        }, "the place a closed connection left is taken again")
        // MQTT: one on TCP and one on WebSocket take both places; a third, on TCP, is closed unanswered.
        let m1 = try #require(RawSocket(port: mqttPort)), m2 = try #require(RawSocket(port: wsPort))
        _ = m2
        m1.send([0x10, 0x0D, 0x00, 0x04] + Array("MQTT".utf8) + [0x04, 0x02, 0x00, 0x3C, 0x00, 0x01, 0x61])
        #expect(m1.readBytes(4, timeout: 3) == [0x20, 0x02, 0x00, 0x00], "CONNACK for the first")
        let m3 = try #require(RawSocket(port: mqttPort))
        #expect(m3.isClosed(timeout: 2))
        // HTTP: one refusal, or more when a try above came before the hub had seen the freed place.
        #expect(eventually(timeout: 10) {
            let text = http("GET", "http://127.0.0.1:\(apiPort)/metrics")?.body ?? ""
            let http = text.split(separator: "\n").first { $0.hasPrefix(#"iotc_connections_refused_total{plugin="http",source="devices"} "#) }
            return (http.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0) >= 1
                && text.contains(#"iotc_connections_refused_total{plugin="mqtt",source="mqtt"} 1"#)
        }, "\(http("GET", "http://127.0.0.1:\(apiPort)/metrics")?.body.split(separator: "\n").filter { $0.contains("refused") } ?? [])")
        #expect(hub.log.contains("http source: max_connections (2) reached; 1 connection refused so far"), "\(hub.log)")
        // A flood of refusals is counted whole but logged at the log budget's pace (a burst of 5, then one
        // line a second): 40 refusals within a second or two write a handful of lines, not 40 (the bound
        // leaves room for a slow machine, where they may take several seconds).
        let flood = (0..<40).compactMap { _ in RawSocket(port: mqttPort) }
        #expect(flood.count == 40)
        #expect(flood.allSatisfy { $0.isClosed(timeout: 2) })
        #expect(eventually(timeout: 10) {
            http("GET", "http://127.0.0.1:\(apiPort)/metrics")?.body.contains(#"iotc_connections_refused_total{plugin="mqtt",source="mqtt"} 41"#) == true
        })
        let lines = hub.log.split(separator: "\n").filter { $0.contains("mqtt source: max_connections (2) reached") }
        #expect((2...15).contains(lines.count), "\(lines.count) lines: \(lines)")
    }

    /// Only a webhook answer's status counts, and its body is not held: three answers of 256 MiB each
    /// went whole into the hub's memory before.
    @Test func aWebhookAnswersBodyIsNotHeld() throws {
        let dir = TempDir()
        let httpPort = freePort(), apiPort = freePort(), receiverPort = freePort()
        let receiver = try ChildProcess("/usr/bin/env", ["python3", Build.packageRoot + "/Tests/Support/webhook_receiver.py", "\(receiverPort)", dir.path + "/requests.jsonl"])
        defer { receiver.stop() }
        let file = dir.write("hub.yaml", """
            sources: { devices: { plugin: http, listen: "127.0.0.1:\(httpPort)" } }
            sinks: { hook: { plugin: webhook, url: "http://127.0.0.1:\(receiverPort)/big/256", timeout: 30s, max_in_flight: 1 } }
            pipelines: { t: { from: [ devices ], to: [ hook ] } }
            auth: { allow_anonymous: true }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        defer { hub.stop() }
        #expect(waitForPort(httpPort) && waitForPort(receiverPort), "\(hub.log)")
        for i in 0..<3 { #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/d/telemetry", #"{"n":\#(i)}"#)?.status == 202) }
        #expect(eventually(timeout: 30) {
            http("GET", "http://127.0.0.1:\(apiPort)/metrics")?.body.contains(#"iotc_sink_delivered_total{sink="hook"} 3"#) == true
        }, "\(hub.log.suffix(1000))")
        let status = try String(contentsOfFile: "/proc/\(hub.process.processIdentifier)/status", encoding: .utf8)
        let peak = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") }.flatMap { Int($0.split(separator: " ").dropFirst().first ?? "") } ?? 0
        #expect(peak > 0 && peak < 200 * 1024, "peak resident memory \(peak) kB")
    }

    /// An answer's status settles a delivery when it comes: a 200 whose body trickles in for longer than
    /// the sink's timeout is a delivery, not a failure to retry (which sent the message again).
    @Test func aWebhookAnswerSettlesOnItsStatus() throws {
        let dir = TempDir()
        let httpPort = freePort(), apiPort = freePort(), receiverPort = freePort()
        let requests = dir.path + "/requests.jsonl"
        let receiver = try ChildProcess("/usr/bin/env", ["python3", Build.packageRoot + "/Tests/Support/webhook_receiver.py", "\(receiverPort)", requests])
        defer { receiver.stop() }
        let file = dir.write("hub.yaml", """
            sources: { devices: { plugin: http, listen: "127.0.0.1:\(httpPort)" } }
            sinks: { hook: { plugin: webhook, url: "http://127.0.0.1:\(receiverPort)/slow/6", timeout: 1s,
                             retry: { initial_backoff: 100ms, max_backoff: 200ms } } }
            pipelines: { t: { from: [ devices ], durable: true, to: [ hook ] } }
            auth: { allow_anonymous: true }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        defer { hub.stop() }
        #expect(waitForPort(httpPort) && waitForPort(receiverPort), "\(hub.log)")
        #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/d/telemetry", #"{"n":1}"#)?.status == 202)
        #expect(eventually(timeout: 10) {
            http("GET", "http://127.0.0.1:\(apiPort)/metrics")?.body.contains(#"iotc_sink_delivered_total{sink="hook"} 1"#) == true
        }, "\(hub.log.suffix(1000))")
        // The body takes 3 s against a deadline of 1 s; a retry would have come within that time.
        Thread.sleep(forTimeInterval: 3.5)
        #expect(jsonLines(requests).count == 1, "the endpoint got \(jsonLines(requests).count) requests")
    }

    /// A webhook to an https endpoint with a private CA that wants client certificates: `tls.ca_file`
    /// makes its certificate trusted, and `tls.certificate_file`/`key_file` present ours. Without the CA,
    /// or without our certificate, nothing is delivered (retried, not sent in the clear or unverified).
    @Test func aWebhookSpeaksTLSWithAPrivateCAAndAClientCertificate() throws {
        let dir = TempDir()
        try makeTestCertificates(in: dir)
        let httpPort = freePort(), apiPort = freePort(), receiverPort = freePort()
        let requests = dir.path + "/requests.jsonl"
        let receiver = try ChildProcess("/usr/bin/env", ["python3", Build.packageRoot + "/Tests/Support/webhook_receiver.py", "\(receiverPort)", requests,
                                                         dir.path + "/cert.pem", dir.path + "/key.pem", dir.path + "/ca.pem"])
        defer { receiver.stop() }
        let endpoint = "https://127.0.0.1:\(receiverPort)"
        let file = dir.write("hub.yaml", """
            sources: { devices: { plugin: http, listen: "127.0.0.1:\(httpPort)" } }
            sinks:
              trusted: { plugin: webhook, url: "\(endpoint)/trusted", timeout: 2s,
                         tls: { ca_file: "\(dir.path)/cert.pem", certificate_file: "\(dir.path)/dev.pem", key_file: "\(dir.path)/dev.key" } }
              untrusted: { plugin: webhook, url: "\(endpoint)/untrusted", timeout: 2s,
                           tls: { certificate_file: "\(dir.path)/dev.pem", key_file: "\(dir.path)/dev.key" } }
              anonymous: { plugin: webhook, url: "\(endpoint)/anonymous", timeout: 2s, tls: { ca_file: "\(dir.path)/cert.pem" } }
            pipelines: { t: { from: [ devices ], durable: true, to: [ trusted, untrusted, anonymous ] } }
            auth: { allow_anonymous: true }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        defer { hub.stop() }
        #expect(waitForPort(httpPort) && waitForPort(receiverPort), "\(hub.log)")
        #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/d/telemetry", #"{"n":1}"#)?.status == 202)
        func metric(_ name: String, _ sink: String) -> Double {
            let text = http("GET", "http://127.0.0.1:\(apiPort)/metrics")?.body ?? ""
            let line = text.split(separator: "\n").first { $0.hasPrefix("\(name){sink=\"\(sink)\"} ") }
            return line.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
        }
        #expect(eventually(timeout: 10) {
            metric("iotc_sink_delivered_total", "trusted") == 1
                && metric("iotc_sink_retries_total", "untrusted") >= 1 && metric("iotc_sink_retries_total", "anonymous") >= 1
        }, "\(hub.log.suffix(2000))")
        #expect(metric("iotc_sink_delivered_total", "untrusted") == 0 && metric("iotc_sink_delivered_total", "anonymous") == 0)
        #expect(jsonLines(requests).compactMap { $0["path"]?.string } == ["/trusted"])
        // The stop does not wait on the failing sinks: their message stays in the write-ahead log.
        let stopping = Date()
        #expect(hub.stop() == 0)
        #expect(Date().timeIntervalSince(stopping) < 10, "the stop took \(Date().timeIntervalSince(stopping)) s")
        #expect(hub.log.contains("sink 'untrusted': 1 message that failed will be sent again from its pipeline's write-ahead log on the next start"), "\(hub.log.suffix(1000))")
    }

    @Test func fullPipelineStopsMQTTReadingWithoutLoss() throws {
        // A one-message pipeline queue: the MQTT server must hold the publisher back (stop reading and
        // offer again), never drop. The hub's refusals show that backpressure really happened.
        let dir = TempDir()
        let mqttPort = freePort(), apiPort = freePort()
        let out = dir.path + "/out.jsonl"
        let file = dir.write("hub.yaml", """
            sources: { devices: { plugin: mqtt, listen: "127.0.0.1:\(mqttPort)", authentication: static, anonymous: { publish: [ "#" ], subscribe: [ "#" ] } } }
            sinks: { out: { plugin: file, path: "\(out)" } }
            pipelines: { plant: { from: [ "devices:plant/#" ], queue_size: 1, steps: [ { decode: json } ], to: [ out ] } }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        #expect(waitForPort(mqttPort), "hub did not start: \(hub.log)")
        let python = Build.packageRoot + "/.venv/bin/python"
        try #require(FileManager.default.isExecutableFile(atPath: python), "no .venv: run scripts/install-deps.sh test")
        let script = """
            import paho.mqtt.client as mqtt
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bulk", protocol=mqtt.MQTTv5)
            c.connect("127.0.0.1", \(mqttPort)); c.loop_start()
            infos = [c.publish("plant/bulk", '{"n":%d}' % i, qos=1) for i in range(2000)]
            for i in infos: i.wait_for_publish(30)
            assert all(i.is_published() for i in infos), "not every publish was acknowledged"
            c.disconnect(); c.loop_stop()
            """
        let (code, output) = try run(python, ["-c", script])
        #expect(code == 0, "\(output)")
        #expect(eventually(timeout: 20) { jsonLines(out).count == 2000 }, "file has \(jsonLines(out).count)")
        let ns = jsonLines(out).compactMap { $0["payload"]?["n"] }
        #expect(Set(ns.map { "\($0)" }).count == 2000)
        let metrics = http("GET", "http://127.0.0.1:\(apiPort)/metrics")?.body ?? ""
        let refused = metrics.split(separator: "\n").first { $0.hasPrefix("iotc_messages_refused_total") && $0.contains("source=\"devices\"") }
        #expect((refused?.split(separator: " ").last.flatMap { Double($0) } ?? 0) > 0, "no refusal counted: \(refused ?? "none")")
        hub.stop()
    }

    @Test func apiKeysConfineEveryCallerToItsTenantAndRole() async throws {
        let dir = TempDir()
        let apiPort = freePort()
        let file = dir.write("hub.yaml", "sinks: { out: { plugin: log } }\n")
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        let api = "http://127.0.0.1:\(apiPort)"
        #expect(eventually { http("GET", "\(api)/health")?.status == 200 }, "hub did not start: \(hub.log)")
        func call(_ method: String, _ path: String, key: String?, _ body: String? = nil) -> HTTPResult {
            var h = ["Content-Type": "application/json"]
            if let key { h["Authorization"] = "Bearer \(key)" }
            return http(method, api + path, body: body.map { Array($0.utf8) }, headers: h) ?? HTTPResult(status: 0, headers: [:], body: "")
        }
        let owner = Self.ownerKey
        // No key, a malformed key, a well-formed unknown key.
        for key in [nil, "nope", "iotc_unknownkey01_" + String(repeating: "x", count: 32)] {
            let r = call("GET", "/v1/whoami", key: key)
            #expect(r.status == 401 && r.headers["www-authenticate"]?.hasPrefix("Bearer") == true && r.headers["content-type"] == "application/problem+json", "\(r)")
        }
        #expect(call("GET", "/v1/pipelines", key: owner).status == 200)
        #expect(call("GET", "/metrics", key: nil).status == 200)

        // A new tenant comes with its owner key, shown once.
        let created = call("POST", "/v1/tenants", key: owner, #"{"id": "acme", "name": "Acme"}"#)
        #expect(created.status == 201, "\(created.body)")
        let acmeOwner = try #require(text((try? JSON.decode(created.body))?["owner_key"]?["secret"]))
        #expect(call("POST", "/v1/tenants", key: owner, #"{"id": "acme"}"#).status == 409)
        for bad in [#"{"id": "../etc"}"#, #"{"id": "x'; DROP TABLE tenants; --"}"#, #"{"id": "ok", "plan": "gold"}"#, "[1]", "{", #"{"id": 7}"#] {
            let r = call("POST", "/v1/tenants", key: owner, bad)
            #expect(r.status == 400, "\(bad): \(r.status) \(r.body)")
        }
        // Acme's key sees Acme only: the hub's operations are refused, other tenants do not exist.
        #expect(call("GET", "/v1/pipelines", key: acmeOwner).status == 403)
        #expect(call("POST", "/v1/pipelines/reload", key: acmeOwner).status == 403)
        #expect(call("GET", "/v1/tenants/system", key: acmeOwner).status == 404)
        #expect(call("GET", "/v1/api-keys?tenant=system", key: acmeOwner).status == 404)
        let tenants = call("GET", "/v1/tenants", key: acmeOwner).body
        #expect(tenants.contains(#""id":"acme""#) && !tenants.contains(#""id":"system""#), "\(tenants)")
        let systemKeys = call("GET", "/v1/api-keys", key: owner).body
        guard case .array(let items)? = (try? JSON.decode(systemKeys))?["items"], let systemKeyID = text(items.first?["id"]) else {
            Issue.record("no keys listed: \(systemKeys)")
            return
        }
        #expect(!systemKeys.contains(owner), "a listing shows a secret")
        #expect(call("DELETE", "/v1/api-keys/\(systemKeyID)", key: acmeOwner).status == 404)

        // Devices: Acme's registry is Acme's alone.
        #expect(call("POST", "/v1/devices", key: acmeOwner, #"{"id": "pump-1", "labels": {"site": "north"}}"#).status == 201)
        #expect(call("POST", "/v1/devices", key: acmeOwner, #"{"id": "pump-1"}"#).status == 409)
        #expect(call("POST", "/v1/devices", key: acmeOwner, #"{"id": "../../etc/passwd"}"#).status == 400)
        #expect(call("POST", "/v1/devices", key: acmeOwner, #"{"id": "p", "labels": {"site": 3}}"#).status == 400)
        #expect(call("GET", "/v1/devices?label=site:north", key: acmeOwner).body.contains(#""id":"pump-1""#))
        #expect(call("GET", "/v1/devices?limit=100000", key: acmeOwner).status == 400)
        #expect(call("GET", "/v1/devices/pump-1", key: owner).status == 404)
        #expect(call("GET", "/v1/devices/pump-1?tenant=acme", key: owner).status == 200)
        #expect(call("PATCH", "/v1/devices/pump-1", key: acmeOwner, #"{"name": "Main pump"}"#).body.contains("Main pump"))
        #expect(call("DELETE", "/v1/devices/pump-1", key: owner).status == 404)
        // Bulk provisioning, JSON and CSV, with a report per row (and tokens, shown only there).
        let bulk = call("POST", "/v1/devices/bulk?tokens=true", key: acmeOwner,
                        #"{"devices": [{"id": "valve-1", "labels": {"site": "south"}}, {"id": "pump-1"}, {"id": "bad id"}]}"#)
        #expect(bulk.status == 200 && bulk.body.contains(#""created":1"#), "\(bulk.body)")
        #expect(bulk.body.contains(#""status":"exists""#) && bulk.body.contains(#""status":"invalid""#) && bulk.body.contains("iotcd_"), "\(bulk.body)")
        let csv = http("POST", "\(api)/v1/devices/bulk", body: Array("id,name,profile\nmeter-1,\"Meter, hall\",meter\nmeter-2,,\n".utf8),
                       headers: ["Authorization": "Bearer \(acmeOwner)", "Content-Type": "text/csv"])
        #expect(csv?.body.contains(#""created":2"#) == true, "\(csv?.body ?? "")")
        #expect(call("GET", "/v1/devices/meter-1", key: acmeOwner).body.contains(#""name":"Meter, hall""#))
        #expect(call("POST", "/v1/devices/bulk", key: acmeOwner, #"{"devices": 3}"#).status == 400)
        // An oversized body is refused as such, not with a server error.
        let huge = #"{"id": "big", "name": ""# + String(repeating: "x", count: 100_000) + #""}"#
        #expect(call("POST", "/v1/devices", key: acmeOwner, huge).status == 413)

                // Team members log in for a session key with their role; guessing is limited and audited.
        #expect(call("POST", "/v1/users", key: acmeOwner, #"{"email": "ops@acme.example", "role": "operator", "password": "long enough secret"}"#).status == 201)
        let login = call("POST", "/v1/login", key: nil, #"{"tenant": "acme", "email": "ops@acme.example", "password": "long enough secret"}"#)
        #expect(login.status == 201, "\(login.body)")
        let session = try #require(text((try? JSON.decode(login.body))?["secret"]))
        #expect(call("GET", "/v1/whoami", key: session).body.contains(#""role":"operator""#))
        let guesses = (0..<6).map { _ in call("POST", "/v1/login", key: nil, #"{"tenant": "acme", "email": "ops@acme.example", "password": "wrong guess!!"}"#).status }
        #expect(guesses.prefix(4).allSatisfy { $0 == 401 } && guesses.last == 429, "\(guesses)")
        #expect(!call("GET", "/v1/users", key: acmeOwner).body.contains("long enough secret"))

                // Roles: a viewer reads, and cannot hand out keys; nobody hands out more than they hold.
        let viewerBody = call("POST", "/v1/api-keys", key: acmeOwner, #"{"name": "dashboard", "role": "viewer", "expires_in": 3600}"#)
        #expect(viewerBody.status == 201, "\(viewerBody.body)")
        let viewer = try #require(text((try? JSON.decode(viewerBody.body))?["secret"]))
        let viewerID = try #require(text((try? JSON.decode(viewerBody.body))?["id"]))
        #expect(call("GET", "/v1/whoami", key: viewer).status == 200)
        #expect(call("POST", "/v1/api-keys", key: viewer, #"{"name": "x"}"#).status == 403)
        #expect(call("POST", "/v1/api-keys", key: acmeOwner, #"{"name": "x", "role": "emperor"}"#).status == 400)
        // A key limited to some areas of the API reaches those only, and hands out no wider one.
        let scopedBody = call("POST", "/v1/api-keys", key: acmeOwner, #"{"name": "grafana", "role": "admin", "scopes": ["telemetry", "devices"]}"#)
        #expect(scopedBody.status == 201 && scopedBody.body.contains(#""scopes":["devices","telemetry"]"#), "\(scopedBody.body)")
        let scoped = try #require(text((try? JSON.decode(scopedBody.body))?["secret"]))
        #expect(call("GET", "/v1/devices", key: scoped).status == 200)
        #expect(call("GET", "/v1/devices/pump-1/telemetry/latest", key: scoped).status == 200)
        #expect(call("GET", "/v1/whoami", key: scoped).status == 200)
        #expect(call("GET", "/v1/audit", key: scoped).status == 403)
        #expect(call("GET", "/v1/api-keys", key: scoped).status == 403)
        #expect(call("POST", "/v1/api-keys", key: acmeOwner, #"{"name": "x", "scopes": ["everything"]}"#).status == 400)
        // Revocation takes effect on the next request.
        #expect(call("DELETE", "/v1/api-keys/\(viewerID)", key: acmeOwner).status == 204)
        #expect(call("GET", "/v1/whoami", key: viewer).status == 401)
        // Deleting the tenant ends its keys.
        #expect(call("DELETE", "/v1/tenants/acme", key: owner).status == 204)
        #expect(call("GET", "/v1/whoami", key: acmeOwner).status == 401)
        #expect(call("DELETE", "/v1/tenants/system", key: owner).status == 404)
        // The log holds no secret.
        #expect(!hub.log.contains(owner) && !hub.log.contains(acmeOwner))

        // Every change and every failed authentication is in the audit log, with who, what and where
        // from; a tenant's admins see their tenant's entries only.
        let audit = call("GET", "/v1/audit?limit=1000", key: owner).body
        for action in ["tenant.create", "api_key.create", "api_key.revoke", "tenant.delete", "auth.failed", "access.denied"] {
            #expect(audit.contains(#""action":"\#(action)""#), "no \(action) in \(audit)")
        }
        #expect(audit.contains(#""source":"127.0.0.1""#))
        #expect(!audit.contains(owner) && !audit.contains(acmeOwner), "a secret in the audit log")
        let other = call("POST", "/v1/tenants", key: owner, #"{"id": "globex"}"#)
        let globex = try #require(text((try? JSON.decode(other.body))?["owner_key"]?["secret"]))
        _ = call("POST", "/v1/api-keys", key: globex, #"{"name": "x"}"#)
        let globexAudit = call("GET", "/v1/audit", key: globex).body
        #expect(globexAudit.contains(#""tenant":"globex""#) && !globexAudit.contains(#""tenant":"system""#), "\(globexAudit)")
        hub.stop()

        // The chain checks out; an entry edited in the database is found and named.
        let (ok, okText) = try run(Build.iotc, ["audit", "verify", "--data", dir.path + "/data"])
        #expect(ok == 0 && okText.contains("intact"), "\(okText)")
        let store = try await openStore("sqlite:\(dir.path)/data/iotc.db")
        try await store.execute("UPDATE audit_log SET actor = 'key:someone-else' WHERE seq = 2")
        await store.close()
        let (broken, brokenText) = try run(Build.iotc, ["audit", "verify", "--data", dir.path + "/data"])
        #expect(broken == 1 && brokenText.contains("entry 2"), "\(brokenText)")
    }

    @Test func devicesAuthenticateWithRegistryCredentialsUntilRevoked() async throws {
        try requirePeer(Mosquitto.installed, "mosquitto")
        let dir = TempDir()
        let apiPort = freePort(), httpPort = freePort(), mqttPort = freePort()
        let out = dir.path + "/out.jsonl"
        let file = dir.write("hub.yaml", """
            sources:
              web: { plugin: http, listen: "127.0.0.1:\(httpPort)" }
              broker: { plugin: mqtt, listen: "127.0.0.1:\(mqttPort)", authentication: hub }
            sinks: { out: { plugin: file, path: "\(out)" } }
            pipelines: { t: { from: [ "web:devices/+/telemetry", "broker:devices/+/telemetry" ], to: [ out ] } }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        let api = "http://127.0.0.1:\(apiPort)"
        #expect(waitForPort(mqttPort) && eventually { http("GET", "\(api)/health")?.status == 200 }, "hub did not start: \(hub.log)")
        func call(_ method: String, _ path: String, _ body: String? = nil) -> HTTPResult {
            http(method, api + path, body: body.map { Array($0.utf8) }, headers: owner.merging(["Content-Type": "application/json"]) { a, _ in a })
                ?? HTTPResult(status: 0, headers: [:], body: "")
        }
        #expect(call("POST", "/v1/tenants", #"{"id": "acme"}"#).status == 201)
        #expect(call("POST", "/v1/devices?tenant=acme", #"{"id": "pump-1"}"#).status == 201)
        let issued = call("POST", "/v1/devices/pump-1/credentials?tenant=acme", #"{"kind": "token"}"#)
        #expect(issued.status == 201, "\(issued.body)")
        let token = try #require(text((try? JSON.decode(issued.body))?["token"]))
        let credential = try #require(text((try? JSON.decode(issued.body))?["id"]))
        #expect(token.hasPrefix("iotcd_"))
        // The token is shown once: the listing has no secret.
        #expect(!call("GET", "/v1/devices/pump-1/credentials?tenant=acme").body.contains(token))
        // A DTLS pre-shared key (for CoAP and LwM2M) likewise: its identity is listed, its key is shown once
        // and kept sealed under the hub's secret key (data/secret.key, the owner's only).
        let psk = call("POST", "/v1/devices/pump-1/credentials?tenant=acme", #"{"kind": "psk", "identity": "pump-1.acme", "key": "00112233445566778899aabbccddeeff"}"#)
        #expect(psk.status == 201 && psk.body.contains(#""key":"00112233445566778899aabbccddeeff""#), "\(psk.body)")
        let listed = call("GET", "/v1/devices/pump-1/credentials?tenant=acme").body
        #expect(listed.contains(#""identity":"pump-1.acme""#) && !listed.contains("00112233445566778899aabbccddeeff"), "\(listed)")
        #expect(call("POST", "/v1/devices/pump-1/credentials?tenant=acme", #"{"kind": "psk", "identity": "pump-1.acme"}"#).status == 409)
        #expect(call("POST", "/v1/devices/pump-1/credentials?tenant=acme", #"{"kind": "token", "identity": "x"}"#).status == 400)
        let secretKey = try FileManager.default.attributesOfItem(atPath: dir.path + "/data/secret.key")
        #expect((secretKey[.posixPermissions] as? Int) == 0o600)

        // HTTP with the token as bearer, MQTT with it as the password: both land, as tenant acme's pump-1.
        #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/pump-1/telemetry", #"{"via":"http"}"#, token: token)?.status == 202)
        let (code, output) = try run("/usr/bin/env", ["mosquitto_pub", "-h", "127.0.0.1", "-p", "\(mqttPort)", "-i", "pump-1", "-u", "pump-1",
                                                      "-P", token, "-q", "1", "-t", "devices/pump-1/telemetry", "-m", #"{"via":"mqtt"}"#])
        #expect(code == 0, "\(output)")
        #expect(eventually { jsonLines(out).count == 2 }, "\(jsonLines(out))")
        #expect(jsonLines(out).allSatisfy { $0["tenant"] == "acme" && $0["device"] == "pump-1" }, "\(jsonLines(out))")
        // Another device's topic stays closed to it, and a wrong token gets nothing.
        #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/pump-2/telemetry", "{}", token: token)?.status == 403)
        #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/pump-1/telemetry", "{}", token: token + "x")?.status == 401)
        // The device fetches the attributes the operator set for it (its configuration); another tenant
        // cannot set them.
        let device = ["Authorization": "Bearer \(token)"]
        #expect(http("GET", "http://127.0.0.1:\(httpPort)/v1/devices/pump-1/attributes", headers: device)?.body == "{}")
        #expect(call("PUT", "/v1/devices/pump-1/attributes?tenant=acme", #"{"rate": 5, "valves": ["a", "b"]}"#).status == 200)
        #expect(call("GET", "/v1/devices/pump-1/attributes?tenant=acme").body == #"{"rate":5,"valves":["a","b"]}"#)
        #expect(call("PUT", "/v1/devices/pump-1/attributes?tenant=acme", "[1]").status == 400)
        #expect(call("PUT", "/v1/devices/nobody/attributes?tenant=acme", "{}").status == 404)
        let fetched = http("GET", "http://127.0.0.1:\(httpPort)/v1/devices/pump-1/attributes", headers: device)
        #expect(fetched?.status == 200 && fetched?.body == #"{"rate":5,"valves":["a","b"]}"#, "\(String(describing: fetched))")
        // Conditional: the same ETag gets 304 with no content; with ?wait= the answer comes when they
        // change (200 and the new ETag), or 304 when the wait ends first.
        let attributesURL = "http://127.0.0.1:\(httpPort)/v1/devices/pump-1/attributes"
        let tag = try #require(fetched?.headers["etag"])
        let unchanged = http("GET", attributesURL, headers: device.merging(["If-None-Match": tag]) { $1 })
        #expect(unchanged?.status == 304 && unchanged?.body == "" && unchanged?.headers["content-length"] == nil, "\(String(describing: unchanged))")
        let waiting = Background { http("GET", attributesURL + "?wait=10", headers: device.merging(["If-None-Match": tag]) { $1 }, timeout: 20) }
        usleep(1_500_000)
        #expect(call("PUT", "/v1/devices/pump-1/attributes?tenant=acme", #"{"rate": 6}"#).status == 200)
        let changed = waiting.wait()
        #expect(changed?.status == 200 && changed?.body == #"{"rate":6}"# && changed?.headers["etag"] != tag, "\(String(describing: changed))")
        let quiet = http("GET", attributesURL + "?wait=1", headers: device.merging(["If-None-Match": changed?.headers["etag"] ?? ""]) { $1 })
        #expect(quiet?.status == 304, "\(String(describing: quiet))")
        // A device's event stream carries its attributes first, then each change. (Closed at the end of
        // this block, so that the device is not left connected over HTTP.)
        do {
            let sse = try #require(RawSocket(port: httpPort))
            sse.send("GET /v1/devices/pump-1/commands/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(token)\r\n\r\n")
            var streamed = ""
            func read(until done: (String) -> Bool) {
                var buf = [UInt8](repeating: 0, count: 8192)
                let deadline = Date().addingTimeInterval(6)
                while Date() < deadline, !done(streamed) {
                    let n = recv(sse.fd, &buf, buf.count, 0)
                    if n <= 0 { break }
                    streamed += String(decoding: buf[0..<n], as: UTF8.self)
                }
            }
            read { $0.contains("event: attributes\nid: ") && $0.contains(#"data: {"rate":6}"#) }
            #expect(streamed.contains(#"data: {"rate":6}"#), "\(streamed)")
            #expect(call("PUT", "/v1/devices/pump-1/attributes?tenant=acme", #"{"rate": 7}"#).status == 200)
            read { $0.contains(#"data: {"rate":7}"#) }
            #expect(streamed.contains(#"data: {"rate":7}"#) && streamed.components(separatedBy: "event: attributes").count == 3, "\(streamed)")
        }
        #expect(http("GET", "http://127.0.0.1:\(httpPort)/v1/devices/pump-1/attributes")?.status == 401)
        // The failed authentication is in the audit log (the device's claim and address, not what it presented).
        #expect(eventually { call("GET", "/v1/audit?action=device.auth.failed").body.contains(#""actor":"device:pump-1""#) })
        #expect(!call("GET", "/v1/audit?action=device.auth.failed").body.contains(token))

        // A device connected over MQTT 5 when its credentials are revoked is told so (0x98) and closed.
        let python = Build.packageRoot + "/.venv/bin/python"
        try #require(FileManager.default.isExecutableFile(atPath: python), "no .venv: run scripts/install-deps.sh test")
        let watcher = try ChildProcess(python, ["-u", "-c", """
            import sys, time, paho.mqtt.client as mqtt
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pump-1", protocol=mqtt.MQTTv5)
            c.username_pw_set("pump-1", sys.argv[1])
            c.on_connect = lambda c, u, f, rc, p: print("connected", rc.value, flush=True)
            c.on_disconnect = lambda c, u, f, rc, p: (print("disconnected", rc.value, flush=True), c.loop_stop())
            c.connect("127.0.0.1", \(mqttPort)); c.loop_start()
            time.sleep(30)
            """, token])
        #expect(eventually { watcher.log.contains("connected 0") }, "\(watcher.log)")
        // The registry shows it connected, through which source, and when it was last seen.
        let state = call("GET", "/v1/devices/pump-1?tenant=acme").body
        #expect(state.contains(#""connected":true"#) && state.contains(#""source":"broker""#) && state.contains("last_seen"), "\(state)")

        // An HTTP keep-alive connection, open before the revocation, is checked again within 2 seconds.
        let kept = try #require(RawSocket(port: httpPort))
        func post() -> String {
            kept.send("POST /v1/devices/pump-1/telemetry HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(token)\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            return kept.readResponses(1).first ?? ""
        }
        #expect(post().hasPrefix("HTTP/1.1 202"))

        // Revoked: refused at once on new requests and connections, and open connections close.
        #expect(call("DELETE", "/v1/devices/pump-1/credentials/\(credential)?tenant=acme").status == 204)
        usleep(2_200_000)
        #expect(post().hasPrefix("HTTP/1.1 401"), "a revoked token still works on an open keep-alive connection")
        #expect(eventually(timeout: 5) { watcher.log.contains("disconnected 152") }, "\(watcher.log)")
        #expect(eventually { call("GET", "/v1/devices/pump-1?tenant=acme").body.contains(#""connected":false"#) })
        watcher.stop()
        #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/pump-1/telemetry", "{}", token: token)?.status == 401)
        let (refused, _) = try run("/usr/bin/env", ["mosquitto_pub", "-h", "127.0.0.1", "-p", "\(mqttPort)", "-i", "pump-1", "-u", "pump-1",
                                                    "-P", token, "-q", "1", "-t", "devices/pump-1/telemetry", "-m", "{}"])
        #expect(refused != 0)
        #expect(!hub.log.contains(token), "the token is in the log")
        // What the hub saw survives a restart: not connected, last seen as before.
        let before = try? JSON.decode(call("GET", "/v1/devices/pump-1?tenant=acme").body)
        hub.stop()
        let again = try serve(file, data: dir.path + "/data", api: apiPort)
        defer { again.stop() }
        #expect(eventually { http("GET", "\(api)/health")?.status == 200 }, "\(again.log)")
        let after = try? JSON.decode(call("GET", "/v1/devices/pump-1?tenant=acme").body)
        #expect(after?["state"]?["connected"] == false && after?["state"]?["source"] == "broker", "\(String(describing: after))")
        #expect(after?["state"]?["last_seen"] != nil && after?["state"]?["last_seen"] == before?["state"]?["last_seen"], "\(String(describing: before)) \(String(describing: after))")
    }

    @Test func aDeviceRotatesItsCredentialWithoutLosingAMessage() throws {
        try requirePeer(Mosquitto.installed, "mosquitto")
        let python = Build.packageRoot + "/.venv/bin/python"
        try #require(FileManager.default.isExecutableFile(atPath: python), "no .venv: run scripts/install-deps.sh test")
        let dir = TempDir()
        let apiPort = freePort(), mqttPort = freePort()
        let out = dir.path + "/out.jsonl"
        let file = dir.write("hub.yaml", """
            sources:
              broker: { plugin: mqtt, listen: "127.0.0.1:\(mqttPort)", authentication: hub }
            sinks: { out: { plugin: file, path: "\(out)" } }
            pipelines: { t: { from: [ "broker:devices/+/telemetry" ], to: [ out ] } }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        defer { hub.stop() }
        let api = "http://127.0.0.1:\(apiPort)"
        #expect(waitForPort(mqttPort) && eventually { http("GET", "\(api)/health")?.status == 200 }, "hub did not start: \(hub.log)")
        func call(_ method: String, _ path: String, _ body: String? = nil) -> HTTPResult {
            http(method, api + path, body: body.map { Array($0.utf8) }, headers: owner.merging(["Content-Type": "application/json"]) { a, _ in a })
                ?? HTTPResult(status: 0, headers: [:], body: "")
        }
        #expect(call("POST", "/v1/devices", #"{"id": "meter-r"}"#).status == 201)
        func issue() throws -> (id: String, token: String) {
            let r = try JSON.decode(call("POST", "/v1/devices/meter-r/credentials", #"{"kind": "token"}"#).body)
            return (try #require(text(r["id"])), try #require(text(r["token"])))
        }
        let old = try issue()
        // The device publishes a numbered reading every 50 ms over MQTT 5 with its token. On a line
        // "rotate TOKEN" it reconnects with the new token (a clean hand-over: connect, then close the
        // old connection) and goes on counting.
        let device = try ChildProcess(python, ["-u", "-c", """
            import sys, threading, time, paho.mqtt.client as mqtt
            def connect(token):
                c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="meter-r", protocol=mqtt.MQTTv5)
                c.username_pw_set("meter-r", token)
                c.on_connect = lambda c, u, f, rc, p: print("connected", rc.value, flush=True)
                c.on_disconnect = lambda c, u, f, rc, p: print("disconnected", rc.value, flush=True)
                c.connect("127.0.0.1", \(mqttPort)); c.loop_start()
                return c
            client = connect(sys.argv[1])
            n = 0
            def publish():
                global n
                while True:
                    try:
                        info = client.publish("devices/meter-r/telemetry", '{"n": %d}' % n, qos=1)
                        info.wait_for_publish(5)
                        if info.rc == 0 and info.is_published():
                            n += 1
                    except (RuntimeError, ValueError):
                        pass  # the connection it used was handed over: the same reading goes again
                    time.sleep(0.05)
            threading.Thread(target=publish, daemon=True).start()
            for line in sys.stdin:
                if line.startswith("rotate "):
                    old, client = client, connect(line.split()[1])
                    time.sleep(0.5)
                    old.disconnect(); old.loop_stop()
                    print("rotated", flush=True)
            """, old.token], interactive: true)
        #expect(eventually { device.log.contains("connected 0") && jsonLines(out).count >= 5 }, "\(device.log)")
        // Rotation: a second token, the device moves to it, the first is revoked.
        let new = try issue()
        device.send("rotate \(new.token)")
        #expect(eventually(timeout: 10) { device.log.contains("rotated") }, "\(device.log)")
        #expect(call("DELETE", "/v1/devices/meter-r/credentials/\(old.id)").status == 204)
        let before = jsonLines(out).count
        #expect(eventually(timeout: 10) { jsonLines(out).count >= before + 10 }, "it goes on publishing with the new token: \(device.log)")
        // The old token no longer connects; every reading the device counted as acknowledged arrived,
        // in order, none lost across the hand-over.
        let (refused, _) = try run("/usr/bin/env", ["mosquitto_pub", "-h", "127.0.0.1", "-p", "\(mqttPort)", "-i", "meter-r2", "-u", "meter-r",
                                                    "-P", old.token, "-q", "1", "-t", "devices/meter-r/telemetry", "-m", "{}"])
        #expect(refused != 0)
        device.stop()
        // MQTT payloads carry no content type: the file sink keeps them as base64.
        let numbers = jsonLines(out).compactMap { line -> Int? in
            guard let b64 = text(line["payload_base64"]), let bytes = Base64.decode(b64), case .int(let n)? = (try? JSON.decode(bytes))?["n"] else { return nil }
            return Int(n)
        }
        let distinct = Array(Set(numbers)).sorted()
        #expect(!distinct.isEmpty && distinct == Array(0...(distinct.last ?? 0)), "a reading is missing: \(distinct)")
        #expect(!hub.log.contains(old.token) && !hub.log.contains(new.token))
    }

    @Test func devicesClaimTheirCredentialsWithAFleetKey() throws {
        let dir = TempDir()
        let apiPort = freePort(), httpPort = freePort()
        let file = dir.write("hub.yaml", """
            sources: { web: { plugin: http, listen: "127.0.0.1:\(httpPort)" } }
            sinks: { out: { plugin: file, path: "\(dir.path)/out.jsonl" } }
            pipelines: { t: { from: [ "web:devices/+/telemetry" ], to: [ out ] } }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        defer { hub.stop() }
        let api = "http://127.0.0.1:\(apiPort)"
        #expect(waitForPort(httpPort) && eventually { http("GET", "\(api)/health")?.status == 200 }, "\(hub.log)")
        func call(_ method: String, _ path: String, _ body: String, key: String? = Self.ownerKey) -> HTTPResult {
            var h = ["Content-Type": "application/json"]
            if let key { h["Authorization"] = "Bearer \(key)" }
            return http(method, api + path, body: Array(body.utf8), headers: h) ?? HTTPResult(status: 0, headers: [:], body: "")
        }
        let acme = try #require(text((try? JSON.decode(call("POST", "/v1/tenants", #"{"id": "acme"}"#).body))?["owner_key"]?["secret"]))
        let created = call("POST", "/v1/provisioning-keys", #"{"name": "factory line 3", "profile": "meter"}"#, key: acme)
        #expect(created.status == 201, "\(created.body)")
        let fleetKey = try #require(text((try? JSON.decode(created.body))?["secret"]))
        #expect(!call("GET", "/v1/provisioning-keys", "", key: acme).body.contains(fleetKey))
        #expect(call("PUT", "/v1/devices/meter-7/claim-code", #"{"code": "K7-55-AB-19"}"#, key: acme).status == 200)
        #expect(call("PUT", "/v1/devices/meter-7/claim-code", #"{"code": "short"}"#, key: acme).status == 400)
        // The device, with no API key: a wrong code is refused, the right one gives it a token of its own.
        #expect(call("POST", "/v1/claim", #"{"provisioning_key": "\#(fleetKey)", "device": "meter-7", "code": "wrong code!"}"#, key: nil).status == 401)
        let claim = call("POST", "/v1/claim", #"{"provisioning_key": "\#(fleetKey)", "device": "meter-7", "code": "K7-55-AB-19"}"#, key: nil)
        #expect(claim.status == 201, "\(claim.body)")
        let token = try #require(text((try? JSON.decode(claim.body))?["credential"]?["token"]))
        #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/meter-7/telemetry", #"{"kwh": 12}"#, token: token)?.status == 202)
        #expect(eventually { jsonLines(dir.path + "/out.jsonl").first?["tenant"] == "acme" })
        #expect(call("GET", "/v1/devices/meter-7", "", key: acme).body.contains(#""profile":"meter""#))
        // Once only; the code is spent.
        #expect(call("POST", "/v1/claim", #"{"provisioning_key": "\#(fleetKey)", "device": "meter-7", "code": "K7-55-AB-19"}"#, key: nil).status == 401)
        let audit = call("GET", "/v1/audit?limit=100", "", key: acme).body
        #expect(audit.contains(#""action":"device.claim""#) && audit.contains(#""action":"provisioning_key.create""#), "\(audit)")
        #expect(!hub.log.contains(fleetKey) && !hub.log.contains("K7-55-AB-19") && !audit.contains("K7-55-AB-19"))
    }

    @Test func servesTheAPIOverTLSWhenGivenACertificate() throws {
        let dir = TempDir()
        try makeTestCertificates(in: dir)
        let apiPort = freePort()
        let file = dir.write("hub.yaml", "sinks: { out: { plugin: log } }\n")
        let hub = try serve(file, data: dir.path + "/data", api: apiPort,
                            arguments: ["--api-tls-cert", dir.path + "/cert.pem", "--api-tls-key", dir.path + "/key.pem"])
        defer { hub.stop() }
        #expect(waitForPort(apiPort), "\(hub.log)")
        let (code, out) = try run("/usr/bin/env", ["curl", "-sS", "--cacert", dir.path + "/cert.pem", "-H", "Authorization: Bearer \(Self.ownerKey)",
                                                   "https://127.0.0.1:\(apiPort)/v1/whoami"])
        #expect(code == 0 && out.contains(#""system":true"#), "\(out)")
        // Expect: 100-continue is answered over TLS too.
        let (created, shown) = try run("/usr/bin/env", ["curl", "-sSv", "--cacert", dir.path + "/cert.pem", "-H", "Authorization: Bearer \(Self.ownerKey)",
                                                        "-H", "Content-Type: application/json", "-H", "Expect: 100-continue", "-d", #"{"id":"tls-1"}"#,
                                                        "https://127.0.0.1:\(apiPort)/v1/devices"])
        #expect(created == 0 && shown.contains("< HTTP/1.1 100 Continue") && shown.contains("< HTTP/1.1 201"), "\(shown)")
        // The CLI talks to it too: with the CA it trusts, not without it (the certificate is self-signed).
        let replay = ["dlq", "replay", "--api", "https://127.0.0.1:\(apiPort)"]
        let (trusted, answer) = try run(Build.iotc, replay + ["--ca-file", dir.path + "/cert.pem"], environment: ["IOTC_API_KEY": Self.ownerKey])
        #expect(trusted == 0 && answer.contains(#""replayed":0"#), "\(answer)")
        let (untrusted, why) = try run(Build.iotc, replay, environment: ["IOTC_API_KEY": Self.ownerKey])
        #expect(untrusted != 0 && why.lowercased().contains("certificate"), "\(why)")
        // Plain HTTP gets no answer from a TLS listener; the banner names https.
        #expect(http("GET", "http://127.0.0.1:\(apiPort)/health", timeout: 2)?.status != 200)
        #expect(hub.log.contains("https://127.0.0.1:\(apiPort)"))
        // A certificate without its key is refused at start, with the reason.
        let (refused, reason) = try run(Build.iotc, ["serve", file, "--data", dir.path + "/other", "--api", "127.0.0.1:\(freePort())", "--plugins", Build.directory,
                                                     "--api-tls-cert", dir.path + "/cert.pem"])
        #expect(refused != 0 && reason.contains("--api-tls-cert and --api-tls-key go together"), "\(reason)")
    }

    /// `Expect: 100-continue` on the API (RFC 9110 §10.1.1): 100 Continue as soon as the headers are in,
    /// then the answer to the body.
    @Test func theAPIAnswersExpect100Continue() throws {
        let dir = TempDir()
        let apiPort = freePort()
        let file = dir.write("hub.yaml", "sinks: { out: { plugin: log } }\n")
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        defer { hub.stop() }
        #expect(waitForPort(apiPort), "\(hub.log)")
        let s = try #require(RawSocket(port: apiPort))
        let body = #"{"id":"expecting-1"}"#
        s.send("POST /v1/devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(Self.ownerKey)\r\nContent-Type: application/json\r\n"
               + "Expect: 100-continue\r\nContent-Length: \(body.utf8.count)\r\n\r\n")
        #expect(s.readResponses(1, timeout: 2) == ["HTTP/1.1 100 Continue\r\n\r\n"])
        s.send(body)
        #expect(s.readResponses(1).first?.hasPrefix("HTTP/1.1 201") == true)
    }

    /// The first start's owner key is shown on a terminal; when standard output is a file (here), it is
    /// a log, and the key goes to an owner-only file in the data folder instead, with an example that works.
    @Test func theFirstStartGivesTheOwnerKeyOnceWithAWorkingExample() throws {
        let dir = TempDir()
        let apiPort = freePort()
        let file = dir.write("hub.yaml", "sinks: { out: { plugin: log } }\n")
        let hub = try serve(file, data: dir.path + "/data", api: apiPort, environment: [:])
        #expect(eventually { hub.log.contains("/v1/whoami") }, "\(hub.log)")
        let keyFile = dir.path + "/data/owner-key"
        let key = try String(contentsOfFile: keyFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(key.hasPrefix("iotc_") && !hub.log.contains(key), "the key is not in the log")
        #expect(((try? FileManager.default.attributesOfItem(atPath: keyFile)[.posixPermissions]) as? Int) == 0o600)
        // The example works as printed.
        let line = hub.log.split(separator: "\n").first { $0.contains("curl -H") }.map(String.init) ?? ""
        #expect(line.hasSuffix("\"Authorization: Bearer $(cat \(keyFile))\" http://127.0.0.1:\(apiPort)/v1/whoami"), "\(line)")
        let example = try #require(line.range(of: "curl -H").map { "curl -s -H" + line[$0.upperBound...] })
        let (code, out) = try run("/bin/sh", ["-c", example])
        #expect(code == 0 && out.contains("\"tenant\""), "\(out)")
        #expect(http("GET", "http://127.0.0.1:\(apiPort)/v1/whoami", headers: ["Authorization": "Bearer \(key)"])?.status == 200)
        hub.stop()
        // Shown once: not at the next start.
        let again = try serve(file, data: dir.path + "/data", api: apiPort, environment: [:])
        defer { again.stop() }
        #expect(eventually { again.log.contains("ready in") }, "\(again.log)")
        #expect(!again.log.contains(key))
    }

    @Test func ratesAreLimitedPerDeviceAndPerAPIKey() throws {
        let dir = TempDir()
        let apiPort = freePort(), httpPort = freePort()
        let file = dir.write("hub.yaml", """
            sources: { web: { plugin: http, listen: "127.0.0.1:\(httpPort)" } }
            sinks: { out: { plugin: file, path: "\(dir.path)/out.jsonl" } }
            pipelines: { t: { from: [ web ], to: [ out ] } }
            auth: { allow_anonymous: true }
            limits: { device_messages_per_second: 1, device_burst: 3, api_requests_per_second: 1, api_burst: 2 }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        #expect(waitForPort(httpPort) && eventually { http("GET", "http://127.0.0.1:\(apiPort)/health")?.status == 200 }, "\(hub.log)")
        // A device: its burst goes through, then it is held back with 503 and Retry-After; another
        // device is not affected.
        let codes = (0..<6).map { _ in postJSON("http://127.0.0.1:\(httpPort)/v1/devices/chatty/telemetry", "{}")?.status ?? 0 }
        #expect(codes.prefix(3).allSatisfy { $0 == 202 } && codes.suffix(2).allSatisfy { $0 == 503 }, "\(codes)")
        #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/quiet/telemetry", "{}")?.status == 202)
        // An API key: 429 with Retry-After once over its burst.
        let calls = (0..<4).map { _ in http("GET", "http://127.0.0.1:\(apiPort)/v1/whoami", headers: owner) }
        #expect(calls.prefix(2).allSatisfy { $0?.status == 200 }, "\(calls.map { $0?.status ?? 0 })")
        #expect(calls.last??.status == 429 && calls.last??.headers["retry-after"] == "1", "\(String(describing: calls.last))")
        let metrics = http("GET", "http://127.0.0.1:\(apiPort)/metrics")?.body ?? ""
        #expect(metrics.contains(#"iotc_rate_limited_total{scope="device"}"#) && metrics.contains(#"iotc_rate_limited_total{scope="api_key"}"#))
        hub.stop()
    }

    @Test func theStoreSinkKeepsTimeSeriesForTheAPI() throws {
        let dir = TempDir()
        let apiPort = freePort(), httpPort = freePort()
        let file = dir.write("hub.yaml", """
            sources: { web: { plugin: http, listen: "127.0.0.1:\(httpPort)" } }
            sinks: { series: { plugin: store } }
            pipelines: { t: { from: [ "web:devices/+/telemetry" ], steps: [ { decode: json } ], to: [ series ] } }
            auth: { allow_anonymous: true }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        let api = "http://127.0.0.1:\(apiPort)"
        #expect(waitForPort(httpPort) && eventually { http("GET", "\(api)/health")?.status == 200 }, "\(hub.log)")
        for i in 0..<5 {
            let body = #"{"rpm": \#(1000 + i), "engine": {"temp": 80.5, "on": true}, "label": "x"}"#
            let r = http("POST", "http://127.0.0.1:\(httpPort)/v1/devices/pump-1/telemetry", body: Array(body.utf8),
                         headers: ["Content-Type": "application/json", "X-Device-Time": "\(1_700_000_000_000 + i * 1000)"])
            #expect(r?.status == 202)
        }
        // Anonymous devices belong to the tenant "default"; the system tenant's key may name it.
        let latestURL = "\(api)/v1/devices/pump-1/telemetry/latest?tenant=default"
        #expect(eventually { http("GET", latestURL, headers: owner)?.body.contains("engine.on") == true }, "\(http("GET", latestURL, headers: owner)?.body ?? "")")
        let latest = http("GET", latestURL, headers: owner)?.body ?? ""
        #expect(latest.contains(#""rpm""#) && latest.contains(#""engine.temp""#) && !latest.contains("label"), "\(latest)")
        let count = http("GET", "\(api)/v1/devices/pump-1/telemetry?tenant=default&key=rpm&from=0&bucket=86400000000&agg=count", headers: owner)
        #expect(count?.status == 200 && count?.body.contains("5") == true, "\(count?.body ?? "")")
        #expect(http("GET", "\(api)/v1/devices/pump-1/telemetry?tenant=default", headers: owner)?.status == 400)
        #expect(http("GET", "\(api)/v1/devices/pump-1/telemetry?tenant=default&key=rpm&agg=median&bucket=1000", headers: owner)?.status == 400)
        // Another tenant sees none of it.
        let other = http("POST", "\(api)/v1/tenants", body: Array(#"{"id": "globex"}"#.utf8), headers: owner)
        let globex = try #require(text((try? JSON.decode(other?.body ?? ""))?["owner_key"]?["secret"]))
        // Not in globex's registry and no telemetry there: no such device.
        #expect(http("GET", "\(api)/v1/devices/pump-1/telemetry/latest", headers: ["Authorization": "Bearer \(globex)"])?.status == 404)
        #expect(http("GET", latestURL, headers: ["Authorization": "Bearer \(globex)"])?.status == 404)
        // Retention: the points are from 2023; a tenant that keeps 30 days loses them at the next start.
        // The tenant "default" exists from the start (it holds the devices of the pipeline files).
        #expect(http("POST", "\(api)/v1/tenants", body: Array(#"{"id": "default"}"#.utf8), headers: owner)?.status == 409)
        #expect(http("PATCH", "\(api)/v1/tenants/default", body: Array(#"{"retention_days": 30}"#.utf8), headers: owner)?.body.contains(#""retention_days":30"#) == true)
        #expect(http("PATCH", "\(api)/v1/tenants/default", body: Array(#"{"retention_days": -1}"#.utf8), headers: owner)?.status == 400)
        #expect(http("PATCH", "\(api)/v1/tenants/default", body: Array(#"{"retention_days": 1}"#.utf8), headers: ["Authorization": "Bearer \(globex)"])?.status == 404)
        hub.stop()
        let again = try serve(file, data: dir.path + "/data", api: apiPort)
        // The data is gone, and pump-1 (a device of the pipeline files, not in the registry) with it.
        #expect(eventually { http("GET", latestURL, headers: owner)?.status == 404 }, "\(http("GET", latestURL, headers: owner)?.body ?? "")")
        again.stop()
    }

    func text(_ v: Value?) -> String? { if case .string(let s)? = v { s } else { nil } }

    @Test func runsOnAPostgreSQLStore() async throws {
        let pg = PostgresServer()
        try pg.start()
        defer { pg.stop() }
        let admin = try await PostgresStore(url: "postgres://iotc@127.0.0.1:\(pg.port)/postgres")
        try await admin.execute("CREATE DATABASE hub")
        await admin.close()
        let dir = TempDir()
        let apiPort = freePort()
        let file = dir.write("hub.yaml", "sinks: { out: { plugin: log } }\n")
        let hub = try serve(file, data: dir.path + "/data", api: apiPort, store: "postgres://iotc@127.0.0.1:\(pg.port)/hub")
        #expect(eventually { http("GET", "http://127.0.0.1:\(apiPort)/health")?.status == 200 }, "hub did not start: \(hub.log)")
        let me = http("GET", "http://127.0.0.1:\(apiPort)/v1/whoami", headers: owner)
        #expect(me?.status == 200 && me?.body.contains("\"system\"") == true, "\(String(describing: me))")
        #expect(hub.log.contains("PostgreSQL"), "\(hub.log)")
        hub.stop()
    }

    @Test func servesMetricsAndTheDeadLetterAPI() throws {
        let dir = TempDir()
        let httpPort = freePort(), apiPort = freePort()
        let file = dir.write("hub.yaml", """
            sources: { devices: { plugin: http, listen: "127.0.0.1:\(httpPort)" } }
            sinks: { out: { plugin: file, path: "\(dir.path)/out.jsonl" } }
            pipelines: { t: { from: [ "devices:devices/+/telemetry" ], steps: [ { decode: json }, { filter: "v > 0" } ], to: [ out ] } }
            auth: { allow_anonymous: true }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        defer { hub.stop() }
        #expect(waitForPort(apiPort))
        _ = postJSON("http://127.0.0.1:\(httpPort)/v1/devices/a/telemetry", #"{"v":1}"#)
        _ = postJSON("http://127.0.0.1:\(httpPort)/v1/devices/a/telemetry", #"{"v":0}"#)
        _ = postJSON("http://127.0.0.1:\(httpPort)/v1/devices/a/telemetry", #"{"x":1}"#)
        #expect(eventually { (http("GET", "http://127.0.0.1:\(apiPort)/metrics")?.body ?? "").contains(#"iotc_messages_in_total{pipeline="t"} 3"#) })
        let metrics = http("GET", "http://127.0.0.1:\(apiPort)/metrics")?.body ?? ""
        #expect(metrics.contains(#"iotc_messages_errored_total{pipeline="t"} 1"#))
        #expect(metrics.contains(#"iotc_messages_filtered_total{pipeline="t"} 1"#))
        #expect(metrics.contains(#"iotc_sink_delivered_total{sink="out"} 1"#))
        #expect(metrics.contains("iotc_sink_latency_seconds_bucket"))
        #expect(metrics.contains(#"iotc_queue_depth{queue="pipeline:t"}"#))
        #expect(metrics.contains(#"iotc_queue_depth{queue="sink:out"}"#))
        _ = postJSON("http://127.0.0.1:\(httpPort)/v1/devices/a/attributes", "{}")
        let dropped = http("GET", "http://127.0.0.1:\(apiPort)/metrics")?.body ?? ""
        #expect(dropped.contains(#"iotc_messages_dropped_total{reason="no_route",source="devices",plugin="http"} 1"#))
        // The failed message (no field v) is a dead letter, listed by the CLI and the API.
        let (code, listing) = try run(Build.iotc, ["dlq", "list", "--data", dir.path + "/data"])
        #expect(code == 0)
        #expect(listing.contains("pipeline t, step filter"))
        #expect(listing.contains("field 'v' is missing"))
        let api = http("GET", "http://127.0.0.1:\(apiPort)/v1/dead-letters", headers: owner)
        #expect(api?.status == 200)
        let listed: Value? = try? JSON.decode(api?.body ?? "")
        #expect(listed?["total"] == 1 && listed?["next"] == .null)
        let firstPage: Value? = try? JSON.decode(http("GET", "http://127.0.0.1:\(apiPort)/v1/dead-letters?limit=1", headers: owner)?.body ?? "")
        guard case .array(let items)? = firstPage?["items"], case .string(let id)? = items.first?["id"] else {
            Issue.record("no dead letter with an id on the first page: \(String(describing: firstPage))")
            return
        }
        #expect(firstPage?["next"] == .string(id), "a full page names where the next one starts")
        let after: Value? = try? JSON.decode(http("GET", "http://127.0.0.1:\(apiPort)/v1/dead-letters?limit=1&after=\(id)", headers: owner)?.body ?? "")
        #expect(after?["items"] == .array([]) && after?["total"] == 1)
        let (purgeCode, purged) = try run(Build.iotc, ["dlq", "purge", "--data", dir.path + "/data"])
        #expect(purgeCode == 0 && purged.contains("purged 1"))
    }

    @Test func operatesThroughTheAPIAndTheCLI() throws {
        let dir = TempDir()
        let httpPort = freePort(), apiPort = freePort(), receiverPort = freePort()
        let receiver = try ChildProcess("/usr/bin/env", ["python3", Build.packageRoot + "/Tests/Support/webhook_receiver.py", "\(receiverPort)", dir.path + "/requests.jsonl"])
        defer { receiver.stop() }
        #expect(waitForPort(receiverPort))
        let file = dir.write("hub.yaml", """
            sources: { devices: { plugin: http, listen: "127.0.0.1:\(httpPort)" } }
            sinks: { hook: { plugin: webhook, url: "http://127.0.0.1:\(receiverPort)/status/400" } }
            pipelines: { t: { from: [ "devices:devices/+/telemetry" ], to: [ hook ] } }
            auth: { allow_anonymous: true }
            """)
        let hub = try serve(file, data: dir.path + "/data", api: apiPort)
        defer { hub.stop() }
        #expect(waitForPort(apiPort), "hub did not start: \(hub.log)")
        let api = "http://127.0.0.1:\(apiPort)"

        // A command for a device that is waiting on a long-poll: the device takes it, answers on
        // /commands/{id}/result, and the API call that waited answers 200 with the result.
        let poll = Background { http("GET", "http://127.0.0.1:\(httpPort)/v1/devices/pump/commands?wait=10", timeout: 15) }
        usleep(500_000)
        let sending = Background { postJSON("\(api)/v1/devices/pump/commands", #"{"name": "start", "payload": {"rpm": 900}, "source": "devices", "timeout": 10}"#, token: ProcessTests.ownerKey) }
        let taken = try? JSON.decode(poll.wait()?.body ?? "")
        let commandID = taken?["metadata"]?["command_id"]?.string ?? ""
        #expect(commandID.hasPrefix("cmd-"), "\(String(describing: taken))")
        #expect(taken?["topic"]?.string == "devices/pump/commands/start/\(commandID)")
        #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/pump/commands/\(commandID)/result", #"{"ok": true, "rpm": 900}"#)?.status == 202)
        let sent = sending.wait()
        #expect(sent?.status == 200, "\(sent?.body ?? "")")
        let answered = try? JSON.decode(sent?.body ?? "")
        #expect(answered?["status"] == "succeeded")
        #expect(answered?["result"]?["rpm"] == 900)
        // Nobody polling: the command is queued (202) and goes to the device when it next polls.
        let queued = postJSON("\(api)/v1/devices/pump/commands", #"{"name": "stop", "timeout": 0.3}"#, token: ProcessTests.ownerKey)
        #expect(queued?.status == 202)
        let queuedID = (try? JSON.decode(queued?.body ?? ""))?["id"]?.string ?? ""
        #expect((try? JSON.decode(queued?.body ?? ""))?["status"] == "queued")
        let later = http("GET", "http://127.0.0.1:\(httpPort)/v1/devices/pump/commands?wait=10", timeout: 15)
        #expect((try? JSON.decode(later?.body ?? ""))?["topic"]?.string == "devices/pump/commands/stop/\(queuedID)")
        #expect(eventually { (try? JSON.decode(http("GET", "\(api)/v1/devices/pump/commands/\(queuedID)", headers: owner)?.body ?? ""))?["status"] == "delivered" })
        // Not answered before its expiry: expired, and a late answer changes nothing.
        #expect(eventually(timeout: 10) { (try? JSON.decode(http("GET", "\(api)/v1/devices/pump/commands", headers: owner)?.body ?? ""))?["items"]?.array?.count == 2 })
        let shortLived = postJSON("\(api)/v1/devices/pump/commands", #"{"name": "blink", "timeout": 0, "expires_in": 1}"#, token: ProcessTests.ownerKey)
        let shortID = (try? JSON.decode(shortLived?.body ?? ""))?["id"]?.string ?? ""
        #expect(eventually(timeout: 10) { (try? JSON.decode(http("GET", "\(api)/v1/devices/pump/commands/\(shortID)", headers: owner)?.body ?? ""))?["status"] == "expired" })
        _ = postJSON("http://127.0.0.1:\(httpPort)/v1/devices/pump/commands/\(shortID)/result", #"{"ok": true}"#)
        #expect((try? JSON.decode(http("GET", "\(api)/v1/devices/pump/commands/\(shortID)", headers: owner)?.body ?? ""))?["status"] == "expired")
        #expect(postJSON("\(api)/v1/devices/pump/commands", "not json", token: ProcessTests.ownerKey)?.status == 400)
        #expect(postJSON("\(api)/v1/devices/pump/commands", #"{"source": "nowhere"}"#, token: ProcessTests.ownerKey)?.status == 404)
        #expect(postJSON("\(api)/v1/devices/pump/commands", #"{"name": "a/b"}"#, token: ProcessTests.ownerKey)?.status == 400)
        #expect(postJSON("\(api)/v1/devices/pump/commands", #"{"name": "x", "colour": 1}"#, token: ProcessTests.ownerKey)?.status == 400)

        // The webhook refuses everything (400): the message becomes a dead letter; `iotc dlq replay`
        // sends it through the running hub again, and it comes back.
        #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/d/telemetry", #"{"v":1}"#)?.status == 202)
        #expect(eventually { jsonLines(dir.path + "/requests.jsonl").count == 1 })
        #expect(eventually { (try? JSON.decode(http("GET", "\(api)/v1/dead-letters", headers: owner)?.body ?? ""))?["total"] == 1 })
        let (code, out) = try run(Build.iotc, ["dlq", "replay", "--api", "127.0.0.1:\(apiPort)"], environment: ["IOTC_API_KEY": Self.ownerKey])
        #expect(code == 0, "\(out)")
        #expect(out.contains(#""replayed":1"#))
        #expect(eventually { jsonLines(dir.path + "/requests.jsonl").count == 2 })
        let (refusedCode, refusedOut) = try run(Build.iotc, ["dlq", "replay", "--api", "127.0.0.1:\(apiPort)"],
                                                environment: ["IOTC_API_KEY": "iotc_nobody_" + String(repeating: "x", count: 40)])
        #expect(refusedCode != 0 && refusedOut.contains(#""status":401"#), "\(refusedOut)")
        let (unreachableCode, unreachableOut) = try run(Build.iotc, ["dlq", "replay", "--api", "127.0.0.1:\(freePort())"])
        #expect(unreachableCode != 0 && unreachableOut.contains("cannot reach the hub at 127.0.0.1:"), "\(unreachableOut)")

        // Reload through the API: a broken file is refused with 422 and the errors; a good one applies.
        try "pipelines: { t: { from: [ nowhere ] } }".write(toFile: file, atomically: true, encoding: .utf8)
        let refused = http("POST", "\(api)/v1/pipelines/reload", headers: owner)
        #expect(refused?.status == 422)
        #expect(refused?.body.contains("undefined source 'nowhere'") == true)
        #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/d/telemetry", "{}")?.status == 202)
        try """
            sources: { devices: { plugin: http, listen: "127.0.0.1:\(httpPort)" } }
            sinks: { hook: { plugin: webhook, url: "http://127.0.0.1:\(receiverPort)/ok" } }
            pipelines: { t: { from: [ "devices:devices/+/events" ], to: [ hook ] } }
            auth: { allow_anonymous: true }
            """.write(toFile: file, atomically: true, encoding: .utf8)
        #expect(http("POST", "\(api)/v1/pipelines/reload", headers: owner)?.status == 200)
        #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/d/telemetry", "{}")?.status == 404)
        #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/d/events", "{}")?.status == 202)
        #expect(eventually { jsonLines(dir.path + "/requests.jsonl").contains { $0["path"] == "/ok" } })
    }

    @Test func runsSeveralNIOPluginsInOneProcess() throws {
        try requirePeer(Mosquitto.installed, "mosquitto")
        let broker = Mosquitto()
        try broker.start()
        defer { broker.stop() }
        let sub = try broker.subscribe("out/#")
        defer { sub.stop() }
        let receiverPort = freePort()
        let dir = TempDir()
        let receiver = try ChildProcess("/usr/bin/env", ["python3", Build.packageRoot + "/Tests/Support/webhook_receiver.py", "\(receiverPort)", dir.path + "/requests.jsonl"])
        defer { receiver.stop() }
        #expect(waitForPort(receiverPort))
        // http (NIO server), mqtt_publish (NIO client) and webhook (AsyncHTTPClient on NIO), each with its own copy of NIO.
        let httpPort = freePort()
        let hub = try makeHub(dir)
        try hub.start(try loadConfig("""
            sources: { devices: { plugin: http, listen: "127.0.0.1:\(httpPort)" } }
            sinks:
              broker: { plugin: mqtt_publish, server: "127.0.0.1:\(broker.port)", topic: "out/{device}", protocol_version: "3.1.1" }
              fast: { plugin: mqtt_publish, server: "127.0.0.1:\(broker.port)", topic: "out/qos0/{device}", qos: 0 }
              hook: { plugin: webhook, url: "http://127.0.0.1:\(receiverPort)/in" }
            pipelines: { t: { from: [ devices ], to: [ broker, hook, fast ] } }
            auth: { allow_anonymous: true }
            """))
        defer { hub.stop() }
        #expect(waitForPort(httpPort))
        for i in 0..<20 { #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/n\(i)/telemetry", #"{"i":\#(i)}"#)?.status == 202) }
        #expect(eventually { sub.log.split(separator: "\n").filter { $0.hasPrefix("out/n") }.count == 20 }, "subscriber got: \(sub.log)")
        #expect(eventually { sub.log.split(separator: "\n").filter { $0.hasPrefix("out/qos0/") }.count == 20 }, "QoS 0 subscriber got: \(sub.log)")
        #expect(eventually { jsonLines(dir.path + "/requests.jsonl").count == 20 })
    }

    @Test func reportsBrokenPluginFilesWithoutCrashing() throws {
        let dir = TempDir()
        for name in ["file", "log"] {
            try FileManager.default.copyItem(atPath: Build.directory + "/libiotc-plugin-\(name).so", toPath: dir.path + "/libiotc-plugin-\(name).so")
        }
        try Data("this is not an ELF file".utf8).write(to: URL(fileURLWithPath: dir.path + "/libiotc-plugin-broken.so"))
        let env = ["IOTC_PLUGIN_PATH": ""]
        let (code, out) = try run(Build.iotc, ["plugins", "--plugins", dir.path], environment: env)
        #expect(code == 1)
        #expect(out.contains("error: cannot load plugin \(dir.path)/libiotc-plugin-broken.so: not a loadable shared library"))
        #expect(out.contains("file 0.1.0 (ABI 1)"))
        // check still works with the good plugins and says what is wrong with the file.
        let bad = dir.write("bad.yaml", "sinks:\n  s: { plugin: file, pathh: x }\n")
        let (checkCode, checkOut) = try run(Build.iotc, ["check", bad, "--plugins", dir.path], environment: env)
        #expect(checkCode == 1)
        #expect(checkOut.contains("\(bad):2:22: error: unknown field 'pathh' in sink 's' (did you mean 'path'?)"))
        #expect(checkOut.contains("warning: cannot load plugin"))
    }
}
