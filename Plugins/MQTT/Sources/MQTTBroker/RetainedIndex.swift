/// The topics of the broker's retained messages, level by level. A new subscription finds those its
/// filter matches by walking the levels the filter names (a filter without wildcards is one lookup per
/// level) instead of testing every retained topic under the broker's lock: with 100,000 retained
/// messages, each SUBSCRIBE tested 100,000 topics and held up all routing meanwhile. Walks use a
/// stack of their own, not recursion. Not thread-safe: the broker holds its lock around every call.
final class RetainedIndex {
    private final class Node {
        /// By level. String keys: a level of up to 15 bytes is held inline, where a Substring key would
        /// take twice the room.
        var children: [String: Node] = [:]
        /// The retained topic that ends here.
        var topic: String?
    }

    private let root = Node()

    private static func levels(_ s: String) -> [String] {
        s.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).map { String(Substring($0)) }
    }

    func insert(_ topic: String) {
        var node = root
        for key in Self.levels(topic) {
            if let next = node.children[key] { node = next } else {
                let next = Node()
                node.children[key] = next
                node = next
            }
        }
        node.topic = topic
    }

    func remove(_ topic: String) {
        var path: [(parent: Node, key: String)] = []
        var node = root
        for key in Self.levels(topic) {
            guard let next = node.children[key] else { return }
            path.append((node, key))
            node = next
        }
        node.topic = nil
        // Levels that lead nowhere any more go too.
        while let (parent, key) = path.popLast(), let child = parent.children[key], child.topic == nil, child.children.isEmpty {
            parent.children[key] = nil
        }
    }

    /// Calls `body` with every retained topic `filter` matches: `+` is one level, `#` this level and
    /// every one below, and a wildcard as the first level does not match topics starting with `$`.
    func forEachMatch(_ filter: String, _ body: (String) -> Void) {
        let levels = Self.levels(filter)
        var stack: [(node: Node, level: Int)] = [(root, 0)]
        while let (node, i) = stack.popLast() {
            guard i < levels.count else {
                if let t = node.topic { body(t) }
                continue
            }
            let first = i == 0
            func wildcardMatches(_ key: String) -> Bool { !(first && key.utf8.first == UInt8(ascii: "$")) }
            switch levels[i] {
            case "#":
                // "a/#" matches "a" itself, and everything below it.
                if !first, let t = node.topic { body(t) }
                var below = node.children.compactMap { wildcardMatches($0.key) ? $0.value : nil }
                while let n = below.popLast() {
                    if let t = n.topic { body(t) }
                    below.append(contentsOf: n.children.values)
                }
            case "+":
                for (key, child) in node.children where wildcardMatches(key) { stack.append((child, i + 1)) }
            case let key:
                if let child = node.children[key] { stack.append((child, i + 1)) }
            }
        }
    }
}
