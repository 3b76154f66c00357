import Crypto
import Foundation

/// Seals secrets that the hub must be able to read back (DTLS pre-shared keys: the server needs the
/// key itself, not a hash of it) with AES-256-GCM under the hub's secret key. The key comes from
/// `IOTC_SECRET_KEY` (64 hex digits; every node of a PostgreSQL store needs the same one) or, on a
/// single node, from `DATA/secret.key`, made at the first start and readable by its owner only.
public struct SecretBox: Sendable {
    let key: SymmetricKey

    public init(key: [UInt8]) throws {
        guard key.count == 32 else { throw AccountsError.invalid("the secret key is 32 bytes (64 hex digits)") }
        self.key = SymmetricKey(data: key)
    }

    /// The hub's box: from `environment` when it names a key, else from (or into) `file`.
    public static func load(environment: String?, file: String) throws -> SecretBox {
        if let hex = environment {
            guard let bytes = Devices.hexBytes(hex) else { throw AccountsError.invalid("IOTC_SECRET_KEY is 64 hex digits") }
            return try SecretBox(key: bytes)
        }
        if let data = FileManager.default.contents(atPath: file) {
            guard let bytes = Devices.hexBytes(String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) else {
                throw AccountsError.invalid("\(file) does not hold 64 hex digits")
            }
            return try SecretBox(key: bytes)
        }
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let hex = bytes.map { String(format: "%02x", $0) }.joined()
        guard FileManager.default.createFile(atPath: file, contents: Data(hex.utf8), attributes: [.posixPermissions: 0o600]) else {
            throw AccountsError.invalid("cannot write \(file)")
        }
        return try SecretBox(key: bytes)
    }

    public func seal(_ plain: [UInt8]) throws -> [UInt8] { Array(try AES.GCM.seal(plain, using: key).combined!) }

    public func open(_ sealed: [UInt8]) throws -> [UInt8] { Array(try AES.GCM.open(AES.GCM.SealedBox(combined: sealed), using: key)) }
}
