import Foundation
import IoTCPluginKit
import IoTCStore
import SwiftASN1
import X509

/// An X.509 certificate revocation list (RFC 5280 section 5), as a certificate authority publishes
/// it: the serial numbers of the certificates it issued and revoked, signed with its key. Only what
/// the hub needs is read (issuer, validity, serials and the signature); extensions are not.
struct RevocationList: Sendable {
    var issuer: DistinguishedName
    var thisUpdate: Date
    var nextUpdate: Date?
    var revoked: Set<Certificate.SerialNumber>
    /// The whole list, DER.
    var der: [UInt8]
    /// The signed part, its algorithm and the signature.
    private var signed: [UInt8]
    private var algorithm: Certificate.SignatureAlgorithm?
    private var signature: [UInt8]

    /// Reads a PEM (`-----BEGIN X509 CRL-----`) or DER list.
    static func parse(_ bytes: [UInt8]) throws(AccountsError) -> RevocationList {
        var der = bytes
        if let text = String(validating: bytes, as: UTF8.self), text.contains("-----BEGIN") {
            guard let document = try? PEMDocument(pemString: text), document.discriminator == "X509 CRL" else {
                throw AccountsError.invalid("the revocation list is not a PEM 'X509 CRL' document")
            }
            der = document.derBytes
        }
        do { return try RevocationList(der: der) } catch let e as AccountsError { throw e } catch {
            throw AccountsError.invalid("the revocation list is not a DER X.509 CRL: \(String(describing: error).prefix(200))")
        }
    }

    private init(der: [UInt8]) throws {
        var parsed: (DistinguishedName, Date, Date?, Set<Certificate.SerialNumber>)?
        var signed: [UInt8] = [], algorithmOID: ASN1ObjectIdentifier?, signature: [UInt8] = []
        try DER.sequence(try DER.parse(der), identifier: .sequence) { list in
            guard let tbs = list.next(), let algorithm = list.next(), let value = list.next() else {
                throw AccountsError.invalid("the revocation list is incomplete")
            }
            signed = Array(tbs.encodedBytes)
            algorithmOID = try DER.sequence(algorithm, identifier: .sequence) { a in
                let oid = try ASN1ObjectIdentifier(derEncoded: &a)
                while a.next() != nil {}
                return oid
            }
            signature = Array(try ASN1BitString(derEncoded: value).bytes)
            parsed = try DER.sequence(tbs, identifier: .sequence) { t in try Self.readSigned(&t) }
        }
        guard let (issuer, thisUpdate, nextUpdate, revoked) = parsed else { throw AccountsError.invalid("the revocation list is empty") }
        self.issuer = issuer
        self.thisUpdate = thisUpdate
        self.nextUpdate = nextUpdate
        self.revoked = revoked
        self.der = der
        self.signed = signed
        self.signature = signature
        self.algorithm = algorithmOID.flatMap(Self.algorithms)
    }

    /// TBSCertList: version, signature algorithm, issuer, thisUpdate, nextUpdate, revoked certificates,
    /// extensions.
    private static func readSigned(_ t: inout ASN1NodeCollection.Iterator) throws -> (DistinguishedName, Date, Date?, Set<Certificate.SerialNumber>) {
        var node = t.next()
        if let n = node, n.identifier == .integer {
            guard try Int(derEncoded: n) == 1 else { throw AccountsError.invalid("the revocation list is not version 2") }
            node = t.next()
        }
        guard let issuerNode = t.next() else { throw AccountsError.invalid("the revocation list names no issuer") }
        let issuer = try DistinguishedName(derEncoded: issuerNode)
        guard let thisNode = t.next(), let thisUpdate = try time(thisNode) else { throw AccountsError.invalid("the revocation list has no thisUpdate") }
        node = t.next()
        var nextUpdate: Date?
        if let n = node, let time = try time(n) {
            nextUpdate = time
            node = t.next()
        }
        var revoked: Set<Certificate.SerialNumber> = []
        if let n = node, n.identifier == .sequence {
            try DER.sequence(n, identifier: .sequence) { entries in
                while let entry = entries.next() {
                    try DER.sequence(entry, identifier: .sequence) { fields in
                        revoked.insert(Certificate.SerialNumber(bytes: try ArraySlice<UInt8>(derEncoded: &fields)))
                        while fields.next() != nil {}
                    }
                }
            }
            node = t.next()
        }
        // Extensions ([0]) are not read.
        while node != nil { node = t.next() }
        return (issuer, thisUpdate, nextUpdate, revoked)
    }

    /// A UTCTime or GeneralizedTime; nil for a node of another type.
    private static func time(_ node: ASN1Node) throws -> Date? {
        let parts: (Int, Int, Int, Int, Int, Int)
        if node.identifier == UTCTime.defaultIdentifier {
            let u = try UTCTime(derEncoded: node)
            parts = (u.year, u.month, u.day, u.hours, u.minutes, u.seconds)
        } else if node.identifier == GeneralizedTime.defaultIdentifier {
            let g = try GeneralizedTime(derEncoded: node)
            parts = (g.year, g.month, g.day, g.hours, g.minutes, g.seconds)
        } else {
            return nil
        }
        let (y, m, d, hh, mm, ss) = parts
        let days = RFC3339.days(fromCivil: Int64(y), Int64(m), Int64(d))
        return Date(timeIntervalSince1970: TimeInterval(days * 86_400 + Int64(hh * 3600 + mm * 60 + ss)))
    }

    /// The signature algorithms a list may be signed with, by object identifier.
    private static func algorithms(_ oid: ASN1ObjectIdentifier) -> Certificate.SignatureAlgorithm? {
        switch oid.description {
        case "1.2.840.10045.4.3.2": .ecdsaWithSHA256
        case "1.2.840.10045.4.3.3": .ecdsaWithSHA384
        case "1.2.840.10045.4.3.4": .ecdsaWithSHA512
        case "1.2.840.113549.1.1.11": .sha256WithRSAEncryption
        case "1.2.840.113549.1.1.12": .sha384WithRSAEncryption
        case "1.2.840.113549.1.1.13": .sha512WithRSAEncryption
        case "1.3.101.112": .ed25519
        default: nil
        }
    }

    /// Whether `authority` issued this list: its subject is the list's issuer and its key signed it.
    func isIssued(by authority: Certificate) -> Bool {
        guard let algorithm, authority.subject == issuer else { return false }
        return authority.publicKey.isValidSignature(signature, for: signed, signatureAlgorithm: algorithm)
    }
}
