import Foundation
import Testing
import IoTCPluginKit

/// A device's profile limits the topics it may publish to, over HTTP and CoAP as over MQTT. The HTTP
/// and CoAP sources reuse the hub's answer for a topic they asked about a moment ago on the same
/// connection or endpoint; these tests show that a refusal still holds there, and an allowed topic
/// stays allowed around it.
@Suite(.serialized) struct ProfileAccessTests {
    @Test func aProfileLimitsWhatADevicePublishesOverHTTPAndCoAP() throws {
        let dir = TempDir()
        let apiPort = freePort(), httpPort = freePort(), coapPort = freePort()
        let out = dir.path + "/out.jsonl"
        let file = dir.write("hub.yaml", """
            sources:
              web: { plugin: http, listen: "127.0.0.1:\(httpPort)" }
              udp: { plugin: coap, listen: "127.0.0.1:\(coapPort)" }
            sinks:
              out: { plugin: file, path: "\(out)" }
            pipelines:
              all: { from: [ web, udp ], to: [ out ] }
            access:
              profiles:
                sensor: { publish: [ "devices/{device}/telemetry" ] }
            """)
        let hub = try ProcessTests().serve(file, data: dir.path + "/data", api: apiPort)
        defer { hub.stop() }
        #expect(eventually { http("GET", "http://127.0.0.1:\(apiPort)/health")?.status == 200 }, "hub did not start: \(hub.log)")
        let api = TenantIsolationTests.Caller(port: apiPort)
        func call(_ method: String, _ path: String, _ body: String) -> HTTPResult { api(method, path, key: ProcessTests.ownerKey, body) }
        var tokens: [String: String] = [:]
        for (device, profile) in [("meter-1", "sensor"), ("pump-1", "default")] {
            #expect(call("POST", "/v1/devices", #"{"id": "\#(device)", "profile": "\#(profile)"}"#).status == 201)
            let issued = call("POST", "/v1/devices/\(device)/credentials", #"{"kind": "token"}"#)
            tokens[device] = try #require((try? JSON.decode(issued.body))?["token"]?.string, "\(issued.body)")
        }

        // HTTP, one keep-alive connection: telemetry twice, an event (refused), telemetry again.
        let s = try #require(RawSocket(port: httpPort))
        func post(_ device: String, _ kind: String, _ body: String) -> String {
            s.send("POST /v1/devices/\(device)/\(kind) HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(tokens[device]!)\r\n"
                   + "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
            return String(s.readResponses(1).first?.prefix(12) ?? "")
        }
        #expect(eventually(timeout: 10) { post("meter-1", "telemetry", #"{"n":0}"#) == "HTTP/1.1 202" }, "the registry did not reach the hub: \(hub.log.suffix(2000))")
        let answers = [post("meter-1", "telemetry", #"{"n":1}"#), post("meter-1", "events", #"{"n":2}"#),
                       post("meter-1", "telemetry", #"{"n":3}"#), post("meter-1", "events", #"{"n":4}"#)]
        #expect(answers == ["HTTP/1.1 202", "HTTP/1.1 403", "HTTP/1.1 202", "HTTP/1.1 403"])
        // A device of another profile may send events.
        #expect(postJSON("http://127.0.0.1:\(httpPort)/v1/devices/pump-1/events", #"{"n":5}"#, token: tokens["pump-1"]!)?.status == 202)

        // CoAP with the device's token: telemetry is taken, an event refused with 4.03.
        let base = "coap://127.0.0.1:\(coapPort)"
        var reply = try coapClient(["-m", "post", "-t", "json", "-e", #"{"n":6}"#, "\(base)/t/meter-1?token=\(tokens["meter-1"]!)", "-v", "7"])
        #expect(reply.contains("c:2.04"), "\(reply)")
        reply = try coapClient(["-m", "post", "-t", "json", "-e", #"{"n":7}"#, "\(base)/e/meter-1?token=\(tokens["meter-1"]!)", "-v", "7"])
        #expect(reply.contains("4.03"), "\(reply)")

        #expect(eventually { jsonLines(out).count >= 5 })
        usleep(300_000)
        let taken = jsonLines(out).map { "\($0["device"]?.string ?? "")/\($0["kind"]?.string ?? "")/\($0["payload"]?["n"]?.number.map { Int($0) } ?? -1)" }
        #expect(taken.sorted() == ["meter-1/telemetry/0", "meter-1/telemetry/1", "meter-1/telemetry/3", "meter-1/telemetry/6", "pump-1/event/5"], "\(taken)")
    }
}
