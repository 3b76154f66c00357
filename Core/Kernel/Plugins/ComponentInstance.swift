import CIoTCPluginABI
import Foundation
import NIOConcurrencyHelpers
import IoTCPluginKit
import Metrics

/// What the kernel offers component instances; implemented by the hub (and by test doubles).
protocol HostServices: AnyObject, Sendable {
    func submit(from: ComponentInstance, _ message: consuming Message, done: Arrival) -> Int32
    func ack(from: ComponentInstance, token: UInt64, result: Int32, reason: String?)
    func ack(from: ComponentInstance, tokens: UnsafeBufferPointer<UInt64>, result: Int32, reason: String?)
    func authenticate(from: ComponentInstance, _ credentials: Credentials) -> (GrantedIdentity, UInt64)?
    /// The device and key for a DTLS pre-shared key identity, as `iotc_host.preshared_key` answers.
    func presharedKey(from: ComponentInstance, identity: String, remoteAddress: String) -> (GrantedIdentity, UInt64, [UInt8])?
    /// A device's attributes as a JSON object, as `iotc_host.device_attributes` answers.
    func attributes(handle: UInt64) -> [UInt8]?
    /// An identity for a device the source's configuration names, as `iotc_host.claim_device` grants.
    func claim(from: ComponentInstance, tenant: String, device: String) -> (GrantedIdentity, UInt64)?
    func authorize(from: ComponentInstance, handle: UInt64, action: UInt32, topic: String) -> Bool
    func releaseIdentity(_ handle: UInt64)
    func deviceConnected(from: ComponentInstance, handle: UInt64, remote: String)
    func deviceDisconnected(from: ComponentInstance, handle: UInt64, reason: String)
    func log(from: ComponentInstance, level: UInt32, _ text: String)
    func metric(from: ComponentInstance, type: UInt32, name: String, labels: [KeyValue], value: Double)
    /// IOTC_OK, IOTC_ERR_BUSY or IOTC_ERR_NOT_FOUND, as `iotc_host.routes` answers.
    func routes(from: ComponentInstance, topic: String) -> Int32
}

/// One running source, sink or step, created through the plugin's C entry points.
final class ComponentInstance: @unchecked Sendable {
    let name: String
    let kind: ComponentKind
    /// What the plugin's errors and log lines must not show: its config's secrets and referenced values.
    let concealed: Concealed
    let component: LoadedComponent
    weak var services: (any HostServices)?
    private let host: UnsafeMutablePointer<iotc_host>
    private var instance: UnsafeMutableRawPointer?

    /// Messages from this source that no pipeline reads, and messages refused for backpressure.
    private(set) lazy var droppedNoRoute = Counter(label: "iotc_messages_dropped_total", dimensions: [("reason", "no_route"), ("source", name), ("plugin", pluginName)])
    private(set) lazy var refusedBusy = Counter(label: "iotc_messages_refused_total", dimensions: [("reason", "busy"), ("source", name), ("plugin", pluginName)])

    var pluginName: String { component.entry.plugin }
    var componentName: String { component.entry.name }
    var hasDownlink: Bool { component.raw.pointee.downlink != nil && kind == .source }

    /// A source's routes: the pipelines that read from it, with their topic filters. Kept here, under
    /// its own lock, so that submits from many threads do not contend on the hub's lock.
    let routeTable = NIOLockedValueBox<[(filter: TopicFilter?, pipeline: PipelineRuntime)]>([])
    /// A sink's runtime, which settles the sink's acknowledgements.
    weak var sinkRuntime: SinkRuntime?

