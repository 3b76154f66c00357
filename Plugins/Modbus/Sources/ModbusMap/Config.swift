import IoTCPluginKit

/// The `modbus` source's configuration, as the kernel hands it over (defaults applied, durations in
/// seconds).
public struct ModbusConfig: Decodable, Sendable {
    public var devices: [DeviceConfig]

    public struct DeviceConfig: Decodable, Sendable {
        public var device: String
        public var tenant: String?
        public var tcp: String?
        public var serial: SerialConfig?
        public var unit: Int?
        public var timeout: Double?
        public var interval: Double?
        public var byte_order: String?
        public var send: String?
        public var max_gap: Int?
        public var max_backoff: Double?
        public var registers: [FieldConfig]?
        public var groups: [GroupConfig]?
    }

    public struct SerialConfig: Decodable, Sendable, Equatable {
        public var port: String
        public var baud: Int?
        public var parity: String?
        public var data_bits: Int?
        public var stop_bits: Int?
    }

    public struct GroupConfig: Decodable, Sendable {
        public var name: String
        public var interval: Double?
        public var registers: [FieldConfig]
    }

    public struct FieldConfig: Decodable, Sendable {
        public var name: String
        public var table: String?
        public var address: Int
        public var type: String?
        public var order: String?
        public var length: Int?
        public var bit: Int?
        public var bits: Int?
        public var scale: Double?
        public var offset: Double?
        public var unit: String?
        public var deadband: Double?
        public var writable: Bool?
    }

    /// The config spec, for the kernel's validation, `iotc docs` and the JSON Schema.
    public static let fields: [ConfigField] = {
        let field: [ConfigField] = [
            ConfigField("name", .string, "The value's name in telemetry and in write commands.", example: "voltage", required: true),
            ConfigField("table", .string, "The data table.", default: #""holding""#, options: Table.allCases.map(\.rawValue)),
            ConfigField("address", .int, "Protocol address of the first register or bit, 0-based as on the wire (holding register 40001 is address 0).", example: "0", required: true),
            ConfigField("type", .string, "Value type: bool for coils and discrete inputs (the default there), uint16 for registers (the default there).", options: DataType.allCases.map(\.rawValue)),
            ConfigField("order", .string, "Byte order of this value; defaults to the device's byte_order.", options: ByteOrder.allCases.map(\.rawValue)),
            ConfigField("length", .int, "Registers a string spans (two bytes each).", example: "8"),
            ConfigField("bit", .int, "A bit field within one register: its lowest bit, 0 being the least significant.", example: "3"),
            ConfigField("bits", .int, "Width of the bit field; 1 reads as a boolean, more as an unsigned number.", default: "1"),
            ConfigField("scale", .float, "Multiplier applied to the raw value (value = raw × scale + offset; writes invert it).", default: "1", example: "0.1"),
            ConfigField("offset", .float, "Added after scaling.", default: "0"),
            ConfigField("unit", .string, "Unit of the value, carried as the property modbus.unit.NAME.", example: "V"),
            ConfigField("deadband", .float, "With send: changes, the smallest change of a number that is sent.", default: "0", example: "0.5"),
            ConfigField("writable", .bool, "Whether write commands may set it (coils and holding registers only; they default to writable)."),
        ]
        return [
            ConfigField("devices", .list(.object([
                ConfigField("device", .string, "Device id in the hub (topics devices/{device}/...).", example: "meter-1", required: true),
                ConfigField("tenant", .string, "Tenant the device belongs to.", default: #""default""#),
                ConfigField("tcp", .string, "Modbus TCP server (or gateway) as host:port; devices naming the same one share its connection.", example: "192.168.1.20:502"),
                ConfigField("serial", .object([
                    ConfigField("port", .string, "Serial device.", example: "/dev/ttyUSB0", required: true),
                    ConfigField("baud", .int, "Baud rate.", default: "9600"),
                    ConfigField("parity", .string, "Parity.", default: #""none""#, options: ["none", "even", "odd"]),
                    ConfigField("data_bits", .int, "Data bits (5 to 8).", default: "8"),
                    ConfigField("stop_bits", .int, "Stop bits (1 or 2).", default: "1"),
                ]), "Modbus RTU on a serial line; devices naming the same port share the bus."),
                ConfigField("unit", .int, "Unit id (slave address): 1 to 247 on a serial line; 0 to 255 over TCP, where gateways route by it.", default: "1"),
                ConfigField("timeout", .duration, "How long to wait for each response.", default: "1", example: "500ms"),
                ConfigField("interval", .duration, "Poll interval of the device's registers (and of groups that set none).", default: "10", example: "1s"),
                ConfigField("byte_order", .string, "Default byte order of multi-byte values.", default: #""ABCD""#, options: ByteOrder.allCases.map(\.rawValue)),
                ConfigField("send", .string, "all: every poll sends every value; changes: only values that changed (beyond their deadband) since last sent, and nothing when none did.", default: #""all""#, options: ["all", "changes"]),
                ConfigField("max_gap", .int, "Unmapped registers (or bits) a read may span to merge two requests into one; 0 reads only mapped addresses, which strict devices need.", default: "0", advanced: true),
                ConfigField("max_backoff", .duration, "Longest wait between reconnection attempts (it doubles from 1 s).", default: "30", advanced: true),
                ConfigField("registers", .list(.object(field)), "The values polled every interval.", default: "[]"),
                ConfigField("groups", .list(.object([
                    ConfigField("name", .string, "Group name, carried as the property modbus.group.", example: "energy", required: true),
                    ConfigField("interval", .duration, "Poll interval of this group; defaults to the device's.", example: "1m"),
                    ConfigField("registers", .list(.object(field)), "The values of this group.", required: true),
                ])), "Further sets of values, each polled at its own interval.", default: "[]"),
            ])), "The devices this source polls.", required: true),
        ]
    }()
}
