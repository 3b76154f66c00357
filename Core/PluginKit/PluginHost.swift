import CIoTCPluginABI

/// The kernel's services for one component instance. Safe to use from any thread.
public final class PluginHost: @unchecked Sendable {
    let raw: UnsafePointer<iotc_host>

    init(_ raw: UnsafePointer<iotc_host>) { self.raw = raw }

    /// What `submit` answered at once.
    public enum SubmitStatus: Sendable, Equatable {
        /// Queued; the `done` callback follows exactly once.
        case queued
        /// Backpressure: the pipeline is full, try again later.
        case busy
        /// Refused (no pipeline takes it, or it is invalid); the code is an `IOTC_ERR_*` value.
        case rejected(Int32)
    }

    /// Hands a message to the kernel. `done` is called with `IOTC_OK` once the kernel owns the message
    /// (durably, on a durable pipeline): only then may the device be acknowledged.
    @discardableResult
    public func submit(_ message: Message, done: (@Sendable (Int32) -> Void)? = nil) -> SubmitStatus {
        guard let done else { return status(message.withCMessage { raw.pointee.submit(raw.pointee.ctx, $0, nil, nil) }) }
        let box = Unmanaged.passRetained(SubmitDoneBox(done)).toOpaque()
        let s = submit(message, done: iotcPluginKitSubmitDone, context: box)
        if case .queued = s {} else { Unmanaged<SubmitDoneBox>.fromOpaque(box).release() }
        return s
    }

    /// Submits a message with the ABI's own completion: `done(context, result)` is called once, on
    /// any thread, when the result is `.queued`, and never otherwise (the caller then still owns
    /// `context`). For sources that settle many messages without a closure each, as the MQTT server
    /// does with the tickets its connections reuse.
    public func submit(_ message: Message, done: iotc_submit_done_fn, context: UnsafeMutableRawPointer) -> SubmitStatus {
        status(message.withCMessage { raw.pointee.submit(raw.pointee.ctx, $0, done, context) })
    }

    private func status(_ result: Int32) -> SubmitStatus {
        switch result {
        case IOTC_OK: return .queued
        case IOTC_ERR_BUSY: return .busy
        default: return .rejected(result)
        }
    }

    /// Settles messages that share one outcome (a batch a sink wrote at once), in one call when the
    /// kernel offers it.
    public func ack(_ tokens: [UInt64], _ outcome: AckOutcome) {
        guard !tokens.isEmpty else { return }
        guard let batch = raw.pointee.ack_batch else {
            for t in tokens { ack(t, outcome) }
            return
        }
        let (code, reason): (Int32, String?) = switch outcome {
        case .success: (IOTC_OK, nil)
        case .retry(let r): (IOTC_ERR_RETRY, r)
        case .reject(let r): (IOTC_ERR_INVALID, r)
        }
        tokens.withUnsafeBufferPointer { t in
            if let reason {
                reason.withCString { batch(raw.pointee.ctx, t.baseAddress, t.count, code, $0) }
            } else {
                batch(raw.pointee.ctx, t.baseAddress, t.count, code, nil)
            }
        }
    }

    /// Settles a message received with an ack token.
    public func ack(_ token: UInt64, _ outcome: AckOutcome) {
        switch outcome {
        case .success: raw.pointee.ack(raw.pointee.ctx, token, IOTC_OK, nil)
        case .retry(let reason): reason.withCString { raw.pointee.ack(raw.pointee.ctx, token, IOTC_ERR_RETRY, $0) }
        case .reject(let reason): reason.withCString { raw.pointee.ack(raw.pointee.ctx, token, IOTC_ERR_INVALID, $0) }
        }
    }

    /// Authenticates a device with the kernel. Returns nil when refused.
    public func authenticate(_ credentials: Credentials) -> Identity? {
        var arena = CStringArena()
        let refs = [credentials.protocolName, credentials.device, credentials.username, credentials.secret,
                    credentials.certificateFingerprint, credentials.remoteAddress].map { arena.add($0) }
        return arena.withStrings { str -> Identity? in
            var c = iotc_credentials()
            c.struct_size = UInt32(MemoryLayout<iotc_credentials>.size)
            c.protocol = str(refs[0])
            c.device = str(refs[1])
            c.username = str(refs[2])
            c.secret = str(refs[3])
            c.certificate_fingerprint = str(refs[4])
            c.remote_address = str(refs[5])
            var out = iotc_identity()
            out.struct_size = UInt32(MemoryLayout<iotc_identity>.size)
            let chain = credentials.certificateChain
            let ok = Self.withBytesList(chain) { list in
                c.certificate_chain = list.baseAddress
                c.certificate_chain_count = list.count
                return raw.pointee.authenticate(raw.pointee.ctx, &c, &out) == IOTC_OK
            }
            guard ok else { return nil }
            return Identity(host: self, tenant: String(out.tenant), device: String(out.device), handle: out.handle)
        }
    }

