import Foundation
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
@testable import IoTCKernel
import IoTCPluginKit
import Logging

/// Where the build put the executable and the plugins (the folder of the test bundle).
enum Build {
    static let directory: String = {
        if let d = ProcessInfo.processInfo.environment["IOTC_BUILD_DIR"] { return d }
        return URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().path
    }()
    static let packageRoot: String = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static var iotc: String { directory + "/iotc" }

    static let plugins: PluginSet = {
        let (libs, errors) = PluginLoader.discover(in: [directory])
        precondition(errors.isEmpty, "plugin load errors: \(errors)")
        return PluginSet(libs)
    }()
}

/// A scratch folder removed at the end of the test.
final class TempDir {
    let url: URL
    var path: String { url.path }
    init() {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("iotc-tests-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(at: url) }

    @discardableResult
    func write(_ name: String, _ text: String) -> String {
        let p = url.appendingPathComponent(name).path
        try! text.write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }
}

/// A port free on loopback for both TCP and UDP, taken below the kernel's ephemeral range.
///
/// A port the kernel hands out for `bind(0)` comes from the ephemeral range, which is also where every
/// outgoing connection's local port comes from: between this check and the hub's bind a client's
/// connection (any test's, running in parallel) could take it ("Address already in use"). Ports below
/// the range are only ever taken by an explicit bind, and this hands each one out once per test process,
/// starting from an offset derived from the process id so that two test processes rarely meet.
func freePort() -> Int {
    PortPool.shared.next()
}

private final class PortPool: @unchecked Sendable {
    static let shared = PortPool()
    private let lock = NSLock()
    private let low: Int, high: Int
    private var cursor: Int

    private init() {
        var ephemeralLow = 32768
        if let range = try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8),
           let first = range.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).first, let n = Int(first) {
            ephemeralLow = n
        }
        high = ephemeralLow - 1
        low = max(10_000, high - 12_000)
        cursor = low + Int(getpid()) % (high - low + 1)
    }

    func next() -> Int {
        lock.lock()
        defer { lock.unlock() }
        for _ in low...high {
            let port = cursor
            cursor = cursor == high ? low : cursor + 1
            if bindsOnLoopback(port, SOCK_STREAM) && bindsOnLoopback(port, SOCK_DGRAM) { return port }
        }
        fatalError("no free port in \(low)...\(high)")
    }
}

/// Whether a socket of the kind binds to the port on 127.0.0.1: TCP with SO_REUSEADDR, as the hub binds
/// it (a connection of the test's own left in TIME_WAIT does not count, a listener does); UDP without
/// (libcoap sets it, and a second socket would bind beside one left open).
func bindsOnLoopback(_ port: Int, _ kind: __socket_type) -> Bool {
    let fd = socket(AF_INET, Int32(kind.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var one: Int32 = 1
    if kind == SOCK_STREAM { setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size)) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    return withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    } == 0
}

/// Waits until something accepts connections on the port.
func waitForPort(_ port: Int, timeout: TimeInterval = 20) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        close(fd)
        if r == 0 { return true }
        usleep(50_000)
    }
    return false
}

/// Polls until `condition` holds.
func eventually(timeout: TimeInterval = 10, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if condition() { return true }
        usleep(20_000)
    }
    return condition()
}

/// A child process (a hub, a broker, a receiver) that is killed when the test ends.
final class ChildProcess {
    let process = Process()
    let output: URL
    /// Its standard input, when it was started `interactive`.
    private var input: Pipe?

