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
        (.puback(MQTTPacketAck(packetID: 300, reasonCode: 0x10, properties: [.string(MQTTProperty.reasonString, "no subscribers"), .userProperty("k", "v")])), .v5),
        (.pubrec(MQTTPacketAck(packetID: 9, reasonCode: 0x80)), .v5),
        (.pubrel(MQTTPacketAck(packetID: 9)), .v311),
        (.pubcomp(MQTTPacketAck(packetID: 9)), .v311),
        (.pingreq, .v311), (.pingresp, .v5),
        (.disconnect(reasonCode: 0, properties: []), .v311),
        (.disconnect(reasonCode: 0x8E, properties: [.string(MQTTProperty.reasonString, "taken over")]), .v5),
        (.connect(MQTTConnect(version: .v311, clientID: "w", will: MQTTWill(topic: "last/w", payload: ByteBuffer(string: "gone"), qos: 1, retain: true))), .v311),
        (.connect(MQTTConnect(version: .v5, clientID: "w5", username: "u", will: MQTTWill(topic: "last/w5", payload: ByteBuffer(string: "bye"), qos: 2,
            properties: [.fourByte(MQTTProperty.willDelayInterval, 5), .string(MQTTProperty.contentType, "text/plain")]))), .v5),
        (.subscribe(MQTTSubscribe(packetID: 3, filters: [("a/+", MQTTSubscriptionOptions(qos: 1)), ("b/#", MQTTSubscriptionOptions(qos: 2))])), .v311),
        (.subscribe(MQTTSubscribe(packetID: 4, filters: [("$share/g/x", MQTTSubscriptionOptions(qos: 1, noLocal: false, retainAsPublished: true, retainHandling: 2)),
                                                         ("y", MQTTSubscriptionOptions(qos: 0, noLocal: true, retainHandling: 1))],
                                  properties: [.varInt(MQTTProperty.subscriptionIdentifier, 42)])), .v5),
        (.suback(MQTTSubAck(packetID: 3, reasonCodes: [1, 0x80])), .v311),
        (.suback(MQTTSubAck(packetID: 4, reasonCodes: [1, 0x87], properties: [.string(MQTTProperty.reasonString, "acl")])), .v5),
        (.unsubscribe(MQTTUnsubscribe(packetID: 5, filters: ["a/+", "b"])), .v311),
        (.unsubscribe(MQTTUnsubscribe(packetID: 6, filters: ["c"], properties: [.userProperty("k", "v")])), .v5),
        (.unsuback(MQTTSubAck(packetID: 5, reasonCodes: [])), .v311),
        (.unsuback(MQTTSubAck(packetID: 6, reasonCodes: [0, 0x11])), .v5),
        (.auth(reasonCode: 0x18, properties: [.string(MQTTProperty.authenticationMethod, "SCRAM")]), .v5),
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
        // Acknowledgements: the reason code and property length are left out on success without
        // properties (MQTT 5 §3.4.2.1), so both versions send the 3.1.1 form; PUBREL has flags 0010.
        for version in [MQTTVersion.v311, .v5] {
            #expect(Array(encode(.puback(MQTTPacketAck(packetID: 7)), version).readableBytesView) == [0x40, 0x02, 0x00, 0x07])
            #expect(Array(encode(.pubrel(MQTTPacketAck(packetID: 0x0102)), version).readableBytesView) == [0x62, 0x02, 0x01, 0x02])
        }
        #expect(Array(encode(.pubrec(MQTTPacketAck(packetID: 7, reasonCode: 0x10)), .v5).readableBytesView) == [0x50, 0x03, 0x00, 0x07, 0x10])
        #expect(Array(encode(.pubcomp(MQTTPacketAck(packetID: 7, reasonCode: 0x92, properties: [.string(MQTTProperty.reasonString, "x")])), .v5).readableBytesView)
                == [0x70, 0x08, 0x00, 0x07, 0x92, 0x04, 0x1F, 0x00, 0x01, 0x78])
        // A 3.1.1 acknowledgement carries neither, whatever the packet holds.
        #expect(Array(encode(.puback(MQTTPacketAck(packetID: 7, reasonCode: 0x10)), .v311).readableBytesView) == [0x40, 0x02, 0x00, 0x07])
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
        #expect(decodeError([0x00, 0x00])?.description == "unknown packet type 0")
        #expect(decodeError([0xF0, 0x00], version: .v311)?.description == "unknown packet type 15")
        #expect(decodeError([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])?.description == "remaining length is longer than four bytes")
        #expect(decodeError([0x36, 0x00])?.description == "PUBLISH with QoS 3")
        #expect(decodeError([0x38, 0x03, 0x00, 0x01, 0x61])?.description == "PUBLISH at QoS 0 with the DUP flag")
        #expect(decodeError([0x32, 0x03, 0x00, 0x01, 0x61])?.description == "PUBLISH without a packet identifier")
        #expect(decodeError([0x30, 0x03, 0x00, 0x05, 0x61])?.description == "string runs past the end of the packet")
        #expect(decodeError([0x30, 0x04, 0x00, 0x02, 0xC3, 0x28])?.description == "string is not well-formed UTF-8")
        #expect(decodeError([0x30, 0x04, 0x00, 0x01, 0x61, 0x05])?.description == "properties run past the end of the packet")
        #expect(decodeError([0x30, 0x05, 0x00, 0x01, 0x61, 0x01, 0x7F])?.description == "property 0x7f is not allowed here")
        #expect(decodeError([0xC1, 0x00])?.description == "invalid fixed header flags for PINGREQ")
        #expect(decodeError([0x62, 0x02, 0x00, 0x01], version: .v311) == nil)
        #expect(decodeError([0x60, 0x02, 0x00, 0x01])?.description == "invalid fixed header flags for PUBREL")
        #expect(decodeError([0x10, 0x07, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x06], version: nil)?.reasonCode == 0x84)
        #expect(decodeError([0x30, 0x10] + [UInt8](repeating: 0, count: 16), limit: 10)?.reasonCode == 0x95)
        #expect(decodeError([0xD0, 0x01, 0x00])?.description == "1 unexpected bytes at the end of the packet")
    }

    @Test func rejectsProtocolViolations() {
        // A packet before CONNECT.
        #expect(decodeError([0x30, 0x03, 0x00, 0x01, 0x61], version: nil)?.reasonCode == MQTTReason.protocolError)
        // Wildcards in a PUBLISH topic; an empty topic without an alias.
        #expect(decodeError([0x30, 0x04, 0x00, 0x01, 0x2B, 0x00])?.reasonCode == MQTTReason.topicNameInvalid)
        #expect(decodeError([0x30, 0x04, 0x00, 0x01, 0x23, 0x00])?.reasonCode == MQTTReason.topicNameInvalid)
        #expect(decodeError([0x30, 0x02, 0x00, 0x00], version: .v311)?.reasonCode == MQTTReason.topicNameInvalid)
        #expect(decodeError([0x30, 0x03, 0x00, 0x00, 0x00])?.reasonCode == MQTTReason.protocolError)
        // The same property twice; a property that does not belong in PUBLISH; a zero topic alias.
        #expect(decodeError([0x30, 0x08, 0x00, 0x01, 0x61, 0x04, 0x01, 0x01, 0x01, 0x01])?.reasonCode == MQTTReason.protocolError)
        #expect(decodeError([0x30, 0x09, 0x00, 0x01, 0x61, 0x05, 0x11, 0x00, 0x00, 0x00, 0x01])?.reasonCode == MQTTReason.malformedPacket)
        #expect(decodeError([0x30, 0x07, 0x00, 0x01, 0x61, 0x03, 0x23, 0x00, 0x00])?.reasonCode == MQTTReason.protocolError)
        // A response topic is a topic name: no wildcards, not empty; a well-formed one passes.
        #expect(decodeError([0x30, 0x0A, 0x00, 0x01, 0x61, 0x06, 0x08, 0x00, 0x03, 0x72, 0x2F, 0x23])?.reasonCode == MQTTReason.protocolError)
        #expect(decodeError([0x30, 0x07, 0x00, 0x01, 0x61, 0x03, 0x08, 0x00, 0x00])?.reasonCode == MQTTReason.protocolError)
        #expect(decodeError([0x30, 0x0A, 0x00, 0x01, 0x61, 0x06, 0x08, 0x00, 0x03, 0x72, 0x2F, 0x31]) == nil)
        // A U+0000 in a string.
        #expect(decodeError([0x30, 0x04, 0x00, 0x01, 0x00, 0x00])?.description == "string is not well-formed UTF-8")
        // SUBSCRIBE with the wrong flags, without filters, with reserved option bits, with retain handling 3.
        #expect(decodeError([0x80, 0x06, 0x00, 0x01, 0x00, 0x01, 0x61, 0x00], version: .v311)?.description == "invalid fixed header flags for SUBSCRIBE")
        #expect(decodeError([0x82, 0x02, 0x00, 0x01], version: .v311)?.reasonCode == MQTTReason.protocolError)
        #expect(decodeError([0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 0x61, 0x04], version: .v311)?.description == "SUBSCRIBE options reserved bits are set")
        #expect(decodeError([0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 0x61, 0x30])?.reasonCode == MQTTReason.protocolError)
        #expect(decodeError([0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 0x61, 0x03])?.description == "SUBSCRIBE with QoS 3")
        // An MQTT 3.1.1 UNSUBACK carries nothing after the packet identifier.
        #expect(decodeError([0xB0, 0x03, 0x00, 0x01, 0x00], version: .v311)?.description == "UNSUBACK with a payload")
        // Packet identifier 0.
        #expect(decodeError([0x82, 0x06, 0x00, 0x00, 0x00, 0x01, 0x61, 0x00], version: .v311)?.description == "SUBSCRIBE with packet identifier 0")
        #expect(decodeError([0x40, 0x02, 0x00, 0x00], version: .v311)?.description == "acknowledgement with packet identifier 0")
        // CONNECT: will QoS without a will; password without user name (3.1.1); Receive Maximum 0.
        #expect(decodeError([0x10, 0x0D, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x04, 0x08, 0x00, 0x3C, 0x00, 0x01, 0x63], version: nil)?.description == "will QoS or retain set without a will")
        #expect(decodeError([0x10, 0x10, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x04, 0x42, 0x00, 0x3C, 0x00, 0x01, 0x63, 0x00, 0x01, 0x70], version: nil)?.description == "password flag set without a user name")
        #expect(decodeError([0x10, 0x11, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x05, 0x02, 0x00, 0x3C, 0x03, 0x21, 0x00, 0x00, 0x00, 0x01, 0x63], version: nil)?.reasonCode == MQTTReason.protocolError)
    }
}
