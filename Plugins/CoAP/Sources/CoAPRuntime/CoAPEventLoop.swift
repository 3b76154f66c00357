import CCoAP
import Crypto
import Foundation
import IoTCPluginKit
import NIOConcurrencyHelpers

/// One libcoap context on one dedicated thread. libcoap is not thread-safe, so everything that touches
/// the context (handlers, sends, timers) runs on that thread; other threads hand it work with
/// `execute`, which wakes the thread through an eventfd polled beside libcoap's own epoll descriptor.
public final class CoAPEventLoop: @unchecked Sendable {
    public let context: OpaquePointer
    private let wake: Int32
    private let lock = NIOLock()
    private var jobs: [() -> Void] = []
    private var stopping = false
    private var worker: WorkerThread?
    /// Looks up a DTLS pre-shared key identity: the device's identity and key, or nil to refuse it.
    public var presharedKey: ((_ identity: String, _ remote: String) -> (Identity, [UInt8])?)?
    /// Looks up a DTLS client certificate by its SHA-256 fingerprint (lower-case hex of the DER): the
    /// device's identity, or nil to refuse the handshake.
    public var certificate: ((_ fingerprint: String, _ remote: String) -> Identity?)?
    /// File paths libcoap reads during handshakes; kept for the context's life.
    private var pkiPaths: [UnsafeMutablePointer<CChar>] = []
    /// Called on the loop thread when libcoap forgets a session (idle timeout, DTLS close).
    public var sessionClosed: ((CoAPPeer) -> Void)?
    /// Called on the loop thread about once a second (lifetimes, time-outs).
    public var tick: (() -> Void)?
    /// Responses to requests this side sent (a server asking its clients, as LwM2M does): return false
    /// to reject one (libcoap answers RST). Set before `start`.
    public var response: ((_ session: OpaquePointer, _ sent: OpaquePointer?, _ received: OpaquePointer) -> Bool)? {
        didSet { coap_register_response_handler(context, coapResponse) }
    }
    /// A confirmable message this side sent was refused (RST) or never acknowledged. Set before `start`.
    public var nack: ((_ session: OpaquePointer, _ sent: OpaquePointer?) -> Void)? {
        didSet { coap_register_nack_handler(context, coapNack) }
    }
    private var lastTick = 0.0
    /// Server sessions libcoap holds now (loop thread), from its session events.
    public private(set) var sessions = 0
    /// Told the number of sessions every 5 s, on the loop thread (the `iotc_coap_sessions` gauge).
    public var sessionsReport: ((Int) -> Void)?
    private var lastReport = 0.0
    /// The sessions the plugins keep a reference on (observations, registrations, answers sent
    /// later), with how many each (loop thread). libcoap asserts, as it frees the context, that no
    /// session is referenced any more: the loop lets go of those still held first.
    private var held: [OpaquePointer: Int] = [:]
    /// The thread running the loop, while it runs (under `lock`).
    private var loopThread: pthread_t?

    /// The config field bounding idle sessions, for the coap and lwm2m sources' specs.
    public static let maxIdleSessionsField = ConfigField("max_idle_sessions", .int,
        "Most server sessions (one per client address and port) kept while idle; past it libcoap drops the least recently used, which a client that speaks again gets back. Sessions with observations or transfers under way are not idle. 0: no limit.",
        default: "20000")

    /// Bounds the idle sessions (`maxIdleSessionsField`): sessions cost memory, and every datagram
    /// from a new address and port, which anyone can send over UDP, makes one. Call before `start`.
    public func limitIdleSessions(_ n: Int) {
        coap_context_set_max_idle_sessions(context, UInt32(clamping: max(0, n)))
    }