    /// Calls `body` with C views of `list` (valid only during the call).
    private static func withBytesList<R>(_ list: [[UInt8]], _ body: (UnsafeBufferPointer<iotc_bytes>) -> R) -> R {
        guard !list.isEmpty else { return body(UnsafeBufferPointer(start: nil, count: 0)) }
        let copies = list.map { bytes -> UnsafeMutableBufferPointer<UInt8> in
            let p = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: max(1, bytes.count))
            _ = p.initialize(from: bytes)
            return p
        }
        defer { for p in copies { p.deallocate() } }
        let views = copies.enumerated().map { iotc_bytes(ptr: UnsafePointer($0.element.baseAddress), len: list[$0.offset].count) }
        return views.withUnsafeBufferPointer(body)
    }

    /// The device and key for the pre-shared key identity a device presented in a DTLS handshake, from
    /// the device registry; nil when the identity is unknown, revoked or expired, or the kernel
    /// predates the call.
    public func presharedKey(identity pskIdentity: String, remoteAddress: String) -> (identity: Identity, key: [UInt8])? {
        guard let f = raw.pointee.preshared_key else { return nil }
        var key = [UInt8](repeating: 0, count: 64)
        var length = 0
        var out = iotc_identity()
        out.struct_size = UInt32(MemoryLayout<iotc_identity>.size)
        let result = pskIdentity.withIOTCString { p in
            remoteAddress.withIOTCString { r in
                key.withUnsafeMutableBufferPointer { f(raw.pointee.ctx, p, r, $0.baseAddress, $0.count, &length, &out) }
            }
        }
        guard result == IOTC_OK else { return nil }
        let identity = Identity(host: self, tenant: String(out.tenant), device: String(out.device), handle: out.handle)
        guard length <= key.count else { return nil }  // longer than any DTLS PSK the registry accepts
        return (identity, Array(key[..<length]))
    }

    /// The attributes the operator set for this device (its configuration) as JSON object bytes: `{}`
    /// when it has none, nil when the kernel predates the call or no longer knows the identity.
    public func attributes(_ identity: Identity) -> [UInt8]? {
        guard let f = raw.pointee.device_attributes else { return nil }
        var buffer = [UInt8](repeating: 0, count: 1024)
        var length = 0
        for _ in 0..<2 {
            let r = buffer.withUnsafeMutableBufferPointer { f(raw.pointee.ctx, identity.handle, $0.baseAddress, $0.count, &length) }
            guard r == IOTC_OK else { return nil }
            if length <= buffer.count { return Array(buffer[..<length]) }
            buffer = [UInt8](repeating: 0, count: length)
        }
        return nil
    }

    /// An identity for a device this source reaches itself (one it polls), named by its own
    /// configuration; for presence and for commands routed to the source. Nil when the kernel predates
    /// the call or the tenant or id cannot name a device.
    public func claim(tenant: String, device: String) -> Identity? {
        guard let f = raw.pointee.claim_device else { return nil }
        var out = iotc_identity()
        out.struct_size = UInt32(MemoryLayout<iotc_identity>.size)
        let r = tenant.withIOTCString { t in device.withIOTCString { d in f(raw.pointee.ctx, t, d, &out) } }
        guard r == IOTC_OK else { return nil }
        return Identity(host: self, tenant: String(out.tenant), device: String(out.device), handle: out.handle)
    }

    /// May this identity do `action` on this canonical topic?
    public func authorize(_ identity: Identity, _ action: Action, topic: String) -> Bool {
        topic.withIOTCString { t in
            raw.pointee.authorize(raw.pointee.ctx, identity.handle, action.rawValue, t) == IOTC_OK
        }
    }

    public func deviceConnected(_ identity: Identity, remoteAddress: String) {
        remoteAddress.withIOTCString { raw.pointee.device_connected(raw.pointee.ctx, identity.handle, $0) }
    }

    public func deviceDisconnected(_ identity: Identity, reason: String) {
        reason.withIOTCString { raw.pointee.device_disconnected(raw.pointee.ctx, identity.handle, $0) }
    }

    /// Logs through the kernel's logger, tagged with this instance.
    public func log(_ level: LogLevel, _ text: String) {
        text.withIOTCString { raw.pointee.log(raw.pointee.ctx, level.rawValue, $0) }
    }

    /// Records a metric, tagged by the kernel with this instance's plugin and component names.
    public func metric(_ type: MetricType, _ name: String, labels: [KeyValue] = [], _ value: Double) {
        Message(properties: labels).withCMessage { m in
            name.withIOTCString { n in
                raw.pointee.metric(raw.pointee.ctx, type.rawValue, n, m.pointee.properties, m.pointee.property_count, value)
            }
        }
    }

    /// Whether the kernel would take a message on `topic` from this source now.
    public enum RouteCheck: Sendable, Equatable {
        /// Some pipeline reads it and has room (also the answer when the kernel cannot tell).
        case routed
        /// A pipeline that reads it is full: `submit` would answer `.busy`.
        case busy
        /// No pipeline reads it.
        case notRouted
    }

    /// Checks routing and room before a source builds a message; `.routed` when the kernel cannot tell
    /// (an older kernel), so that nothing is skipped wrongly.
    public func routes(_ topic: String) -> RouteCheck {
        guard let f = raw.pointee.routes else { return .routed }
        return switch topic.withIOTCString({ f(raw.pointee.ctx, $0) }) {
        case IOTC_ERR_NOT_FOUND: .notRouted
        case IOTC_ERR_BUSY: .busy
        default: .routed
        }
    }

    func release(_ handle: UInt64) { raw.pointee.release_identity(raw.pointee.ctx, handle) }

    public enum Action: UInt32, Sendable {
        case publish = 0
        case subscribe = 1
    }

    public enum LogLevel: UInt32, Sendable {
        case trace = 0, debug, info, notice, warning, error
    }

    public enum MetricType: UInt32, Sendable {
        case counter = 0, gauge, histogram
    }
}

