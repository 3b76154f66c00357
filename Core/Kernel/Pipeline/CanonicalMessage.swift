import IoTCPluginKit

/// The kernel's form of a message: the canonical envelope, with the payload either as bytes or, after a
/// decode step, as a structured value.
public struct CanonicalMessage: Sendable {
    public enum Payload: Sendable, Equatable {
        case bytes([UInt8])
        case value(Value)
    }

    public var id: String
    public var kind: MessageKind
    public var tenant: String
    public var device: String
    public var topic: String
    public var contentType: String { didSet { decodedFrom = nil } }
    public var payload: Payload { didSet { decodedFrom = nil } }
    /// The bytes a decode step read the payload's value from, kept while neither the payload nor the
    /// content type has changed since: they are that value in that content type, so that a pipeline that
    /// only reads the value (filters, rules) hands its sinks the device's own bytes, not the value encoded
    /// again (which would also rewrite its numbers and spacing).
    public private(set) var decodedFrom: [UInt8]?
    public var deviceTime: Int64?
    public var receivedTime: Int64
    public var qos: UInt8
    public var properties: [KeyValue]
    public var metadata: [KeyValue]

    public init(_ m: consuming Message, receivedTime: Int64) {
        id = m.id
        kind = m.kind
        tenant = m.tenant
        device = m.device
        topic = m.topic
        contentType = m.contentType
        payload = .bytes(m.payload)
        deviceTime = m.deviceTime
        self.receivedTime = m.receivedTime ?? receivedTime
        qos = m.qos
        properties = m.properties
        metadata = m.metadata
    }

    /// A decode step's result: the value read from `bytes`, which are in `contentType`.
    mutating func setDecoded(_ value: Value, from bytes: [UInt8], contentType: String) {
        payload = .value(value)
        self.contentType = contentType
        decodedFrom = bytes
    }

    /// The payload as bytes and the content type they are in: a structured value is the bytes it was
    /// decoded from while it is unchanged, or else encoded by the content type, or as JSON (and so
    /// labelled) when the content type names no codec.
    private var encoded: (bytes: [UInt8], contentType: String) {
        switch payload {
        case .bytes(let b):
            return (b, contentType)
        case .value(let v):
            if let decodedFrom { return (decodedFrom, contentType) }
            guard let codec = PayloadCodec(contentType: contentType) else { return (PayloadCodec.json.encode(v), PayloadCodec.json.contentType) }
            return (codec.encode(v), contentType)
        }
    }

    /// The payload as bytes (see `encoded`).
    public var payloadBytes: [UInt8] { encoded.bytes }

    /// The message as plugins receive it, its payload as bytes (see `encoded`).
    public var pluginMessage: Message {
        let (bytes, ct) = encoded
        return Message(id: id, kind: kind, tenant: tenant, device: device, topic: topic, contentType: ct,
                       payload: bytes, deviceTime: deviceTime, receivedTime: receivedTime, qos: qos,
                       properties: properties, metadata: metadata)
    }

    public func metadata(_ key: String) -> String? { metadata.first { $0.key == key }?.value }

    public mutating func setMetadata(_ key: String, _ value: String) {
        if let i = metadata.firstIndex(where: { $0.key == key }) { metadata[i].value = value } else { metadata.append(KeyValue(key, value)) }
    }

    var evaluationEnvelope: EvaluationContext.Envelope {
        var e = EvaluationContext.Envelope()
        e.id = id
        e.tenant = tenant
        e.device = device
        e.topic = topic
        e.kind = kind.name
        e.contentType = contentType
        e.receivedAt = receivedTime
        e.deviceTime = deviceTime
        e.qos = Int(qos)
        return e
    }
}
