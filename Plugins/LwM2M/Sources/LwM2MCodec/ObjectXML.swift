import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif

/// Reads object definitions in OMA's LwM2M XML format (the LWM2M-v1_1.xsd schema of the OMNA registry):
/// `<LWM2M><Object><Name/><ObjectID/><ObjectVersion/><MultipleInstances/><Resources><Item ID="..">`.
public enum ObjectXML {
    public struct Error: Swift.Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// The definitions in one XML document; `file` names it in errors (`file:line:column: what`).
    public static func parse(_ data: Data, file: String) throws(Error) -> [ObjectDefinition] {
        let parser = XMLParser(data: data)
        let reader = Reader()
        parser.delegate = reader
        parser.shouldResolveExternalEntities = false
        let ok = parser.parse()
        if let problem = reader.problem {
            throw Error(description: "\(file):\(problem.line):\(problem.column): \(problem.text)")
        }
        guard ok, reader.open.isEmpty else {
            let why = parser.parserError.map { "\($0.localizedDescription)" } ?? "<\(reader.open.last ?? "")> is not closed"
            throw Error(description: "\(file):\(parser.lineNumber):\(parser.columnNumber): not well-formed XML (\(why))")
        }
        guard !reader.objects.isEmpty else { throw Error(description: "\(file):1:1: no <Object> element") }
        return reader.objects
    }

    private final class Reader: NSObject, XMLParserDelegate {
        var objects: [ObjectDefinition] = []
        var problem: (line: Int, column: Int, text: String)?
        /// Elements opened and not yet closed (some parsers accept a document that ends inside one).
        var open: [String] = []
        private var text = ""
        private var object: [String: String] = [:]
        private var item: [String: String]?
        private var resources: [ObjectDefinition.Resource] = []
        private var objectStart = (line: 0, column: 0)

        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?, attributes: [String: String] = [:]) {
            text = ""
            open.append(name)
            switch name {
            case "Object":
                object = [:]
                resources = []
                objectStart = (parser.lineNumber, parser.columnNumber)
            case "Item":
                item = ["ID": attributes["ID"] ?? ""]
            default: break
            }
        }

        func parser(_ parser: XMLParser, foundCharacters string: String) { text += string }

        func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
            let value = text.trimmingCharacters(in: .whitespacesAndNewlines)
            text = ""
            if open.last == name { open.removeLast() }
            if name == "Item" {
                guard let i = item else { return }
                item = nil
                guard let id = UInt16(i["ID"] ?? "") else { return fail(parser, "a resource <Item> needs a numeric ID attribute") }
                guard let type = ObjectDefinition.ResourceType(rawValue: i["Type"] ?? "") else {
                    return fail(parser, "resource \(id): unknown Type '\((i["Type"] ?? "").prefix(32))'")
                }
                resources.append(ObjectDefinition.Resource(id: id, name: i["Name"] ?? "", type: type, multiple: i["MultipleInstances"] == "Multiple",
                                                           operations: i["Operations"] ?? "", units: i["Units"] ?? ""))
                return
            }
            if item != nil {
                item?[name] = value
                return
            }
            switch name {
            case "Name", "ObjectID", "ObjectVersion", "MultipleInstances": object[name] = value
            case "Object":
                guard let id = UInt16(object["ObjectID"] ?? "") else { return fail(parser, "an <Object> needs a numeric <ObjectID>") }
                guard let n = object["Name"], !n.isEmpty else { return fail(parser, "object \(id) has no <Name>") }
                objects.append(ObjectDefinition(id: id, name: n, version: object["ObjectVersion"].flatMap { $0.isEmpty ? nil : $0 } ?? "1.0",
                                                multipleInstances: object["MultipleInstances"] == "Multiple", resources: resources))
            default: break
            }
        }

        private func fail(_ parser: XMLParser, _ text: String) {
            if problem == nil { problem = (parser.lineNumber, parser.columnNumber, text) }
            parser.abortParsing()
        }
    }
}
