import ArgumentParser
import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import IoTCAPI
import IoTCKernel
import IoTCNetworking
import IoTCPluginKit
import IoTCStore
import Logging
import Metrics
import Prometheus
import ServiceLifecycle

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the hub with pipeline files (default: pipelines/default.yaml).")

    @OptionGroup var plugins: PluginOptions
    @Argument(help: "Pipeline files.") var files: [String] = []
    @Option(help: "Data folder (write-ahead logs, dead letters).") var data = "data"
    @Option(help: "Most dead letters kept; past it the oldest tenth is removed.") var maxDeadLetters = DeadLetterStore.defaultMaxEntries
    @Option(help: "Most bytes of dead letters kept; past it the oldest are removed down to nine tenths.") var maxDeadLetterBytes = DeadLetterStore.defaultMaxBytes
    @Option(help: "Address of the operator API (metrics, health, dead letters, commands).") var api = "127.0.0.1:8080"
    @Option(help: "Log level: trace, debug, info, notice, warning, error.") var logLevel = "info"
    @Option(help: "The store: sqlite:PATH (default: sqlite:DATA/iotc.db) or postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=verify-full&sslrootcert=PATH]; also IOTC_STORE.")
    var store: String?
    @Option(help: "Serve the operator API over TLS with this certificate chain (PEM); also IOTC_API_TLS_CERT.") var apiTLSCert: String?
    @Option(help: "The private key (PEM) of --api-tls-cert; also IOTC_API_TLS_KEY.") var apiTLSKey: String?
    @Option(help: "Seconds an operator API connection may wait with no request, or between the parts of one, before it is closed (answers being written, event streams among them, are not cut).")
    var apiIdleTimeout = 60.0

    /// The API's TLS configuration when a certificate and key are given (both or neither).
    func apiTLS(_ environment: [String: String]) throws -> TLSConfiguration? {
        let cert = apiTLSCert ?? environment["IOTC_API_TLS_CERT"], key = apiTLSKey ?? environment["IOTC_API_TLS_KEY"]
        guard cert != nil || key != nil else { return nil }
        guard let cert, let key else { throw ValidationError("--api-tls-cert and --api-tls-key go together") }
        do {
            return TLSConfiguration.makeServerConfiguration(certificateChain: try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) },
                                                            privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
        } catch {
            throw ValidationError("cannot read the API's TLS certificate or key (\(cert), \(key)): \(error)")
        }
    }

    func run() async throws {
        let started = Date()
        // The hub keeps its times in UTC. Foundation's default zone set to UTC also spares looking the
        // system's zone up in ICU's data when the API server starts (about 2 MiB resident, idle).
        NSTimeZone.default = TimeZone(secondsFromGMT: 0)!
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = OneLineLogHandler(StreamLogHandler.standardError(label: label))
            h.logLevel = level
            return h
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let logger = Logger(label: "iotc")

        let pipelineFiles = files.isEmpty ? ["pipelines/default.yaml"] : files
        let set = plugins.load()
        let loader = HubConfigLoader(catalog: set.catalog)
        let config: HubConfig
        do {
            let (c, warnings) = try loader.load(files: pipelineFiles)
            printDiagnostics(warnings)
            config = c
        } catch {
            printDiagnostics(error.diagnostics)
            throw ExitCode(1)
        }
        guard let apiAddress = HostPort(api) else {
            throw ValidationError("--api should be HOST:PORT")
        }
        let environment = ProcessInfo.processInfo.environment
        let tls = try apiTLS(environment)
        let storeURL = store ?? environment["IOTC_STORE"] ?? "sqlite:\(data)/iotc.db"
        let db: any Store
        let bootstrapKey: String?
        do {
            db = try await openStore(storeURL)
            bootstrapKey = try await Accounts(store: db).bootstrap(presetKey: environment["IOTC_BOOTSTRAP_KEY"])
        } catch {
            // The URL may hold a password: name the engine only.
            logger.error("cannot open the store (\(storeURL.hasPrefix("sqlite:") ? storeURL : "PostgreSQL")): \(error)")
            throw ExitCode(1)
        }
        let accounts = Accounts(store: db)
        // Devices authenticate against the registry's credentials, held in memory.
        guard maxDeadLetters > 0, maxDeadLetterBytes > 0 else {
            logger.error("--max-dead-letters and --max-dead-letter-bytes must be positive")
            throw ExitCode(1)
        }
        let hub = try Hub(plugins: set, dataDirectory: URL(fileURLWithPath: data), logger: logger, maxDeadLetters: maxDeadLetters,
                          maxDeadLetterBytes: maxDeadLetterBytes)
        // A revoked credential also closes the connections made with it.
        // Pre-shared keys are kept sealed under the hub's secret key.
        let box: SecretBox
        do { box = try SecretBox.load(environment: environment["IOTC_SECRET_KEY"], file: data + "/secret.key") } catch {
            logger.error("cannot load the hub's secret key: \(error)")
            throw ExitCode(1)
        }
        let directory = RegistryDirectory(devices: Devices(store: db), box: box, authorities: CertificateAuthorities(store: db)) { [weak hub] gone in
            hub?.revoke(credentials: gone)
        }
        do { try await directory.refresh() } catch {
            logger.error("cannot load device credentials: \(error)")
            throw ExitCode(1)
        }
        hub.attach(directory: directory)
        hub.attach(store: db)
        let audit = AuditLog(store: db)
        hub.observeAuthFailures { f in
            Task {
                _ = try? await audit.record(AuditEntry(tenant: "system", actor: "device:\(f.device)", action: "device.auth.failed",
                                                       target: "\(f.protocolName) source \(f.source)", source: f.remoteAddress, outcome: "denied"))
            }
        }
        let freshness = Task { await directory.keepFresh(logger: logger) }
        defer { freshness.cancel() }
        // Telemetry retention: at start, then every hour.
        let retention = Task {
            while !Task.isCancelled {
                do {
                    let n = try await accounts.applyRetention()
                    if n > 0 { logger.info("retention: deleted \(n) telemetry points") }
                } catch {
                    logger.warning("retention failed: \(error)")
                }
                try? await Task.sleep(nanoseconds: 3600 * 1_000_000_000)
            }
        }
        defer { retention.cancel() }
        // What the hub saw of each device survives restarts: kept in the store, written every 2 seconds.
        let registryDevices = Devices(store: db)
        do { hub.restore(states: try await registryDevices.states()) } catch { logger.warning("cannot load device states: \(error)") }
        let statesTrouble = FailureNotice()
        let saveStates: @Sendable () async -> Void = {
            let states = hub.takeChangedStates()
            do {
                try await registryDevices.saveStates(states)
                if statesTrouble.worked() { logger.notice("device states are saved again") }
            } catch {
                hub.returnUnsaved(states)  // tried again in 2 seconds
                if statesTrouble.failed() { logger.warning("cannot save device states (tried again every 2 s, logged again when it works): \(error)") }
            }
        }
        let stateWriter = Task {
            while !Task.isCancelled {
                try? await Task.sleep(nanoseconds: 2_000_000_000)
                await saveStates()
            }
        }
        defer { stateWriter.cancel() }
        // Commands: answers from devices settle them; queued ones go to devices as they connect.
        let commands = CommandCenter(hub: hub, commands: Commands(store: db), logger: logger)
        commands.attach()
        let commandQueue = Task { await commands.run() }
        defer { commandQueue.cancel() }
        do { try hub.start(config) } catch {
            logger.error("\(error)")
            hub.stop(timeout: 5)
            throw ExitCode(1)
        }
        if config.auth.allowAnonymous { logger.warning("auth.allow_anonymous is on: devices without credentials are accepted") }

        let reloader = PipelineFiles(hub: hub, loader: loader, files: pipelineFiles, logger: logger)
        let router = HubAPI.router(hub: hub, accounts: accounts, directory: directory, commands: commands, pipelines: reloader, registry: registry,
                                   version: IOTC.version)
        var banner = Banner(started: started, api: (tls == nil ? "http://" : "https://") + api, data: data, hub: hub, config: config)
        banner.store = storeURL.hasPrefix("sqlite:") ? "SQLite \(storeURL.dropFirst(7))" : "PostgreSQL"
        banner.bootstrap = bootstrapKey.map { environment["IOTC_BOOTSTRAP_KEY"] == nil ? .generated($0) : .preset }
        let configuration = ApplicationConfiguration(address: .hostname(apiAddress.host, port: apiAddress.port), serverName: "iotc")
        let services: [any Service] = [HubService(hub: hub, reloader: reloader)]
        guard apiIdleTimeout > 0 else { throw ValidationError("--api-idle-timeout must be positive") }
        // Without it, a connection that sends nothing (or a request a byte at a time) stays for good.
        let http1 = HTTPServerBuilder.http1(configuration: .init(additionalChannelHandlers: [ContinueHandler()],
                                                                 idleTimeout: .milliseconds(Int64(apiIdleTimeout * 1000))))
        try await Application(router: router, server: try tls.map { try .tls(http1, tlsConfiguration: $0) } ?? http1, configuration: configuration,
                              services: services, onServerRunning: { [banner, logger] listener in
                                  // Out of descriptors, the listener waits instead of spinning.
                                  let failures = Counter(label: "iotc_accept_failures_total", dimensions: [("listener", "api")])
                                  try? await listener.pipeline.addHandler(AcceptFailures(
                                      listener: "api", remedy: "raise the open-file limit", log: { logger.error("\($0)") }, count: { failures.increment() }),
                                      position: .first)
                                  banner.print()
                              }, logger: logger).runService()
        stateWriter.cancel()
        await saveStates()
        // The store's users stop before it closes (each would otherwise fail once against a closed
        // store), and are waited for, as each may be mid-query.
        for task in [freshness, retention, commandQueue] { task.cancel() }
        for task in [freshness, retention, commandQueue] { await task.value }
        await db.close()
    }
}

