import CoAPRuntime
import Testing

struct PathTemplateTests {
    @Test func matchesWholeSegmentsAndNamesThePlaceholders() throws {
        let t = try PathTemplate("/r/{device}/{command}", variables: ["device", "command"])
        let m = t.match(["r", "pump-1", "cmd-9"])
        #expect(m?["device"] == "pump-1" && m?["command"] == "cmd-9" && m?["other"] == nil)
        #expect(t.match(["r", "pump-1"]) == nil)
        #expect(t.match(["r", "", "cmd-9"]) == nil, "an empty segment is no id")
        #expect(t.match(["x", "pump-1", "cmd-9"]) == nil)
        #expect(t.has("command") && !t.has("tenant"))
        let fixed = try PathTemplate("telemetry", variables: ["device"])
        #expect(fixed.match(["telemetry"]) != nil && fixed.match(["telemetry"])?["device"] == nil && !fixed.has("device"))
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

struct ObserveOrderTests {
    /// RFC 7641 §3.4: fresher by sequence number within half the 24-bit space, across the wrap, or
    /// after 128 s whatever the number.
    @Test func takesOnlyFresherNotifications() {
        var o = ObserveOrder()
        // (sequence, time) → taken? The first always is.
        let steps: [(UInt32, Double, Bool)] = [(10, 0, true), (12, 1, true), (11, 2, false), (12, 2, false), (12 + (1 << 23) - 1, 3, true),
                                                     (12, 4, false)]  // half the space back is older
        let taken = steps.map { o.take($0.0, at: $0.1) }
        #expect(taken == steps.map { $0.2 } && o.last?.sequence == 12 + (1 << 23) - 1)
        var wrap = ObserveOrder()
        // Across the wrap; then after 128 s any number is fresher.
        let wrapped: [(UInt32, Double, Bool)] = [(0xFF_FFFE, 0, true), (1, 1, true), (0xFF_FFFF, 2, false), (0, 130, true)]
        let wrapTaken = wrapped.map { wrap.take($0.0, at: $0.1) }
        #expect(wrapTaken == wrapped.map { $0.2 } && wrap.last?.sequence == 0)
    }
}

struct BlockUploadsTests {
    final class Endpoint {}

    /// Uploads being put together are bounded per endpoint, in bytes overall, and in age; an endpoint's
    /// end drops its own.
    @Test func holdsUploadsWithinTheirBounds() {
        var uploads = BlockUploads(budget: 100)
        let a = Endpoint(), b = Endpoint()
        func key(_ e: Endpoint, _ n: UInt8) -> BlockUploads.Key { .init(endpoint: ObjectIdentifier(e), transfer: [n]) }
        let chunk = [UInt8](repeating: 1, count: 20)
        for n in 0..<UInt8(BlockUploads.maxPerEndpoint) {
            let kept = uploads.put(key(a, n), .init(body: chunk, size: 16, at: 0))
            #expect(kept)
        }
        var kept = uploads.put(key(a, 9), .init(body: [], size: 16, at: 0))
        #expect(!kept, "a fifth transfer of one endpoint")
        kept = uploads.put(key(b, 0), .init(body: chunk + chunk, size: 16, at: 0))
        #expect(!kept, "over the budget: 80 held, 40 more")
        kept = uploads.put(key(b, 0), .init(body: chunk, size: 16, at: 0))
        #expect(kept && uploads.held == 100)
        // Taken out to grow, it no longer counts until it is put back.
        var u = uploads.take(key(b, 0), now: 1)
        #expect(u?.body.count == 20 && uploads.held == 80)
        u?.body += chunk
        kept = uploads.put(key(b, 0), u!)
        #expect(!kept, "grown to 40 bytes, it no longer fits beside a's 80")
        uploads.drop(endpoint: ObjectIdentifier(a))
        kept = uploads.put(key(b, 0), u!)
        #expect(kept && uploads.count == 1 && uploads.held == 40)
        let old = uploads.take(key(b, 0), now: BlockUploads.maxAge + 1)
        #expect(old == nil, "too old")
        kept = uploads.put(key(b, 1), .init(body: chunk, size: 16, at: 0))
        #expect(kept)
        uploads.expire(now: BlockUploads.maxAge + 1)
        #expect(uploads.count == 0 && uploads.held == 0)
    }
}

struct RecentAnswersTests {
    @Test func remembersTheLastAnswersNewestFirst() {
        var answers = RecentAnswers<Int>(capacity: 4, pending: 0)
        #expect(answers.answer(1) == nil)
        for id: Int32 in 1...6 { answers.remember(id, Int(id) * 10) }
        // The ring holds the last four: 3 to 6; 1 and 2 were overwritten.
        #expect(answers.answer(1) == nil && answers.answer(2) == nil)
        #expect((3...6).map { answers.answer(Int32($0)) } == [30, 40, 50, 60])
        // A message id used again has its latest answer, wherever the ring stands.
        answers.remember(4, 99)
        #expect(answers.answer(4) == 99 && answers.answer(3) == nil)
        for id: Int32 in 7...9 { answers.remember(id, 1) }
        #expect(answers.answer(4) == 99, "still among the last four")
        answers.remember(10, 1)
        #expect(answers.answer(4) == nil)
        // Before the ring is full, too.
        var early = RecentAnswers<Int>(capacity: 4, pending: 0)
        early.remember(1, 10)
        early.remember(2, 20)
        early.remember(1, 77)
        #expect(early.answer(1) == 77)
    }

    @Test func aRequestStillBeingAnsweredIsPending() {
        var answers = RecentAnswers<Int>(capacity: 8, pending: -1)
        answers.remember(7, 5)
        answers.started(7)
        #expect(answers.answer(7) == -1, "a copy while the separate answer is under way gets the empty acknowledgement")
        answers.remember(7, 0)
        #expect(answers.answer(7) == 0)
    }
}
