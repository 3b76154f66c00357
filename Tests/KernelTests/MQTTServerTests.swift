import Foundation
import Testing
@testable import IoTCKernel
import IoTCPluginKit

/// The `mqtt` source with real clients on loopback: paho-mqtt (3.1.1 and 5.0), aiomqtt, a byte-level
/// client (Tests/Support/mqtt_peers.py), and mosquitto_pub/mosquitto_sub.
@Suite struct MQTTServerTests {
    /// A hub with the MQTT server on TCP, TLS and WebSocket, a static user, and a pipeline for `plant/#`.
    final class Server {
        let dir = TempDir()
        let tcp = freePort(), tls = freePort(), ws = freePort()
        let hub: Hub

        init(extra: String = "", pipelines: String? = nil, sinks: String = "") throws {
            try makeTestCertificates(in: dir)
            hub = try makeHub(dir)
            try hub.start(try loadConfig("""
                sources:
                  devices:
                    plugin: mqtt
                    listen: "127.0.0.1:\(tcp)"
                    tls: { listen: "127.0.0.1:\(tls)", certificate_file: "\(dir.path)/cert.pem", key_file: "\(dir.path)/key.pem" }
                    websocket: { listen: "127.0.0.1:\(ws)" }
                    authentication: static
                    users: [ { username: alice, password: secret, publish: [ "alice/#" ], subscribe: [ "alice/#" ] } ]
                    anonymous: { publish: [ "#" ], subscribe: [ "#", "$SYS/#" ] }
                    connect_timeout: 1s
                    max_packet_size: 4KiB
                    sys_interval: 1s
                \(extra)
                sinks:
                  out: { plugin: file, path: "\(dir.path)/out.jsonl" }
                \(sinks)
                pipelines:
                \(pipelines ?? """
                  plant:
                    from: [ "devices:plant/#" ]
                    steps: [ { decode: json } ]
                    to: [ out ]
                """)
                """))
            #expect(waitForPort(tcp) && waitForPort(tls) && waitForPort(ws))
        }

        deinit { hub.stop() }

        func peers(_ scenario: String) throws -> (Int32, String) {
            let python = Build.packageRoot + "/.venv/bin/python"
            guard FileManager.default.isExecutableFile(atPath: python) else {
                return (-1, "no test virtualenv at .venv: run scripts/install-deps.sh test")
            }
            return try run(python, [Build.packageRoot + "/Tests/Support/mqtt_peers.py", scenario, "127.0.0.1", "\(tcp)", "\(tls)", "\(ws)", dir.path + "/cert.pem"])
        }

        var output: [Value] { jsonLines(dir.path + "/out.jsonl") }

