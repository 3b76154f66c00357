import MQTTCodec

/// One client's subscription to one filter.
struct Subscription {
    let session: Session
    var options: MQTTSubscriptionOptions
    var identifier: UInt32?
}

/// Where a published message goes: one entry per receiving session (overlapping subscriptions of a
/// session are merged: the highest QoS, every subscription identifier).
struct Delivery {
    let session: Session
    var qos: UInt8
    var retainAsPublished: Bool
    var identifiers: [UInt32]
}

/// Subscriptions by topic level, with `+` and `#` and shared groups. Not thread-safe: the broker
/// holds its lock around every call.
final class SubscriptionTree {
    final class Node {
        var children: [Substring: Node] = [:]
        var subscribers: [Subscription] = []
        /// Shared subscriptions at this filter, by group name, served round-robin.
        var shared: [String: (members: [Subscription], next: Int)] = [:]
        var isEmpty: Bool { children.isEmpty && subscribers.isEmpty && shared.isEmpty }
    }

    private let root = Node()
    private(set) var count = 0
    /// Marks sessions seen in the current match, to find overlapping subscriptions in one pass.
    private var epoch: UInt64 = 0
    private var overlapping = false
    /// Whether the current match met a shared or a no-local subscription (its result then depends on
    /// more than the topic and must not be cached).
    private var variable = false

    /// Adds or replaces a session's subscription. Returns true when it replaced one.
    @discardableResult
    func insert(_ filter: String, group: String?, _ s: Subscription) -> Bool {
        var node = root
        for level in filter.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
            let key = Substring(level)
            if let next = node.children[key] { node = next } else {
                let next = Node()
                node.children[key] = next
                node = next
            }
        }
        if let group {
            var g = node.shared[group] ?? ([], 0)
            if let i = g.members.firstIndex(where: { $0.session === s.session }) {
                g.members[i] = s
                node.shared[group] = g
                return true
            }
            g.members.append(s)
            node.shared[group] = g
        } else {
            if let i = node.subscribers.firstIndex(where: { $0.session === s.session }) {
                node.subscribers[i] = s
                return true
            }
            node.subscribers.append(s)
        }
        count += 1
        return false
    }

    /// Removes a session's subscription. Returns whether it existed.
    @discardableResult
    func remove(_ filter: String, group: String?, session: Session) -> Bool {
        var path: [(Node, Substring)] = []
        var node = root
        for level in filter.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
            let key = Substring(level)
            guard let next = node.children[key] else { return false }
            path.append((node, key))
            node = next
        }
        var removed = false
        if let group {
            if var g = node.shared[group], let i = g.members.firstIndex(where: { $0.session === session }) {
                g.members.remove(at: i)
                node.shared[group] = g.members.isEmpty ? nil : g
                removed = true
            }
        } else if let i = node.subscribers.firstIndex(where: { $0.session === session }) {
            node.subscribers.remove(at: i)
            removed = true
        }
        guard removed else { return false }
        count -= 1
        // Prune empty branches.
        var child = node
        for (parent, key) in path.reversed() {
            guard child.isEmpty else { break }
            parent.children[key] = nil
            child = parent
        }
        return true
    }

    /// The deliveries for a message on `topic`. `publisher` is skipped by its no-local subscriptions.
    /// Returns whether the result depends on the topic alone (no shared, no no-local subscription).
    @discardableResult
    func match(_ topic: String, publisher: Session?, into out: inout [Delivery]) -> Bool {
        let levels = topic.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).map { Substring($0) }
        let dollar = topic.utf8.first == UInt8(ascii: "$")
        var shared: [Delivery] = []
        epoch &+= 1
        overlapping = false
        variable = false
        walk(root, levels, 0, dollar: dollar, publisher: publisher, &out, &shared)
        if overlapping { merge(&out) }
        out.append(contentsOf: shared)
        return !variable
    }

    private func walk(_ node: Node, _ levels: [Substring], _ i: Int, dollar: Bool, publisher: Session?,
                      _ out: inout [Delivery], _ shared: inout [Delivery]) {
        let wildcardAllowed = !(dollar && i == 0)
        if wildcardAllowed, let hash = node.children["#"] { collect(hash, publisher, &out, &shared) }
        if i == levels.count {
            collect(node, publisher, &out, &shared)
            return
        }
        if let exact = node.children[levels[i]] { walk(exact, levels, i + 1, dollar: dollar, publisher: publisher, &out, &shared) }
        if wildcardAllowed, let plus = node.children["+"] { walk(plus, levels, i + 1, dollar: dollar, publisher: publisher, &out, &shared) }
    }

    private func collect(_ node: Node, _ publisher: Session?, _ out: inout [Delivery], _ shared: inout [Delivery]) {
        for s in node.subscribers {
            if s.options.noLocal {
                variable = true
                if s.session === publisher { continue }
            }
            if s.session.matchEpoch == epoch { overlapping = true } else { s.session.matchEpoch = epoch }
            out.append(Delivery(session: s.session, qos: s.options.qos, retainAsPublished: s.options.retainAsPublished,
                                identifiers: s.identifier.map { [$0] } ?? []))
        }
        guard !node.shared.isEmpty else { return }
        variable = true
        for (group, var g) in node.shared where !g.members.isEmpty {
            // Round-robin, preferring a member that is connected.
            var pick = g.next % g.members.count
            for k in 0..<g.members.count {
                let c = (g.next + k) % g.members.count
                if g.members[c].session.isConnected {
                    pick = c
                    break
                }
            }
            g.next = pick + 1
            node.shared[group] = g
            let s = g.members[pick]
            shared.append(Delivery(session: s.session, qos: s.options.qos, retainAsPublished: s.options.retainAsPublished,
                                   identifiers: s.identifier.map { [$0] } ?? []))
        }
    }

    private func merge(_ out: inout [Delivery]) {
        var merged: [Delivery] = []
        var index: [ObjectIdentifier: Int] = [:]
        merged.reserveCapacity(out.count)
        for d in out {
            if let i = index[ObjectIdentifier(d.session)] {
                merged[i].qos = max(merged[i].qos, d.qos)
                merged[i].retainAsPublished = merged[i].retainAsPublished || d.retainAsPublished
                merged[i].identifiers += d.identifiers
            } else {
                index[ObjectIdentifier(d.session)] = merged.count
                merged.append(d)
            }
        }
        out = merged
    }
}
