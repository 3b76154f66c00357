import CIoTCPluginABI
#if canImport(Glibc)
import Glibc
#endif

/// The kind of a canonical message.
public enum MessageKind: UInt32, Sendable, CaseIterable, Codable {
    case telemetry = 0
    case attributes = 1
    case event = 2
    case command = 3
    case commandResult = 4
    case lifecycle = 5
    case firmwareStatus = 6

    /// The name used in pipeline YAML, expressions and JSON.
    public var name: String {
        switch self {
        case .telemetry: "telemetry"
        case .attributes: "attributes"
        case .event: "event"
        case .command: "command"
        case .commandResult: "command_result"
        case .lifecycle: "lifecycle"
        case .firmwareStatus: "firmware_status"
        }
    }

    /// Parses a name as `name` prints it.
    public init?(name: String) {
        guard let kind = MessageKind.allCases.first(where: { $0.name == name }) else { return nil }
        self = kind
    }
}

/// A key/value pair: a protocol property or a metadata entry.
public struct KeyValue: Sendable, Hashable, Codable {
    public var key: String
    public var value: String
    public init(_ key: String, _ value: String) {
        self.key = key
        self.value = value
    }
}

/// A canonical message as a plugin sees it: an owned copy of `iotc_message`.
public struct Message: Sendable {
    public var id: String
    public var kind: MessageKind
    public var tenant: String
    public var device: String
    public var topic: String
    public var contentType: String
    public var payload: [UInt8]
    /// Milliseconds since the epoch, as the device stamped it.
    public var deviceTime: Int64?
    /// Milliseconds since the epoch, when the hub received it.
    public var receivedTime: Int64?
    public var qos: UInt8
    /// Protocol properties with namespaced keys (`mqtt.user.site`, `http.header.x-request-id`).
    public var properties: [KeyValue]
    public var metadata: [KeyValue]

    public init(
        id: String = "", kind: MessageKind = .telemetry, tenant: String = "", device: String = "",
        topic: String = "", contentType: String = "application/octet-stream", payload: [UInt8] = [],
        deviceTime: Int64? = nil, receivedTime: Int64? = nil, qos: UInt8 = 1,
        properties: [KeyValue] = [], metadata: [KeyValue] = []
    ) {
        self.id = id
        self.kind = kind
        self.tenant = tenant
        self.device = device
        self.topic = topic
        self.contentType = contentType
        self.payload = payload
        self.deviceTime = deviceTime
        self.receivedTime = receivedTime
        self.qos = qos
        self.properties = properties
        self.metadata = metadata
    }

    /// The value of the first property with this key.
    public func property(_ key: String) -> String? { properties.first { $0.key == key }?.value }
    /// The value of the first metadata entry with this key.
    public func metadata(_ key: String) -> String? { metadata.first { $0.key == key }?.value }

    /// Copies a C message. Fields beyond the size the writer declared are left at their defaults.
    public init(_ c: UnsafePointer<iotc_message>) {
        let m = c.pointee
        self.init(
            id: String(m.id), kind: MessageKind(rawValue: m.kind) ?? .telemetry, tenant: String(m.tenant),
            device: String(m.device), topic: String(m.topic), contentType: String(m.content_type),
            payload: m.payload.len > 0 && m.payload.ptr != nil
                ? Array(UnsafeBufferPointer(start: m.payload.ptr, count: m.payload.len)) : [],
            deviceTime: m.device_time_ms == IOTC_TIME_UNKNOWN ? nil : m.device_time_ms,
            received: m.received_time_ms, qos: UInt8(truncatingIfNeeded: m.qos),
            properties: KeyValue.array(m.properties, m.property_count),
            metadata: KeyValue.array(m.metadata, m.metadata_count)
        )
    }

