import ArgumentParser
import Foundation
import IoTCAPI
import IoTCPluginKit
import IoTCStore

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks that print figures (build with -c release).", subcommands: [StoreBench.self, ProvisionBench.self, RulesBench.self])
}

/// The store's figures: telemetry write throughput in batches, a day of 1-second data queried in
/// 1-minute buckets, and device authentications per second with 100,000 provisioned devices.
struct StoreBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "store", abstract: "Store write, query and device-authentication figures.")
    @Option(help: "The store (default: a fresh SQLite file in a temporary folder).") var store: String?
    @Option(help: "Telemetry points to write.") var points = 1_000_000
    @Option(help: "Points per batch (one transaction each).") var batch = 1000
    @Option(help: "Devices to provision for the authentication figure.") var devices = 100_000

    func run() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("iotc-bench-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let db = try await openStore(store ?? "sqlite:\(dir.path)/bench.db")
        defer { Task { await db.close() } }
        print("store: \(db.engine.rawValue)\(store == nil ? " (a fresh file)" : ""), \(ProcessInfo.processInfo.activeProcessorCount) cores")
        let telemetry = Telemetry(store: db)

        // 1. Writes: 100 devices, points one second apart, `batch` points per transaction.
        var written = 0
        let start = Date()
        while written < points {
            let n = min(batch, points - written)
            let chunk = (0..<n).map { i -> TelemetryPoint in
                let k = written + i
                return TelemetryPoint(tenant: "bench", device: "d\(k % 100)", key: "rpm", time: 1_700_000_000_000 + Int64(k / 100) * 1000, value: Double(k % 5000))
            }
            try await telemetry.write(chunk)
            written += n
        }
        let writeSeconds = Date().timeIntervalSince(start)
        print(String(format: "telemetry writes: %d points in %.2f s = %.0f points/s (batches of %d; target >= 100,000)", written, writeSeconds, Double(written) / writeSeconds, batch))

        // 2. A day of 1-second data for one device, in 1-minute buckets.
        var day = 0
        while day < 86_400 {
            let n = min(5000, 86_400 - day)
            try await telemetry.write((0..<n).map { TelemetryPoint(tenant: "bench", device: "day", key: "temp", time: 1_700_000_000_000 + Int64(day + $0) * 1000, value: Double($0 % 100)) })
            day += n
        }
        var latencies: [Double] = []
        for _ in 0..<21 {
            let t0 = Date()
            let buckets = try await telemetry.aggregate(tenant: "bench", device: "day", key: "temp", from: 1_700_000_000_000, to: 1_700_000_000_000 + 86_400_000, bucket: 60_000, .avg)
            latencies.append(Date().timeIntervalSince(t0) * 1000)
            precondition(buckets.count == 1440, "expected 1440 buckets, got \(buckets.count)")
        }
        latencies.sort()
        print(String(format: "query: a day of 1 s data (86,400 points) in 1-minute buckets (1,440 averages): median %.1f ms, max %.1f ms (target < 50 ms)", latencies[10], latencies[20]))

        // 3. Authentication from memory with `devices` provisioned devices, as on MQTT CONNECT.
        let t1 = Date()
        let tokens = try await ProvisionBench.provision(db, tenant: "fleet", devices: devices).map(\.token)
        let registry = Devices(store: db)
        print(String(format: "provisioned %d devices with tokens in %.1f s", devices, Date().timeIntervalSince(t1)))
        let directory = RegistryDirectory(devices: registry)
        let t2 = Date()
        try await directory.refresh()
        print(String(format: "loaded %d credentials into memory in %.2f s", tokens.count, Date().timeIntervalSince(t2)))
        let attempts = 200_000
        var ok = 0
        let t3 = Date()
        for i in 0..<attempts {
            let token = tokens[(i &* 7919) % tokens.count]
            if directory.authenticate(Credentials(protocolName: "mqtt", device: "", secret: token)) != nil { ok += 1 }
        }
        let authSeconds = Date().timeIntervalSince(t3)
        precondition(ok == attempts, "\(attempts - ok) authentications failed")
        print(String(format: "device authentications (registry tokens, in memory, one thread): %.0f/s (target >= 20,000 on MQTT CONNECT)", Double(attempts) / authSeconds))
    }
}

/// Provisions a fleet for the MQTT CONNECT benchmark (`Benchmarks/mqtt-auth.sh`): a tenant with
/// `devices` devices, each with a token, written to `--out` as "DEVICE TOKEN" lines.
struct ProvisionBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "provision", abstract: "Provision a fleet of devices with tokens into a store.")
    @Option(help: "The store.") var store: String
    @Option(help: "Devices to provision.") var devices = 100_000
    @Option(help: "The tenant to create them in.") var tenant = "fleet"
    @Option(help: "Where to write the DEVICE TOKEN lines.") var out: String

    func run() async throws {
        let db = try await openStore(store)
        let t0 = Date()
        let fleet = try await Self.provision(db, tenant: tenant, devices: devices)
        await db.close()
        try fleet.map { "\($0.device) \($0.token)" }.joined(separator: "\n").write(toFile: out, atomically: true, encoding: .utf8)
        print(String(format: "provisioned %d devices with tokens in tenant %@ in %.1f s", devices, tenant, Date().timeIntervalSince(t0)))
    }

    /// Creates the tenant and `devices` devices (`dev-0`, `dev-1`, ...) with a token each, a thousand per transaction.
    static func provision(_ db: any Store, tenant: String, devices: Int) async throws -> [(device: String, token: String)] {
        _ = try await Accounts(store: db).createTenant(id: tenant, name: tenant)
        let registry = Devices(store: db)
        var fleet: [(device: String, token: String)] = []
        fleet.reserveCapacity(devices)
        // As bulk provisioning through the API does it, 10,000 devices a time.
        for start in stride(from: 0, to: devices, by: 10_000) {
            let ids = (start..<min(devices, start + 10_000)).map { "dev-\($0)" }
            let outcomes = try await registry.createMany(tenant: tenant, ids.map { Devices.NewDevice(id: $0) }, tokens: true)
            for (id, outcome) in zip(ids, outcomes) {
                guard case .created(let token?) = outcome else { throw AccountsError.conflict("device '\(id)' was not created: \(outcome)") }
                fleet.append((id, token))
            }
        }
        return fleet
    }
}
