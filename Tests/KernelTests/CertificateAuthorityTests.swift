import Foundation
import Testing
@testable import IoTCAPI
@testable import IoTCKernel
import IoTCPluginKit
@testable import IoTCStore

/// Client certificates issued by a tenant's certificate authority: a device whose certificate was never
/// registered on its own connects over mutual TLS (MQTT with mosquitto_pub, HTTPS with curl) as the
/// device its subject's common name names, in the authority's tenant; through an intermediate too.
/// Another authority's certificates are refused, and removing the authority closes its devices'
/// connections.
@Suite(.serialized) struct CertificateAuthorityTests {
    static let ownerKey = "iotc_catest1_" + String(repeating: "c", count: 40)

    /// A root authority, an intermediate it signed, and devices: `ca-dev` (CN sensor-ca-1) signed by the
    /// root, `int-dev` (CN sensor-ca-2) signed by the intermediate, with `int-dev-chain.pem` holding
    /// both; `other-dev` (CN sensor-ca-1) signed by an authority nobody registered.
    static func makeAuthorities(in dir: TempDir) throws {
        func openssl(_ args: [String]) throws {
            let (code, out) = try run("/usr/bin/env", ["openssl"] + args)
            #expect(code == 0, "openssl \(args.first ?? ""): \(out)")
        }
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        let p = dir.path + "/"
        for (name, cn) in [("fleet-ca", "Fleet CA"), ("rogue-ca", "Fleet CA")] {
            try openssl(["req", "-x509"] + ec + ["-keyout", p + name + ".key", "-out", p + name + ".pem", "-days", "2", "-subj", "/CN=\(cn)/O=Example"])
        }
        let caExtensions = dir.write("ca.ext", "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
        try openssl(["req"] + ec + ["-keyout", p + "int.key", "-out", p + "int.csr", "-subj", "/CN=Fleet Intermediate/O=Example"])
        try openssl(["x509", "-req", "-in", p + "int.csr", "-CA", p + "fleet-ca.pem", "-CAkey", p + "fleet-ca.key", "-CAcreateserial",
                     "-out", p + "int.pem", "-days", "2", "-extfile", caExtensions])
        for (name, cn, ca) in [("ca-dev", "sensor-ca-1", "fleet-ca"), ("int-dev", "sensor-ca-2", "int"), ("other-dev", "sensor-ca-1", "rogue-ca")] {
            try openssl(["req"] + ec + ["-keyout", p + name + ".key", "-out", p + name + ".csr", "-subj", "/CN=\(cn)"])
            try openssl(["x509", "-req", "-in", p + name + ".csr", "-CA", p + ca + ".pem", "-CAkey", p + ca + ".key", "-CAcreateserial",
                         "-out", p + name + ".pem", "-days", "2"])
        }
        let chain = try String(contentsOfFile: p + "int-dev.pem", encoding: .utf8) + String(contentsOfFile: p + "int.pem", encoding: .utf8)
        _ = dir.write("int-dev-chain.pem", chain)
    }

    @Test func devicesAuthenticateWithCertificatesTheirTenantsAuthorityIssued() throws {
        let certs = TempDir()
        try makeTestCertificates(in: certs)
        try Self.makeAuthorities(in: certs)
        let p = certs.path + "/"
        let mqtts = freePort(), https = freePort()
        let hub = try ServedHub(key: Self.ownerKey) { hub in """
            sources:
              broker:
                plugin: mqtt
                listen: "127.0.0.1:\(freePort())"
                authentication: hub
                tls: { listen: "127.0.0.1:\(mqtts)", certificate_file: \(p)cert.pem, key_file: \(p)key.pem, client_certificate: optional }
              web:
                plugin: http
                listen: "127.0.0.1:\(https)"
                tls: { certificate_file: \(p)cert.pem, key_file: \(p)key.pem, client_certificate: required }
            sinks:
              out: { plugin: file, path: \(hub.dir.path)/out.jsonl }
            pipelines:
              t: { from: [ "broker:devices/+/telemetry", "web:devices/+/telemetry" ], to: [ out ] }
            """ }
        #expect(waitForPort(mqtts) && waitForPort(https))
        func publish(_ device: String, cert: String, key: String) throws -> (Int32, String) {
            try run("/usr/bin/env", ["mosquitto_pub", "-h", "127.0.0.1", "-p", "\(mqtts)", "--cafile", p + "cert.pem", "--cert", p + cert,
                                     "--key", p + key, "-i", device, "-q", "1", "-t", "devices/\(device)/telemetry", "-m", #"{"via":"\#(cert)"}"#])
        }
        func post(_ device: String, cert: String, key: String) throws -> String {
            try run("/usr/bin/env", ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", p + "cert.pem",
                                     "--cert", p + cert, "--key", p + key, "-H", "Content-Type: application/json", "-d", #"{"via":"https"}"#,
                                     "https://127.0.0.1:\(https)/v1/devices/\(device)/telemetry"]).1
        }
        // Before its authority is registered, the certificate names nobody.
        #expect(try publish("sensor-ca-1", cert: "ca-dev.pem", key: "ca-dev.key").0 != 0)

        // Registering: only a CA certificate, and only once across tenants.
        func register(_ file: String, tenant: String = "system") throws -> HTTPResult {
            let pem = try String(contentsOfFile: p + file, encoding: .utf8)
            return hub.call("POST", "/v1/certificate-authorities?tenant=\(tenant)",
                            String(decoding: JSON.encode(.object(["name": "fleet", "certificate": .string(pem), "profile": "sensors"])), as: UTF8.self))
        }
        let created = try register("fleet-ca.pem")
        #expect(created.status == 201, "\(created.body)")
        let ca: Value = try JSON.decode(Array(created.body.utf8))
        #expect(text(ca["subject"])?.contains("Fleet CA") == true && text(ca["fingerprint"])?.count == 64 && ca["profile"] == "sensors", "\(ca)")
        #expect(try register("ca-dev.pem").status == 400, "a device certificate is not an authority")
        #expect(hub.call("POST", "/v1/tenants", #"{"id": "acme"}"#).status == 201)
        #expect(try register("fleet-ca.pem", tenant: "acme").status == 409)
        #expect(hub.call("GET", "/v1/certificate-authorities").body.contains(text(ca["id"]) ?? "?"))

        // Its certificates now name their devices, on MQTT and HTTPS, directly or through an intermediate
        // the device sends with its own certificate.
        let mqtt = try publish("sensor-ca-1", cert: "ca-dev.pem", key: "ca-dev.key")
        #expect(mqtt.0 == 0, "\(mqtt.1)")
        #expect(try post("sensor-ca-1", cert: "ca-dev.pem", key: "ca-dev.key") == "202")
        let chained = try publish("sensor-ca-2", cert: "int-dev-chain.pem", key: "int-dev.key")
        #expect(chained.0 == 0, "\(chained.1)")
        #expect(eventually { hub.lines.count == 3 }, "\(hub.lines)")
        #expect(hub.lines.allSatisfy { $0["tenant"] == "system" } && Set(hub.lines.compactMap { text($0["device"]) }) == ["sensor-ca-1", "sensor-ca-2"],
                "\(hub.lines)")
        // Without the intermediate, the chain does not reach the authority; a certificate of the same
        // name from another authority, and one for another device's URL, are refused.
        #expect(try publish("sensor-ca-2", cert: "int-dev.pem", key: "int-dev.key").0 != 0)
        #expect(try publish("sensor-ca-1", cert: "other-dev.pem", key: "other-dev.key").0 != 0)
        #expect(try post("sensor-ca-1", cert: "other-dev.pem", key: "other-dev.key") == "401")
        #expect(try post("sensor-ca-2", cert: "ca-dev.pem", key: "ca-dev.key") != "202")

        // Removing the authority closes its devices' open connections and refuses new ones.
        let python = Build.packageRoot + "/.venv/bin/python"
        try #require(FileManager.default.isExecutableFile(atPath: python), "no .venv: run scripts/install-deps.sh test")
        let watcher = try ChildProcess(python, ["-u", "-c", """
            import ssl, sys, time, paho.mqtt.client as mqtt
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sensor-ca-1", protocol=mqtt.MQTTv5)
            c.tls_set(ca_certs=sys.argv[1] + "cert.pem", certfile=sys.argv[1] + "ca-dev.pem", keyfile=sys.argv[1] + "ca-dev.key")
            c.on_connect = lambda c, u, f, rc, p: print("connected", rc.value, flush=True)
            c.on_disconnect = lambda c, u, f, rc, p: (print("disconnected", rc.value, flush=True), c.loop_stop())
            c.connect("127.0.0.1", \(mqtts)); c.loop_start()
            time.sleep(30)
            """, p])
        #expect(eventually { watcher.log.contains("connected 0") }, "\(watcher.log)")
        #expect(hub.call("DELETE", "/v1/certificate-authorities/\(text(ca["id"]) ?? "?")").status == 204)
        #expect(eventually(timeout: 5) { watcher.log.contains("disconnected 152") }, "\(watcher.log)")
        watcher.stop()
        #expect(try publish("sensor-ca-1", cert: "ca-dev.pem", key: "ca-dev.key").0 != 0)
        #expect(try post("sensor-ca-1", cert: "ca-dev.pem", key: "ca-dev.key") == "401")
        #expect(hub.call("GET", "/v1/audit?action=certificate_authority.create").body.contains("Fleet CA"))
    }

    /// The chain check on its own: validity periods count, for the leaf and its authority.
    @Test func certificatesCountOnlyWhileInForce() throws {
        let certs = TempDir()
        try Self.makeAuthorities(in: certs)
        func der(_ file: String) throws -> [UInt8] {
            let pem = try String(contentsOfFile: certs.path + "/" + file, encoding: .utf8)
            let body = pem.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
            return try #require(Base64.decode(body))
        }
        let (_, caDER) = try ClientCertificates.parseAuthority(try String(contentsOfFile: certs.path + "/fleet-ca.pem", encoding: .utf8))
        let record = CertificateAuthority(id: "ca1", tenant: "acme", name: "fleet", subject: "", fingerprint: ClientCertificates.fingerprint(caDER),
                                          certificate: caDER, profile: "sensors", notAfter: 0, createdAt: 0)
        let issuers = ClientCertificates([record])
        let leaf = try der("ca-dev.pem")
        #expect(issuers.grant([leaf]) == DirectoryGrant(tenant: "acme", device: "sensor-ca-1", credential: "ca1", profile: "sensors"))
        #expect(issuers.grant([leaf], now: Date().addingTimeInterval(3 * 86_400)) == nil, "expired")
        #expect(issuers.grant([leaf], now: Date().addingTimeInterval(-86_400)) == nil, "not yet valid")
        #expect(issuers.grant([try der("int-dev.pem"), try der("int.pem")])?.device == "sensor-ca-2")
        #expect(issuers.grant([try der("other-dev.pem")]) == nil)
        #expect(issuers.grant([Array("not a certificate".utf8)]) == nil)
    }

    func text(_ v: Value?) -> String? { if case .string(let s)? = v { s } else { nil } }
}
