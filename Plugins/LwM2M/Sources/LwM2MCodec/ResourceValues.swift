import IoTCPluginKit

/// An LwM2M path: /object[/instance[/resource[/resource instance]]].
public struct LwM2MPath: Sendable, Hashable, CustomStringConvertible, Comparable {
    public var ids: [UInt16]

    public init(_ ids: [UInt16]) { self.ids = ids }

    /// Parses "/3303/0/5700"; nil unless it is 1 to 4 numeric segments (each under 65535).
    public init?(_ text: String) {
        guard text.hasPrefix("/") else { return nil }
        let parts = text.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
        guard (1...4).contains(parts.count) else { return nil }
        var ids: [UInt16] = []
        for p in parts {
            guard !p.isEmpty, p.count <= 5, p.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let n = UInt16(p), n != 65535 else { return nil }
            ids.append(n)
        }
        self.ids = ids
    }

    public var description: String { "/" + ids.map(String.init).joined(separator: "/") }
    public var object: UInt16 { ids[0] }
    public static func < (a: LwM2MPath, b: LwM2MPath) -> Bool { a.ids.lexicographicallyPrecedes(b.ids) }
}

/// Turns LwM2M payloads into typed values by path, and values into payloads, with the object model.
public struct ResourceValues: Sendable {
    public let objects: ObjectRegistry

    public init(objects: ObjectRegistry) { self.objects = objects }

    public struct Error: Swift.Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// The values in a Read or Notify payload for `path`, by full path, in the given Content-Format.
    public func decode(_ payload: [UInt8], format: UInt32, path: LwM2MPath) throws(Error) -> [(LwM2MPath, Value)] {
        switch format {
        case 11542:
            let entries: [TLV.Entry]
            do { entries = try TLV.decode(payload) } catch { throw Error(description: error.description) }
            var out: [(LwM2MPath, Value)] = []
            try flatten(entries, under: path, into: &out)
            return out
        case 11543:
            return try decodeLwM2MJSON(payload, path: path)
        case 110, 112:
            let records: [SenML.Record]
            do { records = try SenML.decode(payload, cbor: format == 112) } catch { throw Error(description: error.description) }
            return try records.map { (r) throws(Error) -> (LwM2MPath, Value) in
                guard let p = LwM2MPath(r.name) else { throw Error(description: "the SenML name '\(r.name.prefix(64))' is not an LwM2M path") }
                return (p, value(of: r))
            }
        case 60:
            guard path.ids.count >= 3 else { throw Error(description: "CBOR (60) carries one resource only") }
            do { return [(path, typed(cbor: try LwM2MCBOR.value(payload), type(of: path)))] } catch { throw Error(description: error.description) }
        case 11544:
            let entries: [(path: [UInt16], value: LwM2MCBOR.Item)]
            do { entries = try LwM2MCBOR.entries(payload) } catch { throw Error(description: error.description) }
            return try entries.map { (e) throws(Error) -> (LwM2MPath, Value) in
                let p = LwM2MPath(e.path)
                guard p.ids.starts(with: path.ids) else { throw Error(description: "\(p) is outside the path asked for, \(path)") }
                return (p, typed(cbor: e.value, type(of: p)))
            }
        case 0:
            guard path.ids.count >= 3 else { throw Error(description: "text/plain carries one resource only") }
            guard let s = String(validating: payload, as: UTF8.self) else { throw Error(description: "the text is not UTF-8") }
            return [(path, typed(text: s, type(of: path)))]
        case 42:
            guard path.ids.count >= 3 else { throw Error(description: "opaque carries one resource only") }
            return [(path, .bytes(payload))]
        default:
            throw Error(description: "Content-Format \(format) is not one the server reads (11542, 11543, 11544, 110, 112, 60, 0, 42)")
        }
    }