    init(_ executable: String, _ arguments: [String], environment: [String: String] = [:], directory: String? = nil, interactive: Bool = false) throws {
        output = FileManager.default.temporaryDirectory.appendingPathComponent("iotc-child-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: output.path, contents: nil)
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        let handle = try FileHandle(forWritingTo: output)
        process.standardOutput = handle
        process.standardError = handle
        if interactive {
            input = Pipe()
            process.standardInput = input
        }
        try withSignalsUnblocked { try process.run() }
    }

    /// Writes a line to its standard input.
    func send(_ line: String) {
        // A child that has exited closed its end: the write fails (EPIPE, SIGPIPE ignored) instead of
        // ending the test run.
        Glibc.signal(SIGPIPE, SIG_IGN)
        guard process.isRunning else { return }
        try? input?.fileHandleForWriting.write(contentsOf: Data((line + "\n").utf8))
    }

    var log: String { (try? String(contentsOf: output, encoding: .utf8)) ?? "" }
    var pid: Int32 { process.processIdentifier }

    func signal(_ s: Int32) { kill(process.processIdentifier, s) }

    @discardableResult
    func stop(_ s: Int32 = SIGTERM, timeout: TimeInterval = 15) -> Int32 {
        if process.isRunning { kill(process.processIdentifier, s) }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        return process.terminationStatus
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        try? FileManager.default.removeItem(at: output)
    }
}

/// Test threads (dispatch workers) block signals, and a spawned child inherits the mask: a broker or
/// hub started from one would ignore SIGTERM. Unblock them on this thread while spawning.
func withSignalsUnblocked<T>(_ body: () throws -> T) rethrows -> T {
    var unblock = sigset_t(), previous = sigset_t()
    sigemptyset(&unblock)
    for s in [SIGTERM, SIGINT, SIGHUP, SIGALRM] { sigaddset(&unblock, s) }
    pthread_sigmask(SIG_UNBLOCK, &unblock, &previous)
    defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
    return try body()
}

/// Runs a command to completion; returns its exit code and output.
@discardableResult
func run(_ executable: String, _ arguments: [String], directory: String? = nil, environment: [String: String] = [:]) throws -> (Int32, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = arguments
    if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
    var env = ProcessInfo.processInfo.environment
    for (k, v) in environment { env[k] = v }
    p.environment = env
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try withSignalsUnblocked { try p.run() }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// The path of a program on PATH, or nil.
func which(_ name: String) -> String? {
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let p = "\(dir)/\(name)"
        if FileManager.default.isExecutableFile(atPath: p) { return p }
    }
    return nil
}

/// A blocking HTTP request.
struct HTTPResult {
    var status: Int
    var headers: [String: String]
    var body: String
}

func http(_ method: String, _ url: String, body: [UInt8]? = nil, headers: [String: String] = [:], timeout: TimeInterval = 10) -> HTTPResult? {
    var r = URLRequest(url: URL(string: url)!, timeoutInterval: timeout)
    r.httpMethod = method
    if let body { r.httpBody = Data(body) }
    for (k, v) in headers { r.setValue(v, forHTTPHeaderField: k) }
    final class Box: @unchecked Sendable { var result: HTTPResult? }
    let box = Box()
    let done = DispatchSemaphore(value: 0)
    // A new session each time: a pooled connection could lead to an earlier test's hub on a reused port.
    let session = URLSession(configuration: .ephemeral)
    defer { session.finishTasksAndInvalidate() }
    session.dataTask(with: r) { data, response, _ in
        if let h = response as? HTTPURLResponse {
            var headers: [String: String] = [:]
            for (k, v) in h.allHeaderFields { headers[String(describing: k).lowercased()] = String(describing: v) }
            box.result = HTTPResult(status: h.statusCode, headers: headers, body: String(decoding: data ?? Data(), as: UTF8.self))
        }
        done.signal()
    }.resume()
    done.wait()
    return box.result
}

func postJSON(_ url: String, _ json: String, token: String? = nil) -> HTTPResult? {
    var h = ["Content-Type": "application/json"]
    if let token { h["Authorization"] = "Bearer \(token)" }
    return http("POST", url, body: Array(json.utf8), headers: h)
}

/// Runs a blocking call on its own thread (not the test's concurrency pool) and hands back its result.
final class Background<T>: @unchecked Sendable {
    private var result: T?
    private let done = DispatchSemaphore(value: 0)

    init(_ body: @escaping @Sendable () -> T) {
        let t = Thread { [self] in
            result = body()
            done.signal()
        }
        t.start()
    }

