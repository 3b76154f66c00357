import IoTCPluginKit

/// Topic names and topic filters (MQTT 5 section 4.7).
public enum Topics {
    /// Most levels a topic name or filter may have here, as in mosquitto. The broker keeps topics
    /// level by level and walks them level by level: a client's topic of tens of thousands of levels
    /// (a topic may be 65,535 bytes: "a/a/a/...") took megabytes per subscription and overflowed the
    /// stack of the routing walk, which ended the process.
    public static let maximumLevels = 200

    /// The levels of a topic name or filter ("a//b" has three).
    public static func levels(_ topic: String) -> Int {
        var n = 1
        for c in topic.utf8 where c == UInt8(ascii: "/") { n += 1 }
        return n
    }

    /// Whether `filter` is a valid topic filter: `#` only as a whole last level, `+` only as a whole
    /// level, not empty, at most `maximumLevels` levels. Shared subscriptions are checked by `SharedFilter`.
    public static func isValidFilter(_ filter: String) -> Bool {
        let u = filter.utf8
        guard !u.isEmpty, levels(filter) <= maximumLevels else { return false }
        var levelStart = true
        var index = u.startIndex
        while index != u.endIndex {
            let c = u[index]
            let next = u.index(after: index)
            switch c {
            case UInt8(ascii: "#"):
                guard levelStart, next == u.endIndex else { return false }
            case UInt8(ascii: "+"):
                guard levelStart, next == u.endIndex || u[next] == UInt8(ascii: "/") else { return false }
            default: break
            }
            levelStart = c == UInt8(ascii: "/")
            index = next
        }
        return true
    }

    /// Whether every topic that `inner` matches is also matched by `outer` (for authorizing a
    /// subscription's filter against an access-control filter).
    public static func covers(_ outer: String, _ inner: String) -> Bool {
        let o = outer.split(separator: "/", omittingEmptySubsequences: false)
        let i = inner.split(separator: "/", omittingEmptySubsequences: false)
        for (n, level) in o.enumerated() {
            if level == "#" { return true }
            guard n < i.count else { return false }
            if i[n] == "#" { return false }
            if level == "+" { continue }
            if i[n] == "+" || i[n] != level { return false }
        }
        return o.count == i.count
    }
}

/// `$share/GROUP/FILTER` (section 4.8.2).
public struct SharedFilter: Sendable, Equatable {
    public var group: String
    public var filter: String

    /// Parses a shared subscription; nil when `text` is not one. Throws nothing: an invalid shared
    /// filter is reported by `isShared` being true and this returning nil.
    public init?(_ text: String) {
        guard text.hasPrefix("$share/") else { return nil }
        let rest = text.dropFirst(7)
        guard let slash = rest.firstIndex(of: "/") else { return nil }
        let g = rest[..<slash], f = rest[rest.index(after: slash)...]
        guard !g.isEmpty, !g.contains("+"), !g.contains("#"), !f.isEmpty else { return nil }
        group = String(g)
        filter = String(f)
    }

    public static func isShared(_ text: String) -> Bool { text.hasPrefix("$share/") }
}

/// Where one tenant's clients live in the broker. Every topic, filter and session of a client of tenant
/// `T` is kept under the mount point `$tenant/T/`, so clients of different tenants never see each
/// other's messages, retained messages or sessions, even when they use the same topics and client ids.
/// Clients see their own topics only; the mount is added on the way in and taken off on the way out.
/// The tenant `default` (static users, token-list devices) has no mount: a single-tenant hub is a
/// plain MQTT broker. Topics under `$tenant/` are reserved: no client may name one.
public struct TenantSpace: Sendable, Equatable {
    public static let reservedPrefix = "$tenant/"
    public let mount: String

    public init(tenant: String) {
        mount = tenant.isEmpty || tenant == "default" ? "" : Self.reservedPrefix + tenant + "/"
    }

    /// Whether a tenant id can be a mount: not empty, and no `/`, `+`, `#` or U+0000.
    public static func isValidTenant(_ tenant: String) -> Bool {
        !tenant.isEmpty && !tenant.utf8.contains { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") || $0 == 0 }
    }

    /// Whether a client-supplied topic or filter names the reserved space.
    public static func isReserved(_ topicOrFilter: String) -> Bool {
        topicOrFilter.utf8.starts(with: reservedPrefix.utf8)
    }

    /// The broker's topic for a client's topic.
    public func topic(_ clientTopic: String) -> String { mount.isEmpty ? clientTopic : mount + clientTopic }

    /// The broker's filter for a client's filter; a shared subscription keeps its group in front.
    public func filter(_ clientFilter: String) -> String {
        guard !mount.isEmpty else { return clientFilter }
        if let s = SharedFilter(clientFilter) { return "$share/" + s.group + "/" + mount + s.filter }
        return mount + clientFilter
    }

    /// A broker topic as the client sees it.
    public func clientTopic(_ brokerTopic: String) -> String {
        guard !mount.isEmpty, brokerTopic.utf8.starts(with: mount.utf8) else { return brokerTopic }
        return String(decoding: brokerTopic.utf8.dropFirst(mount.utf8.count), as: UTF8.self)
    }

    /// The key of a client's session: client ids are unique per tenant, not across tenants. U+0000
    /// cannot occur in a client id, so the key cannot collide with another tenant's.
    public func sessionKey(_ clientID: String) -> String { mount.isEmpty ? clientID : mount + "\u{0}" + clientID }
}
