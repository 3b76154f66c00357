import IoTCPluginKit

/// A compiled expression of the pipeline language: field paths, arithmetic, comparisons, boolean logic,
/// string and time functions. It performs no I/O and every evaluation is bounded in cost.
///
/// Names: a bare name (`temperature`) is a field of the payload; `payload` is the whole payload, `meta`
/// the metadata, and `msg` the envelope (`msg.device`, `msg.topic`, `msg.tenant`, `msg.kind`,
/// `msg.content_type`, `msg.received_at`, `msg.device_time`, `msg.qos`, `msg.id`).
public struct Expression: Sendable, CustomStringConvertible {
    public let source: String
    let root: ExpressionNode

    /// Parses `source`; the error carries the offset of the problem within it.
    public init(_ source: String) throws(ExpressionError) {
        self.source = source
        var parser = try ExpressionParser(source)
        root = try parser.parseAll()
    }

    public var description: String { source }

    /// The payload fields it reads by bare name (`temperature`; `location` of `location.lat`), with
    /// their offsets, for checking against the fields a pipeline's messages are known to carry. Reads
    /// that may meet a missing field on purpose are left out: the left of `??`, and what a `has(...)`
    /// guards (the right of `and`, the branches of `?:`).
    public var fieldReferences: [(name: String, offset: Int)] {
        var out: [(String, Int)] = []
        root.collectFields(&out)
        return out
    }

    /// Evaluates against a message.
    public func evaluate(_ context: inout EvaluationContext) throws(ExpressionError) -> Value {
        try root.evaluate(&context)
    }

    /// Evaluates a condition; anything but a boolean is an error.
    public func test(_ context: inout EvaluationContext) throws(ExpressionError) -> Bool {
        let v = try evaluate(&context)
        guard case .bool(let b) = v else {
            throw ExpressionError("condition '\(source)' gave a \(v.typeName), not a boolean", at: 0)
        }
        return b
    }
}

/// What an expression is evaluated against, with its cost budget.
public struct EvaluationContext {
    public var payload: Value
    public var metadata: [KeyValue]
    public var envelope: Envelope
    /// Milliseconds since the epoch, from the pipeline's clock (simulated in pipeline tests).
    public var now: Int64
    /// Steps left; each node and each unit of function work costs one.
    public var budget: Int

    /// The envelope fields expressions can read.
    public struct Envelope: Sendable {
        public var id = "", tenant = "", device = "", topic = "", kind = "", contentType = ""
        public var receivedAt: Int64? = nil, deviceTime: Int64? = nil, qos = 0
        public init() {}
    }

    /// The default cost bound of one evaluation.
    public static let defaultBudget = 10_000

    public init(payload: Value, metadata: [KeyValue] = [], envelope: Envelope = .init(), now: Int64, budget: Int = defaultBudget) {
        self.payload = payload
        self.metadata = metadata
        self.envelope = envelope
        self.now = now
        self.budget = budget
    }

    mutating func spend(_ n: Int = 1) throws(ExpressionError) {
        budget -= n
        if budget < 0 { throw ExpressionError("expression exceeded its cost bound of \(EvaluationContext.defaultBudget) steps", at: 0) }
    }

    var envelopeValue: Value {
        var o = Value.Object()
        o["id"] = .string(envelope.id)
        o["tenant"] = .string(envelope.tenant)
        o["device"] = .string(envelope.device)
        o["topic"] = .string(envelope.topic)
        o["kind"] = .string(envelope.kind)
        o["content_type"] = .string(envelope.contentType)
        o["received_at"] = envelope.receivedAt.map { .int($0) } ?? .null
        o["device_time"] = envelope.deviceTime.map { .int($0) } ?? .null
        o["qos"] = .int(Int64(envelope.qos))
        return .object(o)
    }
}

/// An error in parsing or evaluating an expression; `offset` is a character offset in its source.
public struct ExpressionError: Error, Sendable, CustomStringConvertible, Equatable {
    public var message: String
    public var offset: Int
    public init(_ message: String, at offset: Int) {
        self.message = message
        self.offset = offset
    }
    public var description: String { message }
}