        /// mosquitto_sub on `topics` (and a probe topic), returned once a probe message has come back,
        /// so that the subscription is known to be in place. Probe lines start with `probe/`.
        func subscriber(_ topics: [String], version: String = "mqttv5", qos: Int = 1, format: [String] = ["-v"]) throws -> ChildProcess {
            let probe = "probe/\(UUID().uuidString.prefix(8))"
            let sub = try ChildProcess("/usr/bin/env", ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", "\(tcp)", "-V", version, "-q", "\(qos)"]
                                       + (topics + [probe]).flatMap { ["-t", $0] } + format)
            #expect(eventually {
                _ = try? run("/usr/bin/env", ["mosquitto_pub", "-h", "127.0.0.1", "-p", "\(tcp)", "-t", probe, "-m", "probe"])
                return sub.log.contains(probe)
            }, "mosquitto_sub did not subscribe: \(sub.log)")
            return sub
        }

        /// What a subscriber received, without the probes.
        func lines(_ sub: ChildProcess) -> [String] {
            sub.log.split(separator: "\n").map(String.init).filter { !$0.hasPrefix("probe/") }
        }
    }

    static let scenarios = [
        "pubsub311", "pubsub5", "properties", "retained", "options", "shared", "will", "sessions311", "sessions5",
        "qos2_reconnect", "topic_alias", "keepalive", "malformed", "sys", "websocket", "tls", "aiomqtt", "auth",
    ]

    @Test(arguments: scenarios)
    func realClients(_ scenario: String) throws {
        let server = try Server()
        let (code, out) = try server.peers(scenario)
        #expect(code == 0, "\(out)")
    }

    /// pipelines/examples/mqtt-broker.yaml, the plain broker the plugin's README offers MQTT test suites:
    /// clients of both versions talk to each other through it with no credentials and no pipeline.
    @Test func theExampleBrokerServesAnyClient() throws {
        let dir = TempDir()
        let port = freePort()
        let example = try String(contentsOfFile: Build.packageRoot + "/pipelines/examples/mqtt-broker.yaml", encoding: .utf8)
        let text = example.replacingOccurrences(of: "127.0.0.1:1883", with: "127.0.0.1:\(port)")
        try #require(text != example, "the example no longer listens on 127.0.0.1:1883")
        let hub = try makeHub(dir)
        try hub.start(try loadConfig(text, file: "mqtt-broker.yaml"))
        defer { hub.stop() }
        #expect(waitForPort(port))
        let python = Build.packageRoot + "/.venv/bin/python"
        try #require(FileManager.default.isExecutableFile(atPath: python), "no .venv: run scripts/install-deps.sh test")
        for scenario in ["pubsub311", "pubsub5", "retained", "will", "sessions5", "qos2_reconnect"] {
            let (code, out) = try run(python, [Build.packageRoot + "/Tests/Support/mqtt_peers.py", scenario, "127.0.0.1", "\(port)"])
            #expect(code == 0, "\(scenario): \(out)")
        }
    }

    @Test func requiresClientCertificatesWhenConfigured() throws {
        let dir = TempDir()
        try makeTestCertificates(in: dir)
        let tls = freePort(), tcp = freePort()
        let hub = try makeHub(dir)
        try hub.start(try loadConfig("""
            sources:
              devices:
                plugin: mqtt
                listen: "127.0.0.1:\(tcp)"
                tls: { listen: "127.0.0.1:\(tls)", certificate_file: "\(dir.path)/cert.pem", key_file: "\(dir.path)/key.pem", client_ca_file: "\(dir.path)/ca.pem" }
                authentication: static
                anonymous: { publish: [ "#" ], subscribe: [ "#" ] }
            sinks: { out: { plugin: log } }
            pipelines: { p: { from: [ "devices:nothing/#" ], to: [ out ] } }
            """))
        defer { hub.stop() }
        #expect(waitForPort(tls))
        let python = Build.packageRoot + "/.venv/bin/python"
        try #require(FileManager.default.isExecutableFile(atPath: python), "no .venv: run scripts/install-deps.sh test")
        let (code, out) = try run(python, [Build.packageRoot + "/Tests/Support/mqtt_peers.py", "tls_client_cert", "127.0.0.1", "\(tcp)", "\(tls)", "0", dir.path + "/cert.pem"],
                                  environment: ["MQTT_CLIENT_CERT": dir.path + "/dev.pem", "MQTT_CLIENT_KEY": dir.path + "/dev.key"])
        #expect(code == 0, "\(out)")
    }

    @Test func authenticatesAndAuthorizesThroughTheHub() throws {
        // authentication: hub (the default): the client id is the device, the password its token, and
        // the hub lets a device use only topics under devices/{its id}/.
        let dir = TempDir()
        let port = freePort()
        let hub = try makeHub(dir)
        try hub.start(try loadConfig("""
            sources: { devices: { plugin: mqtt, listen: "127.0.0.1:\(port)" } }
            sinks: { out: { plugin: file, path: "\(dir.path)/out.jsonl" } }
            pipelines: { t: { from: [ "devices:devices/#" ], steps: [ { decode: json } ], to: [ out ] } }
            auth: { tokens: [ { device: sensor-1, token: secret-1 } ] }
            """))
        defer { hub.stop() }
        #expect(waitForPort(port))
        func pub(_ args: [String]) throws -> (Int32, String) {
            try run("/usr/bin/env", ["mosquitto_pub", "-h", "127.0.0.1", "-p", "\(port)", "-V", "mqttv5", "-q", "1", "-d"] + args)
        }
        let ok = try pub(["-i", "sensor-1", "-u", "sensor-1", "-P", "secret-1", "-t", "devices/sensor-1/telemetry", "-m", #"{"t":1}"#])
        #expect(ok.0 == 0, "\(ok.1)")
        #expect(eventually { jsonLines(dir.path + "/out.jsonl").first?["device"] == "sensor-1" })
        // A wrong token is refused at CONNECT (0x86), and so is a client without one.
        let wrong = try pub(["-i", "sensor-1", "-u", "sensor-1", "-P", "nope", "-t", "devices/sensor-1/telemetry", "-m", "{}"])
        #expect(wrong.0 != 0 && wrong.1.contains("134"), "\(wrong.1)")
        let anonymous = try pub(["-i", "sensor-1", "-t", "devices/sensor-1/telemetry", "-m", "{}"])
        #expect(anonymous.0 != 0, "\(anonymous.1)")
        // Another device's topic: PUBACK 0x87, and nothing reaches the pipeline.
        let other = try pub(["-i", "sensor-1", "-u", "sensor-1", "-P", "secret-1", "-t", "devices/sensor-2/telemetry", "-m", #"{"t":2}"#])
        #expect(other.1.contains("RC:135"), "\(other.1)")
        usleep(200_000)
        #expect(jsonLines(dir.path + "/out.jsonl").count == 1)
    }

    /// What a device sends and the log quotes (here a user name with line breaks, a Unicode line
    /// separator and a terminal escape) stays on its log line: the device cannot write lines of its own.
    @Test func aDeviceCannotAddLinesToTheLog() throws {
        let port = freePort()
        let hub = try ServedHub(key: "iotc_mqttlogtest1_" + String(repeating: "k", count: 40)) { hub in """
            sources: { devices: { plugin: mqtt, listen: "127.0.0.1:\(port)", authentication: static, anonymous: { publish: [ "#" ] } } }
            sinks: { out: { plugin: file, path: "\(hub.dir.path)/out.jsonl" } }
            pipelines: { t: { from: [ "devices:devices/#" ], to: [ out ] } }
            """ }
        #expect(waitForPort(port))
        let forged = "2026-01-01T00:00:00+0000 error iotc: FORGED"
        // MQTT 3.1.1 CONNECT with a user name and password (mosquitto's clients refuse such a user name).
        let body = mqttString("MQTT") + [4, 0xC2, 0, 60] + mqttString("d1") + mqttString("user\n\(forged)\u{2028}x\u{1B}[31m") + mqttString("pw")
        let socket = try #require(RawSocket(port: port))
        socket.send([0x10, UInt8(body.count)] + body)
        #expect(socket.isClosed(), "a refused CONNECT closes the connection")
        #expect(eventually { hub.log.contains("authentication failed for user 'user\\n\(forged)\\u{2028}x\\u{1B}[31m'") }, "\(hub.log)")
        #expect(!hub.log.split(separator: "\n").contains { $0.hasPrefix(forged) }, "\(hub.log)")
    }

    /// Bytes of packets not yet all in are bounded over all of a source's connections
    /// (`max_partial_bytes`), not only each by max_packet_size: with 100,000 bytes, two clients each
    /// 35,000 bytes into a 40,000-byte CONNECT (a will with a large payload) are held, a third is
    /// closed, an ordinary client still connects, a connected MQTT 5 client whose PUBLISH would take the
    /// total further is told Server busy (0x89), and the first two complete their CONNECTs. Without
    /// the bound, clients not yet authenticated could hold max_packet_size each, as many as connected.
    @Test func packetsNotYetAllInAreBoundedOverAllConnections() throws {
        let dir = TempDir()
        let port = freePort()
        let hub = try makeHub(dir)
        defer { hub.stop() }
        try hub.start(try loadConfig("""
            sources:
              devices: { plugin: mqtt, listen: "127.0.0.1:\(port)", authentication: static, anonymous: { publish: [ "#" ] },
                         max_packet_size: 64KiB, max_partial_bytes: 100000 }
            sinks: { out: { plugin: file, path: "\(dir.path)/out.jsonl" } }
            pipelines: { t: { from: [ "devices:t/#" ], to: [ out ] } }
            """))
        #expect(waitForPort(port))
        func remainingLength(_ n: Int) -> [UInt8] {
            var n = n, out: [UInt8] = []
            repeat { var b = UInt8(n % 128); n /= 128; if n > 0 { b |= 0x80 }; out.append(b) } while n > 0
            return out
        }
        func packet(_ type: UInt8, _ body: [UInt8]) -> [UInt8] { [type] + remainingLength(body.count) + body }
        /// The next packet the server sends: its first byte and its body.
        func nextPacket(_ socket: RawSocket) -> (type: UInt8, body: [UInt8])? {
            guard let type = socket.readBytes(1, timeout: 3).first else { return nil }
            var length = 0, shift = 0
            while let b = socket.readBytes(1, timeout: 3).first {
                length |= Int(b & 0x7F) << shift
                shift += 7
                if b & 0x80 == 0 { return (type, socket.readBytes(length, timeout: 3)) }
            }
            return nil
        }
        // MQTT 3.1.1 CONNECT with a will of about 40,000 bytes.
        func largeConnect(_ id: String) -> [UInt8] {
            let will = [UInt8](repeating: 0x61, count: 39_950)
            return packet(0x10, mqttString("MQTT") + [4, 0x06, 0, 60] + mqttString(id) + mqttString("t/will") + [UInt8(will.count >> 8), UInt8(will.count & 0xFF)] + will)
        }
        func partly(_ id: String) throws -> (RawSocket, [UInt8]) {
            let socket = try #require(RawSocket(port: port))
            let bytes = largeConnect(id)
            socket.send(Array(bytes.prefix(35_000)))
            return (socket, Array(bytes.dropFirst(35_000)))
        }
        let (a, aRest) = try partly("a")
        #expect(a.readBytes(1, timeout: 0.3).isEmpty, "held")
        let (b, bRest) = try partly("b")
        #expect(b.readBytes(1, timeout: 0.3).isEmpty, "held")
        let (c, _) = try partly("c")
        #expect(c.isClosed(), "past the budget: closed")
        // An ordinary client's whole CONNECT (MQTT 5) is taken; its large PUBLISH, 35,000 bytes in,
        // would take the total past the budget: DISCONNECT with Server busy.
        let d = try #require(RawSocket(port: port))
        d.send(packet(0x10, mqttString("MQTT") + [5, 0x02, 0, 60, 0] + mqttString("d")))
        let connack = nextPacket(d)
        #expect(connack?.type == 0x20 && connack?.body.dropFirst().first == 0, "\(String(describing: connack))")
        let publish = packet(0x30, mqttString("t/x") + [0] + [UInt8](repeating: 0x62, count: 39_990))
        d.send(Array(publish.prefix(35_000)))
        let disconnect = nextPacket(d)
        #expect(disconnect?.type == 0xE0 && disconnect?.body.first == 0x89, "\(String(describing: disconnect))")
        #expect(d.isClosed())
        // The two held complete their CONNECTs and are answered.
        a.send(aRest)
        b.send(bRest)
        #expect(a.readBytes(4, timeout: 3) == [0x20, 2, 0, 0])
        #expect(b.readBytes(4, timeout: 3) == [0x20, 2, 0, 0])
    }

    /// A WebSocket connection must finish its upgrade within connect_timeout (1 s here), and frames are
    /// bounded by max_packet_size (4 KiB here): before, a connection that never upgraded stayed open, and
    /// a frame of up to 16 MiB was held whole.
    @Test func boundsTheWebSocketUpgradeAndItsFrames() throws {
        let server = try Server()
        let silent = try #require(RawSocket(port: server.ws))
        let trickling = try #require(RawSocket(port: server.ws))
        let began = Date()
        for byte in "GET /mqtt HTTP/1.1\r\nHost: x\r\n".utf8.prefix(20) {
            trickling.send([byte])
            usleep(100_000)
        }
        #expect(silent.isClosed(timeout: 3) && trickling.isClosed(timeout: 3), "not upgraded within connect_timeout")
        #expect(Date().timeIntervalSince(began) < 4)
        // Upgraded: a binary frame announcing 64 KiB is refused (close 1009, Message Too Big) at once.
        let ws = try #require(RawSocket(port: server.ws))
        ws.send("GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                + "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")
        #expect(ws.readResponses(1).first?.hasPrefix("HTTP/1.1 101") == true)
        ws.send([0x82, 0xFF] + [0, 0, 0, 0, 0, 1, 0, 0] + [1, 2, 3, 4])  // masked, 65,536 bytes to come
        #expect(ws.readBytes(4, timeout: 3).prefix(2) == [0x88, 0x02], "a close frame")
        #expect(ws.isClosed(timeout: 3))
    }

    /// Frames that break RFC 6455 fail the connection with a close frame (1002; 1003 for text), and a
    /// client that pings without reading gets the answer to its latest ping, not one per ping: before,
    /// unmasked frames and frames with reserved bits or opcodes were taken, and the hub held every pong
    /// it could not send (400,000 pings of 125 bytes in a run without the change: all 400,000 answers came
    /// once the client read; with it, of the 200,000 here about 62,000 come, what the kernel buffers held).
    @Test func webSocketFramesFollowRFC6455() throws {
        let server = try Server()
        func frame(_ opcode: UInt8, _ payload: [UInt8], fin: Bool = true, masked: Bool = true, rsv: UInt8 = 0) -> [UInt8] {
            precondition(payload.count < 126)
            let key: [UInt8] = [0x11, 0x22, 0x33, 0x44]
            return [(fin ? 0x80 : 0) | rsv | opcode, (masked ? 0x80 : 0) | UInt8(payload.count)]
                + (masked ? key + payload.enumerated().map { $0.element ^ key[$0.offset % 4] } : payload)
        }
        func upgraded() throws -> RawSocket {
            let ws = try #require(RawSocket(port: server.ws))
            ws.send("GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    + "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")
            #expect(ws.readResponses(1).first?.hasPrefix("HTTP/1.1 101") == true)
            return ws
        }
        let connect: [UInt8] = [0x10, 0x0E, 0x00, 0x04] + Array("MQTT".utf8) + [0x04, 0x02, 0x00, 0x3C, 0x00, 0x02] + Array("ws".utf8)
        // A CONNECT in two frames (a binary frame without FIN, then its continuation) is answered.
        let good = try upgraded()
        good.send(frame(0x2, Array(connect[..<5]), fin: false) + frame(0x0, Array(connect[5...])))
        #expect(good.readBytes(6) == [0x82, 0x04, 0x20, 0x02, 0x00, 0x00], "CONNACK in a binary frame")
        let bad: [(String, [UInt8], [UInt8])] = [
            ("unmasked", frame(0x2, connect, masked: false), [0x03, 0xEA]),
            ("reserved bit", frame(0x2, connect, rsv: 0x40), [0x03, 0xEA]),
            ("continuation first", frame(0x0, connect), [0x03, 0xEA]),
            ("new message inside a fragmented one", frame(0x2, Array(connect[..<5]), fin: false) + frame(0x2, Array(connect[5...])), [0x03, 0xEA]),
            ("reserved opcode", frame(0x3, connect), [0x03, 0xEA]),
            ("text", frame(0x1, connect), [0x03, 0xEB]),
        ]
        for (what, bytes, code) in bad {
            let ws = try upgraded()
            ws.send(bytes)
            #expect(ws.readBytes(4) == [0x88, 0x02] + code, "\(what): a close frame with \(code)")
            #expect(ws.isClosed(), "\(what)")
        }
        // Pings from a client that does not read.
        let pinger = try upgraded()
        pinger.send(frame(0x2, connect))
        #expect(pinger.readBytes(6) == [0x82, 0x04, 0x20, 0x02, 0x00, 0x00])
        let ping = frame(0x9, [UInt8](repeating: 0x70, count: 125)), count = 200_000
        let pings = Array([[UInt8]](repeating: ping, count: 1000).joined())
        for _ in 0..<(count / 1000) { pinger.send(pings) }
        // Then it reads: what reaches it is what the kernel's buffers held, and the latest answer.
        var pongs = 0, tail: [UInt8] = []
        while true {
            let got = pinger.readBytes(1 << 20, timeout: 1)
            if got.isEmpty { break }
            tail = Array((tail + got).suffix(127))
            pongs += got.count
        }
        pongs /= 127
        #expect(pongs > 0 && pongs < count / 2, "\(pongs) answers to \(count) pings")
        #expect(tail.prefix(2) == [0x8A, 125], "the last frame is a pong")
    }

    @Test func publishesEnterPipelinesWithTheirProperties() throws {
        let server = try Server()
        let (code, out) = try run("/usr/bin/env", ["mosquitto_pub", "-h", "127.0.0.1", "-p", "\(server.tcp)", "-V", "mqttv5", "-i", "press-7",
                                                   "-t", "plant/press-7/telemetry", "-q", "1", "-m", #"{"pressure":4.2}"#,
                                                   "-D", "publish", "user-property", "line", "3",
                                                   "-D", "publish", "content-type", "application/json",
                                                   "-D", "publish", "response-topic", "plant/press-7/ack",
                                                   "-D", "publish", "correlation-data", "c-1"])
        #expect(code == 0, "\(out)")
        #expect(eventually { server.output.count == 1 })
        let m = try #require(server.output.first)
        #expect(m["topic"] == "plant/press-7/telemetry")
        #expect(m["device"] == "press-7")
        #expect(m["payload"] == ["pressure": 4.2])
        #expect(m["content_type"] == "application/json")
        #expect(m["properties"]?["mqtt.user.line"] == "3")
        #expect(m["properties"]?["mqtt.response_topic"] == "plant/press-7/ack")
        #expect(m["properties"]?["mqtt.correlation_data"] == .string(Base64.encode(Array("c-1".utf8))))
        #expect(m["properties"]?["mqtt.client_id"] == "press-7")
        // A topic no pipeline reads is still routed between clients, and not written.
        #expect(try run("/usr/bin/env", ["mosquitto_pub", "-h", "127.0.0.1", "-p", "\(server.tcp)", "-t", "elsewhere/x", "-q", "1", "-m", "{}"]).0 == 0)
        usleep(200_000)
        #expect(server.output.count == 1)
    }

    @Test func mosquittoClientsInterwork() throws {
        let server = try Server()
        for version in ["mqttv311", "mqttv5"] {
            let sub = try server.subscriber(["lab/+/temp"], version: version, qos: 2)
            for (i, q) in ["0", "1", "2"].enumerated() {
                let r = try run("/usr/bin/env", ["mosquitto_pub", "-h", "127.0.0.1", "-p", "\(server.tcp)", "-V", version, "-t", "lab/\(i)/temp", "-q", q, "-m", "v\(i)"])
                #expect(r.0 == 0, "\(r.1)")
            }
            #expect(eventually { server.lines(sub).count == 3 }, "mosquitto_sub \(version) got: \(sub.log)")
            #expect(server.lines(sub) == ["lab/0/temp v0", "lab/1/temp v1", "lab/2/temp v2"])
            sub.stop()
        }
    }

    @Test func downlinkReachesASubscribedDevice() async throws {
        let server = try Server()
        let sub = try server.subscriber(["devices/valve-2/commands"], format: ["-F", "%t %p %P"])
        let (code, reason) = await server.hub.sendDownlink(
            Message(device: "valve-2", contentType: "application/json", payload: Array(#"{"open":true}"#.utf8), qos: 1,
                    properties: [KeyValue("mqtt.user.origin", "api")]), source: "devices")
        #expect(code == 0, "\(reason ?? "")")
        #expect(eventually { sub.log.contains("devices/valve-2/commands") }, "mosquitto_sub got: \(sub.log)")
        #expect(sub.log.contains(#"{"open":true}"#))
        #expect(sub.log.contains("origin:api"))
        // Nobody subscribed: the downlink is refused, not lost silently.
        let (missing, why) = await server.hub.sendDownlink(Message(device: "nobody", payload: [1]), source: "devices")
        #expect(missing != 0)
        #expect(why?.contains("no MQTT client is subscribed") == true)
        sub.stop()
    }

    @Test func pipelinesSendDownlinkToSubscribedDevices() throws {
        // An alarm from one device becomes a command to another, through the built-in downlink sink.
        let server = try Server(pipelines: """
              alarms:
                from: [ "devices:plant/+/alarm" ]
                steps:
                  - decode: json
                  - set: { msg.topic: "'plant/valve-1/commands/close'", msg.kind: "'command'", reason: "msg.device" }
                to: [ to-devices ]
            """, sinks: "  to-devices: { plugin: downlink, source: devices }")
        let sub = try server.subscriber(["plant/valve-1/commands/#"])
        let r = try run("/usr/bin/env", ["mosquitto_pub", "-h", "127.0.0.1", "-p", "\(server.tcp)", "-i", "press-7", "-t", "plant/press-7/alarm", "-q", "1", "-m", #"{"bar":9.5}"#])
        #expect(r.0 == 0, "\(r.1)")
        #expect(eventually { sub.log.contains("plant/valve-1/commands/close") }, "mosquitto_sub got: \(sub.log)")
        #expect(sub.log.contains(#""reason":"press-7""#))
        sub.stop()
    }

    @Test func aDownlinkSinkMustNameADefinedSource() {
        #expect(throws: ConfigurationError.self) {
            try loadConfig("""
                sources: { devices: { plugin: mqtt, listen: "127.0.0.1:0" } }
                sinks: { down: { plugin: downlink, source: devicez } }
                pipelines: { p: { from: [ devices ], to: [ down ] } }
                """)
        }
        do {
            _ = try loadConfig("""
                sources: { devices: { plugin: mqtt, listen: "127.0.0.1:0" } }
                sinks: { down: { plugin: downlink, source: devicez } }
                pipelines: { p: { from: [ devices ], to: [ down ] } }
                """)
        } catch {
            #expect("\(error)".contains("sink 'down' sends downlink through undefined source 'devicez' (did you mean 'devices'?)"), "\(error)")
        }
    }

    @Test func sessionsAndRetainedMessagesSurviveARestart() throws {
        let dir = TempDir()
        let port = freePort()
        let yaml = """
            sources:
              devices: { plugin: mqtt, listen: "127.0.0.1:\(port)", authentication: static, anonymous: { publish: [ "#" ], subscribe: [ "#" ] },
                         state_file: "\(dir.path)/mqtt-state.bin" }
            sinks: { out: { plugin: log } }
            pipelines: { p: { from: [ "devices:none/#" ], to: [ out ] } }
            """
        func mosquitto(_ tool: String, _ args: [String]) throws -> (Int32, String) {
            try run("/usr/bin/env", [tool, "-h", "127.0.0.1", "-p", "\(port)"] + args)
        }
        var hub = try makeHub(dir)
        try hub.start(try loadConfig(yaml))
        #expect(waitForPort(port))
        // A persistent session (clean session off) subscribes and goes away; messages wait for it.
        _ = try mosquitto("mosquitto_sub", ["-c", "-i", "keeper", "-q", "1", "-t", "keep/#", "-W", "1"])
        for i in 0..<3 { #expect(try mosquitto("mosquitto_pub", ["-q", "1", "-t", "keep/\(i)", "-m", "m\(i)"]).0 == 0) }
        #expect(try mosquitto("mosquitto_pub", ["-q", "1", "-r", "-t", "status/hub", "-m", "up"]).0 == 0)
        hub.stop()
        #expect(FileManager.default.fileExists(atPath: dir.path + "/mqtt-state.bin"))

        hub = try makeHub(dir)
        try hub.start(try loadConfig(yaml))
        defer { hub.stop() }
        #expect(waitForPort(port))
        let (_, queued) = try mosquitto("mosquitto_sub", ["-c", "-i", "keeper", "-q", "1", "-t", "keep/#", "-C", "3", "-W", "5", "-v"])
        #expect(queued.split(separator: "\n").map(String.init) == ["keep/0 m0", "keep/1 m1", "keep/2 m2"])
        let (_, retained) = try mosquitto("mosquitto_sub", ["-t", "status/#", "-C", "1", "-W", "5", "-v"])
        #expect(retained.contains("status/hub up"))
        hub.stop()

        // A damaged state file (a power loss, say) does not keep devices out: the server starts
        // without it and keeps the file aside.
        let damaged = Array((try Data(contentsOf: URL(fileURLWithPath: dir.path + "/mqtt-state.bin"))).prefix(40)) + [0xFF, 0xFF, 0xFF]
        try Data(damaged).write(to: URL(fileURLWithPath: dir.path + "/mqtt-state.bin"))
        hub = try makeHub(dir)
        try hub.start(try loadConfig(yaml))
        #expect(waitForPort(port))
        #expect(try mosquitto("mosquitto_pub", ["-q", "1", "-t", "after/damage", "-m", "x"]).0 == 0)
        #expect(FileManager.default.contents(atPath: dir.path + "/mqtt-state.bin.unreadable").map(Array.init) == damaged)
        let (_, none) = try mosquitto("mosquitto_sub", ["-t", "status/#", "-C", "1", "-W", "2", "-v"])
        #expect(!none.contains("status/hub up"), "\(none)")
    }

}
