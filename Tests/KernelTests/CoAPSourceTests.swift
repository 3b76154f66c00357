import Foundation
import Testing
@testable import IoTCKernel
import IoTCPluginKit

/// The `coap` source against real CoAP peers: libcoap's `coap-client-openssl` and aiocoap.
@Suite(.serialized) struct CoAPSourceTests {
    static let ownerKey = "iotc_coaptests01_" + String(repeating: "k", count: 40)

    /// A hub with a CoAP source on UDP and DTLS, a durable telemetry pipeline, a non-durable events one
    /// and one for command results. `configure` may write files into the hub's folder and returns more
    /// settings for the source.
    static func hub(configure: @escaping (TempDir) throws -> String = { _ in "" }) throws -> ServedHub {
        try ServedHub(key: ownerKey) { hub in """
            version: 1
            sources:
              coap:
                plugin: coap
                listen: "127.0.0.1:\(hub.udp)"
                dtls_listen: "127.0.0.1:\(hub.dtls)"
                retry_after: 3s
            \(try configure(hub.dir))
            sinks:
              out:
                plugin: file
                path: \(hub.dir.path)/out.jsonl
            pipelines:
              telemetry:
                from: [ "coap:devices/+/telemetry" ]
                durable: true
                to: [ out ]
              events:
                from: [ "coap:devices/+/events" ]
                to: [ out ]
              results:
                from: [ "coap:devices/+/results/+" ]
                to: [ out ]
            auth:
              allow_anonymous: true
            """ }
    }

    static var client: String? { which("coap-client-openssl") }

    func coap(_ args: [String]) throws -> String { try coapClient(args) }

    func text(_ v: Value?) -> String? { if case .string(let s)? = v { s } else { nil } }

