import Foundation
import Testing
@testable import IoTCAPI
@testable import IoTCKernel
import IoTCPluginKit
@testable import IoTCStore
import X509

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
            \(Self.broker(tlsPort: mqtts, certificates: p))
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
        let watcher = try Self.connectedDevice(certificates: p, port: mqtts)
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
        let serial = try Certificate(derEncoded: leaf).serialNumber
        #expect(issuers.grant([leaf]) == DirectoryGrant(tenant: "acme", device: "sensor-ca-1", credential: ClientCertificates.credential("ca1", serial),
                                                            issuer: "ca1", profile: "sensors"))
        #expect(ClientCertificates.credential("ca1", serial) == "ca1/" + serial.bytes.map { String(format: "%02x", $0) }.joined())
        #expect(issuers.grant([leaf], now: Date().addingTimeInterval(3 * 86_400)) == nil, "expired")
        #expect(issuers.grant([leaf], now: Date().addingTimeInterval(-86_400)) == nil, "not yet valid")
        #expect(issuers.grant([try der("int-dev.pem"), try der("int.pem")])?.device == "sensor-ca-2")
        #expect(issuers.grant([try der("other-dev.pem")]) == nil)
        #expect(issuers.grant([Array("not a certificate".utf8)]) == nil)
    }

    /// The `broker` source (YAML at the sources' level): MQTT over TLS on `tlsPort` that asks for client
    /// certificates and authenticates through the hub.
    static func broker(tlsPort: Int, certificates p: String) -> String {
        """
          broker:
            plugin: mqtt
            listen: "127.0.0.1:\(freePort())"
            authentication: hub
            tls: { listen: "127.0.0.1:\(tlsPort)", certificate_file: \(p)cert.pem, key_file: \(p)key.pem, client_certificate: optional }
        """
    }

    /// A paho-mqtt client that connects over mutual TLS as `sensor-ca-1` with `ca-dev.pem` and prints
    /// `connected RC` and `disconnected RC` (MQTT 5 reason codes).
    static func connectedDevice(certificates p: String, port: Int) throws -> ChildProcess {
        let python = Build.packageRoot + "/.venv/bin/python"
        try #require(FileManager.default.isExecutableFile(atPath: python), "no .venv: run scripts/install-deps.sh test")
        return try ChildProcess(python, ["-u", "-c", """
            import ssl, sys, time, paho.mqtt.client as mqtt
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sensor-ca-1", protocol=mqtt.MQTTv5)
            c.tls_set(ca_certs=sys.argv[1] + "cert.pem", certfile=sys.argv[1] + "ca-dev.pem", keyfile=sys.argv[1] + "ca-dev.key")
            c.on_connect = lambda c, u, f, rc, p: print("connected", rc.value, flush=True)
            c.on_disconnect = lambda c, u, f, rc, p: (print("disconnected", rc.value, flush=True), c.loop_stop())
            c.connect("127.0.0.1", \(port)); c.loop_start()
            time.sleep(30)
            """, p])
    }

    /// A revocation list `name` that `ca` signs, listing `certificates` (files in `dir`), made with
    /// `openssl ca` and its own database; returns its PEM.
    static func revocationList(in dir: TempDir, ca: String, revoking certificates: [String], name: String) throws -> String {
        let p = dir.path + "/"
        let db = p + name + "-db/"
        try FileManager.default.createDirectory(atPath: db, withIntermediateDirectories: true)
        _ = dir.write(name + "-db/index.txt", "")
        _ = dir.write(name + "-db/crlnumber", "01\n")
        let config = dir.write(name + ".cnf", """
            [ ca ]
            default_ca = d
            [ d ]
            database = \(db)index.txt
            crlnumber = \(db)crlnumber
            default_md = sha256
            default_crl_days = 1
            """)
        let signer = ["-config", config, "-keyfile", p + ca + ".key", "-cert", p + ca + ".pem"]
        for c in certificates {
            let (code, out) = try run("/usr/bin/env", ["openssl", "ca"] + signer + ["-revoke", p + c])
            #expect(code == 0, "openssl ca -revoke: \(out)")
        }
        let (code, out) = try run("/usr/bin/env", ["openssl", "ca"] + signer + ["-gencrl", "-out", p + name + ".crl.pem"])
        #expect(code == 0, "openssl ca -gencrl: \(out)")
        return try String(contentsOfFile: p + name + ".crl.pem", encoding: .utf8)
    }

    /// Revocation lists on their own: read, checked against their authority, and the certificates they
    /// name refused (the leaf an authority signed, or the intermediate it signed).
    @Test func revocationListsRefuseTheCertificatesTheyName() throws {
        let certs = TempDir()
        try Self.makeAuthorities(in: certs)
        func der(_ file: String) throws -> [UInt8] {
            let pem = try String(contentsOfFile: certs.path + "/" + file, encoding: .utf8)
            return try #require(Base64.decode(pem.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()))
        }
        let (fleet, caDER) = try ClientCertificates.parseAuthority(try String(contentsOfFile: certs.path + "/fleet-ca.pem", encoding: .utf8))
        let (rogue, _) = try ClientCertificates.parseAuthority(try String(contentsOfFile: certs.path + "/rogue-ca.pem", encoding: .utf8))
        let list = try RevocationList.parse(Array(try Self.revocationList(in: certs, ca: "fleet-ca", revoking: ["ca-dev.pem"], name: "leaf").utf8))
        let leaf = try Certificate(derEncoded: try der("ca-dev.pem"))
        #expect(list.revoked == [leaf.serialNumber] && list.isIssued(by: fleet) && !list.isIssued(by: rogue))
        #expect(abs(list.thisUpdate.timeIntervalSinceNow) < 300 && list.nextUpdate.map { abs($0.timeIntervalSinceNow - 86_400) < 300 } == true)

        func issuers(_ crl: RevocationList?) -> ClientCertificates {
            ClientCertificates([CertificateAuthority(id: "ca1", tenant: "acme", name: "fleet", subject: "", fingerprint: ClientCertificates.fingerprint(caDER),
                                                     certificate: caDER, profile: "sensors", notAfter: 0, createdAt: 0, revocationList: crl?.der)])
        }
        let chain = [try der("int-dev.pem"), try der("int.pem")]
        let open = issuers(nil)
        #expect(open.grant([try der("ca-dev.pem")])?.credential == ClientCertificates.credential("ca1", leaf.serialNumber))
        let listed = issuers(list)
        #expect(try listed.grant([der("ca-dev.pem")]) == nil && listed.grant(chain)?.device == "sensor-ca-2")
        #expect(listed.revokedIDs == [ClientCertificates.credential("ca1", leaf.serialNumber)])
        // Reloaded every few seconds, an authority is taken from the earlier parse only while its record
        // (its list included) is the same: a changed or removed list is read again.
        let record = CertificateAuthority(id: "ca1", tenant: "acme", name: "fleet", subject: "", fingerprint: ClientCertificates.fingerprint(caDER),
                                          certificate: caDER, profile: "sensors", notAfter: 0, createdAt: 0, revocationList: list.der, revocationListSetAt: 5)
        var changed = record
        changed.revocationList = nil
        changed.revocationListSetAt = nil
        let first = ClientCertificates([record])
        #expect(ClientCertificates([record], reusing: first).revokedIDs == first.revokedIDs)
        #expect(ClientCertificates([changed], reusing: first).revokedIDs.isEmpty && ClientCertificates([], reusing: first).ids.isEmpty)
        // Revoking the intermediate refuses what it issued.
        let intermediate = try RevocationList.parse(Array(try Self.revocationList(in: certs, ca: "fleet-ca", revoking: ["int.pem"], name: "int").utf8))
        #expect(try issuers(intermediate).grant(chain) == nil && issuers(intermediate).grant([der("ca-dev.pem")]) != nil)
        // DER reads as PEM does; anything else is refused with a reason.
        #expect(try RevocationList.parse(list.der).revoked == list.revoked)
        for bad in ["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a list", ""] {
            #expect(throws: AccountsError.self) { try RevocationList.parse(Array(bad.utf8)) }
        }
        #expect(throws: AccountsError.self) { try RevocationList.parse(Array(list.der.dropLast(3))) }

        // A list is untrusted input: 20,000 seeded mutations of a real one (bytes flipped, cut, repeated)
        // each parse or are refused, and a changed signed part never passes as the authority's.
        var rng = SplitMix(seed: 20_261_127)
        for _ in 0..<20_000 {
            var bytes = list.der
            for _ in 0..<(1 + rng.next() % 4) {
                let i = Int(rng.next() % UInt64(bytes.count))
                switch rng.next() % 3 {
                case 0: bytes[i] = UInt8(truncatingIfNeeded: rng.next())
                case 1: bytes.removeSubrange(i..<min(bytes.count, i + 1 + Int(rng.next() % 8)))
                default: bytes.insert(contentsOf: bytes[i..<min(bytes.count, i + 4)], at: i)
                }
                if bytes.isEmpty { bytes = [0x30] }
            }
            if let parsed = try? RevocationList.parse(bytes), parsed.isIssued(by: fleet) {
                #expect(parsed.revoked == list.revoked && parsed.issuer == list.issuer && parsed.thisUpdate == list.thisUpdate, "a changed list passed")
            }
        }
    }

    /// Through the API: a list the authority signed closes the connections of the certificates it names
    /// and refuses them from then on; another authority's list, and an older one, are refused; removing
    /// the list lets them in again.
    @Test func aRevocationListClosesAndRefusesTheCertificatesItNames() throws {
        let certs = TempDir()
        try makeTestCertificates(in: certs)
        try Self.makeAuthorities(in: certs)
        let p = certs.path + "/"
        let older = try Self.revocationList(in: certs, ca: "fleet-ca", revoking: [], name: "empty")
        Thread.sleep(forTimeInterval: 1.1)  // thisUpdate counts seconds
        let revoking = try Self.revocationList(in: certs, ca: "fleet-ca", revoking: ["ca-dev.pem"], name: "leaf")
        let foreign = try Self.revocationList(in: certs, ca: "rogue-ca", revoking: ["other-dev.pem"], name: "rogue")
        let mqtts = freePort()
        let hub = try ServedHub(key: Self.ownerKey) { hub in """
            sources:
            \(Self.broker(tlsPort: mqtts, certificates: p))
            sinks:
              out: { plugin: file, path: \(hub.dir.path)/out.jsonl }
            pipelines:
              t: { from: [ "broker:devices/+/telemetry" ], to: [ out ] }
            """ }
        #expect(waitForPort(mqtts))
        func publish(_ device: String, cert: String, key: String) throws -> Int32 {
            try run("/usr/bin/env", ["mosquitto_pub", "-h", "127.0.0.1", "-p", "\(mqtts)", "--cafile", p + "cert.pem", "--cert", p + cert,
                                     "--key", p + key, "-i", device, "-q", "1", "-t", "devices/\(device)/telemetry", "-m", "{}"]).0
        }
        let pem = try String(contentsOfFile: p + "fleet-ca.pem", encoding: .utf8)
        let created = hub.call("POST", "/v1/certificate-authorities", String(decoding: JSON.encode(.object(["name": "fleet", "certificate": .string(pem)])), as: UTF8.self))
        let id = try #require(text((try? JSON.decode(Array(created.body.utf8)) as Value)?["id"]), "\(created.body)")
        func setList(_ crl: String) -> HTTPResult {
            hub.call("PUT", "/v1/certificate-authorities/\(id)/crl", String(decoding: JSON.encode(.object(["crl": .string(crl)])), as: UTF8.self))
        }
        let watcher = try Self.connectedDevice(certificates: p, port: mqtts)
        defer { watcher.stop() }
        #expect(eventually { watcher.log.contains("connected 0") }, "\(watcher.log)")

        #expect(setList(older).status == 200)
        let set = setList(revoking)
        #expect(set.status == 200, "\(set.body)")
        let listed = (try? JSON.decode(Array(set.body.utf8)) as Value)?["revocation_list"]
        #expect(listed?["revoked"] == 1 && listed?["next_update"]?.number != nil, "\(set.body)")
        #expect(eventually(timeout: 5) { watcher.log.contains("disconnected 152") }, "\(watcher.log)")
        #expect(try publish("sensor-ca-1", cert: "ca-dev.pem", key: "ca-dev.key") != 0)
        #expect(try publish("sensor-ca-2", cert: "int-dev-chain.pem", key: "int-dev.key") == 0, "a certificate the list does not name")

        let refused = setList(foreign)
        #expect(refused.status == 400 && refused.body.contains("not signed by this certificate authority"), "\(refused.body)")
        let stale = setList(older)
        #expect(stale.status == 409 && stale.body.contains("older than the one in force"), "\(stale.body)")
        #expect(setList("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n").status == 400)
        #expect(hub.call("PUT", "/v1/certificate-authorities/nobody/crl", #"{"crl": "x"}"#).status == 404)

        #expect(hub.call("DELETE", "/v1/certificate-authorities/\(id)/crl").status == 204)
        #expect(try publish("sensor-ca-1", cert: "ca-dev.pem", key: "ca-dev.key") == 0)
        #expect(hub.call("GET", "/v1/certificate-authorities/\(id)").body.contains(#""revocation_list":null"#))
        #expect(hub.call("GET", "/v1/audit?action=certificate_authority.crl.set").body.contains("1 revoked"))
    }

    func text(_ v: Value?) -> String? { if case .string(let s)? = v { s } else { nil } }
}