    /// libcoap sends large bodies block-wise and asks for the blocks of large responses, but hands
    /// each block over as it comes, with its Block1 or Block2 option: the plugins put bodies together
    /// (`BlockUploads`), because libcoap 4.3.1's own reassembly (`COAP_BLOCK_SINGLE_BODY`) crashes
    /// on a transfer whose blocks carry no payload or no Size1.
    public init() throws {
        coapStartupOnce
        guard let ctx = coap_new_context(nil) else { throw PluginError("libcoap could not create a context") }
        context = ctx
        wake = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard wake >= 0 else {
            coap_free_context(ctx)
            throw PluginError("cannot create an eventfd: \(String(cString: strerror(errno)))")
        }
        // Large bodies both ways in Block1/Block2, tracked by libcoap.
        coap_context_set_block_mode(ctx, UInt8(COAP_BLOCK_USE_LIBCOAP))
        coap_register_event_handler(ctx, coapEventHandler)
        coap_set_app_data(ctx, Unmanaged.passUnretained(self).toOpaque())
    }

    deinit {
        // Freeing the context ends its sessions, and libcoap reports their unanswered requests (nack)
        // and their end: the plugin that set these handlers is gone by now (its `unowned` captures
        // would crash), so nothing is reported.
        (nack, response, sessionClosed, tick, sessionsReport) = (nil, nil, nil, nil, nil)
        // Observations, registrations and late answers their holders still keep (a device observing
        // its commands as the source stops or reloads): libcoap would abort the process.
        for (session, count) in held {
            for _ in 0..<count { coap_session_release(session) }
        }
        held = [:]
        coap_free_context(context)
        close(wake)
        for p in pkiPaths { free(p) }
    }

    /// DTLS with certificates beside pre-shared keys: the server presents `certificateFile`, and every
    /// client must present a certificate, which `certificate` maps to a device. With `clientCAFile`,
    /// client certificates must chain to it; without, self-signed ones are taken (the registered
    /// fingerprint is what counts).
    public func useCertificates(certificateFile: String, keyFile: String, clientCAFile: String?) throws {
        for f in [certificateFile, keyFile] + (clientCAFile.map { [$0] } ?? []) where !FileManager.default.isReadableFile(atPath: f) {
            throw PluginError("cannot read \(f)")
        }
        var setup = coap_dtls_pki_t()
        setup.version = UInt8(COAP_DTLS_PKI_SETUP_VERSION)
        setup.verify_peer_cert = 1
        setup.allow_self_signed = clientCAFile == nil ? 1 : 0
        setup.cert_chain_validation = 1
        setup.cert_chain_verify_depth = 3
        setup.validate_cn_call_back = coapValidateCertificate
        setup.cn_call_back_arg = Unmanaged.passUnretained(self).toOpaque()
        let cert = strdup(certificateFile)!, key = strdup(keyFile)!
        pkiPaths += [cert, key]
        setup.pki_key.key_type = COAP_PKI_KEY_PEM
        setup.pki_key.key.pem.public_cert = UnsafePointer(cert)
        setup.pki_key.key.pem.private_key = UnsafePointer(key)
        guard coap_context_set_pki(context, &setup) != 0 else { throw PluginError("libcoap refused the certificate \(certificateFile) or its key") }
        if let clientCAFile {
            guard coap_context_set_pki_root_cas(context, clientCAFile, nil) != 0 else { throw PluginError("libcoap refused the CA file \(clientCAFile)") }
        }
    }

    /// Listens for CoAP on UDP, or on DTLS with pre-shared keys from `presharedKey`.
    public func listen(_ address: String, dtls: Bool) throws {
        guard var addr = Self.address(address) else { throw PluginError("listen address '\(address)' should be HOST:PORT with a numeric host") }
        if dtls {
            guard coap_dtls_is_supported() != 0 else { throw PluginError("this libcoap build has no DTLS") }
            var setup = coap_dtls_spsk_t()
            setup.version = UInt8(COAP_DTLS_SPSK_SETUP_VERSION)
            setup.validate_id_call_back = coapValidatePSKIdentity
            setup.id_call_back_arg = Unmanaged.passUnretained(self).toOpaque()
            guard coap_context_set_psk2(context, &setup) != 0 else { throw PluginError("libcoap refused the DTLS PSK set-up") }
        }
        guard coap_new_endpoint(context, &addr, dtls ? COAP_PROTO_DTLS : COAP_PROTO_UDP) != nil else {
            throw PluginError("cannot listen on \(address) (\(dtls ? "DTLS" : "UDP")): the address is in use or not local")
        }
    }

