import Foundation
import Testing

/// A mosquitto broker and a mosquitto_sub subscriber on loopback, both real Debian programs.
final class Mosquitto {
    let port: Int
    let dir = TempDir()
    private var broker: ChildProcess?

    /// Keep sessions and queued messages across restarts (in this object's folder).
    var persistent = false
    /// A second listener on `tlsPort` with these files, requiring client certificates signed by `ca`.
    var tls: (port: Int, ca: String, certificate: String, key: String)?

    init(port: Int = freePort()) { self.port = port }

    static var installed: Bool { which("mosquitto") != nil || FileManager.default.isExecutableFile(atPath: "/usr/sbin/mosquitto") }

    func start() throws {
        // Started as root, mosquitto runs as the user mosquitto: the database folder must be writable to it.
        if persistent { chmod(dir.path, 0o777) }
        let persistence = persistent ? "persistence true\npersistence_location \(dir.path)/\n" : "persistence false\n"
        var listeners = "listener \(port) 127.0.0.1\n"
        if let tls {
            // It runs as the user mosquitto, which must be able to read the key.
            for f in [tls.ca, tls.certificate, tls.key] { chmod(f, 0o644) }
            chmod(dir.path, 0o755)
            listeners += "listener \(tls.port) 127.0.0.1\ncafile \(tls.ca)\ncertfile \(tls.certificate)\nkeyfile \(tls.key)\nrequire_certificate true\n"
        }
        let conf = dir.write("mosquitto.conf", "per_listener_settings false\nallow_anonymous true\n" + listeners + persistence)
        let exe = which("mosquitto") ?? "/usr/sbin/mosquitto"
        broker = try ChildProcess(exe, ["-c", conf])
        #expect(waitForPort(port) && (tls.map { waitForPort($0.port) } ?? true), "mosquitto did not start: \(broker?.log ?? "")")
    }

    func stop() { broker?.stop() }

    /// What the broker logged (connections and disconnections among it).
    var log: String { broker?.log ?? "" }

    /// Starts mosquitto_sub (line-buffered, so that output shows at once) on `filter` and waits until it
    /// receives a probe message.
    func subscribe(_ filter: String, qos: Int = 1) throws -> ChildProcess {
        let sub = try ChildProcess(which("stdbuf")!, ["-oL", which("mosquitto_sub")!, "-h", "127.0.0.1", "-p", "\(port)", "-t", filter, "-t", "probe", "-q", "\(qos)", "-v", "-V", "mqttv5"])
        let ready = eventually(timeout: 10) {
            _ = try? run(which("mosquitto_pub")!, ["-h", "127.0.0.1", "-p", "\(port)", "-t", "probe", "-m", "x"])
            return sub.log.contains("probe x")
        }
        #expect(ready, "mosquitto_sub did not subscribe: \(sub.log)")
        return sub
    }

    deinit { broker?.stop() }
}

/// Fails the test with a clear message when a peer is missing (`make test` installs them).
func requirePeer(_ installed: Bool, _ name: String) throws {
    if !installed {
        Issue.record("\(name) is not installed; run `make test-deps` (make test installs it)")
        throw CancellationError()
    }
}
