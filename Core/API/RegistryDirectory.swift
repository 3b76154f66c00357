import Foundation
import IoTCKernel
import IoTCPluginKit
import IoTCStore
import Logging
import NIOConcurrencyHelpers

/// The registry's device credentials held in memory for the hub's authentication: looked up by a
/// token's id or a certificate's fingerprint, compared by SHA-256 in constant time. Reloaded from the
/// store after every change made through this hub's API, and within a few seconds of a change made by
/// another node or tool, or of a credential's expiry; a revoked credential stops working within that
/// time. The store's registry revision tells whether anything changed, so an unchanged registry is not
/// read again: with 100,000 devices a reload costs about a third of a second of CPU.
public final class RegistryDirectory: DeviceDirectory, @unchecked Sendable {
    struct Entry: Sendable {
        var id: String
        var tenant: String
        var device: String
        var digest: [UInt8]
        var expiresAt: Int64?
        var profile: String
        var grant: DirectoryGrant { DirectoryGrant(tenant: tenant, device: device, credential: id, profile: profile) }
    }

    private let devices: Devices
    /// The tenants' certificate authorities; without it, none are loaded.
    private let authorities: CertificateAuthorities?
    private let issuers = NIOLockedValueBox(ClientCertificates())
    /// Opens the pre-shared keys; without it, none are loaded.
    let box: SecretBox?
    private let state = NIOLockedValueBox<(tokens: [String: Entry], certificates: [[UInt8]: Entry], keys: [String: (Entry, [UInt8])])>(([:], [:], [:]))
    /// Devices' attributes as JSON, by `Hub.deviceKey`; only devices that have some.
    private let attributeState = NIOLockedValueBox<[String: [UInt8]]>([:])
    /// Devices' labels by `Hub.deviceKey`, and the devices with each label by tenant, name and value
    /// (a rule's command to a device group looks them up while it runs).
    private let labelState = NIOLockedValueBox<(labels: [String: [String: String]], members: [String: Set<String>])>(([:], [:]))
    /// When the labels were last read from the store: every device's row, so not at every refresh.
    /// Changes made through this hub's API reach the index at once; other nodes' within this long.
    private let labelsLoadedAt = NIOLockedValueBox<Date?>(nil)
    static let labelReloadInterval: TimeInterval = 20

    /// What was loaded: the registry revisions the attributes and the credentials reflect, the
    /// earliest expiry among the credentials in force (when it passes, the credential is dropped and
    /// its connections closed), and the revision the labels reflect.
    private struct Loaded {
        var revision: Int64?
        var credentialsRevision: Int64?
        var nextExpiry: Int64?
        var labelsRevision: Int64?
        var reloads = 0
    }
    private let loaded = NIOLockedValueBox(Loaded())
    /// How many times the credentials were read from the store (an unchanged registry is not).
    public var reloads: Int { loaded.withLockedValue { $0.reloads } }

    /// Told the ids of credentials that were in force and no longer are (revoked, expired, or their
    /// device deleted), so that the hub closes the connections made with them.
    private let onRevoked: @Sendable (Set<String>) -> Void

    public init(devices: Devices, box: SecretBox? = nil, authorities: CertificateAuthorities? = nil,
                onRevoked: @escaping @Sendable (Set<String>) -> Void = { _ in }) {
        self.devices = devices
        self.authorities = authorities
        self.box = box
        self.onRevoked = onRevoked
    }

    /// Loads every credential in force, and the devices' attributes, unless the registry has not
    /// changed since they were loaded and no credential has expired since.
    public func refresh() async throws {
        let (revision, credentialsRevision) = try await devices.registryRevision()
        let time = devices.clock()
        let labelsWait = labelsLoadedAt.withLockedValue { $0.map { Date().timeIntervalSince($0) < Self.labelReloadInterval } ?? false }
        let (changed, credentialsChanged, expired, labelsDue) = loaded.withLockedValue { l in
            (l.revision != revision, l.credentialsRevision != credentialsRevision, l.nextExpiry.map { $0 <= time } ?? false,
             l.labelsRevision != revision && !labelsWait)
        }
        if changed {
            var attributes: [String: [UInt8]] = [:]
            for a in try await devices.allAttributes() { attributes[Hub.deviceKey(a.tenant, a.device)] = a.json }
            attributeState.withLockedValue { $0 = attributes }
            loaded.withLockedValue { $0.revision = revision }
        }
        if labelsDue {
            var labels: [String: [String: String]] = [:], members: [String: Set<String>] = [:]
            for d in try await devices.allLabels() {
                labels[Hub.deviceKey(d.tenant, d.device)] = d.labels
                for (k, v) in d.labels { members[Self.labelKey(d.tenant, k, v), default: []].insert(d.device) }
            }
            labelState.withLockedValue { $0 = (labels, members) }
            labelsLoadedAt.withLockedValue { $0 = Date() }
            loaded.withLockedValue { $0.labelsRevision = revision }
        }
        guard credentialsChanged || expired else { return }
        var tokens: [String: Entry] = [:], certificates: [[UInt8]: Entry] = [:], keys: [String: (Entry, [UInt8])] = [:]
        for c in try await devices.activeCredentials() {
            let e = Entry(id: c.id, tenant: c.tenant, device: c.device, digest: c.digest, expiresAt: c.expiresAt, profile: c.profile)
            switch c.kind {
            case .token: tokens[c.id] = e
            case .certificate: certificates[c.digest] = e
            case .psk:
                guard let box, let identity = c.identity, let sealed = c.sealedKey, let key = try? box.open(sealed) else { continue }
                keys[identity] = (e, key)
            }
        }
        let nextExpiry = [tokens.values.lazy.compactMap(\.expiresAt).min(), certificates.values.lazy.compactMap(\.expiresAt).min(),
                          keys.values.lazy.compactMap(\.0.expiresAt).min()].compactMap { $0 }.min()
        loaded.withLockedValue {
            $0.credentialsRevision = credentialsRevision
            $0.nextExpiry = nextExpiry
            $0.reloads += 1
        }
        func ids(_ t: [String: Entry], _ c: [[UInt8]: Entry], _ k: [String: (Entry, [UInt8])]) -> Set<String> {
            Set(t.keys).union(c.values.map(\.id)).union(k.values.map(\.0.id))
        }
        let issuersNow = ClientCertificates(try await authorities?.all() ?? [], reusing: issuers.withLockedValue { $0 })
        let now = ids(tokens, certificates, keys).union(issuersNow.ids)
        let (issuersBefore, revokedBefore) = issuers.withLockedValue { old in
            defer { old = issuersNow }
            return (old.ids, old.revokedIDs)
        }
        let before = state.withLockedValue { old -> Set<String> in
            defer { old = (tokens, certificates, keys) }
            return ids(old.tokens, old.certificates, old.keys)
        }.union(issuersBefore)
        // Gone: credentials no longer in force, and certificates a revocation list names since now.
        let gone = before.subtracting(now).union(issuersNow.revokedIDs.subtracting(revokedBefore))
        if !gone.isEmpty { onRevoked(gone) }
    }

