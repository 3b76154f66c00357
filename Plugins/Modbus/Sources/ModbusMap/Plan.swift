import IoTCPluginKit

/// One read request of a poll: a run of addresses in one table, and the fields it carries.
public struct ReadRequest: Sendable, Equatable {
    public var table: Table
    public var address: Int
    public var count: Int
    /// Indexes into the group's fields.
    public var fields: [Int]

    public init(table: Table, address: Int, count: Int, fields: [Int]) {
        self.table = table
        self.address = address
        self.count = count
        self.fields = fields
    }

    public var description: String { "\(table.label) \(address)–\(address + count - 1)" }
}

/// Values polled together at one interval.
public struct PollGroup: Sendable {
    public var name: String
    public var interval: Double
    public var fields: [Field]
    public var requests: [ReadRequest]
}

/// Where a device is reached. Devices with the same link share one connection (a TCP gateway, an RTU
/// bus) and are polled one after another on its thread.
public enum Link: Hashable, Sendable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case serial(port: String)

    public var description: String {
        switch self {
        case .tcp(let h, let p): "tcp \(h):\(p)"
        case .serial(let p): "serial \(p)"
        }
    }
}

public struct SerialSettings: Sendable, Equatable {
    public var baud: Int
    /// "N", "E" or "O", as libmodbus takes it.
    public var parity: Character
    public var dataBits: Int
    public var stopBits: Int

    public init(baud: Int, parity: Character, dataBits: Int, stopBits: Int) {
        self.baud = baud
        self.parity = parity
        self.dataBits = dataBits
        self.stopBits = stopBits
    }
}

/// A device as the source polls it: checked, with its reads planned.
public struct DeviceMap: Sendable {
    public var tenant: String
    public var device: String
    public var link: Link
    public var serial: SerialSettings?
    public var unit: Int
    public var timeout: Double
    public var sendChanges: Bool
    public var maxBackoff: Double
    public var groups: [PollGroup]

    /// A field by name, in any group.
    public func field(named name: String) -> Field? {
        for g in groups { if let f = g.fields.first(where: { $0.name == name }) { return f } }
        return nil
    }
}