    /// A libcoap address for "HOST:PORT" ("[::1]:5683" for IPv6).
    public static func address(_ text: String) -> coap_address_t? {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host.isEmpty { host = "0.0.0.0" }
        var addr = coap_address_t()
        coap_address_init(&addr)
        if inet_pton(AF_INET, host, &addr.addr.sin.sin_addr) == 1 {
            addr.addr.sin.sin_family = sa_family_t(AF_INET)
            addr.addr.sin.sin_port = port.bigEndian
            addr.size = socklen_t(MemoryLayout<sockaddr_in>.size)
        } else if inet_pton(AF_INET6, host, &addr.addr.sin6.sin6_addr) == 1 {
            addr.addr.sin6.sin6_family = sa_family_t(AF_INET6)
            addr.addr.sin6.sin6_port = port.bigEndian
            addr.size = socklen_t(MemoryLayout<sockaddr_in6>.size)
        } else {
            return nil
        }
        return addr
    }

    /// Starts the loop thread.
    public func start(name: String) {
        worker = WorkerThread(name: name) { [self] in run() }
    }

    /// Runs `job` on the loop thread, soon.
    public func execute(_ job: @escaping () -> Void) {
        lock.withLock { jobs.append(job) }
        var one: UInt64 = 1
        _ = write(wake, &one, 8)
    }

    /// Stops the loop after the jobs queued so far and joins its thread.
    public func stop() {
        lock.withLock { stopping = true }
        execute {}
        worker?.join()
        worker = nil
    }

    /// Keeps `session` for later use (loop thread), for as long as the hold lives.
    public func hold(_ session: OpaquePointer) -> HeldSession {
        held[session, default: 0] += 1
        return HeldSession(coap_session_reference(session), loop: self)
    }

    /// Lets go of a session `hold` kept. From another thread (an observation freed where a command
    /// was delivered) it is done on the loop thread; once the loop has stopped, the loop's end does it.
    fileprivate func letGo(_ session: OpaquePointer) {
        guard let t = lock.withLock({ loopThread }), pthread_equal(t, pthread_self()) != 0 else {
            execute { [weak self] in self?.letGo(session) }
            return
        }
        guard let n = held[session] else { return }
        held[session] = n > 1 ? n - 1 : nil
        coap_session_release(session)
    }

