/// LwM2M object definitions: what each resource of an object is called, its type and whether it has
/// instances. They turn TLV bytes into typed values and paths into readable telemetry names.
public struct ObjectDefinition: Sendable, Equatable {
    public enum ResourceType: String, Sendable {
        case string = "String", integer = "Integer", unsignedInteger = "Unsigned Integer", float = "Float"
        case boolean = "Boolean", opaque = "Opaque", time = "Time", objectLink = "Objlnk", corelink = "Corelnk", none = ""
    }

    public struct Resource: Sendable, Equatable {
        public var id: UInt16
        public var name: String
        public var type: ResourceType
        public var multiple: Bool
        /// "R", "W", "RW", "E" or "" (as in the XML's Operations).
        public var operations: String
        public var units: String

        public init(id: UInt16, name: String, type: ResourceType, multiple: Bool = false, operations: String = "R", units: String = "") {
            self.id = id
            self.name = name
            self.type = type
            self.multiple = multiple
            self.operations = operations
            self.units = units
        }
    }

    public var id: UInt16
    public var name: String
    public var version: String
    public var multipleInstances: Bool
    public var resources: [UInt16: Resource]

    public init(id: UInt16, name: String, version: String = "1.0", multipleInstances: Bool, resources: [Resource]) {
        self.id = id
        self.name = name
        self.version = version
        self.multipleInstances = multipleInstances
        self.resources = Dictionary(resources.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
    }

    /// A telemetry field name for a resource: the object's name for an IPSO sensor's value (5700), as
    /// "temperature" for /3303/0/5700; otherwise the resource's name, in snake case.
    public func fieldName(resource: UInt16) -> String {
        if resource == 5700 || (id == 3342 && resource == 5500) { return Self.snakeCase(name) }
        return Self.snakeCase(resources[resource]?.name ?? "resource_\(resource)")
    }

    static func snakeCase(_ s: String) -> String {
        var out = ""
        for c in s.lowercased() {
            if c.isLetter || c.isNumber { out.append(c) } else if !out.hasSuffix("_"), !out.isEmpty { out.append("_") }
        }
        while out.hasSuffix("_") { out.removeLast() }
        return out
    }
}

/// The objects the server knows: the built-in core and IPSO objects, and any loaded from OMA XML.
public struct ObjectRegistry: Sendable {
    public private(set) var objects: [UInt16: ObjectDefinition]

    public init(_ objects: [ObjectDefinition] = ObjectRegistry.builtIn) {
        self.objects = Dictionary(objects.map { ($0.id, $0) }, uniquingKeysWith: { _, b in b })
    }

    public subscript(id: UInt16) -> ObjectDefinition? { objects[id] }

    /// Adds or replaces definitions (loaded ones win over built-in ones).
    public mutating func add(_ definitions: [ObjectDefinition]) {
        for d in definitions { objects[d.id] = d }
    }

