import CCoAP
import Synchronization

/// The answer to a request whose outcome comes later, from another thread: the hub's verdict on the
/// messages the request was made into (a durable pipeline says yes once they are in its write-ahead
/// log). When the verdict is not in by the time the handler returns, the request is acknowledged
/// empty and answered in a separate response (RFC 7252 §5.2.2) through libcoap's async entries: once
/// the verdict comes, `trigger()` has libcoap call the handler again with the request, and
/// `resumed(_:_:)` gives the handler this answer back.
public final class PendingAnswer: @unchecked Sendable {
    /// Held inline: one of these is made for every request, and a lock of its own would be another
    /// allocation. `open`: parts not yet settled; `failure`: the first part's result that was not OK.
    private let state: Mutex<(open: Int, failure: Int32?, deferred: Bool)>
    public let mid: Int32
    // Loop thread only:
    private var held: HeldSession?
    private var token: [UInt8] = []

    /// An answer that waits for `parts` verdicts (one per message the request became; none: it is
    /// complete, and OK, at once).
    public init(mid: Int32, parts: Int = 1) {
        self.mid = mid
        state = Mutex((max(parts, 0), nil, false))
    }

    /// The verdict once every part is settled: 0 (IOTC_OK) when all were taken, else the first failure.
    public var result: Int32? { state.withLock { $0.open > 0 ? nil : $0.failure ?? 0 } }

    /// Records one part's result (0 for taken); true when it was the last one and the handler already
    /// chose a separate response: then call `trigger()` on the loop thread.
    public func settle(_ r: Int32) -> Bool {
        state.withLock {
            if r != 0, $0.failure == nil { $0.failure = r }
            $0.open -= 1
            return $0.open == 0 && $0.deferred
        }
    }

    /// The verdict when it is complete; otherwise marks the answer as separate and returns nil (then
    /// `answerLater`).
    public func deferIfOpen() -> Int32? {
        state.withLock {
            if $0.open > 0 {
                $0.deferred = true
                return nil
            }
            return $0.failure ?? 0
        }
    }

    /// Has libcoap hold the request for a separate response; false when it cannot (answer at once).
    public func answerLater(_ session: OpaquePointer, _ request: OpaquePointer, loop: CoAPEventLoop) -> Bool {
        guard let async = coap_register_async(session, request, 0) else { return false }
        held = loop.hold(session)
        token = PDU.token(request)
        coap_async_set_app_data(async, Unmanaged.passRetained(self).toOpaque())
        return true
    }

    /// The handler's second call for a request answered late: its pending answer (libcoap removes the
    /// async entry itself when the handler returns); nil for a request that is new.
    public static func resumed(_ session: OpaquePointer, _ request: OpaquePointer) -> PendingAnswer? {
        guard let async = coap_find_async(session, coap_pdu_get_token(request)), let box = coap_async_get_app_data(async) else { return nil }
        coap_async_set_app_data(async, nil)
        return Unmanaged<PendingAnswer>.fromOpaque(box).takeRetainedValue()
    }

    /// The verdict is in: libcoap calls the handler again with the request. Loop thread.
    public func trigger() {
        guard let session = held?.session else { return }
        token.withUnsafeBufferPointer { t in
            if let async = coap_find_async(session, coap_bin_const_t(length: t.count, s: t.baseAddress)) { coap_async_trigger(async) }
        }
        held = nil
    }
}
