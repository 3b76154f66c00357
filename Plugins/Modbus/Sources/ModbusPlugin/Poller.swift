import Foundation
import IoTCPluginKit
import ModbusMap

/// One connection (a TCP server or gateway, or an RTU bus) and the devices behind it, polled on a
/// thread of its own: libmodbus blocks, so a slow or dead device delays only the devices that share
/// its connection, never another connection's.
final class Poller: @unchecked Sendable {
    let link: Link
    let host: PluginHost
    private let wire: Wire
    /// Touched only by the poller's thread once it runs.
    private var devices: [PolledDevice]
    private let condition = NSCondition()
    /// Guarded by `condition`.
    private var commands: [(device: Int, message: Message, ack: Ack)] = []
    private var stopping = false
    private var thread: WorkerThread?
    /// Guarded by `condition`: whether the wire is open, for commands arriving from other threads.
    private var online = false

    private var reconnectAt = 0.0
    private var backoff = 1.0
    private var words: [UInt16] = []
    private var bits: [UInt8] = []

    init(link: Link, serial: SerialSettings?, devices: [DeviceMap], host: PluginHost) {
        self.link = link
        self.host = host
        wire = Wire(link: link, serial: serial)
        self.devices = devices.map { PolledDevice(map: $0, identity: host.claim(tenant: $0.tenant, device: $0.device)) }
    }

    func start() {
        thread = WorkerThread(name: "modbus \(link)") { [self] in run() }
    }

    func stop() {
        condition.lock()
        stopping = true
        let held = commands
        commands = []
        condition.signal()
        condition.unlock()
        for c in held { c.ack.retry("the modbus source is stopping") }
        thread?.join()
        thread = nil
        wire.close()
        for d in devices where d.connected { if let id = d.identity { host.deviceDisconnected(id, reason: "the modbus source stopped") } }
        // The identities go back to the kernel now rather than whenever the poller is freed.
        devices = []
    }

    /// Queues a command for a device behind this connection; it runs between polls.
    func command(device: Int, _ message: Message, ack: Ack) {
        condition.lock()
        guard !stopping else {
            condition.unlock()
            return ack.retry("the modbus source is stopping")
        }
        guard online else {
            condition.unlock()
            return ack.retry("\(link) is not connected")
        }
        commands.append((device, message, ack))
        condition.signal()
        condition.unlock()
    }

    // MARK: - The loop

    private struct Slot {
        var device: Int
        var group: Int
        /// Monotonic seconds.
        var due: Double
    }

    private func run() {
        let start = Monotonic.now()
        var slots: [Slot] = []
        for (d, device) in devices.enumerated() {
            for g in device.map.groups.indices { slots.append(Slot(device: d, group: g, due: start)) }
        }
        while true {
            let next = slots.map(\.due).min() ?? .infinity
            condition.lock()
            while !stopping, commands.isEmpty, Monotonic.now() < next {
                _ = condition.wait(until: Date(timeIntervalSinceNow: min(next - Monotonic.now(), 3600)))
            }
            if stopping {
                condition.unlock()
                return
            }
            let work = commands
            commands = []
            condition.unlock()
            for c in work { execute(c.device, c.message, ack: c.ack) }
            let now = Monotonic.now()
            for i in slots.indices where slots[i].due <= now {
                let slot = slots[i]
                let began = Monotonic.now()
                host.metric(.histogram, "iotc_modbus_poll_lateness_seconds", labels: [KeyValue("device", devices[slot.device].map.device)], began - slot.due)
                poll(slot.device, slot.group)
                // The next cycle stays on the grid; cycles already missed are skipped, not caught up.
                let interval = devices[slot.device].map.groups[slot.group].interval
                var due = slot.due + interval
                let after = Monotonic.now()
                if due <= after {
                    let missed = ((after - due) / interval).rounded(.down) + 1
                    due += missed * interval
                    host.metric(.counter, "iotc_modbus_polls_skipped_total", labels: [KeyValue("device", devices[slot.device].map.device)], missed)
                }
                slots[i].due = due
            }
        }
    }

