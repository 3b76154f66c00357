import Foundation
import Testing
import TimerSchedule

/// Cron schedules for the timer source: parsing, refusals and the next firing, in UTC.
@Suite struct CronTests {
    func at(_ s: String) -> Date { ISO8601DateFormatter().date(from: s)! }
    func next(_ expr: String, _ from: String) throws -> String? {
        try CronSchedule(expr).next(after: at(from)).map { ISO8601DateFormatter().string(from: $0) }
    }

    @Test func findsTheNextMinuteTheExpressionNames() throws {
        #expect(try next("* * * * *", "2026-11-27T10:00:30Z") == "2026-11-27T10:01:00Z")
        #expect(try next("* * * * *", "2026-11-27T10:00:00Z") == "2026-11-27T10:01:00Z")  // strictly after
        #expect(try next("0 2 * * *", "2026-11-27T10:00:00Z") == "2026-11-28T02:00:00Z")
        #expect(try next("*/15 9-17 * * 1-5", "2026-11-27T17:50:00Z") == "2026-11-30T09:00:00Z")  // Friday evening to Monday
        #expect(try next("30 6 1 * *", "2026-11-27T00:00:00Z") == "2026-12-01T06:30:00Z")
        #expect(try next("0 0 29 2 *", "2026-03-01T00:00:00Z") == "2028-02-29T00:00:00Z")  // the next leap day
        #expect(try next("0 12 * * 0", "2026-11-27T00:00:00Z") == "2026-11-29T12:00:00Z")  // Sunday is 0
        #expect(try next("0 12 * * 7", "2026-11-27T00:00:00Z") == "2026-11-29T12:00:00Z")  // and 7
        // Both day fields restricted: either matches (the 1st, or a Monday).
        #expect(try next("0 0 1 * 1", "2026-11-27T00:00:00Z") == "2026-11-30T00:00:00Z")
        #expect(try next("5,35 * * * *", "2026-11-27T10:06:00Z") == "2026-11-27T10:35:00Z")
        #expect(try next("0 0 30 2 *", "2026-01-01T00:00:00Z") == nil)  // never
    }

    @Test func refusesWhatIsNotASchedule() {
        for (expr, why) in [("* * * *", "5 fields"), ("60 * * * *", "minute: 60 is outside 0-59"), ("* * * * mon", "day of week: 'mon'"),
                            ("*/0 * * * *", "step '0'"), ("5-1 * * * *", "not a range"), ("* 24 * * *", "hour: 24")] {
            #expect(throws: CronSchedule.ParseError.self) { try CronSchedule(expr) }
            do { _ = try CronSchedule(expr) } catch { #expect(error.description.contains(why), "\(expr): \(error)") }
        }
    }
}
