import Foundation
import MQTTBroker
import MQTTCodec
import NIOCore
import NIOEmbedded
import Testing
import IoTCPluginKit

/// The server's protocol logic without sockets: each test drives `ServerConnection`s as clients would.
@Suite struct MQTTBrokerTests {
    let loop = EmbeddedEventLoop()
    let hub = MemoryHub()
    var broker: Broker

    init() { broker = Broker(config: BrokerConfig(), timers: loop) }

    func payload(_ p: MQTTPublish) -> String { String(buffer: p.payload) }

    /// A broker configured by `configure`, and a client `id` connected to it.
    func connected(_ id: String, _ configure: (inout BrokerConfig) -> Void) -> (Broker, TestClient) {
        var config = BrokerConfig()
        configure(&config)
        let broker = Broker(config: config, timers: loop)
        let client = TestClient(broker, hub)
        client.connect(id)
        return (broker, client)
    }

    // MARK: - Topics

    @Test func topicFilters() {
        #expect(Topics.isValidFilter("a/+/c"))
        #expect(Topics.isValidFilter("#"))
        #expect(Topics.isValidFilter("+"))
        #expect(Topics.isValidFilter("a//b"))
        #expect(!Topics.isValidFilter("a/#/c"))
        #expect(!Topics.isValidFilter("a+"))
        #expect(!Topics.isValidFilter("a/b#"))
        #expect(!Topics.isValidFilter(""))
        #expect(TopicMatch.matches(topic: "a/b/c", filter: "a/+/c"))
        #expect(TopicMatch.matches(topic: "a", filter: "a/#"))
        #expect(TopicMatch.matches(topic: "a/b", filter: "#"))
        #expect(TopicMatch.matches(topic: "/x", filter: "+/x"))
        #expect(!TopicMatch.matches(topic: "a/b/c", filter: "a/+"))
        #expect(!TopicMatch.matches(topic: "$SYS/x", filter: "#"))
        #expect(!TopicMatch.matches(topic: "$SYS/x", filter: "+/x"))
        #expect(TopicMatch.matches(topic: "$SYS/x", filter: "$SYS/#"))
        #expect(Topics.covers("a/#", "a/+/c"))
        #expect(Topics.covers("a/+", "a/b"))
        #expect(!Topics.covers("a/+", "a/#"))
        #expect(!Topics.covers("a/b", "a/+"))
        #expect(SharedFilter("$share/g/a/+") == SharedFilter("$share/g/a/+"))
        #expect(SharedFilter("$share/g/a/+")?.filter == "a/+")
        #expect(SharedFilter("$share//a") == nil)
        #expect(SharedFilter("$share/g") == nil)
    }

    // MARK: - CONNECT

    @Test func connackAnnouncesLimitsAndAssignsAnIdentifier() throws {
        let c = TestClient(broker, hub)
        let ack = try #require(c.connect(""))
        #expect(ack.reasonCode == 0)
        #expect(ack.properties.string(MQTTProperty.assignedClientIdentifier)?.hasPrefix("iotc-") == true)
        #expect(ack.properties.integer(MQTTProperty.receiveMaximum) == 1024)
        #expect(ack.properties.integer(MQTTProperty.topicAliasMaximum) == 64)
        #expect(c.keepAlive == 90)
        #expect(hub.connectedClients.count == 1)
    }

    @Test func refusesBadCredentialsAndEmptyPersistentIdentifiers() {
        let v5 = TestClient(broker, hub)
        #expect(v5.connect("x", password: "bad")?.reasonCode == MQTTReason.badUsernameOrPassword)
        #expect(v5.closed)
        let v3 = TestClient(broker, hub, version: .v311)
        #expect(v3.connect("x", password: "bad")?.reasonCode == 0x04)
        let v3empty = TestClient(broker, hub, version: .v311)
        #expect(v3empty.connect("", clean: false)?.reasonCode == 0x02)
        #expect(v3empty.closed)
    }

    @Test func serverKeepAliveCapsTheClients() {
        var limits = ServerLimits()
        limits.maximumKeepAlive = 30
        let c = TestClient(broker, hub, limits: limits)
        let ack = c.connect("k", keepAlive: 0)
        #expect(ack?.properties.integer(MQTTProperty.serverKeepAlive) == 30)
        #expect(c.keepAlive == 45)
    }

    @Test func secondConnectAndEnhancedAuthAreRefused() {
        let c = TestClient(broker, hub)
        c.connect("a")
        c.send(.connect(MQTTConnect(version: .v5, clientID: "a")))
        guard case .disconnect(let code, _)? = c.read().first else { Issue.record("no DISCONNECT"); return }
        #expect(code == MQTTReason.protocolError)
        #expect(c.closed)
        let d = TestClient(broker, hub)
        #expect(d.connect("b", properties: [.string(MQTTProperty.authenticationMethod, "SCRAM-SHA-1")])?.reasonCode == MQTTReason.badAuthenticationMethod)
    }

    /// A CONNECT the decoder refused after reading its protocol version: an MQTT 5 client gets a
    /// CONNACK with the reason code and why; an MQTT 3.1.1 client has no code for it and is closed.
    @Test func aRefusedConnectIsAnsweredInTheClientsVersion() {
        let c = TestClient(broker, hub)
        c.connection.decodeFailed(MQTTProtocolError("receive maximum must not be 0", reasonCode: MQTTReason.protocolError), version: .v5)
        guard case .connack(let ack)? = c.read().first else { Issue.record("no CONNACK"); return }
        #expect(ack.reasonCode == MQTTReason.protocolError && !ack.sessionPresent)
        #expect(ack.properties.first(MQTTProperty.reasonString) == .string(MQTTProperty.reasonString, "receive maximum must not be 0"))
        #expect(c.closed)
        let d = TestClient(broker, hub)
        d.connection.decodeFailed(MQTTProtocolError("CONNECT reserved flag is set"), version: .v311)
        #expect(d.read().isEmpty && d.closed)
    }

    /// Subscription identifiers go from server to client only ([MQTT-3.3.4-6]).
    @Test func aClientsPublishMustNotCarryASubscriptionIdentifier() {
        let c = TestClient(broker, hub)
        c.connect("c")
        c.send(.publish(MQTTPublish(topic: "t", payload: [1], qos: 1, packetID: 3, properties: [.varInt(MQTTProperty.subscriptionIdentifier, 7)])))
        guard case .disconnect(let code, _)? = c.read().first else { Issue.record("no DISCONNECT"); return }
        #expect(code == MQTTReason.protocolError && c.closed)
        #expect(hub.submitted.isEmpty)
    }

    @Test func publishBeforeConnectCloses() {
        let c = TestClient(broker, hub)
        c.connection.receive(.publish(MQTTPublish(topic: "a", payload: [1])))
        #expect(c.closed)
        #expect(c.read().isEmpty)
    }

    // MARK: - Publish and subscribe