    /// The LwM2M 1.0 JSON format (OMA-TS-LightweightM2M-V1_0 §6.4.4): `{"bn": "/3/0/", "e": [{"n": "9",
    /// "v": 87}, {"n": "0", "sv": "..."}, {"n": "x", "bv": true}, {"n": "y", "ov": "3:0"}]}`.
    private func decodeLwM2MJSON(_ payload: [UInt8], path: LwM2MPath) throws(Error) -> [(LwM2MPath, Value)] {
        let doc: Value
        do { doc = try JSON.decode(payload) } catch { throw Error(description: "not valid JSON: \(error)") }
        guard case .array(let entries)? = doc["e"] else { throw Error(description: "LwM2M JSON needs an \"e\" array") }
        var base = path.description + "/"
        if let bn = doc["bn"] {
            guard case .string(let s) = bn else { throw Error(description: "\"bn\" must be a string") }
            base = s
        }
        return try entries.enumerated().map { (i, e) throws(Error) -> (LwM2MPath, Value) in
            guard case .object = e else { throw Error(description: "entry \(i) is not an object") }
            var name = ""
            if let n = e["n"] {
                guard case .string(let s) = n else { throw Error(description: "entry \(i): \"n\" must be a string") }
                name = s
            }
            let full = (base.hasSuffix("/") || name.isEmpty ? base : base + "/") + name
            guard let p = LwM2MPath(full.hasSuffix("/") ? String(full.dropLast()) : full) else {
                throw Error(description: "entry \(i): '\(full.prefix(64))' is not an LwM2M path")
            }
            let type = self.type(of: p)
            if let v = e["v"] {
                guard let d = v.number else { throw Error(description: "entry \(i): \"v\" must be a number") }
                switch type {
                case .integer, .unsignedInteger, .time: return (p, d.rounded() == d && abs(d) < 9e15 ? .int(Int64(d)) : .double(d))
                default: return (p, .double(d))
                }
            }
            if case .string(let s)? = e["sv"] { return (p, typed(text: s, type == .opaque ? .opaque : .string)) }
            if case .bool(let b)? = e["bv"] { return (p, .bool(b)) }
            if case .string(let s)? = e["ov"] { return (p, .string(s)) }
            throw Error(description: "entry \(i) has no value (v, sv, bv or ov)")
        }
    }

    private func flatten(_ entries: [TLV.Entry], under base: LwM2MPath, into out: inout [(LwM2MPath, Value)]) throws(Error) {
        for e in entries {
            // A TLV names the level below `base`, or restates `base`'s last level (a single resource read).
            var p = base
            switch e.kind {
            case .objectInstance: p = base.ids.count >= 2 ? base : LwM2MPath(base.ids + [e.id])
            case .resource, .multipleResource:
                switch base.ids.count {
                case 1: throw Error(description: "a resource TLV directly under object \(base.object)")
                case 2: p = LwM2MPath(base.ids + [e.id])
                default: p = LwM2MPath(Array(base.ids.prefix(2)) + [e.id])
                }
            case .resourceInstance: p = base.ids.count >= 4 ? base : LwM2MPath(Array(base.ids.prefix(3)) + [e.id])
            }
            switch e.kind {
            case .objectInstance, .multipleResource:
                if e.kind == .multipleResource {
                    for c in e.children { out.append((LwM2MPath(p.ids + [c.id]), typed(bytes: c.value, type(of: p)))) }
                } else {
                    try flatten(e.children, under: p, into: &out)
                }
            case .resource, .resourceInstance:
                out.append((p, typed(bytes: e.value, type(of: p))))
            }
        }
    }

    public func type(of path: LwM2MPath) -> ObjectDefinition.ResourceType {
        guard path.ids.count >= 3 else { return .opaque }
        return objects[path.object]?.resources[path.ids[2]]?.type ?? .opaque
    }

