import Foundation
import IoTCPluginKit
import ModbusMap

@_cdecl("iotc_plugin_entry") public func iotcPluginEntry(_ v: UnsafePointer<UInt32>?, _ n: Int) -> UnsafeRawPointer? {
    Plugin.entry(name: "modbus", version: "0.1.0", description: "A Modbus TCP and RTU master on libmodbus: polls PLCs and meters into telemetry, writes commands back.", components: [ModbusSource.self], offered: v, count: n)
}

/// A Modbus master: polls devices by a register map into canonical telemetry, and writes to them on
/// command.
final class ModbusSource: Source, @unchecked Sendable {
    typealias Config = ModbusConfig

    static let name = "modbus"
    static let summary = "Modbus TCP and RTU master: register maps polled into named, scaled telemetry; writes as commands."
    static let description = """
        Each device is a Modbus server (slave) reached over TCP (`tcp: host:port`) or on a serial line \
        (`serial`, Modbus RTU), with its unit id and a register map. Devices naming the same TCP address \
        (units behind one gateway) or the same serial port (an RTU bus) share one connection; every \
        connection is polled on a thread of its own, so a slow or dead device delays only those that \
        share its connection.

        Each poll of a group of values becomes one telemetry message on `devices/{device}/telemetry`: a \
        JSON object of named values, stamped with the poll's time, with the properties `modbus.group`, \
        `modbus.unit_id` and `modbus.units` (a JSON object of the values' units). Addresses next to each \
        other are read in one request, up to the protocol's limits (125 registers, 2000 bits); \
        `iotc check --verbose` lists the reads. With `send: changes` only values that changed beyond \
        their deadband are sent.

        Exceptions, time-outs, CRC errors, malformed answers and lost connections are counted \
        (`iotc_modbus_errors_total`) and reported as `event` messages on `devices/{device}/events/status` \
        when a device's state changes: `{"status": "error", "error": "exception", "exception": 2, \
        "detail": "...", "group": "..."}`, and `{"status": "ok", "failed_polls": 3}` once it answers again. \
        A device that answers is online in the registry; one that stops answering goes offline. Lost \
        connections are retried with a back-off doubling from 1 s to `max_backoff`.

        Commands: `write` with `{"values": {"setpoint": 21.5, "pump": true}}` encodes each value by the \
        map (scale, offset, type, byte order; bit fields read, change and write their register) and writes \
        it (function 5 for a coil, 6 for one register, 16 for several); with `{"table": "holding", \
        "address": 100, "registers": [1, 2]}` or `{"table": "coil", "address": 3, "coils": [true]}` it \
        writes raw. `read` with `{"values": ["voltage"]}` (or `{}` for all) reads now. Each result is \
        `{"ok": true, "written": [...]}` / `{"ok": true, "values": {...}}`, or `{"ok": false, "error": \
        "...", "exception": 2}`.
        """
    static let fields = ModbusConfig.fields

    static func check(_ config: ModbusConfig) -> [ConfigFinding] { ModbusPlan.build(config).findings }

    let host: PluginHost
    private let maps: [DeviceMap]
    private var pollers: [Poller] = []
    /// Device (tenant/id) to its poller and its index there; fixed at start.
    private var route: [String: (Poller, Int)] = [:]

    init(config: ModbusConfig, host: PluginHost) throws {
        self.host = host
        let (devices, findings) = ModbusPlan.build(config)
        if let e = findings.first(where: { $0.severity == .error }) { throw PluginError(e.description) }
        maps = devices
    }

    func start() throws {
        var links: [Link] = []
        var byLink: [Link: [DeviceMap]] = [:]
        for m in maps {
            if byLink[m.link] == nil { links.append(m.link) }
            byLink[m.link, default: []].append(m)
        }
        for link in links {
            let devices = byLink[link]!
            let p = Poller(link: link, serial: devices[0].serial, devices: devices, host: host)
            for (i, d) in devices.enumerated() { route["\(d.tenant)/\(d.device)"] = (p, i) }
            pollers.append(p)
        }
        for p in pollers { p.start() }
    }

    func stop() {
        for p in pollers { p.stop() }
        pollers = []
    }

    func downlink(_ message: Message, ack: Ack) -> Bool {
        let tenant = message.tenant.isEmpty ? "default" : message.tenant
        guard let (poller, i) = route["\(tenant)/\(message.device)"] else {
            ack.reject("\(message.device) is not a device this modbus source polls")
            return true
        }
        poller.command(device: i, message, ack: ack)
        return true
    }
}
