/// The topics of device commands, the same on every protocol. A command goes down on
/// `devices/{device}/commands/{name}/{id}`; the device answers on `devices/{device}/results/{id}` (on
/// HTTP, `POST /v1/devices/{device}/commands/{id}/result` is that topic). The kernel reads every answer
/// and settles the command whose id it names.
public enum CommandTopics {
    public static func command(device: String, name: String, id: String) -> String { "devices/\(device)/commands/\(name)/\(id)" }

    public static func result(device: String, id: String) -> String { "devices/\(device)/results/\(id)" }

    /// The device and command id of an answer's topic, or nil when `topic` is not one.
    public static func parseResult(_ topic: String) -> (device: Substring, id: Substring)? {
        let levels = topic.split(separator: "/", maxSplits: 4, omittingEmptySubsequences: false)
        guard levels.count == 4, levels[0] == "devices", levels[2] == "results", !levels[1].isEmpty, !levels[3].isEmpty else { return nil }
        return (levels[1], levels[3])
    }

    /// Whether `topic` is an answer's, without building anything (for the routing of every message).
    public static func isResult(_ topic: String) -> Bool {
        let u = topic.utf8
        guard u.starts(with: "devices/".utf8) else { return false }
        var slashes = 0, afterSecond = u.startIndex
        var i = u.startIndex
        while i != u.endIndex {
            if u[i] == UInt8(ascii: "/") {
                slashes += 1
                if slashes == 2 { afterSecond = u.index(after: i) }
            }
            i = u.index(after: i)
        }
        return slashes == 3 && u[afterSecond...].starts(with: "results/".utf8) && parseResult(topic) != nil
    }
}