/// Runs until shutdown, reloading on SIGHUP, then drains the hub.
struct HubService: Service {
    let hub: Hub
    let reloader: PipelineFiles

    func run() async throws {
        let hangups = AsyncStream<Void> { continuation in
            signal(SIGHUP, SIG_IGN)
            let source = SignalSource(SIGHUP) { continuation.yield() }
            continuation.onTermination = { _ in source.cancel() }
        }
        await withGracefulShutdownHandler {
            for await _ in hangups.cancelOnGracefulShutdown() {
                _ = await reloader.reload()
            }
        } onGracefulShutdown: {
            reloader.logger.info("shutting down: draining pipelines and sinks")
        }
        hub.stop()
        reloader.logger.info("stopped")
    }
}

struct Banner: Sendable {
    let started: Date
    let api: String
    let data: String
    let hub: Hub
    let config: HubConfig
    var store = ""
    /// What the first start created, to show once.
    enum Bootstrap { case generated(String), preset }
    var bootstrap: Bootstrap?
    /// Where a generated owner key is written, in the data folder, when standard output is not a terminal.
    static let ownerKeyFile = "owner-key"

    /// Writes `text` to a new file that only this user may read (0600); false if it exists or cannot be made.
    static func writePrivately(_ text: String, to path: String) -> Bool {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        return bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == bytes.count
    }

