import ArgumentParser
import Foundation
import IoTCStore

struct Audit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check the audit log.", subcommands: [Verify.self])

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Prove the audit log's hash chain untouched, or name the first entry that was changed or removed.")
        @Option(help: "Data folder (for the default SQLite store).") var data = "data"
        @Option(help: "The store, as for iotc serve; also IOTC_STORE.") var store: String?

        func run() async throws {
            let url = store ?? ProcessInfo.processInfo.environment["IOTC_STORE"] ?? "sqlite:\(data)/iotc.db"
            if url.hasPrefix("sqlite:"), !FileManager.default.fileExists(atPath: String(url.dropFirst(7))) {
                throw ValidationError("no store at \(url.dropFirst(7)); name it with --data or --store")
            }
            let db = try await openStore(url)
            let result = try await AuditLog(store: db).verify()
            await db.close()
            if let broken = result.firstBroken {
                print("audit log BROKEN at entry \(broken): \(result.reason ?? "") (\(result.entries) entries read)")
                throw ExitCode(1)
            }
            print("audit log intact: \(result.entries) entries, hash chain verified")
        }
    }
}