    private func run() {
        lock.withLock { loopThread = pthread_self() }
        defer { lock.withLock { loopThread = nil } }
        let coapFD = coap_context_get_coap_fd(context)
        var fds = [pollfd(fd: coapFD, events: Int16(POLLIN), revents: 0), pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
        while true {
            var now: coap_tick_t = 0
            coap_ticks(&now)
            if coapFD >= 0 {
                let next = coap_io_prepare_epoll(context, now)
                let limit: UInt32 = tick == nil ? 60_000 : 1_000
                _ = poll(&fds, 2, next == 0 ? Int32(limit) : Int32(min(next, limit)))
                if fds[0].revents != 0 {
                    // libcoap reads one datagram per ready descriptor: take what is queued (up to a
                    // bound, so that jobs and timers still run) before preparing and polling again.
                    _ = iotc_coap_drain_epoll(context, coapFD, 64)
                }
            } else {
                // A libcoap without epoll: its own select with a short timeout, jobs in between.
                _ = coap_io_process(context, 5)
            }
            if fds[1].revents != 0 {
                var count: UInt64 = 0
                _ = read(wake, &count, 8)
            }
            let (batch, done) = lock.withLock { () -> ([() -> Void], Bool) in
                defer { jobs.removeAll(keepingCapacity: true) }
                return (jobs, stopping)
            }
            for job in batch { job() }
            if let sessionsReport {
                let t = Date().timeIntervalSince1970
                if t - lastReport >= 5 {
                    lastReport = t
                    sessionsReport(sessions)
                }
            }
            if let tick {
                let t = Date().timeIntervalSince1970
                if t - lastTick >= 1 {
                    lastTick = t
                    tick()
                }
            }
            if done { break }
        }
        // Let what the jobs queued (last responses) go out.
        _ = coap_io_process(context, coapNoWait)
    }

    /// The loop of a context, from its app data.
    public static func of(_ ctx: OpaquePointer?) -> CoAPEventLoop? {
        guard let ctx, let p = coap_get_app_data(ctx) else { return nil }
        return Unmanaged<CoAPEventLoop>.fromOpaque(p).takeUnretainedValue()
    }

    /// The peer state of a session, made at first use and released with the session.
    public func peer(_ session: OpaquePointer) -> CoAPPeer {
        if let p = coap_session_get_app_data(session) { return Unmanaged<CoAPPeer>.fromOpaque(p).takeUnretainedValue() }
        let peer = CoAPPeer(remote: Self.remoteAddress(session), dtls: coap_session_get_proto(session) == COAP_PROTO_DTLS)
        coap_session_set_app_data(session, Unmanaged.passRetained(peer).toOpaque())
        return peer
    }

    fileprivate func sessionOpened() { sessions += 1 }
    fileprivate func sessionDeleted() { sessions = max(0, sessions - 1) }

    fileprivate func forget(_ session: OpaquePointer) {
        guard let p = coap_session_get_app_data(session) else { return }
        coap_session_set_app_data(session, nil)
        let peer = Unmanaged<CoAPPeer>.fromOpaque(p).takeRetainedValue()
        sessionClosed?(peer)
        peer.clearKey()
    }

    fileprivate func validate(identity: String, session: OpaquePointer) -> UnsafePointer<coap_bin_const_t>? {
        let peer = peer(session)
        guard let (id, key) = presharedKey?(identity, peer.remote) else { return nil }
        peer.identity = id
        peer.pskIdentity = identity
        peer.setKey(key)
        return peer.key.map { UnsafePointer($0) }
    }

    fileprivate func validate(certificate der: UnsafeBufferPointer<UInt8>, session: OpaquePointer) -> Bool {
        let peer = peer(session)
        let fingerprint = SHA256.hash(data: der).map { String(format: "%02x", $0) }.joined()
        guard let id = certificate?(fingerprint, peer.remote) else { return false }
        peer.identity = id
        return true
    }

    /// "ADDRESS:PORT" of a session's peer.
    public static func remoteAddress(_ session: OpaquePointer) -> String {
        guard let a = coap_session_get_addr_remote(session) else { return "" }
        var buf = [UInt8](repeating: 0, count: 64)
        let n = coap_print_addr(a, &buf, buf.count)
        return String(decoding: buf[..<min(n, buf.count)], as: UTF8.self)
    }
}

/// What the hub knows of one CoAP peer (a libcoap session): who it authenticated as, and the answers
/// to its recent requests for deduplication. Used on the loop thread only.
public final class CoAPPeer {
    public let remote: String
    public let dtls: Bool
    /// The device: from the DTLS handshake (PSK identity), or from the last token it presented.
    public var identity: Identity?
    /// The token `identity` was granted for (empty for DTLS), and when, in ms since the epoch.
    public var token = ""
    public var authenticatedAt: Int64 = 0
    /// Anything a plugin keeps per peer (its observations).
    public var attachment: AnyObject?
    fileprivate var key: UnsafeMutablePointer<coap_bin_const_t>?
    /// The PSK identity of a DTLS peer, as it presented it.
    public fileprivate(set) var pskIdentity: String?

    /// The pre-shared key of a DTLS peer (an LwM2M bootstrap server hands it on to the client's
    /// server account); nil on UDP.
    public var presharedKey: [UInt8]? {
        key.map { Array(UnsafeBufferPointer(start: $0.pointee.s, count: $0.pointee.length)) }
    }

    init(remote: String, dtls: Bool) {
        self.remote = remote
        self.dtls = dtls
    }