    @Test func qos0And1RouteBetweenClientsAndIntoTheHub() throws {
        let sub = TestClient(broker, hub), pub = TestClient(broker, hub)
        sub.connect("sub")
        pub.connect("pub")
        #expect(sub.subscribe("s/+/t", qos: 1) == [1])
        pub.send(.publish(MQTTPublish(topic: "s/1/t", payload: Array("zero".utf8))))
        pub.send(.publish(MQTTPublish(topic: "s/2/t", payload: Array("one".utf8), qos: 1, packetID: 10)))
        #expect(pub.read() == [.puback(MQTTPacketAck(packetID: 10))])
        let got = sub.publishes()
        #expect(got.map(payload) == ["zero", "one"])
        #expect(got[0].qos == 0 && got[1].qos == 1)
        #expect(hub.submitted.map(\.topic) == ["s/1/t", "s/2/t"])
        // Not acknowledged yet: sent again with DUP after a reconnect (below, in sessions).
        #expect(broker.session("sub")?.inflightCount == 1)
        sub.send(.puback(MQTTPacketAck(packetID: got[1].packetID!)))
        #expect(broker.session("sub")?.inflightCount == 0)
    }

    @Test func qos2IsExactlyOnceAcrossARetransmission() throws {
        let sub = TestClient(broker, hub), pub = TestClient(broker, hub)
        sub.connect("sub")
        pub.connect("pub", clean: false, properties: [.fourByte(MQTTProperty.sessionExpiryInterval, 60)])
        _ = sub.subscribe("q2", qos: 2)
        pub.send(.publish(MQTTPublish(topic: "q2", payload: [1], qos: 2, packetID: 5)))
        #expect(pub.read() == [.pubrec(MQTTPacketAck(packetID: 5))])
        // The client did not see PUBREC, reconnects and sends the PUBLISH again with DUP.
        pub.connection.transportClosed(reason: "test")
        let again = TestClient(broker, hub)
        #expect(again.connect("pub", clean: false, properties: [.fourByte(MQTTProperty.sessionExpiryInterval, 60)])?.sessionPresent == true)
        again.send(.publish(MQTTPublish(topic: "q2", payload: [1], qos: 2, duplicate: true, packetID: 5)))
        #expect(again.read() == [.pubrec(MQTTPacketAck(packetID: 5))])
        again.send(.pubrel(MQTTPacketAck(packetID: 5)))
        #expect(again.read() == [.pubcomp(MQTTPacketAck(packetID: 5))])
        // Delivered once to the subscriber and once to the hub.
        let got = sub.publishes()
        #expect(got.count == 1)
        #expect(hub.submitted.count == 1)
        // Outbound QoS 2: PUBREC from the subscriber gets PUBREL, PUBCOMP ends it.
        let id = try #require(got.first?.packetID)
        sub.send(.pubrec(MQTTPacketAck(packetID: id)))
        #expect(sub.read() == [.pubrel(MQTTPacketAck(packetID: id))])
        sub.send(.pubcomp(MQTTPacketAck(packetID: id)))
        #expect(broker.session("sub")?.inflightCount == 0)
        // PUBREL for an unknown id: PUBCOMP with 0x92.
        again.send(.pubrel(MQTTPacketAck(packetID: 77)))
        #expect(again.read() == [.pubcomp(MQTTPacketAck(packetID: 77, reasonCode: MQTTReason.packetIdentifierNotFound))])
    }

    @Test func overlappingSubscriptionsDeliverOnceAtTheHighestQoSWithEveryIdentifier() throws {
        let sub = TestClient(broker, hub), pub = TestClient(broker, hub)
        sub.connect("sub")
        pub.connect("pub")
        _ = sub.subscribe("a/#", qos: 0, id: 1, identifier: 7)
        _ = sub.subscribe("a/+", qos: 2, id: 2, identifier: 9)
        pub.send(.publish(MQTTPublish(topic: "a/b", payload: [1], qos: 2, packetID: 1)))
        let got = sub.publishes()
        #expect(got.count == 1)
        #expect(got.first?.qos == 2)
        let ids = got.first?.properties.compactMap { p -> UInt32? in
            if case .varInt(MQTTProperty.subscriptionIdentifier, let v) = p { return v } else { return nil }
        }
        #expect(Set(ids ?? []) == [7, 9])
    }

    @Test func noLocalAndRetainAsPublished() {
        let c = TestClient(broker, hub), other = TestClient(broker, hub)
        c.connect("c")
        other.connect("o")
        _ = c.subscribe("n", options: MQTTSubscriptionOptions(qos: 0, noLocal: true))
        _ = other.subscribe("n", options: MQTTSubscriptionOptions(qos: 0, retainAsPublished: true))
        c.send(.publish(MQTTPublish(topic: "n", payload: [1], retain: true)))
        #expect(c.publishes().isEmpty)
        #expect(other.publishes().first?.retain == true)
        // Without retain-as-published a live message is delivered with RETAIN 0.
        let plain = TestClient(broker, hub)
        plain.connect("p")
        _ = plain.subscribe("n2", qos: 0)
        c.send(.publish(MQTTPublish(topic: "n2", payload: [1], retain: true)))
        #expect(plain.publishes().first?.retain == false)
    }

    /// The retained messages hold at most maximumRetainedBytes (topics and payloads): past it a new one
    /// is routed but not kept; a replacement that does not fit clears the value it replaces (never
    /// served stale); clearing makes room. Only the count was bounded: 100,000 retained messages of
    /// 1 MiB each would have been kept.
    @Test func retainedMessagesAreBoundedInBytes() {
        let (broker, pub) = connected("pub") { $0.maximumRetainedBytes = 100 }
        func retain(_ topic: String, _ n: Int) { pub.send(.publish(MQTTPublish(topic: topic, payload: Array(repeating: 0x61, count: n), retain: true))) }
        retain("a/1", 40)
        retain("a/2", 40)
        #expect(broker.retainedCount == 2 && broker.retainedByteCount == 86)
        retain("a/3", 40)
        #expect(broker.retainedCount == 2 && broker.retainedByteCount == 86, "over the bound: not kept")
        retain("a/1", 70)
        #expect(broker.retainedCount == 1 && broker.retainedByteCount == 43, "a replacement that does not fit clears the old value")
        retain("a/1", 10)
        retain("a/3", 40)
        #expect(broker.retainedCount == 3 && broker.retainedByteCount == 99)
        retain("a/2", 0)
        #expect(broker.retainedCount == 2 && broker.retainedByteCount == 56, "cleared")
        let s = TestClient(broker, hub)
        s.connect("s")
        _ = s.subscribe("a/#", qos: 0)
        #expect(Set(s.publishes().map(\.topic)) == ["a/1", "a/3"])
    }

