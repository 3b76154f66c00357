/// The hub's last yes to a device publishing to a topic, kept by one connection or endpoint and reused
/// for `lifetime` milliseconds: a device sends to the same topic again and again, and asking the hub
/// each time costs a trip through the ABI for every message. Another topic, another identity, an older
/// answer or a refusal asks again.
public struct PublishPermit: Sendable {
    private var last: (identity: Identity, topic: String, at: Int64)?

    public init() {}

    /// Whether `identity` may publish to `topic`; `now` in milliseconds on any clock that only goes on.
    public mutating func allows(_ identity: Identity, _ topic: String, host: PluginHost, now: Int64, lifetime: Int64 = 2_000) -> Bool {
        if let l = last, l.identity === identity, l.topic == topic, now - l.at < lifetime { return true }
        guard host.authorize(identity, .publish, topic: topic) else {
            last = nil
            return false
        }
        last = (identity, topic, now)
        return true
    }
}