    /// Opens the connection when it is closed and its back-off has passed; nil when usable.
    private func connect(timeout: Double) -> WireFailure? {
        if wire.isOpen { return nil }
        let now = Monotonic.now()
        if now < reconnectAt { return WireFailure(kind: .connection, detail: "\(link) is not connected; next attempt in \(Int((reconnectAt - now).rounded(.up))) s") }
        do {
            try wire.open(timeout: timeout)
            backoff = 1
            setOnline(true)
            return nil
        } catch {
            reconnectAt = now + backoff
            backoff = min(backoff * 2, devices.map(\.map.maxBackoff).max() ?? 30)
            setOnline(false)
            return error
        }
    }

    private func setOnline(_ value: Bool) {
        condition.lock()
        online = value
        condition.unlock()
    }

    private func poll(_ d: Int, _ g: Int) {
        let map = devices[d].map
        let group = map.groups[g]
        let time = Int64(Date().timeIntervalSince1970 * 1000)
        var values = Value.Object()
        var failure = connect(timeout: map.timeout)
        if failure == nil {
            wire.target(unit: map.unit, timeout: map.timeout)
            for r in group.requests {
                do {
                    try wire.read(r, words: &words, bits: &bits)
                    host.metric(.counter, "iotc_modbus_reads_total", labels: [KeyValue("device", map.device)], 1)
                    for i in r.fields {
                        let f = group.fields[i]
                        let offset = f.address - r.address
                        values[f.name] = r.table.holdsBits ? f.decode(bit: bits[offset]) : f.decode(registers: words[offset..<offset + f.count])
                    }
                } catch {
                    failure = error
                    if error.closesConnection { setOnline(false) }
                    // A device that does not answer one read will not answer the next within this poll.
                    if !error.deviceAnswered { break }
                }
            }
        }
        report(d, group: group.name, failure)
        guard !values.isEmpty else { return }
        let fields = devices[d].changed(values, group: g)
        guard !fields.isEmpty else { return }
        var properties = [KeyValue("modbus.group", group.name), KeyValue("modbus.unit_id", String(map.unit))]
        var units = Value.Object()
        for f in group.fields { if let u = f.unit, fields[f.name] != nil { units[f.name] = .string(u) } }
        if !units.isEmpty { properties.append(KeyValue("modbus.units", String(decoding: JSON.encode(.object(units)), as: UTF8.self))) }
        let status = host.submit(Message(kind: .telemetry, tenant: map.tenant, device: map.device, topic: "devices/\(map.device)/telemetry",
                                         contentType: "application/json", payload: JSON.encode(.object(fields)), deviceTime: time, qos: 0,
                                         properties: properties))
        if status == .busy { host.metric(.counter, "iotc_modbus_telemetry_dropped_total", labels: [KeyValue("reason", "busy")], 1) }
    }

    /// Turns each poll's outcome into presence, metrics and a status event when the device's state
    /// changes: errors are never silent gaps, and a failing device does not flood the pipeline.
    private func report(_ d: Int, group: String, _ failure: WireFailure?) {
        let map = devices[d].map
        if let failure {
            host.metric(.counter, "iotc_modbus_errors_total", labels: [KeyValue("device", map.device), KeyValue("error", failure.kind.rawValue)], 1)
        }
        let answered = failure == nil || failure!.deviceAnswered
        if answered, !devices[d].connected, let id = devices[d].identity {
            host.deviceConnected(id, remoteAddress: link.description)
            devices[d].connected = true
        } else if !answered, devices[d].connected, let id = devices[d].identity {
            host.deviceDisconnected(id, reason: failure?.detail ?? "")
            devices[d].connected = false
        }
        let previous = devices[d].failing
        if let failure {
            devices[d].failedPolls += 1
            if previous?.kind != failure.kind || previous?.exception != failure.exception {
                var o: Value.Object = ["status": "error", "error": .string(failure.kind.rawValue), "detail": .string(failure.detail), "group": .string(group)]
                if let e = failure.exception { o["exception"] = .int(Int64(e)) }
                event(map, o)
                host.log(.warning, "\(map.device): \(failure.detail)")
            }
            devices[d].failing = failure
        } else if previous != nil {
            event(map, ["status": "ok", "failed_polls": .int(Int64(devices[d].failedPolls)), "group": .string(group)])
            host.log(.info, "\(map.device): answering again after \(devices[d].failedPolls) failed polls")
            devices[d].failing = nil
            devices[d].failedPolls = 0
        }
    }