/// Turns a configuration into device maps, finding every problem with the path of the field concerned,
/// and merges contiguous addresses into as few reads as the protocol allows.
public enum ModbusPlan {
    public static func build(_ config: ModbusConfig) -> (devices: [DeviceMap], findings: [ConfigFinding]) {
        var findings: [ConfigFinding] = []
        var devices: [DeviceMap] = []
        var seen: [String: Int] = [:]
        var serialSettings: [String: (SerialSettings, Int)] = [:]
        var units: [Link: [Int: Int]] = [:]
        if config.devices.isEmpty { findings.append(.init(at: "devices", "no devices to poll")) }
        for (i, d) in config.devices.enumerated() {
            let at = "devices.\(i)"
            func error(_ path: String, _ text: String, hint: String? = nil) {
                findings.append(ConfigFinding(at: path.isEmpty ? at : "\(at).\(path)", text, hint: hint))
            }
            let tenant = d.tenant ?? "default"
            if !CommandTopics.isDeviceID(d.device) { error("device", "'\(d.device)' cannot be a device id", hint: "1 to 128 bytes without '/', '+', '#' or control characters") }
            if !CommandTopics.isDeviceID(tenant) { error("tenant", "'\(tenant)' cannot be a tenant id") }
            if let first = seen["\(tenant)/\(d.device)"] {
                error("device", "device '\(d.device)' is already polled by devices item \(first + 1)")
            } else {
                seen["\(tenant)/\(d.device)"] = i
            }
            // Where it is reached.
            var link: Link?
            var serial: SerialSettings?
            switch (d.tcp, d.serial) {
            case (let t?, nil):
                if let (host, port) = hostPort(t) { link = .tcp(host: host, port: port) } else {
                    error("tcp", "'\(t)' is not host:port", hint: "for example 192.168.1.20:502")
                }
            case (nil, let s?):
                link = .serial(port: s.port)
                let parity: Character = switch s.parity ?? "none" { case "even": "E"; case "odd": "O"; default: "N" }
                let settings = SerialSettings(baud: s.baud ?? 9600, parity: parity, dataBits: s.data_bits ?? 8, stopBits: s.stop_bits ?? 1)
                if s.port.isEmpty { error("serial.port", "the serial port is empty") }
                if settings.baud <= 0 { error("serial.baud", "baud \(settings.baud) is impossible") }
                if !(5...8).contains(settings.dataBits) { error("serial.data_bits", "data_bits must be 5 to 8") }
                if !(1...2).contains(settings.stopBits) { error("serial.stop_bits", "stop_bits must be 1 or 2") }
                if let (other, j) = serialSettings[s.port], other != settings {
                    error("serial", "\(s.port) is set up differently by devices item \(j + 1)", hint: "devices on one bus share its baud, parity, data and stop bits")
                } else if serialSettings[s.port] == nil {
                    serialSettings[s.port] = (settings, i)
                }
                serial = settings
            case (nil, nil):
                error("", "device '\(d.device)' needs tcp or serial")
            case (_?, _?):
                error("serial", "device '\(d.device)' has both tcp and serial", hint: "keep one")
            }
            let unit = d.unit ?? 1
            let unitRange = serial == nil ? 0...255 : 1...247
            if !unitRange.contains(unit) { error("unit", "unit \(unit) is out of range \(unitRange.lowerBound) to \(unitRange.upperBound)") }
            if let link {
                if let j = units[link]?[unit] {
                    error("unit", "unit \(unit) on \(link) is already devices item \(j + 1)", hint: "map all of a unit's values in one device")
                } else {
                    units[link, default: [:]][unit] = i
                }
            }
            let timeout = d.timeout ?? 1
            if timeout <= 0 || timeout > 60 { error("timeout", "timeout must be more than 0 and at most 60 s") }
            let interval = d.interval ?? 10
            if interval < 0.01 { error("interval", "interval must be at least 10ms") }
            let order = ByteOrder(rawValue: d.byte_order ?? "ABCD") ?? .ABCD
            let maxGap = d.max_gap ?? 0
            if maxGap < 0 || maxGap > 124 { error("max_gap", "max_gap must be 0 to 124") }

            // The groups: the device's own registers, then its named groups.
            var groupConfigs: [(name: String, interval: Double, fields: [ModbusConfig.FieldConfig], path: String)] = []
            if let r = d.registers, !r.isEmpty { groupConfigs.append(("default", interval, r, "registers")) }
            var groupNames: Set<String> = groupConfigs.isEmpty ? [] : ["default"]
            for (g, group) in (d.groups ?? []).enumerated() {
                if !groupNames.insert(group.name).inserted { error("groups.\(g).name", "group '\(group.name)' is defined twice") }
                let gi = group.interval ?? interval
                if gi < 0.01 { error("groups.\(g).interval", "interval must be at least 10ms") }
                if group.registers.isEmpty { error("groups.\(g).registers", "group '\(group.name)' has no registers") }
                groupConfigs.append((group.name, gi, group.registers, "groups.\(g).registers"))
            }
            if groupConfigs.isEmpty { error("registers", "device '\(d.device)' has no registers to poll", hint: "add registers or groups") }

            var groups: [PollGroup] = []
            var all: [(field: Field, path: String)] = []
            var names: [String: String] = [:]
            for gc in groupConfigs {
                var fields: [Field] = []
                for (j, fc) in gc.fields.enumerated() {
                    let path = "\(gc.path).\(j)"
                    guard let field = field(fc, order: order, at: path, error) else { continue }
                    if let other = names[field.name] { error("\(path).name", "'\(field.name)' is already the name of \(other)") } else { names[field.name] = path }
                    fields.append(field)
                    all.append((field, path))
                }
                groups.append(PollGroup(name: gc.name, interval: max(gc.interval, 0.01), fields: fields, requests: plan(fields, maxGap: max(0, maxGap))))
            }
            overlaps(all, error)
            if let link {
                devices.append(DeviceMap(tenant: tenant, device: d.device, link: link, serial: serial, unit: unit, timeout: timeout,
                                         sendChanges: d.send == "changes", maxBackoff: max(1, d.max_backoff ?? 30), groups: groups))
            }
        }
        if !findings.contains(where: { $0.severity == .error }) {
            for (i, d) in devices.enumerated() {
                for g in d.groups {
                    let reads = g.requests.map { r in "\(r.description) (\(r.fields.map { g.fields[$0].name }.joined(separator: ", ")))" }
                    findings.append(ConfigFinding(.note, at: "devices.\(i)",
                        "device '\(d.device)' group '\(g.name)' every \(seconds(g.interval)): \(g.requests.count) read\(g.requests.count == 1 ? "" : "s"): \(reads.joined(separator: "; "))"))
                }
            }
        }
        return (devices, findings)
    }