    private init(
        id: String, kind: MessageKind, tenant: String, device: String, topic: String, contentType: String,
        payload: [UInt8], deviceTime: Int64?, received: Int64, qos: UInt8, properties: [KeyValue],
        metadata: [KeyValue]
    ) {
        self.init(
            id: id, kind: kind, tenant: tenant, device: device, topic: topic, contentType: contentType,
            payload: payload, deviceTime: deviceTime,
            receivedTime: received == IOTC_TIME_UNKNOWN ? nil : received, qos: qos,
            properties: properties, metadata: metadata)
    }

    /// Lends a C view of this message to `body`; the pointers are valid only inside it.
    public func withCMessage<R>(_ body: (UnsafePointer<iotc_message>) throws -> R) rethrows -> R {
        try withUnsafePointer(to: self) { m in
            try Message.withCViews(UnsafeBufferPointer(start: m, count: 1)) { try body($0.baseAddress!) }
        }
    }

    /// Lends C views of several messages at once (for batch calls). Every string and payload is packed
    /// into one buffer, and the key/value pairs into another: three buffers for the whole batch, however
    /// many messages and fields it holds, on the stack when they fit there (a single message always
    /// does, unless its payload is large), so that handing one message across costs no allocation.
    public static func withCMessages<R>(_ messages: [Message], _ body: (UnsafeBufferPointer<iotc_message>) throws -> R) rethrows -> R {
        try messages.withUnsafeBufferPointer { try withCViews($0, body) }
    }

    /// The packing behind `withCMessage` and `withCMessages`, over a buffer: iterating a generic
    /// collection of messages across the module boundary copied each one through an allocation.
    private static func withCViews<R>(_ messages: UnsafeBufferPointer<Message>, _ body: (UnsafeBufferPointer<iotc_message>) throws -> R) rethrows -> R {
        var byteCount = 0, kvCount = 0
        for m in messages {
            byteCount += m.id.utf8.count + m.tenant.utf8.count + m.device.utf8.count + m.topic.utf8.count
                + m.contentType.utf8.count + m.payload.count
            for kv in m.properties { byteCount += kv.key.utf8.count + kv.value.utf8.count }
            for kv in m.metadata { byteCount += kv.key.utf8.count + kv.value.utf8.count }
            kvCount += m.properties.count + m.metadata.count
        }
        return try withUnsafeTemporaryAllocation(of: CChar.self, capacity: max(1, byteCount)) { bytes in
            try withUnsafeTemporaryAllocation(of: iotc_kv.self, capacity: max(1, kvCount)) { kvs in
                try withUnsafeTemporaryAllocation(of: iotc_message.self, capacity: max(1, messages.count)) { out in
                    var packer = CMessagePacker(bytes: bytes.baseAddress!, kvs: kvs.baseAddress!)
                    for i in messages.indices { (out.baseAddress! + i).initialize(to: packer.pack(messages[i])) }
                    return try body(UnsafeBufferPointer(start: out.baseAddress, count: messages.count))
                }
            }
        }
    }
}

/// Fills the byte and key/value buffers of `Message.withCMessages` front to back. A value, not closures
/// over local counters: those had each access checked at run time.
private struct CMessagePacker {
    let bytes: UnsafeMutablePointer<CChar>, kvs: UnsafeMutablePointer<iotc_kv>
    var at = 0, kvAt = 0

    /// The C view of `m`, its strings, payload and key/value pairs copied into the buffers.
    mutating func pack(_ m: Message) -> iotc_message {
        var c = iotc_message()
        c.struct_size = UInt32(MemoryLayout<iotc_message>.size)
        c.kind = m.kind.rawValue
        c.id = put(m.id)
        c.tenant = put(m.tenant)
        c.device = put(m.device)
        c.topic = put(m.topic)
        c.content_type = put(m.contentType)
        let payload = m.payload.withUnsafeBytes { put($0) }
        c.payload = iotc_bytes(ptr: m.payload.isEmpty ? nil : UnsafeRawPointer(payload).assumingMemoryBound(to: UInt8.self), len: m.payload.count)
        c.device_time_ms = m.deviceTime ?? IOTC_TIME_UNKNOWN
        c.received_time_ms = m.receivedTime ?? IOTC_TIME_UNKNOWN
        c.qos = UInt32(m.qos)
        c.properties = put(m.properties)
        c.property_count = m.properties.count
        c.metadata = put(m.metadata)
        c.metadata_count = m.metadata.count
        return c
    }

