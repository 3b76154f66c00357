import Foundation
import Testing
@testable import IoTCKernel
import IoTCPluginKit

/// The `lwm2m` source against an LwM2M client on aiocoap (Tests/Support/lwm2m_client.py) and
/// libcoap's `coap-client-openssl`.
@Suite(.serialized) struct LwM2MSourceTests {
    static let ownerKey = "iotc_lwm2mtests1_" + String(repeating: "k", count: 40)

    /// A hub with an LwM2M source on UDP and DTLS whose telemetry, lifecycle messages and command
    /// results go to one file. `observe`: the paths observed at registration; `extra`: more settings of
    /// the lwm2m source.
    static func hub(observe: String = "[ /3303/0/5700 ]", extra: String = "") throws -> ServedHub {
        try ServedHub(key: ownerKey) { hub in """
            version: 1
            sources:
              lw:
                plugin: lwm2m
                listen: "127.0.0.1:\(hub.udp)"
                dtls_listen: "127.0.0.1:\(hub.dtls)"
                observe: \(observe)
            \(extra)
            sinks:
              out:
                plugin: file
                path: \(hub.dir.path)/out.jsonl
            pipelines:
              devices:
                from: [ "lw:devices/+/telemetry", "lw:devices/+/lifecycle", "lw:devices/+/results/+" ]
                to: [ out ]
            auth:
              allow_anonymous: true
            """ }
    }

    func text(_ v: Value?) -> String? { if case .string(let s)? = v { s } else { nil } }

    func coap(_ args: [String]) throws -> String { try coapClient(args) }

