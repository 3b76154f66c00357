import Foundation

/// A cron expression of five fields (minute, hour, day of month, month, day of week), in UTC: `*`,
/// values, ranges `a-b`, steps `*/n` and `a-b/n`, and lists of those. Day of week 0 or 7 is Sunday.
/// When both day fields are restricted, a day matches either, as in Vixie cron.
public struct CronSchedule: Sendable, Equatable {
    public let minutes: Set<Int>, hours: Set<Int>, days: Set<Int>, months: Set<Int>, weekdays: Set<Int>
    let anyDay: Bool, anyWeekday: Bool

    /// Why an expression is not a schedule; `field` is its 0-based position.
    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public var field: Int?
        public var description: String
    }

    public init(_ text: String) throws(ParseError) {
        let parts = text.split(separator: " ", omittingEmptySubsequences: true)
        guard parts.count == 5 else {
            throw ParseError(field: nil, description: "a cron expression has 5 fields (minute hour day month weekday), not \(parts.count)")
        }
        let names = ["minute", "hour", "day of month", "month", "day of week"]
        let ranges = [0...59, 0...23, 1...31, 1...12, 0...7]
        var sets: [Set<Int>] = []
        for (i, p) in parts.enumerated() {
            var set = Set<Int>()
            for item in p.split(separator: ",", omittingEmptySubsequences: false) {
                let (rangePart, stepPart) = item.firstIndex(of: "/").map { (item[..<$0], Optional(item[item.index(after: $0)...])) } ?? (item, nil)
                let step = try stepPart.map { s throws(ParseError) -> Int in
                    guard let n = Int(s), n > 0 else { throw ParseError(field: i, description: "\(names[i]): step '\(s)' is not a positive number") }
                    return n
                } ?? 1
                var lo: Int, hi: Int
                if rangePart == "*" {
                    (lo, hi) = (ranges[i].lowerBound, ranges[i].upperBound)
                } else if let dash = rangePart.firstIndex(of: "-") {
                    guard let a = Int(rangePart[..<dash]), let b = Int(rangePart[rangePart.index(after: dash)...]), a <= b else {
                        throw ParseError(field: i, description: "\(names[i]): '\(rangePart)' is not a range such as 1-5")
                    }
                    (lo, hi) = (a, b)
                } else {
                    guard let a = Int(rangePart) else { throw ParseError(field: i, description: "\(names[i]): '\(item)' is not a number, range or *") }
                    (lo, hi) = (a, stepPart == nil ? a : ranges[i].upperBound)
                }
                guard ranges[i].contains(lo), ranges[i].contains(hi) else {
                    throw ParseError(field: i, description: "\(names[i]): \(lo == hi ? "\(lo)" : "\(lo)-\(hi)") is outside \(ranges[i].lowerBound)-\(ranges[i].upperBound)")
                }
                set.formUnion(stride(from: lo, through: hi, by: step))
            }
            sets.append(set)
        }
        minutes = sets[0]
        hours = sets[1]
        days = sets[2]
        months = sets[3]
        weekdays = Set(sets[4].map { $0 % 7 })
        anyDay = parts[2] == "*"
        anyWeekday = parts[4] == "*"
    }

    private static let calendar: Calendar = {
        var c = Calendar(identifier: .gregorian)
        c.timeZone = TimeZone(identifier: "UTC")!
        return c
    }()

    /// The first minute strictly after `date` that the schedule names; nil when none comes within
    /// five years (February 30th).
    public func next(after date: Date) -> Date? {
        let c = Self.calendar
        // The next whole minute (UTC minutes fall on multiples of 60 s since the epoch).
        var t = Date(timeIntervalSince1970: (date.timeIntervalSince1970 / 60).rounded(.down) * 60 + 60)
        let limit = date.addingTimeInterval(5 * 366 * 86400)
        while t < limit {
            let d = c.dateComponents([.minute, .hour, .day, .month, .weekday], from: t)
            guard months.contains(d.month!) else {
                // To the first day of the next month.
                t = c.date(from: c.dateComponents([.year, .month], from: t)).flatMap { c.date(byAdding: .month, value: 1, to: $0) } ?? limit
                continue
            }
            let dayMatches = anyDay && anyWeekday ? true
                : anyDay ? weekdays.contains(d.weekday! - 1)
                : anyWeekday ? days.contains(d.day!)
                : days.contains(d.day!) || weekdays.contains(d.weekday! - 1)
            guard dayMatches else {
                t = c.startOfDay(for: t).addingTimeInterval(86400)
                continue
            }
            guard hours.contains(d.hour!) else {
                t = c.date(bySettingHour: d.hour!, minute: 0, second: 0, of: t)!.addingTimeInterval(3600)
                continue
            }
            if minutes.contains(d.minute!) { return t }
            t = t.addingTimeInterval(60)
        }
        return nil
    }
}
