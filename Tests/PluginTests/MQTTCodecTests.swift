import MQTTCodec
import NIOCore
import NIOEmbedded
import NIOTestUtils
import Testing

@Suite struct MQTTCodecTests {
    func encode(_ p: MQTTPacket, _ v: MQTTVersion) -> ByteBuffer {
        var b = ByteBuffer()
        MQTTPacketEncoder.write(p, version: v, into: &b)
        return b
    }

    static let packets: [(MQTTPacket, MQTTVersion)] = [
        (.connect(MQTTConnect(version: .v311, clientID: "c1", keepAlive: 30, username: "u", password: Array("p".utf8))), .v311),
        (.connect(MQTTConnect(version: .v5, clientID: "c2", cleanStart: false, properties: [.fourByte(MQTTProperty.sessionExpiryInterval, 60), .twoByte(MQTTProperty.receiveMaximum, 10)])), .v5),
        (.connack(MQTTConnAck(sessionPresent: true, reasonCode: 0)), .v311),
        (.connack(MQTTConnAck(sessionPresent: false, reasonCode: 0x87, properties: [.string(MQTTProperty.reasonString, "no")])), .v5),
        (.publish(MQTTPublish(topic: "a/b", payload: [1, 2, 3])), .v311),
        (.publish(MQTTPublish(topic: "a/b", payload: Array("x".utf8), qos: 1, retain: true, duplicate: true, packetID: 7)), .v311),
        (.publish(MQTTPublish(topic: "t", payload: [], qos: 1, packetID: 9, properties: [
            .byte(MQTTProperty.payloadFormatIndicator, 1), .string(MQTTProperty.contentType, "application/json"),
            .string(MQTTProperty.responseTopic, "r"), .binary(MQTTProperty.correlationData, [9, 9]), .userProperty("k", "v"),
            .varInt(MQTTProperty.subscriptionIdentifier, 268_435_455),
        ])), .v5),
        (.puback(MQTTPacketAck(packetID: 7)), .v311),
        (.puback(MQTTPacketAck(packetID: 7, reasonCode: 0x10)), .v5),
        (.pubrec(MQTTPacketAck(packetID: 8)), .v5),
        (.pubrel(MQTTPacketAck(packetID: 8)), .v5),
        (.pubcomp(MQTTPacketAck(packetID: 8)), .v5),
        (.pingreq, .v311), (.pingresp, .v5),
        (.disconnect(reasonCode: 0, properties: []), .v311),
        (.disconnect(reasonCode: 0x8E, properties: [.string(MQTTProperty.reasonString, "taken over")]), .v5),
    ]

    @Test(arguments: 0..<packets.count)
    func roundTripsWholeAndByteByByte(index: Int) throws {
        let (packet, version) = Self.packets[index]
        let bytes = encode(packet, version)
        let connectVersion: MQTTVersion? = if case .connect = packet { nil } else { version }
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: [(bytes, [packet])]) {
            MQTTPacketDecoder(version: connectVersion)
        }
    }

    @Test func encodesTheSpecExamples() {
        // PINGREQ is C0 00; a QoS 0 PUBLISH of "a" with payload "b" under 3.1.1 is 30 04 00 01 61 62.
        #expect(Array(encode(.pingreq, .v311).readableBytesView) == [0xC0, 0x00])
        #expect(Array(encode(.publish(MQTTPublish(topic: "a", payload: Array("b".utf8))), .v311).readableBytesView) == [0x30, 0x04, 0x00, 0x01, 0x61, 0x62])
        // Remaining length 321 is encoded as C1 02 (section 1.5.5).
        let big = encode(.publish(MQTTPublish(topic: "a", payload: [UInt8](repeating: 0, count: 318))), .v311)
        #expect(Array(big.readableBytesView.prefix(3)) == [0x30, 0xC1, 0x02])
    }

    func decodeError(_ bytes: [UInt8], version: MQTTVersion? = .v5, limit: Int = 268_435_460) -> MQTTProtocolError? {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(MQTTPacketDecoder(version: version, limits: .init(maximumPacketSize: limit))))
        defer { _ = try? channel.finish() }
        do {
            try channel.writeInbound(ByteBuffer(bytes: bytes))
            return nil
        } catch let e as MQTTProtocolError {
            return e
        } catch {
            return MQTTProtocolError("\(error)")
        }
    }

    @Test func rejectsMalformedPackets() {
        #expect(decodeError([0xF0, 0x00])?.description == "unsupported packet type 15")
        #expect(decodeError([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])?.description == "remaining length is longer than four bytes")
        #expect(decodeError([0x36, 0x00])?.description == "PUBLISH with QoS 3")
        #expect(decodeError([0x38, 0x03, 0x00, 0x01, 0x61])?.description == "PUBLISH at QoS 0 with the DUP flag")
        #expect(decodeError([0x32, 0x03, 0x00, 0x01, 0x61])?.description == "PUBLISH without a packet identifier")
        #expect(decodeError([0x30, 0x03, 0x00, 0x05, 0x61])?.description == "string runs past the end of the packet")
        #expect(decodeError([0x30, 0x04, 0x00, 0x02, 0xC3, 0x28])?.description == "string is not well-formed UTF-8")
        #expect(decodeError([0x30, 0x04, 0x00, 0x01, 0x61, 0x05])?.description == "properties run past the end of the packet")
        #expect(decodeError([0x30, 0x05, 0x00, 0x01, 0x61, 0x01, 0x7F])?.description == "unknown property identifier 0x7f")
        #expect(decodeError([0xC1, 0x00])?.description == "invalid fixed header flags for PINGREQ")
        #expect(decodeError([0x62, 0x02, 0x00, 0x01], version: .v311) == nil)
        #expect(decodeError([0x60, 0x02, 0x00, 0x01])?.description == "invalid fixed header flags for PUBREL")
        #expect(decodeError([0x10, 0x07, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x06], version: nil)?.reasonCode == 0x84)
        #expect(decodeError([0x30, 0x10] + [UInt8](repeating: 0, count: 16), limit: 10)?.reasonCode == 0x95)
        #expect(decodeError([0xD0, 0x01, 0x00])?.description == "1 unexpected bytes at the end of the packet")
    }
}
