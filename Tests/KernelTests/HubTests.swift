import Crypto
import Foundation
import Testing
@testable import IoTCKernel
import IoTCPluginKit
import IoTCStore
import IoTCAPI
import Logging
import NIOConcurrencyHelpers

/// The hub in this process with the real plugins: HTTP in, file, webhook and MQTT out.
@Suite(.serialized) struct HubTests {
    struct Running {
        let hub: Hub
        let dir: TempDir
        let port: Int
        var base: String { "http://127.0.0.1:\(port)/v1/devices" }
    }

    func start(_ pipelines: String, sinks: String, auth: String = "auth: { allow_anonymous: true }", sourceExtra: String = "",
               env: [String: String] = [:]) throws -> Running {
        let dir = TempDir()
        let port = freePort()
        let yaml = """
            sources:
              devices: { plugin: http, listen: "127.0.0.1:\(port)"\(sourceExtra) }
            sinks:
            \(sinks.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
            pipelines:
            \(pipelines.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
            \(auth)
            """.replacingOccurrences(of: "$DIR", with: dir.path)
        let hub = try makeHub(dir)
        try hub.start(try loadConfig(yaml, environment: env))
        #expect(waitForPort(port))
        return Running(hub: hub, dir: dir, port: port)
    }

    /// Device states the store could not keep are given again at the next save, as they are by then.
    @Test func unsavedDeviceStatesAreGivenAgain() throws {
        let dir = TempDir()
        let hub = try makeHub(dir)
        hub.restore(states: [DeviceState(tenant: "acme", device: "pump-1", connected: true, source: "broker", remoteAddress: "10.0.0.7:5000", since: 100, lastSeen: 150)])
        let taken = hub.takeChangedStates()
        #expect(taken.map(\.device) == ["pump-1"] && taken.first?.connected == false)
        #expect(hub.takeChangedStates().isEmpty)
        hub.returnUnsaved(taken)
        #expect(hub.takeChangedStates() == taken)
        #expect(hub.takeChangedStates().isEmpty)
    }

