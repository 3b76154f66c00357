import CIoTCPluginABI

/// The type of a configuration field.
public indirect enum FieldType: Sendable, Equatable {
    case string
    case int
    case float
    case bool
    /// Written as "250ms", "5s", "1m", "2h"; handed to the plugin as seconds.
    case duration
    /// Written as "512", "64KiB", "1MiB"; handed to the plugin as bytes.
    case byteSize
    case list(FieldType)
    case object([ConfigField])
    case map(FieldType)
    case any

    /// The name shown in docs and errors.
    public var name: String {
        switch self {
        case .string: "string"
        case .int: "integer"
        case .float: "number"
        case .bool: "boolean"
        case .duration: "duration"
        case .byteSize: "byte size"
        case .list(let e): "list of \(e.name)"
        case .object: "object"
        case .map(let e): "map of \(e.name)"
        case .any: "any"
        }
    }
}

/// One configuration field of a component, as its spec declares it.
public struct ConfigField: Sendable, Equatable {
    public var name: String
    public var type: FieldType
    public var description: String
    /// JSON text of the default value.
    public var defaultJSON: String?
    /// YAML text of an example value.
    public var example: String?
    public var required: Bool
    public var secret: Bool
    public var advanced: Bool
    public var deprecated: Bool
    /// Allowed values of a string field.
    public var options: [String]

    public init(
        _ name: String, _ type: FieldType, _ description: String, default defaultJSON: String? = nil,
        example: String? = nil, required: Bool = false, secret: Bool = false, advanced: Bool = false,
        deprecated: Bool = false, options: [String] = []
    ) {
        self.name = name
        self.type = type
        self.description = description
        self.defaultJSON = defaultJSON
        self.example = example
        self.required = required
        self.secret = secret
        self.advanced = advanced
        self.deprecated = deprecated
        self.options = options
    }

    /// The nested fields of an object, or of a list or map of objects.
    public var children: [ConfigField]? {
        switch type {
        case .object(let f), .list(.object(let f)), .map(.object(let f)): f
        default: nil
        }
    }
}

// MARK: - C conversion

extension ConfigField {
    /// Reads a C field list (the kernel reads plugins' specs with this).
    public static func fields(_ p: UnsafePointer<iotc_config_field>?, count: Int) -> [ConfigField] {
        guard let p, count > 0 else { return [] }
        return (0..<count).map { ConfigField(p[$0]) }
    }

    init(_ c: iotc_config_field) {
        let children = ConfigField.fields(c.fields, count: c.field_count)
        func type(_ raw: UInt32, element: UInt32?) -> FieldType {
            switch raw {
            case IOTC_FIELD_STRING: .string
            case IOTC_FIELD_INT: .int
            case IOTC_FIELD_FLOAT: .float
            case IOTC_FIELD_BOOL: .bool
            case IOTC_FIELD_DURATION: .duration
            case IOTC_FIELD_BYTE_SIZE: .byteSize
            case IOTC_FIELD_LIST: .list(element.map { type($0, element: nil) } ?? .any)
            case IOTC_FIELD_MAP: .map(element.map { type($0, element: nil) } ?? .any)
            case IOTC_FIELD_OBJECT: .object(children)
            default: .any
            }
        }
        var options: [String] = []
        if var o = c.options {
            while let s = o.pointee {
                options.append(String(cString: s))
                o += 1
            }
        }
        self.init(
            c.name.map { String(cString: $0) } ?? "",
            type(c.type, element: c.element_type),
            c.description.map { String(cString: $0) } ?? "",
            default: c.default_json.map { String(cString: $0) },
            example: c.example.map { String(cString: $0) },
            required: c.flags & IOTC_FIELD_REQUIRED != 0,
            secret: c.flags & IOTC_FIELD_SECRET != 0,
            advanced: c.flags & IOTC_FIELD_ADVANCED != 0,
            deprecated: c.flags & IOTC_FIELD_DEPRECATED != 0,
            options: options)
    }
}

/// Builds C field lists that live for the rest of the process (plugin descriptors are never freed).
enum CFieldBuilder {
    static func cString(_ s: String?) -> UnsafePointer<CChar>? {
        guard let s else { return nil }
        return UnsafePointer(strdup(s))
    }

    static func build(_ fields: [ConfigField]) -> (UnsafePointer<iotc_config_field>?, Int) {
        guard !fields.isEmpty else { return (nil, 0) }
        let p = UnsafeMutablePointer<iotc_config_field>.allocate(capacity: fields.count)
        for (i, f) in fields.enumerated() {
            var c = iotc_config_field()
            c.struct_size = UInt32(MemoryLayout<iotc_config_field>.size)
            (c.type, c.element_type) = raw(f.type)
            c.flags = (f.required ? IOTC_FIELD_REQUIRED : 0) | (f.secret ? IOTC_FIELD_SECRET : 0)
                | (f.advanced ? IOTC_FIELD_ADVANCED : 0) | (f.deprecated ? IOTC_FIELD_DEPRECATED : 0)
            c.name = cString(f.name)
            c.description = cString(f.description)
            c.default_json = cString(f.defaultJSON)
            c.example = cString(f.example)
            if !f.options.isEmpty {
                let o = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: f.options.count + 1)
                for (j, s) in f.options.enumerated() { o[j] = cString(s) }
                o[f.options.count] = nil
                c.options = UnsafePointer(o)
            }
            if let children = f.children { (c.fields, c.field_count) = build(children) }
            p.advanced(by: i).initialize(to: c)
        }
        return (UnsafePointer(p), fields.count)
    }

    private static func raw(_ t: FieldType) -> (UInt32, UInt32) {
        switch t {
        case .string: (IOTC_FIELD_STRING, 0)
        case .int: (IOTC_FIELD_INT, 0)
        case .float: (IOTC_FIELD_FLOAT, 0)
        case .bool: (IOTC_FIELD_BOOL, 0)
        case .duration: (IOTC_FIELD_DURATION, 0)
        case .byteSize: (IOTC_FIELD_BYTE_SIZE, 0)
        case .list(let e): (IOTC_FIELD_LIST, raw(e).0)
        case .map(let e): (IOTC_FIELD_MAP, raw(e).0)
        case .object: (IOTC_FIELD_OBJECT, 0)
        case .any: (IOTC_FIELD_ANY, 0)
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
