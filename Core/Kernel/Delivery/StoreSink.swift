import CIoTCPluginABI
import Foundation
import IoTCPluginKit
import IoTCStore

/// The built-in `store` sink: the numeric fields of each message's JSON payload become time-series
/// points in the hub's store, read back through `GET /v1/devices/{id}/telemetry`. A batch of messages
/// is one transaction; it is settled when committed, and retried like any sink's writes if it fails.
final class StoreSink: SinkTarget, @unchecked Sendable {
    static let name = "store"
    static let entry = ComponentCatalog.Entry(
        name: name, kind: .sink, plugin: "kernel",
        summary: "Writes the numeric fields of messages as time series to the hub's store.",
        description: """
            Built into the hub. Each number (and each true/false, as 1/0) in a message's JSON payload \
            becomes a point of the message's tenant and device, named by its path (`temperature`, \
            `engine.rpm`), at the device's time if the message has one, else the time the hub received it. \
            `keys` keeps only the paths listed. Points are read back through the operator API \
            (`GET /v1/devices/{id}/telemetry`, with aggregates over buckets, and `.../telemetry/latest`). \
            A point written twice (a redelivery) is kept once.
            """,
        fields: [
            ConfigField("keys", .list(.string), "Only these paths (default: every number in the payload).", example: "[ temperature, engine.rpm ]"),
        ])

    private let telemetry: Telemetry
    private let keys: Set<String>?
    /// Set once the runtime exists; settles the kernel's tokens.
    weak var runtime: SinkRuntime?

    init(config: Value.Object, store: any Store) {
        telemetry = Telemetry(store: store)
        if case .array(let list)? = config["keys"] {
            keys = Set(list.compactMap { if case .string(let s) = $0 { s } else { nil } })
        } else {
            keys = nil
        }
    }

    func write(_ m: Message, token: UInt64) -> Int32 { write([m], tokens: [token]).refusal }

    func write(_ messages: [Message], tokens: [UInt64]) -> (taken: Int, refusal: Int32) {
        var points: [TelemetryPoint] = []
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        for m in messages {
            guard let value = try? JSON.decode(m.payload) else { continue }
            let time = m.deviceTime ?? m.receivedTime ?? now
            let tenant = m.tenant.isEmpty ? "default" : m.tenant
            Self.flatten(value, prefix: "") { key, v in
                if keys?.contains(key) ?? true { points.append(TelemetryPoint(tenant: tenant, device: m.device, key: key, time: time, value: v)) }
            }
        }
        let telemetry = self.telemetry
        // The store is asynchronous; the batch is settled when its transaction commits.
        Task { [weak self] in
            do {
                try await telemetry.write(points)
                self?.runtime?.ack(tokens: tokens, result: IOTC_OK, reason: nil)
            } catch {
                self?.runtime?.ack(tokens: tokens, result: IOTC_ERR_RETRY, reason: "the store did not take the points: \(error)")
            }
        }
        return (messages.count, IOTC_OK)
    }

    /// Calls `emit` for every number and boolean in `v`, with its dotted path.
    static func flatten(_ v: Value, prefix: String, _ emit: (String, Double) -> Void) {
        switch v {
        case .int(let i): if !prefix.isEmpty { emit(prefix, Double(i)) }
        case .double(let d): if !prefix.isEmpty, d.isFinite { emit(prefix, d) }
        case .bool(let b): if !prefix.isEmpty { emit(prefix, b ? 1 : 0) }
        case .object(let o): for (k, child) in o { flatten(child, prefix: prefix.isEmpty ? k : prefix + "." + k, emit) }
        default: break
        }
    }

    func stop() {}
}
