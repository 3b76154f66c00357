import Foundation
import Testing
@testable import IoTCKernel
import IoTCPluginKit

/// The bridge to an external broker (mosquitto): `mqtt_subscribe` as a source beside `mqtt_publish`.
@Suite struct MQTTBridgeTests {
    func hub(_ dir: TempDir, broker: Int, extra: String = "") throws -> Hub {
        let hub = try makeHub(dir)
        try hub.start(try loadConfig("""
            sources:
              upstream:
                plugin: mqtt_subscribe
                server: "127.0.0.1:\(broker)"
                client_id: hub-bridge
                topics: [ "site/+/telemetry" ]
                qos: 1
                reconnect_initial: 1s
                reconnect_max: 1s
                \(extra)
            sinks:
              out: { plugin: file, path: "\(dir.path)/out.jsonl" }
            pipelines:
              bridged: { from: [ upstream ], durable: true, steps: [ { decode: json } ], to: [ out ] }
            """))
        return hub
    }

    func publish(_ port: Int, _ topic: String, _ body: String, version: String = "mqttv5", extra: [String] = []) throws {
        let (code, out) = try run(which("mosquitto_pub")!, ["-h", "127.0.0.1", "-p", "\(port)", "-V", version, "-q", "1", "-t", topic, "-m", body] + extra)
        #expect(code == 0, "\(out)")
    }