    init(name: String, component: LoadedComponent, config: Value.Object, concealed: Concealed = Concealed(), services: any HostServices) throws {
        self.name = name
        self.concealed = concealed
        self.kind = component.entry.kind
        self.component = component
        self.services = services
        host = .allocate(capacity: 1)
        var h = iotc_host()
        h.struct_size = UInt32(MemoryLayout<iotc_host>.size)
        h.abi_version = IOTC_ABI_VERSION_1
        h.submit = hostSubmit
        h.ack = hostAck
        h.authenticate = hostAuthenticate
        h.authorize = hostAuthorize
        h.release_identity = hostReleaseIdentity
        h.device_connected = hostDeviceConnected
        h.device_disconnected = hostDeviceDisconnected
        h.log = hostLog
        h.metric = hostMetric
        h.routes = hostRoutes
        h.ack_batch = hostAckBatch
        h.preshared_key = hostPresharedKey
        h.device_attributes = hostDeviceAttributes
        h.claim_device = hostClaimDevice
        host.initialize(to: h)
        host.pointee.ctx = Unmanaged.passUnretained(self).toOpaque()
        let json = JSON.encode(.object(config))
        var text = [CChar](repeating: 0, count: 1024)
        let created: UnsafeMutableRawPointer? = text.withUnsafeMutableBufferPointer { buf in
            var err = iotc_error(struct_size: UInt32(MemoryLayout<iotc_error>.size), code: 0, text: buf.baseAddress, capacity: buf.count)
            return json.withUnsafeBufferPointer { j in
                j.withMemoryRebound(to: CChar.self) { component.raw.pointee.create(component.raw, host, $0.baseAddress, $0.count, &err) }
            }
        }
        guard let created else {
            // deinit frees the host structure.
            throw HubError("\(kind) '\(name)' (\(component.entry.name)): \(concealed(cText(text)))")
        }
        instance = created
    }

    func start() throws {
        var text = [CChar](repeating: 0, count: 1024)
        let r: Int32 = text.withUnsafeMutableBufferPointer { buf in
            var err = iotc_error(struct_size: UInt32(MemoryLayout<iotc_error>.size), code: 0, text: buf.baseAddress, capacity: buf.count)
            return component.raw.pointee.start(instance, &err)
        }
        guard r == IOTC_OK else { throw HubError("\(kind) '\(name)' (\(component.entry.name)) did not start: \(concealed(cText(text)))") }
    }

    /// Stops taking work and settles what is in flight.
    func stop() { component.raw.pointee.stop(instance) }

    deinit {
        if let instance { component.raw.pointee.destroy(instance) }
        host.deallocate()
    }

    func write(_ m: Message, token: UInt64) -> Int32 {
        m.withCMessage { component.raw.pointee.write(instance, $0, token) }
    }

    /// One call for the whole batch when the plugin takes batches, else one call per message.
    func write(_ messages: [Message], tokens: [UInt64]) -> (taken: Int, refusal: Int32) {
        guard let batch = component.raw.pointee.write_batch else {
            for i in messages.indices {
                let r = write(messages[i], token: tokens[i])
                if r != IOTC_OK { return (i, r) }
            }
            return (messages.count, IOTC_OK)
        }
        let taken = Message.withCMessages(messages) { c in
            tokens.withUnsafeBufferPointer { batch(instance, c.baseAddress, $0.baseAddress, c.count) }
        }
        return (min(taken, messages.count), IOTC_ERR_BUSY)
    }

    /// Asks a source to close the connections of a device whose credentials were revoked.
    @discardableResult
    func disconnect(handle: UInt64, reason: String) -> Int {
        guard let f = component.raw.pointee.disconnect else { return 0 }
        return reason.withIOTCString { f(instance, handle, $0) }
    }

    func downlink(_ m: Message, token: UInt64) -> Int32 {
        guard let f = component.raw.pointee.downlink else { return IOTC_ERR_UNSUPPORTED }
        return m.withCMessage { f(instance, $0, token) }
    }

    func process(_ m: Message) throws -> [Message] {
        let collector = ProcessCollector()
        var text = [CChar](repeating: 0, count: 1024)
        let r: Int32 = text.withUnsafeMutableBufferPointer { buf in
            var err = iotc_error(struct_size: UInt32(MemoryLayout<iotc_error>.size), code: 0, text: buf.baseAddress, capacity: buf.count)
            return m.withCMessage { cm in
                component.raw.pointee.process(instance, cm, stepEmit, Unmanaged.passUnretained(collector).toOpaque(), &err)
            }
        }
        guard r == IOTC_OK else { throw StepError(concealed(cText(text))) }
        return collector.out
    }

    fileprivate static func from(_ ctx: UnsafeMutableRawPointer?) -> ComponentInstance {
        Unmanaged<ComponentInstance>.fromOpaque(ctx!).takeUnretainedValue()
    }
}

// The C callbacks the kernel hands to plugins. They are globals in this file, not closures in main.swift,
// so that they are not isolated to the main actor.

private let stepEmit: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<iotc_message>?) -> Void = { ctx, m in
    guard let ctx, let m else { return }
    Unmanaged<ProcessCollector>.fromOpaque(ctx).takeUnretainedValue().out.append(Message(m))
}

/// Receives the messages a plugin step emits.
final class ProcessCollector { var out: [Message] = [] }

