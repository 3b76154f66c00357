import CIoTCPluginABI
import Foundation
import IoTCPluginKit

/// What a sink runtime writes to: a plugin's sink instance, or a sink built into the kernel.
protocol SinkTarget: AnyObject, Sendable {
    /// Takes one message; the target settles `token` later through its runtime. Returns IOTC_OK,
    /// IOTC_ERR_BUSY (offer it again soon) or another code (a failed attempt).
    func write(_ m: Message, token: UInt64) -> Int32
    /// Takes several messages; `tokens[i]` settles `messages[i]`. Returns how many were taken from the
    /// front and, when not all, what the first one left was refused with.
    func write(_ messages: [Message], tokens: [UInt64]) -> (taken: Int, refusal: Int32)
    func stop()
}

extension SinkTarget {
    func write(_ messages: [Message], tokens: [UInt64]) -> (taken: Int, refusal: Int32) {
        for i in messages.indices {
            let r = write(messages[i], token: tokens[i])
            if r != IOTC_OK { return (i, r) }
        }
        return (messages.count, IOTC_OK)
    }
}

extension ComponentInstance: SinkTarget {}

/// The built-in `downlink` sink: pipelines send messages down to devices through a source (an MQTT
/// server publishes them to subscribed clients, the HTTP source queues them for long-polls). A message
/// is settled when the source has delivered it, so retries, backoff and dead letters apply as to any sink.
final class DownlinkSink: SinkTarget, @unchecked Sendable {
    static let name = "downlink"
    static let entry = ComponentCatalog.Entry(
        name: name, kind: .sink, plugin: "kernel",
        summary: "Sends messages down to devices through a source (MQTT subscribers, HTTP long-polls).",
        description: """
            Built into the hub. Each message goes to the device it names through the source `source`, \
            as the API's `POST /v1/devices/{id}/commands` does: the `mqtt` source publishes it on the \
            message's topic to every subscribed session (set `msg.topic` in a step, for example \
            `devices/{device}/commands/alarm`), the `http` source queues it for the device's long-poll or \
            stream. It is settled when the source has it; a source that cannot deliver (no subscriber, \
            a full queue) fails the attempt, which is retried and then dead-lettered like any sink's.
            """,
        fields: [
            ConfigField("source", .string, "The source that holds the devices.", example: "devices", required: true),
            ConfigField("timeout", .duration, "How long a source may take to settle a message.", default: "30", example: "30s"),
        ])

    private let source: String
    private let timeout: TimeInterval
    private weak var hub: Hub?
    /// Set once the runtime exists; settles the kernel's tokens.
    weak var runtime: SinkRuntime?

    init(config: Value.Object, hub: Hub) {
        if case .string(let s)? = config["source"] { source = s } else { source = "" }
        timeout = config["timeout"]?.number ?? 30
        self.hub = hub
    }

    func write(_ m: Message, token: UInt64) -> Int32 {
        guard let hub else { return IOTC_ERR_RETRY }
        hub.sendDownlink(m, source: source, timeout: timeout) { [weak self] code, reason in
            self?.runtime?.ack(token: token, result: code == IOTC_OK ? IOTC_OK : IOTC_ERR_RETRY,
                               reason: code == IOTC_OK ? nil : (reason ?? "the source refused the message (code \(code))"))
        }
        return IOTC_OK
    }

    func stop() {}
}
