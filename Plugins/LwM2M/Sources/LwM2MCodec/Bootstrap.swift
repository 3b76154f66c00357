import IoTCPluginKit

/// What the bootstrap server writes into a client (OMA-TS-LightweightM2M-Core 1.1 §5.2.7): one LwM2M
/// Security instance (/0/1) and one LwM2M Server instance (/1/0) for the server the client is to
/// register with, between a Bootstrap-Delete of "/" and a Bootstrap-Finish.
public struct BootstrapPlan: Sendable, Equatable {
    /// The server the client registers with: `coap://` (no security) or `coaps://` (pre-shared key).
    public var serverURI: String
    public var shortServerID: Int
    /// Registration lifetime, seconds.
    public var lifetime: Int
    public var binding: String

    /// The instances written when the client's Bootstrap-Discover says nothing: Security instance 0 is
    /// usually the client's own bootstrap account.
    public static let securityInstance: UInt16 = 1
    public static let serverInstance: UInt16 = 0

    /// The instances to write, from a Bootstrap-Discover of "/" after the Bootstrap-Delete: the lowest
    /// of object 0 and of object 1 that the client does not list (what it lists is what the delete
    /// kept: its bootstrap account).
    public static func instances(discovered links: [LinkFormat.Link]) -> (security: UInt16, server: UInt16) {
        func free(_ object: UInt16) -> UInt16 {
            let used = Set(links.compactMap { l -> UInt16? in
                guard let p = l.objectPath, p.count == 2, p[0] == object else { return nil }
                return p[1]
            })
            return (0...UInt16.max - 1).first { !used.contains($0) } ?? 0
        }
        return (free(0), free(1))
    }

    /// Security Mode values (§E.1, resource 2 of object 0).
    public static let preSharedKeyMode = 0, noSecurityMode = 3

    public init(serverURI: String, shortServerID: Int, lifetime: Int, binding: String) throws(ResourceValues.Error) {
        guard serverURI.hasPrefix("coap://") || serverURI.hasPrefix("coaps://"), serverURI.utf8.count <= 255 else {
            throw ResourceValues.Error(description: "server_uri must be a coap:// or coaps:// URI")
        }
        guard (1...65534).contains(shortServerID) else { throw ResourceValues.Error(description: "short_server_id must be 1 to 65534") }
        guard lifetime >= 1 else { throw ResourceValues.Error(description: "lifetime must be at least 1 s") }
        guard !binding.isEmpty, binding.allSatisfy({ "UMHTSNQ".contains($0) }) else {
            throw ResourceValues.Error(description: "binding must be binding letters (U, T, S, N, Q)")
        }
        self.serverURI = serverURI
        self.shortServerID = shortServerID
        self.lifetime = lifetime
        self.binding = binding
    }

    /// Whether the server is reached over DTLS, with the pre-shared key the client bootstrapped with.
    public var secure: Bool { serverURI.hasPrefix("coaps://") }

    /// The Content-Formats a Bootstrap-Write can be in: a 1.1 client names the one it prefers with
    /// `pct` in its Bootstrap-Request (Core 1.1 §6.1.7.1); TLV otherwise, which every 1.0 client reads.
    public enum WriteFormat: UInt32, Sendable {
        case tlv = 11542, senmlJSON = 110, senmlCBOR = 112

        /// The format a Bootstrap-Request's `pct` names (nil: TLV); an error for text that is not one
        /// of the three.
        public init(pct: String?) throws(ResourceValues.Error) {
            guard let pct else {
                self = .tlv
                return
            }
            guard let n = UInt32(pct), let f = WriteFormat(rawValue: n) else {
                throw ResourceValues.Error(description: "pct must be 11542 (TLV), 110 (SenML JSON) or 112 (SenML CBOR)")
            }
            self = f
        }
    }

    /// The Security instance's resources: for `coaps`, the client's PSK identity and key; otherwise
    /// no security.
    public func securityValues(psk: (identity: [UInt8], key: [UInt8])?) -> [(UInt16, Value)] {
        let mode = psk == nil ? Self.noSecurityMode : Self.preSharedKeyMode
        return [
            (0, .string(serverURI)), (1, .bool(false)), (2, .int(Int64(mode))),
            (3, .bytes(psk?.identity ?? [])), (4, .bytes([])), (5, .bytes(psk?.key ?? [])),
            (10, .int(Int64(shortServerID))),
        ]
    }

    /// The Server instance's resources.
    public var serverValues: [(UInt16, Value)] {
        [(0, .int(Int64(shortServerID))), (1, .int(Int64(lifetime))), (6, .bool(false)), (7, .string(binding))]
    }

    /// The payload of a Bootstrap-Write of `values` into object instance `path` (/0/N or /1/N), in
    /// `format`. SenML names each resource by its full path, so the instance must be the one written.
    public static func write(_ values: [(UInt16, Value)], into path: LwM2MPath, format: WriteFormat, _ model: ResourceValues) throws(ResourceValues.Error) -> [UInt8] {
        switch format {
        case .tlv: try model.encodeTLV(path: path, values: values)
        case .senmlJSON: try model.encodeSenML(path: path, values: values)
        case .senmlCBOR: try model.encodeSenML(path: path, values: values, cbor: true)
        }
    }
}
