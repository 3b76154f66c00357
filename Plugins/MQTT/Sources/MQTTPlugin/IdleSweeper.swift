import NIOConcurrencyHelpers
import NIOCore

/// One timer per event loop for the connect time-out and keep-alive of every connection on it, in
/// place of a scheduled task per connection (which costs more memory than the rest of an idle
/// connection's state). Ticks every `tick`; a connection silent for its whole limit is told so.
final class IdleSweeper: @unchecked Sendable {
    static let tick = TimeAmount.milliseconds(250)
    private let loop: EventLoop
    private var members: [ObjectIdentifier: MQTTServerHandler] = [:]
    private var task: RepeatedTask?

    init(loop: EventLoop) { self.loop = loop }

    /// Called on `loop`.
    func add(_ h: MQTTServerHandler) {
        members[ObjectIdentifier(h)] = h
        if task == nil {
            task = loop.scheduleRepeatedTask(initialDelay: Self.tick, delay: Self.tick) { [weak self] _ in self?.sweep() }
        }
    }

    /// Called on `loop`.
    func remove(_ h: MQTTServerHandler) {
        members[ObjectIdentifier(h)] = nil
    }

    /// Stops ticking and lets go of the handlers; may be called from any thread.
    func stop() {
        loop.execute {
            self.task?.cancel()
            self.task = nil
            self.members = [:]
        }
    }

    private func sweep() {
        for h in Array(members.values) { h.tick(Self.tick) }
    }
}

/// The sweepers of one server, one per event loop.
final class IdleSweepers: Sendable {
    private let sweepers = NIOLockedValueBox<[ObjectIdentifier: IdleSweeper]>([:])

    func sweeper(for loop: EventLoop) -> IdleSweeper {
        sweepers.withLockedValue { all in
            if let s = all[ObjectIdentifier(loop)] { return s }
            let s = IdleSweeper(loop: loop)
            all[ObjectIdentifier(loop)] = s
            return s
        }
    }

    func stopAll() {
        let all = sweepers.withLockedValue { all in defer { all = [:] }; return Array(all.values) }
        for s in all { s.stop() }
    }
}
