import MQTTCodec

/// An authenticated client, as the hub (or the static user list) granted it.
public protocol ClientIdentity: AnyObject, Sendable {
    var tenant: String { get }
    var device: String { get }
}

/// What a CONNECT presents.
public struct ConnectCredentials: Sendable {
    public var clientID: String
    public var username: String?
    public var password: [UInt8]?
    public var remoteAddress: String
    public var certificateFingerprint: String?
    /// The TLS client certificate chain (DER, leaf first), for certificates a tenant's authority issued.
    public var certificateChain: [[UInt8]] = []
}

/// What `submit` answered at once.
public enum HubSubmitStatus: Sendable, Equatable {
    /// The hub takes it; the completion follows.
    case accepted
    /// No pipeline reads this topic; nothing follows.
    case notRouted
    /// The pipeline is full: offer it again later; nothing follows.
    case busy
    /// Refused; nothing follows.
    case refused(String)
}

/// The server's view of the hub: authentication, authorization, and the pipelines. The plugin
/// implements it over the plugin ABI; tests implement it in memory.
public protocol HubLink: AnyObject, Sendable {
    func authenticate(_ c: ConnectCredentials) -> ClientIdentity?
    func mayPublish(_ identity: ClientIdentity, topic: String) -> Bool
    func maySubscribe(_ identity: ClientIdentity, filter: String) -> Bool
    /// Hands a device's message to the pipelines. `done(nil)` once the hub owns it (durably, on a
    /// durable pipeline), `done(reason)` when it failed.
    func submit(_ m: BrokerMessage, identity: ClientIdentity, clientID: String, done: @escaping @Sendable (String?) -> Void) -> HubSubmitStatus
    func connected(_ identity: ClientIdentity, clientID: String, remoteAddress: String)
    func disconnected(_ identity: ClientIdentity, clientID: String, reason: String)
    /// A subscription to `filter` (the client's own name for it, no share group) was granted and is
    /// about to take effect: what the hub retains for it now reaches the client with it.
    func subscribing(_ identity: ClientIdentity, filter: String)
}

extension HubLink {
    public func subscribing(_ identity: ClientIdentity, filter: String) {}
}
