import CIoTCPluginABI

/// Who is told that the hub holds a submitted message: on disk for a durable pipeline, at once for
/// another. A value, kept as it came in the write-ahead log's list of completions: a plugin's C
/// callback is not wrapped in a closure per message, nor the closure of a source in the kernel in
/// another one.
struct Arrival: Sendable {
    private enum Target: @unchecked Sendable {
        case nobody
        case closure(@Sendable (Bool) -> Void)
        /// A source plugin's callback and its context (`iotc_host.submit`): told IOTC_OK or
        /// IOTC_ERR_INTERNAL.
        case plugin(iotc_submit_done_fn, UnsafeMutableRawPointer?)
        /// Several durable pipelines took the message: told once all of them hold it.
        case latch(DurabilityLatch)
    }

    private let target: Target

    static let nobody = Arrival(target: .nobody)

    private init(target: Target) { self.target = target }
    init(_ done: @escaping @Sendable (Bool) -> Void) { target = .closure(done) }
    init(plugin done: iotc_submit_done_fn, context: UnsafeMutableRawPointer?) { target = .plugin(done, context) }

    /// Told once `count` arrivals have been (false if any of them was).
    static func all(_ count: Int, then done: Arrival) -> Arrival {
        count == 1 ? done : Arrival(target: .latch(DurabilityLatch(count: count, done: done)))
    }

    func callAsFunction(_ ok: Bool) {
        switch target {
        case .nobody: break
        case .closure(let done): done(ok)
        case .plugin(let done, let context): done(context, ok ? IOTC_OK : IOTC_ERR_INTERNAL)
        case .latch(let latch): latch.arrive(ok)
        }
    }
}