/// How a sink (or a source for downlink) settles a message.
public enum AckOutcome: Sendable, Equatable {
    case success
    /// A transient failure: the kernel retries with backoff.
    case retry(String)
    /// A permanent failure: the message goes to the dead-letter store.
    case reject(String)
}

/// A message's acknowledgement handle; settle it exactly once.
public struct Ack: Sendable {
    public let host: PluginHost
    public let token: UInt64

    public func succeed() { host.ack(token, .success) }
    public func retry(_ reason: String) { host.ack(token, .retry(reason)) }
    public func reject(_ reason: String) { host.ack(token, .reject(reason)) }
}

/// What a device presents to authenticate.
public struct Credentials: Sendable {
    public var protocolName: String
    public var device: String
    public var username: String
    public var secret: String
    public var certificateFingerprint: String
    public var remoteAddress: String
    /// The certificate chain presented in a TLS handshake (DER, leaf first), for certificates a
    /// tenant's certificate authority issued.
    public var certificateChain: [[UInt8]]

    public init(
        protocolName: String, device: String = "", username: String = "", secret: String = "",
        certificateFingerprint: String = "", remoteAddress: String = "", certificateChain: [[UInt8]] = []
    ) {
        self.certificateChain = certificateChain
        self.protocolName = protocolName
        self.device = device
        self.username = username
        self.secret = secret
        self.certificateFingerprint = certificateFingerprint
        self.remoteAddress = remoteAddress
    }
}

/// An authenticated device. The kernel's record of it is released when this object goes away.
public final class Identity: Sendable {
    public let tenant: String
    public let device: String
    /// The kernel's handle for this identity (what `Source.disconnect(identityHandle:reason:)` names).
    public let handle: UInt64
    private let host: PluginHost

    init(host: PluginHost, tenant: String, device: String, handle: UInt64) {
        self.host = host
        self.tenant = tenant
        self.device = device
        self.handle = handle
    }

    deinit { host.release(handle) }
}

final class SubmitDoneBox {
    let done: @Sendable (Int32) -> Void
    init(_ done: @escaping @Sendable (Int32) -> Void) { self.done = done }
}

let iotcPluginKitSubmitDone: iotc_submit_done_fn = { ctx, result in
    guard let ctx else { return }
    Unmanaged<SubmitDoneBox>.fromOpaque(ctx).takeRetainedValue().done(result)
}
