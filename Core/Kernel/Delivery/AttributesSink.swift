import CIoTCPluginABI
import Foundation
import IoTCPluginKit

/// The built-in `attributes` sink: the fields of each message's JSON payload become attributes of the
/// message's device in the registry, beside the ones it has (what devices fetch as their
/// configuration). With a rule and a pipeline sink, an alert can write `alarm: raised` to its device.
final class AttributesSink: SinkTarget, @unchecked Sendable {
    static let name = "attributes"
    static let entry = ComponentCatalog.Entry(
        name: name, kind: .sink, plugin: "kernel",
        summary: "Writes the fields of messages' JSON payloads as attributes of their devices in the registry.",
        description: """
            Built into the hub. The JSON object payload of each message is merged into the attributes of \
            the message's device (its tenant and id) in the device registry: the fields it names are set, \
            the others kept. Devices fetch them as their configuration (HTTP `GET /v1/devices/{id}/attributes`, \
            CoAP `GET /a/{id}`), and the operator API shows them. A message for a device the registry does \
            not have, or whose payload is not a JSON object, goes to the dead-letter store; a store error is \
            retried.
            """,
        fields: [])

    private weak var hub: Hub?
    /// Set once the runtime exists; settles the kernel's tokens.
    weak var runtime: SinkRuntime?

    init(hub: Hub) { self.hub = hub }

    /// The merge of the latest batch: each batch waits for the one before, so that a device's
    /// messages are merged in the order they came (at once, a later message's merge could read the
    /// attributes before an earlier one's write and drop its fields).
    private var last: Task<Void, Never>?
    private let lock = NSLock()

    func write(_ m: Message, token: UInt64) -> Int32 { write([m], tokens: [token]).refusal }

    func write(_ messages: [Message], tokens: [UInt64]) -> (taken: Int, refusal: Int32) {
        guard let hub else { return (0, IOTC_ERR_RETRY) }
        var merges: [(tenant: String, device: String, fields: Value.Object, token: UInt64)] = []
        merges.reserveCapacity(messages.count)
        for (m, token) in zip(messages, tokens) {
            guard case .object(let fields)? = try? JSON.decode(m.payload) else {
                runtime?.ack(token: token, result: IOTC_ERR_INVALID, reason: "the payload is not a JSON object of attributes")
                continue
            }
            merges.append((m.tenant.isEmpty ? "default" : m.tenant, m.device, fields, token))
        }
        guard !merges.isEmpty else { return (messages.count, IOTC_OK) }
        let batch = merges
        lock.withLock {
            let previous = last
            last = Task { [weak self] in
                await previous?.value
                for w in batch {
                    do {
                        let ok = try await hub.mergeAttributes(tenant: w.tenant, device: w.device, w.fields)
                        self?.runtime?.ack(token: w.token, result: ok ? IOTC_OK : IOTC_ERR_INVALID,
                                           reason: ok ? nil : "device '\(w.device)' is not in the registry of tenant '\(w.tenant)'")
                    } catch {
                        self?.runtime?.ack(token: w.token, result: IOTC_ERR_RETRY, reason: "cannot write attributes: \(error)")
                    }
                }
            }
        }
        return (messages.count, IOTC_OK)
    }

    func stop() {}
}
