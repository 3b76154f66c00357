import IoTCPluginKit

/// A token with its character offset in the expression's source.
struct ExpressionToken: Equatable {
    enum Kind: Equatable {
        case number(Value), string(String), identifier(String), symbol(String), end
    }
    var kind: Kind
    var offset: Int
}

/// Splits an expression into tokens.
enum ExpressionLexer {
    static let symbols = ["==", "!=", "<=", ">=", "&&", "||", "??", "+", "-", "*", "/", "%", "<", ">", "!",
                          "(", ")", "[", "]", ",", ".", "?", ":", "="]

    static func tokens(_ source: String) throws(ExpressionError) -> [ExpressionToken] {
        let chars = Array(source.unicodeScalars)
        var out: [ExpressionToken] = []
        var i = 0
        func isIdentStart(_ c: Unicode.Scalar) -> Bool { c == "_" || c.properties.isAlphabetic }
        func isIdent(_ c: Unicode.Scalar) -> Bool { isIdentStart(c) || ("0"..."9").contains(c) }
        while i < chars.count {
            let c = chars[i]
            if c == " " || c == "\t" || c == "\n" || c == "\r" { i += 1; continue }
            let start = i
            if ("0"..."9").contains(c) {
                var isInt = true
                while i < chars.count, ("0"..."9").contains(chars[i]) || chars[i] == "_" { i += 1 }
                if i + 1 < chars.count, chars[i] == ".", ("0"..."9").contains(chars[i + 1]) {
                    isInt = false
                    i += 1
                    while i < chars.count, ("0"..."9").contains(chars[i]) { i += 1 }
                }
                if i < chars.count, chars[i] == "e" || chars[i] == "E" {
                    var j = i + 1
                    if j < chars.count, chars[j] == "+" || chars[j] == "-" { j += 1 }
                    if j < chars.count, ("0"..."9").contains(chars[j]) {
                        isInt = false
                        i = j
                        while i < chars.count, ("0"..."9").contains(chars[i]) { i += 1 }
                    }
                }
                let text = String(String.UnicodeScalarView(chars[start..<i])).replacingOccurrences(of: "_", with: "")
                if isInt, let v = Int64(text) {
                    out.append(.init(kind: .number(.int(v)), offset: start))
                } else if let d = Double(text), d.isFinite {
                    out.append(.init(kind: .number(.double(d)), offset: start))
                } else {
                    throw ExpressionError("invalid number '\(text)'", at: start)
                }
                continue
            }
            if isIdentStart(c) {
                while i < chars.count, isIdent(chars[i]) { i += 1 }
                out.append(.init(kind: .identifier(String(String.UnicodeScalarView(chars[start..<i]))), offset: start))
                continue
            }
            if c == "'" || c == "\"" {
                i += 1
                var s = String.UnicodeScalarView()
                while true {
                    guard i < chars.count else { throw ExpressionError("unterminated string", at: start) }
                    let d = chars[i]
                    if d == c { i += 1; break }
                    if d == "\\" {
                        i += 1
                        guard i < chars.count else { throw ExpressionError("unterminated string", at: start) }
                        switch chars[i] {
                        case "n": s.append("\n")
                        case "t": s.append("\t")
                        case "r": s.append("\r")
                        case "\\", "'", "\"": s.append(chars[i])
                        default: throw ExpressionError("unknown escape '\\\(chars[i])'", at: i - 1)
                        }
                        i += 1
                        continue
                    }
                    s.append(d)
                    i += 1
                }
                out.append(.init(kind: .string(String(s)), offset: start))
                continue
            }
            let rest = String(String.UnicodeScalarView(chars[i..<min(i + 2, chars.count)]))
            guard let sym = symbols.first(where: { rest.hasPrefix($0) }) else {
                throw ExpressionError("unexpected character '\(c)'", at: start)
            }
            i += sym.unicodeScalars.count
            out.append(.init(kind: .symbol(sym), offset: start))
        }
        out.append(.init(kind: .end, offset: chars.count))
        return out
    }
}