    fileprivate func setKey(_ bytes: [UInt8]) {
        clearKey()
        key = bytes.withUnsafeBufferPointer { coap_new_bin_const($0.baseAddress, $0.count) }
    }

    fileprivate func clearKey() {
        if let key { coap_delete_bin_const(key) }
        key = nil
    }
}

/// A plugin's hold on a libcoap session (an observation, a registration, an answer sent later): the
/// session stays valid while the hold lives and is let go when it goes. libcoap asserts, as it frees
/// its context, that no session is referenced any more, so a loop that ends first lets go of what is
/// still held, and `session` must then not be used (nothing runs on a stopped loop).
public final class HeldSession: @unchecked Sendable {
    public let session: OpaquePointer
    private weak var loop: CoAPEventLoop?

    fileprivate init(_ session: OpaquePointer, loop: CoAPEventLoop) {
        self.session = session
        self.loop = loop
    }

    deinit { loop?.letGo(session) }
}

/// COAP_IO_NO_WAIT, which Swift cannot import ((uint32_t)-1).
private let coapNoWait = UInt32.max

private let coapStartupOnce: Void = {
    coap_startup()
    coap_set_log_level(coap_log_t(LOG_ERR))
    coap_set_log_handler(LibcoapLog.handler)
}()

/// libcoap's own messages (errors only), through the hub's log: a peer can make libcoap log at will,
/// so they are bounded to `perMinute` lines a minute, with a count of those left out. libcoap logs a
/// Reset it receives as an alert; a Reset is a peer's normal answer (RFC 7252 §4.2, and how it ends
/// an observation), so those lines are dropped.
enum LibcoapLog {
    static let perMinute = 20
    private static let lock = NIOLock()
    nonisolated(unsafe) private static var host: PluginHost?
    nonisolated(unsafe) private static var minute = 0
    nonisolated(unsafe) private static var written = 0
    nonisolated(unsafe) private static var leftOut = 0

    /// The host whose log takes libcoap's messages (the last loop served: libcoap has one handler).
    static func attach(_ h: PluginHost) { lock.withLock { host = h } }

    static let handler: coap_log_handler_t = { _, message in
        guard let message else { return }
        var text = String(cString: message)
        if text.hasPrefix("got RST for mid") { return }
        while text.last?.isNewline == true { text.removeLast() }
        let now = Int(Date().timeIntervalSince1970 / 60)
        let (target, lines): (PluginHost?, [String]) = LibcoapLog.lock.withLock {
            var lines: [String] = []
            if now != minute {
                if leftOut > 0 { lines.append("libcoap: \(leftOut) more messages in the last minute were left out") }
                minute = now
                written = 0
                leftOut = 0
            }
            if written < perMinute {
                written += 1
                lines.append("libcoap: " + text)
            } else {
                leftOut += 1
            }
            return (host, lines)
        }
        for line in lines {
            if let target { target.log(.error, line) } else { FileHandle.standardError.write(Data((line + "\n").utf8)) }
        }
    }
}

private let coapEventHandler: coap_event_handler_t = { session, event in
    guard let session, let loop = CoAPEventLoop.of(coap_session_get_context(session)) else { return 0 }
    if event == COAP_EVENT_SERVER_SESSION_NEW { loop.sessionOpened() }
    if event == COAP_EVENT_SERVER_SESSION_DEL { loop.sessionDeleted() }
    if event == COAP_EVENT_SERVER_SESSION_DEL || event == COAP_EVENT_DTLS_CLOSED || event == COAP_EVENT_DTLS_ERROR {
        loop.forget(session)
    }
    return 0
}

private let coapResponse: coap_response_handler_t = { session, sent, received, _ in
    guard let session, let received, let loop = CoAPEventLoop.of(coap_session_get_context(session)), let handle = loop.response else { return COAP_RESPONSE_OK }
    return handle(session, sent, received) ? COAP_RESPONSE_OK : COAP_RESPONSE_FAIL
}

private let coapNack: coap_nack_handler_t = { session, sent, _, _ in
    guard let session, let loop = CoAPEventLoop.of(coap_session_get_context(session)) else { return }
    loop.nack?(session, sent)
}

private let coapValidateCertificate: coap_dtls_cn_callback_t = { _, der, length, session, depth, validated, arg in
    // Only the device's own certificate (depth 0) names it; the chain above it is libcoap's to check.
    guard depth == 0 else { return validated }
    guard validated != 0, let der, let session, let arg, length > 0 else { return 0 }
    let loop = Unmanaged<CoAPEventLoop>.fromOpaque(arg).takeUnretainedValue()
    return loop.validate(certificate: UnsafeBufferPointer(start: der, count: length), session: session) ? 1 : 0
}

private let coapValidatePSKIdentity: coap_dtls_id_callback_t = { identity, session, arg in
    guard let identity, let session, let arg, identity.pointee.length <= 128 else { return nil }
    let loop = Unmanaged<CoAPEventLoop>.fromOpaque(arg).takeUnretainedValue()
    let name = String(decoding: UnsafeBufferPointer(start: identity.pointee.s, count: identity.pointee.length), as: UTF8.self)
    return loop.validate(identity: name, session: session)
}

/// A DTLS server's certificate files, as the `dtls_certificate` setting gives them.
public struct ServerCertificates: Decodable, Sendable {
    public var certificate_file: String
    public var key_file: String
    public var client_ca_file: String?