    func typed(bytes v: [UInt8], _ type: ObjectDefinition.ResourceType) -> Value {
        switch type {
        case .string, .corelink: return String(validating: v, as: UTF8.self).map { .string($0) } ?? .bytes(v)
        case .integer, .unsignedInteger, .time: return TLV.integer(v).map { .int($0) } ?? .bytes(v)
        case .float: return TLV.float(v).map { .double($0) } ?? TLV.integer(v).map { .int($0) } ?? .bytes(v)
        case .boolean: return TLV.boolean(v).map { .bool($0) } ?? .bytes(v)
        case .objectLink: return TLV.objectLink(v).map { .string("\($0.object):\($0.instance)") } ?? .bytes(v)
        case .opaque, .none: return .bytes(v)
        }
    }

    func typed(cbor item: LwM2MCBOR.Item, _ type: ObjectDefinition.ResourceType) -> Value {
        switch (item, type) {
        case (.int(let i), .float): return .double(Double(i))
        case (.int(let i), _): return .int(i)
        case (.unsigned(let u), _): return .double(Double(u))
        case (.float(let d), .integer), (.float(let d), .unsignedInteger), (.float(let d), .time):
            return d.rounded() == d && abs(d) < 9e15 ? .int(Int64(d)) : .double(d)
        case (.float(let d), _): return .double(d)
        case (.bool(let b), _): return .bool(b)
        case (.text(let s), _): return .string(s)
        case (.bytes(let b), .string), (.bytes(let b), .corelink): return String(validating: b, as: UTF8.self).map { .string($0) } ?? .bytes(b)
        case (.bytes(let b), _): return .bytes(b)
        case (.null, _): return .null
        }
    }

    func typed(text s: String, _ type: ObjectDefinition.ResourceType) -> Value {
        switch type {
        case .integer, .unsignedInteger, .time: return Int64(s).map { .int($0) } ?? .string(s)
        case .float: return Double(s).map { .double($0) } ?? .string(s)
        case .boolean: return s == "1" ? .bool(true) : s == "0" ? .bool(false) : .string(s)
        case .opaque: return Base64.decode(s).map { .bytes($0) } ?? .string(s)
        default: return .string(s)
        }
    }

    private func value(of r: SenML.Record) -> Value {
        switch r.value {
        case .number(let d)?: d.rounded() == d && abs(d) < 9e15 ? .int(Int64(d)) : .double(d)
        case .string(let s)?: .string(s)
        case .bool(let b)?: .bool(b)
        case .data(let b)?: .bytes(b)
        case nil: .null
        }
    }

    /// The TLV bytes of one value for a resource of `type`; nil when the value does not fit the type.
    public func bytes(_ value: Value, _ type: ObjectDefinition.ResourceType) -> [UInt8]? {
        switch (type, value) {
        case (.string, .string(let s)), (.corelink, .string(let s)): return Array(s.utf8)
        case (.integer, .int(let i)), (.unsignedInteger, .int(let i)), (.time, .int(let i)): return TLV.bytes(integer: i)
        case (.integer, .double(let d)), (.time, .double(let d)):
            return d.rounded() == d && abs(d) < 9e15 ? TLV.bytes(integer: Int64(d)) : nil
        case (.float, .double(let d)): return TLV.bytes(float: d)
        case (.float, .int(let i)): return TLV.bytes(float: Double(i))
        case (.boolean, .bool(let b)): return [b ? 1 : 0]
        case (.opaque, .string(let s)): return Base64.decode(s)
        case (.opaque, .bytes(let b)): return b
        case (.objectLink, .string(let s)):
            let p = s.split(separator: ":")
            guard p.count == 2, let o = UInt16(p[0]), let i = UInt16(p[1]) else { return nil }
            return [UInt8(o >> 8), UInt8(o & 0xFF), UInt8(i >> 8), UInt8(i & 0xFF)]
        default: return nil
        }
    }

    /// A SenML-JSON (or SenML-CBOR) payload writing `values` (resource id → value) under `path`'s
    /// object instance, each record named by its full path (LwM2M 1.1 §7.4.7); arrays are resource
    /// instances.
    public func encodeSenML(path: LwM2MPath, values: [(UInt16, Value)], cbor: Bool = false) throws(Error) -> [UInt8] {
        let records = try senmlRecords(path: path, values: values)
        return cbor ? SenML.encodeCBOR(records) : SenML.encodeJSON(records)
    }

