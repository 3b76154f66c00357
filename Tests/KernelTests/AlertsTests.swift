import Foundation
import Testing
@testable import IoTCKernel
import IoTCPluginKit

/// Alerts as operators see them: a rule raises, clears and re-raises; the API lists, acknowledges,
/// clears and closes, with who and when; repeats fold into one alert with a count; the book survives
/// a restart of its store file.
@Suite(.serialized) struct AlertsTests {
    static let ownerKey = "iotc_alertstest1_" + String(repeating: "k", count: 40)

    func text(_ v: Value?) -> String? { if case .string(let s)? = v { s } else { nil } }

    /// A hub whose HTTP source at `port` feeds pipeline `t`: JSON decoded, then `steps` (rules), with
    /// `sinks` and any other `pipelines` (YAML lines at their section's level; `$DIR` is the hub's folder).
    func ruleHub(port: Int, sinks: [String], steps: [String], pipelines: [String] = [], anonymous: Bool = true,
                 environment: [String: String] = [:]) throws -> ServedHub {
        try ServedHub(key: Self.ownerKey, pipelineFile: { hub in
            func block(_ lines: [String], _ indent: Int) -> String {
                lines.map { String(repeating: " ", count: indent) + $0.replacingOccurrences(of: "$DIR", with: hub.dir.path) }.joined(separator: "\n")
            }
            return """
                sources:
                  devices: { plugin: http, listen: "127.0.0.1:\(port)" }
                sinks:
                \(block(sinks, 2))
                pipelines:
                  t:
                    from: [ "devices:devices/+/telemetry" ]
                    steps:
                      - decode: json
                \(block(steps, 6))
                \(block(pipelines, 2))
                auth:
                  allow_anonymous: \(anonymous)
                """
        }, environment: environment)
    }

    func alertMessage(_ state: String, key: String, at: Int64) -> CanonicalMessage {
        var m = CanonicalMessage(Message(tenant: "t1", device: key, topic: "alerts/hot"), receivedTime: at)
        m.payload = .value(["rule": "hot", "key": .string(key), "state": .string(state), "at": .int(at), "severity": "minor", "message": "m"])
        return m
    }

    /// Rule state written before it was kept per tenant (rule and key only) is read into the tenant
    /// the state names, or the pipeline files' devices' tenant, and goes on from there.
    @Test func ruleStateOfAnEarlierVersionIsReadPerTenant() throws {
        let dir = TempDir()
        var open = RuleStates.State()
        open.active = true
        open.raisedAt = 5
        var silent = RuleStates.State()
        silent.tenant = "acme"
        silent.lastSeen = 7
        let old = ["hot\u{0}oven-1": open, "quiet\u{0}meter-2": silent]
        let file = URL(fileURLWithPath: dir.path + "/rules.json")
        try JSONEncoder().encode(old).write(to: file)
        let states = RuleStates(file: file)
        #expect(states.active.map { "\($0.rule)/\($0.key)" } == ["hot/oven-1"])
        let rule = RuleConfig(name: "hot", raise: try Expression("true"), holdFor: 0, severity: "major", to: [])
        // The same key in tenant default is the state that was active; in another tenant it is new.
        #expect(states.evaluate(rule, tenant: "default", key: "oven-1", time: 10, raise: { true }, clear: { false }) == nil)
        if case .raised? = states.evaluate(rule, tenant: "other", key: "oven-1", time: 10, raise: { true }, clear: { false }) {} else {
            Issue.record("another tenant's device of the same id raised nothing")
        }
        let quiet = RuleConfig(name: "quiet", raise: try Expression("false"), holdFor: 0, severity: "major", to: [], absent: 1)
        #expect(states.silent(quiet, after: 1, now: 100).map { "\($0.tenant)/\($0.key)" } == ["acme/meter-2"])
    }