    func wait() -> T {
        done.wait()
        return result!
    }
}

/// Reads a JSON-lines file.
func jsonLines(_ path: String) -> [Value] {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
    return text.split(separator: "\n").compactMap { try? JSON.decode(String($0)) }
}

/// Loads pipeline text against the real plugins.
func loadConfig(_ yaml: String, file: String = "test.yaml", environment: [String: String] = [:]) throws -> HubConfig {
    var env = ProcessInfo.processInfo.environment
    for (k, v) in environment { env[k] = v }
    return try HubConfigLoader(catalog: Build.plugins.catalog, environment: env).load(texts: [(file, yaml)]).0
}

func makeHub(_ dir: TempDir) throws -> Hub {
    try Hub(plugins: Build.plugins, dataDirectory: dir.url.appendingPathComponent("data"), logger: Logger(label: "test"))
}

/// Test certificates in `dir`, made with openssl: a device CA (`ca.pem`, `ca.key`), a server certificate
/// for 127.0.0.1 and localhost (`cert.pem`, `key.pem`), and a device certificate signed by the CA
/// (`dev.pem`, `dev.key`, CN sensor-1).
func makeTestCertificates(in dir: TempDir) throws {
    func openssl(_ args: [String]) throws {
        let (code, out) = try run("/usr/bin/env", ["openssl"] + args)
        #expect(code == 0, "openssl \(args.first ?? ""): \(out)")
    }
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    try openssl(["req", "-x509"] + ec + ["-keyout", dir.path + "/ca.key", "-out", dir.path + "/ca.pem", "-days", "1", "-subj", "/CN=devices-ca"])
    try openssl(["req", "-x509"] + ec + ["-keyout", dir.path + "/key.pem", "-out", dir.path + "/cert.pem", "-days", "1", "-subj", "/CN=localhost",
                                         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
    try openssl(["req"] + ec + ["-keyout", dir.path + "/dev.key", "-out", dir.path + "/dev.csr", "-subj", "/CN=sensor-1"])
    try openssl(["x509", "-req", "-in", dir.path + "/dev.csr", "-CA", dir.path + "/ca.pem", "-CAkey", dir.path + "/ca.key",
                 "-CAcreateserial", "-out", dir.path + "/dev.pem", "-days", "1"])
}

extension Value {
    /// The string, when this is one.
    var string: String? { if case .string(let s) = self { s } else { nil } }
    /// The elements, when this is an array.
    var array: [Value]? { if case .array(let a) = self { a } else { nil } }
}

/// A hub started as users start it (`iotc serve`) on a pipeline file in its own folder, with an owner
/// key for the API and free ports for the UDP and DTLS listeners of the CoAP and LwM2M tests. The file
/// sink of those pipelines writes `out.jsonl` in the folder.
final class ServedHub {
    let dir = TempDir()
    let udp = freePort(), dtls = freePort(), api = freePort()
    let key: String
    private var process: ChildProcess?

    /// `pipelineFile` is the YAML, given the hub (its folder and ports).
    init(key: String, pipelineFile: (ServedHub) throws -> String, environment: [String: String] = [:]) throws {
        self.key = key
        let file = dir.write("hub.yaml", try pipelineFile(self))
        let p = try ChildProcess(Build.iotc, ["serve", file, "--data", dir.path + "/data", "--api", "127.0.0.1:\(api)", "--plugins", Build.directory],
                                 environment: environment.merging(["IOTC_BOOTSTRAP_KEY": key]) { a, _ in a })
        process = p
        #expect(waitForPort(api), "\(p.log)")
    }

    var lines: [Value] { jsonLines(dir.path + "/out.jsonl") }
    /// What the hub printed.
    var log: String { process?.log ?? "" }

    func call(_ method: String, _ path: String, _ body: String? = nil) -> HTTPResult {
        http(method, "http://127.0.0.1:\(api)\(path)", body: body.map { Array($0.utf8) },
             headers: ["Authorization": "Bearer \(key)", "Content-Type": "application/json"], timeout: 20) ?? HTTPResult(status: 0, headers: [:], body: "")
    }

    /// Sends a command and returns its record (the API waits up to 10 s for the answer).
    func command(_ device: String, _ name: String, _ payload: String) throws -> Value {
        try JSON.decode(call("POST", "/v1/devices/\(device)/commands", #"{"name":"\#(name)","payload":\#(payload),"timeout":10}"#).body)
    }

    /// Stops the hub as an operator does (SIGTERM); its exit status, 9 when it had to be killed.
    func stop(timeout: TimeInterval = 15) -> Int32 { process?.stop(timeout: timeout) ?? -1 }

    deinit { process?.stop() }
}

/// libcoap's client, waiting at most 5 s for an answer; its output (stdout and stderr).
func coapClient(_ args: [String]) throws -> String {
    let client = try #require(which("coap-client-openssl"), "coap-client-openssl is missing: run scripts/install-deps.sh test")
    return try run(client, ["-B", "5"] + args).1
}

/// A seeded generator (SplitMix64), for mutation tests that must run the same every time.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A log handler that keeps what is logged, for tests that check what a log line says.
final class LogCapture: LogHandler, @unchecked Sendable {
    private let lock = NSLock()
    private var kept: [LogEvent] = []
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) { lock.withLock { kept.append(event) } }
    var events: [LogEvent] { lock.withLock { kept } }
    /// "LEVEL message" per record.
    var lines: [String] { events.map { "\($0.level) \($0.message)" } }
}
