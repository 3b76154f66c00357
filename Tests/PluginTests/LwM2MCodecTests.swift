import Foundation
import IoTCPluginKit
import LwM2MCodec
import Testing

struct LinkFormatTests {
    @Test func readsARegistrationsObjectList() throws {
        let links = try LinkFormat.parse(#"</>;rt="oma.lwm2m";ct=11542, </1/0>,</3/0>;ver=1.1,</3303>;ver="1.1""#)
        #expect(links.map(\.target) == ["/", "/1/0", "/3/0", "/3303"])
        #expect(links[0].attributes == ["rt": "oma.lwm2m", "ct": "11542"])
        #expect(links[2].objectPath == [3, 0] && links[2].attributes["ver"] == "1.1")
        #expect(links[0].objectPath == nil && LinkFormat.Link(target: "/a/1", attributes: [:]).objectPath == nil)
        #expect(try LinkFormat.parse("  ").isEmpty)
        #expect(LinkFormat.write(links) == #"</>;ct=11542;rt="oma.lwm2m",</1/0>,</3/0>;ver=1.1,</3303>;ver=1.1"#)
    }

    /// A quoted value may hold `"` and `\` as quoted-pairs (RFC 6690 §2, RFC 2616's quoted-string);
    /// such a registration was refused ("expected ','"). Written back, they are escaped again.
    @Test func readsQuotedPairsInValues() throws {
        let text = #"</3/0>;title="a \"quoted\" name, with \\ and ; in it";ver=1.1,</4/0>"#
        let links = try LinkFormat.parse(text)
        #expect(links.count == 2 && links[0].attributes["title"] == #"a "quoted" name, with \ and ; in it"#)
        #expect(LinkFormat.write(links) == #"</3/0>;title="a \"quoted\" name, with \\ and ; in it";ver=1.1,</4/0>"#)
        #expect(try LinkFormat.parse(LinkFormat.write(links)) == links)
    }

    /// A client's alternate path for its objects (LwM2M 1.1 §6.2.1): the target of its rt="oma.lwm2m" link.
    @Test func readsAnAlternatePathForObjects() throws {
        let links = try LinkFormat.parse(#"</lwm2m>;rt="oma.lwm2m";ct=110,</lwm2m/1/0>,</lwm2m/3303/0>;ver=1.1"#)
        #expect(LinkFormat.root(of: links) == "/lwm2m")
        #expect(links.map { $0.objectPath(under: "/lwm2m") } == [nil, [1, 0], [3303, 0]])
        #expect(links[1].objectPath == nil, "not an object path at the root")
        #expect(LinkFormat.root(of: try LinkFormat.parse(#"</>;rt="oma.lwm2m",</3/0>"#)) == "/")
        #expect(LinkFormat.root(of: try LinkFormat.parse("</3/0>")) == "/")
        #expect(LinkFormat.root(of: try LinkFormat.parse(#"</x/>;rt="oma.lwm2m""#)) == "/x")
        #expect(LinkFormat.Link(target: "/lwm2mx/3/0", attributes: [:]).objectPath(under: "/lwm2m") == nil)
    }

    @Test func refusesMalformedLists() {
        for bad in ["</3/0", "3/0", "</3/0>;", "</3/0>;ver=1;ver=2", "</3/0> </4/0>", #"</3/0>;rt="x"#, "</3 /0>", "</3/0>,"] {
            #expect(throws: LinkFormat.Error.self, "\(bad)") { try LinkFormat.parse(bad) }
        }
    }
}

struct RegistrationsTests {
    @Test func registersUpdatesAndExpires() {
        var t = Registrations(idPrefix: "x-")
        guard case .registered(let r, nil) = t.register(endpoint: "ep1", tenant: "a", device: "ep1", lifetime: 60, binding: "U", version: "1.1",
                                                        objects: [], remote: "r1", now: 1000) else { Issue.record("not registered"); return }
        #expect(r.id == "x-1" && r.expires == 1060)
        #expect(t.update(id: r.id, lifetime: 30, binding: nil, objects: nil, remote: "r2", now: 1010)?.expires == 1040)
        #expect(t.update(id: "nope", lifetime: nil, binding: nil, objects: nil, remote: "r", now: 0) == nil)
        // The same device registering again replaces its registration; another device may not take it.
        guard case .registered(let again, let replaced?) = t.register(endpoint: "ep1", tenant: "a", device: "ep1", lifetime: 60, binding: "U",
                                                                     version: "1.1", objects: [], remote: "r3", now: 1020) else { Issue.record("no re-registration"); return }
        #expect(replaced.id == r.id && again.id == "x-2" && t.count == 1)
        #expect(t.register(endpoint: "ep1", tenant: "a", device: "other", lifetime: 60, binding: "U", version: "1.1", objects: [], remote: "r", now: 1020) == .endpointTaken)
        // Endpoint names are per tenant.
        if case .endpointTaken = t.register(endpoint: "ep1", tenant: "b", device: "ep1", lifetime: 5, binding: "U", version: "1.0", objects: [], remote: "r", now: 1020) {
            Issue.record("tenant b's ep1 is another endpoint")
        }
        #expect(t.expire(now: 1024).isEmpty)
        #expect(t.expire(now: 1025).map(\.tenant) == ["b"])
        #expect(t.deregister(id: again.id)?.endpoint == "ep1" && t.count == 0)
    }

    /// Writes go in TLV unless the client's root link lists the formats it reads without TLV.
    @Test func writesInAFormatTheClientSaysItReads() throws {
        var t = Registrations(idPrefix: "x-")
        func format(_ objects: String) throws -> (listed: [UInt32], write: UInt32, composite: UInt32) {
            guard case .registered(let r, _) = t.register(endpoint: "ep", tenant: "a", device: "ep", lifetime: 60, binding: "U", version: "1.1",
                                                          objects: try LinkFormat.parse(objects), remote: "r", now: 0) else { Issue.record("not registered"); return ([], 0, 0) }
            return (r.contentFormats, r.writeFormat, r.compositeFormat)
        }
        #expect(try format("</1/0>,</3/0>") == ([], 11542, 110))
        #expect(try format(#"</>;rt="oma.lwm2m";ct=11542,</3/0>"#) == ([11542], 11542, 110))
        #expect(try format(#"</>;rt="oma.lwm2m";ct="60 110 112 11542",</3/0>"#) == ([60, 110, 112, 11542], 11542, 110))
        #expect(try format(#"</>;rt="oma.lwm2m";ct="60 110 112 11544",</3/0>"#) == ([60, 110, 112, 11544], 110, 110))
        #expect(try format(#"</lwm2m>;rt="oma.lwm2m";ct=112,</lwm2m/3/0>"#) == ([112], 112, 112))
        #expect(try format(#"</>;ct=11544"#) == ([11544], 11542, 110), "nothing it lists can be written: TLV")
    }

    @Test func queueModeClientsListenOnlyForAWhileAfterTheySpoke() {
        var t = Registrations(idPrefix: "q-")
        guard case .registered(let r, _) = t.register(endpoint: "s", tenant: "a", device: "s", lifetime: 600, binding: "UQ", version: "1.0",
                                                     objects: [], remote: "r", now: 100) else { Issue.record("not registered"); return }
        #expect(r.queueMode && r.awake(now: 150) && !r.awake(now: 193))
        t.heard(id: r.id, now: 300)
        #expect(t.byID[r.id]?.awake(now: 350) == true && t.byID[r.id]?.awake(now: 320, listening: 10) == false)
        guard case .registered(let plain, _) = t.register(endpoint: "p", tenant: "a", device: "p", lifetime: 600, binding: "U", version: "1.1",
                                                         objects: [], remote: "r", now: 100) else { return }
        #expect(!plain.queueMode && plain.awake(now: 10_000))
        guard case .registered(let q11, _) = t.register(endpoint: "n", tenant: "a", device: "n", lifetime: 600, binding: "U", queueMode: true, version: "1.1",
                                                       objects: [], remote: "r", now: 100) else { return }
        #expect(q11.queueMode)
    }
}

struct ObjectModelTests {
    @Test func loadsOMAXMLDefinitions() throws {
        let xml = """
            <?xml version="1.0" encoding="utf-8"?>
            <LWM2M xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
              <Object ObjectType="MODefinition">
                <Name>Pressure</Name><Description1>Barometer</Description1><ObjectID>3323</ObjectID><ObjectURN>urn:oma:lwm2m:ext:3323</ObjectURN>
                <LWM2MVersion>1.0</LWM2MVersion><ObjectVersion>1.1</ObjectVersion><MultipleInstances>Multiple</MultipleInstances><Mandatory>Optional</Mandatory>
                <Resources>
                  <Item ID="5700"><Name>Sensor Value</Name><Operations>R</Operations><MultipleInstances>Single</MultipleInstances>
                    <Mandatory>Mandatory</Mandatory><Type>Float</Type><RangeEnumeration></RangeEnumeration><Units>Pa</Units><Description>Last value</Description></Item>
                  <Item ID="5605"><Name>Reset Min and Max Measured Values</Name><Operations>E</Operations><MultipleInstances>Single</MultipleInstances>
                    <Mandatory>Optional</Mandatory><Type></Type><RangeEnumeration></RangeEnumeration><Units></Units><Description></Description></Item>
                </Resources>
              </Object>
            </LWM2M>
            """
        let objects = try ObjectXML.parse(Data(xml.utf8), file: "3323.xml")
        #expect(objects.count == 1)
        let p = try #require(objects.first)
        #expect(p.id == 3323 && p.name == "Pressure" && p.version == "1.1" && p.multipleInstances)
        #expect(p.resources[5700] == ObjectDefinition.Resource(id: 5700, name: "Sensor Value", type: .float, operations: "R", units: "Pa"))
        #expect(p.resources[5605]?.type == ObjectDefinition.ResourceType.none && p.fieldName(resource: 5700) == "pressure")
        var registry = ObjectRegistry()
        registry.add(objects)
        #expect(registry[3323]?.name == "Pressure" && registry[3303]?.fieldName(resource: 5700) == "temperature")
        #expect(registry[3]?.fieldName(resource: 9) == "battery_level" && registry[3342]?.fieldName(resource: 5500) == "on_off_switch")
    }

    @Test func reportsBadXMLWithItsLocation() {
        let cases = [
            ("<LWM2M><Object><Name>X</Name></Object></LWM2M>", "bad.xml:1:", "numeric <ObjectID>"),
            ("<LWM2M><Object><Name>X</Name><ObjectID>9</ObjectID><Resources><Item ID=\"1\"><Type>Number</Type></Item></Resources></Object></LWM2M>", "bad.xml:1:", "unknown Type 'Number'"),
            ("<LWM2M><Object>", "bad.xml:1:", "not well-formed"),
            ("<LWM2M></LWM2M>", "bad.xml:1:1", "no <Object>"),
            ("<LWM2M>\n  <Object><Name>X</Name></Object></LWM2M>", "bad.xml:2:3:", "numeric <ObjectID>"),
            ("<LWM2M><Object><ObjectID>9</ObjectID><Name>X</Name><Resources><Item ID=\"x\"/></Resources></Object></LWM2M>", "bad.xml:1:63:", "numeric ID attribute"),
            // Not well-formed, each located where it goes wrong.
            ("<!DOCTYPE x [<!ENTITY a \"aaaa\">]><LWM2M/>", "bad.xml:1:1:", "document type declarations are not accepted"),
            ("<LWM2M><Object></LWM2M>", "bad.xml:1:16:", "</LWM2M> where </Object> was expected"),
            ("<LWM2M><Item ID='1' ID='2'/></LWM2M>", "bad.xml:1:24:", "attribute ID given twice"),
            ("<LWM2M>\n<Name>a &bogus; b</Name></LWM2M>", "bad.xml:2:9:", "unknown entity &bogus;"),
            ("<LWM2M>&#0;</LWM2M>", "bad.xml:1:8:", "unknown entity &#0;"),
            ("<LWM2M>a & b</LWM2M>", "bad.xml:1:10:", "starts no reference"),
            ("<LWM2M/>tail", "bad.xml:1:9:", "text outside the root element"),
            ("<LWM2M/><LWM2M/>", "bad.xml:1:9:", "a second root element"),
            ("<LWM2M><!-- open", "bad.xml:1:8:", "a comment is not closed"),
            ("<LWM2M><Name a=\"1\"b=\"2\"/></LWM2M>", "bad.xml:1:19:", "expected a space"),
            ("", "bad.xml:1:1:", "no root element"),
        ]
        for (xml, location, reason) in cases {
            do {
                _ = try ObjectXML.parse(Data(xml.utf8), file: "bad.xml")
                Issue.record("parsed \(xml)")
            } catch {
                #expect(error.description.hasPrefix(location) && error.description.contains(reason), "\(error)")
            }
        }
    }

    @Test func readsEntitiesCDATACommentsAndRefusesBytesThatAreNotUTF8() throws {
        let xml = """
            <?xml version="1.0"?>
            <!-- a comment before the root -->
            <LWM2M><Object><Name>Fish &amp; Chips &#x263A;&#65;</Name><ObjectID>40000</ObjectID>
              <Resources><Item ID='1'><Name><![CDATA[<raw> & ready]]></Name><Type>String</Type></Item></Resources></Object></LWM2M>
            """
        let object = try #require(try ObjectXML.parse(Data(xml.utf8), file: "x.xml").first)
        #expect(object.name == "Fish & Chips \u{263A}A" && object.resources[1]?.name == "<raw> & ready")
        do {
            _ = try ObjectXML.parse(Data([0x3C, 0x61, 0x3E, 0xFF, 0x3C, 0x2F, 0x61, 0x3E]), file: "x.xml")
            Issue.record("parsed a byte that is not UTF-8")
        } catch {
            #expect(error.description == "x.xml:1:4: not well-formed XML (invalid UTF-8)")
        }
    }
}

struct ResourceValuesTests {
    let values = ResourceValues(objects: ObjectRegistry())

    @Test func typesTLVBySpecificationAndPath() throws {
        let device = TLV.encode([
            TLV.Entry(kind: .resource, id: 0, value: Array("Open Mobile Alliance".utf8)),
            TLV.Entry(kind: .multipleResource, id: 6, children: [TLV.Entry(kind: .resourceInstance, id: 0, value: [1]), TLV.Entry(kind: .resourceInstance, id: 1, value: [5])]),
            TLV.Entry(kind: .resource, id: 9, value: [87]),
        ])
        let read = try values.decode(device, format: 11542, path: LwM2MPath([3, 0]))
        #expect(read.map(\.0.description) == ["/3/0/0", "/3/0/6/0", "/3/0/6/1", "/3/0/9"])
        #expect(read.map(\.1) == [.string("Open Mobile Alliance"), .int(1), .int(5), .int(87)])
        let one = try values.decode(TLV.encode([TLV.Entry(kind: .resource, id: 5700, value: TLV.bytes(float: 21.5))]), format: 11542, path: LwM2MPath([3303, 0, 5700]))
        #expect(one.map(\.0.description) == ["/3303/0/5700"] && one[0].1 == .double(21.5))
        let objects = try values.decode(TLV.encode([TLV.Entry(kind: .objectInstance, id: 2, children: [TLV.Entry(kind: .resource, id: 5700, value: TLV.bytes(float: 1))])]),
                                        format: 11542, path: LwM2MPath([3303]))
        #expect(objects.map(\.0.description) == ["/3303/2/5700"])
        #expect(try values.decode(Array("87".utf8), format: 0, path: LwM2MPath([3, 0, 9]))[0].1 == .int(87))
        let senml = try values.decode(Array(#"[{"bn":"/3303/0/","n":"5700","v":20.5},{"n":"5701","vs":"Cel"}]"#.utf8), format: 110, path: LwM2MPath([3303, 0]))
        #expect(senml.map(\.0.description) == ["/3303/0/5700", "/3303/0/5701"] && senml[0].1 == .double(20.5))
    }

    @Test func readsTheLwM2M10JSONFormat() throws {
        let json = #"{"bn":"/3/0/","e":[{"n":"0","sv":"Open Mobile Alliance"},{"n":"9","v":87},{"n":"6/0","v":1},{"n":"13","v":1.5e9},{"n":"22/0","ov":"3:1"}]}"#
        let read = try values.decode(Array(json.utf8), format: 11543, path: LwM2MPath([3, 0]))
        #expect(read.map(\.0.description) == ["/3/0/0", "/3/0/9", "/3/0/6/0", "/3/0/13", "/3/0/22/0"])
        #expect(read.map(\.1) == [.string("Open Mobile Alliance"), .int(87), .int(1), .int(1_500_000_000), .string("3:1")])
        let single = try values.decode(Array(#"{"e":[{"v":21.5}]}"#.utf8), format: 11543, path: LwM2MPath([3303, 0, 5700]))
        #expect(single.map(\.0.description) == ["/3303/0/5700"] && single[0].1 == .double(21.5))
        for bad in [#"{"e":[{"n":"9"}]}"#, #"{"bn":"/x/","e":[{"n":"9","v":1}]}"#, #"{"e":{}}"#, #"{"e":[{"n":9,"v":1}]}"#, #"{"e":[{"n":"9","v":"1"}]}"#] {
            #expect(throws: ResourceValues.Error.self, "\(bad)") { try values.decode(Array(bad.utf8), format: 11543, path: LwM2MPath([3, 0])) }
        }
    }

    /// Plain CBOR (60) for one resource and LwM2M CBOR (11544), from bytes written out by hand (RFC 8949).
    @Test func readsCBORAndLwM2MCBOR() throws {
        #expect(try values.decode([0x18, 0x57], format: 60, path: LwM2MPath([3, 0, 9]))[0].1 == .int(87))
        #expect(try values.decode([0xF9, 0x4D, 0x60], format: 60, path: LwM2MPath([3303, 0, 5700]))[0].1 == .double(21.5))
        #expect(try values.decode([0x05], format: 60, path: LwM2MPath([3303, 0, 5700]))[0].1 == .double(5), "an integer for a float resource")
        // A decimal fraction (tag 4): 27315 × 10^-2.
        #expect(try values.decode([0xC4, 0x82, 0x21, 0x19, 0x6A, 0xB3], format: 60, path: LwM2MPath([3303, 0, 5700]))[0].1 == .double(273.15))
        #expect(try values.decode([0x63] + Array("Cel".utf8), format: 60, path: LwM2MPath([3303, 0, 5701]))[0].1 == .string("Cel"))
        // {[3, 0]: {0: "Open Mobile Alliance", 6: {0: 1, 1: 5}, 9: 87, 13: 1(1500000000)}}
        let device: [UInt8] = [0xA1, 0x82, 0x03, 0x00, 0xA4, 0x00, 0x74] + Array("Open Mobile Alliance".utf8)
            + [0x06, 0xA2, 0x00, 0x01, 0x01, 0x05, 0x09, 0x18, 0x57, 0x0D, 0xC1, 0x1A, 0x59, 0x68, 0x2F, 0x00]
        let read = try values.decode(device, format: 11544, path: LwM2MPath([3, 0]))
        #expect(read.map(\.0.description) == ["/3/0/0", "/3/0/6/0", "/3/0/6/1", "/3/0/9", "/3/0/13"])
        #expect(read.map(\.1) == [.string("Open Mobile Alliance"), .int(1), .int(5), .int(87), .int(1_500_000_000)])
        // {3303: {0: {5700: 21.5 (half), 5701: "Cel"}}}, and the same with an indefinite outer map and a double.
        let nested: [UInt8] = [0xA1, 0x19, 0x0C, 0xE7, 0xA1, 0x00, 0xA2, 0x19, 0x16, 0x44, 0xF9, 0x4D, 0x60, 0x19, 0x16, 0x45, 0x63] + Array("Cel".utf8)
        let temperature = try values.decode(nested, format: 11544, path: LwM2MPath([3303]))
        #expect(temperature.map(\.0.description) == ["/3303/0/5700", "/3303/0/5701"] && temperature.map(\.1) == [.double(21.5), .string("Cel")])
        let indefinite: [UInt8] = [0xBF, 0x19, 0x0C, 0xE7, 0xA1, 0x00, 0xA1, 0x19, 0x16, 0x44, 0xFB, 0x40, 0x35, 0x80, 0, 0, 0, 0, 0, 0xFF]
        #expect(try values.decode(indefinite, format: 11544, path: LwM2MPath([3303, 0, 5700])).map(\.1) == [.double(21.5)])
        let bad: [(String, [UInt8], LwM2MPath)] = [
            ("outside the path asked for", [0xA1, 0x82, 0x03, 0x00, 0xA1, 0x09, 0x01], LwM2MPath([3303])),
            ("a value at an instance", [0xA1, 0x82, 0x03, 0x00, 0x05], LwM2MPath([3])),
            ("five levels", [0xA1, 0x85, 0x03, 0x00, 0x09, 0x00, 0x01, 0x01], LwM2MPath([3])),
            ("an empty key", [0xA1, 0x80, 0x01], LwM2MPath([3])),
            ("a text key", [0xA1, 0x61, 0x33, 0x01], LwM2MPath([3])),
            ("id 65535", [0xA1, 0x83, 0x19, 0xFF, 0xFF, 0x00, 0x00, 0x01], LwM2MPath([])),
            ("cut short", Array(device.dropLast(3)), LwM2MPath([3, 0])),
            ("a byte after", device + [0x00], LwM2MPath([3, 0])),
            ("a length past the end", [0xBF, 0x19, 0x0C, 0xE7, 0xA1, 0x00, 0xA1, 0x01, 0x7A, 0xFF, 0xFF, 0xFF, 0xFF], LwM2MPath([3303])),
            ("not a map", [0x82, 0x01, 0x02], LwM2MPath([3])),
        ]
        for (name, bytes, path) in bad {
            #expect(throws: ResourceValues.Error.self, "\(name)") { try values.decode(bytes, format: 11544, path: path) }
        }
        #expect(throws: ResourceValues.Error.self) { try values.decode([0x18, 0x57, 0x00], format: 60, path: LwM2MPath([3, 0, 9])) }
        #expect(throws: ResourceValues.Error.self) { try values.decode([0x18, 0x57], format: 60, path: LwM2MPath([3, 0])) }
        #expect(throws: ResourceValues.Error.self) { try values.decode([0xC1, 0xC1, 0x01], format: 60, path: LwM2MPath([3, 0, 13])) }
        // A decimal fraction whose exponent is Int64's least value, and one past ±400: refused, not trapped.
        #expect(throws: ResourceValues.Error.self) {
            try values.decode([0xC4, 0x82, 0x3B, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], format: 60, path: LwM2MPath([3303, 0, 5700]))
        }
        #expect(throws: ResourceValues.Error.self) { try values.decode([0xC4, 0x82, 0x19, 0x01, 0x91, 0x01], format: 60, path: LwM2MPath([3303, 0, 5700])) }
    }

    @Test func refusesWhatDoesNotFit() throws {
        #expect(throws: ResourceValues.Error.self) { try values.decode([0xC8, 0x00], format: 11542, path: LwM2MPath([3, 0])) }
        #expect(throws: ResourceValues.Error.self) { try values.decode(Array(#"[{"n":"temp","v":1}]"#.utf8), format: 110, path: LwM2MPath([3, 0])) }
        #expect(throws: ResourceValues.Error.self) { try values.decode(Array("x".utf8), format: 0, path: LwM2MPath([3, 0])) }
        #expect(throws: ResourceValues.Error.self) { try values.decode([1], format: 9999, path: LwM2MPath([3, 0, 1])) }
        #expect(throws: ResourceValues.Error.self) { try values.encodeTLV(path: LwM2MPath([3, 0]), values: [(14, .int(2))]) }
        let written = try values.encodeTLV(path: LwM2MPath([3, 0]), values: [(14, .string("+02")), (13, .int(1_700_000_000))])
        #expect(try TLV.decode(written) == [TLV.Entry(kind: .resource, id: 14, value: Array("+02".utf8)),
                                             TLV.Entry(kind: .resource, id: 13, value: TLV.bytes(integer: 1_700_000_000))])
        let senml = try values.encodeSenML(path: LwM2MPath([3, 0]), values: [(14, .string("+02")), (6, .array([.int(1), .int(5)]))])
        #expect(try SenML.decode(senml, cbor: false) == [SenML.Record(name: "/3/0/14", value: .string("+02")), SenML.Record(name: "/3/0/6/0", value: .number(1)),
                                                         SenML.Record(name: "/3/0/6/1", value: .number(5))])
        #expect(throws: ResourceValues.Error.self) { try values.encodeSenML(path: LwM2MPath([3, 0]), values: [(9, .string("x"))]) }
        for bad in ["", "3/0", "/", "/a", "/1/2/3/4/5", "/65535", "/1//2"] { #expect(LwM2MPath(bad) == nil, "\(bad)") }
        #expect(LwM2MPath("/3303/0/5700")?.ids == [3303, 0, 5700])
    }
}

struct BootstrapPlanTests {
    let values = ResourceValues(objects: ObjectRegistry())

    /// A coaps server account carries the client's own PSK identity and key (Security Mode 0); a coap
    /// one none (mode 3). The Server instance has the Short Server ID, lifetime and binding.
    @Test func writesTheServerAccount() throws {
        let secure = try BootstrapPlan(serverURI: "coaps://hub.example.com:5684", shortServerID: 3, lifetime: 600, binding: "UQ")
        let security = try TLV.decode(BootstrapPlan.write(secure.securityValues(psk: (Array("meter-9".utf8), [1, 2, 3])), into: LwM2MPath([0, 1]), format: .tlv, values))
        func resource(_ entries: [TLV.Entry], _ id: UInt16) -> [UInt8]? { entries.first { $0.id == id }?.value }
        #expect(resource(security, 0) == Array("coaps://hub.example.com:5684".utf8) && resource(security, 1) == [0] && resource(security, 2) == [0]
                && resource(security, 3) == Array("meter-9".utf8) && resource(security, 5) == [1, 2, 3] && resource(security, 10) == [3])
        let plain = try BootstrapPlan(serverURI: "coap://10.0.0.1:5683", shortServerID: 1, lifetime: 86400, binding: "U")
        let open = try TLV.decode(BootstrapPlan.write(plain.securityValues(psk: nil), into: LwM2MPath([0, 1]), format: .tlv, values))
        #expect(resource(open, 2) == [3] && resource(open, 3) == [] && resource(open, 5) == [] && !plain.secure && secure.secure)
        let server = try TLV.decode(BootstrapPlan.write(secure.serverValues, into: LwM2MPath([1, 0]), format: .tlv, values))
        #expect(resource(server, 0) == [3] && resource(server, 1) == [0x02, 0x58] && resource(server, 6) == [0] && resource(server, 7) == Array("UQ".utf8))
        #expect(throws: ResourceValues.Error.self) { try BootstrapPlan(serverURI: "http://x", shortServerID: 1, lifetime: 1, binding: "U") }
        #expect(throws: ResourceValues.Error.self) { try BootstrapPlan(serverURI: "coap://x", shortServerID: 0, lifetime: 1, binding: "U") }
        #expect(throws: ResourceValues.Error.self) { try BootstrapPlan(serverURI: "coap://x", shortServerID: 1, lifetime: 1, binding: "X") }
    }

    /// A client's `pct` picks SenML JSON or CBOR for the writes: each resource named by its full path
    /// under the instance written, the key as bytes. Other formats are refused; no pct is TLV.
    @Test func writesInTheFormatTheClientPrefers() throws {
        let plan = try BootstrapPlan(serverURI: "coaps://hub.example.com:5684", shortServerID: 3, lifetime: 600, binding: "U")
        let psk = (identity: Array("meter-9".utf8), key: [UInt8]([1, 2, 3]))
        for (pct, cbor) in [("110", false), ("112", true)] {
            let format = try BootstrapPlan.WriteFormat(pct: pct)
            #expect(format.rawValue == UInt32(pct))
            let records = try SenML.decode(BootstrapPlan.write(plan.securityValues(psk: psk), into: LwM2MPath([0, 2]), format: format, values), cbor: cbor)
            #expect(records.contains(SenML.Record(name: "/0/2/0", value: .string("coaps://hub.example.com:5684"))))
            #expect(records.contains(SenML.Record(name: "/0/2/1", value: .bool(false))))
            #expect(records.contains(SenML.Record(name: "/0/2/2", value: .number(0))))
            #expect(records.contains(SenML.Record(name: "/0/2/3", value: .data(Array("meter-9".utf8)))))
            #expect(records.contains(SenML.Record(name: "/0/2/5", value: .data([1, 2, 3]))))
            #expect(records.contains(SenML.Record(name: "/0/2/10", value: .number(3))))
            let server = try SenML.decode(BootstrapPlan.write(plan.serverValues, into: LwM2MPath([1, 4]), format: format, values), cbor: cbor)
            #expect(server.contains(SenML.Record(name: "/1/4/1", value: .number(600))) && server.contains(SenML.Record(name: "/1/4/7", value: .string("U"))))
        }
        #expect(try BootstrapPlan.WriteFormat(pct: nil) == .tlv && BootstrapPlan.WriteFormat(pct: "11542") == .tlv)
        for bad in ["11544", "60", "x", "", "-1", "99999999999"] {
            #expect(throws: ResourceValues.Error.self, "\(bad)") { try BootstrapPlan.WriteFormat(pct: bad) }
        }
    }
}

extension BootstrapPlanTests {
    /// The accounts go to the lowest instances the client's Bootstrap-Discover does not list.
    @Test func writesToFreeInstances() throws {
        let links = try LinkFormat.parse(#"</0/0>;uri="coap://bs",</0/2>,</1/1>;ssid=9,</3/0>"#)
        #expect(BootstrapPlan.instances(discovered: links) == (security: 1, server: 0))
        #expect(BootstrapPlan.instances(discovered: []) == (security: 0, server: 0))
    }
}