    /// A new subscription gets exactly the retained messages its filter matches by MQTT's rules (`+`,
    /// `#` with its parent level, `$` topics, empty levels), found level by level rather than by testing
    /// every retained topic; cleared ones are not found any more.
    @Test func aSubscriptionFindsTheRetainedMessagesItsFilterMatches() {
        var random = SystemRandomNumberGenerator()
        let words = ["a", "b", "", "$s", "c"]
        func path(_ words: [String], last: [String] = []) -> String {
            let n = Int.random(in: 1...4, using: &random)
            return (0..<n).map { i in (i == n - 1 ? words + last : words).randomElement(using: &random)! }.joined(separator: "/")
        }
        var topics = Set<String>()
        for _ in 0..<400 { topics.insert(path(words)) }
        topics.remove("")
        for t in topics { broker.publish(BrokerMessage(topic: t, payload: ByteBuffer(string: t), qos: 0, retain: true), from: nil) }
        let cleared = Set(topics.shuffled(using: &random).prefix(topics.count / 4))
        for t in cleared { broker.publish(BrokerMessage(topic: t, payload: ByteBuffer(), qos: 0, retain: true), from: nil) }
        let kept = topics.subtracting(cleared)
        #expect(broker.retainedCount == kept.count)
        for k in 0..<200 {
            let filter = path(words + ["+"], last: ["#"])
            guard Topics.isValidFilter(filter) else { continue }
            let c = TestClient(broker, hub)
            c.connect("c\(k)")
            #expect(c.subscribe(filter, qos: 0) == [0])
            let got = c.publishes().map(\.topic)
            #expect(got.count == Set(got).count, "\(filter): each once")
            #expect(Set(got) == kept.filter { TopicMatch.matches(topic: $0, filter: filter) }, "\(filter)")
            c.send(.disconnect(reasonCode: 0, properties: []))
        }
    }

    @Test func retainedMessagesFollowRetainHandling() {
        let pub = TestClient(broker, hub)
        pub.connect("pub")
        pub.send(.publish(MQTTPublish(topic: "r/1", payload: Array("one".utf8), qos: 1, retain: true, packetID: 1)))
        pub.send(.publish(MQTTPublish(topic: "r/2", payload: Array("two".utf8), retain: true)))
        let s = TestClient(broker, hub)
        s.connect("s")
        _ = s.subscribe("r/#", qos: 1)
        let got = s.publishes()
        #expect(Set(got.map(payload)) == ["one", "two"])
        #expect(got.allSatisfy { $0.retain })
        // Handling 1: only for a new subscription; 2: never.
        _ = s.subscribe("r/#", options: MQTTSubscriptionOptions(qos: 1, retainHandling: 1))
        #expect(s.publishes().isEmpty)
        _ = s.subscribe("r/+", options: MQTTSubscriptionOptions(qos: 1, retainHandling: 2))
        #expect(s.publishes().isEmpty)
        // An empty retained payload deletes.
        pub.send(.publish(MQTTPublish(topic: "r/1", payload: [], retain: true)))
        #expect(broker.retainedCount == 1)
    }

    @Test func tenantsShareNoTopicsRetainedMessagesOrSessions() throws {
        // The same client id in two tenants: two sessions, neither takes the other over.
        let acme = TestClient(broker, hub), globex = TestClient(broker, hub)
        #expect(acme.connect("pump-1", username: "t:acme")?.reasonCode == 0)
        #expect(globex.connect("pump-1", username: "t:globex")?.reasonCode == 0)
        #expect(!acme.closed && !globex.closed && broker.sessionCount == 2)
        #expect(acme.subscribe("#") == [1] && globex.subscribe("#") == [1])
        globex.send(.publish(MQTTPublish(topic: "devices/pump-1/telemetry", payload: Array("globex".utf8), qos: 1, retain: true, packetID: 1)))
        acme.send(.publish(MQTTPublish(topic: "devices/pump-1/telemetry", payload: Array("acme".utf8), qos: 1, packetID: 1)))
        // Each sees its own tenant's messages, under the topics it used; the hub gets those topics too.
        #expect(acme.publishes().map { "\($0.topic) \(payload($0))" } == ["devices/pump-1/telemetry acme"])
        #expect(globex.publishes().map { "\($0.topic) \(payload($0))" } == ["devices/pump-1/telemetry globex"])
        #expect(hub.submitted.map(\.topic) == ["devices/pump-1/telemetry", "devices/pump-1/telemetry"])
        // Retained messages stay in their tenant; a default-tenant client sees neither.
        let late = TestClient(broker, hub), plain = TestClient(broker, hub)
        late.connect("late", username: "t:acme")
        plain.connect("plain")
        _ = late.subscribe("devices/#")
        _ = plain.subscribe("#")
        #expect(late.publishes().isEmpty && plain.publishes().isEmpty)
        // The space where tenants live cannot be named by anyone.
        #expect(plain.subscribe("$tenant/globex/#") == [MQTTReason.notAuthorized])
        #expect(acme.subscribe("$tenant/globex/#") == [MQTTReason.notAuthorized])
        plain.send(.publish(MQTTPublish(topic: "$tenant/globex/devices/pump-1/telemetry", payload: [1], qos: 1, packetID: 2)))
        guard case .puback(let refused)? = plain.read().first else { Issue.record("no PUBACK"); return }
        #expect(refused.reasonCode == MQTTReason.notAuthorized)
        #expect(globex.publishes().isEmpty)
        // Downlink for a tenant reaches that tenant's subscribers only.
        #expect(broker.publish(BrokerMessage(topic: TenantSpace(tenant: "acme").topic("devices/pump-1/commands/stop"), payload: ByteBuffer(string: "x"), qos: 1), from: nil) == 2)
        #expect(acme.publishes().map(\.topic) == ["devices/pump-1/commands/stop"])
        #expect(globex.publishes().isEmpty && plain.publishes().isEmpty)
        // Reconnecting takes over the session of its own tenant only.
        let again = TestClient(broker, hub)
        again.connect("pump-1", username: "t:acme")
        #expect(acme.closed && !globex.closed)
    }

    @Test func sharedSubscriptionsTakeTurns() {
        let a = TestClient(broker, hub), b = TestClient(broker, hub), pub = TestClient(broker, hub)
        a.connect("a")
        b.connect("b")
        pub.connect("pub")
        #expect(a.subscribe("$share/g/jobs/#") == [1])
        #expect(b.subscribe("$share/g/jobs/#") == [1])
        for i in 0..<10 { pub.send(.publish(MQTTPublish(topic: "jobs/\(i)", payload: [UInt8(i)]))) }
        let ga = a.publishes().count, gb = b.publishes().count
        #expect(ga == 5 && gb == 5)
        // No-local on a shared subscription is a protocol error.
        a.send(.subscribe(MQTTSubscribe(packetID: 3, filters: [("$share/g/x", MQTTSubscriptionOptions(qos: 0, noLocal: true))])))
        #expect(a.closed)
    }

    @Test func invalidAndUnauthorizedFiltersGetReasonCodes() {
        hub.denySubscribe = ["secret/#"]
        let c = TestClient(broker, hub)
        c.connect("c")
        #expect(c.subscribe("a/#/b") == [MQTTReason.topicFilterInvalid])
        #expect(c.subscribe("secret/#") == [MQTTReason.notAuthorized])
        #expect(c.subscribe("$share/g") == [MQTTReason.topicFilterInvalid])
        let v3 = TestClient(broker, hub, version: .v311)
        v3.connect("v3")
        #expect(v3.subscribe("secret/#") == [0x80])
    }

