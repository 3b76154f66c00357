// Usage: MQTTFuzz [INPUTS] [SEED]. Exits non-zero (with the input in hex) when an invariant breaks;
// a crash is a failure by itself.
import Foundation
import FuzzSupport
import MQTTBroker
import MQTTCodec
import NIOCore
import NIOEmbedded

let inputs = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1])! : 1_000_000
var rng = SplitMix(seed: CommandLine.arguments.count > 2 ? UInt64(CommandLine.arguments[2])! : 0x1075)

func encode(_ p: MQTTPacket, _ v: MQTTVersion) -> [UInt8] {
    var b = ByteBuffer()
    MQTTPacketEncoder.write(p, version: v, into: &b)
    return Array(b.readableBytesView)
}

// Seeds: one valid packet of every kind, both versions.
let props: [MQTTProperty] = [.byte(MQTTProperty.payloadFormatIndicator, 1), .string(MQTTProperty.contentType, "a/b"),
                             .userProperty("k", "v"), .fourByte(MQTTProperty.messageExpiryInterval, 9), .twoByte(MQTTProperty.topicAlias, 1)]
var seeds: [(MQTTVersion, [UInt8])] = []
for v in [MQTTVersion.v311, .v5] {
    let v5 = v == .v5
    let connect = MQTTConnect(version: v, clientID: "fz", cleanStart: false, keepAlive: 10, username: "u", password: [1, 2],
                              will: MQTTWill(topic: "w/t", payload: ByteBuffer(string: "bye"), qos: 1, retain: true,
                                             properties: v5 ? [.fourByte(MQTTProperty.willDelayInterval, 1)] : []),
                              properties: v5 ? [.fourByte(MQTTProperty.sessionExpiryInterval, 30), .twoByte(MQTTProperty.topicAliasMaximum, 4),
                                                .twoByte(MQTTProperty.receiveMaximum, 2), .fourByte(MQTTProperty.maximumPacketSize, 200)] : [])
    let rest: [MQTTPacket] = [
        .subscribe(MQTTSubscribe(packetID: 1, filters: [("a/+", MQTTSubscriptionOptions(qos: 2)), ("$share/g/#", MQTTSubscriptionOptions(qos: 1))],
                                 properties: v5 ? [.varInt(MQTTProperty.subscriptionIdentifier, 5)] : [])),
        .publish(MQTTPublish(topic: "a/b", payload: Array("{\"x\":1}".utf8), qos: 1, retain: true, packetID: 2, properties: v5 ? props : [])),
        .publish(MQTTPublish(topic: "a/c", payload: [0xFF], qos: 2, packetID: 3)),
        .publish(MQTTPublish(topic: v5 ? "" : "a", payload: [1], qos: 0, properties: v5 ? [.twoByte(MQTTProperty.topicAlias, 1)] : [])),
        .pubrel(MQTTPacketAck(packetID: 3)), .puback(MQTTPacketAck(packetID: 1)), .pubrec(MQTTPacketAck(packetID: 1)),
        .pubcomp(MQTTPacketAck(packetID: 1)), .unsubscribe(MQTTUnsubscribe(packetID: 4, filters: ["a/+"])), .pingreq,
        .disconnect(reasonCode: 4, properties: v5 ? [.fourByte(MQTTProperty.sessionExpiryInterval, 0)] : []),
    ]
    seeds.append((v, encode(.connect(connect), v) + rest.flatMap { encode($0, v) }))
    for p in rest { seeds.append((v, encode(.connect(connect), v) + encode(p, v))) }
}

/// Mutates `input`; half the time the leading CONNECT (its first `keep` bytes) is left intact so that
/// the mutations reach the packets after it and the connected server.
@MainActor func mutate(_ input: [UInt8]) -> [UInt8] {
    let keep = Bool.random(using: &rng) ? Int(input[1]) + 2 : 0
    let interesting: [UInt8] = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x23, 0x2B, 0x24, 0x2F, 0x26, 0x0B, 0x30, 0x82]
    return Array(input[..<keep]) + Mutator.mutate(Array(input[keep...]), interesting: interesting, using: &rng)
}