    /// The book folds repeats and quick re-raises, opens a new alert after the fold window, and comes
    /// back from its file.
    @Test func foldsRepeatsAndKeepsItsAlertsInItsFile() throws {
        let dir = TempDir()
        let file = URL(fileURLWithPath: dir.path + "/alerts.json")
        let book = AlertBook(file: file, foldWindow: 60_000)
        book.record([alertMessage("raised", key: "k1", at: 1_000), alertMessage("cleared", key: "k1", at: 2_000)])
        book.record([alertMessage("raised", key: "k1", at: 30_000)])  // within a minute of the clear: reopened
        book.record([alertMessage("cleared", key: "k1", at: 40_000), alertMessage("raised", key: "k1", at: 200_000)])  // long after: a new one
        book.record([alertMessage("raised", key: "k2", at: 200_500)])
        let all = book.list(tenant: "t1")
        #expect(all.map(\.key) == ["k2", "k1", "k1"] && all.map(\.count) == [1, 1, 2], "\(all)")
        #expect(all[2].history.map(\.action) == ["raised", "cleared", "reopened", "cleared"])
        #expect(throws: AlertBook.ActionError.notFound) { try book.act(.acknowledge, tenant: "other", id: all[0].id, by: "key:x", at: 1) }
        _ = try book.act(.acknowledge, tenant: "t1", id: all[0].id, by: "key:x", at: 300_000)
        book.save()
        let again = AlertBook(file: file, foldWindow: 60_000)
        #expect(again.list(tenant: "t1") == book.list(tenant: "t1"))
        // New ids continue after the ones on file.
        again.record([alertMessage("raised", key: "k3", at: 400_000)])
        #expect(Set(again.list(tenant: "t1").map(\.id)).count == 4)
    }