    func print() {
        let s = hub.status
        var lines = ["IoT Connect Center \(IOTC.version) ready in \(String(format: "%.2f", Date().timeIntervalSince(started))) s"]
        lines.append("  api        \(api)  (/health, /metrics, /openapi.json, /v1)")
        lines.append("  data       \(data)")
        lines.append("  store      \(store)")
        lines.append("  plugins    " + hub.plugins.libraries.map { "\($0.name) \($0.version)" }.sorted().joined(separator: ", "))
        for src in config.sources {
            // As the plugin's own log lines: a reference's value shows as "…".
            let listen = src.config["listen"].flatMap { if case .string(let l) = $0 { " on \(src.concealed(l))" } else { nil } } ?? ""
            lines.append("  source     \(src.name) (\(src.component)\(listen))")
        }
        for sink in s.sinks { lines.append("  sink       \(sink.name) (\(sink.component))") }
        for p in config.pipelines {
            lines.append("  pipeline   \(p.name): \(p.from.map { $0.source + ($0.filter.map { ":\($0)" } ?? "") }.joined(separator: ", ")) -> \(p.to.joined(separator: ", "))\(p.durable ? " (durable)" : "")")
        }
        switch bootstrap {
        case .generated(let key)? where isatty(STDOUT_FILENO) == 1:
            // Shown on the terminal once, never logged: the store keeps only its hash.
            lines.append("")
            lines.append("  First start: created the system tenant and its owner API key. It is shown only now; keep it safe:")
            lines.append("    \(key)")
            lines.append("  Use it as a bearer token, e.g.: curl -H 'Authorization: Bearer \(key)' \(api)/v1/whoami")
        case .generated(let key)?:
            // Standard output is a file, a pipe or a journal: a log. The key goes to a file only this
            // user can read instead.
            let file = (data as NSString).appendingPathComponent(Self.ownerKeyFile)
            lines.append("")
            if Self.writePrivately(key + "\n", to: file) {
                lines.append("  First start: created the system tenant and its owner API key, written to \(file) (readable by this user only;")
                lines.append("  not shown here, as standard output is not a terminal). Keep the key safe and delete the file.")
                lines.append("  Use it as a bearer token, e.g.: curl -H \"Authorization: Bearer $(cat \(file))\" \(api)/v1/whoami")
            } else {
                lines.append("  First start: created the system tenant and its owner API key, but could not write it to \(file): it is not")
                lines.append("  shown here, as standard output is not a terminal. Start again on a fresh data folder, or set IOTC_BOOTSTRAP_KEY.")
            }
        case .preset?:
            lines.append("  first start: created the system tenant with the owner key from IOTC_BOOTSTRAP_KEY")
        case nil:
            break
        }
        FileHandle.standardOutput.write(Data((lines.joined(separator: "\n") + "\n").utf8))
    }
}

/// A dispatch signal source that may be cancelled from any thread.
final class SignalSource: @unchecked Sendable {
    private let source: any DispatchSourceSignal

    init(_ signal: Int32, handler: @escaping @Sendable () -> Void) {
        source = DispatchSource.makeSignalSource(signal: signal, queue: .global())
        source.setEventHandler(handler: handler)
        source.resume()
    }

    func cancel() { source.cancel() }
}
