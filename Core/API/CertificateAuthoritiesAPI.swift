import Foundation
import Hummingbird
import IoTCKernel
import IoTCPluginKit
import IoTCStore

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
        ]))
    }
}