    /// The broker holds at most maximumSessions, offline ones included: one more is refused with Quota
    /// exceeded (0x03 on 3.1.1), a client with a session gets it back, and an ended clean session makes room.
    @Test func sessionsAreBounded() {
        let (broker, kept) = connected("kept") { $0.maximumSessions = 2 }
        let offline = TestClient(broker, hub)
        #expect(offline.connect("offline", clean: false, properties: [.fourByte(MQTTProperty.sessionExpiryInterval, 3600)])?.reasonCode == 0)
        offline.send(.disconnect(reasonCode: 0, properties: []))
        #expect(broker.sessionCount == 2, "an offline session is held")
        #expect(TestClient(broker, hub).connect("third")?.reasonCode == MQTTReason.quotaExceeded)
        #expect(TestClient(broker, hub, version: .v311).connect("third")?.reasonCode == 0x03)
        #expect(TestClient(broker, hub).connect("offline", clean: false)?.reasonCode == 0, "its own session back")
        kept.send(.disconnect(reasonCode: 0, properties: []))
        #expect(TestClient(broker, hub).connect("third")?.reasonCode == 0, "room once a clean session ended")
    }

    /// A session holds at most maximumSubscriptions: past it each new filter gets Quota exceeded (0x80 on
    /// 3.1.1); a filter it holds is replaced without counting twice, and an unsubscribe makes room.
    @Test func subscriptionsPerSessionAreBounded() {
        let (broker, c) = connected("c") { $0.maximumSubscriptions = 2 }
        #expect(c.subscribe("a/1") == [1] && c.subscribe("a/2") == [1])
        #expect(c.subscribe("a/3") == [MQTTReason.quotaExceeded])
        #expect(c.subscribe("a/1", qos: 2) == [2], "a filter held is replaced")
        c.send(.subscribe(MQTTSubscribe(packetID: 2, filters: [("a/2", MQTTSubscriptionOptions(qos: 0)), ("a/4", MQTTSubscriptionOptions(qos: 0))])))
        #expect(c.read() == [.suback(MQTTSubAck(packetID: 2, reasonCodes: [0, MQTTReason.quotaExceeded]))])
        c.send(.unsubscribe(MQTTUnsubscribe(packetID: 3, filters: ["a/2"])))
        _ = c.read()
        #expect(c.subscribe("a/4") == [1], "room after an unsubscribe")
        #expect(broker.subscriptionCount == 2)
        let v3 = TestClient(broker, hub, version: .v311)
        v3.connect("v3")
        #expect(v3.subscribe("b/1") == [1] && v3.subscribe("b/2") == [1] && v3.subscribe("b/3") == [0x80])
    }

    @Test func unsubscribeReportsWhetherASubscriptionExisted() {
        let c = TestClient(broker, hub)
        c.connect("c")
        _ = c.subscribe("x/#")
        c.send(.unsubscribe(MQTTUnsubscribe(packetID: 9, filters: ["x/#", "y"])))
        #expect(c.read() == [.unsuback(MQTTSubAck(packetID: 9, reasonCodes: [0, MQTTReason.noSubscriptionExisted]))])
        #expect(broker.subscriptionCount == 0)
    }

    @Test func unauthorizedPublishIsRefusedWithAReason() {
        hub.denyPublish = ["no"]
        let c = TestClient(broker, hub)
        c.connect("c")
        c.send(.publish(MQTTPublish(topic: "no", payload: [1], qos: 1, packetID: 4)))
        guard case .puback(let a)? = c.read().first else { Issue.record("no PUBACK"); return }
        #expect(a.reasonCode == MQTTReason.notAuthorized)
        #expect(hub.submitted.isEmpty)
    }

    /// Topics and filters of more than 200 levels are refused as they come (a client's topic of 32,000
    /// levels ended the process: the routing walk overflowed its stack): a filter gets Topic Filter
    /// invalid, a publish or a will Topic Name invalid; nothing is kept, routed or sent to the hub.
    @Test func topicsOfTooManyLevelsAreRefused() {
        let deep = Array(repeating: "a", count: Topics.maximumLevels + 1).joined(separator: "/")
        let deepest = Array(repeating: "a", count: Topics.maximumLevels).joined(separator: "/")
        let sub = TestClient(broker, hub)
        sub.connect("sub")
        #expect(sub.subscribe(deep) == [MQTTReason.topicFilterInvalid])
        #expect(sub.subscribe(deepest) == [1])
        #expect(sub.subscribe(String(repeating: "+/", count: 30_000) + "#") == [MQTTReason.topicFilterInvalid])
        let v3 = TestClient(broker, hub, version: .v311)
        v3.connect("v3")
        #expect(v3.subscribe(deep) == [0x80])

        let pub = TestClient(broker, hub)
        pub.connect("pub")
        pub.send(.publish(MQTTPublish(topic: deepest, payload: [1], qos: 1, packetID: 1)))
        #expect(pub.read() == [.puback(MQTTPacketAck(packetID: 1))])
        #expect(sub.read().count == 1, "200 levels are routed")
        pub.send(.publish(MQTTPublish(topic: Array(repeating: "a", count: 32_000).joined(separator: "/"), payload: [1], qos: 1, packetID: 2)))
        #expect(pub.read() == [.disconnect(reasonCode: MQTTReason.topicNameInvalid, properties: [.string(MQTTProperty.reasonString, "the topic has more than 200 levels")])])
        #expect(pub.closed)
        #expect(hub.submitted.count == 1)
        #expect(TestClient(broker, hub).connect("w", will: MQTTWill(topic: deep, payload: ByteBuffer(string: "gone")))?.reasonCode == MQTTReason.topicNameInvalid)

        // What comes from elsewhere (the hub's downlink) is neither routed nor kept either.
        #expect(broker.publish(BrokerMessage(topic: deep + "/a/a", payload: ByteBuffer(bytes: [1]), qos: 0, retain: true), from: nil) == 0)
        #expect(broker.retainedCount == 0)
    }

    /// Routes are cached by topic, but not for long topics: the cache holds its keys, and a client's
    /// 10,000 topics of 64 KiB would have held 655 MB.
    @Test func longTopicsAreRoutedButNotCached() {
        let sub = TestClient(broker, hub)
        sub.connect("sub")
        #expect(sub.subscribe("#", qos: 0) == [0])
        let long = String(repeating: "x", count: 257)
        broker.publish(BrokerMessage(topic: "short", payload: ByteBuffer(bytes: [1]), qos: 0, retain: false), from: nil)
        broker.publish(BrokerMessage(topic: long, payload: ByteBuffer(bytes: [1]), qos: 0, retain: false), from: nil)
        #expect(sub.publishes().map(\.topic) == ["short", long])
        #expect(broker.cachedRouteCount == 1)
    }

    @Test func noMatchingSubscribersWhenNothingTakesTheMessage() {
        hub.routes = false
        let c = TestClient(broker, hub)
        c.connect("c")
        c.send(.publish(MQTTPublish(topic: "nobody", payload: [1], qos: 1, packetID: 4)))
        #expect(c.read() == [.puback(MQTTPacketAck(packetID: 4, reasonCode: MQTTReason.noMatchingSubscribers))])
    }

