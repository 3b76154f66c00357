import Foundation

/// A command waiting for its device.
public struct PendingCommand: Sendable {
    public var message: Message
    public var ack: Ack
    public var expires: Date

    public init(message: Message, ack: Ack, expires: Date) {
        self.message = message
        self.ack = ack
        self.expires = expires
    }
}

/// Per-device command queues and the long-polls, streams and observers waiting on them: how a source
/// whose devices are not always connected holds their commands (HTTP, CoAP).
public final class CommandMailboxes: @unchecked Sendable {
    public typealias Waiter = @Sendable (PendingCommand) -> Bool
    private struct Box {
        var queue: [PendingCommand] = []
        var waiters: [(id: UInt64, take: Waiter, persistent: Bool)] = []
    }
    private let lock = NSLock()
    private var boxes: [String: Box] = [:]
    private var nextWaiter: UInt64 = 1
    public let capacity: Int
    public let ttl: Double

    public init(capacity: Int, ttl: Double) {
        self.capacity = capacity
        self.ttl = ttl
    }

    /// A device's mailbox: device ids are unique per tenant only.
    public static func key(tenant: String, device: String) -> String { (tenant.isEmpty ? "default" : tenant) + "/" + device }

    /// Hands a command to a waiting device or queues it.
    public func deliver(_ c: PendingCommand) {
        var refused = false
        var taken = false
        let key = Self.key(tenant: c.message.tenant, device: c.message.device)
        lock.withLock {
            var box = boxes[key] ?? Box()
            while let w = box.waiters.first {
                if !w.persistent { box.waiters.removeFirst() }
                if w.take(c) {
                    taken = true
                    break
                }
                if w.persistent { box.waiters.removeFirst() }
            }
            if !taken {
                box.queue.removeAll { $0.expires < Date() }
                if box.queue.count >= capacity { refused = true } else { box.queue.append(c) }
            }
            keep(box, at: key)
        }
        if refused { c.ack.reject("the device's command queue is full (\(capacity))") }
    }

    /// The next queued command, or registers `take` to receive one. Returns the waiter id (0 when a
    /// queued command was handed over at once).
    public func wait(box key: String, persistent: Bool, take: @escaping Waiter) -> UInt64 {
        var ready: [PendingCommand] = []
        let id: UInt64 = lock.withLock {
            var box = boxes[key] ?? Box()
            box.queue.removeAll { $0.expires < Date() }
            if !persistent, !box.queue.isEmpty {
                ready = [box.queue.removeFirst()]
                keep(box, at: key)
                return 0
            }
            if persistent {
                ready = box.queue
                box.queue = []
            }
            let id = nextWaiter
            nextWaiter += 1
            box.waiters.append((id, take, persistent))
            keep(box, at: key)
            return id
        }
        for c in ready where !take(c) { deliver(c) }
        return id
    }

    public func cancel(box key: String, waiter: UInt64) {
        lock.withLock {
            guard var box = boxes[key] else { return }
            box.waiters.removeAll { $0.id == waiter }
            keep(box, at: key)
        }
    }

    /// Stores a box, or drops it when it holds nothing: a device that polled once, or a client that
    /// polled for made-up device ids, leaves no box behind. Under the lock.
    private func keep(_ box: Box, at key: String) {
        boxes[key] = box.queue.isEmpty && box.waiters.isEmpty ? nil : box
    }

    /// Mailboxes held now: those with commands queued or devices waiting.
    public var count: Int { lock.withLock { boxes.count } }

    public func closeAll() {
        let pending: [PendingCommand] = lock.withLock {
            let all = boxes.values.flatMap(\.queue)
            boxes = [:]
            return all
        }
        for c in pending { c.ack.retry("the source stopped") }
    }
}
