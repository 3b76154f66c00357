/// MQTT-style topic matching on `/`-separated levels: `+` matches one level, `#` (last) any number of
/// levels including none, and a filter whose first level is a wildcard does not match a topic that
/// starts with `$`. The kernel's routes and the MQTT server both match with it; it runs for every
/// message, so it walks both texts' bytes level by level. The filter is assumed valid.
public enum TopicMatch {
    public static func matches(topic: String, filter: String) -> Bool {
        var topic = topic, filter = filter
        return topic.withUTF8 { t in filter.withUTF8 { f in matches(topic: t, filter: f) } }
    }

    public static func matches(topic t: UnsafeBufferPointer<UInt8>, filter f: UnsafeBufferPointer<UInt8>) -> Bool {
        let slash = UInt8(ascii: "/"), plus = UInt8(ascii: "+"), hash = UInt8(ascii: "#")
        if let c = f.first, c == plus || c == hash, t.first == UInt8(ascii: "$") { return false }
        var i = 0, j = 0  // the start of the current level in the filter and in the topic
        while true {
            var fe = i, te = j
            while fe < f.count, f[fe] != slash { fe += 1 }
            while te < t.count, t[te] != slash { te += 1 }
            let wildcard = fe - i == 1 ? f[i] : 0
            if wildcard == hash { return true }
            if wildcard != plus {
                guard fe - i == te - j else { return false }
                for k in 0..<(fe - i) where f[i + k] != t[j + k] { return false }
            }
            if te == t.count {
                // The topic ended: the filter must end here too, or go on with a last "/#" only.
                return fe == f.count || (f.count - fe == 2 && f[fe + 1] == hash)
            }
            if fe == f.count { return false }
            i = fe + 1
            j = te + 1
        }
    }
}