    mutating func put(_ raw: UnsafeRawBufferPointer) -> UnsafeMutablePointer<CChar> {
        let start = bytes + at
        if let base = raw.baseAddress { UnsafeMutableRawPointer(start).copyMemory(from: base, byteCount: raw.count) }
        at += raw.count
        return start
    }

    mutating func put(_ s: String) -> iotc_str {
        var s = s
        let n = s.utf8.count
        return iotc_str(ptr: s.withUTF8 { put(UnsafeRawBufferPointer($0)) }, len: n)
    }

    mutating func put(_ list: [KeyValue]) -> UnsafePointer<iotc_kv>? {
        guard !list.isEmpty else { return nil }
        let first = kvs + kvAt
        for kv in list {
            let key = put(kv.key), value = put(kv.value)
            (kvs + kvAt).initialize(to: iotc_kv(key: key, value: value))
            kvAt += 1
        }
        return UnsafePointer(first)
    }
}

extension KeyValue {
    static func array(_ p: UnsafePointer<iotc_kv>?, _ n: Int) -> [KeyValue] {
        guard let p, n > 0 else { return [] }
        return (0..<n).map { KeyValue(String(p[$0].key), String(p[$0].value)) }
    }
}

extension String {
    /// Copies an `iotc_str` (invalid UTF-8 is repaired with U+FFFD).
    public init(_ s: iotc_str) {
        guard let ptr = s.ptr, s.len > 0 else {
            self = ""
            return
        }
        if s.len > 15 {
            for known in Self.common where known.bytes.count == s.len {
                if known.bytes.withUnsafeBytes({ memcmp($0.baseAddress!, ptr, s.len) }) == 0 {
                    self = known.text
                    return
                }
            }
        }
        self = ptr.withMemoryRebound(to: UInt8.self, capacity: s.len) {
            String(decoding: UnsafeBufferPointer(start: $0, count: s.len), as: UTF8.self)
        }
    }

    /// Text that crosses the ABI with nearly every message and is too long to be stored inline (over 15
    /// bytes): these literals are taken instead of a new allocation each time.
    private static let common: [(bytes: [UInt8], text: String)] = [
        "application/json", "application/octet-stream", "application/cbor", "application/senml+json",
        "application/senml+cbor", "application/vnd.oma.lwm2m+tlv", "coap.content_format",
    ].map { (Array($0.utf8), $0) }

    /// Lends this string as an `iotc_str` to `body`.
    public func withIOTCString<R>(_ body: (iotc_str) throws -> R) rethrows -> R {
        var copy = self
        return try copy.withUTF8 { buf in
            try buf.withMemoryRebound(to: CChar.self) { try body(iotc_str(ptr: $0.baseAddress, len: $0.count)) }
        }
    }
}

/// Packs many strings into one buffer so that C views of all of them can be lent at once.
public struct CStringArena {
    public struct Ref { let offset: Int, count: Int }
    private var bytes: [UInt8] = []

    public init() {}

    public mutating func add(_ s: String) -> Ref {
        let start = bytes.count
        bytes.append(contentsOf: s.utf8)
        return Ref(offset: start, count: bytes.count - start)
    }

    public func withStrings<R>(_ body: ((Ref) -> iotc_str) throws -> R) rethrows -> R {
        try bytes.withUnsafeBufferPointer { buf in
            try buf.withMemoryRebound(to: CChar.self) { chars in
                try body { ref in iotc_str(ptr: chars.baseAddress.map { $0 + ref.offset }, len: ref.count) }
            }
        }
    }
}