    @Test func takesTelemetryInEveryFormatAndRefusesBadPayloads() throws {
        let hub = try Self.hub()
        let base = "coap://127.0.0.1:\(hub.udp)"
        // Durable pipeline: answered once in the write-ahead log (a separate response); the payload and
        // the CoAP options survive.
        var out = try coap(["-m", "post", "-t", "json", "-e", #"{"temperature": 21.5}"#, "\(base)/t/pump-1", "-v", "7"])
        #expect(out.contains("c:2.04"), "\(out)")
        #expect(eventually { hub.lines.count == 1 })
        let first = try #require(hub.lines.first)
        #expect(text(first["device"]) == "pump-1" && text(first["topic"]) == "devices/pump-1/telemetry" && first["payload"]?["temperature"] == .double(21.5))
        #expect(first["properties"]?["coap.content_format"] == .string("50") && first["properties"]?["coap.type"] == .string("con")
                && first["properties"]?["coap.method"] == .string("POST"), "\(first)")
        // Non-confirmable, on a pipeline without a write-ahead log: a NON answer.
        out = try coap(["-m", "put", "-N", "-t", "text", "-e", "door opened", "\(base)/e/pump-1", "-v", "7"])
        #expect(out.contains("t:NON c:2.04"), "\(out)")
        // SenML-JSON, and a block-wise body of 3 KB in 64-byte blocks.
        out = try coap(["-m", "post", "-t", "110", "-e", #"[{"bn":"pump-1/","n":"rpm","v":1200,"u":"1/min"}]"#, "\(base)/t/pump-1"])
        #expect(!out.contains("4."), "\(out)")
        let big = hub.dir.write("big.json", "{\"blob\":\"" + String(repeating: "x", count: 3000) + "\"}")
        out = try coap(["-m", "put", "-t", "json", "-f", big, "-b", "64", "\(base)/t/pump-1", "-v", "7"])
        #expect(out.contains("2.31") && out.contains("c:2.04") && out.contains("Block1:47/_/64"), "each block but the last is answered 2.31, the last names itself: \(out)")
        #expect(eventually { hub.lines.count == 4 })
        // The block size the device chose is a property of the message.
        #expect(hub.lines.contains { text($0["payload"]?["blob"])?.count == 3000 && $0["properties"]?["coap.block1_size"] == .string("64") }, "\(hub.lines)")
        #expect(hub.lines.contains { text($0["content_type"]) == "application/senml+json" })
        // Bad payloads: the right code and a diagnostic, nothing stored.
        #expect(try coap(["-m", "post", "-t", "json", "-e", #"{"t":"#, "\(base)/t/pump-1"]).contains("4.00 not valid JSON"))
        #expect(try coap(["-m", "post", "-t", "110", "-e", #"[{"n":"t","v":"x"}]"#, "\(base)/t/pump-1"]).contains("4.00 SenML record 0: 'v' must be a number"))
        #expect(try coap(["-m", "post", "-t", "41", "-e", "<a/>", "\(base)/t/pump-1"]).contains("4.15"))
        #expect(try coap(["-m", "get", "\(base)/t/pump-1"]).contains("4.05"))
        #expect(try coap(["-m", "post", "-e", "x", "\(base)/nowhere"]).contains("4.04"))
        #expect(try coap(["-m", "post", "-t", "json", "-e", "{}", "\(base)/t/no-route/x"]).contains("4.04"))
        Thread.sleep(forTimeInterval: 0.3)
        #expect(hub.lines.count == 4)
    }

    /// Methods a resource does not take get 4.05 (libcoap alone would answer DELETE with 2.02 Deleted
    /// and FETCH with 4.04); an Accept option the resource cannot honour gets 4.06 (RFC 7252 §5.10.4);
    /// a request carried in an Acknowledgement is ignored (§4.2), nothing submitted.
    @Test func answersMethodsAndAcceptOptionsByTheRFC() throws {
        let hub = try Self.hub()
        let socket = try UDPSocket(port: hub.udp)
        /// A request with token 0x42: `type` (0 CON, 2 ACK), `code`, message id `mid`, options (already
        /// encoded), payload.
        func request(_ type: UInt8, _ code: UInt8, _ mid: UInt8, _ options: [UInt8], _ payload: [UInt8] = []) -> [UInt8]? {
            socket.send([0x41 | type << 4, code, 0x10, mid, 0x42] + options + (payload.isEmpty ? [] : [0xFF] + payload))
            return socket.receive(timeout: 1)
        }
        let telemetry: [UInt8] = [0xB1] + Array("t".utf8) + [0x06] + Array("dev-m1".utf8)
        let attributes: [UInt8] = [0xB1] + Array("a".utf8) + [0x06] + Array("dev-m1".utf8)
        let commands: [UInt8] = [0xB1] + Array("c".utf8) + [0x06] + Array("dev-m1".utf8)
        func code(_ answer: [UInt8]?) -> String { answer.map { "\($0[1] >> 5).\(String(format: "%02d", $0[1] & 31))" } ?? "none" }
        #expect(code(request(0, 4, 1, telemetry)) == "4.05", "DELETE")
        #expect(code(request(0, 5, 2, telemetry)) == "4.05", "FETCH")
        #expect(code(request(0, 7, 3, telemetry)) == "4.05", "PATCH")
        #expect(code(request(0, 4, 4, [0xB7] + Array("nowhere".utf8))) == "4.04", "DELETE of no resource")
        // Accept: 50 (JSON) is served, 60 (CBOR) and 41 (XML) are not; the option (17) follows Uri-Path (11).
        #expect(code(request(0, 1, 5, attributes + [0x61, 50])) == "2.05")
        #expect(code(request(0, 1, 6, attributes + [0x61, 60])) == "4.06")
        #expect(code(request(0, 1, 7, commands + [0x61, 41])) == "4.06")
        #expect(code(request(0, 1, 8, commands)) == "2.05")
        // A POST in an Acknowledgement: no answer, nothing stored; the same as CON is taken.
        let body = Array(#"{"n":1}"#.utf8)
        #expect(request(2, 2, 9, telemetry + [0x11, 50], body) == nil)
        var answer = request(0, 2, 10, telemetry + [0x11, 50], body)
        if answer?[1] == 0 { answer = socket.receive() }  // a separate response (durable pipeline)
        #expect(code(answer) == "2.04")
        #expect(eventually { hub.lines.count == 1 })
        Thread.sleep(forTimeInterval: 0.3)
        #expect(hub.lines.count == 1)
    }

    /// Every new client address and port makes a libcoap session: idle ones are bounded by
    /// max_idle_sessions (the least recently used dropped), and counted in iotc_coap_sessions. A client
    /// whose session was dropped is served again.
    @Test func boundsIdleSessions() throws {
        let hub = try Self.hub { _ in "    max_idle_sessions: 5" }
        func post(_ socket: UDPSocket, _ mid: UInt8) -> UInt8? {
            let device = Array("dev-s".utf8)
            socket.send([0x40, 0x02, 0x20, mid, 0xB1] + Array("e".utf8) + [UInt8(device.count)] + device + [0x11, 50, 0xFF] + Array("{}".utf8))
            return socket.receive(timeout: 2)?[1]
        }
        let sockets = try (0..<30).map { _ in try UDPSocket(port: hub.udp) }
        for (i, s) in sockets.enumerated() { #expect(post(s, UInt8(i)) == 0x44, "2.04 for client \(i)") }
        func sessions() -> Int? {
            let text = hub.call("GET", "/metrics").body
            return text.split(separator: "\n").first { $0.hasPrefix("iotc_coap_sessions{") }.flatMap { Double($0.split(separator: " ").last ?? "")  }.map { Int($0) }
        }
        // Reported every 5 s: wait for a report made after the clients came (31 without the bound).
        Thread.sleep(forTimeInterval: 5.5)
        #expect((1...6).contains(sessions() ?? 0), "sessions: \(String(describing: sessions()))")
        #expect(post(sockets[0], 200) == 0x44, "the first client, whose session was dropped, is served again")
    }

    /// A GET for a block past the end of the representation is refused (4.00) and the hub carries on:
    /// the handler freed the body's copy a second time when libcoap refused it, and crashed.
    @Test func aBlockPastTheEndIsRefusedAndTheHubCarriesOn() throws {
        let hub = try Self.hub()
        let socket = try UDPSocket(port: hub.udp)
        let attributes: [UInt8] = [0xB1] + Array("a".utf8) + [0x06] + Array("dev-b1".utf8)
        for (mid, block) in [(UInt8(1), UInt8(0x36)), (2, 0x16), (3, 0x1E)] {  // NUM 3 of 1024, NUM 1 of 1024, NUM 1 with M set
            socket.send([0x41, 0x01, 0x20, mid, 0x42] + attributes + [0xC1, block])
            let answer = try #require(socket.receive(), "no answer to block \(block)")
            #expect(answer[1] == 0x80, "4.00: \(answer)")
        }
        socket.send([0x41, 0x01, 0x20, 0x09, 0x42] + attributes)
        let answer = try #require(socket.receive(), "the hub no longer answers")
        #expect(answer[1] == 0x45, "2.05: \(answer)")
    }

    @Test func answersAFullPipelineWith503AndMaxAge() throws {
        // Nothing listens on the broker port: the sink reports backpressure, its queue and then the
        // pipeline's fill, and the CoAP source answers 5.03 with Max-Age instead of buffering.
        let hub = try ServedHub(key: Self.ownerKey) { hub in """
            sources:
              coap: { plugin: coap, listen: "127.0.0.1:\(hub.udp)", retry_after: 3s }
            sinks:
              broker: { plugin: mqtt_publish, server: "127.0.0.1:\(freePort())", queue_size: 2, reconnect_initial: 50ms }
            pipelines:
              t: { from: [ "coap:devices/+/telemetry" ], queue_size: 2, to: [ broker ] }
            auth: { allow_anonymous: true }
            """ }
        var outputs: [String] = []
        for i in 0..<12 {
            outputs.append(try coap(["-m", "post", "-t", "json", "-e", #"{"n":\#(i)}"#, "coap://127.0.0.1:\(hub.udp)/t/pump-9", "-v", "7"]))
        }
        let changed = outputs.filter { $0.contains("c:2.04") }.count
        let refused = outputs.filter { $0.contains("c:5.03") }
        // What can be taken: the pipeline's queue (2), the batch its thread holds while it waits for the
        // sink (2), and the sink's queue (2), which the deliveries of a refused write count against.
        #expect(changed >= 2 && changed <= 6, "the queues bound what is taken: \(changed)")
        #expect(!refused.isEmpty && refused.allSatisfy { $0.contains("Max-Age:3") }, "\(outputs.last ?? "")")
    }

    @Test func answersADuplicateAgainWithoutSubmittingItTwice() throws {
        let hub = try Self.hub()
        let socket = try UDPSocket(port: hub.udp)
        // CON POST /t/dev-d with message id 0x1234, token 0x42, Content-Format 50.
        let request: [UInt8] = [0x41, 0x02, 0x12, 0x34, 0x42, 0xB1] + Array("t".utf8) + [0x05] + Array("dev-d".utf8) + [0x11, 50, 0xFF] + Array(#"{"n":1}"#.utf8)
        socket.send(request)
        let ack = try #require(socket.receive())
        #expect(ack[0] >> 4 == 0x6 && ack[2] == 0x12 && ack[3] == 0x34, "an ACK for the message id: \(ack)")
        if ack[1] == 0 {
            // A separate response follows (durable pipeline); acknowledge it.
            let response = try #require(socket.receive())
            #expect(response[1] == 0x44, "2.04: \(response)")
            socket.send([0x60, 0x00, response[2], response[3]])
        } else {
            #expect(ack[1] == 0x44)
        }
        // A copy of the answered request gets the same acknowledgement: empty when the answer came
        // separately (that answer is not sent again once acknowledged), 2.04 when it was piggybacked.
        socket.send(request)
        let again = try #require(socket.receive())
        #expect(again[0] >> 4 == 0x6 && again[1] == ack[1] && again[2] == 0x12 && again[3] == 0x34, "the same acknowledgement: \(again)")
        #expect(socket.receive(timeout: 0.5) == nil, "nothing else")
        // Each copy of a request is acknowledged the same way (RFC 7252 §4.5): on a durable pipeline the
        // first gets an empty ACK and the one separate answer follows, and so does a copy that comes
        // before or after that answer; one message is stored (below).
        let twice: [UInt8] = [0x41, 0x02, 0x20, 0x00, 0x51, 0xB1] + Array("t".utf8) + [0x05] + Array("dev-d".utf8) + [0x11, 50, 0xFF] + Array(#"{"n":3}"#.utf8)
        socket.send(twice)
        socket.send(twice)
        var answers: [[UInt8]] = []
        // Everything the two copies bring back, until nothing comes for a second.
        while let a = socket.receive(timeout: answers.isEmpty ? 3 : 1) {
            answers.append(a)
            if a[0] >> 4 == 0x4 { socket.send([0x60, 0x00, a[2], a[3]]) }  // acknowledge a separate answer
        }
        // The answer is piggybacked when the log has it at once, else separate: either both ACKs are empty
        // and one separate 2.04 follows, or both carry the 2.04 and nothing else comes.
        let acks = answers.filter { $0[0] >> 4 == 0x6 && $0[2] == 0x20 && $0[3] == 0x00 }
        let separate = answers.filter { $0[0] >> 4 == 0x4 && $0[1] == 0x44 }
        #expect(acks.count == 2 && (acks.allSatisfy { $0[1] == 0 } && separate.count == 1 || acks.allSatisfy { $0[1] == 0x44 } && separate.isEmpty),
                "both copies acknowledged alike, one 2.04: \(answers)")
        // An unknown critical option (9) is refused with 4.02; a block-wise body that does not start at
        // block 0 with 4.08 (Block1 NUM 2, more to come, 16-byte blocks).
        socket.send([0x41, 0x02, 0x20, 0x01, 0x52, 0x91] + Array("x".utf8) + [0x21] + Array("t".utf8) + [0x05] + Array("dev-d".utf8) + [0x11, 50, 0xFF, 0x7B, 0x7D])
        let critical = try #require(socket.receive())
        #expect(critical[1] == 0x82, "4.02 Bad Option: \(critical)")
        socket.send([0x41, 0x02, 0x20, 0x02, 0x53, 0xB1] + Array("t".utf8) + [0x05] + Array("dev-d".utf8) + [0x11, 50, 0xD1, 0x02, 0x28, 0xFF]
                    + Array("0123456789abcdef".utf8))
        let block = try #require(socket.receive())
        #expect(block[1] == 0x88, "4.08 Request Entity Incomplete: \(block)")
        // A block with more to come carries exactly its size (RFC 7959 §2.3): none, or 15 bytes of 16, is 4.00.
        for (mid, payload) in [(UInt8(3), [UInt8]()), (4, Array("0123456789abcde".utf8))] {
            socket.send([0x41, 0x02, 0x20, mid, 0x53, 0xB1] + Array("t".utf8) + [0x05] + Array("dev-d".utf8) + [0x11, 50, 0xD1, 0x02, 0x08]
                        + (payload.isEmpty ? [] : [0xFF] + payload))
            let short = try #require(socket.receive())
            #expect(short[1] == 0x80, "4.00 Bad Request: \(short)")
        }
        // One endpoint holds at most 16 observations: a 17th is refused with 5.03 until one is cancelled.
        func observe(_ token: UInt8, _ value: [UInt8]) -> [UInt8]? {
            // CON GET /a/dev-o, message id 0x30tt, Observe (6) with `value`.
            socket.send([0x41, 0x01, 0x30, token, token, 0x60 | UInt8(value.count)] + value + [0x51] + Array("a".utf8) + [0x05] + Array("dev-o".utf8))
            return socket.receive()
        }
        for token in UInt8(1)...16 { #expect(observe(token, [])?[1] == 0x45, "2.05 for observation \(token)") }
        #expect(observe(17, [])?[1] == 0xA3, "5.03 for the 17th")
        #expect(observe(1, [1])?[1] == 0x45, "cancelling the first")
        #expect(observe(18, [])?[1] == 0x45, "room again")
        // Malformed datagrams change nothing for anyone.
        for junk: [UInt8] in [[0x40], [0x4F, 0x01, 0x00], [0x40, 0x02, 0x00, 0x01, 0xFF], Array(repeating: 0xFF, count: 40)] { socket.send(junk) }
        #expect(try coap(["-m", "post", "-t", "json", "-e", #"{"n":2}"#, "coap://127.0.0.1:\(hub.udp)/t/dev-e"]).isEmpty)
        #expect(eventually { hub.lines.count == 3 })
        Thread.sleep(forTimeInterval: 0.3)
        #expect(hub.lines.count == 3, "no duplicate was submitted: \(hub.lines)")
    }

    /// A device holds at most 32 observations across all its endpoints: observing from ever new source
    /// ports (a NAT that rebinds, a client that means harm) no longer keeps every old one for good. The
    /// oldest go: an attributes change reaches the newest 32 endpoints only.
    @Test func aDeviceHoldsABoundedNumberOfObservationsAcrossItsEndpoints() throws {
        let hub = try Self.hub()
        #expect(hub.call("POST", "/v1/devices", #"{"id":"obs-1"}"#).status == 201)
        let token = try #require(text(try JSON.decode(hub.call("POST", "/v1/devices/obs-1/credentials", #"{"kind": "token"}"#).body)["token"]))
        let query = Array("token=\(token)".utf8)
        try #require(query.count >= 13 && query.count < 269)
        // CON GET /a/obs-1?token=… with Observe 0, from its own port each.
        func observe(_ socket: UDPSocket, _ n: UInt8) -> [UInt8]? {
            socket.send([0x41, 0x01, 0x40, n, n, 0x60, 0x51] + Array("a".utf8) + [0x05] + Array("obs-1".utf8)
                        + [0x4D, UInt8(query.count - 13)] + query)
            return socket.receive()
        }
        var endpoints: [UDPSocket] = []
        // The registry is read every 2 s: the first endpoint waits for the token to be known.
        let first = try UDPSocket(port: hub.udp)
        #expect(eventually(timeout: 10) { observe(first, 0)?[1] == 0x45 })
        endpoints.append(first)
        for n in UInt8(1)..<40 {
            let socket = try UDPSocket(port: hub.udp)
            #expect(observe(socket, n)?[1] == 0x45, "2.05 for endpoint \(n)")
            endpoints.append(socket)
        }
        #expect(hub.call("PUT", "/v1/devices/obs-1/attributes", #"{"interval":60}"#).status == 200)
        // Notifications come within the second the source compares attributes in.
        Thread.sleep(forTimeInterval: 3)
        let notified = endpoints.map { socket -> Bool in
            while let d = socket.receive(timeout: 0.2), d.count > 1 { if d[1] == 0x45 { return true } }
            return false
        }
        #expect(notified == Array(repeating: false, count: 8) + Array(repeating: true, count: 32), "\(notified)")
    }

    @Test func authenticatesDTLSDevicesWithTheirRegistryKey() throws {
        let hub = try Self.hub()
        #expect(hub.call("POST", "/v1/devices", #"{"id":"meter-9"}"#).status == 201)
        let key = Array("0123456789abcdefghij".utf8)
        let hex = key.map { String(format: "%02x", $0) }.joined()
        #expect(hub.call("POST", "/v1/devices/meter-9/credentials", #"{"kind":"psk","identity":"meter-9-psk","key":"\#(hex)"}"#).status == 201)
        let base = "coaps://127.0.0.1:\(hub.dtls)"
        // The registry is read every 2 s.
        var out = ""
        #expect(eventually(timeout: 10) {
            out = (try? coap(["-m", "post", "-t", "json", "-e", #"{"kwh":12}"#, "-u", "meter-9-psk", "-k", String(decoding: key, as: UTF8.self), "\(base)/t/meter-9", "-v", "7"])) ?? ""
            return out.contains("c:2.04")
        }, "\(out)")
        #expect(hub.lines.contains { text($0["device"]) == "meter-9" && text($0["tenant"]) == "system" })
        // The device fetches the attributes the operator set for it (its configuration).
        #expect(hub.call("PUT", "/v1/devices/meter-9/attributes", #"{"interval":30,"mode":"eco"}"#).status == 200)
        out = try coap(["-m", "get", "-u", "meter-9-psk", "-k", String(decoding: key, as: UTF8.self), "\(base)/a/meter-9"])
        #expect((try? JSON.decode(out.trimmingCharacters(in: .whitespacesAndNewlines))) == ["interval": 30, "mode": "eco"], "\(out)")
        #expect(try coap(["-m", "get", "coap://127.0.0.1:\(hub.udp)/a/anonymous-1"]).contains("{}"), "a device without attributes gets {}")
        // Resource discovery (RFC 6690) lists the device's own resources, filtered by a query, and none
        // to an endpoint without credentials.
        let psk = ["-u", "meter-9-psk", "-k", String(decoding: key, as: UTF8.self)]
        out = try coap(["-m", "get"] + psk + ["\(base)/.well-known/core"])
        #expect(out.trimmingCharacters(in: .whitespacesAndNewlines) == [
            #"</t/meter-9>;rt="iotc.telemetry";ct="0 50 60 110 112""#, #"</e/meter-9>;rt="iotc.events";ct="0 50 60 110 112""#,
            #"</a/meter-9>;rt="iotc.attributes";ct="0 50 60 110 112";obs"#, #"</c/meter-9>;rt="iotc.commands";ct=50;obs"#,
        ].joined(separator: ","), "\(out)")
        out = try coap(["-m", "get"] + psk + ["\(base)/.well-known/core?rt=iotc.c*", "-v", "7"])
        #expect(out.contains("Content-Format:application/link-format") && out.contains(#"'</c/meter-9>;rt="iotc.commands";ct=50;obs'"#), "\(out)")
        out = try coap(["-m", "get", "coap://127.0.0.1:\(hub.udp)/.well-known/core", "-v", "7"])
        #expect(out.contains("c:2.05") && out.contains("Content-Format:application/link-format") && !out.contains("meter-9"), "\(out)")
        #expect(try coap(["-m", "post", "coap://127.0.0.1:\(hub.udp)/.well-known/core", "-v", "7"]).contains("c:4.05"))
        // An observer of its attributes gets each change as a notification (checked every second), a
        // large one block-wise.
        let client = try #require(Self.client, "coap-client-openssl is missing: run scripts/install-deps.sh test")
        let observer = try ChildProcess(client, ["-s", "9", "-v", "7", "-u", "meter-9-psk", "-k", String(decoding: key, as: UTF8.self), "\(base)/a/meter-9"])
        defer { observer.stop() }
        #expect(eventually { observer.log.contains("Observe:") && observer.log.contains(#""mode":"eco""#) }, "\(observer.log)")
        #expect(hub.call("PUT", "/v1/devices/meter-9/attributes", #"{"interval":60,"mode":"eco"}"#).status == 200)
        #expect(eventually(timeout: 5) { observer.log.contains(#""interval":60"#) }, "\(observer.log)")
        let note = String(repeating: "n", count: 2000)
        #expect(hub.call("PUT", "/v1/devices/meter-9/attributes", #"{"interval":90,"note":"\#(note)"}"#).status == 200)
        #expect(eventually(timeout: 5) { observer.log.contains("Block2:1/") && observer.log.contains(#""interval":90"#) }, "\(observer.log)")
        let before = hub.lines.count
        // A wrong key fails the handshake (coap-client still exits 0), a right key for another device's
        // path is refused, and an unknown identity fails too.
        out = try coap(["-m", "post", "-t", "json", "-e", #"{"kwh":13}"#, "-u", "meter-9-psk", "-k", "0123456789abcdefghiX", "\(base)/t/meter-9", "-v", "7"])
        #expect(!out.contains("c:2.04"), "\(out)")
        out = try coap(["-m", "post", "-t", "json", "-e", #"{"kwh":14}"#, "-u", "meter-9-psk", "-k", String(decoding: key, as: UTF8.self), "\(base)/t/other"])
        #expect(out.contains("4.03"), "\(out)")
        out = try coap(["-m", "post", "-t", "json", "-e", #"{"kwh":15}"#, "-u", "nobody", "-k", String(decoding: key, as: UTF8.self), "\(base)/t/meter-9", "-v", "7"])
        #expect(!out.contains("c:2.04"), "\(out)")
        Thread.sleep(forTimeInterval: 0.3)
        #expect(hub.lines.count == before)
    }

    @Test func sendsCommandsLargerThanADatagramBlockWise() throws {
        let hub = try Self.hub()
        let client = try #require(Self.client, "coap-client-openssl is missing: run scripts/install-deps.sh test")
        let blob = String(repeating: "y", count: 3000)
        // An observer gets the first block in the notification and fetches the rest (RFC 7959 §2.6).
        let observer = try ChildProcess(client, ["-s", "8", "-B", "9", "-v", "7", "coap://127.0.0.1:\(hub.udp)/c/big-1"])
        #expect(eventually { observer.log.contains("Observe:") })
        let sent = hub.call("POST", "/v1/devices/big-1/commands", #"{"name":"flash","payload":{"blob":"\#(blob)"},"timeout":0}"#)
        #expect(sent.status == 200 || sent.status == 201 || sent.status == 202, "\(sent)")
        #expect(eventually(timeout: 8) { observer.log.contains("Block2:3/_/1024") }, "\(observer.log)")
        #expect(observer.log.contains("Size2:") && observer.log.contains("ETag:"), "\(observer.log)")
        // A plain GET gets a large command block-wise too (another device: big-1's observer would take it).
        #expect(try coap(["-m", "get", "coap://127.0.0.1:\(hub.udp)/c/big-2"]).isEmpty)
        #expect(hub.call("POST", "/v1/devices/big-2/commands", #"{"name":"flash-again","payload":{"blob":"\#(blob)"},"timeout":0}"#).status < 300)
        var out = ""
        let found = eventually(timeout: 5) {
            out = (try? coap(["-m", "get", "coap://127.0.0.1:\(hub.udp)/c/big-2"])) ?? ""
            return out.contains("flash-again")
        }
        #expect(found && out.contains(blob), "the whole body came: \(out.count) bytes")
    }

    @Test func authenticatesDTLSDevicesByTheirRegisteredCertificate() throws {
        let hub = try Self.hub { dir in
            try makeTestCertificates(in: dir)
            // A second device certificate from the same CA, never registered.
            for args in [["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", dir.path + "/other.key", "-out", dir.path + "/other.csr", "-subj", "/CN=other"],
                         ["x509", "-req", "-in", dir.path + "/other.csr", "-CA", dir.path + "/ca.pem", "-CAkey", dir.path + "/ca.key", "-CAcreateserial", "-out", dir.path + "/other.pem", "-days", "1"]] {
                #expect(try run("/usr/bin/env", ["openssl"] + args).0 == 0)
            }
            return "    dtls_certificate: { certificate_file: \(dir.path)/cert.pem, key_file: \(dir.path)/key.pem, client_ca_file: \(dir.path)/ca.pem }"
        }
        let (_, fingerprintLine) = try run("/usr/bin/env", ["openssl", "x509", "-in", hub.dir.path + "/dev.pem", "-noout", "-fingerprint", "-sha256"])
        let fingerprint = try #require(fingerprintLine.split(separator: "=").last).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(hub.call("POST", "/v1/devices", #"{"id":"sensor-1"}"#).status == 201)
        #expect(hub.call("POST", "/v1/devices/sensor-1/credentials", #"{"kind":"certificate","fingerprint":"\#(fingerprint)"}"#).status == 201)
        let base = "coaps://127.0.0.1:\(hub.dtls)"
        func post(cert: String, key: String, path: String = "/t/sensor-1") throws -> String {
            try coap(["-m", "post", "-t", "json", "-e", #"{"lux":300}"#, "-c", hub.dir.path + "/" + cert, "-j", hub.dir.path + "/" + key, "-n", base + path, "-v", "7"])
        }
        var out = ""
        #expect(eventually(timeout: 10) {
            out = (try? post(cert: "dev.pem", key: "dev.key")) ?? ""
            return out.contains("c:2.04")
        }, "\(out)")
        #expect(eventually { hub.lines.contains { text($0["device"]) == "sensor-1" && text($0["tenant"]) == "system" } })
        let before = hub.lines.count
        // Another device's path; a certificate of the same CA that no device has; one of no known CA.
        #expect(try post(cert: "dev.pem", key: "dev.key", path: "/t/someone").contains("4.03"))
        out = try post(cert: "other.pem", key: "other.key")
        #expect(!out.contains("c:2.04"), "\(out)")
        out = try post(cert: "cert.pem", key: "key.pem")
        #expect(!out.contains("c:2.04"), "\(out)")
        Thread.sleep(forTimeInterval: 0.3)
        #expect(hub.lines.count == before)
    }

    @Test func deliversCommandsToObserversAndTakesTheirResults() throws {
        let hub = try Self.hub()
        let python = Build.packageRoot + "/.venv/bin/python"
        try #require(FileManager.default.isExecutableFile(atPath: python), "no .venv: run scripts/install-deps.sh test")
        let device = try ChildProcess(python, ["-u", Build.packageRoot + "/Tests/Support/coap_peers.py", "\(hub.udp)", "valve-3"])
        #expect(eventually(timeout: 15) { device.log.contains("observing") }, "\(device.log)")
        #expect(device.log.contains("telemetry 2.04 Changed") && device.log.contains("senml 2.04 Changed"), "\(device.log)")
        #expect(device.log.contains("observing 2.05 Content observe"), "\(device.log)")
        #expect(hub.lines.contains { text($0["content_type"]) == "application/senml+cbor" })
        let sent = hub.call("POST", "/v1/devices/valve-3/commands", #"{"name":"open","payload":{"percent":40},"timeout":10}"#)
        #expect(sent.status == 200 || sent.status == 201, "\(sent)")
        let answer = try JSON.decode(sent.body)
        #expect(text(answer["status"]) == "succeeded", "the device answered within the timeout: \(sent.body)\n\(device.log)")
        // The hub settles the command when it takes the result, which may be before the device has read
        // the answer to its POST.
        #expect(eventually(timeout: 5) { device.log.contains("result 2.04 Changed") }, "\(device.log)")
        #expect(device.log.contains("command open {'percent': 40}"), "\(device.log)")
        // The answer went through the pipeline as well, with its CoAP request's options.
        let commandID = try #require(text(answer["id"]))
        #expect(eventually { hub.lines.contains { text($0["kind"]) == "command_result" && $0["properties"]?["command_id"] == .string(commandID)
                                                  && $0["properties"]?["coap.method"] == .string("POST") && $0["properties"]?["coap.content_format"] == .string("50") } },
                "\(hub.lines)")
        // A command for a device that has not asked yet waits in the hub; once the device fetched its
        // command resource (nothing waited then), the next fetch gets it.
        let queued = hub.call("POST", "/v1/devices/valve-4/commands", #"{"name":"close","timeout":0}"#)
        #expect(queued.status == 200 || queued.status == 201 || queued.status == 202, "\(queued)")
        #expect(try coap(["-m", "get", "coap://127.0.0.1:\(hub.udp)/c/valve-4"]).isEmpty)
        var out = ""
        #expect(eventually(timeout: 5) {
            out = (try? coap(["-m", "get", "coap://127.0.0.1:\(hub.udp)/c/valve-4"])) ?? ""
            return !out.isEmpty
        })
        #expect(out.contains(#""command":"close""#), "\(out)")
        #expect(try coap(["-m", "get", "coap://127.0.0.1:\(hub.udp)/c/valve-4"]).isEmpty, "nothing more waits")
    }
}

/// A UDP socket connected to a port on loopback, for raw datagrams.
final class UDPSocket {
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(port).bigEndian
        let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard r == 0 else { throw PluginError("cannot connect a UDP socket") }
        var timeout = timeval(tv_sec: 3, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    func send(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) } }

    /// The next datagram, or nil after `timeout` seconds.
    func receive(timeout: Double = 3) -> [UInt8]? {
        var t = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - timeout.rounded(.down)) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &t, socklen_t(MemoryLayout<timeval>.size))
        var buf = [UInt8](repeating: 0, count: 2048)
        let n = recv(fd, &buf, buf.count, 0)
        return n > 0 ? Array(buf[..<n]) : nil
    }

    deinit { close(fd) }
}
