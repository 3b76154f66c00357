import Foundation
import IoTCPluginKit
import NIOCore

/// On a listening channel: what it cannot accept. When the process is out of file descriptors (or
/// memory), the connection stays in the listen backlog and the listener stays readable; NIO keeps its
/// read pending after the failed accept, so it tries again at once, as long as the connection is there:
/// the event loop would spin (every other connection of the loop starving), and NIO's own
/// `AcceptBackoffHandler` (on the listeners of its async bootstraps) never sees the read it would hold
/// back. This handler, first on the listener's pipeline, stops the listener reading for `backoff`
/// (which takes it out of the poll set), then lets it try again; clients meanwhile see a connection
/// that says nothing, so it also says why, at most once a minute, and counts each failure.
///
/// The plugins' MQTT and HTTP listeners and the operator API's listener use it.
public final class AcceptFailures: ChannelInboundHandler, Sendable {
    public typealias InboundIn = Channel
    /// How long a listener waits before it tries again to accept.
    public static let backoff = TimeAmount.milliseconds(250)
    private let listener: String
    private let remedy: String
    private let log: @Sendable (String) -> Void
    private let count: @Sendable () -> Void
    private let budget = LogBudget(perSecond: 1.0 / 60, burst: 1)

    /// `listener` names it in the log line (a source, the API), which ends with what the operator can
    /// do (`remedy`); `log` writes an error line; `count` counts one failure in `iotc_accept_failures_total`.
    public init(listener: String, remedy: String, log: @escaping @Sendable (String) -> Void, count: @escaping @Sendable () -> Void) {
        self.listener = listener
        self.remedy = remedy
        self.log = log
        self.count = count
    }

    /// A lack of descriptors or memory stops here (paused, counted, logged): further on, a server that
    /// reads its listener as an async sequence would end it with the error (and stop serving). Other
    /// errors go on.
    public func errorCaught(context: ChannelHandlerContext, error: Error) {
        let lack = (error as? IOError).map { [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains($0.errnoCode) } ?? false
        if lack { pause(context.channel) }
        count()
        if let line = budget.line("\(listener): cannot accept connections on \(context.channel.localAddress.map { "\($0)" } ?? "its listener"): \(error) (tried again every \(Self.backoff.nanoseconds / 1_000_000) ms; \(remedy))") {
            log(line)
        }
        if !lack { context.fireErrorCaught(error) }
    }

    /// Stops reading (which takes the listener out of the poll set) for `backoff`.
    private func pause(_ channel: Channel) {
        guard let options = channel.syncOptions, (try? options.getOption(.autoRead)) == true else { return }
        try? options.setOption(.autoRead, value: false)
        channel.eventLoop.scheduleTask(in: Self.backoff) { try? channel.syncOptions?.setOption(.autoRead, value: true) }
    }
}