/// A hub that takes everything, sometimes busy.
final class FuzzHub: HubLink, @unchecked Sendable {
    final class User: ClientIdentity { let tenant = "t"; let device = "d" }
    var busy = false
    func authenticate(_ c: ConnectCredentials) -> ClientIdentity? { c.clientID == "deny" ? nil : User() }
    func mayPublish(_ identity: ClientIdentity, topic: String) -> Bool { !topic.hasPrefix("x") }
    func maySubscribe(_ identity: ClientIdentity, filter: String) -> Bool { true }
    func submit(_ m: BrokerMessage, identity: ClientIdentity, clientID: String, ticket: SubmitTicket?) -> HubSubmitStatus {
        if busy { return .busy }
        ticket?.complete(nil)
        return .accepted
    }
    func connected(_ identity: ClientIdentity, clientID: String, remoteAddress: String) {}
    func disconnected(_ identity: ClientIdentity, clientID: String, reason: String) {}
}

final class Control: ConnectionControl, ClientLinkOwner, @unchecked Sendable {
    func close() {}
    func pauseReading() {}
    func resumeReading() {}
    func expectPackets(within seconds: Double) {}
    func retry(after delay: TimeAmount) {}
    func linkHasPendingBytes() {}
    func linkMustDisconnect(_ reasonCode: UInt8) {}
}

let loop = EmbeddedEventLoop()
let hub = FuzzHub()
var broker = Broker(config: BrokerConfig(), timers: loop)
var decoded = 0, refused = 0, connected = 0
let started = Date()

for n in 0..<inputs {
    if n % 10_000 == 0 { broker = Broker(config: BrokerConfig(), timers: loop) }
    let (_, seed) = seeds.randomElement(using: &rng)!
    let input = mutate(seed)
    hub.busy = n % 13 == 0
    let control = Control()
    let link = ClientLink()
    link.owner = control
    var limits = ServerLimits()
    limits.receiveMaximum = 2
    limits.topicAliasMaximum = 4
    let connection = ServerConnection(broker: broker, hub: hub, limits: limits, link: link, remoteAddress: "fuzz")
    connection.control = control
    var decoder = MQTTPacketDecoder(limits: MQTTDecoderLimits(maximumPacketSize: 512))
    // Deliver in random chunks, as TCP would.
    var offset = 0
    var pending = ByteBuffer()
    outer: while offset < input.count {
        let chunk = Int.random(in: 1...max(1, input.count - offset), using: &rng)
        pending.writeBytes(input[offset..<(offset + chunk)])
        offset += chunk
        do {
            while let p = try decoder.decode(buffer: &pending) {
                decoded += 1
                // Whatever decodes must encode and decode to the same packet.
                if let v = decoder.version {
                    var again = ByteBuffer()
                    MQTTPacketEncoder.write(p, version: v, into: &again)
                    var d2 = MQTTPacketDecoder(version: { if case .connect = p { return nil } else { return v } }())
                    let back = try? d2.decode(buffer: &again)
                    if back != p {
                        print("round trip changed a packet: \(p) -> \(String(describing: back)); input \(input.map { String(format: "%02x", $0) }.joined())")
                        exit(1)
                    }
                }
                connection.receive(p)
                if case .connect = p, connection.state == .connected { connected += 1 }
                connection.runPosted()
                if connection.state == .closed { break outer }
            }
        } catch let e as MQTTProtocolError {
            refused += 1
            connection.decodeFailed(e)
            break
        } catch {
            print("unexpected error \(error)")
            exit(1)
        }
    }
    connection.retryStalled()
    connection.transportClosed(reason: "fuzz")
    _ = link.takePending()
    loop.advanceTime(by: .seconds(5))
}
let seconds = Date().timeIntervalSince(started)
print("mqtt fuzz: \(inputs) inputs in \(String(format: "%.1f", seconds)) s, \(decoded) packets decoded, \(connected) sessions connected, \(refused) inputs refused as malformed; no crash, every decoded packet round-tripped")
