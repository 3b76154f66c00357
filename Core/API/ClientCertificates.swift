import Crypto
import Foundation
import IoTCKernel
import IoTCStore
import SwiftASN1
import X509

/// Client certificates issued by the tenants' certificate authorities. A device presents its chain in
/// its TLS handshake (which proves it holds the leaf's key); the leaf, and any intermediates the device
/// sent, must chain by signature to a registered authority, each certificate within its validity and
/// each issuer a CA. The leaf's subject common name is the device's id, in the authority's tenant.
/// A certificate in the authority's revocation list (the leaf, or the intermediate the authority
/// signed) is refused.
struct ClientCertificates: Sendable {
    struct Authority: Sendable {
        var record: CertificateAuthority
        var certificate: Certificate
        var revoked: Set<Certificate.SerialNumber> = []
    }

    /// Registered authorities by subject (more than one may share a subject; the signature decides).
    private var bySubject: [DistinguishedName: [Authority]] = [:]
    /// The registered authorities' ids, for closing connections when one is removed.
    private(set) var ids: Set<String> = []
    /// The credentials their revocation lists name (`AUTHORITY/SERIAL`), for closing connections made
    /// with a certificate once it is listed.
    private(set) var revokedIDs: Set<String> = []

    /// The longest chain followed from a leaf to a registered authority.
    static let maxDepth = 4

    /// The authorities of `records`. Those `earlier` already parsed (the same record, with the same
    /// revocation list) are taken from it: the directory reloads them every few seconds, and a list
    /// may hold many serials.
    init(_ records: [CertificateAuthority] = [], reusing earlier: ClientCertificates? = nil) {
        var parsed: [String: Authority] = [:]
        for list in earlier.map({ Array($0.bySubject.values) }) ?? [] { for a in list { parsed[a.record.id] = a } }
        for r in records {
            let authority: Authority
            if let known = parsed[r.id], known.record == r {
                authority = known
            } else {
                guard let c = try? Certificate(derEncoded: r.certificate) else { continue }
                // The API checked the list when it was set; one that no longer reads revokes nothing.
                let revoked = r.revocationList.flatMap { try? RevocationList.parse($0) }.map(\.revoked) ?? []
                authority = Authority(record: r, certificate: c, revoked: revoked)
            }
            bySubject[authority.certificate.subject, default: []].append(authority)
            ids.insert(r.id)
            for serial in authority.revoked { revokedIDs.insert(Self.credential(r.id, serial)) }
        }
    }

    /// Parses a PEM (or DER) authority certificate for registration: it must be a CA and in force.
    static func parseAuthority(_ text: String, now: Date = Date()) throws(AccountsError) -> (certificate: Certificate, der: [UInt8]) {
        let certificate: Certificate
        do { certificate = try Certificate(pemEncoded: text) } catch {
            throw AccountsError.invalid("the certificate is not a PEM X.509 certificate: \(String(describing: error).prefix(200))")
        }
        guard case .isCertificateAuthority? = try? certificate.extensions.basicConstraints else {
            throw AccountsError.invalid("the certificate is not a certificate authority (its basic constraints do not say CA)")
        }
        guard certificate.notValidAfter > now else { throw AccountsError.invalid("the certificate expired on \(certificate.notValidAfter)") }
        var serializer = DER.Serializer()
        do { try serializer.serialize(certificate) } catch { throw AccountsError.invalid("the certificate cannot be encoded: \(error)") }
        return (certificate, serializer.serializedBytes)
    }

    static func fingerprint(_ der: [UInt8]) -> [UInt8] { Array(SHA256.hash(data: der)) }

    /// The credential of a certificate an authority signed: `AUTHORITY/SERIAL` (serial in hex), revoked
    /// on its own once the authority's revocation list names it (and with the authority, its issuer).
    static func credential(_ authority: String, _ serial: Certificate.SerialNumber) -> String {
        authority + "/" + serial.bytes.map { String(format: "%02x", $0) }.joined()
    }

    /// The device a chain names, when a registered authority issued it; nil otherwise.
    func grant(_ chain: [[UInt8]], now: Date = Date()) -> DirectoryGrant? {
        guard !bySubject.isEmpty, let first = chain.first, let leaf = try? Certificate(derEncoded: first),
              Self.inForce(leaf, now), let device = Self.commonName(leaf.subject), Devices.isValidID(device) else { return nil }
        let intermediates = chain.dropFirst().prefix(Self.maxDepth).compactMap { try? Certificate(derEncoded: $0) }
        var current = leaf
        for _ in 0...Self.maxDepth {
            if let ca = bySubject[current.issuer]?.first(where: { $0.certificate.publicKey.isValidSignature(current.signature, for: current) }) {
                guard Self.inForce(ca.certificate, now), !ca.revoked.contains(current.serialNumber) else { return nil }
                return DirectoryGrant(tenant: ca.record.tenant, device: device, credential: Self.credential(ca.record.id, current.serialNumber),
                                      issuer: ca.record.id, profile: ca.record.profile)
            }
            guard let issuer = intermediates.first(where: { $0.subject == current.issuer && $0.publicKey.isValidSignature(current.signature, for: current) }),
                  Self.inForce(issuer, now), case .isCertificateAuthority? = try? issuer.extensions.basicConstraints else { return nil }
            current = issuer
        }
        return nil
    }

    static func inForce(_ c: Certificate, _ now: Date) -> Bool { c.notValidBefore <= now && now <= c.notValidAfter }

    static func commonName(_ name: DistinguishedName) -> String? {
        for rdn in name { for a in rdn where a.type == .RDNAttributeType.commonName { return String(a.value) } }
        return nil
    }
}