/// A Pratt-style recursive-descent parser. Precedence, loosest first:
/// `?:`, `??`, `||`/`or`, `&&`/`and`, `!`/`not`, comparisons and `in`, `+ -`, `* / %`, unary `-`, postfix.
struct ExpressionParser {
    private let tokens: [ExpressionToken]
    private var i = 0
    private var depth = 0
    static let maxDepth = 64

    init(_ source: String) throws(ExpressionError) {
        tokens = try ExpressionLexer.tokens(source)
        if tokens.count > 2_000 { throw ExpressionError("expression is too long", at: 0) }
    }

    private var current: ExpressionToken { tokens[i] }

    private mutating func accept(_ symbol: String) -> Bool {
        if current.kind == .symbol(symbol) || current.kind == .identifier(symbol) && ["and", "or", "not", "in"].contains(symbol) {
            i += 1
            return true
        }
        return false
    }

    private mutating func expect(_ symbol: String) throws(ExpressionError) {
        guard accept(symbol) else { throw ExpressionError("expected '\(symbol)' \(describeCurrent())", at: current.offset) }
    }

    private func describeCurrent() -> String {
        switch current.kind {
        case .end: "but the expression ended"
        case .symbol(let s): "but found '\(s)'"
        case .identifier(let s): "but found '\(s)'"
        case .number: "but found a number"
        case .string: "but found a string"
        }
    }

    mutating func parseAll() throws(ExpressionError) -> ExpressionNode {
        guard current.kind != .end else { throw ExpressionError("empty expression", at: 0) }
        let e = try conditional()
        guard current.kind == .end else { throw ExpressionError("unexpected \(describeCurrent().replacingOccurrences(of: "but found ", with: ""))", at: current.offset) }
        return e
    }

    private mutating func nested<T>(_ body: (inout ExpressionParser) throws(ExpressionError) -> T) throws(ExpressionError) -> T {
        depth += 1
        defer { depth -= 1 }
        guard depth <= Self.maxDepth else { throw ExpressionError("expression is nested too deeply", at: current.offset) }
        return try body(&self)
    }

    private mutating func conditional() throws(ExpressionError) -> ExpressionNode {
        let cond = try coalesce()
        let offset = current.offset
        guard accept("?") else { return cond }
        let a = try nested { p throws(ExpressionError) in try p.conditional() }
        try expect(":")
        let b = try nested { p throws(ExpressionError) in try p.conditional() }
        return .conditional(cond, a, b, offset: offset)
    }

    private mutating func coalesce() throws(ExpressionError) -> ExpressionNode {
        var l = try or()
        while accept("??") { l = .coalesce(l, try or()) }
        return l
    }

    private mutating func or() throws(ExpressionError) -> ExpressionNode {
        var l = try and()
        while true {
            let offset = current.offset
            guard accept("||") || accept("or") else { return l }
            l = .or(l, try and(), offset: offset)
        }
    }

    private mutating func and() throws(ExpressionError) -> ExpressionNode {
        var l = try not()
        while true {
            let offset = current.offset
            guard accept("&&") || accept("and") else { return l }
            l = .and(l, try not(), offset: offset)
        }
    }

    private mutating func not() throws(ExpressionError) -> ExpressionNode {
        let offset = current.offset
        if accept("!") || accept("not") {
            return .unary(.not, try nested { p throws(ExpressionError) in try p.not() }, offset: offset)
        }
        return try comparison()
    }

    private mutating func comparison() throws(ExpressionError) -> ExpressionNode {
        let l = try additive()
        let offset = current.offset
        for op in ["==", "!=", "<=", ">=", "<", ">", "in"] where accept(op) {
            return .binary(.init(rawValue: op)!, l, try additive(), offset: offset)
        }
        if current.kind == .symbol("=") { throw ExpressionError("use '==' to compare", at: offset) }
        return l
    }

