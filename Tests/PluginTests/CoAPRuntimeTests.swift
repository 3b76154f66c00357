import CoAPRuntime
import Testing

struct PathTemplateTests {
    @Test func matchesWholeSegmentsAndNamesThePlaceholders() throws {
        let t = try PathTemplate("/r/{device}/{command}", variables: ["device", "command"])
        #expect(t.match(["r", "pump-1", "cmd-9"]) == ["device": "pump-1", "command": "cmd-9"])
        #expect(t.match(["r", "pump-1"]) == nil)
        #expect(t.match(["r", "", "cmd-9"]) == nil, "an empty segment is no id")
        #expect(t.match(["x", "pump-1", "cmd-9"]) == nil)
        #expect(t.has("command") && !t.has("tenant"))
        let fixed = try PathTemplate("telemetry", variables: ["device"])
        #expect(fixed.match(["telemetry"]) == [:] && !fixed.has("device"))
    }

    @Test func refusesTemplatesThatCannotWork() {
        for bad in ["", "/", "/t/{tenant}", "/t/x{device}", "/t/{device}/{device}"] {
            #expect(throws: PathTemplateError.self, "\(bad)") { try PathTemplate(bad, variables: ["device"]) }
        }
    }
}

struct ContentFormatTests {
    @Test func mapsNumbersAndMediaTypesBothWays() {
        for n: UInt32 in [0, 40, 42, 50, 60, 110, 112, 11542, 11543] {
            let t = ContentFormat.mediaType(n)
            #expect(t != nil && ContentFormat.number(t!) == n, "\(n)")
        }
        #expect(ContentFormat.number("text/plain") == 0)
        #expect(ContentFormat.number("Application/JSON; charset=utf-8") == 50)
        #expect(ContentFormat.mediaType(9999) == nil)
    }
}
