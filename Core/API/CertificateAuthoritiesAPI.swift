import Foundation
import Hummingbird
import IoTCKernel
import IoTCPluginKit
import IoTCStore
import X509

/// A tenant's certificate authorities (admins): client certificates they issue authenticate the
/// tenant's devices on mutual TLS, the device named by the certificate's subject common name.
enum CertificateAuthoritiesAPI {
    static func add(to router: Router<HubRequestContext>, authorities: CertificateAuthorities, directory: RegistryDirectory, guarded: Guard) {
        router.get("/v1/certificate-authorities", use: guarded(.tenant(.admin)) { request, _, p in
            let tenant = try await AccountsAPI.target(request, p)
            return HubAPI.json(.object(Value.Object([("items", .array(try await authorities.list(tenant: tenant).map(json)))])))
        })
        router.post("/v1/certificate-authorities", use: guarded(.tenant(.admin)) { request, _, p in
            let tenant = try await AccountsAPI.target(request, p)
            // Room for the longest certificate text the document allows, however it is escaped.
            let body = try await JSONBody.read(request, allowed: ["name", "certificate", "profile"], limit: 256 << 10)
            let pem = try body.string("certificate", required: true)!
            guard pem.unicodeScalars.count <= 16_384 else { throw AccountsError.invalid("the certificate is over 16,384 characters") }
            let (certificate, der) = try ClientCertificates.parseAuthority(pem)
            let ca = try await authorities.create(tenant: tenant, name: try body.string("name", required: true)!, subject: certificate.subject.description,
                                                  certificate: der, fingerprint: ClientCertificates.fingerprint(der),
                                                  profile: try body.string("profile") ?? "default",
                                                  notAfter: Int64(certificate.notValidAfter.timeIntervalSince1970 * 1000))
            try await directory.refresh()
            await p.record("certificate_authority.create", target: ca.id, tenant: tenant, detail: ca.subject)
            return HubAPI.json(json(ca), status: .created)
        })
        router.get("/v1/certificate-authorities/:authority", use: guarded(.tenant(.admin)) { request, context, p in
            let tenant = try await AccountsAPI.target(request, p)
            let id = try context.parameter("authority")
            guard let ca = try await authorities.get(tenant: tenant, id: id) else { throw APIProblem(.notFound, "no certificate authority '\(id.prefix(64))'") }
            return HubAPI.json(json(ca))
        })
        // The authority's revocation list: the certificates it names stop authenticating, and their open
        // connections close. A list must be signed by the authority and no older than the one in force.
        router.put("/v1/certificate-authorities/:authority/crl", use: guarded(.tenant(.admin)) { request, context, p in
            let tenant = try await AccountsAPI.target(request, p)
            let id = try context.parameter("authority")
            let body = try await JSONBody.read(request, allowed: ["crl"], limit: 4 << 20)
            let pem = try body.string("crl", required: true)!
            guard pem.utf8.count <= 2 << 20 else { throw AccountsError.invalid("the revocation list is over 2 MiB") }
            // Checked against the list in force and set only while it is still that one: when another
            // list came meanwhile, the check runs again against it.
            var parsed: RevocationList?
            var attempts = 0
            while true {
                guard let ca = try await authorities.get(tenant: tenant, id: id) else { throw APIProblem(.notFound, "no certificate authority '\(id.prefix(64))'") }
                let list = try parsed ?? RevocationList.parse(Array(pem.utf8))
                parsed = list
                guard list.thisUpdate.timeIntervalSinceNow < 300 else { throw AccountsError.invalid("the revocation list's thisUpdate is in the future") }
                guard let certificate = try? Certificate(derEncoded: ca.certificate), list.isIssued(by: certificate) else {
                    throw AccountsError.invalid("the revocation list is not signed by this certificate authority (\(ca.subject))")
                }
                if let current = ca.revocationList.flatMap({ try? RevocationList.parse($0) }), list.thisUpdate < current.thisUpdate {
                    throw AccountsError.conflict("the revocation list is older than the one in force (thisUpdate \(current.thisUpdate))")
                }
                if try await authorities.replaceRevocationList(tenant: tenant, id: id, list.der, current: ca.revocationList) { break }
                attempts += 1
                guard attempts < 5 else { throw AccountsError.conflict("the revocation list kept changing meanwhile; put it again") }
            }
            let list = parsed!
            try await directory.refresh()
            await p.record("certificate_authority.crl.set", target: id, tenant: tenant, detail: "\(list.revoked.count) revoked")
            guard let updated = try await authorities.get(tenant: tenant, id: id) else { throw APIProblem(.notFound, "no certificate authority '\(id.prefix(64))'") }
            return HubAPI.json(json(updated))
        })
        router.delete("/v1/certificate-authorities/:authority/crl", use: guarded(.tenant(.admin)) { request, context, p in
            let tenant = try await AccountsAPI.target(request, p)
            let id = try context.parameter("authority")
            guard try await authorities.setRevocationList(tenant: tenant, id: id, nil) else {
                throw APIProblem(.notFound, "no certificate authority '\(id.prefix(64))'")
            }
            try await directory.refresh()
            await p.record("certificate_authority.crl.delete", target: id, tenant: tenant)
            return Response(status: .noContent)
        })
        router.delete("/v1/certificate-authorities/:authority", use: guarded(.tenant(.admin)) { request, context, p in
            let tenant = try await AccountsAPI.target(request, p)
            let id = try context.parameter("authority")
            guard try await authorities.delete(tenant: tenant, id: id) else { throw APIProblem(.notFound, "no certificate authority '\(id.prefix(64))'") }
            // Its devices' open connections close.
            try await directory.refresh()
            await p.record("certificate_authority.delete", target: id, tenant: tenant)
            return Response(status: .noContent)
        })
    }

    static func json(_ ca: CertificateAuthority) -> Value {
        .object(Value.Object([
            ("id", .string(ca.id)), ("name", .string(ca.name)), ("subject", .string(ca.subject)),
            ("fingerprint", .string(ca.fingerprint.map { String(format: "%02x", $0) }.joined())), ("profile", .string(ca.profile)),
            ("not_after", .int(ca.notAfter)), ("created_at", .int(ca.createdAt)),
            ("revocation_list", ca.revocationList.flatMap { try? RevocationList.parse($0) }.map { list in
                .object(Value.Object([
                    ("this_update", .int(Int64(list.thisUpdate.timeIntervalSince1970 * 1000))),
                    ("next_update", list.nextUpdate.map { .int(Int64($0.timeIntervalSince1970 * 1000)) } ?? .null),
                    ("revoked", .int(Int64(list.revoked.count))), ("set_at", .int(ca.revocationListSetAt ?? 0)),
                ]))
            } ?? .null),
        ]))
    }
}
