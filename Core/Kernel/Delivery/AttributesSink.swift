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

    func write(_ m: Message, token: UInt64) -> Int32 {
        guard let hub else { return IOTC_ERR_RETRY }
        guard case .object(let fields)? = try? JSON.decode(m.payload) else {
            runtime?.ack(token: token, result: IOTC_ERR_INVALID, reason: "the payload is not a JSON object of attributes")
            return IOTC_OK
        }
        let tenant = m.tenant.isEmpty ? "default" : m.tenant
        Task { [weak self] in
            do {
                let ok = try await hub.mergeAttributes(tenant: tenant, device: m.device, fields)
                self?.runtime?.ack(token: token, result: ok ? IOTC_OK : IOTC_ERR_INVALID,
                                   reason: ok ? nil : "device '\(m.device)' is not in the registry of tenant '\(tenant)'")
            } catch {
                self?.runtime?.ack(token: token, result: IOTC_ERR_RETRY, reason: "cannot write attributes: \(error)")
            }
        }
        return IOTC_OK
    }

    func stop() {}
}
