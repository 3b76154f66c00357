import Foundation
import IoTCPluginKit

/// A built-in function of the expression language. None performs I/O; each charges the evaluation budget
/// for the work it does.
struct ExpressionFunction: Sendable {
    let name: String
    let arity: ClosedRange<Int>
    let summary: String
    /// The arguments are lent for the call only.
    let body: @Sendable (UnsafeBufferPointer<Value>, inout EvaluationContext) throws(ExpressionError) -> Value

    func apply(_ args: UnsafeBufferPointer<Value>, _ c: inout EvaluationContext) throws(ExpressionError) -> Value {
        try body(args, &c)
    }

    /// The longest string a function may build.
    static let maxStringBytes = 1 << 20

    static func named(_ name: String) -> ExpressionFunction? { byName[name] }
    private static let byName = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0) })

    static let all: [ExpressionFunction] = [
        .init(name: "lower", arity: 1...1, summary: "lower-case a string") { a, c throws(ExpressionError) in
            let s = try str(a[0]); try c.spend(s.utf8.count / 64); return .string(s.lowercased())
        },
        .init(name: "upper", arity: 1...1, summary: "upper-case a string") { a, c throws(ExpressionError) in
            let s = try str(a[0]); try c.spend(s.utf8.count / 64); return .string(s.uppercased())
        },
        .init(name: "trim", arity: 1...1, summary: "strip leading and trailing white space") { a, c throws(ExpressionError) in
            .string(try str(a[0]).trimmingCharacters(in: .whitespacesAndNewlines))
        },
        .init(name: "len", arity: 1...1, summary: "length of a string (characters), array, object or bytes") { a, _ throws(ExpressionError) in
            switch a[0] {
            case .string(let s): return .int(Int64(s.count))
            case .array(let x): return .int(Int64(x.count))
            case .object(let o): return .int(Int64(o.count))
            case .bytes(let b): return .int(Int64(b.count))
            default: throw ExpressionError("needs a string, array, object or bytes, got a \(a[0].typeName)", at: 0)
            }
        },
        .init(name: "contains", arity: 2...2, summary: "whether a string contains a substring or an array an element") { a, c throws(ExpressionError) in
            try ExpressionNode.binary(.contains, a[1], a[0], 0, &c)
        },
        .init(name: "starts_with", arity: 2...2, summary: "whether a string starts with a prefix") { a, _ throws(ExpressionError) in
            .bool(try str(a[0]).hasPrefix(try str(a[1])))
        },
        .init(name: "ends_with", arity: 2...2, summary: "whether a string ends with a suffix") { a, _ throws(ExpressionError) in
            .bool(try str(a[0]).hasSuffix(try str(a[1])))
        },
        .init(name: "replace", arity: 3...3, summary: "replace every occurrence of a substring") { a, c throws(ExpressionError) in
            let s = try str(a[0]), old = try str(a[1]), new = try str(a[2])
            guard !old.isEmpty else { throw ExpressionError("cannot replace an empty string", at: 0) }
            try c.spend(s.utf8.count / 16)
            let r = s.replacingOccurrences(of: old, with: new)
            guard r.utf8.count <= maxStringBytes else { throw ExpressionError("result is too long", at: 0) }
            return .string(r)
        },
        .init(name: "substr", arity: 2...3, summary: "substring by character offset and optional length") { a, _ throws(ExpressionError) in
            let s = Array(try str(a[0]))
            let start = max(0, min(s.count, Int(try int(a[1]))))
            let n = a.count > 2 ? max(0, Int(try int(a[2]))) : s.count
            return .string(String(s[start..<min(s.count, start + n)]))
        },
        .init(name: "split", arity: 2...2, summary: "split a string by a separator into an array") { a, c throws(ExpressionError) in
            let s = try str(a[0]), sep = try str(a[1])
            guard !sep.isEmpty else { throw ExpressionError("separator is empty", at: 0) }
            let parts = s.components(separatedBy: sep)
            try c.spend(parts.count)
            return .array(parts.map { .string($0) })
        },
        .init(name: "join", arity: 2...2, summary: "join an array of strings with a separator") { a, c throws(ExpressionError) in
            guard case .array(let items) = a[0] else { throw ExpressionError("needs an array, got a \(a[0].typeName)", at: 0) }
            try c.spend(items.count)
            let s = try items.map { v throws(ExpressionError) in try str(v) }.joined(separator: try str(a[1]))
            guard s.utf8.count <= maxStringBytes else { throw ExpressionError("result is too long", at: 0) }
            return .string(s)
        },
        .init(name: "string", arity: 1...1, summary: "a value as text (JSON for arrays and objects)") { a, c throws(ExpressionError) in
            .string(text(a[0]))
        },
        .init(name: "number", arity: 1...1, summary: "a string or number as a number") { a, _ throws(ExpressionError) in
            switch a[0] {
            case .int, .double: return a[0]
            case .bool(let b): return .int(b ? 1 : 0)
            case .string(let s):
                let t = s.trimmingCharacters(in: .whitespaces)
                if let i = Int64(t) { return .int(i) }
                if let d = Double(t), d.isFinite { return .double(d) }
                throw ExpressionError("'\(s.prefix(32))' is not a number", at: 0)
            default: throw ExpressionError("cannot convert a \(a[0].typeName) to a number", at: 0)
            }
        },
        .init(name: "int", arity: 1...1, summary: "a number truncated to an integer") { a, _ throws(ExpressionError) in
            guard let d = a[0].number ?? (try? str(a[0])).flatMap(Double.init) else {
                throw ExpressionError("cannot convert a \(a[0].typeName) to an integer", at: 0)
            }
            guard d.isFinite, d.magnitude < 9.2e18 else { throw ExpressionError("\(d) does not fit an integer", at: 0) }
            return .int(Int64(d))
        },
        .init(name: "type", arity: 1...1, summary: "the type name of a value") { a, _ throws(ExpressionError) in .string(a[0].typeName) },
        .init(name: "abs", arity: 1...1, summary: "absolute value") { a, _ throws(ExpressionError) in
            if case .int(let i) = a[0], i != .min { return .int(abs(i)) }
            return .double(abs(try num(a[0])))
        },
        .init(name: "round", arity: 1...2, summary: "round half away from zero, to optional decimal places") { a, _ throws(ExpressionError) in
            if case .int = a[0], a.count == 1 { return a[0] }
            let places = a.count > 1 ? Int(try int(a[1])) : 0
            guard (0...15).contains(places) else { throw ExpressionError("decimal places must be 0 to 15", at: 0) }
            let p = pow(10.0, Double(places))
            let r = (try num(a[0]) * p).rounded() / p
            if places == 0, r.magnitude < 9.2e18 { return .int(Int64(r)) }
            return .double(r)
        },
        .init(name: "floor", arity: 1...1, summary: "round down") { a, _ throws(ExpressionError) in try integral(a[0], .down) },
        .init(name: "ceil", arity: 1...1, summary: "round up") { a, _ throws(ExpressionError) in try integral(a[0], .up) },
        .init(name: "min", arity: 1...Int.max, summary: "smallest of numbers (or of one array)") { a, c throws(ExpressionError) in
            try extreme(a, &c) { $0 < 0 }
        },
        .init(name: "max", arity: 1...Int.max, summary: "largest of numbers (or of one array)") { a, c throws(ExpressionError) in
            try extreme(a, &c) { $0 > 0 }
        },
        .init(name: "now", arity: 0...0, summary: "current time, milliseconds since the epoch") { _, c throws(ExpressionError) in .int(c.now) },
        .init(name: "format_time", arity: 1...1, summary: "milliseconds since the epoch as RFC 3339 UTC text") { a, _ throws(ExpressionError) in
            .string(RFC3339.format(try int(a[0])))
        },
        .init(name: "parse_time", arity: 1...1, summary: "RFC 3339 text as milliseconds since the epoch") { a, _ throws(ExpressionError) in
            let s = try str(a[0])
            guard let ms = RFC3339.parse(s) else { throw ExpressionError("'\(s.prefix(40))' is not an RFC 3339 time", at: 0) }
            return .int(ms)
        },
        .init(name: "keys", arity: 1...1, summary: "the keys of an object") { a, c throws(ExpressionError) in
            guard case .object(let o) = a[0] else { throw ExpressionError("needs an object, got a \(a[0].typeName)", at: 0) }
            try c.spend(o.count)
            return .array(o.keys.map { .string($0) })
        },
        .init(name: "has", arity: 2...2, summary: "whether an object has a key") { a, _ throws(ExpressionError) in
            guard case .object(let o) = a[0] else { return .bool(false) }
            return .bool(o[try str(a[1])] != nil)
        },
    ]

    static func str(_ v: Value) throws(ExpressionError) -> String {
        guard case .string(let s) = v else { throw ExpressionError("needs a string, got a \(v.typeName)", at: 0) }
        return s
    }

    static func num(_ v: Value) throws(ExpressionError) -> Double {
        guard let d = v.number else { throw ExpressionError("needs a number, got a \(v.typeName)", at: 0) }
        return d
    }

    static func int(_ v: Value) throws(ExpressionError) -> Int64 {
        if case .int(let i) = v { return i }
        if case .double(let d) = v, d == d.rounded(), d.magnitude < 9.2e18 { return Int64(d) }
        throw ExpressionError("needs an integer, got a \(v.typeName)", at: 0)
    }

    static func text(_ v: Value) -> String {
        switch v {
        case .string(let s): s
        case .int(let i): String(i)
        case .double(let d): "\(d)"
        case .bool(let b): b ? "true" : "false"
        case .null: "null"
        default: JSON.string(v)
        }
    }

    private static func integral(_ v: Value, _ rule: FloatingPointRoundingRule) throws(ExpressionError) -> Value {
        if case .int = v { return v }
        let r = try num(v).rounded(rule)
        return r.magnitude < 9.2e18 ? .int(Int64(r)) : .double(r)
    }

    private static func extreme(_ a: UnsafeBufferPointer<Value>, _ c: inout EvaluationContext, _ better: (Int) -> Bool) throws(ExpressionError) -> Value {
        let items: [Value]
        if a.count == 1, case .array(let x) = a[0] { items = x } else { items = Array(a) }
        try c.spend(items.count)
        guard var best = items.first else { throw ExpressionError("needs at least one value", at: 0) }
        for v in items.dropFirst() {
            guard let order = ValueOrder.compare(v, best) else { throw ExpressionError("cannot compare a \(v.typeName) with a \(best.typeName)", at: 0) }
            if better(order) { best = v }
        }
        if best.number == nil, case .string = best {} else if best.number == nil {
            throw ExpressionError("needs numbers or strings, got a \(best.typeName)", at: 0)
        }
        return best
    }
}

/// "Did you mean" suggestions by edit distance.
public enum Suggest {
    public static func closest(_ word: String, in candidates: [String]) -> String? {
        let w = Array(word.lowercased())
        guard w.count >= 3 else { return nil }  // one- and two-letter words match too much
        var best: (String, Int)?
        for c in candidates {
            let d = distance(w, Array(c.lowercased()))
            if d <= max(1, w.count / 3), best == nil || d < best!.1 { best = (c, d) }
        }
        return best?.0
    }

    static func distance(_ a: [Character], _ b: [Character]) -> Int {
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var prev = Array(0...b.count), cur = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            cur[0] = i
            for j in 1...b.count {
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            swap(&prev, &cur)
        }
        return prev[b.count]
    }
}