    /// Whether the bridge's subscription is in place: publishes a probe until one reaches the file sink.
    func subscribed(_ broker: Mosquitto, _ dir: TempDir) -> Bool {
        eventually(timeout: 10) {
            try? publish(broker.port, "site/probe/telemetry", #"{"probe":true}"#)
            return !jsonLines(dir.path + "/out.jsonl").isEmpty
        }
    }

    /// A mosquitto, and a hub whose bridge has subscribed to it.
    func bridged(extra: String = "") throws -> (Mosquitto, TempDir, Hub) {
        try requirePeer(Mosquitto.installed, "mosquitto")
        let broker = Mosquitto()
        try broker.start()
        let dir = TempDir()
        let hub = try hub(dir, broker: broker.port, extra: extra)
        #expect(subscribed(broker, dir))
        return (broker, dir, hub)
    }

    /// Reconnect delays that would dial a down broker in a tight loop are refused by `iotc check`, at
    /// their fields, for both components that own a connection.
    @Test func checkRefusesReconnectDelaysWithoutAPause() throws {
        let dir = TempDir()
        let file = dir.write("bridge.yaml", """
            sources:
              up: { plugin: mqtt_subscribe, server: "127.0.0.1:1883", topics: [ "a/#" ], reconnect_initial: 0s }
            sinks:
              down: { plugin: mqtt_publish, server: "127.0.0.1:1883", reconnect_initial: 1s, reconnect_max: 500ms }
            pipelines: { p: { from: [ up ], to: [ down ] } }
            """)
        let (code, out) = try run(Build.iotc, ["check", file, "--plugins", Build.directory])
        #expect(code == 1)
        #expect(out.contains("bridge.yaml:2:97: error: source 'up': reconnect_initial must be at least 10ms"), "\(out)")
        #expect(out.contains("bridge.yaml:4:97: error: sink 'down': reconnect_max must not be shorter than reconnect_initial"), "\(out)")
    }

    @Test func bringsSubscribedMessagesIntoPipelines() throws {
        let (broker, dir, hub) = try bridged()
        defer { hub.stop() }
        try publish(broker.port, "site/press-7/telemetry", #"{"bar":4.2}"#, extra: ["-D", "publish", "user-property", "line", "3"])
        try publish(broker.port, "site/press-7/other", #"{"ignored":true}"#)
        #expect(eventually { jsonLines(dir.path + "/out.jsonl").contains { $0["payload"] == ["bar": 4.2] } })
        let m = try #require(jsonLines(dir.path + "/out.jsonl").first { $0["payload"] == ["bar": 4.2] })
        #expect(m["device"] == "press-7")
        #expect(m["topic"] == "site/press-7/telemetry")
        #expect(m["properties"]?["mqtt.user.line"] == "3")
        #expect(!jsonLines(dir.path + "/out.jsonl").contains { $0["payload"] == ["ignored": true] })
    }

    /// The bridge announces its max_packet_size to an MQTT 5 broker, which then does not send it a
    /// larger packet (MQTT 5 §3.1.2.11.4): the large message is not delivered, and the connection and
    /// the messages after it are not disturbed.
    @Test func announcesItsMaximumPacketSize() throws {
        let (broker, dir, hub) = try bridged(extra: "max_packet_size: 1KiB")
        defer { hub.stop() }
        try publish(broker.port, "site/big/telemetry", #"{"pad":"\#(String(repeating: "x", count: 2000))"}"#)
        try publish(broker.port, "site/small/telemetry", #"{"after":1}"#)
        #expect(eventually { jsonLines(dir.path + "/out.jsonl").contains { $0["payload"] == ["after": 1] } })
        #expect(!jsonLines(dir.path + "/out.jsonl").contains { $0["device"] == "big" })
        usleep(1_500_000)  // the bridge's reconnect delay, had the connection closed
        #expect(broker.log.components(separatedBy: "as hub-bridge").count - 1 == 1, "one connection: \(broker.log)")
    }

    @Test(arguments: ["5", "3.1.1"])
    func losesNothingAcrossABrokerRestart(version: String) throws {
        try requirePeer(Mosquitto.installed, "mosquitto")
        let broker = Mosquitto()
        broker.persistent = true
        try broker.start()
        let dir = TempDir()
        let hub = try hub(dir, broker: broker.port, extra: "protocol_version: \"\(version)\"")
        defer { hub.stop() }
        #expect(subscribed(broker, dir))
        // Restart the broker; it keeps the hub's session. Publish before the hub is back (its reconnect
        // waits a second): the broker queues the messages for the hub's session.
        broker.stop()
        try broker.start()
        for i in 0..<50 { try publish(broker.port, "site/d\(i)/telemetry", #"{"n":\#(i)}"#) }
        #expect(eventually(timeout: 20) { Set(jsonLines(dir.path + "/out.jsonl").compactMap { $0["payload"]?["n"] }.map { "\($0)" }).count == 50 },
                "got \(jsonLines(dir.path + "/out.jsonl").count) lines")
    }

    /// The hub cannot take a bridged QoS 1 message (its pipeline's log fails a write: the segment's
    /// descriptor, found in /proc/self/fd, is made /dev/full). The bridge does not acknowledge it,
    /// which would hold a place in the broker's window for good, but reconnects, and the broker
    /// sends it again on the new connection.
    @Test func reconnectsSoThatTheBrokerSendsAgainWhatTheHubCouldNotTake() throws {
        let (broker, dir, hub) = try bridged()
        defer { hub.stop() }
        let fds = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").compactMap(Int32.init)
        let segment = try #require(fds.first { fd in
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)"))?.hasPrefix(dir.path + "/data/wal/bridged/wal-") == true
        }, "the log's segment is not open")
        let full = open("/dev/full", O_WRONLY | O_CLOEXEC)
        try #require(full >= 0, "no /dev/full")
        #expect(dup2(full, segment) == segment)
        close(full)
        try publish(broker.port, "site/once/telemetry", #"{"n":1}"#)
        // The first copy reached the sink while the log failed; the broker's second comes after the reconnect.
        #expect(eventually(timeout: 15) { jsonLines(dir.path + "/out.jsonl").filter { $0["device"] == "once" }.count == 2 },
                "\(jsonLines(dir.path + "/out.jsonl").filter { $0["device"] == "once" }.count) copies; broker: \(broker.log.suffix(800))")
        #expect(broker.log.components(separatedBy: "as hub-bridge").count - 1 == 2, "one reconnect: \(broker.log.suffix(800))")
    }

    @Test func bridgesBothWaysOverTLSWithAClientCertificate() throws {
        try requirePeer(Mosquitto.installed, "mosquitto")
        let certs = TempDir()
        try makeTestCertificates(in: certs)
        let broker = Mosquitto()
        broker.tls = (freePort(), certs.path + "/ca.pem", certs.path + "/cert.pem", certs.path + "/key.pem")
        try broker.start()
        let tlsPort = broker.tls!.port
        let dir = TempDir()
        let tls = "{ ca_file: \"\(certs.path)/cert.pem\", certificate_file: \"\(certs.path)/dev.pem\", key_file: \"\(certs.path)/dev.key\" }"
        let hub = try makeHub(dir)
        try hub.start(try loadConfig("""
            sources:
              upstream: { plugin: mqtt_subscribe, server: "127.0.0.1:\(tlsPort)", topics: [ "in/#" ], tls: \(tls), reconnect_initial: 200ms }
              untrusting: { plugin: mqtt_subscribe, server: "127.0.0.1:\(tlsPort)", topics: [ "in/#" ], reconnect_initial: 200ms,
                            tls: { certificate_file: "\(certs.path)/dev.pem", key_file: "\(certs.path)/dev.key" } }
            sinks:
              out: { plugin: file, path: "\(dir.path)/out.jsonl" }
              unverified: { plugin: file, path: "\(dir.path)/unverified.jsonl" }
              broker: { plugin: mqtt_publish, server: "127.0.0.1:\(tlsPort)", topic: "out/{device}", tls: \(tls), reconnect_initial: 200ms }
            pipelines:
              inbound: { from: [ "upstream:in/#" ], steps: [ { decode: json } ], to: [ out, broker ] }
              unverified: { from: [ "untrusting:in/#" ], to: [ unverified ] }
            """))
        defer { hub.stop() }
        let sub = try broker.subscribe("out/#")
        // In over TLS, out again over TLS (to the plain listener's subscriber on the same broker).
        #expect(eventually(timeout: 15) {
            try? publish(broker.port, "in/x/telemetry", #"{"tls":true}"#)
            return sub.log.contains("out/x")
        }, "subscriber got: \(sub.log)")
        #expect(jsonLines(dir.path + "/out.jsonl").contains { $0["payload"] == ["tls": true] })
        // A bridge without the broker's CA (the system's roots, which do not know this self-signed
        // certificate) never gets in, however often it tries.
        Thread.sleep(forTimeInterval: 1)
        try publish(broker.port, "in/z/telemetry", #"{"tls":true}"#)
        #expect(eventually(timeout: 5) { jsonLines(dir.path + "/out.jsonl").count >= 2 })
        #expect(jsonLines(dir.path + "/unverified.jsonl").isEmpty, "a bridge that could not verify the broker got its messages")
        // Without a client certificate the broker refuses the bridge.
        let (code, out) = try run(which("mosquitto_pub")!, ["-h", "127.0.0.1", "-p", "\(tlsPort)", "--cafile", certs.path + "/cert.pem",
                                                            "-t", "in/y", "-m", "x"])
        #expect(code != 0, "a client without a certificate got in: \(out)")
    }
}