    public static let builtIn: [ObjectDefinition] = {
        typealias R = ObjectDefinition.Resource
        func sensor(_ id: UInt16, _ name: String, units: String) -> ObjectDefinition {
            ObjectDefinition(id: id, name: name, multipleInstances: true, resources: [
                R(id: 5700, name: "Sensor Value", type: .float, units: units),
                R(id: 5701, name: "Sensor Units", type: .string),
                R(id: 5601, name: "Min Measured Value", type: .float),
                R(id: 5602, name: "Max Measured Value", type: .float),
                R(id: 5603, name: "Min Range Value", type: .float),
                R(id: 5604, name: "Max Range Value", type: .float),
                R(id: 5605, name: "Reset Min and Max Measured Values", type: .none, operations: "E"),
                R(id: 5750, name: "Application Type", type: .string, operations: "RW"),
                R(id: 5518, name: "Timestamp", type: .time),
                R(id: 6050, name: "Fractional Timestamp", type: .float),
            ])
        }
        return [
            ObjectDefinition(id: 0, name: "LwM2M Security", version: "1.1", multipleInstances: true, resources: [
                R(id: 0, name: "LwM2M Server URI", type: .string, operations: ""),
                R(id: 1, name: "Bootstrap-Server", type: .boolean, operations: ""),
                R(id: 2, name: "Security Mode", type: .integer, operations: ""),
                R(id: 3, name: "Public Key or Identity", type: .opaque, operations: ""),
                R(id: 4, name: "Server Public Key", type: .opaque, operations: ""),
                R(id: 5, name: "Secret Key", type: .opaque, operations: ""),
                R(id: 10, name: "Short Server ID", type: .integer, operations: ""),
                R(id: 11, name: "Client Hold Off Time", type: .integer, operations: ""),
                R(id: 12, name: "Bootstrap-Server Account Timeout", type: .integer, operations: ""),
            ]),
            ObjectDefinition(id: 1, name: "LwM2M Server", version: "1.1", multipleInstances: true, resources: [
                R(id: 0, name: "Short Server ID", type: .integer),
                R(id: 1, name: "Lifetime", type: .integer, operations: "RW", units: "s"),
                R(id: 2, name: "Default Minimum Period", type: .integer, operations: "RW", units: "s"),
                R(id: 3, name: "Default Maximum Period", type: .integer, operations: "RW", units: "s"),
                R(id: 4, name: "Disable", type: .none, operations: "E"),
                R(id: 5, name: "Disable Timeout", type: .integer, operations: "RW", units: "s"),
                R(id: 6, name: "Notification Storing When Disabled or Offline", type: .boolean, operations: "RW"),
                R(id: 7, name: "Binding", type: .string, operations: "RW"),
                R(id: 8, name: "Registration Update Trigger", type: .none, operations: "E"),
                R(id: 9, name: "Bootstrap-Request Trigger", type: .none, operations: "E"),
                R(id: 10, name: "APN Link", type: .objectLink, operations: "RW"),
                R(id: 11, name: "TLS-DTLS Alert Code", type: .unsignedInteger),
                R(id: 12, name: "Last Bootstrapped", type: .time),
                R(id: 16, name: "Mute Send", type: .boolean, operations: "RW"),
            ]),
            ObjectDefinition(id: 2, name: "LwM2M Access Control", multipleInstances: true, resources: [
                R(id: 0, name: "Object ID", type: .integer),
                R(id: 1, name: "Object Instance ID", type: .integer),
                R(id: 2, name: "ACL", type: .integer, multiple: true, operations: "RW"),
                R(id: 3, name: "Access Control Owner", type: .integer, operations: "RW"),
            ]),
            ObjectDefinition(id: 3, name: "Device", version: "1.1", multipleInstances: false, resources: [
                R(id: 0, name: "Manufacturer", type: .string),
                R(id: 1, name: "Model Number", type: .string),
                R(id: 2, name: "Serial Number", type: .string),
                R(id: 3, name: "Firmware Version", type: .string),
                R(id: 4, name: "Reboot", type: .none, operations: "E"),
                R(id: 5, name: "Factory Reset", type: .none, operations: "E"),
                R(id: 6, name: "Available Power Sources", type: .integer, multiple: true),
                R(id: 7, name: "Power Source Voltage", type: .integer, multiple: true, units: "mV"),
                R(id: 8, name: "Power Source Current", type: .integer, multiple: true, units: "mA"),
                R(id: 9, name: "Battery Level", type: .integer, units: "%"),
                R(id: 10, name: "Memory Free", type: .integer, units: "KB"),
                R(id: 11, name: "Error Code", type: .integer, multiple: true),
                R(id: 12, name: "Reset Error Code", type: .none, operations: "E"),
                R(id: 13, name: "Current Time", type: .time, operations: "RW"),
                R(id: 14, name: "UTC Offset", type: .string, operations: "RW"),
                R(id: 15, name: "Timezone", type: .string, operations: "RW"),
                R(id: 16, name: "Supported Binding and Modes", type: .string),
                R(id: 17, name: "Device Type", type: .string),
                R(id: 18, name: "Hardware Version", type: .string),
                R(id: 19, name: "Software Version", type: .string),
                R(id: 20, name: "Battery Status", type: .integer),
                R(id: 21, name: "Memory Total", type: .integer, units: "KB"),
                R(id: 22, name: "ExtDevInfo", type: .objectLink, multiple: true),
            ]),
            ObjectDefinition(id: 4, name: "Connectivity Monitoring", version: "1.2", multipleInstances: false, resources: [
                R(id: 0, name: "Network Bearer", type: .integer),
                R(id: 1, name: "Available Network Bearer", type: .integer, multiple: true),
                R(id: 2, name: "Radio Signal Strength", type: .integer, units: "dBm"),
                R(id: 3, name: "Link Quality", type: .integer),
                R(id: 4, name: "IP Addresses", type: .string, multiple: true),
                R(id: 5, name: "Router IP Addresses", type: .string, multiple: true),
                R(id: 6, name: "Link Utilization", type: .integer, units: "%"),
                R(id: 7, name: "APN", type: .string, multiple: true),
                R(id: 8, name: "Cell ID", type: .integer),
                R(id: 9, name: "SMNC", type: .integer),
                R(id: 10, name: "SMCC", type: .integer),
                R(id: 11, name: "SignalSNR", type: .integer, units: "dB"),
                R(id: 12, name: "LAC", type: .integer),
            ]),
            ObjectDefinition(id: 5, name: "Firmware Update", multipleInstances: false, resources: [
                R(id: 0, name: "Package", type: .opaque, operations: "W"),
                R(id: 1, name: "Package URI", type: .string, operations: "RW"),
                R(id: 2, name: "Update", type: .none, operations: "E"),
                R(id: 3, name: "State", type: .integer),
                R(id: 5, name: "Update Result", type: .integer),
                R(id: 6, name: "PkgName", type: .string),
                R(id: 7, name: "PkgVersion", type: .string),
                R(id: 8, name: "Firmware Update Protocol Support", type: .integer, multiple: true),
                R(id: 9, name: "Firmware Update Delivery Method", type: .integer),
            ]),
            ObjectDefinition(id: 6, name: "Location", multipleInstances: false, resources: [
                R(id: 0, name: "Latitude", type: .float, units: "lat"),
                R(id: 1, name: "Longitude", type: .float, units: "lon"),
                R(id: 2, name: "Altitude", type: .float, units: "m"),
                R(id: 3, name: "Radius", type: .float, units: "m"),
                R(id: 4, name: "Velocity", type: .opaque),
                R(id: 5, name: "Timestamp", type: .time),
                R(id: 6, name: "Speed", type: .float, units: "m/s"),
            ]),
            ObjectDefinition(id: 7, name: "Connectivity Statistics", multipleInstances: false, resources: [
                R(id: 0, name: "SMS Tx Counter", type: .integer),
                R(id: 1, name: "SMS Rx Counter", type: .integer),
                R(id: 2, name: "Tx Data", type: .integer, units: "KB"),
                R(id: 3, name: "Rx Data", type: .integer, units: "KB"),
                R(id: 4, name: "Max Message Size", type: .integer, units: "B"),
                R(id: 5, name: "Average Message Size", type: .integer, units: "B"),
                R(id: 6, name: "Start", type: .none, operations: "E"),
                R(id: 7, name: "Stop", type: .none, operations: "E"),
                R(id: 8, name: "Collection Period", type: .integer, operations: "RW", units: "s"),
            ]),
            sensor(3303, "Temperature", units: "Cel"),
            sensor(3304, "Humidity", units: "%RH"),
            ObjectDefinition(id: 3311, name: "Light Control", multipleInstances: true, resources: [
                R(id: 5850, name: "On/Off", type: .boolean, operations: "RW"),
                R(id: 5851, name: "Dimmer", type: .integer, operations: "RW", units: "%"),
                R(id: 5852, name: "On Time", type: .integer, operations: "RW", units: "s"),
                R(id: 5805, name: "Cumulative Active Power", type: .float, units: "Wh"),
                R(id: 5820, name: "Power Factor", type: .float),
                R(id: 5706, name: "Colour", type: .string, operations: "RW"),
                R(id: 5701, name: "Sensor Units", type: .string),
                R(id: 5750, name: "Application Type", type: .string, operations: "RW"),
            ]),
            ObjectDefinition(id: 3342, name: "On/Off switch", multipleInstances: true, resources: [
                R(id: 5500, name: "Digital Input State", type: .boolean),
                R(id: 5501, name: "Digital Input Counter", type: .integer),
                R(id: 5852, name: "On Time", type: .integer, operations: "RW", units: "s"),
                R(id: 5854, name: "Off Time", type: .integer, operations: "RW", units: "s"),
                R(id: 5750, name: "Application Type", type: .string, operations: "RW"),
            ]),
        ]
    }()
}
