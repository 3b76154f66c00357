import CIoTCPluginABI
import Foundation
import IoTCPluginKit

/// The built-in `pipeline` sink: hands messages to another pipeline, which takes them as if a source
/// had sent them. Rules' alerts become an alerts stream that a pipeline shapes and routes (a chat
/// message, a mail, a command), and pipelines can be chained. A message passed between pipelines more
/// than `maxHops` times is refused, so that a loop in the files cannot spin forever.
final class PipelineSink: SinkTarget, @unchecked Sendable {
    static let name = "pipeline"
    static let maxHops = 8
    static let entry = ComponentCatalog.Entry(
        name: name, kind: .sink, plugin: "kernel",
        summary: "Hands messages to another pipeline (alerts to a notification pipeline, chained pipelines).",
        description: """
            Built into the hub. Each message goes into the pipeline named by `pipeline`, as if a source had \
            sent it: its steps run, and its sinks deliver. It is settled when that pipeline has taken it \
            (written to its log, if it is durable); a full pipeline makes it wait, like a busy sink. A message \
            passed between pipelines more than 8 times is refused (a loop), with metadata `pipeline_hops` \
            counting the passes.
            """,
        fields: [
            ConfigField("pipeline", .string, "The pipeline that receives the messages.", example: "notify", required: true),
        ])

    private let pipeline: String
    private weak var hub: Hub?
    /// Set once the runtime exists; settles the kernel's tokens.
    weak var runtime: SinkRuntime?

    init(config: Value.Object, hub: Hub) {
        if case .string(let s)? = config["pipeline"] { pipeline = s } else { pipeline = "" }
        self.hub = hub
    }

    func write(_ m: Message, token: UInt64) -> Int32 {
        guard let hub else { return IOTC_ERR_RETRY }
        let hops = Int(m.metadata("pipeline_hops") ?? "0") ?? 0
        guard hops < Self.maxHops else {
            runtime?.ack(token: token, result: IOTC_ERR_INVALID, reason: "passed between pipelines \(hops) times: a loop in the pipeline files?")
            return IOTC_OK
        }
        var message = CanonicalMessage(m, receivedTime: Int64(Date().timeIntervalSince1970 * 1000))
        message.setMetadata("pipeline_hops", String(hops + 1))
        let r = hub.feed(pipeline: pipeline, message) { [weak self] ok in
            self?.runtime?.ack(token: token, result: ok ? IOTC_OK : IOTC_ERR_RETRY, reason: ok ? nil : "pipeline '\(self?.pipeline ?? "")' could not log it")
        }
        return r
    }

    func stop() {}
}