    @Test func payloadFormatIndicatorIsChecked() {
        let c = TestClient(broker, hub)
        c.connect("c")
        c.send(.publish(MQTTPublish(topic: "t", payload: [0xFF, 0xFE], qos: 1, packetID: 4, properties: [.byte(MQTTProperty.payloadFormatIndicator, 1)])))
        guard case .puback(let a)? = c.read().first else { Issue.record("no PUBACK"); return }
        #expect(a.reasonCode == MQTTReason.payloadFormatInvalid)
        // A will whose payload is not what its indicator says refuses the connection.
        let w = TestClient(broker, hub)
        let bad = MQTTWill(topic: "w", payload: ByteBuffer(bytes: [0x61, 0xFF]), properties: [.byte(MQTTProperty.payloadFormatIndicator, 1)])
        #expect(w.connect("w", will: bad)?.reasonCode == MQTTReason.payloadFormatInvalid)
        let good = MQTTWill(topic: "w", payload: ByteBuffer(string: "gone"), properties: [.byte(MQTTProperty.payloadFormatIndicator, 1)])
        #expect(TestClient(broker, hub).connect("w2", will: good)?.reasonCode == 0)
    }

    @Test func propertiesTravelEndToEnd() throws {
        let sub = TestClient(broker, hub), pub = TestClient(broker, hub)
        sub.connect("sub")
        pub.connect("pub")
        _ = sub.subscribe("p", qos: 1)
        let props: [MQTTProperty] = [
            .byte(MQTTProperty.payloadFormatIndicator, 1), .string(MQTTProperty.contentType, "application/json"),
            .string(MQTTProperty.responseTopic, "reply/here"), .binary(MQTTProperty.correlationData, [1, 2, 3]),
            .userProperty("site", "north"), .userProperty("site", "south"), .fourByte(MQTTProperty.messageExpiryInterval, 100),
        ]
        pub.send(.publish(MQTTPublish(topic: "p", payload: Array("{}".utf8), qos: 1, packetID: 1, properties: props)))
        let got = try #require(sub.publishes().first)
        for p in props.dropLast() { #expect(got.properties.contains(p)) }
        #expect((got.properties.integer(MQTTProperty.messageExpiryInterval) ?? 0) <= 100)
        #expect(hub.submitted.first?.properties.count == 6)
    }

    // MARK: - Flow control

    @Test func topicAliasesBothWays() throws {
        let sub = TestClient(broker, hub), pub = TestClient(broker, hub)
        sub.connect("sub", properties: [.twoByte(MQTTProperty.topicAliasMaximum, 2)])
        pub.connect("pub")
        _ = sub.subscribe("long/topic/name", qos: 0)
        // Inbound: alias 1 set with the topic, then used alone.
        pub.send(.publish(MQTTPublish(topic: "long/topic/name", payload: [1], properties: [.twoByte(MQTTProperty.topicAlias, 1)])))
        pub.send(.publish(MQTTPublish(topic: "", payload: [2], properties: [.twoByte(MQTTProperty.topicAlias, 1)])))
        #expect(hub.submitted.map(\.topic) == ["long/topic/name", "long/topic/name"])
        // Outbound: the first carries the topic and alias, the second only the alias.
        let got = sub.publishes()
        #expect(got.count == 2)
        #expect(got[0].topic == "long/topic/name" && got[0].properties.integer(MQTTProperty.topicAlias) == 1)
        #expect(got[1].topic == "" && got[1].properties.integer(MQTTProperty.topicAlias) == 1)
        // An alias over the maximum, or an unknown one, is a protocol error.
        pub.send(.publish(MQTTPublish(topic: "", payload: [3], properties: [.twoByte(MQTTProperty.topicAlias, 9)])))
        guard case .disconnect(let code, _)? = pub.read().first else { Issue.record("no DISCONNECT"); return }
        #expect(code == MQTTReason.protocolError)
    }

    @Test func receiveMaximumBothWays() {
        var limits = ServerLimits()
        limits.receiveMaximum = 2
        hub.holdCompletions = true
        let pub = TestClient(broker, hub, limits: limits)
        pub.connect("pub")
        pub.send(.publish(MQTTPublish(topic: "t", payload: [1], qos: 1, packetID: 1)))
        pub.send(.publish(MQTTPublish(topic: "t", payload: [1], qos: 1, packetID: 2)))
        #expect(pub.read().isEmpty)
        pub.send(.publish(MQTTPublish(topic: "t", payload: [1], qos: 1, packetID: 3)))
        guard case .disconnect(let code, _)? = pub.read().first else { Issue.record("no DISCONNECT"); return }
        #expect(code == MQTTReason.receiveMaximumExceeded)
        hub.holdCompletions = false

        // Outbound: the client's Receive Maximum of 1 keeps one message in flight, the rest queued.
        let sub = TestClient(broker, hub), src = TestClient(broker, hub)
        sub.connect("sub", properties: [.twoByte(MQTTProperty.receiveMaximum, 1)])
        src.connect("src")
        _ = sub.subscribe("w", qos: 1)
        for i in 0..<3 { src.send(.publish(MQTTPublish(topic: "w", payload: [UInt8(i)], qos: 1, packetID: UInt16(i + 1)))) }
        var got = sub.publishes()
        #expect(got.count == 1)
        sub.send(.puback(MQTTPacketAck(packetID: got[0].packetID!)))
        got = sub.publishes()
        #expect(got.map { $0.payload.getInteger(at: 0, as: UInt8.self) } == [1])
    }

    @Test func acknowledgementsFollowArrivalOrder() {
        hub.holdCompletions = true
        let c = TestClient(broker, hub)
        c.connect("c")
        c.send(.publish(MQTTPublish(topic: "t", payload: [1], qos: 1, packetID: 1)))
        c.send(.publish(MQTTPublish(topic: "t", payload: [1], qos: 2, packetID: 2)))
        #expect(c.read().isEmpty)
        hub.completeAll()
        #expect(c.read() == [.puback(MQTTPacketAck(packetID: 1)), .pubrec(MQTTPacketAck(packetID: 2))])
    }

    /// Completions that come out of order, one of them a failure, still acknowledge in arrival order,
    /// each with its own reason code; a settled message's ticket serves a later message.
    @Test func ticketsSettleInArrivalOrderAndAreReused() {
        hub.holdCompletions = true
        let c = TestClient(broker, hub)
        c.connect("c")
        var seen = Set<ObjectIdentifier>()
        for round in 0..<3 {
            let first = UInt16(round * 4 + 1)
            for id in first..<(first + 4) { c.send(.publish(MQTTPublish(topic: "t", payload: [1], qos: 1, packetID: id))) }
            #expect(c.read().isEmpty)
            let held = hub.takeHeld()
            #expect(held.count == 4)
            for t in held { seen.insert(ObjectIdentifier(t)) }
            held[3].complete(nil)
            held[1].complete("the disk is full")
            #expect(c.read().isEmpty, "the first is not settled yet")
            held[0].complete(nil)
            held[2].complete(nil)
            let acks = c.read().compactMap { if case .puback(let a) = $0 { a } else { nil } }
            #expect(acks.map(\.packetID) == Array(first..<(first + 4)))
            #expect(acks.map(\.reasonCode) == [0, MQTTReason.implementationSpecific, 0, 0])
            #expect(acks.count == 4 && acks[1].properties == [.string(MQTTProperty.reasonString, "the disk is full")])
        }
        #expect(seen.count == 4, "twelve messages, four tickets")
    }

    /// MQTT 3.1.1 cannot say that a message was not taken (its PUBACK has no reason code): when the hub
    /// could not store one, the connection closes without acknowledging it or anything after it, and
    /// a QoS 2 message sent again after the reconnect is a new message, not a duplicate.
    @Test(arguments: [UInt8(1), 2]) func aMessageTheHubDidNotTakeIsNeverAcknowledgedToA311Client(qos: UInt8) {
        hub.holdCompletions = true
        let c = TestClient(broker, hub, version: .v311)
        c.connect("keeper", clean: false)
        for id in UInt16(1)...3 { c.send(.publish(MQTTPublish(topic: "t", payload: [UInt8(id)], qos: qos, packetID: id))) }
        let held = hub.takeHeld()
        #expect(held.count == 3)
        held[0].complete(nil)
        held[2].complete(nil)
        held[1].complete("the disk is full")
        let answered = c.read()
        #expect(answered == [qos == 1 ? .puback(MQTTPacketAck(packetID: 1)) : .pubrec(MQTTPacketAck(packetID: 1))])
        #expect(c.closed, "the connection stays open after a message that was not taken")

        let back = TestClient(broker, hub, version: .v311)
        #expect(back.connect("keeper", clean: false)?.sessionPresent == true)
        back.send(.publish(MQTTPublish(topic: "t", payload: [2], qos: qos, duplicate: true, packetID: 2)))
        #expect(hub.takeHeld().count == 1, "the message sent again was not submitted again")
    }

    @Test func maximumPacketSizeOfTheClientIsRespected() {
        let sub = TestClient(broker, hub), pub = TestClient(broker, hub)
        sub.connect("sub", properties: [.fourByte(MQTTProperty.maximumPacketSize, 64)])
        pub.connect("pub")
        _ = sub.subscribe("big", qos: 1)
        pub.send(.publish(MQTTPublish(topic: "big", payload: [UInt8](repeating: 7, count: 100), qos: 1, packetID: 1)))
        pub.send(.publish(MQTTPublish(topic: "big", payload: [1], qos: 1, packetID: 2)))
        #expect(sub.publishes().map(\.payload.readableBytes) == [1])
    }

    @Test func backpressureStopsReadingAndHoldsThePacket() {
        let c = TestClient(broker, hub)
        c.connect("c")
        hub.busy = true
        c.send(.publish(MQTTPublish(topic: "t", payload: [1], qos: 1, packetID: 1)))
        c.send(.publish(MQTTPublish(topic: "t", payload: [2], qos: 1, packetID: 2)))
        #expect(c.paused)
        #expect(c.retries == 1)
        #expect(c.read().isEmpty)
        c.connection.retryStalled()
        #expect(c.paused)
        hub.busy = false
        c.connection.retryStalled()
        #expect(!c.paused)
        #expect(c.read() == [.puback(MQTTPacketAck(packetID: 1)), .puback(MQTTPacketAck(packetID: 2))])
        #expect(hub.submitted.map { $0.payload.getInteger(at: 0, as: UInt8.self) } == [1, 2])
    }

    // MARK: - Sessions and wills

    @Test func persistentSessionQueuesWhileOfflineAndResendsInFlight() throws {
        let sub = TestClient(broker, hub, version: .v311), pub = TestClient(broker, hub)
        sub.connect("dev", clean: false)
        pub.connect("pub")
        _ = sub.subscribe("cmd", qos: 1)
        pub.send(.publish(MQTTPublish(topic: "cmd", payload: [1], qos: 1, packetID: 1)))
        let first = try #require(sub.publishes().first)
        sub.connection.transportClosed(reason: "gone")
        pub.send(.publish(MQTTPublish(topic: "cmd", payload: [2], qos: 1, packetID: 2)))
        pub.send(.publish(MQTTPublish(topic: "cmd", payload: [3], qos: 0)))
        #expect(broker.session("dev")?.queuedCount == 1)
        let back = TestClient(broker, hub, version: .v311)
        #expect(back.connect("dev", clean: false)?.sessionPresent == true)
        let got = back.publishes()
        #expect(got.map { $0.payload.getInteger(at: 0, as: UInt8.self) } == [1, 2])
        #expect(got[0].duplicate && got[0].packetID == first.packetID)
        // A clean start drops the session.
        let fresh = TestClient(broker, hub, version: .v311)
        #expect(fresh.connect("dev", clean: true)?.sessionPresent == false)
        #expect(back.closed)
    }

    /// The queue is bounded in bytes too: past maxQueuedBytes drop_oldest makes room (as many as it
    /// takes) and drop_new drops the new message; one larger than the whole allowance is never queued.
    @Test(arguments: [QueueFullPolicy.dropOldest, .dropNew])
    func queueBoundInBytesFollowsItsPolicy(_ policy: QueueFullPolicy) {
        let (broker, pub) = connected("p") { $0.session = SessionLimits(maxQueued: 100, maxQueuedBytes: 10, policy: policy) }
        let sub = TestClient(broker, hub)
        sub.connect("s", clean: false, properties: [.fourByte(MQTTProperty.sessionExpiryInterval, 100)])
        _ = sub.subscribe("q", qos: 1)
        sub.connection.transportClosed(reason: "gone")
        for (i, size) in [4, 4, 9, 11].enumerated() {
            pub.send(.publish(MQTTPublish(topic: "q", payload: [UInt8(i)] + Array(repeating: 0, count: size - 1), qos: 1, packetID: UInt16(i + 1))))
        }
        let back = TestClient(broker, hub)
        back.connect("s", clean: false, properties: [.fourByte(MQTTProperty.sessionExpiryInterval, 100)])
        let firsts = back.publishes().map { $0.payload.getInteger(at: 0, as: UInt8.self) }
        // 4 + 4, then 9: drop_oldest drops both 4s to make room for it, drop_new drops it; 11 never fits.
        #expect(firsts == (policy == .dropOldest ? [2] : [0, 1]))
        #expect(broker.counters.dropped.value == (policy == .dropOldest ? 3 : 2))
    }

    @Test func queueBoundFollowsItsPolicy() {
        var config = BrokerConfig()
        config.session = SessionLimits(maxQueued: 2, policy: .dropOldest)
        let broker = Broker(config: config, timers: loop)
        let sub = TestClient(broker, hub), pub = TestClient(broker, hub)
        sub.connect("s", clean: false, properties: [.fourByte(MQTTProperty.sessionExpiryInterval, 100)])
        pub.connect("p")
        _ = sub.subscribe("q", qos: 1)
        sub.connection.transportClosed(reason: "gone")
        for i in 1...4 { pub.send(.publish(MQTTPublish(topic: "q", payload: [UInt8(i)], qos: 1, packetID: UInt16(i)))) }
        #expect(broker.counters.dropped.value == 2)
        let back = TestClient(broker, hub)
        back.connect("s", clean: false, properties: [.fourByte(MQTTProperty.sessionExpiryInterval, 100)])
        #expect(back.publishes().map { $0.payload.getInteger(at: 0, as: UInt8.self) } == [3, 4])
    }

    /// A client that stops acknowledging holds at most max_inflight_bytes of payload in flight (one
    /// message always goes), the rest waits in the queue within its bound, and acknowledgements let
    /// the next ones go, in order. Before, up to its Receive Maximum (65,535) were held and written out.
    @Test func messagesInFlightToAClientAreBoundedInBytes() {
        var config = BrokerConfig()
        config.session = SessionLimits(maxQueued: 100, maxInflightBytes: 1000)
        let broker = Broker(config: config, timers: loop)
        let sub = TestClient(broker, hub), pub = TestClient(broker, hub)
        sub.connect("s")
        pub.connect("p")
        _ = sub.subscribe("q", qos: 1)
        for i in 1...30 { pub.send(.publish(MQTTPublish(topic: "q", payload: [UInt8](repeating: UInt8(i), count: 300), qos: 1, packetID: UInt16(i)))) }
        let session = broker.session("s")!
        #expect(session.inflightCount == 4 && session.inflightByteCount == 1200, "until 1,000 bytes are reached")
        #expect(session.queuedCount == 26)
        var first = sub.publishes()
        #expect(first.map { $0.payload.getInteger(at: 0, as: UInt8.self) } == [1, 2, 3, 4])
        sub.send(.puback(MQTTPacketAck(packetID: first[0].packetID!)))
        let next = sub.publishes()
        #expect(next.map { $0.payload.getInteger(at: 0, as: UInt8.self) } == [5])
        #expect(session.inflightCount == 4 && session.inflightByteCount == 1200)
        first.removeFirst()
        for p in first + next { sub.send(.puback(MQTTPacketAck(packetID: p.packetID!))) }
        var rest = sub.publishes()
        while !rest.isEmpty, session.inflightCount > 0 {
            for p in rest { sub.send(.puback(MQTTPacketAck(packetID: p.packetID!))) }
            rest = sub.publishes()
        }
        #expect(session.inflightCount == 0 && session.inflightByteCount == 0 && session.queuedCount == 0)
        // A message larger than the whole allowance still goes, alone.
        pub.send(.publish(MQTTPublish(topic: "q", payload: [UInt8](repeating: 9, count: 5000), qos: 1, packetID: 40)))
        pub.send(.publish(MQTTPublish(topic: "q", payload: [1], qos: 1, packetID: 41)))
        #expect(sub.publishes().map(\.payload.readableBytes) == [5000])
        #expect(session.inflightByteCount == 5000 && session.queuedCount == 1)
    }

    /// A client that does not read what it is sent is no longer read from once four times
    /// max_pending_bytes wait for it, and is read again once most of it went out; the hub's own pause
    /// (its pipeline full) and this one are kept apart. Before, the hub read on and kept every answer
    /// (10 million QoS 1 publishes left 56 MB of PUBACKs waiting).
    @Test func aClientThatDoesNotReadIsNotReadFrom() {
        let c = TestClient(broker, hub, version: .v311, maxPendingBytes: 1024)
        c.connect("c")
        c.connection.link.setWritable(false)
        for _ in 0..<2000 { c.send(.pingreq) }
        c.connection.balanceReading()
        #expect(!c.paused && c.connection.link.pendingByteCount == 4000, "4,000 bytes wait: within 4 KiB")
        for _ in 0..<50 { c.send(.pingreq) }
        c.connection.balanceReading()
        #expect(c.paused && c.connection.backlogged)
        // It reads: everything goes out, and reading goes on.
        c.connection.link.setWritable(true)
        #expect(c.read().count == 2050)
        c.connection.balanceReading()
        #expect(!c.paused && !c.connection.backlogged)

        // Backlogged and full at once: reading goes on only when both are over.
        c.connection.link.setWritable(false)
        for _ in 0..<2100 { c.send(.pingreq) }
        c.connection.balanceReading()
        #expect(c.paused && c.connection.backlogged)
        hub.busy = true
        c.send(.publish(MQTTPublish(topic: "t", payload: [1], qos: 1, packetID: 1)))
        c.connection.link.setWritable(true)
        #expect(c.read().count == 2100)
        c.connection.balanceReading()
        #expect(c.paused && !c.connection.backlogged, "the hub is still full")
        hub.busy = false
        c.connection.retryStalled()
        #expect(!c.paused)
        #expect(c.read() == [.puback(MQTTPacketAck(packetID: 1))])
    }

    @Test func sessionExpires() {
        let c = TestClient(broker, hub)
        c.connect("e", clean: false, properties: [.fourByte(MQTTProperty.sessionExpiryInterval, 5)])
        _ = c.subscribe("x")
        c.connection.transportClosed(reason: "gone")
        #expect(broker.session("e") != nil)
        loop.advanceTime(by: .seconds(6))
        #expect(broker.session("e") == nil)
        #expect(broker.subscriptionCount == 0)
    }

    @Test func willIsPublishedOnAbnormalCloseOnlyAndAfterItsDelay() {
        let watcher = TestClient(broker, hub)
        watcher.connect("w")
        _ = watcher.subscribe("wills/#", qos: 1)
        // Normal DISCONNECT: no will.
        let polite = TestClient(broker, hub)
        polite.connect("polite", will: MQTTWill(topic: "wills/polite", payload: ByteBuffer(string: "x")))
        polite.send(.disconnect(reasonCode: 0, properties: []))
        #expect(watcher.publishes().isEmpty)
        // Dropped connection: the will at once.
        let rude = TestClient(broker, hub)
        rude.connect("rude", will: MQTTWill(topic: "wills/rude", payload: ByteBuffer(string: "gone"), qos: 1))
        rude.connection.transportClosed(reason: "reset")
        #expect(watcher.publishes().map(\.topic) == ["wills/rude"])
        // DISCONNECT with reason 0x04 sends the will.
        let asks = TestClient(broker, hub)
        asks.connect("asks", will: MQTTWill(topic: "wills/asks", payload: ByteBuffer(string: "x")))
        asks.send(.disconnect(reasonCode: MQTTReason.disconnectWithWill, properties: []))
        #expect(watcher.publishes().map(\.topic) == ["wills/asks"])
        // Will delay: published after the delay; a reconnect within it cancels the will.
        let delayed = [MQTTProperty.fourByte(MQTTProperty.willDelayInterval, 5)]
        let session = [MQTTProperty.fourByte(MQTTProperty.sessionExpiryInterval, 60)]
        let d = TestClient(broker, hub)
        d.connect("d", clean: false, will: MQTTWill(topic: "wills/d", payload: ByteBuffer(string: "x"), properties: delayed), properties: session)
        d.connection.transportClosed(reason: "reset")
        loop.advanceTime(by: .seconds(3))
        #expect(watcher.publishes().isEmpty)
        loop.advanceTime(by: .seconds(3))
        #expect(watcher.publishes().map(\.topic) == ["wills/d"])
        let e = TestClient(broker, hub)
        e.connect("e", clean: false, will: MQTTWill(topic: "wills/e", payload: ByteBuffer(string: "x"), properties: delayed), properties: session)
        e.connection.transportClosed(reason: "reset")
        loop.advanceTime(by: .seconds(2))
        TestClient(broker, hub).connect("e", clean: false, properties: session)
        loop.advanceTime(by: .seconds(10))
        #expect(watcher.publishes().isEmpty)
    }

    @Test func takeoverDisconnectsTheOldConnection() {
        let first = TestClient(broker, hub)
        first.connect("same")
        let second = TestClient(broker, hub)
        #expect(second.connect("same")?.reasonCode == 0)
        #expect(broker.sessionCount == 1)
        #expect(broker.counters.connected.value == 1)
    }

    @Test func noReasonStringsWhenTheClientAsksForNoProblemInformation() {
        hub.denyPublish = ["no"]
        let quiet = TestClient(broker, hub)
        quiet.connect("quiet", properties: [.byte(MQTTProperty.requestProblemInformation, 0)])
        quiet.send(.publish(MQTTPublish(topic: "no", payload: [1], qos: 1, packetID: 1)))
        #expect(quiet.read() == [.puback(MQTTPacketAck(packetID: 1, reasonCode: MQTTReason.notAuthorized))])
        let chatty = TestClient(broker, hub)
        chatty.connect("chatty")
        chatty.send(.publish(MQTTPublish(topic: "no", payload: [1], qos: 1, packetID: 1)))
        guard case .puback(let a)? = chatty.read().first else { Issue.record("no PUBACK"); return }
        #expect(a.properties.string(MQTTProperty.reasonString) == "not authorized to publish to no")
    }

    @Test func queuedMessagesExpire() throws {
        let sub = TestClient(broker, hub), pub = TestClient(broker, hub)
        let expiry = [MQTTProperty.fourByte(MQTTProperty.sessionExpiryInterval, 60)]
        sub.connect("s", clean: false, properties: expiry)
        pub.connect("p")
        _ = sub.subscribe("e", qos: 1)
        sub.connection.transportClosed(reason: "away")
        pub.send(.publish(MQTTPublish(topic: "e", payload: [1], qos: 1, packetID: 1, properties: [.fourByte(MQTTProperty.messageExpiryInterval, 1)])))
        pub.send(.publish(MQTTPublish(topic: "e", payload: [2], qos: 1, packetID: 2, properties: [.fourByte(MQTTProperty.messageExpiryInterval, 60)])))
        usleep(1_100_000)
        let back = TestClient(broker, hub)
        back.connect("s", clean: false, properties: expiry)
        let got = back.publishes()
        #expect(got.map { $0.payload.getInteger(at: 0, as: UInt8.self) } == [2])
        // The expiry sent on is what is left of it.
        #expect((got.first?.properties.integer(MQTTProperty.messageExpiryInterval) ?? 99) <= 59)
        #expect(broker.counters.expired.value == 1)
    }

    @Test func sessionExpiryCannotBeSetAtDisconnectAfterZero() {
        let c = TestClient(broker, hub)
        c.connect("z")
        c.send(.disconnect(reasonCode: 0, properties: [.fourByte(MQTTProperty.sessionExpiryInterval, 30)]))
        guard case .disconnect(let code, _)? = c.read().first else { Issue.record("no DISCONNECT"); return }
        #expect(code == MQTTReason.protocolError)
        // Lengthened at DISCONNECT from a non-zero expiry: the session outlives the connection.
        let d = TestClient(broker, hub)
        d.connect("y", clean: false, properties: [.fourByte(MQTTProperty.sessionExpiryInterval, 1)])
        d.send(.disconnect(reasonCode: 0, properties: [.fourByte(MQTTProperty.sessionExpiryInterval, 100)]))
        loop.advanceTime(by: .seconds(50))
        #expect(broker.session("y") != nil)
        loop.advanceTime(by: .seconds(60))
        #expect(broker.session("y") == nil)
    }

    @Test func stateSurvivesARestart() throws {
        let expiry = [MQTTProperty.fourByte(MQTTProperty.sessionExpiryInterval, 600)]
        let sub = TestClient(broker, hub), pub = TestClient(broker, hub)
        sub.connect("keeper", clean: false, properties: expiry)
        pub.connect("pub", clean: false, properties: expiry)
        _ = sub.subscribe("k/#", qos: 2, identifier: 5)
        pub.send(.publish(MQTTPublish(topic: "k/r", payload: Array("retained".utf8), qos: 1, retain: true, packetID: 1,
                                      properties: [.userProperty("a", "b")])))
        let inFlight = try #require(sub.publishes().first)
        sub.send(.pubrec(MQTTPacketAck(packetID: inFlight.packetID!)))
        _ = sub.read()  // PUBREL; PUBCOMP never sent: the exchange is open at the restart
        sub.connection.transportClosed(reason: "away")
        pub.send(.publish(MQTTPublish(topic: "k/q", payload: Array("queued".utf8), qos: 2, packetID: 2)))
        // An incoming QoS 2 id awaiting PUBREL is kept too.
        pub.send(.publish(MQTTPublish(topic: "other", payload: [1], qos: 2, packetID: 9)))
        _ = pub.read()
        pub.connection.transportClosed(reason: "restart")

        let state = broker.saveState()
        let restarted = Broker(config: BrokerConfig(), timers: loop)
        let counts = try restarted.restoreState(state)
        #expect(counts.sessions == 2 && counts.retained == 1)

        let back = TestClient(restarted, hub)
        #expect(back.connect("keeper", clean: false, properties: expiry)?.sessionPresent == true)
        let packets = back.read()
        #expect(packets.first == .pubrel(MQTTPacketAck(packetID: inFlight.packetID!)))
        guard case .publish(let queued)? = packets.dropFirst().first else { Issue.record("queued message not resent: \(packets)"); return }
        #expect(String(buffer: queued.payload) == "queued" && queued.qos == 2)
        #expect(queued.properties.integer(MQTTProperty.subscriptionIdentifier) == 5)
        // The subscription is back: a new message arrives; the retained one is there for new subscribers.
        let other = TestClient(restarted, hub)
        other.connect("p2")
        other.send(.publish(MQTTPublish(topic: "k/new", payload: [1])))
        #expect(back.publishes().map(\.topic) == ["k/new"])
        let late = TestClient(restarted, hub)
        late.connect("late")
        _ = late.subscribe("k/r")
        #expect(late.publishes().first?.properties.contains(.userProperty("a", "b")) == true)
        // The publisher's QoS 2 id 9 is still awaiting release: a duplicate is not delivered again.
        let pubBack = TestClient(restarted, hub)
        #expect(pubBack.connect("pub", clean: false, properties: expiry)?.sessionPresent == true)
        pubBack.send(.pubrel(MQTTPacketAck(packetID: 9)))
        #expect(pubBack.read() == [.pubcomp(MQTTPacketAck(packetID: 9))])
        // A truncated or foreign file is refused, not half read.
        var cut = state
        cut.moveWriterIndex(to: cut.writerIndex - 3)
        #expect(throws: StateFileError.self) { try Broker(config: BrokerConfig(), timers: loop).restoreState(cut) }
        #expect(throws: StateFileError.self) { try Broker(config: BrokerConfig(), timers: loop).restoreState(ByteBuffer(string: "garbage")) }
    }

    @Test func sysTopicsPublishStatistics() {
        let c = TestClient(broker, hub)
        c.connect("c")
        _ = c.subscribe("$SYS/broker/clients/connected", qos: 0)
        broker.publishStatistics(version: "test")
        #expect(c.publishes().map(payload) == ["1"])
        let wild = TestClient(broker, hub)
        wild.connect("w")
        _ = wild.subscribe("#", qos: 0)
        broker.publishStatistics(version: "test")
        #expect(wild.publishes().isEmpty)
    }
}
