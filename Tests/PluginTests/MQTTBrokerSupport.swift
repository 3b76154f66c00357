import MQTTBroker
import MQTTCodec
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded

/// The hub as the broker tests see it: everyone may connect (but "bad" passwords), ACLs by prefix,
/// and a record of what was submitted. `busy` makes submit answer backpressure.
final class MemoryHub: HubLink, @unchecked Sendable {
    /// A client whose user name is `t:NAME` belongs to tenant NAME; everyone else to `default`.
    final class User: ClientIdentity {
        let tenant: String
        let device: String
        init(_ d: String, tenant: String = "default") {
            device = d
            self.tenant = tenant
        }
    }
    private let lock = NIOLock()
    private var _submitted: [BrokerMessage] = []
    private var _pendingDone: [SubmitTicket] = []
    var busy = false
    var routes = true
    /// Hold completions until `completeAll` (a durable pipeline still writing).
    var holdCompletions = false
    var denyPublish: Set<String> = []
    var denySubscribe: Set<String> = []
    var connectedClients: [String] = []
    var disconnectedClients: [String] = []

    var submitted: [BrokerMessage] { lock.withLock { _submitted } }

    func authenticate(_ c: ConnectCredentials) -> ClientIdentity? {
        guard c.password.map({ String(decoding: $0, as: UTF8.self) }) != "bad" else { return nil }
        if let u = c.username, u.hasPrefix("t:") { return User(c.clientID, tenant: String(u.dropFirst(2))) }
        return User(c.clientID)
    }
    func mayPublish(_ identity: ClientIdentity, topic: String) -> Bool { !denyPublish.contains(topic) }
    func maySubscribe(_ identity: ClientIdentity, filter: String) -> Bool { !denySubscribe.contains(filter) }
    func submit(_ m: BrokerMessage, identity: ClientIdentity, clientID: String, ticket: SubmitTicket?) -> HubSubmitStatus {
        if busy { return .busy }
        guard routes else { return .notRouted }
        lock.withLock {
            _submitted.append(m)
            if holdCompletions, let ticket { _pendingDone.append(ticket) }
        }
        if !holdCompletions { ticket?.complete(nil) }
        return .accepted
    }
    /// The held completions' tickets, for a test to complete in its own order.
    func takeHeld() -> [SubmitTicket] { lock.withLock { defer { _pendingDone = [] }; return _pendingDone } }
    func completeAll(_ failure: String? = nil) {
        let all = lock.withLock { defer { _pendingDone = [] }; return _pendingDone }
        for t in all { t.complete(failure) }
    }
    func connected(_ identity: ClientIdentity, clientID: String, remoteAddress: String) { connectedClients.append(clientID) }
    func disconnected(_ identity: ClientIdentity, clientID: String, reason: String) { disconnectedClients.append(clientID) }
}

/// A client driving a `ServerConnection` directly: packets in, decoded packets out, no sockets.
final class TestClient: ConnectionControl {
    let connection: ServerConnection
    let version: MQTTVersion
    private var decoder: MQTTPacketDecoder
    var closed = false
    var paused = false
    var keepAlive: Double?
    var retries = 0
    /// Packets that came with the CONNACK (a resumed session's messages), returned by the next read.
    private var backlog: [MQTTPacket] = []

    init(_ broker: Broker, _ hub: MemoryHub, version: MQTTVersion = .v5, limits: ServerLimits = ServerLimits(), maxPendingBytes: Int = 4 << 20) {
        self.version = version
        decoder = MQTTPacketDecoder(version: version)
        let link = ClientLink(maxPendingBytes: maxPendingBytes)
        connection = ServerConnection(broker: broker, hub: hub, limits: limits, link: link, remoteAddress: "127.0.0.1:1")
        connection.control = self
        link.owner = self
    }

    /// CONNECT; returns the CONNACK.
    @discardableResult
    func connect(_ id: String, clean: Bool = true, keepAlive: UInt16 = 60, username: String? = nil, password: String? = nil, will: MQTTWill? = nil,
                 properties: [MQTTProperty] = []) -> MQTTConnAck? {
        send(.connect(MQTTConnect(version: version, clientID: id, cleanStart: clean, keepAlive: keepAlive,
                                  username: username ?? (password == nil ? nil : "u"), password: password.map { Array($0.utf8) }, will: will, properties: properties)))
        var packets = read()
        guard case .connack(let a)? = packets.first else { return nil }
        packets.removeFirst()
        backlog = packets
        return a
    }

    func send(_ p: MQTTPacket) {
        // Round-trip through the codec, as a real client's bytes would.
        var b = ByteBuffer()
        MQTTPacketEncoder.write(p, version: version, into: &b)
        var d = MQTTPacketDecoder(version: { if case .connect = p { return nil } else { return version } }())
        guard let decoded = try? d.decode(buffer: &b) else { fatalError("test sent an invalid packet \(p)") }
        connection.receive(decoded)
        runTasks()
    }

    /// Everything the server wrote to this client since the last read.
    func read() -> [MQTTPacket] {
        runTasks()
        var out = backlog
        backlog = []
        guard var bytes = connection.link.takePending() else { return out }
        while let p = try? decoder.decode(buffer: &bytes) { out.append(p) }
        return out
    }

    func publishes() -> [MQTTPublish] {
        read().compactMap { if case .publish(let p) = $0 { return p } else { return nil } }
    }

    func subscribe(_ filter: String, qos: UInt8 = 1, id: UInt16 = 1, options: MQTTSubscriptionOptions? = nil, identifier: UInt32? = nil) -> [UInt8] {
        send(.subscribe(MQTTSubscribe(packetID: id, filters: [(filter, options ?? MQTTSubscriptionOptions(qos: qos))],
                                      properties: identifier.map { [.varInt(MQTTProperty.subscriptionIdentifier, $0)] } ?? [])))
        var codes: [UInt8] = []
        for p in read() {
            if case .suback(let a) = p { codes = a.reasonCodes } else { backlog.append(p) }
        }
        return codes
    }

    func runTasks() {
        while connection.runPosted() {}
    }

    func close() { closed = true }
    func pauseReading() { paused = true }
    func resumeReading() { paused = false }
    func expectPackets(within seconds: Double) { keepAlive = seconds }
    func retry(after delay: TimeAmount) { retries += 1 }
}

extension TestClient: ClientLinkOwner, @unchecked Sendable {
    func linkHasPendingBytes() {}
    func linkMustDisconnect(_ reasonCode: UInt8) { connection.disconnect(reasonCode: reasonCode) }
}