indirect enum ExpressionNode: Sendable {
    case literal(Value)
    /// A root name (`payload`, `meta`, `msg`, or a payload field) followed by accessors.
    case name(String, offset: Int)
    case member(ExpressionNode, String, offset: Int)
    case index(ExpressionNode, ExpressionNode, offset: Int)
    case list([ExpressionNode])
    case unary(UnaryOperator, ExpressionNode, offset: Int)
    case binary(BinaryOperator, ExpressionNode, ExpressionNode, offset: Int)
    case and(ExpressionNode, ExpressionNode, offset: Int)
    case or(ExpressionNode, ExpressionNode, offset: Int)
    case coalesce(ExpressionNode, ExpressionNode)
    case conditional(ExpressionNode, ExpressionNode, ExpressionNode, offset: Int)
    case call(ExpressionFunction, [ExpressionNode], offset: Int)

    enum UnaryOperator: Sendable { case negate, not }
    enum BinaryOperator: String, Sendable {
        case add = "+", subtract = "-", multiply = "*", divide = "/", remainder = "%"
        case equal = "==", notEqual = "!=", less = "<", lessOrEqual = "<=", greater = ">", greaterOrEqual = ">="
        case contains = "in"
    }

    func collectFields(_ out: inout [(String, Int)]) {
        switch self {
        case .literal: break
        case .name(let n, let offset): if !["payload", "meta", "msg"].contains(n) { out.append((n, offset)) }
        case .member(let base, _, _): base.collectFields(&out)
        case .index(let base, let index, _):
            base.collectFields(&out)
            index.collectFields(&out)
        case .list(let items): for i in items { i.collectFields(&out) }
        case .unary(_, let x, _): x.collectFields(&out)
        case .binary(_, let l, let r, _), .or(let l, let r, _):
            l.collectFields(&out)
            r.collectFields(&out)
        case .and(let l, let r, _):
            l.collectFields(&out)
            if !l.callsHas { r.collectFields(&out) }
        case .coalesce(_, let r): r.collectFields(&out)
        case .conditional(let cond, let a, let b, _):
            cond.collectFields(&out)
            if !cond.callsHas {
                a.collectFields(&out)
                b.collectFields(&out)
            }
        case .call(_, let args, _): for a in args { a.collectFields(&out) }
        }
    }

    /// Whether it tests for a field with `has(...)`.
    private var callsHas: Bool {
        switch self {
        case .call(let f, let args, _): f.name == "has" || args.contains { $0.callsHas }
        case .unary(_, let x, _), .member(let x, _, _): x.callsHas
        case .and(let l, let r, _), .or(let l, let r, _), .binary(_, let l, let r, _): l.callsHas || r.callsHas
        default: false
        }
    }

    func evaluate(_ c: inout EvaluationContext) throws(ExpressionError) -> Value {
        try c.spend()
        switch self {
        case .literal(let v): return v
        case .name(let n, let offset):
            switch n {
            case "payload": return c.payload
            case "meta": return .object(Value.Object(c.metadata.map { ($0.key, .string($0.value)) }))
            case "msg": return c.envelopeValue
            default:
                guard case .object(let o) = c.payload else {
                    throw ExpressionError("field '\(n)' is missing: the payload is a \(c.payload.typeName), not an object", at: offset)
                }
                guard let v = o[n] else { throw ExpressionError("field '\(n)' is missing", at: offset) }
                return v
            }
        case .member(let base, let name, let offset):
            if case .name("meta", _) = base {
                guard let v = c.metadata.first(where: { $0.key == name }) else {
                    throw ExpressionError("metadata '\(name)' is missing", at: offset)
                }
                return .string(v.value)
            }
            let b = try base.evaluate(&c)
            guard case .object(let o) = b else {
                throw ExpressionError("cannot read '.\(name)' of a \(b.typeName)", at: offset)
            }
            guard let v = o[name] else { throw ExpressionError("field '\(name)' is missing", at: offset) }
            return v
        case .index(let base, let index, let offset):
            let b = try base.evaluate(&c), i = try index.evaluate(&c)
            switch (b, i) {
            case (.array(let a), .int(let n)):
                let k = n < 0 ? Int(n) + a.count : Int(n)
                guard k >= 0, k < a.count else { throw ExpressionError("index \(n) is out of range (\(a.count) elements)", at: offset) }
                return a[k]
            case (.object(let o), .string(let key)):
                guard let v = o[key] else { throw ExpressionError("field '\(key)' is missing", at: offset) }
                return v
            default:
                throw ExpressionError("cannot index a \(b.typeName) with a \(i.typeName)", at: offset)
            }
        case .list(let items):
            var out: [Value] = []
            out.reserveCapacity(items.count)
            for item in items { out.append(try item.evaluate(&c)) }
            return .array(out)
        case .unary(let op, let operand, let offset):
            let v = try operand.evaluate(&c)
            switch (op, v) {
            case (.negate, .int(let i)) where i != .min: return .int(-i)
            case (.negate, .int(let i)): return .double(-Double(i))
            case (.negate, .double(let d)): return .double(-d)
            case (.not, .bool(let b)): return .bool(!b)
            default: throw ExpressionError("cannot apply '\(op == .not ? "!" : "-")' to a \(v.typeName)", at: offset)
            }
        case .and(let l, let r, let offset):
            guard try Self.bool(l.evaluate(&c), "and", offset) else { return .bool(false) }
            return .bool(try Self.bool(r.evaluate(&c), "and", offset))
        case .or(let l, let r, let offset):
            if try Self.bool(l.evaluate(&c), "or", offset) { return .bool(true) }
            return .bool(try Self.bool(r.evaluate(&c), "or", offset))
        case .coalesce(let l, let r):
            do {
                let v = try l.evaluate(&c)
                if case .null = v { return try r.evaluate(&c) }
                return v
            } catch where !error.message.hasPrefix("expression exceeded") {
                return try r.evaluate(&c)
            }
        case .conditional(let cond, let a, let b, let offset):
            return try Self.bool(cond.evaluate(&c), "?:", offset) ? a.evaluate(&c) : b.evaluate(&c)
        case .binary(let op, let l, let r, let offset):
            return try Self.binary(op, l.evaluate(&c), r.evaluate(&c), offset, &c)
        case .call(let f, let args, let offset):
            // The arguments are lent from the stack: a call evaluated for every message allocates nothing
            // for them.
            return try withUnsafeTemporaryAllocation(of: Value.self, capacity: args.count) { buf throws(ExpressionError) -> Value in
                var n = 0
                defer { buf.baseAddress?.deinitialize(count: n) }
                for a in args {
                    (buf.baseAddress! + n).initialize(to: try a.evaluate(&c))
                    n += 1
                }
                do throws(ExpressionError) {
                    return try f.apply(UnsafeBufferPointer(rebasing: buf[..<n]), &c)
                } catch {
                    throw ExpressionError("\(f.name)(): \(error.message)", at: offset)
                }
            }
        }
    }

    private static func bool(_ v: Value, _ op: String, _ offset: Int) throws(ExpressionError) -> Bool {
        guard case .bool(let b) = v else { throw ExpressionError("'\(op)' needs booleans, got a \(v.typeName)", at: offset) }
        return b
    }

    static func binary(_ op: BinaryOperator, _ l: Value, _ r: Value, _ offset: Int, _ c: inout EvaluationContext) throws(ExpressionError) -> Value {
        switch op {
        case .equal: return .bool(ValueOrder.equal(l, r))
        case .notEqual: return .bool(!ValueOrder.equal(l, r))
        case .less, .lessOrEqual, .greater, .greaterOrEqual:
            guard let order = ValueOrder.compare(l, r) else {
                throw ExpressionError("cannot compare a \(l.typeName) with a \(r.typeName)", at: offset)
            }
            switch op {
            case .less: return .bool(order < 0)
            case .lessOrEqual: return .bool(order <= 0)
            case .greater: return .bool(order > 0)
            default: return .bool(order >= 0)
            }
        case .contains:
            switch r {
            case .array(let a):
                try c.spend(a.count)
                return .bool(a.contains { ValueOrder.equal($0, l) })
            case .string(let s):
                guard case .string(let sub) = l else { break }
                try c.spend(s.utf8.count / 64)
                return .bool(s.contains(sub))
            case .object(let o):
                guard case .string(let key) = l else { break }
                return .bool(o[key] != nil)
            default: break
            }
            throw ExpressionError("cannot test whether a \(l.typeName) is in a \(r.typeName)", at: offset)
        case .add:
            if case .string(let a) = l, case .string(let b) = r {
                try c.spend((a.utf8.count + b.utf8.count) / 64)
                guard a.utf8.count + b.utf8.count <= ExpressionFunction.maxStringBytes else {
                    throw ExpressionError("string result is longer than \(ExpressionFunction.maxStringBytes) bytes", at: offset)
                }
                return .string(a + b)
            }
            return try arithmetic(op, l, r, offset)
        case .subtract, .multiply, .divide, .remainder:
            return try arithmetic(op, l, r, offset)
        }
    }

    private static func arithmetic(_ op: BinaryOperator, _ l: Value, _ r: Value, _ offset: Int) throws(ExpressionError) -> Value {
        if case .int(let a) = l, case .int(let b) = r {
            switch op {
            case .add: let (v, o) = a.addingReportingOverflow(b); if !o { return .int(v) }
            case .subtract: let (v, o) = a.subtractingReportingOverflow(b); if !o { return .int(v) }
            case .multiply: let (v, o) = a.multipliedReportingOverflow(by: b); if !o { return .int(v) }
            case .divide:
                guard b != 0 else { throw ExpressionError("division by zero", at: offset) }
                if a % b == 0, !(a == .min && b == -1) { return .int(a / b) }
            case .remainder:
                guard b != 0 else { throw ExpressionError("division by zero", at: offset) }
                if !(a == .min && b == -1) { return .int(a % b) }
            default: break
            }
        }
        guard let a = l.number, let b = r.number else {
            throw ExpressionError("cannot apply '\(op.rawValue)' to a \(l.typeName) and a \(r.typeName)", at: offset)
        }
        let v: Double
        switch op {
        case .add: v = a + b
        case .subtract: v = a - b
        case .multiply: v = a * b
        case .divide:
            guard b != 0 else { throw ExpressionError("division by zero", at: offset) }
            v = a / b
        default:
            guard b != 0 else { throw ExpressionError("division by zero", at: offset) }
            v = a.truncatingRemainder(dividingBy: b)
        }
        guard v.isFinite else { throw ExpressionError("arithmetic overflow", at: offset) }
        return .double(v)
    }
}

/// Equality and ordering across value types (ints and doubles compare as numbers).
enum ValueOrder {
    static func equal(_ a: Value, _ b: Value) -> Bool {
        if let x = a.number, let y = b.number { return x == y }
        switch (a, b) {
        case (.array(let x), .array(let y)): return x.count == y.count && zip(x, y).allSatisfy { equal($0, $1) }
        case (.object(let x), .object(let y)):
            return x.count == y.count && x.allSatisfy { k, v in y[k].map { equal(v, $0) } ?? false }
        default: return a == b
        }
    }

    static func compare(_ a: Value, _ b: Value) -> Int? {
        if case .int(let x) = a, case .int(let y) = b { return x < y ? -1 : x == y ? 0 : 1 }
        if let x = a.number, let y = b.number { return x < y ? -1 : x == y ? 0 : 1 }
        if case .string(let x) = a, case .string(let y) = b { return x < y ? -1 : x == y ? 0 : 1 }
        return nil
    }
}
