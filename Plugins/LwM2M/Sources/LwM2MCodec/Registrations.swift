/// The registration interface's state (OMA-TS-LightweightM2M-Core 1.1 §6.2.1, §6.2.2, §6.2.3): who is
/// registered under which endpoint name, until when. No I/O: the server applies each event and acts
/// on the answer.
public struct Registrations: Sendable {
    public struct Registration: Sendable, Equatable {
        /// The registration id the client was given (Location-Path `rd/{id}`).
        public var id: String
        public var endpoint: String
        /// Who registered it: the device's tenant and id as authenticated.
        public var tenant: String
        public var device: String
        public var lifetime: Int
        public var binding: String
        /// Queue mode (binding `Q` in 1.0, the `Q` parameter in 1.1): the client listens only for a
        /// while after it last spoke, so requests wait for it.
        public var queueMode: Bool
        public var version: String
        public var objects: [LinkFormat.Link]
        /// Seconds since the epoch when it lapses without an Update.
        public var expires: Double
        /// The remote address it last spoke from.
        public var remote: String
        /// When it last spoke (seconds since the epoch).
        public var heard: Double

        /// Whether the client listens now: always, or in queue mode for `listening` seconds after it
        /// last spoke (OMA-TS-LightweightM2M-Transport 1.1 §6.4: CoAP's MAX_TRANSMIT_WAIT, 93 s).
        public func awake(now: Double, listening: Double = 93) -> Bool { !queueMode || now - heard < listening }
    }

    public enum RegisterOutcome: Sendable, Equatable {
        /// Registered; `replaced` is an earlier registration of the same endpoint by the same device.
        case registered(Registration, replaced: Registration?)
        /// The endpoint name is registered by another device.
        case endpointTaken
    }

    public private(set) var byID: [String: Registration] = [:]
    private var idByEndpoint: [String: String] = [:]
    private var nextID: UInt64 = 1
    private let prefix: String

    /// `prefix` makes ids unique across restarts (registration ids are never reused).
    public init(idPrefix: String) { prefix = idPrefix }

    public var count: Int { byID.count }

    /// The endpoint name is unique per tenant.
    private static func key(_ tenant: String, _ endpoint: String) -> String { tenant + "\u{0}" + endpoint }

    public func registration(tenant: String, endpoint: String) -> Registration? {
        idByEndpoint[Self.key(tenant, endpoint)].flatMap { byID[$0] }
    }

    public mutating func register(endpoint: String, tenant: String, device: String, lifetime: Int, binding: String, queueMode: Bool = false,
                                  version: String, objects: [LinkFormat.Link], remote: String, now: Double) -> RegisterOutcome {
        let key = Self.key(tenant, endpoint)
        var replaced: Registration?
        if let old = idByEndpoint[key].flatMap({ byID[$0] }) {
            guard old.device == device else { return .endpointTaken }
            replaced = old
            byID[old.id] = nil
        }
        let id = prefix + String(nextID, radix: 36)
        nextID += 1
        let r = Registration(id: id, endpoint: endpoint, tenant: tenant, device: device, lifetime: lifetime, binding: binding,
                             queueMode: queueMode || binding.contains("Q"), version: version, objects: objects,
                             expires: now + Double(lifetime), remote: remote, heard: now)
        byID[id] = r
        idByEndpoint[key] = id
        return .registered(r, replaced: replaced)
    }

    /// An Update: a new lifetime, binding or object list, and a fresh expiry. Nil when `id` is unknown
    /// (the client must register again: 4.04).
    public mutating func update(id: String, lifetime: Int?, binding: String?, queueMode: Bool? = nil, objects: [LinkFormat.Link]?, remote: String,
                                now: Double) -> Registration? {
        guard var r = byID[id] else { return nil }
        if let lifetime { r.lifetime = lifetime }
        if let binding {
            r.binding = binding
            r.queueMode = binding.contains("Q")
        }
        if let queueMode { r.queueMode = r.queueMode || queueMode }
        r.heard = now
        if let objects { r.objects = objects }
        r.remote = remote
        r.expires = now + Double(r.lifetime)
        byID[id] = r
        return r
    }

    public mutating func deregister(id: String) -> Registration? {
        guard let r = byID.removeValue(forKey: id) else { return nil }
        idByEndpoint[Self.key(r.tenant, r.endpoint)] = nil
        return r
    }

    /// The client spoke (a response or notification): it listens for a while.
    public mutating func heard(id: String, now: Double) { byID[id]?.heard = now }

    /// Removes and returns the registrations whose lifetime has passed.
    public mutating func expire(now: Double) -> [Registration] {
        let gone = byID.values.filter { $0.expires <= now }
        for r in gone { _ = deregister(id: r.id) }
        return gone
    }
}

extension Registrations.Registration {
    /// The path under which the client's objects are: "/" or its alternate path (`LinkFormat.root`).
    public var rootPath: String { LinkFormat.root(of: objects) }

    /// The link the client gave for `object` (or one of its instances), under its root path.
    public func link(of object: UInt16) -> LinkFormat.Link? {
        let root = rootPath
        return objects.first { $0.objectPath(under: root)?.first == object }
    }

    /// The Content-Formats the client reads, from the `ct` attribute of its root link (`</>`, or the
    /// one with `rt="oma.lwm2m"`; LwM2M 1.1 §6.2.1: one number, or several in quotes separated by
    /// spaces); empty when it names none, as 1.0 clients do.
    public var contentFormats: [UInt32] {
        let root = objects.first { $0.attributes["rt"] == "oma.lwm2m" } ?? objects.first { $0.target == "/" }
        return root?.attributes["ct"]?.split(separator: " ").compactMap { UInt32($0) } ?? []
    }

    /// The Content-Format of a write or create that names none: TLV (11542), which every 1.0 client
    /// reads, unless the client lists what it reads without TLV; then the first of SenML-CBOR (112) and
    /// SenML-JSON (110) it lists.
    public var writeFormat: UInt32 {
        let listed = contentFormats
        if listed.isEmpty || listed.contains(11542) { return 11542 }
        return listed.first { $0 == 112 || $0 == 110 } ?? 11542
    }

    /// The Content-Format of a composite operation that names none: SenML-JSON (110) unless the
    /// client lists SenML-CBOR (112) and not SenML-JSON.
    public var compositeFormat: UInt32 {
        let listed = contentFormats
        return listed.contains(112) && !listed.contains(110) ? 112 : 110
    }
}