private let hostSubmit: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<iotc_message>?, iotc_submit_done_fn?, UnsafeMutableRawPointer?) -> Int32 = {
    ctx, m, done, doneCtx in
    guard let ctx, let m else { return IOTC_ERR_INVALID }
    let me = ComponentInstance.from(ctx)
    guard let services = me.services else { return IOTC_ERR_BUSY }
    let arrival = done.map { Arrival(plugin: $0, context: doneCtx) } ?? .nobody
    return services.submit(from: me, Message(m), done: arrival)
}

private let hostAck: @convention(c) (UnsafeMutableRawPointer?, UInt64, Int32, UnsafePointer<CChar>?) -> Void = { ctx, token, result, reason in
    guard let ctx else { return }
    let me = ComponentInstance.from(ctx)
    me.services?.ack(from: me, token: token, result: result, reason: reason.map { String(cString: $0) })
}

private let hostAuthenticate: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<iotc_credentials>?, UnsafeMutablePointer<iotc_identity>?) -> Int32 = {
    ctx, c, out in
    guard let ctx, let c, let out else { return IOTC_ERR_INVALID }
    let me = ComponentInstance.from(ctx)
    let p = c.pointee
    var chain: [[UInt8]] = []
    // The chain is a later field: a plugin built before it may have a shorter struct.
    if Int(p.struct_size) >= MemoryLayout<iotc_credentials>.offset(of: \.certificate_chain_count)! + MemoryLayout<Int>.size,
       let list = p.certificate_chain, p.certificate_chain_count > 0 {
        for b in UnsafeBufferPointer(start: list, count: min(p.certificate_chain_count, 8)) where b.len <= 64 * 1024 {
            chain.append(b.ptr.map { Array(UnsafeBufferPointer(start: $0, count: b.len)) } ?? [])
        }
    }
    let creds = Credentials(protocolName: String(p.protocol), device: String(p.device), username: String(p.username),
                            secret: String(p.secret), certificateFingerprint: String(p.certificate_fingerprint),
                            remoteAddress: String(p.remote_address), certificateChain: chain)
    guard let (identity, handle) = me.services?.authenticate(from: me, creds) else { return IOTC_ERR_DENIED }
    out.pointee.tenant = iotc_str(ptr: identity.cTenant, len: identity.tenant.utf8.count)
    out.pointee.device = iotc_str(ptr: identity.cDevice, len: identity.device.utf8.count)
    out.pointee.handle = handle
    return IOTC_OK
}

private let hostPresharedKey: @convention(c) (UnsafeMutableRawPointer?, iotc_str, iotc_str, UnsafeMutablePointer<UInt8>?, Int, UnsafeMutablePointer<Int>?, UnsafeMutablePointer<iotc_identity>?) -> Int32 = {
    ctx, pskIdentity, remote, key, capacity, keyLength, out in
    guard let ctx, let keyLength, let out else { return IOTC_ERR_INVALID }
    let me = ComponentInstance.from(ctx)
    guard let (identity, handle, bytes) = me.services?.presharedKey(from: me, identity: String(pskIdentity), remoteAddress: String(remote)) else {
        return IOTC_ERR_DENIED
    }
    keyLength.pointee = bytes.count
    if let key, bytes.count <= capacity { key.update(from: bytes, count: bytes.count) }
    out.pointee.tenant = iotc_str(ptr: identity.cTenant, len: identity.tenant.utf8.count)
    out.pointee.device = iotc_str(ptr: identity.cDevice, len: identity.device.utf8.count)
    out.pointee.handle = handle
    return IOTC_OK
}

private let hostClaimDevice: @convention(c) (UnsafeMutableRawPointer?, iotc_str, iotc_str, UnsafeMutablePointer<iotc_identity>?) -> Int32 = {
    ctx, tenant, device, out in
    guard let ctx, let out else { return IOTC_ERR_INVALID }
    let me = ComponentInstance.from(ctx)
    guard let (identity, handle) = me.services?.claim(from: me, tenant: String(tenant), device: String(device)) else { return IOTC_ERR_INVALID }
    out.pointee.tenant = iotc_str(ptr: identity.cTenant, len: identity.tenant.utf8.count)
    out.pointee.device = iotc_str(ptr: identity.cDevice, len: identity.device.utf8.count)
    out.pointee.handle = handle
    return IOTC_OK
}

