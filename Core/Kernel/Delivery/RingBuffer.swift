/// A FIFO with amortised O(1) push and pop at both ends (the standard library has no deque). Elements
/// are moved in and out, not copied: a queued message is a large value with many references.
struct RingBuffer<Element> {
    private var storage: [Element?]
    private var head = 0
    private(set) var count = 0

    init(capacity: Int = 16) { storage = Array(repeating: nil, count: max(1, capacity)) }

    var isEmpty: Bool { count == 0 }

    mutating func append(_ e: consuming Element) {
        if count == storage.count { grow() }
        storage[(head + count) % storage.count] = consume e
        count += 1
    }

    mutating func prepend(_ e: consuming Element) {
        if count == storage.count { grow() }
        head = (head - 1 + storage.count) % storage.count
        storage[head] = consume e
        count += 1
    }

    mutating func popFirst() -> Element? {
        guard count > 0 else { return nil }
        let e = storage[head].take()
        head = (head + 1) % storage.count
        count -= 1
        return e
    }

    private mutating func grow() {
        var s: [Element?] = Array(repeating: nil, count: storage.count * 2)
        for i in 0..<count { s[i] = storage[(head + i) % storage.count].take() }
        storage = s
        head = 0
    }
}

/// What a queue bounded in bytes counts of an element.
protocol Weighed {
    /// The bytes the element holds that a queue bounds (its payload).
    var weight: Int { get }
}

/// A `RingBuffer` that also keeps the total weight of what it holds, for queues bounded in bytes as
/// well as in count: a count alone let a client fill a pipeline's 8,192 places with 1 MB messages.
struct WeighedQueue<Element: Weighed> {
    private var ring = RingBuffer<Element>()
    private(set) var bytes = 0

    var count: Int { ring.count }
    var isEmpty: Bool { ring.isEmpty }

    mutating func append(_ e: consuming Element) {
        bytes += e.weight
        ring.append(e)
    }

    mutating func prepend(_ e: consuming Element) {
        bytes += e.weight
        ring.prepend(e)
    }

    mutating func popFirst() -> Element? {
        guard let e = ring.popFirst() else { return nil }
        bytes -= e.weight
        return e
    }
}