    /// The SenML records writing `values` (resource id → value) under `path`'s object instance.
    public func senmlRecords(path: LwM2MPath, values: [(UInt16, Value)]) throws(Error) -> [SenML.Record] {
        var records: [SenML.Record] = []
        for (id, v) in values {
            let p = LwM2MPath(Array(path.ids.prefix(2)) + [id])
            let type = self.type(of: p)
            let items: [(String, Value)] = if case .array(let a) = v { a.enumerated().map { ("\(p)/\($0.offset)", $0.element) } } else { [(p.description, v)] }
            for (name, item) in items {
                let value: SenML.Record.Value
                switch (type, item) {
                case (.integer, .int(let i)), (.unsignedInteger, .int(let i)), (.time, .int(let i)): value = .number(Double(i))
                case (.float, .double(let d)): value = .number(d)
                case (.float, .int(let i)): value = .number(Double(i))
                case (.boolean, .bool(let b)): value = .bool(b)
                case (.string, .string(let s)), (.corelink, .string(let s)), (.objectLink, .string(let s)): value = .string(s)
                case (.opaque, .string(let s)):
                    guard let b = Base64.decode(s) else { throw Error(description: "\(name): an opaque value is base64") }
                    value = .data(b)
                case (.opaque, .bytes(let b)): value = .data(b)
                default: throw Error(description: "\(name): a \(type == .opaque ? "base64 (opaque)" : type.rawValue) value is needed")
                }
                records.append(SenML.Record(name: name, value: value))
            }
        }
        return records
    }

    /// A plain-text payload writing one single-instance resource (LwM2M 1.1 §7.4.1): numbers in
    /// decimal, booleans as 1 or 0, object links as object:instance.
    public func encodeText(path: LwM2MPath, value: Value) throws(Error) -> [UInt8] {
        let type = self.type(of: path)
        switch (type, value) {
        case (.integer, .int(let i)), (.unsignedInteger, .int(let i)), (.time, .int(let i)): return Array(String(i).utf8)
        case (.float, .double(let d)): return Array(String(d).utf8)
        case (.float, .int(let i)): return Array(String(i).utf8)
        case (.boolean, .bool(let b)): return [b ? UInt8(ascii: "1") : UInt8(ascii: "0")]
        case (.string, .string(let s)), (.corelink, .string(let s)), (.objectLink, .string(let s)): return Array(s.utf8)
        case (.opaque, _): throw Error(description: "\(path): an opaque resource is not written as text; use tlv or senml")
        default: throw Error(description: "\(path): a \(type.rawValue) value is needed")
        }
    }

    /// A TLV payload writing `values` (resource id → value) into an object instance, or a single
    /// resource when `path` names one.
    public func encodeTLV(path: LwM2MPath, values: [(UInt16, Value)]) throws(Error) -> [UInt8] {
        var entries: [TLV.Entry] = []
        for (id, v) in values {
            let p = LwM2MPath(Array(path.ids.prefix(2)) + [id])
            let type = self.type(of: p)
            if case .array(let items) = v {
                var children: [TLV.Entry] = []
                for (k, item) in items.enumerated() {
                    guard let b = bytes(item, type) else { throw Error(description: "\(p)/\(k): a \(type.rawValue) value is needed") }
                    children.append(TLV.Entry(kind: .resourceInstance, id: UInt16(k), value: b))
                }
                entries.append(TLV.Entry(kind: .multipleResource, id: id, children: children))
            } else {
                guard let b = bytes(v, type) else { throw Error(description: "\(p): a \(type == .opaque ? "base64 (opaque)" : type.rawValue) value is needed") }
                entries.append(TLV.Entry(kind: .resource, id: id, value: b))
            }
        }
        // The instance (and resource) are in the URI: the payload holds resources only.
        return TLV.encode(entries)
    }
}