    /// Refreshes every `interval` seconds until cancelled.
    public func keepFresh(every interval: Double = 2, logger: Logger) async {
        let trouble = FailureNotice()
        while !Task.isCancelled {
            try? await Task.sleep(nanoseconds: UInt64(interval * 1e9))
            if Task.isCancelled { break }
            do {
                try await refresh()
                if trouble.worked() { logger.notice("device credentials are reloaded again") }
            } catch {
                if trouble.failed() { logger.warning("cannot reload device credentials (tried again every \(interval) s, logged again when it works): \(error)") }
            }
        }
    }

    public func authenticate(_ c: Credentials) -> DirectoryGrant? {
        let now = devices.clock()
        let (tokens, certificates) = state.withLockedValue { ($0.tokens, $0.certificates) }
        func valid(_ e: Entry) -> Bool { e.expiresAt.map { $0 > now } ?? true }
        // A token as the secret (HTTP bearer, MQTT password) or as the MQTT user name with no password.
        for token in [c.secret, c.secret.isEmpty ? c.username : ""] where !token.isEmpty {
            guard let id = Devices.tokenID(token), let e = tokens[id], valid(e), ConstantTime.equal(e.digest, Devices.digest(token)) else { continue }
            return e.grant
        }
        if !c.certificateFingerprint.isEmpty, let digest = Devices.fingerprintBytes(c.certificateFingerprint), let e = certificates[digest], valid(e) {
            return e.grant
        }
        // A certificate not registered on its own may have been issued by a tenant's authority.
        if !c.certificateChain.isEmpty { return issuers.withLockedValue { $0 }.grant(c.certificateChain) }
        return nil
    }

    public func attributes(tenant: String, device: String) -> [UInt8]? {
        attributeState.withLockedValue { $0[Hub.deviceKey(tenant, device)] }
    }

    public func mergeAttributes(tenant: String, device: String, _ fields: Value.Object) async throws -> Bool {
        guard let current = try await devices.mergeAttributes(tenant: tenant, id: device, fields) else { return false }
        // Devices fetch them from memory: this device's entry changes now, not at the next refresh.
        let json = JSON.encode(.object(current))
        attributeState.withLockedValue { $0[Hub.deviceKey(tenant, device)] = json }
        return true
    }

    private static func labelKey(_ tenant: String, _ key: String, _ value: String) -> String { tenant + "\u{0}" + key + "\u{0}" + value }

    public func devices(tenant: String, labels: [KeyValue]) -> [String] {
        guard !labels.isEmpty else { return [] }
        return labelState.withLockedValue { s in
            var found = s.members[Self.labelKey(tenant, labels[0].key, labels[0].value)] ?? []
            for l in labels.dropFirst() where !found.isEmpty { found.formIntersection(s.members[Self.labelKey(tenant, l.key, l.value)] ?? []) }
            return found.sorted()
        }
    }

    /// A device's labels changed through this hub's API (nil: it was deleted): its groups change now,
    /// not at the next refresh.
    public func labelsChanged(tenant: String, device: String, _ labels: [String: String]?) {
        let key = Hub.deviceKey(tenant, device)
        labelState.withLockedValue { s in
            for (k, v) in s.labels[key] ?? [:] { s.members[Self.labelKey(tenant, k, v)]?.remove(device) }
            s.labels[key] = labels?.isEmpty == false ? labels : nil
            for (k, v) in labels ?? [:] { s.members[Self.labelKey(tenant, k, v), default: []].insert(device) }
        }
    }

    /// The device and key for a DTLS pre-shared key identity, while the key is in force.
    public func presharedKey(identity: String) -> (grant: DirectoryGrant, key: [UInt8])? {
        let now = devices.clock()
        guard let (e, key) = state.withLockedValue({ $0.keys[identity] }), e.expiresAt.map({ $0 > now }) ?? true else { return nil }
        return (e.grant, key)
    }
}