    /// A plugin's error about a value a reference brought in shows "…" in its place: a pipeline file
    /// (which an admin key can apply through the API) cannot read a file back through the hub's errors.
    @Test func aPluginsErrorDoesNotQuoteAReferencedFile() throws {
        let dir = TempDir()
        let file = dir.write("listen.txt", "first-line-of-a-private-file\nsecond-line-of-it\n")
        let hub = try makeHub(dir)
        defer { hub.stop() }
        let config = try loadConfig("""
            sources:
              devices: { plugin: http, listen: "${file:\(file)}" }
            sinks:
              out: { plugin: file, path: \(dir.path)/out.jsonl }
            pipelines:
              p: { from: [ devices ], to: [ out ] }
            """)
        #expect {
            try hub.start(config)
        } throws: { error in
            let text = "\(error)"
            return text.contains("listen address") && text.contains("…") && !text.contains("private") && !text.contains("second-line")
        }
    }

    /// Message ids are the hub's prefix and a counter in base 36, from the first counter to the last.
    @Test func messageIDsAreThePrefixAndTheCounterInBase36() {
        let prefix = Array("mk3x9q2a-".utf8)
        for counter: UInt64 in [0, 1, 35, 36, 1_295, 1_296, 123_456_789, UInt64(Int64.max), .max] {
            #expect(Hub.messageID(prefix: prefix, counter: counter) == "mk3x9q2a-" + String(counter, radix: 36))
        }
        #expect(Hub.messageID(prefix: [], counter: 0) == "0")
        #expect(Hub.messageID(prefix: prefix, counter: .max) == "mk3x9q2a-3w5e11264sgsf")
    }

    /// A running hub's rule step: alerts reach their sink, the evaluated messages go on, a reading the
    /// rule cannot evaluate is counted and passed on, and an active alert stays active across a reload
    /// (the next reading above the clear band raises nothing new; one below clears it).
    @Test func rulesRaiseAndClearAlertsAcrossAReload() throws {
        func pipelines(_ extra: String) -> String {
            """
            t:
              from: [ "devices:devices/+/telemetry" ]
              steps:
                - decode: json
                - rule: { name: hot, raise: "temperature > 80", clear: "temperature < 75", message: "{msg.device} at {temperature}", to: [ alerts ] }\(extra)
              to: [ out ]
            """
        }
        let sinks = "out: { plugin: file, path: \"$DIR/out.jsonl\" }\nalerts: { plugin: file, path: \"$DIR/alerts.jsonl\" }"
        let r = try start(pipelines(""), sinks: sinks)
        defer { r.hub.stop() }
        for t in ["70", "85", "\"n/a\"", "82"] { #expect(postJSON("\(r.base)/oven-1/telemetry", #"{"temperature": \#(t)}"#)?.status == 202) }
        #expect(eventually { jsonLines(r.dir.path + "/out.jsonl").count == 4 })
        // The two sinks deliver independently: the alert may land after the readings.
        #expect(eventually { !jsonLines(r.dir.path + "/alerts.jsonl").isEmpty })
        var alerts = jsonLines(r.dir.path + "/alerts.jsonl")
        #expect(alerts.count == 1 && alerts.first?["payload"]?["state"] == "raised" && alerts.first?["payload"]?["message"] == "oven-1 at 85"
                && alerts.first?["topic"] == "alerts/hot" && alerts.first?["kind"] == "event", "\(alerts)")
        // The reading the rule could not compare went on to the file like the others.
        #expect(jsonLines(r.dir.path + "/out.jsonl").map { $0["payload"]?["temperature"] } == [70, 85, "n/a", 82])
        // A reload that changes the pipeline keeps the rule's state.
        let dir = r.dir.path
        try r.hub.reload(try loadConfig("""
            sources:
              devices: { plugin: http, listen: "127.0.0.1:\(r.port)" }
            sinks:
              out: { plugin: file, path: "\(dir)/out.jsonl" }
              alerts: { plugin: file, path: "\(dir)/alerts.jsonl" }
            pipelines:
            \(pipelines("\n    - set: { reloaded: \"true\" }").split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
            auth: { allow_anonymous: true }
            """))
        #expect(postJSON("\(r.base)/oven-1/telemetry", #"{"temperature": 78}"#)?.status == 202)
        #expect(postJSON("\(r.base)/oven-1/telemetry", #"{"temperature": 74}"#)?.status == 202)
        #expect(eventually { jsonLines(r.dir.path + "/out.jsonl").count == 6 })
        #expect(eventually { jsonLines(r.dir.path + "/alerts.jsonl").count >= 2 })
        alerts = jsonLines(r.dir.path + "/alerts.jsonl")
        #expect(alerts.map { $0["payload"]?["state"] } == ["raised", "cleared"], "\(alerts)")
        #expect(jsonLines(r.dir.path + "/out.jsonl").last?["payload"]?["reloaded"] == .bool(true))
    }

    /// Reloads that come together (SIGHUP and the API, two API calls) are applied one after the other:
    /// each replaces the changed sources once, and nothing is left running beside the hub (two
    /// reloads from the same running set both started a new source: one failed to bind, or, on UDP,
    /// a second CoAP source kept the port, unreferenced).
    @Test func appliesReloadsThatComeTogetherOneAtATime() throws {
        let dir = TempDir()
        let port = freePort(), udp = freePort()
        func config(_ v: Int) throws -> HubConfig {
            try loadConfig("""
                sources:
                  devices: { plugin: http, listen: "127.0.0.1:\(port)", max_body_size: \(v)KiB }
                  coap: { plugin: coap, listen: "127.0.0.1:\(udp)", retry_after: \(v)s }
                sinks: { out: { plugin: file, path: "\(dir.path)/out.jsonl" } }
                pipelines: { t: { from: [ "devices:devices/+/telemetry", "coap:devices/+/telemetry" ], to: [ out ] } }
                auth: { allow_anonymous: true }
                """)
        }
        let hub = try makeHub(dir)
        try hub.start(config(1))
        let configs = try (2...7).map(config)
        let failures = NIOLockedValueBox<[String]>([])
        DispatchQueue.concurrentPerform(iterations: configs.count) { i in
            do { try hub.reload(configs[i]) } catch { failures.withLockedValue { $0.append("\(error)") } }
        }
        #expect(failures.withLockedValue { $0 }.isEmpty, "\(failures.withLockedValue { $0 })")
        #expect(postJSON("http://127.0.0.1:\(port)/v1/devices/d/telemetry", #"{"n":1}"#)?.status == 202)
        hub.stop()
        // Nothing kept the ports, right after the stop (the CoAP loop's thread once let go of the loop,
        // and so of its socket, after the stop had returned: see WorkerThreadTests).
        #expect(bindsOnLoopback(port, SOCK_STREAM) && bindsOnLoopback(udp, SOCK_DGRAM),
                "TCP \(bindsOnLoopback(port, SOCK_STREAM)), UDP \(bindsOnLoopback(udp, SOCK_DGRAM))")
    }

    /// The hub keeps the presence (connected, last seen) of devices with credentials, not of devices let
    /// in without any, whose ids are whatever they say: a client sending under ever new ids grew the
    /// hub's memory and store without bound (about 460 bytes per id). Their messages go through alike.
    @Test func keepsThePresenceOfDevicesWithCredentialsOnly() throws {
        let dir = TempDir()
        let port = freePort()
        let hub = try makeHub(dir)
        try hub.start(try loadConfig("""
            sources: { devices: { plugin: http, listen: "127.0.0.1:\(port)" } }
            sinks: { out: { plugin: file, path: "\(dir.path)/out.jsonl" } }
            pipelines: { t: { from: [ "devices:devices/+/telemetry" ], to: [ out ] } }
            auth: { allow_anonymous: true, tokens: [ { device: known, token: t0ken-known } ] }
            """))
        defer { hub.stop() }
        #expect(postJSON("http://127.0.0.1:\(port)/v1/devices/known/telemetry", #"{"n":1}"#, token: "t0ken-known")?.status == 202)
        for i in 0..<20 { #expect(postJSON("http://127.0.0.1:\(port)/v1/devices/anon-\(i)/telemetry", #"{"n":2}"#)?.status == 202) }
        #expect(eventually { jsonLines(dir.path + "/out.jsonl").count == 21 })
        #expect(hub.presence(tenant: "default", device: "known") != nil)
        #expect(hub.presence(tenant: "default", device: "anon-0") == nil)
        #expect(hub.takeChangedStates().map(\.device) == ["known"])
    }

    /// Pipeline files replaced at the same moment (two API calls) are checked and written one at a time:
    /// two texts that are valid each but not together (the same pipeline in two files) cannot both
    /// land, which would leave files that the next start refuses.
    @Test func replacesPipelineFilesOneAtATime() async throws {
        let dir = TempDir()
        let port = freePort()
        let sources = "sources: { devices: { plugin: http, listen: \"127.0.0.1:\(port)\" } }\nsinks: { out: { plugin: log } }\nauth: { allow_anonymous: true }\n"
        let pipelines = "pipelines: { p: { from: [ devices ], to: [ out ] } }\n"
        let a = dir.write("a.yaml", sources), b = dir.write("b.yaml", pipelines)
        let loader = HubConfigLoader(catalog: Build.plugins.catalog)
        let hub = try makeHub(dir)
        try hub.start(try loader.load(files: [a, b]).0)
        defer { hub.stop() }
        let files = PipelineFiles(hub: hub, loader: loader, files: [a, b], logger: Logger(label: "test"))
        var landed = 0
        for round in 0..<8 {
            let extra = "q\(round): { from: [ devices ], to: [ out ] }"
            async let first = files.apply(replacing: a, with: sources + "pipelines: { \(extra) }\n")
            async let second = files.apply(replacing: b, with: "pipelines: { p: { from: [ devices ], to: [ out ] }, \(extra) }\n")
            let (x, y) = await (first, second)
            #expect(x == nil || y == nil, "round \(round): both landed")
            landed += (x == nil ? 1 : 0) + (y == nil ? 1 : 0)
            #expect((try? loader.load(files: [a, b])) != nil, "round \(round): the files on disk are not valid together")
            let resetA = await files.apply(replacing: a, with: sources), resetB = await files.apply(replacing: b, with: pipelines)
            #expect(resetA == nil && resetB == nil)
        }
        #expect(landed == 8)
    }

    /// An absence rule in a running hub: the pipeline's timer raises it while the device is silent
    /// (no message comes to trigger it), and the device's next message clears it.
    @Test func anAbsenceRuleIsRaisedByTheTimerAndClearedByTheNextMessage() throws {
        let r = try start("""
            t:
              from: [ "devices:devices/+/telemetry" ]
              steps:
                - rule: { name: quiet, absent: 1s, message: "{msg.device} is quiet", to: [ alerts ] }
              to: [ out ]
            """, sinks: "out: { plugin: file, path: \"$DIR/out.jsonl\" }\nalerts: { plugin: file, path: \"$DIR/alerts.jsonl\" }")
        defer { r.hub.stop() }
        #expect(postJSON("\(r.base)/meter-9/telemetry", #"{"kwh": 1}"#)?.status == 202)
        #expect(eventually(timeout: 5) { jsonLines(r.dir.path + "/alerts.jsonl").count == 1 })
        let raised = try #require(jsonLines(r.dir.path + "/alerts.jsonl").first)
        #expect(raised["payload"]?["state"] == "raised" && raised["payload"]?["message"] == "meter-9 is quiet" && raised["device"] == "meter-9", "\(raised)")
        #expect((raised["payload"]?["at"]?.number ?? 0) - (raised["payload"]?["since"]?.number ?? 0) >= 1000)
        #expect(postJSON("\(r.base)/meter-9/telemetry", #"{"kwh": 2}"#)?.status == 202)
        #expect(eventually { jsonLines(r.dir.path + "/alerts.jsonl").map { $0["payload"]?["state"] } == ["raised", "cleared"] })
    }

    /// Rule state survives a restart: an alert raised before it is still active after (the next hot
    /// reading raises nothing new, a cool one clears it), and a window keeps its samples.
    @Test func ruleStateSurvivesARestart() throws {
        let dir = TempDir()
        let port = freePort()
        let yaml = """
            sources:
              devices: { plugin: http, listen: "127.0.0.1:\(port)" }
            sinks:
              alerts: { plugin: file, path: "\(dir.path)/alerts.jsonl" }
            pipelines:
              t:
                from: [ "devices:devices/+/telemetry" ]
                steps:
                  - decode: json
                  - rule: { name: hot, raise: "temperature > 80", to: [ alerts ] }
                  - rule: { name: busy, window: { over: 1h, of: "1" }, raise: "window.count >= 3", to: [ alerts ] }
            auth: { allow_anonymous: true }
            """
        let base = "http://127.0.0.1:\(port)/v1/devices/oven-2/telemetry"
        var hub = try makeHub(dir)
        try hub.start(try loadConfig(yaml))
        #expect(waitForPort(port))
        #expect(postJSON(base, #"{"temperature": 90}"#)?.status == 202)
        #expect(eventually { jsonLines(dir.path + "/alerts.jsonl").count == 1 })
        hub.stop()
        hub = try makeHub(dir)
        try hub.start(try loadConfig(yaml))
        defer { hub.stop() }
        #expect(waitForPort(port))
        #expect(postJSON(base, #"{"temperature": 95}"#)?.status == 202)  // still raised: nothing; the window's second sample
        #expect(postJSON(base, #"{"temperature": 70}"#)?.status == 202)  // cleared; the third sample raises busy
        #expect(eventually { jsonLines(dir.path + "/alerts.jsonl").count == 3 })
        let alerts = jsonLines(dir.path + "/alerts.jsonl").map { "\($0["payload"]?["rule"] ?? .null) \($0["payload"]?["state"] ?? .null)" }
        #expect(alerts == [#"string("hot") string("raised")"#, #"string("hot") string("cleared")"#, #"string("busy") string("raised")"#], "\(alerts)")
    }

    /// Alerts as a stream: the pipeline sink hands a rule's alerts to a notification pipeline that
    /// shapes them; a pipeline that feeds itself is stopped after 8 passes.
    @Test func alertsFeedAnotherPipeline() throws {
        let r = try start("""
            t:
              from: [ "devices:devices/+/telemetry" ]
              steps:
                - decode: json
                - rule: { name: hot, raise: "temperature > 80", message: "{msg.device} at {temperature}", to: [ to-notify ] }
            notify:
              from: []
              steps:
                - decode: json
                - map: { text: "upper(severity) + ': ' + message", device: "device" }
              to: [ out ]
            spin:
              from: [ "devices:devices/+/events" ]
              to: [ to-spin ]
            """, sinks: "out: { plugin: file, path: \"$DIR/out.jsonl\" }\nto-notify: { plugin: pipeline, pipeline: notify }\nto-spin: { plugin: pipeline, pipeline: spin, retry: { max_attempts: 1 } }")
        defer { r.hub.stop() }
        #expect(postJSON("\(r.base)/oven-5/telemetry", #"{"temperature": 90}"#)?.status == 202)
        #expect(eventually { jsonLines(r.dir.path + "/out.jsonl").count == 1 })
        let line = try #require(jsonLines(r.dir.path + "/out.jsonl").first)
        #expect(line["payload"] == ["text": "MAJOR: oven-5 at 90", "device": "oven-5"] && line["topic"] == "alerts/hot"
                && line["metadata"]?["pipeline_hops"] == "1", "\(line)")
        // A loop: the message comes back to its own pipeline until the hop limit refuses it.
        #expect(postJSON("\(r.base)/oven-5/events", #"{"n": 1}"#)?.status == 202)
        #expect(eventually(timeout: 10) { r.hub.deadLetters.list().count == 1 })
        let dead = try #require(r.hub.deadLetters.list().first)
        #expect(dead.reason.contains("passed between pipelines 8 times") && dead.sink == "to-spin", "\(dead.reason)")
    }

    /// Escalation: an alert still active and unacknowledged a second after it was raised goes to the
    /// pager, once; an acknowledged one does not.
    @Test func unacknowledgedAlertsEscalateOnce() throws {
        let r = try start("""
            t:
              from: [ "devices:devices/+/telemetry" ]
              steps:
                - decode: json
                - rule: { name: hot, raise: "temperature > 80", message: "{msg.device} at {temperature}", escalate: { after: 1s, to: [ pager ] } }
            """, sinks: "pager: { plugin: file, path: \"$DIR/pager.jsonl\" }")
        defer { r.hub.stop() }
        #expect(postJSON("\(r.base)/oven-6/telemetry", #"{"temperature": 90}"#)?.status == 202)
        #expect(postJSON("\(r.base)/oven-7/telemetry", #"{"temperature": 91}"#)?.status == 202)
        #expect(eventually { r.hub.alerts.list(tenant: "default").count == 2 })
        let seven = try #require(r.hub.alerts.list(tenant: "default").first { $0.device == "oven-7" })
        _ = try r.hub.alerts.act(.acknowledge, tenant: "default", id: seven.id, by: "key:test", at: Int64(Date().timeIntervalSince1970 * 1000))
        #expect(eventually(timeout: 5) { jsonLines(r.dir.path + "/pager.jsonl").count == 1 })
        Thread.sleep(forTimeInterval: 1.5)
        let pages = jsonLines(r.dir.path + "/pager.jsonl")
        #expect(pages.count == 1 && pages[0]["payload"]?["state"] == "escalated" && pages[0]["payload"]?["device"] == "oven-6"
                && pages[0]["payload"]?["message"] == "oven-6 at 90", "\(pages)")
        // The page's delivery is recorded on the alert, by its id.
        let history = r.hub.alerts.list(tenant: "default").first { $0.device == "oven-6" }?.history ?? []
        #expect(history.map(\.action) == ["raised", "escalated", "notified"] && history.last?.sink == "pager", "\(history)")
    }

    /// One source feeding several pipelines: a message goes to each pipeline whose `from` matches its
    /// topic and to no other, durable and not alike, and is answered once it is in all of them.
    @Test func aMessageGoesToEveryPipelineThatReadsItsTopic() throws {
        let r = try start("""
            all:
              from: [ "devices:devices/+/telemetry" ]
              durable: true
              to: [ all ]
            pumps:
              from: [ "devices:devices/pump-1/telemetry", "devices:devices/pump-2/telemetry", "devices:devices/+/events" ]
              durable: true
              to: [ pumps ]
            fans:
              from: [ "devices:devices/fan-1/telemetry" ]
              to: [ fans ]
            """, sinks: """
            all: { plugin: file, path: "$DIR/all.jsonl" }
            pumps: { plugin: file, path: "$DIR/pumps.jsonl" }
            fans: { plugin: file, path: "$DIR/fans.jsonl" }
            """)
        defer { r.hub.stop() }
        for device in ["pump-1", "fan-1", "valve-1", "pump-2"] {
            #expect(postJSON("\(r.base)/\(device)/telemetry", #"{"n": 1}"#)?.status == 202, "\(device)")
        }
        #expect(postJSON("\(r.base)/valve-1/events", "{}")?.status == 202)
        func devices(_ file: String) -> [String] {
            jsonLines(r.dir.path + "/" + file).compactMap { if case .string(let s)? = $0["device"] { s } else { nil } }.sorted()
        }
        #expect(eventually { devices("all.jsonl").count == 4 && devices("pumps.jsonl").count == 3 && devices("fans.jsonl").count == 1 })
        Thread.sleep(forTimeInterval: 0.3)
        #expect(devices("all.jsonl") == ["fan-1", "pump-1", "pump-2", "valve-1"])
        #expect(devices("pumps.jsonl") == ["pump-1", "pump-2", "valve-1"])
        #expect(devices("fans.jsonl") == ["fan-1"])
    }

    @Test func ingestsTelemetryIntoAFile() throws {
        let r = try start("""
            telemetry:
              from: [ "devices:devices/+/telemetry" ]
              durable: true
              steps:
                - decode: auto
                - map: { celsius: "round((f - 32) / 1.8, 1)", meta.site: "'line-1'" }
              to: [ out ]
            """, sinks: "out: { plugin: file, path: \"$DIR/out.jsonl\" }")
        defer { r.hub.stop() }
        for f in [32, 212, 100] {
            let res = postJSON("\(r.base)/s-\(f)/telemetry", #"{"f": \#(f)}"#)
            #expect(res?.status == 202)
        }
        // CBOR works the same way.
        let cbor = http("POST", "\(r.base)/s-cbor/telemetry", body: CBOR.encode(["f": 50]), headers: ["Content-Type": "application/cbor"])
        #expect(cbor?.status == 202)
        #expect(eventually { jsonLines(r.dir.path + "/out.jsonl").count == 4 })
        let lines = jsonLines(r.dir.path + "/out.jsonl")
        #expect(lines.prefix(3).map { $0["payload"]?["celsius"]?.number } == [0, 100, 37.8])
        // The CBOR message stays CBOR: the file holds it as base64.
        guard case .string(let b64)? = lines[3]["payload_base64"], let cborBytes = Base64.decode(b64) else {
            Issue.record("CBOR payload missing: \(lines[3])")
            return
        }
        #expect(try CBOR.decode(cborBytes)["celsius"]?.number == 10)
        #expect(lines[3]["content_type"] == "application/cbor")
        #expect(lines[0]["device"] == "s-32")
        #expect(lines[0]["topic"] == "devices/s-32/telemetry")
        #expect(lines[0]["metadata"]?["site"] == "line-1")
        #expect(lines[0]["device_time"] == nil)
        // The device's own time, from X-Device-Time in RFC 3339 or milliseconds since the epoch.
        for t in ["2026-01-02T04:04:05.5+01:00", "1767323045500"] {
            let res = http("POST", "\(r.base)/timed/telemetry", body: Array(#"{"f": 32}"#.utf8),
                           headers: ["Content-Type": "application/json", "X-Device-Time": t])
            #expect(res?.status == 202)
        }
        #expect(eventually { jsonLines(r.dir.path + "/out.jsonl").filter { $0["device"] == "timed" }.count == 2 })
        #expect(jsonLines(r.dir.path + "/out.jsonl").filter { $0["device"] == "timed" }.map { $0["device_time"] } == ["2026-01-02T03:04:05.500Z", "2026-01-02T03:04:05.500Z"])
        // Events have no pipeline here: 404 names the topic.
        let unrouted = postJSON("\(r.base)/s1/events", "{}")
        #expect(unrouted?.status == 404)
        #expect(unrouted?.body.contains("no pipeline reads devices/s1/events") == true)
    }

    @Test func refusesBadRequestsCleanly() throws {
        let r = try start("t: { from: [ devices ], to: [ out ] }", sinks: "out: { plugin: file, path: \"$DIR/out.jsonl\" }",
                          sourceExtra: ", max_body_size: 64")
        defer { r.hub.stop() }
        #expect(http("POST", "\(r.base)/d/telemetry", body: Array("x".utf8), headers: ["Content-Type": "text/plain"])?.status == 415)
        #expect(http("POST", "\(r.base)/d/telemetry", body: Array("{}".utf8))?.status == 415)
        let notJSON = postJSON("\(r.base)/d/telemetry", "{nope")
        #expect(notJSON?.status == 400)
        #expect(notJSON?.headers["content-type"] == "application/problem+json")
        #expect(http("POST", "\(r.base)/d/telemetry", body: [0x22, 0xC3, 0x28, 0x22], headers: ["Content-Type": "application/json"])?.status == 400)
        let big = postJSON("\(r.base)/d/telemetry", "{\"a\":\"\(String(repeating: "x", count: 100))\"}")
        #expect(big?.status == 413)
        // A 405 and OPTIONS name the methods the resource takes (RFC 9110 §15.5.6); HEAD is GET's
        // header fields alone, on the attributes, not on the commands a GET would take.
        let wrong = http("GET", "\(r.base)/d/telemetry")
        #expect(wrong?.status == 405 && wrong?.headers["allow"] == "POST, OPTIONS", "\(String(describing: wrong))")
        // A method HTTP does not define (methods are case-sensitive) is not implemented: 501.
        let unknown = try #require(RawSocket(port: r.port))
        unknown.send("post /v1/devices/d/telemetry HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nFROB /v1/devices/d/telemetry HTTP/1.1\r\nHost: x\r\n\r\n")
        let notImplemented = unknown.readResponses(2)
        #expect(notImplemented.count == 2 && notImplemented.allSatisfy { $0.hasPrefix("HTTP/1.1 501") }, "\(notImplemented)")
        #expect(http("PUT", "\(r.base)/d/telemetry")?.status == 405)
        let options = http("OPTIONS", "\(r.base)/d/attributes")
        #expect(options?.status == 204 && options?.headers["allow"] == "GET, HEAD, POST, OPTIONS", "\(String(describing: options))")
        #expect(http("HEAD", "\(r.base)/d/commands")?.headers["allow"] == "GET, OPTIONS")
        let both = try #require(RawSocket(port: r.port))
        both.send("HEAD /v1/devices/d/attributes HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/devices/d/attributes HTTP/1.1\r\nHost: x\r\n\r\n")
        let answers = both.readResponses(2)
        #expect(answers.count == 2 && answers[0].hasPrefix("HTTP/1.1 200") && answers[0].hasSuffix("\r\n\r\n") && answers[0].contains("Content-Length: 2\r\n"),
                "\(answers)")
        #expect(answers.count == 2 && answers[1].hasPrefix("HTTP/1.1 200") && answers[1].hasSuffix("\r\n\r\n{}"), "\(answers)")
        #expect(http("POST", "\(r.base)/d/telemetry", body: Array("{}".utf8), headers: ["Content-Type": "application/json", "X-Device-Time": "yesterday"])?.status == 400)
        #expect(http("GET", "http://127.0.0.1:\(r.port)/nothing")?.status == 404)
        // A body over the limit without Content-Length (chunked) is refused as well.
        let s = try #require(RawSocket(port: r.port))
        s.send("POST /v1/devices/d/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n50\r\n\(String(repeating: " ", count: 80))\r\n0\r\n\r\n")
        #expect(s.readResponses(1).first?.hasPrefix("HTTP/1.1 413") == true)
        #expect(s.isClosed())
        // A transfer coding other than chunked cannot be framed: 501 (RFC 9112 §6.1), and the connection closes.
        let coded = try #require(RawSocket(port: r.port))
        coded.send("POST /v1/devices/d/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
        #expect(coded.readResponses(1).first?.hasPrefix("HTTP/1.1 501") == true)
        #expect(coded.isClosed())
        // HTTP/2.0 in an HTTP/1 request line: 505. A later 1.x is taken as 1.1 (RFC 9112 §2.3).
        let two = try #require(RawSocket(port: r.port))
        two.send("GET /v1/devices/d/attributes HTTP/2.0\r\nHost: x\r\n\r\n")
        #expect(two.readResponses(1).first?.hasPrefix("HTTP/1.1 505") == true)
        let later = try #require(RawSocket(port: r.port))
        later.send("OPTIONS /v1/devices/d/attributes HTTP/1.2\r\nHost: x\r\n\r\n")
        #expect(later.readResponses(1).first?.hasPrefix("HTTP/1.1 204") == true)
        // Garbage instead of HTTP: 400 and the connection closes; the server carries on.
        let g = try #require(RawSocket(port: r.port))
        g.send("\u{1}\u{2}NOT HTTP\r\n\r\n")
        #expect(g.readResponses(1).first?.hasPrefix("HTTP/1.1 400") == true)
        // Paths the API does not have, and an id that decodes to a slash.
        #expect(postJSON("\(r.base)/d/telemetry/more", "{}")?.status == 404)
        #expect(postJSON("\(r.base)/d/commands/c1/result/more", "{}")?.status == 404)
        #expect(postJSON("\(r.base)/a%2Fb/telemetry", "{}")?.status == 404)
        #expect(postJSON("http://127.0.0.1:\(r.port)/v1/devicesX/d/telemetry", "{}")?.status == 404)
        // A percent-encoded id is decoded.
        #expect(postJSON("\(r.base)/pump%2D7/telemetry", "{}")?.status == 202)
        #expect(eventually { jsonLines(r.dir.path + "/out.jsonl").count == 1 })
        #expect(jsonLines(r.dir.path + "/out.jsonl").first?["device"] == "pump-7")
        // Expect: 100-continue (RFC 9110 §10.1.1): the headers alone get 100 Continue, once; the body then
        // gets the answer. A body sent with the headers, and HTTP/1.0, get no 100.
        let e = try #require(RawSocket(port: r.port))
        e.send("POST /v1/devices/d/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-Continue\r\nContent-Length: 8\r\n\r\n")
        #expect(e.readResponses(1, timeout: 2) == ["HTTP/1.1 100 Continue\r\n\r\n"])
        e.send("{\"a\":")
        e.send("11}")
        #expect(e.readResponses(1).first?.hasPrefix("HTTP/1.1 202") == true)
        e.send("POST /v1/devices/d/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}"
               + "POST /v1/devices/d/telemetry HTTP/1.0\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        let noContinue = e.readResponses(1)
        #expect(noContinue.count == 1 && noContinue[0].hasPrefix("HTTP/1.1 202"), "\(noContinue)")
        #expect(e.readResponses(1, timeout: 1).isEmpty, "no 100 for HTTP/1.0")
        // A content coding the hub does not undo is refused, naming the one it takes; identity is the body as it is.
        let gzip = http("POST", "\(r.base)/d/telemetry", body: [0x1F, 0x8B, 0x08, 0x00], headers: ["Content-Type": "application/json", "Content-Encoding": "gzip"])
        #expect(gzip?.status == 415 && gzip?.headers["accept-encoding"] == "identity" && gzip?.body.contains("content coding 'gzip'") == true,
                "\(String(describing: gzip))")
        #expect(http("POST", "\(r.base)/d/telemetry", body: Array("{}".utf8), headers: ["Content-Type": "application/json", "Content-Encoding": "Identity"])?.status == 202)
        #expect(eventually { jsonLines(r.dir.path + "/out.jsonl").count == 4 }, "the two bodies that came after 100 Continue and with it, and the identity one")
    }

    @Test func handlesWrongLengthsAndIdleConnections() throws {
        let r = try start("t: { from: [ devices ], to: [ out ] }", sinks: "out: { plugin: file, path: \"$DIR/out.jsonl\" }",
                          sourceExtra: ", idle_timeout: 500ms")
        defer { r.hub.stop() }
        // A body shorter than its Content-Length, then silence: nothing is accepted and the connection closes.
        let short = try #require(RawSocket(port: r.port))
        short.send("POST /v1/devices/d/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":1}")
        #expect(short.isClosed(timeout: 5))
        // A body longer than its Content-Length: the first request is taken, the rest is a malformed next request.
        let long = try #require(RawSocket(port: r.port))
        long.send("POST /v1/devices/d/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":2}garbage\r\n\r\n")
        let answers = long.readResponses(2)
        #expect(answers.first?.hasPrefix("HTTP/1.1 202") == true)
        #expect(answers.dropFirst().first?.hasPrefix("HTTP/1.1 400") == true)
        // A body that ends before its Content-Length because the client closes: nothing is accepted.
        let cut = try #require(RawSocket(port: r.port))
        cut.send("POST /v1/devices/d/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"a\":3")
        shutdown(cut.fd, Int32(SHUT_WR))
        #expect(cut.isClosed())
        // A header section sent a byte at a time, each within the idle time-out: 408 once it has taken
        // longer than the time-out in all, and the connection closes.
        let slow = try #require(RawSocket(port: r.port))
        let began = Date()
        for byte in "POST /v1/devices/d/telemetry HTTP/1.1\r\nHost: x\r\n".utf8 {
            slow.send([byte])
            usleep(100_000)
            if Date().timeIntervalSince(began) > 3 { break }
        }
        let timedOut = slow.readResponses(1, timeout: 1)
        #expect(timedOut.first?.hasPrefix("HTTP/1.1 408") == true, "\(timedOut)")
        #expect(slow.isClosed(timeout: 1))
        // A body at 5,000 bytes/s takes 2 s, four times the idle time-out, and is taken: past the time-out
        // a request needs only keep a pace of 500 bytes/s. At 330 bytes/s it gets 408.
        for (piece, pause, status) in [(1_000, 200_000, "202"), (100, 300_000, "408")] {
            let s = try #require(RawSocket(port: r.port))
            s.send("POST /v1/devices/d/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10002\r\n\r\n\"")
            let began = Date()
            for _ in 0..<(10_000 / piece) where Date().timeIntervalSince(began) < 6 {
                usleep(useconds_t(pause))
                s.send(String(repeating: "x", count: piece))
            }
            s.send("\"")
            let answer = s.readResponses(1, timeout: 2)
            #expect(answer.first?.hasPrefix("HTTP/1.1 \(status)") == true, "\(piece) bytes every \(pause) µs: \(answer)")
        }
        // A command stream stays open past the idle time-out.
        let stream = try #require(RawSocket(port: r.port))
        stream.send("GET /v1/devices/d/commands/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(!stream.isClosed(timeout: 1.5))
        #expect(eventually { jsonLines(r.dir.path + "/out.jsonl").count == 2 })
        usleep(200_000)
        #expect(jsonLines(r.dir.path + "/out.jsonl").map { $0["payload"] } == [["a": 2], .string(String(repeating: "x", count: 10_000))])
    }

    @Test func answersPipelinedRequestsInOrder() throws {
        let r = try start("t: { from: [ devices ], to: [ out ] }", sinks: "out: { plugin: file, path: \"$DIR/out.jsonl\" }")
        defer { r.hub.stop() }
        let s = try #require(RawSocket(port: r.port))
        var batch = ""
        for i in 0..<5 {
            let body = #"{"n":\#(i)}"#
            batch += "POST /v1/devices/p\(i)/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
        }
        batch += "GET /v1/devices/p0/nope HTTP/1.1\r\nHost: x\r\n\r\n"
        s.send(batch)
        let responses = s.readResponses(6)
        #expect(responses.map { String($0.prefix(12)) } == Array(repeating: "HTTP/1.1 202", count: 5) + ["HTTP/1.1 404"])
        #expect(eventually { jsonLines(r.dir.path + "/out.jsonl").map { $0["payload"]?["n"] } == [0, 1, 2, 3, 4] })
        // Far more than the 64 KiB a client may send ahead, with a one-second long-poll in the middle:
        // reading stops while the poll waits and resumes after it, and every request is answered in order.
        batch = ""
        for i in 0..<1800 {
            if i == 300 { batch += "GET /v1/devices/p0/commands?wait=1 HTTP/1.1\r\nHost: x\r\n\r\n" }
            let body = #"{"n":\#(i)}"#
            batch += "POST /v1/devices/q/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
        }
        #expect(batch.utf8.count > 3 * 64 * 1024)
        s.send(batch)
        let statuses = s.readResponses(1801, timeout: 20).map { String($0.prefix(12)) }
        #expect(statuses == Array(repeating: "HTTP/1.1 202", count: 300) + ["HTTP/1.1 204"] + Array(repeating: "HTTP/1.1 202", count: 1500),
                "\(statuses.count) answers")
        let written = { jsonLines(r.dir.path + "/out.jsonl").filter { $0["device"] == "q" }.map { Int($0["payload"]?["n"]?.number ?? -1) } }
        #expect(eventually(timeout: 20) { written() == Array(0..<1800) }, "\(written().count) written; first out of place at \(written().enumerated().first { $0.offset != $0.element }.map { "\($0)" } ?? "-")")
        // The same requests cut anywhere, a few bytes to a few hundred at a time, arrive whole.
        var bytes = Array((0..<60).map { i -> String in
            let body = #"{"n":\#(i)}"#
            return "POST /v1/devices/cut/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
        }.joined().utf8)[...]
        var random = SplitMix(seed: 7)
        while !bytes.isEmpty {
            let n = min(bytes.count, Int.random(in: 1...300, using: &random))
            s.send(Array(bytes.prefix(n)))
            bytes = bytes.dropFirst(n)
            usleep(1000)
        }
        #expect(s.readResponses(60, timeout: 10).map { String($0.prefix(12)) } == Array(repeating: "HTTP/1.1 202", count: 60))
        #expect(eventually { jsonLines(r.dir.path + "/out.jsonl").filter { $0["device"] == "cut" }.map { Int($0["payload"]?["n"]?.number ?? -1) } == Array(0..<60) })
    }

    @Test func authenticatesDevicesWithBearerTokens() throws {
        let r = try start("t: { from: [ devices ], to: [ out ] }", sinks: "out: { plugin: file, path: \"$DIR/out.jsonl\" }",
                          auth: "auth: { tokens: [ { device: s1, token: \"${env:S1_TOKEN}\", tenant: acme } ] }", env: ["S1_TOKEN": "t0ken-s1"])
        defer { r.hub.stop() }
        #expect(postJSON("\(r.base)/s1/telemetry", "{}")?.status == 401)
        #expect(postJSON("\(r.base)/s1/telemetry", "{}", token: "wrong")?.status == 401)
        #expect(postJSON("\(r.base)/s2/telemetry", "{}", token: "t0ken-s1")?.status == 401)
        #expect(http("POST", "\(r.base)/s1/telemetry", body: Array("{}".utf8), headers: ["Content-Type": "application/json", "Authorization": "Basic eDp5"])?.status == 401)
        #expect(postJSON("\(r.base)/s1/telemetry", #"{"ok":1}"#, token: "t0ken-s1")?.status == 202)
        #expect(eventually { jsonLines(r.dir.path + "/out.jsonl").first?["tenant"] == "acme" })
    }

    @Test func pushesBackWhenASinkCannotKeepUp() throws {
        // Nothing listens on the broker port: the sink reports backpressure, its queue and then the
        // pipeline's fill, and the HTTP source answers 503 with Retry-After instead of buffering.
        let r = try start("""
            t:
              from: [ devices ]
              queue_size: 2
              to: [ broker ]
            """, sinks: "broker: { plugin: mqtt_publish, server: \"127.0.0.1:\(freePort())\", queue_size: 2, reconnect_initial: 50ms }")
        defer { r.hub.stop(timeout: 1) }
        var statuses: [Int] = []
        var retryAfter: String?
        for i in 0..<12 {
            let res = postJSON("\(r.base)/d/telemetry", #"{"n":\#(i)}"#)
            statuses.append(res?.status ?? 0)
            if res?.status == 503 { retryAfter = res?.headers["retry-after"] }
        }
        // Two fit the pipeline's queue at least; the rest is bounded by the pipeline's queue (2), the
        // worker's batch (at most what that queue held: 2), the sink's queue (2) and the writes the sink
        // holds while it reports busy and retries.
        #expect(statuses.prefix(2).allSatisfy { $0 == 202 })
        #expect(statuses.contains(503))
        #expect(statuses.filter { $0 == 202 }.count <= 9)
        #expect(retryAfter == "1")
        #expect(r.hub.status.pipelines.first?.queued ?? 0 <= 3)
    }

    @Test func retriesThenDeadLettersAndReplays() throws {
        let receiverPort = freePort()
        let dir = TempDir()
        let receiver = try ChildProcess("/usr/bin/env", ["python3", Build.packageRoot + "/Tests/Support/webhook_receiver.py", "\(receiverPort)", dir.path + "/requests.jsonl"])
        defer { receiver.stop() }
        #expect(waitForPort(receiverPort))
        let r = try start("""
            failing: { from: [ "devices:devices/+/telemetry" ], to: [ flaky ] }
            rejecting: { from: [ "devices:devices/+/events" ], to: [ refuses ] }
            """, sinks: """
            flaky: { plugin: webhook, url: "http://127.0.0.1:\(receiverPort)/status/503", retry: { max_attempts: 3, initial_backoff: 10ms, max_backoff: 50ms } }
            refuses: { plugin: webhook, url: "http://127.0.0.1:\(receiverPort)/status/400" }
            """)
        defer { r.hub.stop() }
        #expect(postJSON("\(r.base)/d1/telemetry", #"{"v":1}"#)?.status == 202)
        #expect(postJSON("\(r.base)/d1/events", #"{"e":1}"#)?.status == 202)
        #expect(eventually { r.hub.deadLetters.list().count == 2 })
        let entries = r.hub.deadLetters.list().sorted { $0.pipeline < $1.pipeline }
        #expect(entries[0].pipeline == "failing")
        #expect(entries[0].sink == "flaky")
        #expect(entries[0].attempts == 3)
        #expect(entries[0].reason.contains("gave up after 3 attempts"))
        #expect(entries[0].reason.contains("503"))
        #expect(entries[1].sink == "refuses")
        #expect(entries[1].attempts == 1)
        #expect(entries[1].reason.contains("rejected by the sink"))
        let requests = jsonLines(dir.path + "/requests.jsonl")
        #expect(requests.filter { $0["path"] == "/status/503" }.count == 3)
        #expect(requests.filter { $0["path"] == "/status/400" }.count == 1)
        // Replay sends the failed delivery to its sink again; it fails again and comes back.
        let (replayed, skipped, left) = r.hub.replayDeadLetters(ids: [entries[0].id, "no-such-id"])
        #expect(replayed == 1 && left == 0)
        #expect(skipped == ["no-such-id"])
        #expect(eventually { jsonLines(dir.path + "/requests.jsonl").filter { $0["path"] == "/status/503" }.count == 6 })
        #expect(eventually { r.hub.deadLetters.list().count == 2 })
        #expect(r.hub.deadLetters.remove(ids: nil) == 2)
    }

    /// Replaying dead letters never waits for room: what its sink (or pipeline) cannot take now stays in
    /// the store, counted as left. It waited, on the operator API's shared task pool: two replays into a
    /// sink whose server never answers held every thread of that pool (two on this machine), and the
    /// API answered nothing, not even /health, nor did the hub stop on SIGINT (by hand, release build).
    @Test func replayingDeadLettersNeverWaitsForRoom() throws {
        let silent = try #require(SilentServer())
        let r = try start("t: { from: [ devices ], to: [ hook ] }", sinks: """
            hook: { plugin: webhook, url: "http://127.0.0.1:\(silent.port)/x", timeout: 60s, max_in_flight: 1, queue_size: 2 }
            """)
        defer { r.hub.stop(timeout: 1) }
        for i in 0..<10 {
            try r.hub.deadLetters.add(pipeline: "t", sink: "hook", step: nil, reason: "test", attempts: 1,
                                      message: CanonicalMessage(Message(id: "m\(i)", topic: "devices/d/telemetry", payload: Array("{}".utf8)), receivedTime: 1))
        }
        let outcome = NIOLockedValueBox<(replayed: Int, skipped: [String], left: Int)?>(nil)
        let replay = Thread { [hub = r.hub] in
            let o = hub.replayDeadLetters(ids: nil)
            outcome.withLockedValue { $0 = o }
        }
        replay.start()
        #expect(eventually(timeout: 5) { outcome.withLockedValue { $0 } != nil }, "the replay returned")
        let (replayed, skipped, left) = try #require(outcome.withLockedValue { $0 })
        // One write in flight and two queued; the other seven stay, replayed once there is room.
        #expect(replayed == 3 && left == 7 && skipped.isEmpty, "\(replayed) replayed, \(left) left")
        #expect(r.hub.deadLetters.list().count == 7)
    }

    @Test func timesOutWebhooksAndRetries() throws {
        let silent = try #require(SilentServer())
        let port = silent.port
        let r = try start("t: { from: [ devices ], to: [ slow ] }",
                          sinks: "slow: { plugin: webhook, url: \"http://127.0.0.1:\(port)/x\", timeout: 200ms, retry: { max_attempts: 2, initial_backoff: 10ms } }")
        defer { r.hub.stop(timeout: 1) }
        let started = Date()
        #expect(postJSON("\(r.base)/d/telemetry", "{}")?.status == 202)
        #expect(eventually(timeout: 10) { r.hub.deadLetters.list().count == 1 })
        let entry = try #require(r.hub.deadLetters.list().first)
        #expect(entry.attempts == 2)
        #expect(entry.reason.hasPrefix("gave up after 2 attempts: request to 127.0.0.1 failed"))
        #expect(Date().timeIntervalSince(started) < 5)
    }

    /// A request is checked as soon as its header fields are in: without valid credentials, or for no
    /// resource, it is answered at once and the connection closes, its body unread. Before, the hub
    /// read the whole body first (by hand, 200 connections without credentials each holding all but
    /// the last byte of a 1 MB body: 214 MB). With credentials the body is read and taken as before.
    @Test func requestsAreCheckedBeforeTheirBodiesAreRead() throws {
        let r = try start("t: { from: [ devices ], to: [ out ] }", sinks: "out: { plugin: file, path: \"$DIR/out.jsonl\" }",
                          auth: "auth: { tokens: [ { device: d1, token: t0ken-d1 } ] }")
        defer { r.hub.stop() }
        let partial = String(repeating: "a", count: 100_000)
        func head(_ path: String, token: String?) -> String {
            "POST \(path) HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n"
                + (token.map { "Authorization: Bearer \($0)\r\n" } ?? "") + "\r\n"
        }
        for (path, token, status) in [("/v1/devices/d1/telemetry", nil, "401"), ("/v1/devices/d1/telemetry", "wrong", "401"),
                                      ("/v1/devices/d2/telemetry", "t0ken-d1", "401"), ("/v1/elsewhere", "t0ken-d1", "404")] {
            let socket = try #require(RawSocket(port: r.port))
            socket.send(head(path, token: token) + partial)
            let answer = socket.readResponses(1, timeout: 3).first ?? ""
            #expect(answer.hasPrefix("HTTP/1.1 \(status)") && answer.contains("Connection: close"), "\(path) \(token ?? "-"): \(answer.prefix(80))")
            #expect(socket.isClosed(), "\(path) \(token ?? "-")")
        }
        // With its credentials, the body is awaited and taken.
        let socket = try #require(RawSocket(port: r.port))
        let body = #"{"v":""# + String(repeating: "a", count: 999_992) + #""}"#
        socket.send(head("/v1/devices/d1/telemetry", token: "t0ken-d1") + String(body.prefix(100_000)))
        #expect(socket.readBytes(1, timeout: 0.5).isEmpty, "no answer before the body is in")
        socket.send(String(body.dropFirst(100_000)))
        #expect(socket.readResponses(1).first?.hasPrefix("HTTP/1.1 202") == true)
        #expect(eventually { jsonLines(r.dir.path + "/out.jsonl").count == 1 })
    }

    /// The bytes of requests not yet all in are bounded over all of a source's connections
    /// (`max_partial_bytes`), not only per connection: with 230,000 bytes, two uploads of 100 KB so far
    /// (of 110 KB) are held, a third that would take the total past it gets 503 and its connection
    /// closes, other requests are still served, a closed upload gives its bytes back, and a request coming
    /// in alone is taken whatever its size (up to `max_body_size`). Without the
    /// bound each upload (from a device with valid credentials) was held for as long as its pace allowed.
    @Test func requestsNotYetAllInAreBoundedOverAllConnections() throws {
        let r = try start("t: { from: [ devices ], to: [ out ] }", sinks: "out: { plugin: file, path: \"$DIR/out.jsonl\" }",
                          sourceExtra: ", max_partial_bytes: 230000")
        defer { r.hub.stop() }
        let body = #"{"v":""# + String(repeating: "a", count: 109_992) + #""}"#
        let head = "POST /v1/devices/d1/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 110000\r\n\r\n"
        func upload() throws -> RawSocket {
            let socket = try #require(RawSocket(port: r.port))
            socket.send(head + String(body.prefix(100_000)))
            return socket
        }
        var first: RawSocket? = try upload()
        #expect(first?.readBytes(1, timeout: 0.5).isEmpty == true, "held: no answer before the body is in")
        let second = try upload()
        #expect(second.readBytes(1, timeout: 0.5).isEmpty, "held: no answer before the body is in")
        let third = try upload()
        let answer = third.readResponses(1, timeout: 3).first ?? ""
        #expect(answer.hasPrefix("HTTP/1.1 503") && answer.contains("Retry-After: 1") && answer.contains("Connection: close"), "\(answer.prefix(120))")
        #expect(third.isClosed())
        #expect(postJSON("\(r.base)/d2/telemetry", #"{"v":1}"#)?.status == 202)
        // The first upload's client goes away: its bytes are given back, and a new upload is held.
        first = nil
        Thread.sleep(forTimeInterval: 0.2)
        let fourth = try upload()
        #expect(fourth.readBytes(1, timeout: 0.5).isEmpty, "held: no answer before the body is in")
        fourth.send(String(body.dropFirst(100_000)))
        #expect(fourth.readResponses(1).first?.hasPrefix("HTTP/1.1 202") == true)
        second.send(String(body.dropFirst(100_000)))
        #expect(second.readResponses(1).first?.hasPrefix("HTTP/1.1 202") == true)
        // One request coming in alone is bounded by max_body_size only, not by the source's budget.
        let large = #"{"v":""# + String(repeating: "a", count: 299_992) + #""}"#
        #expect(postJSON("\(r.base)/d3/telemetry", large)?.status == 202)
        #expect(eventually { jsonLines(r.dir.path + "/out.jsonl").count == 4 })
    }

    /// A pipeline and its sink are bounded in payload bytes as well as in count: 100 KB messages to a
    /// sink whose server never answers are refused (503) once about 1 MB waits (the pipeline's 512 KiB,
    /// the sink's 512 KiB and its one write in flight), not after 8,192 + 1,024 of them. Before, one
    /// client grew the hub to 8.9 GB with 1 MB messages this way (by hand, release build).
    @Test func queuesAreBoundedInBytes() throws {
        let silent = try #require(SilentServer())
        let r = try start("t: { from: [ devices ], queue_bytes: 512KiB, to: [ hook ] }", sinks: """
            hook: { plugin: webhook, url: "http://127.0.0.1:\(silent.port)/x", timeout: 60s, max_in_flight: 1, queue_bytes: 512KiB }
            """)
        defer { r.hub.stop(timeout: 1) }
        let body = #"{"v":""# + String(repeating: "a", count: 100_000) + #""}"#
        var accepted = 0
        var status: Int?
        for _ in 0..<200 {
            status = postJSON("\(r.base)/d/telemetry", body)?.status
            guard status == 202 else { break }
            accepted += 1
        }
        #expect(status == 503, "the pipeline said no at last: \(String(describing: status))")
        #expect(accepted >= 8 && accepted <= 14, "about 1 MB held: \(accepted) messages of 100 KB")
    }

    /// An SMTP server that sends continuation lines without end ("220-..." and never "220 ") ends the
    /// session at once with a clear reason, instead of being read until the answer's time-out (before,
    /// the hub kept every line: its memory grew by about 2 MB a second in this test's debug build, for
    /// as long as the time-out allowed, 30 s by default).
    @Test func anSMTPReplyWithoutEndIsCutOff() throws {
        let flood = try #require(SilentServer())
        let port = flood.port
        let sent = NIOLockedValueBox(0)
        let server = Thread {
            var fd: Int32 = -1
            let deadline = Date().addingTimeInterval(20)
            while fd < 0 && Date() < deadline {
                fd = flood.accept()
                if fd < 0 { usleep(10_000) }
            }
            guard fd >= 0 else { return }
            defer { close(fd) }
            let chunk = Array(String(repeating: "220-still greeting\r\n", count: 3000).utf8)
            while Date() < deadline {
                let n = chunk.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n < 0 { break }
                sent.withLockedValue { $0 += n }
            }
        }
        server.start()
        let r = try start("t: { from: [ devices ], to: [ mail ] }", sinks: """
            mail: { plugin: smtp, server: "127.0.0.1:\(port)", tls: none, from: hub@example.com, to: [ ops@example.com ], timeout: 20s, retry: { max_attempts: 1 } }
            """)
        defer { r.hub.stop(timeout: 1) }
        let started = Date()
        #expect(postJSON("\(r.base)/d/telemetry", "{}")?.status == 202)
        #expect(eventually(timeout: 10) { r.hub.deadLetters.list().count == 1 })
        let entry = try #require(r.hub.deadLetters.list().first)
        #expect(entry.reason.contains("the server sent a reply of more than 100 lines"), "\(entry.reason)")
        #expect(Date().timeIntervalSince(started) < 5)
        // The server's sending ended with the session (what it sent stopped growing).
        let before = sent.withLockedValue { $0 }
        Thread.sleep(forTimeInterval: 0.3)
        #expect(sent.withLockedValue { $0 } == before)
    }

    @Test func limitsWebhookConcurrency() throws {
        // Only max_concurrency requests start against a server that never answers.
        let silent = try #require(SilentServer())
        let port = silent.port
        let r = try start("t: { from: [ devices ], to: [ slow ] }",
                          sinks: "slow: { plugin: webhook, url: \"http://127.0.0.1:\(port)/x\", max_concurrency: 2, timeout: 30s, max_in_flight: 10 }")
        defer { r.hub.stop(timeout: 1) }
        for i in 0..<6 { #expect(postJSON("\(r.base)/d/telemetry", #"{"i":\#(i)}"#)?.status == 202) }
        // Two requests in flight at the plugin; the other four wait in the hub.
        #expect(eventually { r.hub.status.sinks.first?.queued == 6 })
        var accepted: [Int32] = []
        let deadline = Date().addingTimeInterval(3)
        while Date() < deadline {
            let c = silent.accept()
            if c >= 0 { accepted.append(c) } else { usleep(20_000) }
        }
        defer { for c in accepted { close(c) } }
        #expect(accepted.count == 2)
    }

    @Test func signsWebhooksWithHMAC() throws {
        let receiverPort = freePort()
        let dir = TempDir()
        let receiver = try ChildProcess("/usr/bin/env", ["python3", Build.packageRoot + "/Tests/Support/webhook_receiver.py", "\(receiverPort)", dir.path + "/requests.jsonl"])
        defer { receiver.stop() }
        #expect(waitForPort(receiverPort))
        let r = try start("t: { from: [ devices ], steps: [ { decode: json } ], to: [ hook ] }",
                          sinks: "hook: { plugin: webhook, url: \"http://127.0.0.1:\(receiverPort)/in\", secret: \"${env:HOOK_SECRET}\", headers: { X-Site: line-1 } }",
                          env: ["HOOK_SECRET": "k3y"])
        defer { r.hub.stop() }
        #expect(postJSON("\(r.base)/d9/telemetry", #"{"t": 1}"#)?.status == 202)
        #expect(eventually { jsonLines(dir.path + "/requests.jsonl").count == 1 })
        let req = try #require(jsonLines(dir.path + "/requests.jsonl").first)
        guard case .string(let b64)? = req["body_base64"], let body = Base64.decode(b64),
              case .string(let ts)? = req["headers"]?["x-iotc-timestamp"], case .string(let sig)? = req["headers"]?["x-iotc-signature"] else {
            Issue.record("missing body or signature headers: \(req)")
            return
        }
        let mac = HMAC<SHA256>.authenticationCode(for: Array(ts.utf8) + [UInt8(ascii: ".")] + body, using: SymmetricKey(data: Array("k3y".utf8)))
        #expect(sig == "sha256=" + mac.map { String(format: "%02x", $0) }.joined())
        // Decoded and not changed: the body is the device's own.
        #expect(String(decoding: body, as: UTF8.self) == #"{"t": 1}"#)
        #expect(req["headers"]?["x-iotc-device"] == "d9")
        #expect(req["headers"]?["x-site"] == "line-1")
        #expect(abs((Int(ts) ?? 0) - Int(Date().timeIntervalSince1970)) < 60)
    }

    @Test func deliversCommandsByLongPollAndServerSentEvents() async throws {
        let r = try start("t: { from: [ devices ], to: [ out ] }", sinks: "out: { plugin: file, path: \"$DIR/out.jsonl\" }")
        defer { r.hub.stop() }
        let base = r.base
        func command(_ device: String, _ name: String) -> Message {
            Message(kind: .command, device: device, topic: "devices/\(device)/commands/\(name)", contentType: "application/json",
                    payload: Array(#"{"speed":3}"#.utf8))
        }
        // A command for a device that is not polling waits in its queue; the next poll takes it at once.
        let (queued, _) = await r.hub.sendDownlink(command("pump-1", "start"), source: "devices", timeout: 0.3)
        #expect(queued == 2)
        let first = http("GET", "\(base)/pump-1/commands?wait=10")
        #expect(first?.status == 200)
        let body = try JSON.decode(first?.body ?? "")
        #expect(body["payload"] == ["speed": 3])
        #expect(body["topic"] == "devices/pump-1/commands/start")
        // A device already waiting gets the command as it is sent, and the hub learns it was taken.
        let poll = Background { http("GET", "\(base)/pump-1/commands?wait=10", timeout: 15) }
        #expect(eventually { r.hub.connectedSource(of: "pump-1") == "devices" })
        let (code, reason) = await r.hub.sendDownlink(command("pump-1", "stop"), timeout: 5)
        #expect(code == 0, "\(reason ?? "")")
        let answer = poll.wait()
        #expect(answer?.status == 200)
        #expect((try? JSON.decode(answer?.body ?? ""))?["topic"] == "devices/pump-1/commands/stop")
        // A poll with nothing waiting times out with 204, which has no content and no Content-Length.
        let raw = try #require(RawSocket(port: r.port))
        raw.send("GET /v1/devices/pump-1/commands?wait=0.2 HTTP/1.1\r\nHost: x\r\n\r\n")
        let nothing = raw.readResponses(1).first ?? ""
        #expect(nothing.hasPrefix("HTTP/1.1 204") && !nothing.lowercased().contains("content-length"), "\(nothing)")
        // Server-Sent Events: the stream stays open and carries each command as an event.
        let s = try #require(RawSocket(port: r.port))
        s.send("GET /v1/devices/pump-2/commands/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(eventually { r.hub.connectedSource(of: "pump-2") == "devices" })
        let (code2, _) = await r.hub.sendDownlink(command("pump-2", "start"), timeout: 5)
        #expect(code2 == 0)
        var buf = [UInt8](repeating: 0, count: 8192)
        var text = ""
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline, !(text.contains("event: command") && text.hasSuffix("\n\n")) {
            let n = recv(s.fd, &buf, buf.count, 0)
            if n <= 0 { break }
            text += String(decoding: buf[0..<n], as: UTF8.self)
        }
        #expect(text.contains("text/event-stream"))
        #expect(text.contains("event: command"))
        #expect(text.contains(#""speed":3"#))
        // A command result comes back as a message of kind command_result.
        #expect(postJSON("\(base)/pump-1/commands/c1/result", #"{"ok":true}"#)?.status == 202)
        #expect(eventually { jsonLines(r.dir.path + "/out.jsonl").contains { $0["kind"] == "command_result" } })
    }

    /// A stop does not wait for room in a full sink on behalf of a durable pipeline: what it holds is in
    /// its write-ahead log, and the next start delivers it. Before, the pipeline's worker waited on the
    /// sink (its endpoint down) until the stop's deadline: 30 s by default.
    @Test func aStopDoesNotWaitOnAFullSinkForADurablePipeline() throws {
        let dir = TempDir()
        let port = freePort(), deadPort = freePort(), receiverPort = freePort()
        func config(_ hookPort: Int) throws -> HubConfig {
            try loadConfig("""
                sources:
                  devices: { plugin: http, listen: "127.0.0.1:\(port)" }
                sinks:
                  hook: { plugin: webhook, url: "http://127.0.0.1:\(hookPort)/ok", timeout: 500ms, queue_size: 2, max_in_flight: 1, retry: { max_attempts: 0, initial_backoff: 100ms, max_backoff: 200ms } }
                pipelines:
                  t: { from: [ devices ], durable: true, queue_size: 2, to: [ hook ] }
                auth: { allow_anonymous: true }
                """)
        }
        let first = try makeHub(dir)
        try first.start(try config(deadPort))
        #expect(waitForPort(port))
        var accepted: [String] = []
        for n in 1...20 {
            let body = #"{"n":\#(n)}"#
            if postJSON("http://127.0.0.1:\(port)/v1/devices/d1/telemetry", body)?.status == 202 { accepted.append(body) }
        }
        #expect(accepted.count >= 4 && accepted.count < 20, "\(accepted.count) accepted")
        let stopping = Date()
        first.stop(timeout: 30)
        #expect(Date().timeIntervalSince(stopping) < 5, "the stop took \(Date().timeIntervalSince(stopping)) s")
        // The next start, with the endpoint up, delivers every accepted message.
        let receiver = try ChildProcess("/usr/bin/env", ["python3", Build.packageRoot + "/Tests/Support/webhook_receiver.py", "\(receiverPort)", dir.path + "/requests.jsonl"])
        defer { receiver.stop() }
        #expect(waitForPort(receiverPort))
        let second = try makeHub(dir)
        defer { second.stop() }
        try second.start(try config(receiverPort))
        #expect(eventually(timeout: 10) { Set(jsonLines(dir.path + "/requests.jsonl").compactMap { $0["body_base64"]?.string }).count == accepted.count })
        let bodies = Set(jsonLines(dir.path + "/requests.jsonl").compactMap { $0["body_base64"]?.string }
            .compactMap { Data(base64Encoded: $0).map { String(decoding: $0, as: UTF8.self) } })
        #expect(bodies == Set(accepted))
    }

    /// A webhook with a wrong URL, fixed by a reload: the messages the old sink kept retrying go to the
    /// new one at once (in the order their retries came to, as retries go), and the reload does not wait
    /// on the old endpoint. Before, the reload
    /// took the whole 30 s drain and the messages stayed in the log until the next start.
    @Test func aReloadHandsASinksUndeliveredMessagesToItsNewInstance() throws {
        let receiverPort = freePort(), deadPort = freePort()
        let dir = TempDir()
        let receiver = try ChildProcess("/usr/bin/env", ["python3", Build.packageRoot + "/Tests/Support/webhook_receiver.py", "\(receiverPort)", dir.path + "/requests.jsonl"])
        defer { receiver.stop() }
        #expect(waitForPort(receiverPort))
        func sink(_ port: Int) -> String {
            "hook: { plugin: webhook, url: \"http://127.0.0.1:\(port)/ok\", timeout: 2s, retry: { max_attempts: 0, initial_backoff: 200ms, max_backoff: 1s } }"
        }
        let r = try start("t: { from: [ devices ], durable: true, to: [ hook ] }", sinks: sink(deadPort))
        defer { r.hub.stop(timeout: 1) }
        for n in 1...3 { #expect(postJSON("\(r.base)/d1/telemetry", #"{"n":\#(n)}"#)?.status == 202) }
        #expect(eventually { r.hub.status.sinks.first?.queued == 3 }, "\(r.hub.status.sinks)")
        let fixed = try loadConfig("""
            sources:
              devices: { plugin: http, listen: "127.0.0.1:\(r.port)" }
            sinks:
              \(sink(receiverPort))
            pipelines:
              t: { from: [ devices ], durable: true, to: [ hook ] }
            auth: { allow_anonymous: true }
            """)
        let reloading = Date()
        try r.hub.reload(fixed)
        #expect(Date().timeIntervalSince(reloading) < 5, "the reload took \(Date().timeIntervalSince(reloading)) s")
        #expect(eventually(timeout: 10) { jsonLines(dir.path + "/requests.jsonl").count == 3 })
        let bodies = jsonLines(dir.path + "/requests.jsonl").compactMap { $0["body_base64"]?.string }
            .compactMap { Data(base64Encoded: $0).map { String(decoding: $0, as: UTF8.self) } }
        #expect(bodies.sorted() == [#"{"n":1}"#, #"{"n":2}"#, #"{"n":3}"#])
        // Settled in the new instance, so they leave the write-ahead log.
        #expect(eventually { r.hub.status.sinks.first?.queued == 0 })
    }

    @Test func reloadKeepsConnectionsAndAppliesNewSteps() throws {
        let r = try start("t: { from: [ devices ], steps: [ { decode: json } ], to: [ out ] }", sinks: "out: { plugin: file, path: \"$DIR/out.jsonl\" }")
        defer { r.hub.stop() }
        let s = try #require(RawSocket(port: r.port))
        func post(_ n: Int) -> String? {
            let body = #"{"n":\#(n)}"#
            s.send("POST /v1/devices/k/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
            return s.readResponses(1).first
        }
        #expect(post(1)?.hasPrefix("HTTP/1.1 202") == true)
        // 202 means queued; wait until it is written, since queued messages would take the new steps.
        #expect(eventually { jsonLines(r.dir.path + "/out.jsonl").count == 1 })
        let updated = try loadConfig("""
            sources:
              devices: { plugin: http, listen: "127.0.0.1:\(r.port)" }
            sinks:
              out: { plugin: file, path: "\(r.dir.path)/out.jsonl" }
            pipelines:
              t: { from: [ devices ], steps: [ { decode: json }, { set: { reloaded: "true" } } ], to: [ out ] }
            auth: { allow_anonymous: true }
            """)
        try r.hub.reload(updated)
        #expect(post(2)?.hasPrefix("HTTP/1.1 202") == true)
        #expect(eventually { jsonLines(r.dir.path + "/out.jsonl").count == 2 })
        let lines = jsonLines(r.dir.path + "/out.jsonl")
        #expect(lines[0]["payload"] == ["n": 1])
        #expect(lines[1]["payload"] == ["n": 2, "reloaded": true])

        // A reload whose new source cannot be created changes nothing that runs.
        let broken = try loadConfig("""
            sources:
              devices: { plugin: http, listen: "127.0.0.1:\(r.port)" }
              extra: { plugin: http, listen: "not-an-address" }
            sinks:
              out: { plugin: file, path: "\(r.dir.path)/out.jsonl" }
            pipelines:
              t: { from: [ devices, extra ], steps: [ { decode: json } ], to: [ out ] }
            auth: { allow_anonymous: true }
            """)
        #expect(throws: (any Error).self) { try r.hub.reload(broken) }
        #expect(post(3)?.hasPrefix("HTTP/1.1 202") == true)
        #expect(eventually { jsonLines(r.dir.path + "/out.jsonl").count == 3 })
        #expect(jsonLines(r.dir.path + "/out.jsonl").last?["payload"] == ["n": 3, "reloaded": true])
    }
}

@Suite struct HTTPSTests {
    @Test func ingestsOverTLS() throws {
        let dir = TempDir()
        try makeTestCertificates(in: dir)
        let port = freePort()
        let hub = try makeHub(dir)
        try hub.start(try loadConfig("""
            sources:
              devices:
                plugin: http
                listen: "127.0.0.1:\(port)"
                tls: { certificate_file: "\(dir.path)/cert.pem", key_file: "\(dir.path)/key.pem" }
            sinks: { out: { plugin: file, path: "\(dir.path)/out.jsonl" } }
            pipelines: { t: { from: [ devices ], to: [ out ] } }
            auth: { allow_anonymous: true }
            """))
        defer { hub.stop() }
        #expect(waitForPort(port))
        let (curlCode, status) = try run("/usr/bin/env", ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", dir.path + "/cert.pem",
                                                         "-H", "Content-Type: application/json", "-d", #"{"tls":true}"#,
                                                         "https://127.0.0.1:\(port)/v1/devices/s/telemetry"])
        #expect(curlCode == 0)
        #expect(status == "202")
        #expect(eventually { jsonLines(dir.path + "/out.jsonl").first?["payload"] == ["tls": true] })
        // Plain HTTP to the TLS port is refused without disturbing the listener.
        let plain = try run("/usr/bin/env", ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/v1/devices/s/telemetry"])
        #expect(plain.1 != "202")
        let again = try run("/usr/bin/env", ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", dir.path + "/cert.pem",
                                             "-H", "Content-Type: application/json", "-d", "{}", "https://127.0.0.1:\(port)/v1/devices/s/telemetry"])
        #expect(again.1 == "202")
    }

    @Test func requiresClientCertificatesWhenConfigured() throws {
        let dir = TempDir()
        try makeTestCertificates(in: dir)
        let port = freePort()
        let hub = try makeHub(dir)
        try hub.start(try loadConfig("""
            sources:
              devices:
                plugin: http
                listen: "127.0.0.1:\(port)"
                tls: { certificate_file: "\(dir.path)/cert.pem", key_file: "\(dir.path)/key.pem", client_ca_file: "\(dir.path)/ca.pem" }
            sinks: { out: { plugin: file, path: "\(dir.path)/out.jsonl" } }
            pipelines: { t: { from: [ devices ], to: [ out ] } }
            auth: { allow_anonymous: true }
            """))
        defer { hub.stop() }
        #expect(waitForPort(port))
        let base = ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", dir.path + "/cert.pem",
                    "-H", "Content-Type: application/json", "-d", "{}", "https://127.0.0.1:\(port)/v1/devices/sensor-1/telemetry"]
        let without = try run("/usr/bin/env", base)
        #expect(without.1 != "202", "a device without a certificate was accepted")
        let with = try run("/usr/bin/env", base + ["--cert", dir.path + "/dev.pem", "--key", dir.path + "/dev.key"])
        #expect(with.1 == "202", "\(with)")
        #expect(eventually { jsonLines(dir.path + "/out.jsonl").count == 1 })
    }
}

@Suite struct FileSinkTests {
    /// `sync: none` appends on the hub's delivery thread, `every_batch` on the sink's writer thread.
    /// A hub whose HTTP source feeds the file sink `out.jsonl` in `dir`, with `settings` added to the sink.
    private func startHub(_ dir: TempDir, sink settings: String) throws -> (Hub, Int) {
        let hub = try makeHub(dir)
        let port = freePort()
        try hub.start(try loadConfig("""
            sources: { devices: { plugin: http, listen: "127.0.0.1:\(port)" } }
            sinks: { out: { plugin: file, path: "\(dir.path)/out.jsonl", format: payload, \(settings) } }
            pipelines: { t: { from: [ devices ], to: [ out ] } }
            auth: { allow_anonymous: true }
            """))
        #expect(waitForPort(port))
        return (hub, port)
    }

    @Test(arguments: ["none", "every_batch"]) func writesEveryMessageOnceInOrder(sync: String) throws {
        let dir = TempDir()
        let (hub, port) = try startHub(dir, sink: "sync: \(sync)")
        defer { hub.stop() }
        // Four senders at once, so that batches of several messages reach the sink.
        let perSender = 150
        DispatchQueue.concurrentPerform(iterations: 4) { s in
            for i in 0..<perSender {
                _ = postJSON("http://127.0.0.1:\(port)/v1/devices/d\(s)/telemetry", #"{"s":\#(s),"n":\#(i)}"#)
            }
        }
        #expect(eventually { jsonLines(dir.path + "/out.jsonl").count >= 4 * perSender })
        #expect(eventually { hub.status.sinks.first?.queued == 0 })
        let lines = jsonLines(dir.path + "/out.jsonl")
        #expect(lines.count == 4 * perSender)
        for s in 0..<4 {
            let ns = lines.filter { $0["s"]?.number == Double(s) }.compactMap { $0["n"]?.number }
            #expect(ns == (0..<perSender).map(Double.init), "sender \(s)")
        }
    }

    @Test(arguments: ["none", "every_batch"]) func rotatesBySizeAndKeepsMaxFiles(sync: String) throws {
        let dir = TempDir()
        let (hub, port) = try startHub(dir, sink: "max_size: 200, max_files: 2, sync: \(sync)")
        defer { hub.stop() }
        // Each line is 31 bytes; rotation happens after the write that passes 200 bytes. Each message is
        // written before the next is sent, so that every batch is one line.
        func written() -> Int { ["out.jsonl", "out.jsonl.1", "out.jsonl.2"].map { jsonLines(dir.path + "/" + $0).count }.reduce(0, +) }
        var total = 0
        for i in 0..<40 {
            #expect(postJSON("http://127.0.0.1:\(port)/v1/devices/d/telemetry", #"{"n":\#(i + 100),"pad":"xxxxxxxxxxx"}"#)?.status == 202)
            let before = total
            #expect(eventually { written() > before || written() < before })
            total = written()
        }
        #expect(eventually { hub.status.sinks.first?.queued == 0 })
        hub.stop()
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix("out.jsonl") }.sorted()
        #expect(files == ["out.jsonl", "out.jsonl.1", "out.jsonl.2"])
        for f in files {
            let size = (try FileManager.default.attributesOfItem(atPath: dir.path + "/" + f)[.size] as? Int) ?? 0
            #expect(size < 200 + 31, "\(f) is \(size) bytes")
        }
        // The newest lines are kept, in order, across the current and rotated files.
        let kept = ["out.jsonl.2", "out.jsonl.1", "out.jsonl"].flatMap { jsonLines(dir.path + "/" + $0) }.compactMap { $0["n"]?.number }
        #expect(kept.last == 139)
        #expect(kept == kept.sorted())
        #expect(kept.count < 40)
    }

    /// Rotation shifts the rotated files there are: with max_files 2^63 - 1 it shifted (tried to) that
    /// many names on every rotation and the sink never wrote again.
    @Test func rotatesWithAnyMaxFiles() throws {
        let dir = TempDir()
        let (hub, port) = try startHub(dir, sink: "max_size: 100, max_files: 9223372036854775807")
        defer { hub.stop() }
        for i in 0..<12 {
            #expect(postJSON("http://127.0.0.1:\(port)/v1/devices/d/telemetry", #"{"n":\#(i),"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#)?.status == 202)
            #expect(eventually(timeout: 5) { hub.status.sinks.first?.queued == 0 }, "message \(i) not written")
        }
        hub.stop()
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix("out.jsonl") }
        let kept = (0..<files.count).reversed().flatMap { jsonLines(dir.path + "/out.jsonl" + ($0 == 0 ? "" : ".\($0)")) }.compactMap { $0["n"]?.number }
        #expect(kept == (0..<12).map(Double.init), "\(files.sorted())")
    }
}

@Suite struct TopicAuthorizationTests {
    @Test(arguments: [
        ("devices/s1", "s1", true), ("devices/s1/telemetry", "s1", true), ("devices/s1/commands/c/result", "s1", true),
        ("devices/s10/telemetry", "s1", false), ("devices/s", "s1", false), ("devices/s1x", "s1", false),
        ("devices//telemetry", "", false), ("other/s1/telemetry", "s1", false), ("devices/s1", "s1/", false),
    ])
    func confinesDevicesToTheirOwnTopics(topic: String, device: String, allowed: Bool) {
        #expect(TopicAccess.isOwnTopic(topic, device: device) == allowed)
    }

    @Test(arguments: [
        ("devices/d1/results/cmd-1", true), ("devices/d1/results/", false), ("devices//results/cmd-1", false),
        ("devices/d1/results/cmd-1/x", false), ("devices/d1/result/cmd-1", false), ("devices/d1/commands/reboot/cmd-1", false),
        ("device/d1/results/cmd-1", false), ("devices/d1", false),
    ])
    func recognisesAnswersToCommands(topic: String, isAnswer: Bool) {
        #expect(CommandTopics.isResult(topic) == isAnswer)
        // The quick check and the parse agree.
        #expect((CommandTopics.parseResult(topic) != nil) == isAnswer)
    }
}

@Suite struct LogBudgetTests {
    /// A burst, then one line a second; the line let through after a hold says how many were held.
    @Test func letsABurstThenOneASecondAndCountsTheRest() {
        let start: UInt64 = 1_000_000_000
        let budget = LogBudget(perSecond: 1, burst: 3)
        var taken = (0..<10).map { budget.take(now: start + UInt64($0) * 1_000_000) }
        #expect(taken == [0, 0, 0, nil, nil, nil, nil, nil, nil, nil])
        taken = [budget.take(now: start + 1_200_000_000), budget.take(now: start + 1_300_000_000)]
        #expect(taken == [7, nil], "seven held back before the line a second later")
        #expect(budget.take(now: start + 10_000_000_000) == 1)
    }

    /// The line form: as it is after nothing was held, with the count after a hold, nil while held.
    @Test func linesSayHowManyWereHeld() {
        let budget = LogBudget(perSecond: 0.001, burst: 1)
        #expect(budget.line("refused") == "refused")
        #expect(budget.line("refused") == nil)
        #expect(budget.line("refused") == nil)
        // Taken at the clock's 0 ns and held at 1 ns; `line` runs at the real time, long after.
        let later = LogBudget(perSecond: 1000, burst: 1)
        _ = later.take(now: 0)
        #expect(later.take(now: 1) == nil)
        #expect(later.line("refused") == "refused (1 more not logged)")
    }

    /// A recurring job's trouble is told once: its first failure, then its first success after failures.
    @Test func aFailureNoticeTellsTheFirstFailureAndTheRecoveryOnce() {
        let notice = FailureNotice()
        #expect(!notice.worked(), "working from the start is nothing to tell")
        #expect([notice.failed(), notice.failed(), notice.failed()] == [true, false, false])
        #expect([notice.worked(), notice.worked()] == [true, false])
        #expect(notice.failed())
    }
}

@Suite struct CommandMailboxesTests {
    /// A poll that ends leaves no mailbox behind: a client polling for made-up device ids (with
    /// anonymous access) grew the table by one box each.
    @Test func aPollThatEndsLeavesNoMailbox() {
        let boxes = CommandMailboxes(capacity: 10, ttl: 60)
        for i in 0..<1000 {
            let key = CommandMailboxes.key(tenant: "t", device: "made-up-\(i)")
            let waiter = boxes.wait(box: key, persistent: i % 2 == 0) { _ in true }
            #expect(boxes.count == 1)
            boxes.cancel(box: key, waiter: waiter)
        }
        #expect(boxes.count == 0)
    }
}