    /// One field, checked; nil when it cannot be used.
    private static func field(_ c: ModbusConfig.FieldConfig, order: ByteOrder, at path: String, _ error: (String, String, String?) -> Void) -> Field? {
        var ok = true
        func fail(_ key: String, _ text: String, hint: String? = nil) {
            error("\(path).\(key)", text, hint)
            ok = false
        }
        if c.name.isEmpty { fail("name", "a value needs a name") }
        let table = Table(rawValue: c.table ?? "holding") ?? .holding
        let type = c.type.flatMap(DataType.init(rawValue:))
        let bits = c.bits ?? 1
        if !(0...65535).contains(c.address) { fail("address", "address \(c.address) is outside 0 to 65535") }
        if table.holdsBits {
            if let type, type != .bool { fail("type", "\(table.label) hold bits: the type can only be bool") }
            if c.bit != nil { fail("bit", "bit fields are for registers, not \(table.label)") }
        }
        if let bit = c.bit {
            if !(0...15).contains(bit) { fail("bit", "bit \(bit) is outside 0 to 15") }
            if bits < 1 || bit + bits > 16 { fail("bits", "a \(bits)-bit field from bit \(bit) does not fit in a 16-bit register") }
            if let type, type != .bool, type != .uint16 { fail("type", "a bit field reads as bool (1 bit) or an unsigned number; leave type out") }
        } else if c.bits != nil, bits != 1 {
            fail("bits", "bits needs bit")
        }
        if type == .string {
            if !(1...125).contains(c.length ?? 0) { fail("length", "a string spans 1 to 125 registers; set length") }
        } else if c.length != nil {
            fail("length", "length is for strings")
        }
        let scale = c.scale ?? 1, offset = c.offset ?? 0
        if scale == 0 || !scale.isFinite { fail("scale", "scale cannot be 0") }
        if (scale != 1 || offset != 0), let type, !type.isNumber, !(c.bit != nil && bits > 1) { fail("scale", "\(type.rawValue) values cannot be scaled") }
        if (c.deadband ?? 0) < 0 { fail("deadband", "deadband cannot be negative") }
        if c.writable == true, !table.writable { fail("writable", "\(table.label) are read-only in Modbus") }
        let f = Field(name: c.name, table: table, address: c.address, type: type, order: c.order.flatMap(ByteOrder.init(rawValue:)) ?? order,
                      length: c.length ?? 0, bit: c.bit, bits: bits, scale: scale, offset: offset, unit: c.unit, deadband: c.deadband ?? 0,
                      writable: c.writable)
        if ok, f.end > 65535 { fail("address", "'\(f.name)' spans \(f.address) to \(f.end), past the last address 65535") }
        return ok ? f : nil
    }

    /// Two fields may share addresses only as disjoint bit fields of one register.
    private static func overlaps(_ all: [(field: Field, path: String)], _ error: (String, String, String?) -> Void) {
        for table in Table.allCases {
            let sorted = all.filter { $0.field.table == table }.sorted { ($0.field.address, $0.field.end) < ($1.field.address, $1.field.end) }
            var open: [(field: Field, path: String)] = []
            for item in sorted {
                open.removeAll { $0.field.end < item.field.address }
                for o in open {
                    let a = o.field, b = item.field
                    if let ab = a.bit, let bb = b.bit, a.address == b.address, ab + a.bits <= bb || bb + b.bits <= ab { continue }
                    error("\(item.path).address", "'\(b.name)' (\(table.label) \(b.address)–\(b.end)) overlaps '\(a.name)' (\(a.address)–\(a.end))",
                          "each register or bit belongs to one value, except disjoint bit fields of one register")
                }
                open.append(item)
            }
        }
    }

    /// Merges fields into reads: per table in address order, a read grows while the next field starts
    /// within `maxGap` of its end and the whole stays within the protocol's limit.
    public static func plan(_ fields: [Field], maxGap: Int) -> [ReadRequest] {
        var out: [ReadRequest] = []
        for table in Table.allCases {
            let order = fields.indices.filter { fields[$0].table == table }.sorted { (fields[$0].address, $0) < (fields[$1].address, $1) }
            var current: ReadRequest?
            for i in order {
                let f = fields[i]
                if var r = current {
                    let end = r.address + r.count - 1
                    let newEnd = max(end, f.end)
                    if f.address <= end + 1 + maxGap, newEnd - r.address + 1 <= table.maxRead {
                        r.count = newEnd - r.address + 1
                        r.fields.append(i)
                        current = r
                        continue
                    }
                    out.append(r)
                }
                current = ReadRequest(table: table, address: f.address, count: f.count, fields: [i])
            }
            if let r = current { out.append(r) }
        }
        return out
    }

    static func hostPort(_ s: String) -> (String, Int)? {
        var host: Substring, port: Substring
        if s.hasPrefix("["), let close = s.firstIndex(of: "]") {
            host = s[s.index(after: s.startIndex)..<close]
            let rest = s[s.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            port = rest.dropFirst()
        } else {
            guard let colon = s.lastIndex(of: ":") else { return nil }
            host = s[..<colon]
            port = s[s.index(after: colon)...]
        }
        guard !host.isEmpty, let p = Int(port), (1...65535).contains(p) else { return nil }
        return (String(host), p)
    }

    static func seconds(_ s: Double) -> String {
        if s >= 60, s.truncatingRemainder(dividingBy: 60) == 0 { return "\(Int(s / 60))m" }
        if s >= 1, s == s.rounded() { return "\(Int(s))s" }
        return "\(Int((s * 1000).rounded()))ms"
    }
}