    private func event(_ map: DeviceMap, _ o: Value.Object) {
        host.submit(Message(kind: .event, tenant: map.tenant, device: map.device, topic: "devices/\(map.device)/events/status",
                            contentType: "application/json", payload: JSON.encode(.object(o)), deviceTime: Int64(Date().timeIntervalSince1970 * 1000),
                            qos: 1, properties: [KeyValue("modbus.unit_id", String(map.unit))]))
    }

    // MARK: - Commands

    private func execute(_ d: Int, _ message: Message, ack: Ack) {
        let map = devices[d].map
        // API commands carry their name and id as metadata; a pipeline's downlink names them in the topic.
        let named = CommandTopics.parseCommand(message.topic)
        let id = message.metadata("command_id") ?? named.map { String($0.id) } ?? message.id
        let name = message.metadata("command") ?? named.map { String($0.name) } ?? ""
        if let failure = connect(timeout: map.timeout) {
            return ack.retry(failure.detail)
        }
        // From here the command is delivered; what goes wrong is its result.
        ack.succeed()
        let args: Value
        do { args = message.payload.isEmpty ? .object(Value.Object()) : try JSON.decode(message.payload) } catch {
            return result(map, id, ["ok": false, "error": "the command's payload is not JSON"])
        }
        wire.target(unit: map.unit, timeout: map.timeout)
        let outcome: Value.Object
        switch name {
        case "write": outcome = write(map, args)
        case "read": outcome = read(map, args)
        default: outcome = ["ok": false, "error": .string("unknown command '\(name)'; the modbus source runs write and read")]
        }
        result(map, id, outcome)
    }

    private func result(_ map: DeviceMap, _ id: String, _ o: Value.Object) {
        host.submit(Message(kind: .commandResult, tenant: map.tenant, device: map.device, topic: CommandTopics.result(device: map.device, id: id),
                            contentType: "application/json", payload: JSON.encode(.object(o)), qos: 1,
                            properties: [KeyValue("command_id", id), KeyValue("modbus.unit_id", String(map.unit))]))
    }

    private func failed(_ f: WireFailure, written: [Value]) -> Value.Object {
        if f.closesConnection { setOnline(false) }
        var o: Value.Object = ["ok": false, "error": .string(f.detail), "written": .array(written)]
        if let e = f.exception { o["exception"] = .int(Int64(e)) }
        return o
    }

    /// `{"values": {"setpoint": 21.5}}` by the map, or `{"table": "holding", "address": 100,
    /// "registers": [1, 2]}` / `{"table": "coil", "address": 3, "coils": [true]}` raw.
    private func write(_ map: DeviceMap, _ args: Value) -> Value.Object {
        if case .string(let t)? = args["table"] { return writeRaw(t, args) }
        guard case .object(let values)? = args["values"], !values.isEmpty else {
            return ["ok": false, "error": "write takes {\"values\": {\"name\": value}}, or table, address and registers or coils"]
        }
        // Every value is encoded before anything is written: a bad one writes nothing.
        var plan: [(Field, Field.Encoded)] = []
        for (name, value) in values {
            guard let f = map.field(named: name) else { return ["ok": false, "error": .string("'\(name)' is not in \(map.device)'s register map")] }
            guard f.writable else { return ["ok": false, "error": .string("'\(name)' is not writable")] }
            do { plan.append((f, try f.encode(value))) } catch { return ["ok": false, "error": .string(error.description)] }
        }
        var written: [Value] = []
        for (f, encoded) in plan {
            do {
                switch encoded {
                case .bit(let b): try wire.writeBits(address: f.address, [b])
                case .registers(let w): try wire.writeRegisters(address: f.address, w)
                case .bitsInRegister(let mask, let value):
                    let current = try wire.readHolding(f.address)
                    try wire.writeRegisters(address: f.address, [(current & ~mask) | value])
                }
                written.append(.string(f.name))
            } catch {
                return failed(error, written: written)
            }
        }
        return ["ok": true, "written": .array(written)]
    }

