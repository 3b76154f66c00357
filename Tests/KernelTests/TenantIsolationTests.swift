import Foundation
import Testing
import IoTCPluginKit

/// Tenant isolation from outside: devices and keys of one tenant try every topic and every endpoint
/// on another tenant's devices, which use the same ids, and learn nothing.
@Suite(.serialized) struct TenantIsolationTests {
    /// Calls the hub's API on `port` with an API key.
    struct Caller {
        var port: Int
        func callAsFunction(_ method: String, _ path: String, key: String, _ body: String? = nil) -> HTTPResult {
            http(method, "http://127.0.0.1:\(port)" + path, body: body.map { Array($0.utf8) },
                 headers: ["Authorization": "Bearer \(key)", "Content-Type": "application/json"]) ?? HTTPResult(status: 0, headers: [:], body: "")
        }
    }

    @Test func aTenantCanNeitherReachNorLearnAboutAnothersDevices() throws {
        try requirePeer(Mosquitto.installed, "mosquitto")
        let python = Build.packageRoot + "/.venv/bin/python"
        try #require(FileManager.default.isExecutableFile(atPath: python), "no .venv: run scripts/install-deps.sh test")
        let dir = TempDir()
        let apiPort = freePort(), httpPort = freePort(), mqttPort = freePort()
        let out = dir.path + "/out.jsonl"
        let file = dir.write("hub.yaml", """
            sources:
              web: { plugin: http, listen: "127.0.0.1:\(httpPort)" }
              broker: { plugin: mqtt, listen: "127.0.0.1:\(mqttPort)", authentication: hub }
            sinks:
              out: { plugin: file, path: "\(out)" }
              series: { plugin: store }
            pipelines:
              t: { from: [ "web:devices/+/telemetry", "broker:devices/+/telemetry" ], steps: [ { decode: json } ], to: [ out, series ] }
            access:
              profiles:
                gateway: { publish: [ "devices/#" ], subscribe: [ "devices/#" ] }
            """)
        let hub = try ProcessTests().serve(file, data: dir.path + "/data", api: apiPort)
        defer { hub.stop() }
        #expect(waitForPort(mqttPort) && eventually { http("GET", "http://127.0.0.1:\(apiPort)/health")?.status == 200 }, "hub did not start: \(hub.log)")
        let call = Caller(port: apiPort)
        func field(_ r: HTTPResult, _ path: String...) -> String? {
            var v = try? JSON.decode(r.body)
            for p in path { v = v?[p] }
            return v?.string
        }
        let system = ProcessTests.ownerKey
        // Two tenants, each with a device called pump-1; acme also has a gateway that may use every
        // topic of its tenant.
        var keys: [String: String] = [:], tokens: [String: String] = [:], credentials: [String: String] = [:]
        for tenant in ["acme", "globex"] {
            keys[tenant] = try #require(field(call("POST", "/v1/tenants", key: system, #"{"id": "\#(tenant)"}"#), "owner_key", "secret"))
            for (device, profile) in [("pump-1", "default")] + (tenant == "acme" ? [("gw-1", "gateway")] : []) {
                #expect(call("POST", "/v1/devices", key: keys[tenant]!, #"{"id": "\#(device)", "profile": "\#(profile)", "labels": {"site": "\#(tenant)-north"}}"#).status == 201)
                let issued = call("POST", "/v1/devices/\(device)/credentials", key: keys[tenant]!, #"{"kind": "token"}"#)
                tokens["\(tenant)/\(device)"] = try #require(field(issued, "token"))
                credentials["\(tenant)/\(device)"] = try #require(field(issued, "id"))
            }
        }
        let acme = keys["acme"]!, globex = keys["globex"]!

        // MQTT: the two pump-1s connect with the same client id and both stay connected; each sees its
        // own tenant's messages only, and so does acme's gateway, which subscribes to every device topic.
        let clients = try ChildProcess(python, ["-u", Build.packageRoot + "/Tests/Support/tenant_clients.py", "\(mqttPort)",
                                                "acme=pump-1:\(tokens["acme/pump-1"]!):devices/pump-1/#",
                                                "globex=pump-1:\(tokens["globex/pump-1"]!):devices/pump-1/#",
                                                "gateway=gw-1:\(tokens["acme/gw-1"]!):devices/#"], interactive: true)
        defer { clients.stop() }
        #expect(eventually { ["acme", "globex", "gateway"].allSatisfy { clients.log.contains("\($0) suback 1") } }, "\(clients.log)")
        clients.send(#"globex publish devices/pump-1/telemetry {"from":"globex"} retain"#)
        clients.send(#"acme publish devices/pump-1/telemetry {"from":"acme"}"#)
        #expect(eventually { clients.log.contains(#"acme got devices/pump-1/telemetry {"from":"acme"}"#) }, "\(clients.log)")
        #expect(eventually { clients.log.contains(#"globex got devices/pump-1/telemetry {"from":"globex"}"#) }, "\(clients.log)")
        #expect(eventually { clients.log.contains(#"gateway got devices/pump-1/telemetry {"from":"acme"}"#) }, "\(clients.log)\n\(hub.log.suffix(4000))")
        // Neither the gateway nor the other tenant's pump can reach beyond the tenant, by any name.
        clients.send("globex subscribe $tenant/acme/#")
        clients.send("gateway subscribe $tenant/globex/#")
        clients.send("globex subscribe devices/gw-1/#")
        clients.send(#"globex publish $tenant/acme/devices/pump-1/telemetry {"from":"intruder"}"#)
        clients.send(#"globex publish devices/gw-1/telemetry {"from":"intruder"}"#)
        #expect(eventually { clients.log.components(separatedBy: "suback 135").count - 1 == 3 }, "\(clients.log)")
        #expect(eventually { clients.log.components(separatedBy: "globex published").count - 1 == 3 }, "\(clients.log)")
        usleep(300_000)
        #expect(!clients.log.contains("acme got devices/pump-1/telemetry {\"from\":\"globex\"}") && !clients.log.contains("intruder\"}\nacme")
                && !clients.log.contains("gateway got devices/pump-1/telemetry {\"from\":\"globex\"}"), "\(clients.log)")
        #expect(!clients.log.split(separator: "\n").contains { ($0.hasPrefix("acme got") || $0.hasPrefix("gateway got")) && $0.contains("intruder") }, "\(clients.log)")
        #expect(!clients.log.contains("disconnected"), "\(clients.log)")
        // The pipelines got each tenant's message as that tenant's.
        #expect(eventually { jsonLines(out).count >= 2 })
        let tenantsSeen = jsonLines(out).map { "\($0["tenant"]?.string ?? "")/\($0["payload"]?["from"]?.string ?? "")" }
        #expect(tenantsSeen.contains("acme/acme") && tenantsSeen.contains("globex/globex") && !tenantsSeen.contains { $0.hasSuffix("intruder") }, "\(tenantsSeen)")

        // A command to acme's pump-1 reaches acme's pump-1 (and acme's gateway), never globex's, and
        // acme's answer settles it.
        let sent = call("POST", "/v1/devices/pump-1/commands", key: acme, #"{"name": "reboot", "payload": {"delay": 1}, "timeout": 10}"#)
        #expect(sent.status == 200 && field(sent, "status") == "succeeded", "\(sent.body)\n\(clients.log)")
        let commandID = field(sent, "id") ?? ""
        #expect(eventually { clients.log.contains("acme got devices/pump-1/commands/reboot/\(commandID)") }, "\(clients.log)")
        #expect(eventually { clients.log.contains("gateway got devices/pump-1/commands/reboot/\(commandID)") }, "\(clients.log)\n\(hub.log.suffix(4000))")
        #expect(!clients.log.contains("globex got devices/pump-1/commands"), "\(clients.log)")

        // The API: every endpoint that names a tenant's resource answers another tenant exactly as it
        // answers for a resource that does not exist.
        // Each pump-1 sends a number over HTTP: the store keeps it under its own tenant.
        for (tenant, rpm) in [("acme", 1111), ("globex", 2222)] {
            #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/pump-1/telemetry", #"{"rpm": \#(rpm)}"#, token: tokens["\(tenant)/pump-1"]!)?.status == 202)
        }
        #expect(eventually { call("GET", "/v1/devices/pump-1/telemetry/latest", key: acme).body.contains("1111") })
        let resources: [(String, String, String?)] = [
            ("GET", "/v1/devices/{device}", nil), ("PATCH", "/v1/devices/{device}", #"{"name": "mine now"}"#), ("DELETE", "/v1/devices/{device}", nil),
            ("GET", "/v1/devices/{device}/credentials", nil), ("POST", "/v1/devices/{device}/credentials", #"{"kind": "token"}"#),
            ("DELETE", "/v1/devices/{device}/credentials/{credential}", nil),
            ("GET", "/v1/devices/{device}/telemetry?key=x&from=0&to=1", nil), ("GET", "/v1/devices/{device}/telemetry/latest", nil),
            ("GET", "/v1/devices/{device}/commands", nil), ("POST", "/v1/devices/{device}/commands", #"{"name": "open", "timeout": 0}"#),
            ("GET", "/v1/devices/{device}/commands/{command}", nil),
            ("GET", "/v1/devices?tenant={tenant}", nil), ("POST", "/v1/devices?tenant={tenant}", #"{"id": "planted"}"#),
            ("POST", "/v1/devices/bulk?tenant={tenant}", #"[{"id": "planted"}]"#),
            ("GET", "/v1/tenants/{tenant}", nil), ("PATCH", "/v1/tenants/{tenant}", #"{"retention_days": 1}"#), ("DELETE", "/v1/tenants/{tenant}", nil),
            ("GET", "/v1/api-keys?tenant={tenant}", nil), ("POST", "/v1/api-keys?tenant={tenant}", #"{"name": "planted"}"#),
            ("GET", "/v1/users?tenant={tenant}", nil), ("POST", "/v1/users?tenant={tenant}", #"{"email": "x@example.com", "password": "long enough secret"}"#),
            ("GET", "/v1/audit?tenant={tenant}", nil),
            ("GET", "/v1/provisioning-keys?tenant={tenant}", nil), ("POST", "/v1/provisioning-keys?tenant={tenant}", #"{"name": "planted"}"#),
            ("DELETE", "/v1/provisioning-keys/{fleet}", nil),
        ]
        let fleet = try #require(field(call("POST", "/v1/provisioning-keys", key: acme, #"{"name": "line 1"}"#), "id"))
        let real = ["{device}": "gw-1", "{credential}": credentials["acme/gw-1"]!, "{command}": commandID, "{tenant}": "acme", "{fleet}": fleet]
        let missing = ["{device}": "gw-404", "{credential}": "nocredential0000", "{command}": "cmd-00000000000000000000", "{tenant}": "nosuchtenant",
                       "{fleet}": "nofleetkey00"]
        for (method, template, body) in resources {
            func fill(_ values: [String: String]) -> String { values.reduce(template) { $0.replacingOccurrences(of: $1.key, with: $1.value) } }
            let probe = call(method, fill(real), key: globex, body)
            let control = call(method, fill(missing), key: globex, body)
            // The same answer, once the ids it echoes are swapped back.
            let echoed = real.reduce(probe.body) { text, pair in text.replacingOccurrences(of: pair.value, with: missing[pair.key]!) }
            #expect(probe.status == control.status && echoed == control.body, "\(method) \(fill(real)): \(probe.status) \(probe.body) vs \(control.status) \(control.body)")
            #expect(!(200..<300).contains(probe.status) || method == "GET", "\(method) \(fill(real)) succeeded: \(probe.body)")
        }
        // Listings show nothing of acme: no device, no label, no key, no user.
        for path in ["/v1/devices", "/v1/devices?label=site:acme-north", "/v1/api-keys", "/v1/users", "/v1/tenants"] {
            let body = call("GET", path, key: globex).body
            #expect(!body.contains("acme") && !body.contains("gw-1"), "\(path): \(body)")
        }
        // Globex's audit log records globex's own attempts (what it asked for), nothing of acme's doings.
        let audit = call("GET", "/v1/audit?limit=1000", key: globex).body
        #expect(!audit.contains(#""tenant":"acme""#) && !audit.contains(commandID) && !audit.contains(credentials["acme/gw-1"]!), "\(audit)")
        #expect(call("GET", "/v1/audit?limit=1000", key: acme).body.contains(#""action":"command.send""#))
        // Globex's own pump-1 has its own telemetry and commands; acme's are not among them.
        #expect(eventually { call("GET", "/v1/devices/pump-1/telemetry/latest", key: globex).body.contains("2222") })
        #expect(!call("GET", "/v1/devices/pump-1/telemetry/latest", key: globex).body.contains("1111"))
        #expect(!call("GET", "/v1/devices/pump-1/telemetry/latest", key: acme).body.contains("2222"))
        #expect(!call("GET", "/v1/devices/pump-1/commands", key: globex).body.contains(commandID))
        #expect(call("GET", "/v1/devices/pump-1/commands/\(commandID)", key: globex).status == 404)
        // And nothing was changed: acme's gateway still works and its device record is intact.
        let gw = call("GET", "/v1/devices/gw-1", key: acme)
        #expect(gw.status == 200 && !gw.body.contains("mine now"), "\(gw.body)")
        #expect(!call("GET", "/v1/devices", key: acme).body.contains("planted"))
        #expect(!hub.log.contains(tokens["acme/pump-1"]!) && !hub.log.contains(acme))
    }

    /// A device that subscribes to its configuration topic gets the attributes the operator set for it
    /// as a retained message, and each change; another tenant's device of the same id gets its own; no
    /// device can publish there.
    @Test func devicesFindTheirConfigurationOnTheirConfigTopic() throws {
        let python = Build.packageRoot + "/.venv/bin/python"
        try #require(FileManager.default.isExecutableFile(atPath: python), "no .venv: run scripts/install-deps.sh test")
        let dir = TempDir()
        let apiPort = freePort(), mqttPort = freePort()
        let file = dir.write("hub.yaml", """
            sources:
              broker: { plugin: mqtt, listen: "127.0.0.1:\(mqttPort)", authentication: hub }
            sinks:
              out: { plugin: file, path: "\(dir.path)/out.jsonl" }
            pipelines:
              t: { from: [ "broker:devices/+/telemetry" ], to: [ out ] }
            """)
        let hub = try ProcessTests().serve(file, data: dir.path + "/data", api: apiPort)
        defer { hub.stop() }
        #expect(waitForPort(mqttPort) && eventually { http("GET", "http://127.0.0.1:\(apiPort)/health")?.status == 200 }, "hub did not start: \(hub.log)")
        let call = Caller(port: apiPort)
        var keys: [String: String] = [:], tokens: [String: String] = [:]
        for (tenant, interval) in [("acme", 30), ("globex", 99)] {
            let created = call("POST", "/v1/tenants", key: ProcessTests.ownerKey, #"{"id": "\#(tenant)"}"#)
            keys[tenant] = try #require((try? JSON.decode(created.body))?["owner_key"]?["secret"]?.string)
            #expect(call("POST", "/v1/devices", key: keys[tenant]!, #"{"id": "pump-1"}"#).status == 201)
            tokens[tenant] = try #require((try? JSON.decode(call("POST", "/v1/devices/pump-1/credentials", key: keys[tenant]!, #"{"kind": "token"}"#).body))?["token"]?.string)
            #expect(call("PUT", "/v1/devices/pump-1/attributes", key: keys[tenant]!, #"{"interval": \#(interval)}"#).status == 200)
        }
        let clients = try ChildProcess(python, ["-u", Build.packageRoot + "/Tests/Support/tenant_clients.py", "\(mqttPort)",
                                                "acme=pump-1:\(tokens["acme"]!):devices/pump-1/config",
                                                "globex=pump-1:\(tokens["globex"]!):devices/pump-1/#"], interactive: true)
        defer { clients.stop() }
        #expect(eventually { clients.log.contains(#"acme got devices/pump-1/config {"interval":30}"#) }, "\(clients.log)\n\(hub.log.suffix(3000))")
        #expect(eventually { clients.log.contains(#"globex got devices/pump-1/config {"interval":99}"#) }, "\(clients.log)")
        // A change reaches the device within about a second (the source compares once a second).
        #expect(call("PUT", "/v1/devices/pump-1/attributes", key: keys["acme"]!, #"{"interval": 45}"#).status == 200)
        #expect(eventually(timeout: 5) { clients.log.contains(#"acme got devices/pump-1/config {"interval":45}"#) }, "\(clients.log)")
        // The device cannot write its configuration: subscribing again gets the hub's, not its own.
        clients.send(#"acme publish devices/pump-1/config {"interval":0}"#)
        #expect(eventually { clients.log.contains("acme published devices/pump-1/config") }, "\(clients.log)")
        clients.send("acme subscribe devices/pump-1/config")
        #expect(eventually { clients.log.components(separatedBy: #"acme got devices/pump-1/config {"interval":45}"#).count - 1 == 2 }, "\(clients.log)")
        usleep(300_000)
        #expect(!clients.log.contains(#"{"interval":0}"#) && !clients.log.contains(#"globex got devices/pump-1/config {"interval":30}"#)
                && !clients.log.contains(#"globex got devices/pump-1/config {"interval":45}"#), "\(clients.log)")

        // A device with a persistent session that was offline during a change gets it when it comes
        // back, without subscribing again.
        clients.stop()
        let returning = try ChildProcess(python, ["-u", "-c", """
            import sys, threading, time, paho.mqtt.client as mqtt
            from paho.mqtt.properties import Properties
            from paho.mqtt.packettypes import PacketTypes
            lock = threading.Lock()
            def say(line):
                # Whole lines: the network thread and this one both print.
                with lock:
                    sys.stdout.write(line + "\\n"); sys.stdout.flush()
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pump-1", protocol=mqtt.MQTTv5)
            c.username_pw_set("pump-1", sys.argv[2])
            c.on_message = lambda c, u, m: say("got " + m.payload.decode())
            props = Properties(PacketTypes.CONNECT); props.SessionExpiryInterval = 300
            c.connect("127.0.0.1", int(sys.argv[1]), clean_start=False, properties=props); c.loop_start()
            time.sleep(0.5); c.subscribe("devices/pump-1/config", qos=1); time.sleep(1.5)
            c.disconnect(); c.loop_stop(); say("offline")
            time.sleep(3)
            say("back")
            c.connect("127.0.0.1", int(sys.argv[1]), clean_start=False, properties=props); c.loop_start()
            time.sleep(4)
            """, "\(mqttPort)", tokens["acme"]!])
        defer { returning.stop() }
        #expect(eventually { returning.log.contains("offline") }, "\(returning.log)")
        #expect(call("PUT", "/v1/devices/pump-1/attributes", key: keys["acme"]!, #"{"interval": 77}"#).status == 200)
        #expect(eventually(timeout: 8) { returning.log.contains(#"got {"interval":77}"#) }, "\(returning.log)")
        #expect(returning.log.components(separatedBy: "back")[0].contains(#"got {"interval":45}"#) && !returning.log.components(separatedBy: "back")[0].contains("77"),
                "\(returning.log)")
    }
}