    @Test func registersIsManagedAndObservedAndDeregisters() throws {
        let hub = try Self.hub()
        let python = Build.packageRoot + "/.venv/bin/python"
        try #require(FileManager.default.isExecutableFile(atPath: python), "no .venv: run scripts/install-deps.sh test")
        let client = try ChildProcess(python, ["-u", Build.packageRoot + "/Tests/Support/lwm2m_client.py", "\(hub.udp)", "node-7"], interactive: true)
        #expect(eventually(timeout: 15) { client.log.contains("registered 2.01 Created /rd/") }, "\(client.log)")
        // The registration is a lifecycle message with the object list and versions.
        #expect(eventually { hub.lines.contains { text($0["payload"]?["event"]) == "registered" } })
        let registered = try #require(hub.lines.first { text($0["payload"]?["event"]) == "registered" })
        #expect(text(registered["device"]) == "node-7" && text(registered["payload"]?["lwm2m"]) == "1.1"
                && text(registered["payload"]?["objects"])?.contains("</3303/0>;ver=1.1") == true, "\(registered)")
        // The configured observation: notifications become named telemetry with their LwM2M path and version.
        #expect(eventually(timeout: 10) { hub.lines.filter { text($0["kind"]) == "telemetry" }.count >= 3 }, "\(client.log)")
        let notes = hub.lines.filter { text($0["kind"]) == "telemetry" }
        #expect(notes[0]["payload"]?["temperature"] == .double(21.5), "\(notes[0])")
        #expect(notes[0]["properties"]?["lwm2m.path"] == .string("/3303/0/5700") && notes[0]["properties"]?["lwm2m.object_version"] == .string("1.1")
                && notes[0]["properties"]?["coap.content_format"] == .string("11542"), "\(notes[0])")
        #expect(notes[1]["properties"]?["coap.observe"] != notes[2]["properties"]?["coap.observe"])

        // Every operation through the API, with its answer as the command's result.
        var c = try hub.command("node-7", "read", #"{"path":"/3/0"}"#)
        #expect(text(c["status"]) == "succeeded" && c["result"]?["values"]?["/3/0/0"] == .string("Open Mobile Alliance")
                && c["result"]?["values"]?["/3/0/9"] == .int(87) && c["result"]?["values"]?["/3/0/6/1"] == .int(5), "\(c)")
        // The answer also goes through the pipeline, with the LwM2M path it names.
        let readID = try #require(text(c["id"]))
        #expect(eventually { hub.lines.contains { text($0["kind"]) == "command_result" && $0["properties"]?["command_id"] == .string(readID)
                                                  && $0["properties"]?["lwm2m.path"] == .string("/3/0") && $0["properties"]?["lwm2m.endpoint"] == .string("node-7") } })
        c = try hub.command("node-7", "read", #"{"path":"/3/0/9","format":"text"}"#)
        #expect(c["result"]?["values"]?["/3/0/9"] == .int(87), "\(c)")
        // Plain CBOR for one resource (LwM2M 1.1) and LwM2M CBOR (1.2), as cbor2 writes them.
        c = try hub.command("node-7", "read", #"{"path":"/3/0/9","format":"cbor"}"#)
        #expect(c["result"]?["values"]?["/3/0/9"] == .int(87), "\(c)")
        c = try hub.command("node-7", "read", #"{"path":"/3/0","format":"lwm2m-cbor"}"#)
        #expect(c["result"]?["values"]?["/3/0/0"] == .string("Open Mobile Alliance") && c["result"]?["values"]?["/3/0/6/1"] == .int(5)
                && c["result"]?["values"]?["/3/0/9"] == .int(87), "\(c)")
        c = try hub.command("node-7", "write", #"{"path":"/3/0/14","value":"+09","format":"cbor"}"#)
        #expect(text(c["status"]) == "failed" && text(c["result"]?["error"])?.contains("write sends tlv") == true, "\(c)")
        c = try hub.command("node-7", "write", #"{"path":"/3/0/14","value":"+02"}"#)
        #expect(text(c["status"]) == "succeeded" && c["result"]?["code"] == .string("2.04"), "\(c)")
        c = try hub.command("node-7", "write", #"{"path":"/3/0/14","value":"+04","format":"senml-json"}"#)
        #expect(text(c["status"]) == "succeeded", "\(c)")
        c = try hub.command("node-7", "write", #"{"path":"/3/0","values":{"14":"+03"}}"#)
        #expect(text(c["status"]) == "succeeded", "\(c)")
        // SenML-CBOR (the client decodes it with cbor2) and plain text.
        c = try hub.command("node-7", "write", #"{"path":"/3/0/14","value":"+05","format":"senml-cbor"}"#)
        #expect(text(c["status"]) == "succeeded", "\(c)")
        c = try hub.command("node-7", "write", #"{"path":"/3/0/14","value":"+06","format":"text"}"#)
        #expect(text(c["status"]) == "succeeded", "\(c)")
        c = try hub.command("node-7", "write", #"{"path":"/3/0","values":{"14":"+07"},"format":"text"}"#)
        #expect(text(c["status"]) == "failed" && text(c["result"]?["error"])?.contains("text write is one value of one resource") == true, "\(c)")
        c = try hub.command("node-7", "execute", #"{"path":"/3/0/4","args":"now"}"#)
        #expect(text(c["status"]) == "succeeded", "\(c)")
        c = try hub.command("node-7", "discover", #"{"path":"/3303/0"}"#)
        #expect(text(c["result"]?["links"])?.contains("</3303/0/5700>;pmin=1") == true, "\(c)")
        c = try hub.command("node-7", "write-attributes", #"{"path":"/3303/0/5700","attributes":{"pmin":10,"pmax":60}}"#)
        #expect(text(c["status"]) == "succeeded", "\(c)")
        c = try hub.command("node-7", "create", #"{"path":"/3303","instance":1,"values":{"5700":30.5}}"#)
        #expect(text(c["status"]) == "succeeded" && c["result"]?["location"] == .string("/3303/1"), "\(c)")
        c = try hub.command("node-7", "delete", #"{"path":"/3303/1"}"#)
        #expect(c["result"]?["code"] == .string("2.02"), "\(c)")
        // Creates in SenML (the instance is in the records' names, so it must be given).
        c = try hub.command("node-7", "create", #"{"path":"/3303","instance":2,"values":{"5700":31.5},"format":"senml-json"}"#)
        #expect(text(c["status"]) == "succeeded" && c["result"]?["location"] == .string("/3303/2"), "\(c)")
        c = try hub.command("node-7", "create", #"{"path":"/3303","instance":3,"values":{"5700":32.5},"format":"senml-cbor"}"#)
        #expect(text(c["status"]) == "succeeded" && c["result"]?["location"] == .string("/3303/3"), "\(c)")
        c = try hub.command("node-7", "create", #"{"path":"/3303","values":{"5700":33.5},"format":"senml-json"}"#)
        #expect(text(c["status"]) == "failed" && text(c["result"]?["error"])?.contains("names its \"instance\"") == true, "\(c)")
        c = try hub.command("node-7", "create", #"{"path":"/3303","instance":4,"values":{"5700":1},"format":"text"}"#)
        #expect(text(c["status"]) == "failed" && text(c["result"]?["error"])?.contains("create sends tlv, senml-json or senml-cbor") == true, "\(c)")
        c = try hub.command("node-7", "read", #"{"path":"/9999/0"}"#)
        #expect(text(c["status"]) == "failed" && c["result"]?["code"] == .string("4.04"), "\(c)")
        c = try hub.command("node-7", "reboot-now", #"{"path":"/3/0"}"#)
        #expect(text(c["status"]) == "failed" && text(c["result"]?["error"])?.contains("unknown LwM2M operation") == true, "\(c)")
        for line in ["write /3/0/14 +02", "write /3/0/14 +04", "write /3/0/14 +03", "write /3/0/14 +05 (senml-cbor)", "write /3/0/14 +06 (text)", "execute /3/0/4 now", "attributes /3303/0/5700 pmin=10&pmax=60", "create /3303/1", "delete /3303/1",
                     "create /3303/2 (senml-json) 5700=31.5", "create /3303/3 (senml-cbor) 5700=32.5"] {
            #expect(client.log.contains(line), "\(line)\n\(client.log)")
        }

        // LwM2M 1.1 composite operations on the root: several resources of several objects in one
        // FETCH or iPATCH, in SenML-JSON and SenML-CBOR.
        c = try hub.command("node-7", "read-composite", #"{"paths":["/3/0/9","/3/0/14","/3303/0/5700"]}"#)
        #expect(text(c["status"]) == "succeeded" && c["result"]?["values"]?["/3/0/9"] == .int(87) && c["result"]?["values"]?["/3/0/14"] == .string("+06")
                && c["result"]?["values"]?["/3303/0/5700"]?.number != nil, "\(c)")
        c = try hub.command("node-7", "write-composite", #"{"values":{"/3/0/14":"+08"},"format":"senml-cbor"}"#)
        #expect(text(c["status"]) == "succeeded" && c["result"]?["code"] == .string("2.04"), "\(c)")
        c = try hub.command("node-7", "read-composite", #"{"paths":["/3/0/14"],"format":"senml-cbor"}"#)
        #expect(c["result"]?["values"]?["/3/0/14"] == .string("+08"), "\(c)")
        #expect(client.log.contains("read-composite 110 /3/0/9 /3/0/14 /3303/0/5700") && client.log.contains("read-composite 112 /3/0/14")
                && client.log.contains("write-composite /3/0/14 +08 112"), "\(client.log)")
        c = try hub.command("node-7", "write-composite", #"{"values":{"/3/0/14":5}}"#)
        #expect(text(c["status"]) == "failed" && text(c["result"]?["error"])?.contains("/3/0/14") == true, "a string resource takes a string: \(c)")
        c = try hub.command("node-7", "read-composite", #"{"paths":[]}"#)
        #expect(text(c["status"]) == "failed", "\(c)")
        // Observe-Composite: each notification is one telemetry message with every named resource.
        c = try hub.command("node-7", "observe-composite", #"{"paths":["/3/0/9","/3303/0/5700"]}"#)
        #expect(text(c["status"]) == "succeeded", "\(c)")
        #expect(eventually(timeout: 10) {
            hub.lines.filter { $0["properties"]?["lwm2m.path"] == .string("/") && $0["payload"]?["battery_level"] == .int(87) && $0["payload"]?["temperature"] != nil }.count >= 2
        }, "\(client.log)")
        c = try hub.command("node-7", "cancel-observe-composite", #"{"paths":["/3/0/9","/3303/0/5700"]}"#)
        #expect(text(c["status"]) == "succeeded", "\(c)")
        #expect(eventually { client.log.contains("composite observers 0") }, "\(client.log)")

        // Send: values the client reports by itself, one telemetry message per object.
        client.send("send")
        #expect(eventually { client.log.contains("sent 2.04 Changed") }, "\(client.log)")
        #expect(eventually { hub.lines.contains { $0["payload"]?["battery_level"] == .int(55) && $0["properties"]?["lwm2m.operation"] == .string("send") } })
        #expect(hub.lines.contains { $0["payload"]?["temperature"] == .double(30.5) && $0["properties"]?["lwm2m.path"] == .string("/3303") })
        client.send("send-cbor")
        #expect(eventually { client.log.contains("sent-cbor 2.04 Changed") }, "\(client.log)")
        #expect(eventually { hub.lines.contains { $0["payload"]?["battery_level"] == .int(56) && $0["properties"]?["lwm2m.operation"] == .string("send") } })
        #expect(hub.lines.contains { $0["payload"]?["temperature"] == .double(31.5) && $0["properties"]?["lwm2m.path"] == .string("/3303") })
        client.send("update")
        #expect(eventually { client.log.contains("updated 2.04 Changed") }, "\(client.log)")
        #expect(eventually { hub.lines.contains { text($0["payload"]?["event"]) == "updated" && $0["payload"]?["lifetime"] == .int(30) } })
        client.send("deregister")
        #expect(eventually { client.log.contains("deregistered 2.02 Deleted") }, "\(client.log)")
        #expect(eventually { hub.lines.contains { text($0["payload"]?["event"]) == "deregistered" } })
        // Offline now: a command waits for the next registration.
        let queued = hub.call("POST", "/v1/devices/node-7/commands", #"{"name":"read","payload":{"path":"/3/0"},"timeout":0}"#)
        #expect(text((try? JSON.decode(queued.body))?["status"]) == "queued", "\(queued)")
        client.send("quit")
    }

    /// A Send is answered 2.04 only once the hub has its values (a durable pipeline: in its write-ahead
    /// log, answered separately when the commit is not at once), and 5.03 with Max-Age when the hub
    /// cannot take them (here the pipeline fills behind a webhook that never answers), so that the
    /// client sends them again; before, every Send got 2.04 and a full pipeline dropped its values.
    @Test func aSendIsAnsweredWithTheHubsVerdict() throws {
        let silent = try #require(SilentServer())
        let hub = try ServedHub(key: Self.ownerKey) { hub in """
            sources:
              lw: { plugin: lwm2m, listen: "127.0.0.1:\(hub.udp)", observe: [] }
            sinks:
              hook: { plugin: webhook, url: "http://127.0.0.1:\(silent.port)/in", timeout: 2s, queue_size: 1, max_in_flight: 1 }
            pipelines:
              sent: { from: [ "lw:devices/+/telemetry" ], durable: true, queue_size: 4, to: [ hook ] }
            auth:
              allow_anonymous: true
            """ }
        let python = Build.packageRoot + "/.venv/bin/python"
        try #require(FileManager.default.isExecutableFile(atPath: python), "no .venv: run scripts/install-deps.sh test")
        let client = try ChildProcess(python, ["-u", Build.packageRoot + "/Tests/Support/lwm2m_client.py", "\(hub.udp)", "node-s"], interactive: true)
        defer { client.send("quit") }
        #expect(eventually(timeout: 15) { client.log.contains("registered 2.01 Created /rd/") }, "\(client.log)")
        client.send("send")
        #expect(eventually { client.log.contains("sent 2.04 Changed") }, "\(client.log)")
        // No values: nothing to wait for, answered at once.
        client.send("send-empty")
        #expect(eventually { client.log.contains("sent-empty 2.04 Changed") }, "\(client.log)")
        for _ in 0..<8 where !client.log.contains("sent 5.03") {
            let answers = client.log.components(separatedBy: "sent ").count
            client.send("send")
            _ = eventually { client.log.components(separatedBy: "sent ").count > answers }
        }
        #expect(client.log.contains("sent 5.03 Service Unavailable"), "\(client.log)")
        // Stopping would try each queued message on the silent webhook first: not needed here.
        _ = hub.stop(timeout: 1)
    }

    /// The bootstrap interface: a client asks (POST /bs), takes the Bootstrap-Delete, the writes of its
    /// Security and Server instances and the Bootstrap-Finish, and registers with the server it was given,
    /// with the lifetime it was given. A coaps server is given only to clients that bootstrap over DTLS.
    @Test func bootstrapsAClientWhichThenRegisters() throws {
        let hub = try ServedHub(key: Self.ownerKey) { hub in """
            sources:
              lw:
                plugin: lwm2m
                listen: "127.0.0.1:\(hub.udp)"
                observe: []
                bootstrap: { server_uri: "coap://127.0.0.1:\(hub.udp)", lifetime: 300, short_server_id: 7 }
              secure:
                plugin: lwm2m
                listen: "127.0.0.1:\(hub.dtls)"
                bootstrap: { server_uri: "coaps://127.0.0.1:5684" }
            sinks:
              out: { plugin: file, path: \(hub.dir.path)/out.jsonl }
            pipelines:
              devices: { from: [ "lw:devices/+/lifecycle", "secure:devices/+/lifecycle" ], to: [ out ] }
            auth:
              allow_anonymous: true
            """ }
        let client = try bootstrapClient(hub, endpoint: "node-b", mode: "bootstrap", shortServerID: 7, lifetime: 300)
        #expect(eventually { hub.lines.contains { text($0["payload"]?["event"]) == "bootstrapped" && text($0["device"]) == "node-b" } }, "\(hub.lines)")
        client.send("quit")
        // Over plain UDP, a client cannot be handed a pre-shared key it never proved it holds.
        let refused = try coap(["-m", "post", "coap://127.0.0.1:\(hub.dtls)/bs?ep=node-c"])
        #expect(refused.contains("4.03"), "\(refused)")
        #expect(try coap(["-m", "post", "coap://127.0.0.1:\(hub.udp)/bs"]).contains("4.00"))
    }

    /// Runs the test client in a bootstrap mode against `hub` and checks that it went through each step
    /// in order and registered with the server and lifetime it was given. The client's own bootstrap
    /// account is /0/1: Bootstrap-Discover shows it, and the server account goes to /0/0.
    private func bootstrapClient(_ hub: ServedHub, endpoint: String, mode: String, shortServerID: Int, lifetime: Int) throws -> ChildProcess {
        let python = Build.packageRoot + "/.venv/bin/python"
        try #require(FileManager.default.isExecutableFile(atPath: python), "no .venv: run scripts/install-deps.sh test")
        let client = try ChildProcess(python, ["-u", Build.packageRoot + "/Tests/Support/lwm2m_client.py", "\(hub.udp)", endpoint, mode], interactive: true)
        #expect(eventually(timeout: 15) { client.log.contains("registered 2.01 Created /rd/") }, "\(client.log)")
        let steps = ["bootstrap-request 2.04 Changed", "bootstrap-delete /", "bootstrap-discover /",
                     "bootstrap-write /0/0 coap://127.0.0.1:\(hub.udp) mode 3 ssid \(shortServerID) identity -",
                     "bootstrap-write /1/0 lifetime \(lifetime) binding U", "bootstrap-finish", "registered 2.01"]
        let at = steps.map { client.log.range(of: $0)?.lowerBound }
        #expect(at.allSatisfy { $0 != nil } && at.compactMap { $0 } == at.compactMap { $0 }.sorted(), "in this order: \(client.log)")
        #expect(eventually { hub.lines.contains { text($0["device"]) == endpoint && text($0["payload"]?["event"]) == "registered" && $0["payload"]?["lifetime"] == .int(Int64(lifetime)) } },
                "\(hub.lines)")
        return client
    }

    /// A 1.1 client that prefers SenML CBOR (`pct=112`) gets its Bootstrap-Writes in it, into the
    /// instances its Bootstrap-Discover left free; the test's client refuses TLV. A `pct` the hub does
    /// not write in is refused with 4.00.
    @Test func bootstrapsInTheFormatTheClientPrefers() throws {
        let hub = try ServedHub(key: Self.ownerKey) { hub in """
            sources:
              lw:
                plugin: lwm2m
                listen: "127.0.0.1:\(hub.udp)"
                observe: []
                bootstrap: { server_uri: "coap://127.0.0.1:\(hub.udp)", lifetime: 120, short_server_id: 9 }
            sinks:
              out: { plugin: file, path: \(hub.dir.path)/out.jsonl }
            pipelines:
              devices: { from: [ "lw:devices/+/lifecycle" ], to: [ out ] }
            auth:
              allow_anonymous: true
            """ }
        let client = try bootstrapClient(hub, endpoint: "node-s", mode: "bootstrap-senml", shortServerID: 9, lifetime: 120)
        #expect(!client.log.contains("refused"), "\(client.log)")
        client.send("quit")
        for pct in ["11544", "json"] {
            let refused = try coap(["-m", "post", "coap://127.0.0.1:\(hub.udp)/bs?ep=node-t&pct=\(pct)"])
            #expect(refused.contains("4.00") && refused.contains("pct must be"), "\(refused)")
        }
    }

    /// `iotc check` locates mistakes in the source's settings at their field.
    @Test func checkLocatesBadPathsAndBootstrapSettings() throws {
        let dir = TempDir()
        let file = dir.write("lw.yaml", """
            sources:
              lw:
                plugin: lwm2m
                listen: "127.0.0.1:5683"
                observe: [ /3303/0/5700, "/abc" ]
                bootstrap: { server_uri: "http://x", short_server_id: 0, binding: "X" }
                queue_mode_listen: 0
            sinks: { out: { plugin: log } }
            pipelines: { t: { from: [ lw ], to: [ out ] } }
            """)
        let (code, out) = try run(Build.iotc, ["check", file, "--plugins", Build.directory])
        #expect(code != 0 && out.contains("lw.yaml:5:30: error: source 'lw': '/abc' is not an LwM2M path")
                && out.contains("lw.yaml:6:30: error: source 'lw': server_uri must be a coap:// or coaps:// URI")
                && out.contains("lw.yaml:6:59: error: source 'lw': short_server_id must be 1 to 65534")
                && out.contains("lw.yaml:6:71: error: source 'lw': binding must be binding letters")
                && out.contains("lw.yaml:7:24: error: source 'lw': queue_mode_listen must be longer than 0"), "\(out)")
    }

    /// A pipeline drives an operation: each registration becomes a read of the battery level through
    /// the `downlink` sink, named by the command's topic, and the answer comes back under that id.
    @Test func aPipelineReadsEachClientAsItRegisters() throws {
        let hub = try ServedHub(key: Self.ownerKey) { hub in """
            sources:
              lw: { plugin: lwm2m, listen: "127.0.0.1:\(hub.udp)", observe: [] }
            sinks:
              out: { plugin: file, path: \(hub.dir.path)/out.jsonl }
              down: { plugin: downlink, source: lw }
            pipelines:
              results: { from: [ "lw:devices/+/results/+" ], to: [ out ] }
              onboard:
                from: [ "lw:devices/+/lifecycle" ]
                steps:
                  - decode: json
                  - filter: "event == 'registered'"
                  - map: { path: "'/3/0/9'" }
                  - set: { msg.topic: "'devices/' + msg.device + '/commands/read/battery-' + msg.device", msg.kind: "'command'" }
                  - encode: json
                to: [ down ]
            auth:
              allow_anonymous: true
            """ }
        let python = Build.packageRoot + "/.venv/bin/python"
        let client = try ChildProcess(python, ["-u", Build.packageRoot + "/Tests/Support/lwm2m_client.py", "\(hub.udp)", "node-9"], interactive: true)
        #expect(eventually(timeout: 15) { hub.lines.contains { text($0["kind"]) == "command_result" } }, "\(client.log) \(hub.lines)")
        let result = try #require(hub.lines.first { text($0["kind"]) == "command_result" })
        #expect(text(result["topic"]) == "devices/node-9/results/battery-node-9" && result["payload"]?["values"]?["/3/0/9"] == .int(87), "\(result)")
        client.send("quit")
    }

    @Test func holdsCommandsForAQueueModeClientUntilItSpeaks() throws {
        // Nothing observed: notifications would keep the client awake (a client that speaks listens).
        let hub = try Self.hub(observe: "[]", extra: "    queue_mode_listen: 1s")
        let python = Build.packageRoot + "/.venv/bin/python"
        try #require(FileManager.default.isExecutableFile(atPath: python), "no .venv: run scripts/install-deps.sh test")
        let client = try ChildProcess(python, ["-u", Build.packageRoot + "/Tests/Support/lwm2m_client.py", "\(hub.udp)", "sleepy-1", "queue"], interactive: true)
        #expect(eventually(timeout: 15) { client.log.contains("registered 2.01") }, "\(client.log)")
        #expect(eventually { hub.lines.contains { text($0["payload"]?["event"]) == "registered" && $0["payload"]?["queue_mode"] == .bool(true) } })
        // Past its listening time the client is asleep: the command waits in the hub.
        Thread.sleep(forTimeInterval: 1.5)
        let sent = hub.call("POST", "/v1/devices/sleepy-1/commands", #"{"name":"read","payload":{"path":"/3/0/9"},"timeout":1}"#)
        let id = try #require(text((try? JSON.decode(sent.body))?["id"]), "\(sent)")
        #expect(!client.log.contains("read /3/0/9"), "\(client.log)")
        #expect(text((try? JSON.decode(sent.body))?["status"]) != "succeeded", "\(sent)")
        // It speaks (an update): the command goes, and its answer settles it.
        client.send("update")
        #expect(eventually(timeout: 10) {
            text((try? JSON.decode(hub.call("GET", "/v1/devices/sleepy-1/commands/\(id)").body))?["status"]) == "succeeded"
        }, "\(client.log)")
        #expect(client.log.contains("read /3/0/9"))
        client.send("quit")
    }

    @Test func aBadObjectDefinitionStopsTheStartWithItsLocation() throws {
        let dir = TempDir()
        let xml = dir.write("bad.xml", "<LWM2M><Object><Name>X</Name></Object></LWM2M>\n")
        let file = dir.write("hub.yaml", """
            sources:
              lw: { plugin: lwm2m, listen: "127.0.0.1:\(freePort())", object_definitions: [ \(xml) ] }
            sinks:
              out: { plugin: file, path: \(dir.path)/out.jsonl }
            pipelines:
              t: { from: [ "lw:devices/+/telemetry" ], to: [ out ] }
            """)
        let (code, output) = try run(Build.iotc, ["serve", file, "--data", dir.path + "/data", "--api", "127.0.0.1:\(freePort())", "--plugins", Build.directory],
                                     environment: ["IOTC_BOOTSTRAP_KEY": Self.ownerKey])
        #expect(code != 0)
        #expect(output.contains("source 'lw' (lwm2m): object_definitions: \(xml):1:8: an <Object> needs a numeric <ObjectID>"), "\(output)")
    }

    @Test func refusesBadRegistrationsAndEndsLapsedOnes() throws {
        let hub = try Self.hub()
        let rd = "coap://127.0.0.1:\(hub.udp)/rd"
        #expect(try coap(["-m", "post", "-t", "40", "-e", "</3/0>", "\(rd)?lt=60"]).contains("4.00 ep (the endpoint name) is required"))
        #expect(try coap(["-m", "post", "-t", "40", "-e", "</3/0", "\(rd)?ep=a"]).contains("4.00 link format at character 1: unterminated target"))
        #expect(try coap(["-m", "post", "-t", "40", "-e", "</3/0>,</a/b>", "\(rd)?ep=a"]).contains("4.00 '/a/b' is not an object"))
        #expect(try coap(["-m", "post", "-t", "40", "-e", "</3/0/1>", "\(rd)?ep=a"]).contains("4.00"))
        #expect(try coap(["-m", "post", "-t", "40", "-e", "</3/0>", "\(rd)?ep=a&ep=b"]).contains("4.00 'ep' given twice"))
        #expect(try coap(["-m", "post", "-t", "40", "-e", "</3/0>", "\(rd)?ep=a&lwm2m=9.9"]).contains("4.12"))
        #expect(try coap(["-m", "post", "-t", "40", "-e", "</3/0>", "\(rd)?ep=a&lt=-5"]).contains("4.00 lt must be"))
        #expect(try coap(["-m", "post", "-t", "0", "-e", "</3/0>", "\(rd)?ep=a"]).contains("4.15"))
        #expect(try coap(["-m", "post", "\(rd)/unknown"]).contains("4.04"))
        #expect(try coap(["-m", "delete", "\(rd)/unknown"]).contains("4.04"))
        #expect(try coap(["-m", "get", rd]).contains("4.05"))
        #expect(try coap(["-m", "post", "-t", "110", "-e", #"[{"n":"/3/0/9","v":1}]"#, "coap://127.0.0.1:\(hub.udp)/dp"]).contains("4.03 register before sending"))
        #expect(!hub.lines.contains { text($0["kind"]) == "lifecycle" }, "nothing registered")
        // A registration with a lifetime of 2 s that is never updated ends, and says so.
        let out = try coap(["-m", "post", "-t", "40", "-e", "</3/0>", "\(rd)?ep=brief&lt=2", "-v", "7"])
        #expect(out.contains("c:2.01") && out.contains("Location-Path:rd"), "\(out)")
        #expect(eventually(timeout: 6) { hub.lines.contains { text($0["payload"]?["event"]) == "expired" && text($0["device"]) == "brief" } })
    }

    /// Bodies longer than a block, both ways: a registration whose object list comes in Block1, and
    /// a read whose answer comes in Block2, from the aiocoap client. Raw block-wise transfers that are
    /// wrong get their error and the hub carries on: two datagrams, a first block with no payload and a
    /// last one, crashed it inside libcoap's own reassembly, which is no longer used.
    @Test func takesBlockWiseBodiesBothWaysAndRefusesBrokenTransfers() throws {
        let hub = try Self.hub(extra: "    max_body_size: 4KiB")
        let socket = try UDPSocket(port: hub.udp)
        func post(_ mid: UInt8, block1: UInt8, _ payload: [UInt8], query: String = "ep=raw-1") -> [UInt8]? {
            // CON POST /rd?QUERY, token = mid, Content-Format 40, Block1.
            socket.send([0x41, 0x02, 0x30, mid, mid, 0xB2] + Array("rd".utf8) + [0x11, 40, 0x30 | UInt8(query.utf8.count)] + Array(query.utf8)
                        + [0xC1, block1] + (payload.isEmpty ? [] : [0xFF] + payload))
            return socket.receive()
        }
        func code(_ answer: [UInt8]?) -> String { answer.map { String(format: "%d.%02d", $0[1] >> 5, $0[1] & 0x1F) } ?? "no answer" }
        // A first block with no payload, then a last one: the pair that crashed the hub.
        #expect(code(post(1, block1: 0x08, [])) == "4.00")
        #expect(code(post(2, block1: 0x10, [])) == "4.08")
        // A block of 16 bytes with more to come and no Size1, then the same block as the last.
        let first = Array("</1/0>,</3/0>,</".utf8)
        #expect(code(post(3, block1: 0x08, first)) == "2.31")
        #expect(code(post(4, block1: 0x00, first)) == "4.00", "a body of that one block: a broken object list")
        // Block 2 when block 1 never came, and a body over max_body_size.
        #expect(code(post(5, block1: 0x08, first)) == "2.31")
        #expect(code(post(6, block1: 0x28, first)) == "4.08")
        // Blocks of 1,024 bytes, more to come: the fourth makes it certain that the body is over 4 KiB.
        let big = (0..<4).map { n in code(post(7 + UInt8(n), block1: UInt8(n << 4) | 0x0E, [UInt8](repeating: 0x20, count: 1024))) }
        #expect(big == ["2.31", "2.31", "2.31", "4.13"])
        // A whole block-wise registration: two blocks of 16 bytes, answered 2.31 and then 2.01.
        #expect(code(post(20, block1: 0x08, first, query: "ep=raw-2")) == "2.31")
        #expect(code(post(21, block1: 0x10, Array("3303/0>".utf8), query: "ep=raw-2")) == "2.01")
        #expect(eventually { hub.lines.contains { text($0["device"]) == "raw-2" && text($0["payload"]?["objects"]) == "</1/0>,</3/0>,</3303/0>" } })
        // A read that raw-2 answers with a first block and more to come; libcoap asks for the next block
        // under a token of its own, raw-2 resets that request, and the command fails at once.
        nonisolated(unsafe) var read: Value?
        let done = DispatchSemaphore(value: 0)
        let (api, key) = (hub.api, hub.key)
        DispatchQueue.global().async {
            let r = http("POST", "http://127.0.0.1:\(api)/v1/devices/raw-2/commands", body: Array(#"{"name":"read","payload":{"path":"/3/0"},"timeout":10}"#.utf8),
                         headers: ["Authorization": "Bearer \(key)", "Content-Type": "application/json"], timeout: 20)
            read = r.flatMap { try? JSON.decode($0.body) }
            done.signal()
        }
        var asked: [String] = []
        while asked.count < 3, let d = socket.receive(), let request = HubRequest(d) {
            asked.append(request.path + (request.block2 ? " block2" : ""))
            if request.block2 {
                socket.send([0x70, 0x00, d[2], d[3]])  // RST
            } else if request.path == "/3/0" {
                // ACK 2.05, Content-Format 11542 (TLV), Block2 NUM 0, more, 16 bytes.
                socket.send(request.ack(0x45, options: [0xC2, 0x2D, 0x16, 0xB1, 0x08], payload: [UInt8](repeating: 0xC8, count: 16)))
            } else {
                socket.send(request.ack(0x84))  // 4.04
            }
        }
        #expect(asked.contains("/3/0") && asked.contains("/3/0 block2"), "\(asked)")
        #expect(done.wait(timeout: .now() + 12) == .success)
        #expect(text(read?["status"]) == "failed" && text(read?["result"]?["error"]) == "the client did not answer", "\(String(describing: read))")
        // Two reads answered block-wise at once, of /3/0 and of /1/3/0 (whose Uri-Path ends as /3/0's
        // does): raw-2 resets only the next-block request for /1/3/0, while /3/0's is still open. That
        // read fails at once, and the other is put together from its second block. libcoap has one
        // exchange at a time with a peer (NSTART 1), so /3/0's next block is answered separately (an
        // empty ACK first, the 2.05 after the reset), which lets the other read through meanwhile.
        final class Answers: @unchecked Sendable {
            let lock = NSLock()
            var byPath: [String: Value] = [:]
        }
        let answers = Answers(), both = DispatchGroup()
        for path in ["/3/0", "/1/3/0"] {
            both.enter()
            DispatchQueue.global().async {
                let r = http("POST", "http://127.0.0.1:\(api)/v1/devices/raw-2/commands", body: Array(#"{"name":"read","payload":{"path":"\#(path)"},"timeout":10}"#.utf8),
                             headers: ["Authorization": "Bearer \(key)", "Content-Type": "application/json"], timeout: 20)
                answers.lock.withLock { answers.byPath[path] = r.flatMap { try? JSON.decode($0.body) } }
                both.leave()
            }
        }
        // TLV: resource 0 (Manufacturer), 29 bytes of text; 32 bytes in all, two blocks of 16.
        let device: [UInt8] = [0xC8, 0x00, 29] + [UInt8](repeating: UInt8(ascii: "m"), count: 29)
        var seen = Set<String>(), held: [UInt8]?, resetSent = false
        while seen.count < 4 || held != nil {
            if resetSent, let answer = held {
                Thread.sleep(forTimeInterval: 0.2)  // the hub has taken the reset
                socket.send(answer)
                held = nil
            }
            guard let d = socket.receive() else { break }
            guard let request = HubRequest(d) else { continue }  // the hub's ACK of the separate answer
            seen.insert(request.path + (request.block2 ? " block2" : ""))
            switch (request.path, request.block2) {
            case ("/1/3/0", true):
                socket.send([0x70, 0x00, d[2], d[3]])  // RST
                resetSent = true
            case ("/3/0", true):
                // An empty ACK now; later CON 2.05 (message id 0x7777), TLV, Block2 NUM 1, last, the second 16 bytes.
                socket.send([0x60, 0x00, d[2], d[3]])
                let ack = request.ack(0x45, options: [0xC2, 0x2D, 0x16, 0xB1, 0x10], payload: Array(device[16...]))
                held = [0x40 | UInt8(request.token.count), 0x45, 0x77, 0x77] + ack[4...]
            // ACK 2.05, TLV, Block2 NUM 0, more, the first 16 bytes.
            case ("/3/0", false), ("/1/3/0", false): socket.send(request.ack(0x45, options: [0xC2, 0x2D, 0x16, 0xB1, 0x08], payload: Array(device[..<16])))
            default: socket.send(request.ack(0x84))
            }
        }
        #expect(seen == ["/3/0", "/1/3/0", "/3/0 block2", "/1/3/0 block2"], "\(seen)")
        #expect(both.wait(timeout: .now() + 12) == .success)
        answers.lock.withLock {
            let failed = answers.byPath["/1/3/0"], read = answers.byPath["/3/0"]
            #expect(text(failed?["status"]) == "failed" && text(failed?["result"]?["error"]) == "the client did not answer", "\(String(describing: failed))")
            #expect(text(read?["status"]) == "succeeded" && text(read?["result"]?["values"]?["/3/0/0"]) == String(repeating: "m", count: 29), "\(String(describing: read))")
        }

        // The aiocoap client with an object list and a Device object longer than a block.
        let python = Build.packageRoot + "/.venv/bin/python"
        let client = try ChildProcess(python, ["-u", Build.packageRoot + "/Tests/Support/lwm2m_client.py", "\(hub.udp)", "node-9", "large"], interactive: true)
        #expect(eventually(timeout: 15) { client.log.contains("registered 2.01 Created /rd/") }, "\(client.log)")
        #expect(eventually { hub.lines.contains { text($0["device"]) == "node-9" && text($0["payload"]?["objects"])?.hasSuffix(",</32769/199>") == true } })
        let c = try hub.command("node-9", "read", #"{"path":"/3/0"}"#)
        let model = try #require(text(c["result"]?["values"]?["/3/0/1"]), "\(c)")
        #expect(model.count > 2_000 && model.hasSuffix("with a long model number") && c["result"]?["values"]?["/3/0/9"] == .int(87), "\(c)")
        // It lists the formats it reads, without TLV: a write that names none goes in SenML-JSON.
        let w = try hub.command("node-9", "write", #"{"path":"/3/0/14","value":"+11"}"#)
        #expect(text(w["status"]) == "succeeded", "\(w)")
        #expect(eventually { client.log.contains("write /3/0/14 +11") }, "\(client.log)")
        // A write longer than a block goes in Block1, which aiocoap puts together.
        let long = "+" + String(repeating: "1", count: 3_000)
        let lw = try hub.command("node-9", "write", #"{"path":"/3/0/14","value":"\#(long)"}"#)
        #expect(text(lw["status"]) == "succeeded", "\(lw)")
        #expect(eventually { client.log.contains("write /3/0/14 \(long)") }, "\(client.log.suffix(500))")
        // Resets are a peer's normal answer: libcoap's alert for each one stays out of the hub's log.
        for mid in UInt8(0x50)..<0x70 { socket.send([0x70, 0x00, 0x31, mid]) }
        // Still serving the socket that sent the broken transfers (past the requests the hub sent it as raw-2).
        socket.send([0x40, 0x00, 0x30, 0x40])
        var reset = false
        while !reset, let d = socket.receive() { reset = d[0] == 0x70 && d[2] == 0x30 && d[3] == 0x40 }
        #expect(reset, "a ping is answered with a reset")
        #expect(!hub.log.contains("got RST"), "\(hub.log.suffix(2_000))")
        client.send("quit")
    }

    /// Notifications that come out of order are dropped (RFC 7641 §3.4): a raw client answers the
    /// configured observation with Observe 10, then notifies 12, 11 (older) and 13.
    @Test func dropsNotificationsThatComeOutOfOrder() throws {
        let hub = try Self.hub()
        let socket = try UDPSocket(port: hub.udp)
        // CON POST /rd?ep=raw-o, Content-Format 40, </3303/0>.
        socket.send([0x41, 0x02, 0x40, 0x01, 0x01, 0xB2] + Array("rd".utf8) + [0x11, 40, 0x38] + Array("ep=raw-o".utf8) + [0xFF] + Array("</3303/0>".utf8))
        var observe: HubRequest?
        while observe == nil, let d = socket.receive() {
            if let r = HubRequest(d), r.path == "/3303/0/5700" { observe = r }
        }
        let request = try #require(observe, "the hub observes /3303/0/5700")
        // ACK 2.05 with Observe 10, Content-Format 0, "20.5"; then CON notifications on the same token.
        socket.send(request.ack(0x45, options: [0x61, 10, 0x60], payload: Array("20.5".utf8)))
        for (mid, sequence, value) in [(UInt8(1), UInt8(12), "21.5"), (2, 11, "99"), (3, 13, "22.5")] {
            socket.send([0x40 | UInt8(request.token.count), 0x45, 0x41, mid] + request.token + [0x61, sequence, 0x60, 0xFF] + Array(value.utf8))
            Thread.sleep(forTimeInterval: 0.1)
        }
        func temperatures() -> [Value] { hub.lines.filter { text($0["device"]) == "raw-o" && text($0["kind"]) == "telemetry" }.compactMap { $0["payload"]?["temperature"] } }
        #expect(eventually { temperatures().count >= 3 })
        Thread.sleep(forTimeInterval: 0.5)
        #expect(temperatures() == [.double(20.5), .double(21.5), .double(22.5)], "\(hub.lines)")
    }

    /// An Update whose object list adds an object starts the configured observations of that object.
    @Test func observesAnObjectTheClientAddsInAnUpdate() throws {
        let hub = try Self.hub()
        let socket = try UDPSocket(port: hub.udp)
        // CON POST /rd?ep=raw-u, Content-Format 40, </3/0>: nothing configured to observe.
        socket.send([0x41, 0x02, 0x50, 0x01, 0x01, 0xB2] + Array("rd".utf8) + [0x11, 40, 0x38] + Array("ep=raw-u".utf8) + [0xFF] + Array("</3/0>".utf8))
        let created = try #require(socket.receive())
        #expect(created[1] == 0x41, "2.01: \(created)")
        let location = HubRequest.options(created, number: 8)
        #expect(location.count == 2 && location[0] == "rd", "\(location)")
        #expect(socket.receive(timeout: 1) == nil, "no observation without object 3303")
        // CON POST /rd/{id} with </3/0>,</3303/0>.
        let id = Array(location.last!.utf8)
        socket.send([0x41, 0x02, 0x50, 0x02, 0x02, 0xB2] + Array("rd".utf8) + [UInt8(id.count)] + id + [0x11, 40, 0xFF] + Array("</3/0>,</3303/0>".utf8))
        var asked: [String] = []
        while let d = socket.receive(timeout: 2) {
            if let r = HubRequest(d) {
                asked.append(r.path)
                socket.send(r.ack(0x84))  // 4.04: the test does not serve it
            } else {
                #expect(d[1] == 0x44, "2.04: \(d)")
            }
        }
        #expect(asked == ["/3303/0/5700"], "\(asked)")
    }

    /// A client whose objects are under an alternate path (`</lwm2m>;rt="oma.lwm2m"`) registers, and
    /// the hub's requests go under that path.
    @Test func sendsRequestsUnderAClientsAlternatePath() throws {
        let hub = try Self.hub()
        let socket = try UDPSocket(port: hub.udp)
        let objects = #"</lwm2m>;rt="oma.lwm2m",</lwm2m/3/0>,</lwm2m/3303/0>"#
        socket.send([0x41, 0x02, 0x60, 0x01, 0x01, 0xB2] + Array("rd".utf8) + [0x11, 40, 0x38] + Array("ep=raw-a".utf8) + [0xFF] + Array(objects.utf8))
        var asked: [String] = []
        var created = false
        while let d = socket.receive(timeout: 2) {
            if let r = HubRequest(d) {
                asked.append(r.path)
                socket.send(r.ack(0x45, options: [0x61, 1, 0x60], payload: Array("21.5".utf8)))  // 2.05, Observe 1, text
            } else {
                created = created || d[1] == 0x41
            }
        }
        #expect(created, "2.01")
        #expect(asked == ["/lwm2m/3303/0/5700"], "\(asked)")
        #expect(eventually { hub.lines.contains { text($0["device"]) == "raw-a" && $0["payload"]?["temperature"] == .double(21.5) } }, "\(hub.lines)")
    }

    @Test func registersOverDTLSWithTheDevicesKeyOnly() throws {
        let hub = try Self.hub()
        #expect(hub.call("POST", "/v1/devices", #"{"id":"meter-5"}"#).status == 201)
        let key = "lwm2m-key-0123456789"
        let hex = key.utf8.map { String(format: "%02x", $0) }.joined()
        #expect(hub.call("POST", "/v1/devices/meter-5/credentials", #"{"kind":"psk","identity":"meter-5","key":"\#(hex)"}"#).status == 201)
        let rd = "coaps://127.0.0.1:\(hub.dtls)/rd"
        var out = ""
        #expect(eventually(timeout: 10) {
            out = (try? coap(["-m", "post", "-t", "40", "-e", "</3/0>", "-u", "meter-5", "-k", key, "\(rd)?ep=meter-5&lt=60", "-v", "7"])) ?? ""
            return out.contains("c:2.01")
        }, "\(out)")
        #expect(eventually { hub.lines.contains { text($0["payload"]?["event"]) == "registered" && text($0["tenant"]) == "system" } })
        out = try coap(["-m", "post", "-t", "40", "-e", "</3/0>", "-u", "meter-5", "-k", key, "\(rd)?ep=someone-else"])
        #expect(out.contains("4.03"), "\(out)")
        // Without an endpoint name, the credentials' device is the endpoint.
        out = try coap(["-m", "post", "-t", "40", "-e", "</3/0>,</1/0>", "-u", "meter-5", "-k", key, "\(rd)?lt=60", "-v", "7"])
        #expect(out.contains("c:2.01"), "\(out)")
        #expect(eventually { hub.lines.contains { text($0["payload"]?["event"]) == "registered" && text($0["device"]) == "meter-5"
                                                   && text($0["payload"]?["objects"]) == "</3/0>,</1/0>" } })
        out = try coap(["-m", "post", "-t", "40", "-e", "</3/0>", "-u", "meter-5", "-k", "wrong-key-0123456789", "\(rd)?ep=meter-5", "-v", "7"])
        #expect(!out.contains("c:2.01"), "\(out)")
    }
}

/// A confirmable request the hub sent to a raw client: its token and Uri-Path, and whether it asks for
/// a later block (Block2). Options are read with short deltas and lengths, as libcoap writes these.
struct HubRequest {
    let datagram: [UInt8]
    let token: [UInt8]
    let path: String
    let block2: Bool

    init?(_ d: [UInt8]) {
        guard d.count >= 4, d[0] >> 4 == 0x4, d[1] >= 1, d[1] < 32 else { return nil }
        datagram = d
        token = Array(d[4..<(4 + Int(d[0] & 0x0F))])
        path = "/" + Self.options(d, number: 11).joined(separator: "/")
        block2 = !Self.options(d, number: 23).isEmpty
    }

    /// The values of one option (short deltas and lengths) in any message, as text.
    static func options(_ d: [UInt8], number wanted: Int) -> [String] {
        var out: [String] = [], i = 4 + Int(d[0] & 0x0F), number = 0
        while i < d.count, d[i] != 0xFF {
            var delta = Int(d[i] >> 4), length = Int(d[i] & 0x0F)
            i += 1
            if delta == 13 { delta = 13 + Int(d[i]); i += 1 }
            if length == 13 { length = 13 + Int(d[i]); i += 1 }
            number += delta
            if number == wanted { out.append(String(decoding: d[i..<(i + length)], as: UTF8.self)) }
            i += length
        }
        return out
    }

    /// A piggybacked answer: ACK with `code`, the encoded `options` and a payload.
    func ack(_ code: UInt8, options: [UInt8] = [], payload: [UInt8] = []) -> [UInt8] {
        [0x60 | UInt8(token.count), code, datagram[2], datagram[3]] + token + options + (payload.isEmpty ? [] : [0xFF] + payload)
    }
}
