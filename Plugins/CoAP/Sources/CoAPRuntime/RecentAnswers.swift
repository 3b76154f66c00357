/// The answers one endpoint was last given, by message id, so that a copy of a request is answered
/// again without being acted on twice (RFC 7252 §4.5). A ring of the last `capacity` answers, looked up
/// newest first (a message id used again later has its latest answer), and the ids whose answer is
/// still to come (a separate response), which a copy finds as `pending`. On the loop thread only.
/// Inlinable, so that the plugin that uses it gets code specialised to its `Code` (it is looked up for
/// every request).
public struct RecentAnswers<Code> {
    public let capacity: Int
    @usableFromInline var ring: [(id: Int32, code: Code)] = []
    /// Where the next answer goes: once the ring is full, the oldest.
    @usableFromInline var next = 0
    @usableFromInline var waiting: Set<Int32> = []
    @usableFromInline let pending: Code

    /// `pending` is what a copy of a request still being answered gets (an empty acknowledgement).
    @inlinable
    public init(capacity: Int, pending: Code) {
        precondition(capacity > 0)
        self.capacity = capacity
        self.pending = pending
    }

    /// The answer already given to this message id, if any.
    @inlinable
    public func answer(_ id: Int32) -> Code? {
        if !waiting.isEmpty, waiting.contains(id) { return pending }
        var k = next
        for _ in 0..<ring.count {
            k = k == 0 ? ring.count - 1 : k - 1
            if ring[k].id == id { return ring[k].code }
        }
        return nil
    }

    /// The answer to `id` will come later.
    @inlinable
    public mutating func started(_ id: Int32) { waiting.insert(id) }

    @inlinable
    public mutating func remember(_ id: Int32, _ code: Code) {
        if !waiting.isEmpty { waiting.remove(id) }
        if ring.count < capacity {
            ring.append((id, code))
        } else {
            ring[next] = (id, code)
        }
        next = (next + 1) % capacity
    }
}
