/// The topics of device commands, the same on every protocol. A command goes down on
/// `devices/{device}/commands/{name}/{id}`; the device answers on `devices/{device}/results/{id}` (on
/// HTTP, `POST /v1/devices/{device}/commands/{id}/result` is that topic). The kernel reads every answer
/// and settles the command whose id it names.
public enum CommandTopics {
    public static func command(device: String, name: String, id: String) -> String { "devices/\(device)/commands/\(name)/\(id)" }

    public static func result(device: String, id: String) -> String { "devices/\(device)/results/\(id)" }

    /// Whether a device id from a URL or resource path can name a device in these topics: 1 to 128
    /// bytes of UTF-8 without '/', '+', '#' or control characters.
    public static func isDeviceID(_ s: String) -> Bool {
        var s = s
        return s.withUTF8 { u in
            !u.isEmpty && u.count <= 128 && !u.contains { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") || $0 < 0x20 || $0 == 0x7F }
        }
    }

    /// The device, command name and id of a command's topic, or nil when `topic` is not one.
    public static func parseCommand(_ topic: String) -> (device: Substring, name: Substring, id: Substring)? {
        let levels = topic.split(separator: "/", maxSplits: 5, omittingEmptySubsequences: false)
        guard levels.count == 5, levels[0] == "devices", levels[2] == "commands", !levels[1].isEmpty, !levels[3].isEmpty, !levels[4].isEmpty else { return nil }
        return (levels[1], levels[3], levels[4])
    }

    /// The device and command id of an answer's topic, or nil when `topic` is not one.
    public static func parseResult(_ topic: String) -> (device: Substring, id: Substring)? {
        let levels = topic.split(separator: "/", maxSplits: 4, omittingEmptySubsequences: false)
        guard levels.count == 4, levels[0] == "devices", levels[2] == "results", !levels[1].isEmpty, !levels[3].isEmpty else { return nil }
        return (levels[1], levels[3])
    }

    /// Whether `topic` is an answer's: `devices/D/results/I` with D and I not empty. One pass over the
    /// bytes, nothing built (sources ask it for every message).
    public static func isResult(_ topic: String) -> Bool {
        let u = topic.utf8
        let prefix = "devices/".utf8
        guard u.starts(with: prefix) else { return false }
        let rest = u.dropFirst(prefix.count)
        guard let slash = rest.firstIndex(of: UInt8(ascii: "/")), slash != rest.startIndex else { return false }
        let tail = rest[rest.index(after: slash)...]
        let results = "results/".utf8
        guard tail.starts(with: results) else { return false }
        let id = tail.dropFirst(results.count)
        return !id.isEmpty && !id.contains(UInt8(ascii: "/"))
    }
}
