import Foundation
import IoTCPluginKit
import Testing

struct WorkerThreadTests {
    /// What the body captured is let go before `join` returns: a loop's owner kept only by its thread's
    /// body is gone (and so its sockets closed) once the thread is joined. Before, the thread released its
    /// body only after `join` had returned; the owner's deinit here takes 100 ms, so it was still under
    /// way when `join` returned (a CoAP source's UDP port was found bound right after its stop).
    @Test func lettingGoOfTheBodyComesBeforeJoinReturns() {
        final class Owner: @unchecked Sendable {
            let freed: SharedFlag
            init(_ freed: SharedFlag) { self.freed = freed }
            deinit {
                Thread.sleep(forTimeInterval: 0.1)
                freed.set()
            }
        }
        let freed = SharedFlag()
        var owner: Owner? = Owner(freed)
        let worker = WorkerThread(name: "test-owner") { [owner] in _ = owner }
        owner = nil
        worker.join()
        #expect(freed.isSet, "the body's captures outlived join")
    }
}

/// A flag set on one thread and read on another.
final class SharedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}
