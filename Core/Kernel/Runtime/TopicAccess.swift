/// Which topics the devices of each profile may publish to and subscribe to, within their tenant (a
/// tenant's devices never see another tenant's topics, whatever their access says). `{device}` in a
/// filter is the device's own id. A profile not listed gets the access of `default`, and `default`,
/// unless the pipeline files set it, is a device's own topics: `devices/{device}/#`.
public struct TopicAccess: Sendable, Equatable {
    public struct Rules: Sendable, Equatable {
        public var publish: [String]
        public var subscribe: [String]

        public init(publish: [String], subscribe: [String]) {
            self.publish = publish
            self.subscribe = subscribe
        }

        public static let ownTopics = Rules(publish: ["devices/{device}/#"], subscribe: ["devices/{device}/#"])
    }

    public var profiles: [String: Rules] = [:]

    public init(profiles: [String: Rules] = [:]) { self.profiles = profiles }

    public func rules(for profile: String) -> Rules { profiles[profile] ?? profiles["default"] ?? .ownTopics }

    /// Whether a device of `profile` may publish to `topic`.
    public func mayPublish(profile: String, device: String, topic: String) -> Bool {
        let rules = self.rules(for: profile)
        // The usual case without building a string.
        if rules == .ownTopics { return Self.isOwnTopic(topic, device: device) }
        return rules.publish.contains { TopicFilter(Self.fill($0, device))?.matches(topic) ?? false }
    }

    /// Whether a device of `profile` may subscribe to `filter`: every topic it matches must be allowed.
    public func maySubscribe(profile: String, device: String, filter: String) -> Bool {
        guard let inner = TopicFilter(filter) else { return false }
        return rules(for: profile).subscribe.contains { TopicFilter(Self.fill($0, device))?.covers(inner) ?? false }
    }

    static func fill(_ template: String, _ device: String) -> String {
        template.contains("{device}") ? template.replacingOccurrences(of: "{device}", with: device) : template
    }

    /// Whether `topic` is `devices/DEVICE` or below it (compared byte by byte, without building strings).
    static func isOwnTopic(_ topic: String, device: String) -> Bool {
        var t = topic.utf8[...]
        let prefix = "devices/".utf8
        guard !device.isEmpty, t.starts(with: prefix) else { return false }
        t = t.dropFirst(prefix.count)
        guard t.starts(with: device.utf8) else { return false }
        t = t.dropFirst(device.utf8.count)
        return t.isEmpty || t.first == UInt8(ascii: "/")
    }
}

extension TopicFilter {
    /// Whether every topic `inner` matches is matched by this filter too.
    public func covers(_ inner: TopicFilter) -> Bool {
        for (n, level) in levels.enumerated() {
            if level == "#" { return true }
            guard n < inner.levels.count else { return false }
            let i = inner.levels[n]
            if i == "#" { return false }
            if level == "+" { continue }
            if i == "+" || i != level { return false }
        }
        return levels.count == inner.levels.count
    }
}