    private func writeRaw(_ table: String, _ args: Value) -> Value.Object {
        guard case .int(let a)? = args["address"], (0...65535).contains(a) else { return ["ok": false, "error": "address must be 0 to 65535"] }
        let address = Int(a)
        do {
            switch table {
            case "coil":
                guard case .array(let items)? = args["coils"], !items.isEmpty, items.count <= 1968, address + items.count <= 65536 else {
                    return ["ok": false, "error": "coils must be a list of 1 to 1968 booleans within the address space"]
                }
                var values: [Bool] = []
                for v in items {
                    guard case .bool(let b) = v else { return ["ok": false, "error": "coils must be booleans"] }
                    values.append(b)
                }
                try wire.writeBits(address: address, values)
            case "holding":
                guard case .array(let items)? = args["registers"], !items.isEmpty, items.count <= 123, address + items.count <= 65536 else {
                    return ["ok": false, "error": "registers must be a list of 1 to 123 values within the address space"]
                }
                var words: [UInt16] = []
                for v in items {
                    guard case .int(let i) = v, (0...65535).contains(i) else { return ["ok": false, "error": "registers must be integers 0 to 65535"] }
                    words.append(UInt16(i))
                }
                try wire.writeRegisters(address: address, words)
            default:
                return ["ok": false, "error": .string("only coil and holding can be written, not '\(table)'")]
            }
        } catch {
            return failed(error, written: [])
        }
        return ["ok": true]
    }

    /// `{"values": ["voltage"]}` reads those values now (all of them without a list).
    private func read(_ map: DeviceMap, _ args: Value) -> Value.Object {
        var fields: [Field] = []
        if case .array(let names)? = args["values"] {
            for n in names {
                guard case .string(let name) = n, let f = map.field(named: name) else { return ["ok": false, "error": .string("\(n) is not in \(map.device)'s register map")] }
                fields.append(f)
            }
        } else {
            fields = map.groups.flatMap(\.fields)
        }
        var values = Value.Object()
        for r in ModbusPlan.plan(fields, maxGap: 0) {
            do { try wire.read(r, words: &words, bits: &bits) } catch { return failed(error, written: []) }
            for i in r.fields {
                let f = fields[i]
                let offset = f.address - r.address
                values[f.name] = r.table.holdsBits ? f.decode(bit: bits[offset]) : f.decode(registers: words[offset..<offset + f.count])
            }
        }
        return ["ok": true, "values": .object(values)]
    }
}

/// A device and what its poller remembers of it.
struct PolledDevice {
    let map: DeviceMap
    let identity: Identity?
    var connected = false
    var failing: WireFailure?
    var failedPolls = 0
    /// With `send: changes`, the values last sent, per group.
    var sent: [Value.Object]

    init(map: DeviceMap, identity: Identity?) {
        self.map = map
        self.identity = identity
        sent = Array(repeating: Value.Object(), count: map.groups.count)
    }

    /// The values to send: all of them, or those that changed beyond their deadband.
    mutating func changed(_ values: Value.Object, group: Int) -> Value.Object {
        guard map.sendChanges else { return values }
        var out = Value.Object()
        let fields = map.groups[group].fields
        for (name, value) in values {
            let last = sent[group][name]
            let deadband = fields.first { $0.name == name }?.deadband ?? 0
            let differs: Bool
            if let last, let a = last.number, let b = value.number, deadband > 0 {
                differs = abs(a - b) >= deadband
            } else {
                differs = last != value
            }
            if differs {
                out[name] = value
                sent[group][name] = value
            }
        }
        return out
    }
}

enum Monotonic {
    static func now() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }
}
