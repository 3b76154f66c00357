/// A structured payload value: what JSON and CBOR decode to and what expressions compute with.
public enum Value: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case bytes([UInt8])
    case array([Value])
    case object(Object)

    /// An object with keys in insertion order (payloads are small: lookup is a scan).
    public struct Object: Sendable, Equatable, Sequence {
        /// The members in order, keys beside their values in one array: one allocation per object.
        public private(set) var members: [(String, Value)] = []

        public init() {}
        public init(_ pairs: [(String, Value)]) {
            members.reserveCapacity(pairs.count)
            for (k, v) in pairs { self[k] = v }
        }

        public var count: Int { members.count }
        public var isEmpty: Bool { members.isEmpty }
        public var keys: [String] { members.map(\.0) }
        public var values: [Value] { members.map(\.1) }

        func index(of key: String) -> Int? { members.firstIndex { $0.0 == key } }

        public subscript(key: String) -> Value? {
            get { index(of: key).map { members[$0].1 } }
            set {
                if let i = index(of: key) {
                    if let newValue { members[i].1 = newValue } else { members.remove(at: i) }
                } else if let newValue {
                    appendNew(key, newValue)
                }
            }
        }

        /// Room made by the first member: objects from devices have a handful of members, and growing
        /// the array a step at a time (1, 2, 4, 8) cost several allocations per object.
        static let initialCapacity = 8

        /// Adds a member whose key is not there yet.
        private mutating func appendNew(_ key: String, _ value: Value) {
            if members.capacity == 0 { members.reserveCapacity(Self.initialCapacity) }
            members.append((key, value))
        }

        public func makeIterator() -> IndexingIterator<[(String, Value)]> { members.makeIterator() }

        /// Same members in the same order.
        public static func == (a: Object, b: Object) -> Bool {
            a.members.count == b.members.count && zip(a.members, b.members).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        }

        /// Builds an object member by member for a decoder. A key is found by a scan while the object is
        /// small, then by a hash index kept beside it, so that a large document (or one crafted to stall
        /// the decoder) costs linear time rather than quadratic. A repeated key keeps its first place and
        /// takes its last value, as setting it does.
        struct Builder {
            private(set) var object = Object()
            private var positions: [String: Int]?
            static let indexedFrom = 16

            var count: Int { object.members.count }

            mutating func set(_ key: String, _ value: Value) {
                if positions == nil, object.members.count >= Self.indexedFrom {
                    var p = [String: Int](minimumCapacity: object.members.count * 2)
                    for (i, m) in object.members.enumerated() { p[m.0] = i }
                    positions = p
                }
                let existing = positions != nil ? positions![key] : object.index(of: key)
                if let existing {
                    object.members[existing].1 = value
                } else {
                    positions?[key] = object.members.count
                    object.appendNew(key, value)
                }
            }
        }
    }

    /// The type name used in error messages and by the `type()` function.
    public var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "bool"
        case .int, .double: "number"
        case .string: "string"
        case .bytes: "bytes"
        case .array: "array"
        case .object: "object"
        }
    }

    public subscript(key: String) -> Value? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    /// The value as a Double, for ints and doubles.
    public var number: Double? {
        switch self {
        case .int(let i): Double(i)
        case .double(let d): d
        default: nil
        }
    }
}

extension Value: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByNilLiteral, ExpressibleByArrayLiteral,
    ExpressibleByDictionaryLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(nilLiteral: ()) { self = .null }
    public init(arrayLiteral elements: Value...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, Value)...) { self = .object(Object(elements)) }
}

extension Value.Object: ExpressibleByDictionaryLiteral {
    public init(dictionaryLiteral elements: (String, Value)...) { self.init(elements) }
}

/// A located error from a decoder: what is wrong and at which byte.
public struct DecodeError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public var offset: Int
    public init(_ message: String, at offset: Int) {
        self.message = message
        self.offset = offset
    }
    public var description: String { "\(message) at byte \(offset)" }
}

/// Limits every decoder enforces on untrusted input.
public struct DecodeLimits: Sendable {
    /// Deepest nesting of arrays and objects. Default 64.
    public var maxDepth: Int = 64
    /// Most elements in one array or object (and bytes in one CBOR string). Default 1,000,000.
    public var maxElements: Int = 1_000_000
    public init() {}
}
