import Foundation

/// Reads object definitions in OMA's LwM2M XML format (the LWM2M-v1_1.xsd schema of the OMNA registry):
/// `<LWM2M><Object><Name/><ObjectID/><ObjectVersion/><MultipleInstances/><Resources><Item ID="..">`.
public enum ObjectXML {
    public struct Error: Swift.Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// The definitions in one XML document; `file` names it in errors (`file:line:column: what`).
    public static func parse(_ data: Data, file: String) throws(Error) -> [ObjectDefinition] {
        var reader = Reader()
        do {
            try XMLReader.read(Array(data)) { event, line, column throws(XMLReader.Failure) in
                try reader.take(event, line, column)
            }
        } catch let failure where !failure.malformed {
            throw Error(description: "\(file):\(failure.line):\(failure.column): \(failure.reason)")
        } catch {
            throw Error(description: "\(file):\(error.line):\(error.column): not well-formed XML (\(error.reason))")
        }
        guard !reader.objects.isEmpty else { throw Error(description: "\(file):1:1: no <Object> element") }
        return reader.objects
    }

    /// Builds definitions from the reader's events: an element's text is its value. A problem with an
    /// object or a resource is located at its start tag.
    private struct Reader {
        var objects: [ObjectDefinition] = []
        private var text = ""
        private var object: [String: String] = [:]
        private var item: [String: String]?
        private var resources: [ObjectDefinition.Resource] = []
        private var objectAt = (line: 1, column: 1)
        private var itemAt = (line: 1, column: 1)

        mutating func take(_ event: XMLReader.Event, _ line: Int, _ column: Int) throws(XMLReader.Failure) {
            func fail(_ reason: String, at: (line: Int, column: Int)) -> XMLReader.Failure {
                XMLReader.Failure(line: at.line, column: at.column, reason: reason, malformed: false)
            }
            switch event {
            case .text(let s):
                text += s
            case .start(let name, let attributes):
                text = ""
                switch name {
                case "Object":
                    object = [:]
                    resources = []
                    objectAt = (line, column)
                case "Item":
                    item = ["ID": attributes["ID"] ?? ""]
                    itemAt = (line, column)
                default: break
                }
            case .end(let name):
                let value = text.trimmingCharacters(in: .whitespacesAndNewlines)
                text = ""
                if name == "Item" {
                    guard let i = item else { return }
                    item = nil
                    guard let id = UInt16(i["ID"] ?? "") else { throw fail("a resource <Item> needs a numeric ID attribute", at: itemAt) }
                    guard let type = ObjectDefinition.ResourceType(rawValue: i["Type"] ?? "") else {
                        throw fail("resource \(id): unknown Type '\((i["Type"] ?? "").prefix(32))'", at: itemAt)
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
                    guard let id = UInt16(object["ObjectID"] ?? "") else { throw fail("an <Object> needs a numeric <ObjectID>", at: objectAt) }
                    guard let n = object["Name"], !n.isEmpty else { throw fail("object \(id) has no <Name>", at: objectAt) }
                    objects.append(ObjectDefinition(id: id, name: n, version: object["ObjectVersion"].flatMap { $0.isEmpty ? nil : $0 } ?? "1.0",
                                                    multipleInstances: object["MultipleInstances"] == "Multiple", resources: resources))
                default: break
                }
            }
        }
    }
}