    public static let fields: [ConfigField] = [
        ConfigField("certificate_file", .string, "PEM certificate the server presents.", required: true),
        ConfigField("key_file", .string, "PEM private key of that certificate.", required: true),
        ConfigField("client_ca_file", .string, "PEM CA bundle client certificates must chain to; without it, self-signed client certificates are taken and the registered fingerprint decides."),
    ]

    public static let field = ConfigField("dtls_certificate", .object(fields),
                                          "DTLS with certificates beside pre-shared keys, on dtls_listen: devices present a client certificate registered with them (kind certificate).")
}

extension CoAPEventLoop {
    /// Checks a CoAP plugin's `listen` and `dtls_listen` settings.
    public static func validate(listen: String, dtls: String?) throws {
        guard !listen.isEmpty || !(dtls ?? "").isEmpty else { throw PluginError("set listen, dtls_listen or both") }
        for a in [listen, dtls ?? ""] where !a.isEmpty {
            guard address(a) != nil else { throw PluginError("listen address '\(a)' should be HOST:PORT with a numeric host") }
        }
    }

    /// A started loop serving `listen` (UDP) and `dtls` (DTLS with the registry's pre-shared keys,
    /// through `host`); `install` sets up its resources and handlers before it listens.
    public static func serve(name: String, listen: String, dtls: String?, certificates: ServerCertificates?, maxIdleSessions: Int,
                             host: PluginHost, install: (CoAPEventLoop) -> Void) throws -> CoAPEventLoop {
        let loop = try CoAPEventLoop()
        LibcoapLog.attach(host)
        loop.limitIdleSessions(maxIdleSessions)
        loop.sessionsReport = { [host] n in host.metric(.gauge, "iotc_coap_sessions", Double(n)) }
        loop.presharedKey = { [host] identity, remote in host.presharedKey(identity: identity, remoteAddress: remote) }
        if let c = certificates {
            loop.certificate = { [host] fingerprint, remote in
                host.authenticate(Credentials(protocolName: name, certificateFingerprint: fingerprint, remoteAddress: remote))
            }
            try loop.useCertificates(certificateFile: c.certificate_file, keyFile: c.key_file, clientCAFile: c.client_ca_file)
        }
        install(loop)
        if !listen.isEmpty { try loop.listen(listen, dtls: false) }
        if let dtls, !dtls.isEmpty { try loop.listen(dtls, dtls: true) }
        loop.start(name: name)
        host.log(.info, "\(name) source listening on \([listen, dtls.map { $0.isEmpty ? "" : "\($0) (DTLS)" } ?? ""].filter { !$0.isEmpty }.joined(separator: " and "))")
        return loop
    }
}
