import Testing
@testable import IoTCKernel
import IoTCPluginKit

@Suite struct ExpressionTests {
    func eval(_ source: String, payload: Value = ["temperature": 25, "name": "Pump-7", "tags": ["a", "b"], "nested": ["x": 1.5]],
              metadata: [KeyValue] = [KeyValue("site", "line-1")]) throws -> Value {
        var envelope = EvaluationContext.Envelope()
        envelope.device = "sensor-1"
        envelope.topic = "devices/sensor-1/telemetry"
        envelope.receivedAt = 1_767_225_600_000
        var c = EvaluationContext(payload: payload, metadata: metadata, envelope: envelope, now: 1_767_225_600_000)
        return try Expression(source).evaluate(&c)
    }

    @Test(arguments: [
        ("1 + 2 * 3", Value.int(7)), ("(1 + 2) * 3", .int(9)), ("7 / 2", .double(3.5)), ("8 / 2", .int(4)), ("7 % 4", .int(3)),
        ("-temperature", .int(-25)), ("temperature * 1.8 + 32", .double(77)), ("temperature > 20 && name == 'Pump-7'", .bool(true)),
        ("temperature > 30 or not (name != 'Pump-7')", .bool(true)), ("nested.x", .double(1.5)), ("payload.nested['x']", .double(1.5)),
        ("tags[1]", .string("b")), ("tags[-1]", .string("b")), ("'a' in tags", .bool(true)), ("'ump' in name", .bool(true)),
        ("meta.site", .string("line-1")), ("msg.device", .string("sensor-1")), ("lower(name)", .string("pump-7")),
        ("upper(substr(name, 0, 4))", .string("PUMP")), ("len(tags)", .int(2)), ("replace(name, '-', '_')", .string("Pump_7")),
        ("join(split('a,b,c', ','), '+')", .string("a+b+c")), ("round(2.345, 2)", .double(2.35)), ("round(2.5)", .int(3)),
        ("floor(-1.5)", .int(-2)), ("max(1, 5, 3)", .int(5)), ("min(tags)", .string("a")), ("number('42')", .int(42)),
        ("string(12)", .string("12")), ("missing ?? 'default'", .string("default")), ("temperature > 20 ? 'hot' : 'ok'", .string("hot")),
        ("format_time(msg.received_at)", .string("2026-01-01T00:00:00.000Z")), ("parse_time('2026-01-01T01:00:00+01:00')", .int(1_767_225_600_000)),
        ("now() - msg.received_at", .int(0)), ("starts_with(msg.topic, 'devices/')", .bool(true)), ("has(payload, 'name')", .bool(true)),
        ("type(tags)", .string("array")), ("1 == 1.0", .bool(true)), ("[1, 2] == [1, 2]", .bool(true)),
    ])
    func evaluates(source: String, expected: Value) throws {
        #expect(try eval(source) == expected)
    }

    @Test(arguments: [
        ("humidity > 3", "field 'humidity' is missing"), ("name + 1", "cannot apply '+'"), ("1 / 0", "division by zero"),
        ("name > 3", "cannot compare a string with a number"), ("tags[5]", "out of range"), ("meta.nothing", "metadata 'nothing' is missing"),
        ("temperature && true", "'and' needs booleans"), ("upper(1)", "upper(): needs a string"),
    ])
    func reportsEvaluationErrors(source: String, message: String) {
        #expect {
            _ = try eval(source)
        } throws: { error in
            (error as? ExpressionError)?.message.contains(message) == true
        }
    }

    @Test(arguments: [
        ("1 +", "expected a value", 3), ("foo(1)", "unknown function 'foo'", 0), ("lowr(x)", "did you mean 'lower'", 0),
        ("a = 1", "use '=='", 2), ("(1", "expected ')'", 2), ("'abc", "unterminated string", 0), ("len()", "takes 1 argument", 0),
        ("1 $ 2", "unexpected character '$'", 2),
    ])
    func reportsParseErrorsWithOffsets(source: String, message: String, offset: Int) {
        #expect {
            _ = try Expression(source)
        } throws: { error in
            guard let e = error as? ExpressionError else { return false }
            return e.message.contains(message) && e.offset == offset
        }
    }

    @Test func boundsTheCostOfOneEvaluation() throws {
        let big: Value = ["csv": .string(Array(repeating: "a", count: 20_000).joined(separator: ","))]
        #expect(try eval("len(csv) > 0", payload: big) == .bool(true))
        #expect {
            _ = try eval("len(split(csv, ','))", payload: big)
        } throws: { ($0 as? ExpressionError)?.message.contains("cost bound") == true }
        #expect { _ = try Expression(String(repeating: "(", count: 200) + "1" + String(repeating: ")", count: 200)) } throws: { _ in true }
    }
}

@Suite struct TopicFilterTests {
    @Test(arguments: [
        ("sensors/+/telemetry", "sensors/a/telemetry", true), ("sensors/+/telemetry", "sensors/a/b/telemetry", false),
        ("sensors/#", "sensors", true), ("sensors/#", "sensors/a/b", true), ("#", "anything/at/all", true), ("#", "$SYS/x", false),
        ("+/x", "$SYS/x", false), ("$SYS/#", "$SYS/x", true), ("a/+", "a", false), ("a/+", "a/", true), ("+", "", true),
        ("a/b", "a/b", true), ("a/b", "a/c", false), ("a//b", "a//b", true), ("+/+", "/x", true),
    ])
    func matches(filter: String, topic: String, expected: Bool) throws {
        let f = try #require(TopicFilter(filter))
        #expect(f.matches(topic) == expected)
        var trie = TopicTrie<Int>()
        trie.insert(f, 1)
        #expect(trie.matches(topic).isEmpty == !expected)
    }

    /// The filter's own matcher and the subscription trie (two implementations) agree on random
    /// filters and topics, empty levels and `$` topics included.
    @Test func agreesWithTheTrieOnRandomFiltersAndTopics() {
        var random = SplitMix(seed: 11)
        let words = ["a", "b", "", "ab", "$x"]
        func levels(_ extra: [String]) -> [String] {
            (0..<Int.random(in: 1...4, using: &random)).map { _ in (words + extra).randomElement(using: &random)! }
        }
        var compared = 0
        for _ in 0..<20_000 {
            var filterLevels = levels(["+", "+"])
            if Bool.random(using: &random) { filterLevels.append("#") }
            guard let filter = TopicFilter(filterLevels.joined(separator: "/")) else { continue }
            let topic = levels([]).joined(separator: "/")
            var trie = TopicTrie<Int>()
            trie.insert(filter, 1)
            #expect(filter.matches(topic) == !trie.matches(topic).isEmpty, "\(filter) on '\(topic)'")
            compared += 1
        }
        #expect(compared > 15_000)
    }

    @Test(arguments: ["", "a/#/b", "a/b#", "a+/b", "#/a"])
    func rejectsInvalidFilters(filter: String) {
        #expect(TopicFilter(filter) == nil)
    }
}
