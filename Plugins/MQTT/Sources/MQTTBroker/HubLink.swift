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
    /// Hands a device's message to the pipelines. When it is accepted and a `ticket` came with it
    /// (QoS 1 and 2), `ticket.complete(nil)` follows once the hub owns the message (durably, on a
    /// durable pipeline), `ticket.complete(reason)` when it failed; otherwise the ticket is not used.
    func submit(_ m: BrokerMessage, identity: ClientIdentity, clientID: String, ticket: SubmitTicket?) -> HubSubmitStatus
    func connected(_ identity: ClientIdentity, clientID: String, remoteAddress: String)
    func disconnected(_ identity: ClientIdentity, clientID: String, reason: String)
    /// A subscription to `filter` (the client's own name for it, no share group) was granted and is
    /// about to take effect: what the hub retains for it now reaches the client with it.
    func subscribing(_ identity: ClientIdentity, filter: String)
}

extension HubLink {
    public func subscribing(_ identity: ClientIdentity, filter: String) {}
}

/// Where the hub's verdict on one submitted QoS 1 or 2 PUBLISH goes: the connection's link, with the
/// message's place among the acknowledgements the connection owes. A connection reuses the tickets its
/// settled messages free, so that a submit allocates nothing for its completion (a closure for each
/// was one of the allocations per message on the event loop, and another on the thread completing it).
public final class SubmitTicket: @unchecked Sendable {
    let link: ClientLink
    var slot: UInt64 = 0
    var failure: String?

    init(link: ClientLink) { self.link = link }

    /// The hub's verdict, once, from any thread: nil when it has the message. The connection's event
    /// loop reads it after taking the ticket back from the link, under the link's lock.
    public func complete(_ failure: String?) {
        self.failure = failure
        link.settle(self)
    }
}
