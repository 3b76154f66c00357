import IoTCPluginKit

/// An MQTT-style topic filter on canonical topics: levels separated by `/`, `+` matches one level and
/// `#` (last) matches any number of levels including none. As in MQTT, filters starting with a wildcard
/// do not match topics starting with `$`.
public struct TopicFilter: Sendable, Hashable, CustomStringConvertible {
    public let levels: [Substring]
    public let text: String

    public init?(_ text: String) {
        guard TopicFilter.validate(text) == nil else { return nil }
        self.text = text
        levels = text.split(separator: "/", omittingEmptySubsequences: false)
    }

    public var description: String { text }

    /// Why a filter is invalid, or nil.
    public static func validate(_ text: String) -> String? {
        if text.isEmpty { return "a topic filter cannot be empty" }
        let levels = text.split(separator: "/", omittingEmptySubsequences: false)
        for (i, level) in levels.enumerated() {
            if level.contains("#") && (level != "#" || i != levels.count - 1) {
                return "'#' must be a whole level and the last one"
            }
            if level.contains("+") && level != "+" { return "'+' must be a whole level" }
        }
        if text.utf8.contains(0) { return "a topic filter cannot contain NUL" }
        return nil
    }

    public func matches(_ topic: String) -> Bool { TopicMatch.matches(topic: topic, filter: text) }
}

/// Subscriptions by topic filter, matched level by level (shared by the router and protocol plugins).
public struct TopicTrie<Element> {
    private final class Node {
        var children: [Substring: Node] = [:]
        var plus: Node?
        var hash: [Element] = []
        var here: [Element] = []
    }
    private let root = Node()

    public init() {}

    public mutating func insert(_ filter: TopicFilter, _ element: Element) {
        var node = root
        for level in filter.levels {
            switch level {
            case "#":
                node.hash.append(element)
                return
            case "+":
                if node.plus == nil { node.plus = Node() }
                node = node.plus!
            default:
                if node.children[level] == nil { node.children[level] = Node() }
                node = node.children[level]!
            }
        }
        node.here.append(element)
    }

    /// Every element whose filter matches `topic` (an element may appear once per matching filter).
    public func matches(_ topic: String) -> [Element] {
        var out: [Element] = []
        let levels = topic.split(separator: "/", omittingEmptySubsequences: false)
        let dollar = topic.hasPrefix("$")
        func walk(_ node: Node, _ i: Int) {
            if !(dollar && i == 0) { out += node.hash }
            if i == levels.count {
                out += node.here
                return
            }
            if let child = node.children[levels[i]] { walk(child, i + 1) }
            if let plus = node.plus, !(dollar && i == 0) { walk(plus, i + 1) }
        }
        walk(root, 0)
        return out
    }
}