    private mutating func additive() throws(ExpressionError) -> ExpressionNode {
        var l = try multiplicative()
        while true {
            let offset = current.offset
            if accept("+") { l = .binary(.add, l, try multiplicative(), offset: offset) }
            else if accept("-") { l = .binary(.subtract, l, try multiplicative(), offset: offset) }
            else { return l }
        }
    }

    private mutating func multiplicative() throws(ExpressionError) -> ExpressionNode {
        var l = try unary()
        while true {
            let offset = current.offset
            if accept("*") { l = .binary(.multiply, l, try unary(), offset: offset) }
            else if accept("/") { l = .binary(.divide, l, try unary(), offset: offset) }
            else if accept("%") { l = .binary(.remainder, l, try unary(), offset: offset) }
            else { return l }
        }
    }

    private mutating func unary() throws(ExpressionError) -> ExpressionNode {
        let offset = current.offset
        if accept("-") {
            let operand = try nested { p throws(ExpressionError) in try p.unary() }
            if case .literal(.int(let v)) = operand { return .literal(.int(-v)) }
            if case .literal(.double(let v)) = operand { return .literal(.double(-v)) }
            return .unary(.negate, operand, offset: offset)
        }
        return try postfix()
    }

    private mutating func postfix() throws(ExpressionError) -> ExpressionNode {
        var e = try primary()
        while true {
            let offset = current.offset
            if accept(".") {
                guard case .identifier(let name) = current.kind else {
                    throw ExpressionError("expected a field name after '.' \(describeCurrent())", at: current.offset)
                }
                i += 1
                e = .member(e, name, offset: offset)
            } else if accept("[") {
                let index = try nested { p throws(ExpressionError) in try p.conditional() }
                try expect("]")
                e = .index(e, index, offset: offset)
            } else {
                return e
            }
        }
    }

    private mutating func primary() throws(ExpressionError) -> ExpressionNode {
        let t = current
        switch t.kind {
        case .number(let v):
            i += 1
            return .literal(v)
        case .string(let s):
            i += 1
            return .literal(.string(s))
        case .identifier(let name):
            i += 1
            switch name {
            case "true": return .literal(.bool(true))
            case "false": return .literal(.bool(false))
            case "null": return .literal(.null)
            case "and", "or", "not", "in": throw ExpressionError("unexpected '\(name)'", at: t.offset)
            default: break
            }
            guard accept("(") else { return .name(name, offset: t.offset) }
            guard let f = ExpressionFunction.named(name) else {
                let hint = Suggest.closest(name, in: ExpressionFunction.all.map(\.name)).map { " (did you mean '\($0)'?)" } ?? ""
                throw ExpressionError("unknown function '\(name)'\(hint)", at: t.offset)
            }
            var args: [ExpressionNode] = []
            if !accept(")") {
                repeat { args.append(try nested { p throws(ExpressionError) in try p.conditional() }) } while accept(",")
                try expect(")")
            }
            guard f.arity.contains(args.count) else {
                let want = f.arity.count == 1 ? "\(f.arity.lowerBound)" : f.arity.upperBound == Int.max
                    ? "at least \(f.arity.lowerBound)" : "\(f.arity.lowerBound) to \(f.arity.upperBound)"
                throw ExpressionError("\(name)() takes \(want) argument\(want == "1" ? "" : "s"), not \(args.count)", at: t.offset)
            }
            return .call(f, args, offset: t.offset)
        case .symbol("("):
            i += 1
            let e = try nested { p throws(ExpressionError) in try p.conditional() }
            try expect(")")
            return e
        case .symbol("["):
            i += 1
            var items: [ExpressionNode] = []
            if !accept("]") {
                repeat { items.append(try nested { p throws(ExpressionError) in try p.conditional() }) } while accept(",")
                try expect("]")
            }
            return .list(items)
        default:
            throw ExpressionError("expected a value \(describeCurrent())", at: t.offset)
        }
    }
}
