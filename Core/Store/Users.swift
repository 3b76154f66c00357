import Crypto
import CryptoExtras
import Foundation
import IoTCPluginKit

/// A team member of a tenant: an e-mail address, a name, a role and a password kept only as a slow hash.
public struct User: Sendable, Equatable {
    public var tenant: String
    public var email: String
    public var name: String
    public var role: Role
    public var createdAt: Int64
}

/// Users and their passwords. Passwords are hashed with PBKDF2-HMAC-SHA256 (210,000 rounds, 16 random
/// bytes of salt), stored as `pbkdf2-sha256$ROUNDS$SALT$HASH` so that the rounds can rise later. A user
/// logs in for a session: an API key with the user's role that expires after `sessionLifetime`.
extension Accounts {
    public static let passwordRounds = 210_000
    public static let sessionLifetime: Int64 = 12 * 3600 * 1000

    public func createUser(tenant: String, email: String, name: String, role: Role, password: String) async throws -> User {
        // Checked byte by byte: "@" followed by a combining mark is one Character, not an "@".
        let at = UInt8(ascii: "@"), bytes = email.utf8
        guard email.unicodeScalars.count <= 254, bytes.filter({ $0 == at }).count == 1, bytes.first != at, bytes.last != at,
              !bytes.contains(UInt8(ascii: " ")) else {
            throw AccountsError.invalid("'\(email.prefix(64))' is not an e-mail address")
        }
        let email = email.lowercased()
        guard name.unicodeScalars.count <= 200 else { throw AccountsError.invalid("a name is at most 200 characters") }
        guard password.unicodeScalars.count >= 12, password.unicodeScalars.count <= 1024 else { throw AccountsError.invalid("a password is 12 to 1024 characters") }
        let hash = try Self.hashPassword(password)
        let now = clock()
        try await store.transaction { db in
            try await Accounts.requireTenant(db, tenant)
            guard try await db.query("SELECT email FROM users WHERE tenant_id = ? AND email = ?", [.text(tenant), .text(email)]).isEmpty else {
                throw AccountsError.conflict("user '\(email)' exists")
            }
            try await db.execute("INSERT INTO users (tenant_id, email, name, role, password_hash, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                                 [.text(tenant), .text(email), .text(name), .text(role.rawValue), .text(hash), .integer(now)])
        }
        return User(tenant: tenant, email: email, name: name, role: role, createdAt: now)
    }

    public func users(tenant: String) async throws -> [User] {
        try await store.query("SELECT tenant_id, email, name, role, created_at FROM users WHERE tenant_id = ? ORDER BY email", [.text(tenant)]).map {
            User(tenant: $0.string("tenant_id") ?? "", email: $0.string("email") ?? "", name: $0.string("name") ?? "",
                 role: Role(rawValue: $0.string("role") ?? "") ?? .viewer, createdAt: $0.int("created_at") ?? 0)
        }
    }

    public func deleteUser(tenant: String, email: String) async throws -> Bool {
        try await store.execute("DELETE FROM users WHERE tenant_id = ? AND email = ?", [.text(tenant), .text(email.lowercased())]) == 1
    }

    /// Checks a user's password; on success issues a session key with the user's role. The same work
    /// is done for an unknown user as for a wrong password, so the answer's timing tells nothing.
    public func login(tenant: String, email: String, password: String) async throws -> (key: APIKey, secret: String)? {
        let row = try await store.query("SELECT role, password_hash FROM users WHERE tenant_id = ? AND email = ?",
                                        [.text(tenant), .text(email.lowercased())]).first
        let stored = row?.string("password_hash") ?? Self.decoyHash
        guard Self.verifyPassword(password, stored), let row, let role = Role(rawValue: row.string("role") ?? "") else { return nil }
        return try await createKey(tenant: tenant, name: "session of \(email.lowercased())", role: role, expiresAt: clock() + Self.sessionLifetime)
    }

    static func hashPassword(_ password: String, rounds: Int = passwordRounds) throws -> String {
        var rng = SystemRandomNumberGenerator()
        let salt = (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let key = try KDF.Insecure.PBKDF2.deriveKey(from: Array(password.utf8), salt: salt, using: .sha256, outputByteCount: 32, unsafeUncheckedRounds: rounds)
        let hash = key.withUnsafeBytes { Data($0) }
        return "pbkdf2-sha256$\(rounds)$\(Data(salt).base64EncodedString())$\(hash.base64EncodedString())"
    }

    static func verifyPassword(_ password: String, _ stored: String) -> Bool {
        let parts = stored.split(separator: "$")
        guard parts.count == 4, parts[0] == "pbkdf2-sha256", let rounds = Int(parts[1]), rounds >= 1,
              let salt = Data(base64Encoded: String(parts[2])), let expected = Data(base64Encoded: String(parts[3])),
              let key = try? KDF.Insecure.PBKDF2.deriveKey(from: Array(password.utf8), salt: salt, using: .sha256,
                                                          outputByteCount: expected.count, unsafeUncheckedRounds: rounds)
        else { return false }
        return key.withUnsafeBytes { ConstantTime.equal($0, expected) }
    }

    /// Checked against when the user does not exist, at the same cost as a real one.
    static let decoyHash = (try? hashPassword("not a password of anyone")) ?? ""
}