private let hostDeviceAttributes: @convention(c) (UnsafeMutableRawPointer?, UInt64, UnsafeMutablePointer<UInt8>?, Int, UnsafeMutablePointer<Int>?) -> Int32 = {
    ctx, handle, buffer, capacity, length in
    guard let ctx, let length else { return IOTC_ERR_INVALID }
    guard let json = ComponentInstance.from(ctx).services?.attributes(handle: handle) else { return IOTC_ERR_NOT_FOUND }
    length.pointee = json.count
    if let buffer, json.count <= capacity { buffer.update(from: json, count: json.count) }
    return IOTC_OK
}

private let hostAuthorize: @convention(c) (UnsafeMutableRawPointer?, UInt64, UInt32, iotc_str) -> Int32 = { ctx, handle, action, topic in
    guard let ctx else { return IOTC_ERR_DENIED }
    let me = ComponentInstance.from(ctx)
    return me.services?.authorize(from: me, handle: handle, action: action, topic: String(topic)) == true ? IOTC_OK : IOTC_ERR_DENIED
}

private let hostReleaseIdentity: @convention(c) (UnsafeMutableRawPointer?, UInt64) -> Void = { ctx, handle in
    guard let ctx else { return }
    ComponentInstance.from(ctx).services?.releaseIdentity(handle)
}

private let hostDeviceConnected: @convention(c) (UnsafeMutableRawPointer?, UInt64, iotc_str) -> Void = { ctx, handle, remote in
    guard let ctx else { return }
    let me = ComponentInstance.from(ctx)
    me.services?.deviceConnected(from: me, handle: handle, remote: String(remote))
}

private let hostDeviceDisconnected: @convention(c) (UnsafeMutableRawPointer?, UInt64, iotc_str) -> Void = { ctx, handle, reason in
    guard let ctx else { return }
    let me = ComponentInstance.from(ctx)
    me.services?.deviceDisconnected(from: me, handle: handle, reason: String(reason))
}

private let hostLog: @convention(c) (UnsafeMutableRawPointer?, UInt32, iotc_str) -> Void = { ctx, level, text in
    guard let ctx else { return }
    let me = ComponentInstance.from(ctx)
    me.services?.log(from: me, level: level, me.concealed.isEmpty ? String(text) : me.concealed(String(text)))
}

private let hostMetric: @convention(c) (UnsafeMutableRawPointer?, UInt32, iotc_str, UnsafePointer<iotc_kv>?, Int, Double) -> Void = {
    ctx, type, name, labels, count, value in
    guard let ctx else { return }
    let me = ComponentInstance.from(ctx)
    var kv: [KeyValue] = []
    if let labels { for i in 0..<count { kv.append(KeyValue(String(labels[i].key), String(labels[i].value))) } }
    me.services?.metric(from: me, type: type, name: String(name), labels: kv, value: value)
}

private let hostRoutes: @convention(c) (UnsafeMutableRawPointer?, iotc_str) -> Int32 = { ctx, topic in
    guard let ctx else { return IOTC_ERR_NOT_FOUND }
    let me = ComponentInstance.from(ctx)
    return me.services?.routes(from: me, topic: String(topic)) ?? IOTC_ERR_NOT_FOUND
}

private let hostAckBatch: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<UInt64>?, Int, Int32, UnsafePointer<CChar>?) -> Void = {
    ctx, tokens, count, result, reason in
    guard let ctx, let tokens, count > 0 else { return }
    let me = ComponentInstance.from(ctx)
    me.services?.ack(from: me, tokens: UnsafeBufferPointer(start: tokens, count: count), result: result, reason: reason.map { String(cString: $0) })
}

/// A device identity the kernel granted; its C strings stay valid until the plugin releases it.
final class GrantedIdentity: @unchecked Sendable {
    let tenant: String
    let device: String
    /// The registry credential it was granted on, if any, and the authority that vouched for it.
    var credential: String?
    var issuer: String?
    /// Its profile, which decides the topics it may use.
    var profile = "default"
    /// The source it was granted to.
    weak var source: ComponentInstance?
    /// Whether the hub keeps its presence (connected, last seen): not for a device let in without
    /// credentials, whose id is whatever it says (each new id would be kept for good).
    var tracked = true
    let cTenant: UnsafeMutablePointer<CChar>
    let cDevice: UnsafeMutablePointer<CChar>

    init(tenant: String, device: String) {
        self.tenant = tenant
        self.device = device
        cTenant = strdup(tenant)
        cDevice = strdup(device)
    }

    deinit {
        free(cTenant)
        free(cDevice)
    }
}

/// The NUL-terminated text a plugin wrote into a buffer the kernel lent it.
private func cText(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
