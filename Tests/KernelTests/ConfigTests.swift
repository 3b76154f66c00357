import Foundation
import Testing
@testable import IoTCKernel
import IoTCPluginKit
import Logging

/// A catalog with a source and a sink, so that config checks run without loading plugins.
let testCatalog = ComponentCatalog([
    .init(name: "http", kind: .source, plugin: "http", summary: "", description: "", fields: [
        ConfigField("listen", .string, "address", default: #""0.0.0.0:8081""#),
        ConfigField("max_body_size", .byteSize, "limit", default: "1024"),
    ]),
    .init(name: "webhook", kind: .sink, plugin: "webhook", summary: "", description: "", fields: [
        ConfigField("url", .string, "url", required: true),
        ConfigField("secret", .string, "key", secret: true),
        ConfigField("timeout", .duration, "timeout", default: "10"),
        ConfigField("mode", .string, "mode", default: #""a""#, options: ["a", "b"]),
    ]),
])

@Suite struct ConfigTests {
    func load(_ yaml: String, env: [String: String] = [:], catalog: ComponentCatalog = testCatalog) throws(ConfigurationError) -> HubConfig {
        try HubConfigLoader(catalog: catalog, environment: env).load(texts: [("site.yaml", yaml)]).0
    }

    /// The errors of `yaml` as the loader words them (`catalog`: the plugins it knows; the real ones
    /// for their own checks).
    func errors(_ yaml: String, env: [String: String] = [:], catalog: ComponentCatalog = testCatalog) -> [String] {
        do {
            _ = try load(yaml, env: env, catalog: catalog)
            return []
        } catch {
            return error.diagnostics.filter { $0.severity == .error }.map(\.description)
        }
    }

    let valid = """
        sources:
          devices: { plugin: http, listen: "127.0.0.1:9000" }
        sinks:
          hook: { plugin: webhook, url: "http://127.0.0.1:1/x", secret: "${env:HOOK_SECRET}", timeout: 250ms, retry: { max_attempts: 3 } }
        pipelines:
          telemetry:
            from: [ "devices:devices/+/telemetry" ]
            durable: true
            steps:
              - decode: json
              - map: { temperature_c: "(temperature - 32) / 1.8", meta.site: "'line-1'", location.lat: "lat" }
              - filter: "temperature_c > -50"
              - route:
                  - { topic: "devices/+/alarm", to: [hook] }
            to: [ hook ]
        """

    @Test func readsLimitsAndRefusesNegativeOnes() throws {
        let c = try load("limits: { device_messages_per_second: 5, api_requests_per_second: 2.5, api_burst: 10 }\n")
        #expect(c.limits.deviceMessagesPerSecond == 5 && c.limits.deviceBurst == 0)
        #expect(c.limits.apiRequestsPerSecond == 2.5 && c.limits.apiBurst == 10)
        let e = errors("limits:\n  device_burst: -1\n")
        #expect(e.count == 1 && e[0].hasPrefix("site.yaml:2:17: error: limits.device_burst cannot be negative"), "\(e)")
        #expect(errors("limits: { device_rate: 1 }\n") == ["site.yaml:1:11: error: unknown field 'device_rate' in limits (known fields: api_burst, api_requests_per_second, device_burst, device_messages_per_second)"])
    }

    @Test func readsTopicAccessPerProfile() throws {
        let c = try load("""
            access:
              profiles:
                gateway: { publish: [ "devices/+/telemetry", "gateways/{device}/#" ], subscribe: [ "devices/+/commands/#" ] }
                sensor: { publish: [ "devices/{device}/telemetry" ] }
            """)
        let access = c.access
        #expect(access.mayPublish(profile: "gateway", device: "gw-1", topic: "devices/pump-9/telemetry"))
        #expect(access.mayPublish(profile: "gateway", device: "gw-1", topic: "gateways/gw-1/status"))
        #expect(!access.mayPublish(profile: "gateway", device: "gw-1", topic: "gateways/gw-2/status"))
        #expect(access.maySubscribe(profile: "gateway", device: "gw-1", filter: "devices/pump-9/commands/#"))
        #expect(!access.maySubscribe(profile: "gateway", device: "gw-1", filter: "devices/#"))
        // Only what is listed; a subscription list left out is the device's own topics.
        #expect(access.mayPublish(profile: "sensor", device: "s1", topic: "devices/s1/telemetry"))
        #expect(!access.mayPublish(profile: "sensor", device: "s1", topic: "devices/s1/events"))
        #expect(access.maySubscribe(profile: "sensor", device: "s1", filter: "devices/s1/commands/+"))
        // Profiles not listed get the device's own topics.
        #expect(access.mayPublish(profile: "other", device: "d", topic: "devices/d/x") && !access.mayPublish(profile: "other", device: "d", topic: "devices/e/x"))
        let e = errors("access:\n  profiles:\n    p: { publish: [ \"a/#/b\" ] }\n")
        #expect(e.count == 1 && e[0].hasPrefix("site.yaml:3:21: error: access.profiles.p.publish: 'a/#/b' is not a topic filter"), "\(e)")
        #expect(errors("access: { profile: {} }\n").first?.contains("did you mean 'profiles'") == true, "\(errors("access: { profile: {} }\n"))")
    }

    @Test func loadsAValidFile() throws {
        let c = try load(valid, env: ["HOOK_SECRET": "s3cret"])
        #expect(c.sources.map(\.name) == ["devices"])
        let hook = try #require(c.sink("hook"))
        #expect(hook.config["secret"] == .string("s3cret"))
        #expect(hook.config["timeout"] == .double(0.25))
        #expect(hook.config["mode"] == .string("a"))
        #expect(hook.config["retry"] == nil)
        #expect(hook.delivery.maxAttempts == 3)
        let p = try #require(c.pipelines.first)
        #expect(p.durable)
        #expect(p.from.first?.filter?.text == "devices/+/telemetry")
        #expect(p.steps.map(\.name) == ["decode", "map", "filter", "route"])
    }

    @Test func reportsEveryProblemWithItsLocation() {
        let e = errors("""
            sources:
              devices: { plugin: htp }
            sinks:
              hook: { plugin: webhook, urll: "x", timeout: soon, mode: c }
            pipelines:
              p:
                from: [ devcies ]
                steps:
                  - decode: jsn
                  - filter: "temperature >"
                to: [ hok ]
                durabel: true
            """)
        #expect(e == [
            "site.yaml:2:22: error: unknown source plugin 'htp' (did you mean 'http'?)",
            "site.yaml:4:9: error: sink 'hook' needs field 'url'",
            "site.yaml:4:28: error: unknown field 'urll' in sink 'hook' (did you mean 'url'?)",
            "site.yaml:4:48: error: field 'timeout' of sink 'hook' is not a duration: 'soon' (write it like 250ms, 5s, 1m or 2h)",
            "site.yaml:4:60: error: field 'mode' of sink 'hook' cannot be 'c' (one of: a, b)",
            "site.yaml:7:13: error: pipeline 'p' reads from undefined source 'devcies' (did you mean 'devices'?)",
            "site.yaml:9:17: error: unknown codec 'jsn' in step 'decode' of pipeline 'p' (did you mean 'json'?)",
            "site.yaml:10:31: error: invalid expression in step 'filter' of pipeline 'p': expected a value but the expression ended",
            "site.yaml:11:11: error: pipeline 'p' 'to' names undefined sink 'hok' (did you mean 'hook'?)",
            "site.yaml:12:5: error: unknown field 'durabel' in pipeline 'p' (did you mean 'durable'?)",
        ])
    }

    /// A plugin's own checks (`iotc_component.check`) come back through the ABI with the path of the
    /// field concerned, which the loader turns into that field's place in the file; its notes (here the
    /// Modbus read plan) stay out of the errors and warnings.
    @Test func locatesAPluginsOwnFindingsAtTheFieldTheyConcern() throws {
        let e = errors("""
            sources:
              plant:
                plugin: modbus
                devices:
                  - device: meter-1
                    tcp: 127.0.0.1:5020
                    registers:
                      - { name: power, address: 0, type: float32 }
                      - { name: status, address: 1 }
                  - device: meter-2
                    unit: 300
                    tcp: 127.0.0.1:5020
                    groups:
                      - name: slow
                        registers: [ { name: flags, address: 7, bit: 15, bits: 2 } ]
            """, catalog: Build.plugins.catalog)
        #expect(e == [
            "site.yaml:9:38: error: source 'plant': 'status' (holding registers 1–1) overlaps 'power' (0–1) (each register or bit belongs to one value, except disjoint bit fields of one register)",
            "site.yaml:11:15: error: source 'plant': unit 300 is out of range 0 to 255",
            "site.yaml:15:68: error: source 'plant': a 2-bit field from bit 15 does not fit in a 16-bit register",
        ])
        let config = try HubConfigLoader(catalog: Build.plugins.catalog).load(texts: [("site.yaml", """
            sources:
              plant:
                plugin: modbus
                devices:
                  - { device: meter-1, tcp: "127.0.0.1:5020", registers: [ { name: power, address: 0, type: float32 }, { name: status, address: 2 } ] }
            """)])
        #expect(config.1.isEmpty)
        #expect(config.0.notes.map(\.description) == [
            "site.yaml:5:9: note: source 'plant': device 'meter-1' group 'default' every 10s: 1 read: holding registers 0–2 (power, status)",
        ])
    }

    @Test func warnsOfARuleThatCanNeverFire() throws {
        let (_, warnings) = try HubConfigLoader(catalog: Build.plugins.catalog).load(texts: [("site.yaml", """
            sources:
              devices: { plugin: http }
            pipelines:
              p:
                from: [ devices ]
                steps:
                  - rule: { name: never, raise: "1 > 2" }
                  - rule: { name: sometimes, raise: "temperature > 2" }
            """)])
        #expect(warnings.map(\.description) == ["site.yaml:7:37: warning: rule 'never' in step 'rule' of pipeline 'p' can never fire: its raise condition is always false"])
    }

    /// Where the payload's fields are known (declared by `fields`, or made by a map step), a step that
    /// reads another is warned of at the field's column; reads guarded by has() or ?? are not.
    @Test func warnsOfFieldsTheMessagesDoNotCarry() throws {
        let (_, warnings) = try HubConfigLoader(catalog: Build.plugins.catalog).load(texts: [("site.yaml", """
            sources:
              devices: { plugin: http }
            pipelines:
              declared:
                from: [ devices ]
                fields: [ temperature, door ]
                steps:
                  - decode: json
                  - filter: "has(payload, 'humidity') and humidity > 0"
                  - rule: { name: warm, raise: "temprature > -10", message: "at {tempreture} ({humidity ?? 0})" }
                  - rule: { name: avg, window: { over: 1m, of: "temperature" }, raise: "window.avg > 3 and door == 'open'" }
                  - set: { doubled: "temperature * 2" }
                  - filter: "doubled > 1"
                  - encode: json
                  - filter: "anything"
              mapped:
                from: [ devices ]
                steps:
                  - map: { temp_c: "(temperature - 32) / 1.8" }
                  - rule: { name: hot, raise: "temperature > 30" }
              unknown:
                from: [ devices ]
                steps:
                  - rule: { name: any, raise: "whatever > 1" }
            """)])
        #expect(warnings.map(\.description) == [
            "site.yaml:10:37: warning: step 'rule' of pipeline 'declared' reads field 'temprature', which the messages here do not carry: it would be an error on every message (did you mean 'temperature'?)",
            "site.yaml:10:70: warning: step 'rule' of pipeline 'declared' reads field 'tempreture', which the messages here do not carry: it would be an error on every message (did you mean 'temperature'?)",
            "site.yaml:20:36: warning: step 'rule' of pipeline 'mapped' reads field 'temperature', which the messages here do not carry: it would be an error on every message (they carry temp_c (the map step at 19:9))",
        ], "\(warnings)")
    }

    @Test func locatesMistakesInRuleSteps() {
        let e = errors("""
            sources:
              devices: { plugin: http }
            sinks:
              ops: { plugin: webhook, url: "https://ops.example.com" }
            pipelines:
              p:
                from: [ devices ]
                steps:
                  - rule: { name: hot, raise: "temperature >", severity: urgent, to: [ opps ] }
                  - rule: { name: cold, raise: "temperature < 0", message: "now {temperature +} C", for: soon }
                  - rule: { raise: "true" }
                to: [ ops ]
            """)
        #expect(e == [
            "site.yaml:9:49: error: invalid expression in step 'rule' of pipeline 'p': expected a value but the expression ended",
            "site.yaml:9:62: error: field 'severity' of step 'rule' of pipeline 'p' cannot be 'urgent' (one of: critical, major, minor, warning, info)",
            "site.yaml:9:76: error: step 'rule' of pipeline 'p' names undefined sink 'opps' (did you mean 'ops'?)",
            "site.yaml:10:83: error: invalid template in step 'rule' of pipeline 'p': expected a value but the expression ended",
            "site.yaml:10:94: error: field 'for' of step 'rule' of pipeline 'p' is not a duration: 'soon' (write it like 250ms, 5s, 1m or 2h)",
            "site.yaml:11:15: error: step 'rule' of pipeline 'p' needs field 'name' (for example name: freezer-warm)",
        ])
    }

    @Test func reportsYAMLSyntaxErrors() {
        #expect(errors("sources:\n  a: [1,\n").first?.hasPrefix("site.yaml:3:1: error: invalid YAML") == true)
        #expect(errors("sources:\n  a: { plugin: http }\n  a: { plugin: http }\n").first?.contains("duplicate key 'a'") == true)
        #expect(errors("- just\n- a list\n") == ["site.yaml:1:1: error: a pipeline file should be a mapping with sources, sinks and pipelines"])
        #expect(errors("sorces: {}\n") == ["site.yaml:1:1: error: unknown section 'sorces' (did you mean 'sources'?)"])
    }

    /// Log records are written one per line: line breaks and other control characters that they quote
    /// are escaped, in the message and in metadata; other text is left as it is.
    @Test func logRecordsStayOnOneLine() {
        #expect(OneLineLogHandler.oneLine("a\nb\rc\u{0}d\u{1B}[0m\u{85}\u{2028}\u{2029}\u{7F}") == "a\\nb\\rc\\u{0}d\\u{1B}[0m\\u{85}\\u{2028}\\u{2029}\\u{7F}")
        #expect(OneLineLogHandler.oneLine("tab\tand é, 漢字 and \\n as written") == "tab\tand é, 漢字 and \\n as written")
        let capture = LogCapture()
        var logger = Logger(label: "t") { _ in OneLineLogHandler(capture) }
        logger[metadataKey: "client"] = "c\nd"
        logger.warning("user 'u\nFORGED'", metadata: ["topic": "t\n1", "list": ["x\ny"]])
        let e = capture.events.first
        #expect(capture.events.count == 1 && e?.message.description == "user 'u\\nFORGED'")
        #expect(e?.metadata?["topic"] == .string("t\\n1") && e?.metadata?["list"] == .array([.string("x\\ny")]))
        #expect(capture.metadata["client"] == .string("c\\nd"))
    }

    /// What a reference brings in (any file the hub can read, any of its environment) and what a secret
    /// field holds never shows in a message: not the value whole, not a line of it, not a part cut
    /// short; nothing else is hidden.
    @Test func messagesConcealReferencedAndSecretValues() throws {
        var c = Concealed()
        c.add("root:x:0:0:root:/root:/bin/bash\nsystemd-timesync:x:997:997:systemd Time Synchronization")
        c.add("pässwörd")
        c.add("abcd")
        c.add("xyz")
        #expect(c("listen address 'root:x:0:0:root:/root:/bin/bash\nsystemd-timesync:x:997:997:systemd Time Synchron' is bad")
                == "listen address '…' is bad")
        #expect(c("line 2: systemd-timesync:x:997") == "line 2: …")
        #expect(c("a pässwörd!") == "a …!")
        #expect(c("abcd and abc and xyz") == "… and abc and xyz")
        #expect(c("nothing here") == "nothing here" && Concealed()("root:x:0:0:root") == "root:x:0:0:root")
        // Through the loader: a duration from the environment that is not one is not quoted back.
        let e = errors("""
            sources:
              devices: { plugin: http, listen: "127.0.0.1:9000" }
            sinks:
              hook: { plugin: webhook, url: "http://127.0.0.1:1/x", timeout: "${env:T}" }
            pipelines:
              p: { from: [ devices ], to: [ hook ] }
            """, env: ["T": "top-secret-value"])
        #expect(e == ["site.yaml:4:66: error: field 'timeout' of sink 'hook' is not a duration: '…' (write it like 250ms, 5s, 1m or 2h)"], "\(e)")
        // A plugin's own check that quotes the value (the LwM2M source's observe paths).
        let found = errors("""
            sources:
              things: { plugin: lwm2m, listen: "127.0.0.1:9000", observe: [ "${env:P}" ] }
            sinks:
              out: { plugin: log }
            pipelines:
              p: { from: [ things ], to: [ out ] }
            """, env: ["P": "/etc/shadow-contents"], catalog: Build.plugins.catalog)
        #expect(found.count == 1 && found[0].contains("'…' is not an LwM2M path") && !found[0].contains("shadow"), "\(found)")
        let hub = try load("""
            sources:
              devices: { plugin: http, listen: "127.0.0.1:9000" }
            sinks:
              hook: { plugin: webhook, url: "${env:URL}", secret: "${env:S}" }
            pipelines:
              p: { from: [ devices ], to: [ hook ] }
            """, env: ["URL": "http://127.0.0.1:1/private-path", "S": "shared-secret"])
        let concealed = try #require(hub.sink("hook")?.concealed)
        #expect(concealed("POST http://127.0.0.1:1/private-path failed, signed with shared-secret") == "POST … failed, signed with …")
    }

    /// Names become file names under the data folder (a pipeline's write-ahead log and rule state):
    /// one that could climb out of it, or break a `source:filter` reference, is refused at the name.
    @Test func refusesNamesThatAreNotPlainNames() {
        let hint = "(1 to 64 letters, digits, '_', '-' and '.', not starting with '.')"
        #expect(errors("""
            sources:
              "../up": { plugin: http, listen: "127.0.0.1:9000" }
              "a:b": { plugin: http, listen: "127.0.0.1:9001" }
              ok-1.x_2: { plugin: http, listen: "127.0.0.1:9002" }
            sinks:
              "a/b": { plugin: webhook, url: "http://127.0.0.1:1/x" }
              ".hidden": { plugin: webhook, url: "http://127.0.0.1:1/x" }
            pipelines:
              "../../../tmp/evil": { from: [ ok-1.x_2 ], durable: true, to: [ "a/b" ] }
              "\(String(repeating: "p", count: 65))": { from: [ ok-1.x_2 ], to: [ "a/b" ] }
            """).filter { !$0.contains("undefined") } == [
            "site.yaml:2:3: error: '../up' is not a valid source name \(hint)",
            "site.yaml:3:3: error: 'a:b' is not a valid source name \(hint)",
            "site.yaml:6:3: error: 'a/b' is not a valid sink name \(hint)",
            "site.yaml:7:3: error: '.hidden' is not a valid sink name \(hint)",
            "site.yaml:9:3: error: '../../../tmp/evil' is not a valid pipeline name \(hint)",
            "site.yaml:10:3: error: '\(String(repeating: "p", count: 64))' is not a valid pipeline name \(hint)",
        ])
    }

    /// Aliases repeat their anchor's steps; nested aliases that would stand for billions of nodes
    /// ("billion laughs", 9^9 here) are refused with a located error instead of being expanded.
    @Test func takesAliasesButNotAliasBombs() throws {
        let c = try load("""
            sources:
              devices: { plugin: http, listen: "127.0.0.1:9000" }
            sinks:
              out: { plugin: webhook, url: "http://127.0.0.1:1/x" }
            pipelines:
              a: { from: [ "devices:a/#" ], steps: &steps [ { decode: json }, { filter: "x > 1" } ], to: [ out ] }
              b: { from: [ "devices:b/#" ], steps: *steps, to: [ out ] }
            """)
        #expect(c.pipelines.map { $0.steps.map(\.name) } == [["decode", "filter"], ["decode", "filter"]])
        var bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n"
        for (name, previous) in zip("bcdefghi", "abcdefgh") {
            bomb += "\(name): &\(name) [\(Array(repeating: "*\(previous)", count: 9).joined(separator: ", "))]\n"
        }
        #expect(errors(bomb + "sources: {}\n") == [
            "site.yaml:1:20: error: the file stands for more than \(YAMLNode.nodeLimit) YAML nodes (each alias repeats all of its anchor's nodes; use fewer aliases)"
        ])
    }

    @Test func reportsMissingEnvironmentWithoutLeakingSecrets() {
        let e = errors(valid)
        #expect(e == ["site.yaml:4:65: error: environment variable 'HOOK_SECRET' used by field 'secret' of sink 'hook' is not set"])
        // A secret written in the file is a warning that names the field, never the value.
        let (_, warnings) = try! HubConfigLoader(catalog: testCatalog, environment: [:]).load(texts: [("w.yaml", """
            sinks:
              hook: { plugin: webhook, url: "http://x", secret: "hunter2" }
            """)])
        #expect(warnings.map(\.description) == ["w.yaml:2:53: warning: secret field 'secret' of sink 'hook' is written in the file (use ${env:NAME} or ${file:PATH})"])
        #expect(!warnings.description.contains("hunter2"))
    }

    @Test func readsFileReferences() throws {
        let dir = TempDir()
        dir.write("hook.secret", "from-file\n")
        let c = try HubConfigLoader(catalog: testCatalog, environment: [:]).load(texts: [(dir.path + "/p.yaml", """
            sinks:
              hook: { plugin: webhook, url: "http://x", secret: "${file:hook.secret}" }
            """)]).0
        #expect(c.sink("hook")?.config["secret"] == .string("from-file"))
    }

    @Test func escapesALiteralReference() throws {
        let c = try HubConfigLoader(catalog: testCatalog, environment: ["X": "x"]).load(texts: [("e.yaml", """
            sinks:
              hook: { plugin: webhook, url: "http://h/$${env:X}/${env:X}" }
            """)]).0
        #expect(c.sink("hook")?.config["url"] == .string("http://h/${env:X}/x"))
    }

    /// A duration the components could not hold (in nanoseconds, 64 bits) is an error in the file, not
    /// a crash at start.
    @Test func refusesDurationsLongerThanAHundredYears() {
        let e = errors("""
            sinks:
              hook: { plugin: webhook, url: "http://h/", timeout: 999999999999999999h }
              long: { plugin: webhook, url: "http://h/", timeout: 36500d }
            """)
        #expect(e == ["site.yaml:2:55: error: field 'timeout' of sink 'hook' is too long: '999999999999999999h' (at most 100 years: 36500d)"], "\(e)")
    }

    /// The same for byte sizes: a CoAP source with max_body_size 2^63 - 1 crashed at start (eight of
    /// them are its budget for block-wise uploads).
    @Test func refusesByteSizesOverAPebibyte() {
        let e = errors("""
            sources: { devices: { plugin: http, max_body_size: 9223372036854775807 } }
            """)
        #expect(e == ["site.yaml:1:52: error: field 'max_body_size' of source 'devices' is too large: '9223372036854775807' (at most 1 PiB: 1048576GiB)"], "\(e)")
    }

    @Test func refusesRetriesWithoutAPause() {
        let e = errors("""
            sinks:
              a: { plugin: webhook, url: "http://h/", retry: { initial_backoff: 0s } }
              b: { plugin: webhook, url: "http://h/", retry: { initial_backoff: 1s, max_backoff: 500ms } }
              c: { plugin: webhook, url: "http://h/", retry: { initial_backoff: 10ms, max_backoff: 10ms } }
              d: { plugin: webhook, url: "http://h/", retry: { initial_backoff: 1ms, max_backoff: 50ms } }
            """)
        #expect(e == [
            "site.yaml:2:69: error: field 'initial_backoff' of sink 'a' must be at least 10ms",
            "site.yaml:3:86: error: field 'max_backoff' of sink 'b' must not be shorter than initial_backoff",
            "site.yaml:5:69: error: field 'initial_backoff' of sink 'd' must be at least 10ms",
        ], "\(e)")
    }

    @Test func refusesQueuesAndAttemptsBelowTheirLeast() {
        let e = errors("""
            sources: { devices: { plugin: http } }
            sinks:
              hook: { plugin: webhook, url: "http://h/", queue_size: 0, max_in_flight: -1, retry: { max_attempts: -2 } }
            pipelines:
              p: { from: [ devices ], to: [ hook ], queue_size: -5 }
            """)
        #expect(e == [
            "site.yaml:3:58: error: field 'queue_size' of sink 'hook' must be at least 1, not 0",
            "site.yaml:3:76: error: field 'max_in_flight' of sink 'hook' must be at least 1, not -1",
            "site.yaml:3:103: error: field 'max_attempts' of sink 'hook' must be at least 0, not -2",
            "site.yaml:5:53: error: field 'queue_size' of pipeline 'p' must be at least 1, not -5",
        ], "\(e)")
    }

    /// Setting a field walks its path: a map target 50,000 levels deep overflowed the pipeline thread's
    /// stack on the first message.
    @Test func refusesMapTargetsDeeperThanPayloadsNest() {
        let deep = Array(repeating: "a", count: 65).joined(separator: ".")
        let e = errors("""
            sources: { devices: { plugin: http } }
            sinks: { out: { plugin: webhook, url: "http://h/" } }
            pipelines:
              p:
                from: [ devices ]
                steps:
                  - map: { ok: "1", "\(Array(repeating: "a", count: 64).joined(separator: "."))": "2" }
                  - set: { "payload.\(deep)": "3" }
                to: [ out ]
            """)
        #expect(e == ["site.yaml:8:16: error: target 'payload.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.…' in step 'set' of pipeline 'p' is nested deeper than 64 levels"], "\(e)")
    }

    /// A window's max_samples went through a Double on its way to an Int: 2^63 - 1 crashed iotc check.
    @Test func readsAWindowsSampleLimitAsACount() throws {
        func rule(_ samples: String) -> String {
            """
            sources: { devices: { plugin: http } }
            sinks: { out: { plugin: webhook, url: "http://h/" } }
            pipelines:
              p:
                from: [ devices ]
                steps:
                  - rule: { name: w, raise: "avg > 1", window: { over: 1m, of: n, max_samples: \(samples) }, to: [ out ] }
            """
        }
        #expect(errors(rule("0")) == ["site.yaml:7:84: error: field 'max_samples' of step 'rule' of pipeline 'p' must be at least 1, not 0"], "\(errors(rule("0")))")
        let c = try load(rule("9223372036854775807"))
        guard case .rule(let r)? = c.pipelines.first?.steps.first?.kind else { Issue.record("no rule"); return }
        #expect(r.window?.maxSamples == Int.max)
    }

    @Test func acceptsDurationsAndSizes() {
        #expect(Durations.seconds("250ms") == 0.25)
        #expect(Durations.seconds("1h30m") == 5400)
        #expect(Durations.seconds("5") == 5)
        #expect(Durations.seconds("5x") == nil)
        #expect(ByteSizes.bytes("64KiB") == 65536)
        #expect(ByteSizes.bytes("1MB") == 1_000_000)
        #expect(ByteSizes.bytes("lots") == nil)
    }
}