    /// Over capacity the book drops to nine tenths, closed alerts first, then cleared, then the oldest;
    /// the alerts left still fold their rule's next transitions.
    @Test func aFullBookDropsClosedThenClearedAlertsFirst() throws {
        let book = AlertBook(file: nil, capacity: 10)
        book.record((0..<8).map { alertMessage("raised", key: "k\($0)", at: Int64($0)) })
        book.record([alertMessage("cleared", key: "k1", at: 20)])
        _ = try book.act(.close, tenant: "t1", id: try #require(book.list(tenant: "t1").first { $0.key == "k2" }).id, by: "key:x", at: 21)
        book.record((8..<11).map { alertMessage("raised", key: "k\($0)", at: Int64($0 + 30)) })  // 11 alerts: over capacity
        let kept = book.list(tenant: "t1", limit: 100).map(\.key)
        #expect(kept.count == 9 && !kept.contains("k2") && !kept.contains("k1"), "\(kept)")
        book.record([alertMessage("cleared", key: "k5", at: 50)])
        #expect(book.list(tenant: "t1", limit: 100).first { $0.key == "k5" }?.state == .cleared)
    }

    /// The alert and its clearing arrive as two e-mails at a real SMTP server (aiosmtpd), over STARTTLS
    /// and after AUTH PLAIN, with the subject and body filled from the alert.
    @Test func anAlertAndItsClearingArriveByMail() throws {
        let http = freePort(), smtp = freePort()
        let certs = TempDir()
        try makeTestCertificates(in: certs)
        let python = Build.packageRoot + "/.venv/bin/python"
        try #require(FileManager.default.isExecutableFile(atPath: python), "no .venv: run scripts/install-deps.sh test")
        let mails = certs.path + "/mails.jsonl"
        let receiver = try ChildProcess(python, ["-u", Build.packageRoot + "/Tests/Support/smtp_receiver.py", "\(smtp)", certs.path + "/cert.pem",
                                                 certs.path + "/key.pem", mails, "alerts@example.com", "s3cret-pass"])
        #expect(eventually(timeout: 20) { receiver.log.contains("ready") }, "\(receiver.log)")
        // Three senders to the same server, for three kinds of recipient.
        func mail(_ name: String, to: String, _ more: [String] = []) -> [String] {
            ["\(name):", "  plugin: smtp", "  server: \"127.0.0.1:\(smtp)\"", "  ca_file: \(certs.path)/cert.pem", "  username: alerts@example.com",
             "  password: \"${env:SMTP_TEST_PASSWORD}\"", "  from: iotc@example.com", "  to: [ \(to) ]"] + more.map { "  " + $0 }
        }
        let hub = try ruleHub(port: http, sinks: mail("mail", to: "ops@example.com, oncall@example.com") + mail("mail-nobody", to: "nobody@example.com")
                                  + mail("mail-later", to: "later@example.com", ["retry: { initial_backoff: 50ms }"]), steps: [
                "- rule: { name: freezer-warm, raise: \"temperature > -10\", clear: \"temperature < -15\", severity: critical, message: \"{msg.device} is at {temperature} °C\", to: [ mail, mail-nobody, mail-later ] }",
            ], environment: ["SMTP_TEST_PASSWORD": "s3cret-pass"])
        #expect(waitForPort(http))
        #expect(postJSON("http://127.0.0.1:\(http)/v1/devices/freezer-1/telemetry", #"{"temperature": -5}"#)?.status == 202)
        #expect(postJSON("http://127.0.0.1:\(http)/v1/devices/freezer-1/telemetry", #"{"temperature": -20}"#)?.status == 202)
        // The greylisting server refuses each mail to later@ once (451, transient): it is sent again.
        #expect(eventually(timeout: 15) { jsonLines(mails).count == 4 }, "\(receiver.log)")
        let got = jsonLines(mails).filter { $0["to"] != ["later@example.com"] }
        #expect(got.count == 2 && jsonLines(mails).filter { $0["to"] == ["later@example.com"] }.count == 2)
        #expect(got.allSatisfy { $0["tls"] == .bool(true) && $0["user"] == "alerts@example.com" && $0["from"] == "iotc@example.com"
                                  && $0["to"] == ["ops@example.com", "oncall@example.com"] }, "\(got)")
        let first = text(got[0]["data"]) ?? "", second = text(got[1]["data"]) ?? ""
        // The subject is not ASCII (°C), so it is an RFC 2047 encoded word; the body is UTF-8.
        let subject = "[critical] freezer-warm raised: freezer-1 is at -5 °C"
        #expect(first.contains("Subject: =?utf-8?B?\(Data(subject.utf8).base64EncodedString())?=") && first.contains("freezer-1 is at -5 °C")
                && first.contains("state: raised"), "\(first)")
        #expect(first.contains(/\r\nDate: (Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d \+0000\r\n/),
                "\(first)")
        #expect(second.contains("state: cleared") && second.contains("freezer-1 is at -20 °C"), "\(second)")
        // The server refuses the other sink's recipient (550): a permanent failure, so both of its mails
        // go straight to the dead-letter store with the server's answer, and nothing is sent through it.
        #expect(eventually(timeout: 10) { (try? JSON.decode(Array(hub.call("GET", "/v1/dead-letters").body.utf8)))?["total"] == .int(2) })
        let dead = hub.call("GET", "/v1/dead-letters").body
        #expect(dead.contains("RCPT TO nobody@example.com: 550"), "\(dead.prefix(600))")
        #expect(dead.contains("mail-nobody"), "\(dead.prefix(600))")
        #expect(jsonLines(mails).count == 4)
        // The alert says which notifications reached their server and which did not.
        let alert = (try? JSON.decode(Array(hub.call("GET", "/v1/alerts?tenant=default").body.utf8)))?["items"]?.array?.first
        let history = alert?["history"]?.array ?? []
        #expect(alert?["failed_notifications"] == 2 && history.filter { $0["action"] == "notification_failed" && $0["sink"] == "mail-nobody" }.count == 2
                && history.filter { $0["action"] == "notified" && $0["sink"] == "mail-later" }.count == 2, "\(history)")
    }

    /// A rule's command action: the device whose alert is raised gets a command (its payload the
    /// alert), here by the HTTP device API's long-poll, and answers it.
    @Test func aRuleSendsTheDeviceACommandWhenItsAlertIsRaised() throws {
        let devicePort = freePort()
        let hub = try ruleHub(port: devicePort, sinks: [
                "to-devices: { plugin: downlink, source: devices }",
            ], steps: [
                "- rule: { name: too-hot, raise: \"temperature > 80\", clear: \"temperature < 75\", command: { name: cool-down, to: [ to-devices ] } }",
            ])
        _ = hub
        #expect(waitForPort(devicePort))
        let base = "http://127.0.0.1:\(devicePort)/v1/devices/oven-3"
        #expect(postJSON(base + "/telemetry", #"{"temperature": 60}"#)?.status == 202)
        #expect(postJSON(base + "/telemetry", #"{"temperature": 85}"#)?.status == 202)
        let polled = try #require(http("GET", base + "/commands?wait=10", timeout: 15))
        #expect(polled.status == 200, "\(polled.body)")
        let command: Value = try JSON.decode(Array(polled.body.utf8))
        let list = command.array ?? [command]
        let first = try #require(list.first)
        #expect(text(first["kind"]) == "command" && text(first["topic"])?.hasPrefix("devices/oven-3/commands/cool-down/") == true
                && first["payload"]?["rule"] == "too-hot" && first["payload"]?["state"] == "raised", "\(polled.body)")
        // The clearing sends none (on: raised is the default).
        #expect(postJSON(base + "/telemetry", #"{"temperature": 70}"#)?.status == 202)
        let none = http("GET", base + "/commands?wait=1", timeout: 5)
        #expect(none?.status == 204, "\(none?.body ?? "")")
    }

    /// A rule's command goes to a device group: every device of the tenant whose registry labels match,
    /// one label taken from the alert's message; each pump long-polls its own.
    @Test func aRuleCommandsADeviceGroupChosenByLabels() throws {
        let devicePort = freePort()
        let hub = try ruleHub(port: devicePort, sinks: [
                "to-devices: { plugin: downlink, source: devices }",
            ], steps: [
                "- rule:",
                "    name: tank-full",
                "    raise: \"level > 95\"",
                "    clear: \"level < 90\"",
                "    command: { name: stop, to: [ to-devices ], group: { site: \"{value.site}\", role: pump } }",
            ], anonymous: false)
        #expect(waitForPort(devicePort))
        var tokens: [String: String] = [:]
        for (id, labels) in [("tank-1", #"{"site": "north", "role": "tank"}"#), ("pump-1", #"{"site": "north", "role": "pump"}"#),
                             ("pump-2", #"{"site": "north", "role": "pump"}"#), ("pump-3", #"{"site": "south", "role": "pump"}"#)] {
            #expect(hub.call("POST", "/v1/devices", #"{"id": "\#(id)", "labels": \#(labels)}"#).status == 201)
            tokens[id] = text(try JSON.decode(hub.call("POST", "/v1/devices/\(id)/credentials", #"{"kind": "token"}"#).body)["token"])
        }
        // A label changed through the API counts at once: pump-2 joins the north site's pumps.
        #expect(hub.call("PATCH", "/v1/devices/pump-2", #"{"labels": {"site": "north", "role": "pump"}}"#).status == 200)
        let base = "http://127.0.0.1:\(devicePort)/v1/devices/"
        #expect(http("POST", base + "tank-1/telemetry", body: Array(#"{"site": "north", "level": 97}"#.utf8),
                     headers: ["Authorization": "Bearer \(tokens["tank-1"] ?? "")", "Content-Type": "application/json"])?.status == 202)
        for pump in ["pump-1", "pump-2"] {
            let polled = try #require(http("GET", base + pump + "/commands?wait=10", headers: ["Authorization": "Bearer \(tokens[pump] ?? "")"], timeout: 15))
            #expect(polled.status == 200, "\(pump): \(polled.body)")
            let got: Value = try JSON.decode(Array(polled.body.utf8))
            let first = (got.array ?? [got]).first
            #expect(text(first?["topic"])?.hasPrefix("devices/\(pump)/commands/stop/") == true && first?["payload"]?["device"] == "tank-1"
                    && first?["payload"]?["state"] == "raised", "\(polled.body)")
        }
        let south = http("GET", base + "pump-3/commands?wait=1", headers: ["Authorization": "Bearer \(tokens["pump-3"] ?? "")"], timeout: 5)
        #expect(south?.status == 204, "\(south?.body ?? "")")
    }

    /// A notification whose sink is down is retried, dead-lettered, and recorded on its alert, with the
    /// sink and the reason; one that was delivered is recorded too.
    @Test func anAlertRecordsThatNotifyingFailed() throws {
        let devicePort = freePort(), closedPort = freePort()
        let hub = try ruleHub(port: devicePort, sinks: [
                "ops: { plugin: webhook, url: \"http://127.0.0.1:\(closedPort)/hooks/ops\", timeout: 1s, retry: { max_attempts: 2, initial_backoff: 50ms } }",
                "log: { plugin: file, path: $DIR/out.jsonl }",
            ], steps: [
                "- rule: { name: hot, raise: \"temperature > 80\", to: [ ops, log ] }",
            ])
        #expect(waitForPort(devicePort))
        #expect(postJSON("http://127.0.0.1:\(devicePort)/v1/devices/oven-5/telemetry", #"{"temperature": 90}"#)?.status == 202)
        func alert() -> Value? { (try? JSON.decode(Array(hub.call("GET", "/v1/alerts?tenant=default").body.utf8)))?["items"]?.array?.first }
        #expect(eventually(timeout: 10) { alert()?["failed_notifications"] == 1 }, "\(alert() ?? .null)")
        let history = alert()?["history"]?.array ?? []
        let failed = history.first { $0["action"] == "notification_failed" }
        #expect(failed?["sink"] == "ops" && text(failed?["reason"])?.contains("gave up after 2 attempts") == true, "\(history)")
        #expect(history.contains { $0["action"] == "notified" && $0["sink"] == "log" }, "\(history)")
        let dead: Value? = try? JSON.decode(Array(hub.call("GET", "/v1/dead-letters").body.utf8))
        #expect(dead?["items"]?.array?.contains { $0["sink"] == "ops" } == true, "\(dead ?? .null)")
    }

    /// A chat webhook (the JSON Slack and Teams take) gets the alert as one line of text.
    @Test func anAlertReachesAChatWebhook() throws {
        let devicePort = freePort(), receiverPort = freePort()
        let dir = TempDir()
        let receiver = try ChildProcess("/usr/bin/env", ["python3", Build.packageRoot + "/Tests/Support/webhook_receiver.py", "\(receiverPort)", dir.path + "/requests.jsonl"])
        #expect(waitForPort(receiverPort), "\(receiver.log)")
        let hub = try ruleHub(port: devicePort, sinks: [
                "chat: { plugin: webhook, url: \"http://127.0.0.1:\(receiverPort)/hooks/ops\", format: chat }",
            ], steps: [
                "- rule: { name: hot, raise: \"temperature > 80\", severity: minor, message: \"{msg.device} at {temperature}\", to: [ chat ] }",
            ])
        _ = hub
        #expect(waitForPort(devicePort))
        #expect(postJSON("http://127.0.0.1:\(devicePort)/v1/devices/oven-4/telemetry", #"{"temperature": 81}"#)?.status == 202)
        #expect(eventually { jsonLines(dir.path + "/requests.jsonl").count == 1 })
        let request = try #require(jsonLines(dir.path + "/requests.jsonl").first)
        let body = try JSON.decode(Base64.decode(text(request["body_base64"]) ?? "") ?? [])
        #expect(body == ["text": "[minor] hot raised: oven-4 at 81"] && request["headers"]?["content-type"] == "application/json", "\(request)")
    }

    /// A timer source fires on its grid into a pipeline; iotc check locates a bad cron expression.
    @Test func timersFireIntoPipelinesAndBadSchedulesAreLocated() throws {
        let hub = try ServedHub(key: Self.ownerKey) { hub in """
            sources:
              schedule:
                plugin: timer
                timers:
                  - { name: heartbeat, every: 300ms, payload: { job: check } }
                  - { name: nightly, cron: "0 2 * * *" }
            sinks:
              out: { plugin: file, path: \(hub.dir.path)/out.jsonl }
            pipelines:
              jobs: { from: [ "schedule:timers/+" ], to: [ out ] }
            """ }
        #expect(eventually(timeout: 5) { hub.lines.count >= 3 })
        let ticks = hub.lines
        #expect(ticks.prefix(3).map { $0["payload"]?["count"] } == [1, 2, 3] && ticks[0]["payload"]?["job"] == "check"
                && ticks[0]["topic"] == "timers/heartbeat" && ticks[0]["kind"] == "event", "\(ticks)")
        let at = ticks.prefix(3).compactMap { $0["payload"]?["at"]?.number }
        #expect(at.count == 3 && at[1] - at[0] == 300 && at[2] - at[1] == 300, "\(at)")

        let dir = TempDir()
        let file = dir.write("bad.yaml", """
            sources:
              schedule:
                plugin: timer
                timers:
                  - { name: a, cron: "0 25 * * *" }
                  - { name: b }
            """)
        let (code, out) = try run(Build.iotc, ["check", file, "--plugins", Build.directory])
        #expect(code != 0 && out.contains("bad.yaml:5:26: error: source 'schedule': hour: 25 is outside 0-23")
                && out.contains("bad.yaml:6:9: error: source 'schedule': timer 'b' needs every or cron"), "\(out)")
    }

    /// An alert writes an attribute of its device: the rule hands its alerts to a pipeline that maps
    /// them to `{"alarm": state}` for the attributes sink; the device reads its new configuration.
    @Test func anAlertWritesAnAttributeOfItsDevice() throws {
        let devicePort = freePort()
        let hub = try ruleHub(port: devicePort, sinks: [
                "to-flags: { plugin: pipeline, pipeline: flags }",
                "set-attributes: { plugin: attributes }",
            ], steps: [
                "- rule: { name: hot, raise: \"temperature > 80\", clear: \"temperature < 75\", to: [ to-flags ] }",
            ], pipelines: [
                "flags:",
                "  from: []",
                "  steps:",
                "    - decode: json",
                "    - map: { alarm: \"state\", alarm_rule: \"rule\" }",
                "  to: [ set-attributes ]",
            ], anonymous: false)
        #expect(waitForPort(devicePort))
        #expect(hub.call("POST", "/v1/devices", #"{"id": "oven-8"}"#).status == 201)
        #expect(hub.call("PUT", "/v1/devices/oven-8/attributes", #"{"setpoint": 70}"#).status == 200)
        let token = try #require(text(try JSON.decode(hub.call("POST", "/v1/devices/oven-8/credentials", #"{"kind": "token"}"#).body)["token"]))
        func post(_ t: Int) {
            #expect(http("POST", "http://127.0.0.1:\(devicePort)/v1/devices/oven-8/telemetry", body: Array(#"{"temperature": \#(t)}"#.utf8),
                         headers: ["Authorization": "Bearer \(token)", "Content-Type": "application/json"])?.status == 202)
        }
        func attributes() -> Value? { try? JSON.decode(Array(hub.call("GET", "/v1/devices/oven-8/attributes").body.utf8)) }
        post(90)
        #expect(eventually { attributes()?["alarm"] == "raised" }, "\(attributes() ?? .null)")
        #expect(attributes() == ["setpoint": 70, "alarm": "raised", "alarm_rule": "hot"])
        // The device reads it as its configuration, from the hub's memory.
        let fetched = http("GET", "http://127.0.0.1:\(devicePort)/v1/devices/oven-8/attributes", headers: ["Authorization": "Bearer \(token)"])
        #expect(fetched.flatMap { try? JSON.decode(Array($0.body.utf8)) }?["alarm"] == "raised", "\(fetched?.body ?? "")")
        post(70)
        #expect(eventually { attributes()?["alarm"] == "cleared" })
    }

    /// Messages for one device merge into its attributes one after another: none of their fields is
    /// lost to another message's write, even when they come at once, and the last value of a field wins.
    @Test func attributesMergeEveryMessageInOrder() throws {
        let devicePort = freePort()
        let hub = try ruleHub(port: devicePort, sinks: [
                "set-attributes: { plugin: attributes }",
            ], steps: [], pipelines: [
                "attrs:",
                "  from: [ \"devices:devices/+/telemetry\" ]",
                "  steps: [ { decode: json } ]",
                "  to: [ set-attributes ]",
            ])
        #expect(waitForPort(devicePort))
        #expect(hub.call("POST", "/v1/devices?tenant=default", #"{"id": "valve-9"}"#).status == 201)
        // Eight senders at once, so that messages for the device arrive while others are being written.
        let count = 80
        DispatchQueue.concurrentPerform(iterations: 8) { sender in
            for i in stride(from: sender, to: count, by: 8) {
                _ = postJSON("http://127.0.0.1:\(devicePort)/v1/devices/valve-9/telemetry", #"{"k\#(i)": \#(i)}"#)
            }
        }
        func attributes() -> Value? { try? JSON.decode(Array(hub.call("GET", "/v1/devices/valve-9/attributes?tenant=default").body.utf8)) }
        // In the order they came: the last of a sequence sent by one sender wins.
        for i in 0..<20 {
            #expect(postJSON("http://127.0.0.1:\(devicePort)/v1/devices/valve-9/telemetry", #"{"seq": \#(i)}"#)?.status == 202)
        }
        #expect(eventually { attributes()?["seq"] == .int(19) })
        Thread.sleep(forTimeInterval: 0.5)
        let final = attributes()
        let missing = (0..<count).filter { final?["k\($0)"] != .int(Int64($0)) }
        #expect(missing.isEmpty, "fields lost: \(missing)")
        #expect(final?["seq"] == .int(19), "\(final ?? .null)")
    }

    @Test func theAPIFollowsAnAlertThroughItsLifecycle() throws {
        let http = freePort()
        let hub = try ruleHub(port: http, sinks: [
                "alerts: { plugin: file, path: $DIR/alerts.jsonl }",
            ], steps: [
                "- rule: { name: hot, raise: \"temperature > 80\", clear: \"temperature < 75\", severity: critical, message: \"{msg.device} at {temperature}\", to: [ alerts ] }",
                "- rule: { name: quiet, raise: \"temperature < 0\" }",
            ])
        func post(_ t: Int) { #expect(postJSON("http://127.0.0.1:\(http)/v1/devices/oven-1/telemetry", #"{"temperature": \#(t)}"#)?.status == 202) }
        func alerts(_ query: String = "") throws -> [Value] {
            try JSON.decode(Array(hub.call("GET", "/v1/alerts?tenant=default\(query)").body.utf8))["items"]?.array ?? []
        }
        #expect(waitForPort(http))
        post(90)
        #expect(eventually { (try? alerts())?.count == 1 })
        var a = try #require(try alerts().first)
        let id = try #require(text(a["id"]))
        #expect(a["state"] == "active" && a["rule"] == "hot" && a["key"] == "oven-1" && a["severity"] == "critical" && a["message"] == "oven-1 at 90"
                && a["count"] == .int(1), "\(a)")
        // An operator acknowledges it: who and when are in its history.
        let r = hub.call("POST", "/v1/alerts/\(id)/acknowledge?tenant=default")
        #expect(r.status == 200, "\(r.body)")
        a = try JSON.decode(Array(r.body.utf8))
        let acknowledged = a["history"]?.array?.last { $0["action"] == "acknowledged" }
        #expect(a["state"] == "acknowledged" && text(acknowledged?["by"])?.hasPrefix("key:") == true, "\(a)")
        #expect(hub.call("POST", "/v1/alerts/\(id)/acknowledge?tenant=default").status == 409)
        // The rule clears it; a raise soon after reopens the same alert with a count.
        post(70)
        #expect(eventually { (try? alerts("&state=cleared"))?.count == 1 })
        post(95)
        #expect(eventually { (try? alerts("&state=active"))?.first?["count"] == .int(2) })
        #expect(try alerts().count == 1)
        a = try JSON.decode(Array(hub.call("GET", "/v1/alerts/\(id)?tenant=default").body.utf8))
        // Its notifications' outcomes are in its history too (each transition reached the file sink).
        let actions = a["history"]?.array?.compactMap { text($0["action"]) } ?? []
        #expect(actions.filter { $0 != "notified" } == ["raised", "acknowledged", "cleared", "reopened"], "\(a)")
        #expect(eventually { (try? JSON.decode(Array(hub.call("GET", "/v1/alerts/\(id)?tenant=default").body.utf8)))?["history"]?.array?
            .filter { $0["action"] == "notified" }.count == 3 }, "\(a)")
        // Closed, it takes no more actions, and the rule's next raise is a new alert.
        #expect(hub.call("POST", "/v1/alerts/\(id)/close?tenant=default").status == 200)
        #expect(hub.call("POST", "/v1/alerts/\(id)/clear?tenant=default").status == 409)
        post(70)
        post(99)
        #expect(eventually { (try? alerts())?.count == 2 })
        #expect(try alerts("&state=closed").map { text($0["id"]) } == [id])
        // A rule without sinks still records its alerts; filters and unknown ids.
        post(-5)
        #expect(eventually { (try? alerts("&rule=quiet"))?.count == 1 })
        #expect(hub.call("GET", "/v1/alerts/al999?tenant=default").status == 404)
        #expect(hub.call("GET", "/v1/alerts?tenant=default&state=bogus").status == 400)
        // The alert messages went to the sink too, and the actions are audited.
        #expect(jsonLines(hub.dir.path + "/alerts.jsonl").compactMap { text($0["payload"]?["state"]) } == ["raised", "cleared", "raised", "cleared", "raised", "cleared"])
        let audit = hub.call("GET", "/v1/audit?limit=50").body
        #expect(audit.contains("alert.acknowledge") && audit.contains("alert.close"), "\(audit.prefix(400))")
    }
}
