import CIoTCPluginABI
import Foundation
import IoTCPluginKit
import Logging
import Metrics
import Atomics
import IoTCStore
import NIOConcurrencyHelpers

/// The running hub: source and sink instances from plugins, pipelines between them, the router, the
/// write-ahead logs, the dead-letter store, device authentication and downlink.
public final class Hub: HostServices, @unchecked Sendable {
    public let plugins: PluginSet
    public let dataDirectory: URL
    public let deadLetters: DeadLetterStore
    /// The alerts rules raised, with their lifecycle, for the operator API.
    public let alerts: AlertBook
    let logger: Logger

    private let lock = NSLock()
    /// Held while a configuration is applied or the hub stops: one change at a time.
    private let changing = NSLock()
    private var sources: [String: (config: ComponentConfig, instance: ComponentInstance)] = [:]
    private var sinks: [String: (config: ComponentConfig, runtime: SinkRuntime)] = [:]
    private var sinkByInstance: [ObjectIdentifier: SinkRuntime] = [:]
    private var pipelines: [String: PipelineRuntime] = [:]
    /// Source name to the pipelines reading it, with their topic filters.
    private var authenticator = DeviceAuthenticator(AuthConfig())
    /// Topic access per device profile; replaced on reload.
    private var topicAccess = TopicAccess()
    /// The device registry, consulted before the static tokens.
    private var directory: (any DeviceDirectory)?
    /// The store, for the `store` sink.
    private var store: (any Store)?
    /// Told of devices' answers to commands; calls its completion once the answer is kept.
    private var commandResultObserver: (@Sendable (CommandResult, @escaping @Sendable () -> Void) -> Void)?
    /// Told of failed device authentications (for the audit log), at most one a second per address.
    private var authFailureObserver: (@Sendable (DeviceAuthFailure) -> Void)?
    private let authFailureLimiter = RateLimiter(rate: 1, burst: 5)
    private var identities: [UInt64: GrantedIdentity] = [:]
    private var nextHandle: UInt64 = 1
    /// Which source holds each connected device (by tenant and id), for downlink.
    private var connectedVia: [String: String] = [:]
    /// What the hub last saw of each device, by tenant and id, and which entries changed since they
    /// were last written to the store.
    private var presence: [String: DevicePresence] = [:]
    private var changedPresence: Set<String> = []
    private var downlinkWaiters: [UInt64: @Sendable (Int32, String?) -> Void] = [:]
    /// Each pipeline's rule state, by pipeline name.
    private var ruleStates: [String: RuleStates] = [:]
    private var nextDownlinkToken: UInt64 = 1
    private let messageCounter = ManagedAtomic<UInt64>(0)
    private let idPrefix = Array((String(UInt64(Date().timeIntervalSince1970 * 1000), radix: 36) + "-").utf8)
    /// Clock for expressions (milliseconds since the epoch).
    let clock: @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) }

    private let authFailures = Counter(label: "iotc_auth_failures_total")
    private let deviceLimited = Counter(label: "iotc_rate_limited_total", dimensions: [("scope", "device")])
    private let apiLimited = Counter(label: "iotc_rate_limited_total", dimensions: [("scope", "api_key")])
    /// Rate limits from the pipeline files; nil when off. Replaced on reload.
    private let limiters = NIOLockedValueBox<(device: RateLimiter?, api: RateLimiter?, config: LimitsConfig)>((nil, nil, LimitsConfig()))
    /// Whether a device limit is set: checked first, so that submits take no lock when none is.
    private let deviceLimitOn = ManagedAtomic<Bool>(false)

    public init(plugins: PluginSet, dataDirectory: URL, logger: Logger, maxDeadLetters: Int = DeadLetterStore.defaultMaxEntries,
                maxDeadLetterBytes: Int = DeadLetterStore.defaultMaxBytes) throws {
        self.plugins = plugins
        self.dataDirectory = dataDirectory
        self.logger = logger
        try FileManager.default.createDirectory(at: dataDirectory, withIntermediateDirectories: true)
        deadLetters = try DeadLetterStore(directory: dataDirectory.appendingPathComponent("dead-letters"), maxEntries: maxDeadLetters,
                                          maxBytes: maxDeadLetterBytes) { [logger] n in
            logger.warning("the dead-letter store holds its most (\(maxDeadLetters) entries or \(maxDeadLetterBytes) bytes): removed the \(n) oldest")
        }
        alerts = AlertBook(file: dataDirectory.appendingPathComponent("alerts.json"))
    }

    // MARK: - Lifecycle

    /// Starts everything in `config`: sinks first, then pipelines (replaying their write-ahead logs),
    /// then sources.
    public func start(_ config: HubConfig) throws {
        try apply(config)
    }

    /// Applies a new configuration. Unchanged sources keep their connections, unchanged sinks their
    /// queues; a changed sink is replaced after the old instance has delivered what it holds; pipelines
    /// keep their queued messages and take the new steps.
    public func reload(_ config: HubConfig) throws {
        try apply(config)
    }

    private func apply(_ new: HubConfig) throws {
        // One change at a time (SIGHUP, the API and a stop can come together): two reloads working
        // from the same running set would both replace a changed source, and one of the two new
        // instances would keep running, unreferenced, on the port (or fail to bind it).
        try changing.withLock { () throws in try applyNow(new) }
    }

    private func applyNow(_ new: HubConfig) throws {
        let old = lock.withLock { (sources: sources, sinks: sinks, pipelines: pipelines) }

        // Prepare everything that can fail before anything running changes: new and changed sinks
        // (started, so that they connect), pipeline steps, new and changed sources (created, not started).
        var createdSinks: [SinkRuntime] = []
        var prepared: [(PipelineConfig, PipelineProcessor)] = []
        var createdSources: [(ComponentConfig, ComponentInstance)] = []
        var newSinks: [String: (config: ComponentConfig, runtime: SinkRuntime)] = [:]
        do {
            for c in new.sinks {
                if let existing = old.sinks[c.name], Self.same(existing.config, c) {
                    newSinks[c.name] = existing
                    continue
                }
                let instance: any SinkTarget
                if c.component == DownlinkSink.name {
                    instance = DownlinkSink(config: c.config, hub: self)
                } else if c.component == PipelineSink.name {
                    instance = PipelineSink(config: c.config, hub: self)
                } else if c.component == AttributesSink.name {
                    instance = AttributesSink(hub: self)
                } else if c.component == StoreSink.name {
                    guard let store = lock.withLock({ self.store }) else {
                        throw HubError("sink '\(c.name)' (store): this hub runs without a store")
                    }
                    instance = StoreSink(config: c.config, store: store)
                } else {
                    let plugin = try makeInstance(.sink, c)
                    try plugin.start()
                    instance = plugin
                }
                // A write's failure reason is the plugin's text: it may quote the sink's secrets.
                let runtime = SinkRuntime(name: c.name, instance: instance, options: c.delivery, deadLetters: deadLetters) { [logger, concealed = c.concealed] in
                    logger.warning("\(concealed($0))")
                }
                runtime.notified = { [alerts, clock] m, sink, failure in alerts.notified(m, sink: sink, failure: failure, at: clock()) }
                (instance as? DownlinkSink)?.runtime = runtime
                (instance as? PipelineSink)?.runtime = runtime
                (instance as? AttributesSink)?.runtime = runtime
                (instance as? StoreSink)?.runtime = runtime
                (instance as? ComponentInstance)?.sinkRuntime = runtime
                lock.withLock { sinkByInstance[ObjectIdentifier(instance)] = runtime }
                runtime.start()
                createdSinks.append(runtime)
                newSinks[c.name] = (c, runtime)
            }
            for p in new.pipelines { prepared.append((p, try makeProcessor(p))) }
            for c in new.sources where !(old.sources[c.name].map { Self.same($0.config, c) } ?? false) {
                createdSources.append((c, try makeInstance(.source, c)))
            }
        } catch {
            for s in createdSinks {
                s.drainAndStop(deadline: Date())
                lock.withLock { _ = sinkByInstance.removeValue(forKey: ObjectIdentifier(s.instance)) }
            }
            throw error
        }

        // Pipelines: existing ones take the new steps and keep their queues; new ones start (replaying
        // their write-ahead logs).
        let sinkMap = newSinks.mapValues(\.runtime)
        var newPipelines: [String: PipelineRuntime] = [:]
        var replays: [(PipelineRuntime, [WriteAheadLog.Entry])] = []
        for (p, processor) in prepared {
            if let existing = old.pipelines[p.name] {
                existing.update(processor: processor, sinks: sinkMap)
                if p.durable, !existing.isDurable {
                    let wal = try writeAheadLog(p.name)
                    replays.append((existing, try wal.open()))
                    existing.attach(wal: wal)
                }
                newPipelines[p.name] = existing
                continue
            }
            var wal: WriteAheadLog?
            var pending: [WriteAheadLog.Entry] = []
            if p.durable {
                let log = try writeAheadLog(p.name)
                pending = try log.open()
                wal = log
            }
            let runtime = PipelineRuntime(processor: processor, sinks: sinkMap, wal: wal, deadLetters: deadLetters) { [logger] in
                logger.warning("\($0)")
            }
            runtime.alerts = alerts
            runtime.start()
            newPipelines[p.name] = runtime
            replays.append((runtime, pending))
        }

        // Sources: unchanged ones keep their connections; changed and removed ones stop first (a changed
        // source may bind the same port).
        var newSources: [String: (config: ComponentConfig, instance: ComponentInstance)] = [:]
        for c in new.sources { if let existing = old.sources[c.name], Self.same(existing.config, c) { newSources[c.name] = existing } }
        for (name, s) in old.sources where newSources[name] == nil { s.instance.stop() }
        for (c, instance) in createdSources { newSources[c.name] = (c, instance) }

        var newRoutes: [String: [(filter: TopicFilter?, pipeline: PipelineRuntime)]] = [:]
        for p in new.pipelines {
            for ref in p.from { newRoutes[ref.source, default: []].append((ref.filter, newPipelines[p.name]!)) }
        }
        for (name, s) in newSources { s.instance.routeTable.withLockedValue { $0 = newRoutes[name] ?? [] } }
        lock.withLock {
            sources = newSources
            sinks = newSinks
            pipelines = newPipelines
            authenticator = DeviceAuthenticator(new.auth)
            topicAccess = new.access
        }
        limiters.withLockedValue { current in
            // Unchanged limits keep their buckets.
            guard current.config != new.limits else { return }
            let l = new.limits
            current = (l.deviceMessagesPerSecond > 0 ? RateLimiter(rate: l.deviceMessagesPerSecond, burst: l.deviceBurst > 0 ? l.deviceBurst : 2 * l.deviceMessagesPerSecond) : nil,
                       l.apiRequestsPerSecond > 0 ? RateLimiter(rate: l.apiRequestsPerSecond, burst: l.apiBurst > 0 ? l.apiBurst : 2 * l.apiRequestsPerSecond) : nil,
                       l)
            deviceLimitOn.store(current.device != nil, ordering: .releasing)
        }
        for (pipeline, entries) in replays where !entries.isEmpty {
            logger.info("replaying \(entries.count) messages from the write-ahead log of pipeline '\(pipeline.name)'")
            let wal = pipeline.wal!
            for e in entries {
                pipeline.push(PipelineInput(message: e.message, settlement: Settlement(wal: wal, sequence: e.sequence)))
            }
        }
        var startFailure: (any Error)?
        for (_, instance) in createdSources {
            do { try instance.start() } catch {
                logger.error("\(error)")
                startFailure = startFailure ?? error
            }
        }

        // Retire what is gone, after the swap so that nothing new reaches it.
        let deadline = Date().addingTimeInterval(30)
        for (name, p) in old.pipelines where newPipelines[name] == nil {
            p.drainAndStop(deadline: deadline)
            p.wal?.close()
        }
        for (name, s) in old.sinks where newSinks[name]?.runtime !== s.runtime {
            s.runtime.drainAndStop(deadline: deadline, successor: newSinks[name]?.runtime)
            lock.withLock { _ = sinkByInstance.removeValue(forKey: ObjectIdentifier(s.runtime.instance)) }
        }
        if let startFailure { throw startFailure }
    }

    /// Stops sources (no new messages), drains pipelines and sinks, and closes the logs.
    public func stop(timeout: TimeInterval = 30) {
        changing.withLock { stopNow(timeout: timeout) }
    }

    private func stopNow(timeout: TimeInterval) {
        let (srcs, pipes, snks) = lock.withLock { (sources, pipelines, sinks) }
        for s in srcs.values { s.instance.stop() }
        let deadline = Date().addingTimeInterval(timeout)
        // What durable pipelines hold is in their logs: their deliveries do not wait on full sinks.
        for s in snks.values { s.runtime.shedDurableDeliveries() }
        for p in pipes.values { p.drainAndStop(deadline: deadline) }
        for s in snks.values { s.runtime.drainAndStop(deadline: deadline) }
        for p in pipes.values { p.wal?.close() }
        for r in lock.withLock({ ruleStates.values }) { r.save() }
        alerts.save()
        for s in srcs.values { s.instance.routeTable.withLockedValue { $0 = [] } }
        lock.withLock {
            sources = [:]
            pipelines = [:]
            sinks = [:]
        }
        // The last references go here, outside the lock: a plugin instance's teardown may call back
        // into the hub (releasing the identities it held).
        withExtendedLifetime((srcs, pipes, snks)) {}
    }

    private static func same(_ a: ComponentConfig, _ b: ComponentConfig) -> Bool {
        a.component == b.component && a.delivery == b.delivery && JSON.encode(.object(a.config)) == JSON.encode(.object(b.config))
    }

    /// A durable pipeline's write-ahead log, in the data folder; what it tells of the disk is logged.
    private func writeAheadLog(_ pipeline: String) throws -> WriteAheadLog {
        let directory = dataDirectory.appendingPathComponent("wal").appendingPathComponent(pipeline)
        return try WriteAheadLog(directory: directory) { [logger] event in
            switch event {
            case .failed(let why):
                logger.error("the write-ahead log of pipeline '\(pipeline)' cannot write: \(why); its sources are told that new messages were not taken, until it writes again")
            case .writesAgain:
                logger.notice("the write-ahead log of pipeline '\(pipeline)' writes again")
            }
        }
    }

    private func makeInstance(_ kind: ComponentKind, _ c: ComponentConfig) throws -> ComponentInstance {
        guard let component = plugins.component(kind, c.component) else {
            throw HubError("\(kind) '\(c.name)': no loaded plugin provides '\(c.component)'")
        }
        return try ComponentInstance(name: c.name, component: component, config: c.config, concealed: c.concealed, services: self)
    }

    func makeProcessor(_ p: PipelineConfig) throws -> PipelineProcessor {
        var steps: [Int: @Sendable (CanonicalMessage) throws -> [CanonicalMessage]] = [:]
        for (i, s) in p.steps.enumerated() {
            guard case .plugin(let component, let config) = s.kind else { continue }
            let c = ComponentConfig(name: "\(p.name)#\(i + 1)", component: component, config: config, location: s.location)
            let instance = try makeInstance(.step, c)
            try instance.start()
            steps[i] = { m in try instance.process(m.pluginMessage).map { CanonicalMessage($0, receivedTime: m.receivedTime) } }
        }
        // Rule state belongs to the pipeline's name, so that a reload keeps active alerts active.
        let rules = lock.withLock { () -> RuleStates in
            if let r = ruleStates[p.name] { return r }
            // Kept in the data folder between runs, so that a restart neither re-raises nor forgets.
            let r = RuleStates(file: dataDirectory.appendingPathComponent("rules").appendingPathComponent(p.name + ".json"))
            ruleStates[p.name] = r
            return r
        }
        return PipelineProcessor(p, pluginSteps: steps, rules: rules, devices: { [weak self] tenant, labels in
            self?.lock.withLock { self?.directory }?.devices(tenant: tenant, labels: labels) ?? []
        }, clock: clock)
    }

    // MARK: - Host services

    /// A hub-unique message id: the start time and a counter, both base 36. Written into one buffer
    /// (one for every message that comes without an id): up to 15 bytes, the string is stored inline.
    func nextMessageID() -> String {
        Self.messageID(prefix: idPrefix, counter: messageCounter.wrappingIncrementThenLoad(ordering: .relaxed))
    }

    static func messageID(prefix: [UInt8], counter: UInt64) -> String {
        // A UInt64 has at most 13 digits in base 36.
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: prefix.count + 13) { buf in
            var n = counter, start = buf.count
            repeat {
                start -= 1
                buf[start] = base36Digits[Int(n % 36)]
                n /= 36
            } while n > 0
            start -= prefix.count
            _ = UnsafeMutableBufferPointer(rebasing: buf[start...]).initialize(from: prefix)
            return String(decoding: UnsafeBufferPointer(rebasing: buf[start...]), as: UTF8.self)
        }
    }

    private static let base36Digits = Array("0123456789abcdefghijklmnopqrstuvwxyz".utf8)

    func submit(from source: ComponentInstance, _ m: consuming Message, done: Arrival) -> Int32 {
        guard source.kind == .source else { return IOTC_ERR_UNSUPPORTED }
        let targets = source.routeTable.withLockedValue { $0 }
        let topic = m.topic
        // The closure below cannot consume a parameter it captures; it takes the message out of this.
        var message = Optional(m)
        // Routing and room first: a refused message costs no copy. The pipelines that take the message
        // are listed on the stack, not in an array allocated per message.
        return withUnsafeTemporaryAllocation(of: PipelineRuntime.self, capacity: targets.count) { list in
            var n = 0
            for t in targets where t.filter?.matches(topic) ?? true {
                (list.baseAddress! + n).initialize(to: t.pipeline)
                n += 1
            }
            defer { list.baseAddress?.deinitialize(count: n) }
            return submit(from: source, message.take()!, to: UnsafeBufferPointer(rebasing: list[..<n]), done: done)
        }
    }

    private func submit(from source: ComponentInstance, _ m: consuming Message, to pipelines: UnsafeBufferPointer<PipelineRuntime>,
                        done: Arrival) -> Int32 {
        if m.kind == .commandResult, let answered = takeCommandResult(m, done: pipelines.isEmpty ? done : .nobody) {
            if pipelines.isEmpty { return answered }
        }
        guard !pipelines.isEmpty else {
            source.droppedNoRoute.increment()
            return IOTC_ERR_NOT_FOUND
        }
        guard pipelines.allSatisfy(\.hasRoom) else {
            source.refusedBusy.increment()
            return IOTC_ERR_BUSY
        }
        // Over its rate, a device is held back like a full pipeline holds it back.
        if deviceLimitOn.load(ordering: .acquiring), let limiter = limiters.withLockedValue({ $0.device }), limiter.take(Self.deviceKey(m.tenant, m.device)) != nil {
            deviceLimited.increment()
            return IOTC_ERR_BUSY
        }
        let message = canonical(m)
        let durable = pipelines.lazy.filter(\.isDurable).count
        let arrive = durable == 0 ? Arrival.nobody : Arrival.all(durable, then: done)
        // Every pipeline but the last takes a copy; the last takes the message itself (a copy retains
        // each of its strings and arrays once more).
        let last = pipelines[pipelines.count - 1]
        for p in pipelines.dropLast() { p.accept(message, durable: p.isDurable ? arrive : .nobody) }
        last.accept(consume message, durable: last.isDurable ? arrive : .nobody)
        if durable == 0 { done(true) }
        return IOTC_OK
    }

    /// A source's message as the pipelines take it: received now, with an id and a tenant.
    private func canonical(_ m: consuming Message) -> CanonicalMessage {
        var message = CanonicalMessage(m, receivedTime: clock())
        if message.id.isEmpty { message.id = nextMessageID() }
        if message.tenant.isEmpty { message.tenant = "default" }
        return message
    }

    func routes(from source: ComponentInstance, topic: String) -> Int32 {
        guard source.kind == .source else { return IOTC_ERR_NOT_FOUND }
        var routed = false
        for route in source.routeTable.withLockedValue({ $0 }) where route.filter?.matches(topic) ?? true {
            guard route.pipeline.hasRoom else {
                // Counted as a refusal: the source holds the message back exactly as if submit had said so.
                source.refusedBusy.increment()
                return IOTC_ERR_BUSY
            }
            routed = true
        }
        if !routed, CommandTopics.isResult(topic), lock.withLock({ commandResultObserver != nil }) { return IOTC_OK }
        return routed ? IOTC_OK : IOTC_ERR_NOT_FOUND
    }

    /// Hands a device's answer to a command to the observer. Returns nil when there is no observer or
    /// the topic names no command; `done` (when given) follows once the answer is kept.
    private func takeCommandResult(_ m: Message, done: Arrival) -> Int32? {
        guard let observer = lock.withLock({ commandResultObserver }), let (device, id) = CommandTopics.parseResult(m.topic) else { return nil }
        let result = CommandResult(tenant: m.tenant.isEmpty ? "default" : m.tenant, device: String(device), id: String(id),
                                   contentType: m.contentType, payload: m.payload)
        observer(result) { done(true) }
        return IOTC_OK
    }

    func ack(from: ComponentInstance, token: UInt64, result: Int32, reason: String?) {
        switch from.kind {
        case .sink:
            // Each instance settles through its own runtime, so that a sink being replaced on reload
            // still settles its own writes.
            from.sinkRuntime?.ack(token: token, result: result, reason: reason)
        case .source:
            let waiter = lock.withLock { downlinkWaiters.removeValue(forKey: token) }
            waiter?(result, reason)
        case .step:
            break
        }
    }

    func ack(from: ComponentInstance, tokens: UnsafeBufferPointer<UInt64>, result: Int32, reason: String?) {
        if from.kind == .sink {
            from.sinkRuntime?.ack(tokens: tokens, result: result, reason: reason)
        } else {
            for t in tokens { ack(from: from, token: t, result: result, reason: reason) }
        }
    }

    /// Devices authenticate against the registry too, once it is attached.
    public func attach(directory: any DeviceDirectory) { lock.withLock { self.directory = directory } }

    /// Reports failed device authentications to `observer` (the audit log); a flood from one address
    /// is reported at about one a second, and counted in full in `iotc_auth_failures_total`.
    public func observeAuthFailures(_ observer: @escaping @Sendable (DeviceAuthFailure) -> Void) {
        lock.withLock { authFailureObserver = observer }
    }

    /// Sends devices' answers to commands (messages on `devices/{device}/results/{id}`) to `observer`.
    /// Answers are taken whether or not a pipeline reads them too; one that no pipeline reads is
    /// acknowledged once `observer` calls its completion.
    public func observeCommandResults(_ observer: @escaping @Sendable (CommandResult, @escaping @Sendable () -> Void) -> Void) {
        lock.withLock { commandResultObserver = observer }
    }

    /// Gives the `store` sink its store; call before `start`.
    public func attach(store: any Store) { lock.withLock { self.store = store } }

    func authenticate(from: ComponentInstance, _ c: Credentials) -> (GrantedIdentity, UInt64)? {
        let (auth, directory) = lock.withLock { (authenticator, self.directory) }
        let registered = directory?.authenticate(c)
        guard let (tenant, device) = registered.map({ ($0.tenant, $0.device) }) ?? auth.authenticate(c) else {
            refused(from: from, c)
            return nil
        }
        // A device without credentials (auth.allow_anonymous) names itself: its presence is not kept,
        // or a client sending under ever new ids would grow the hub's memory and store without bound
        // (about 460 bytes per id, by hand). The API shows presence for registry devices only anyway.
        return admit(from: from, tenant: tenant, device: device, registered: registered, remoteAddress: c.remoteAddress,
                     tracked: registered != nil || !c.secret.isEmpty)
    }

    /// The device and key for a DTLS pre-shared key identity (registry devices only: the pipeline
    /// files hold no keys). An unknown identity counts as a failed authentication.
    func presharedKey(from: ComponentInstance, identity: String, remoteAddress: String) -> (GrantedIdentity, UInt64, [UInt8])? {
        guard let (grant, key) = lock.withLock({ directory })?.presharedKey(identity: identity) else {
            refused(from: from, Credentials(protocolName: from.pluginName, device: identity, remoteAddress: remoteAddress))
            return nil
        }
        let (granted, handle) = admit(from: from, tenant: grant.tenant, device: grant.device, registered: grant, remoteAddress: remoteAddress)
        return (granted, handle, key)
    }

    /// Sets some of a registered device's attributes (the `attributes` sink): false when the hub has
    /// no registry or the device is not in it.
    func mergeAttributes(tenant: String, device: String, _ fields: Value.Object) async throws -> Bool {
        guard let directory = lock.withLock({ self.directory }) else { return false }
        return try await directory.mergeAttributes(tenant: tenant, device: device, fields)
    }

    /// Hands a message to a pipeline by name (the `pipeline` sink): IOTC_OK when taken, and `done` is
    /// told once it is logged (at once on a pipeline without a log); IOTC_ERR_BUSY when the pipeline is
    /// full, IOTC_ERR_NOT_FOUND when there is none by that name (`done` is not called then).
    func feed(pipeline name: String, _ message: CanonicalMessage, done: @escaping @Sendable (Bool) -> Void) -> Int32 {
        guard let p = lock.withLock({ pipelines[name] }) else { return IOTC_ERR_NOT_FOUND }
        guard p.hasRoom else { return IOTC_ERR_BUSY }
        if p.isDurable {
            p.accept(message, durable: Arrival(done))
        } else {
            p.accept(message, durable: .nobody)
            done(true)
        }
        return IOTC_OK
    }

    /// An identity for a device a source reaches itself and names in its configuration (a PLC it
    /// polls): no credentials, since the operator wrote it into the pipeline file. Sources only.
    func claim(from: ComponentInstance, tenant: String, device: String) -> (GrantedIdentity, UInt64)? {
        let tenant = tenant.isEmpty ? "default" : tenant
        guard from.kind == .source, CommandTopics.isDeviceID(tenant), CommandTopics.isDeviceID(device) else { return nil }
        return admit(from: from, tenant: tenant, device: device, registered: nil, remoteAddress: "")
    }

    /// The attributes of the device authenticated as `handle`, as a JSON object (`{}` for none); nil
    /// for an unknown handle.
    func attributes(handle: UInt64) -> [UInt8]? {
        guard let (identity, directory) = lock.withLock({ identities[handle].map { ($0, self.directory) } }) else { return nil }
        return directory?.attributes(tenant: identity.tenant, device: identity.device) ?? Array("{}".utf8)
    }

    /// A failed device authentication: counted always; audited and logged at most once a second per
    /// address (a burst of 5), so that a client hammering wrong credentials floods neither.
    private func refused(from: ComponentInstance, _ c: Credentials) {
        authFailures.increment()
        let address = c.remoteAddress.split(separator: ":").dropLast().joined(separator: ":")
        let device = String(c.device.prefix(128))
        guard authFailureLimiter.take(address.isEmpty ? c.remoteAddress : address) == nil else { return }
        if let observer = lock.withLock({ authFailureObserver }) {
            observer(DeviceAuthFailure(protocolName: c.protocolName, device: device, source: from.name, remoteAddress: c.remoteAddress))
        }
        logger.warning("device authentication failed", metadata: [
            "protocol": "\(c.protocolName)", "device": "\(device)", "remote": "\(c.remoteAddress)", "source": "\(from.name)",
        ])
    }

    private func admit(from: ComponentInstance, tenant: String, device: String, registered: DirectoryGrant?, remoteAddress: String,
                       tracked: Bool = true) -> (GrantedIdentity, UInt64) {
        let identity = GrantedIdentity(tenant: tenant, device: device)
        identity.tracked = tracked
        identity.credential = registered?.credential
        identity.issuer = registered?.issuer
        if let registered { identity.profile = registered.profile }
        identity.source = from
        let now = clock()
        let handle = lock.withLock { () -> UInt64 in
            let h = nextHandle
            nextHandle += 1
            identities[h] = identity
            guard tracked else { return h }
            let key = Self.deviceKey(tenant, device)
            changedPresence.insert(key)
            if presence[key] == nil {
                presence[key] = DevicePresence(connected: false, source: from.name, remoteAddress: remoteAddress, since: now, lastSeen: now)
            } else {
                presence[key]?.lastSeen = now
            }
            return h
        }
        return (identity, handle)
    }

    /// A device's topic access, by its profile (the `access` section of the pipeline files). Its
    /// tenant's confinement is the source's: topics are always within the device's tenant.
    func authorize(from: ComponentInstance, handle: UInt64, action: UInt32, topic: String) -> Bool {
        guard let (identity, access) = lock.withLock({ identities[handle].map { ($0, topicAccess) } }) else { return false }
        if action == IOTC_ACTION_SUBSCRIBE { return access.maySubscribe(profile: identity.profile, device: identity.device, filter: topic) }
        return access.mayPublish(profile: identity.profile, device: identity.device, topic: topic)
    }

    /// Closes the connections of every device authenticated with one of these credentials (they were
    /// revoked or expired), or with one an authority among them vouched for. Returns the number of
    /// connections the sources closed.
    @discardableResult
    public func revoke(credentials: Set<String>) -> Int {
        guard !credentials.isEmpty else { return 0 }
        let affected = lock.withLock {
            identities.filter { [$0.value.credential, $0.value.issuer].contains { $0.map(credentials.contains) ?? false } }
        }
        var closed = 0
        for (handle, identity) in affected {
            closed += identity.source?.disconnect(handle: handle, reason: "the device's credentials were revoked") ?? 0
        }
        if closed > 0 { logger.notice("closed \(closed) connections of devices whose credentials were revoked") }
        return closed
    }

    func releaseIdentity(_ handle: UInt64) { lock.withLock { _ = identities.removeValue(forKey: handle) } }

    func deviceConnected(from: ComponentInstance, handle: UInt64, remote: String) {
        let now = clock()
        lock.withLock {
            guard let id = identities[handle] else { return }
            let key = Self.deviceKey(id.tenant, id.device)
            connectedVia[key] = from.name
            guard id.tracked else { return }
            presence[key] = DevicePresence(connected: true, source: from.name, remoteAddress: remote, since: now, lastSeen: now)
            changedPresence.insert(key)
        }
    }

    func deviceDisconnected(from: ComponentInstance, handle: UInt64, reason: String) {
        let now = clock()
        lock.withLock {
            guard let id = identities[handle] else { return }
            let key = Self.deviceKey(id.tenant, id.device)
            if connectedVia[key] == from.name { connectedVia[key] = nil }
            guard id.tracked, let i = presence.index(forKey: key), presence.values[i].source == from.name else { return }
            changedPresence.insert(key)
            presence.values[i].connected = false
            presence.values[i].since = now
            presence.values[i].lastSeen = now
        }
    }

    /// The device states that changed since the last call, for the store to keep.
    public func takeChangedStates() -> [DeviceState] {
        lock.withLock {
            defer { changedPresence.removeAll(keepingCapacity: true) }
            return changedPresence.compactMap { key in
                guard let p = presence[key], let slash = key.firstIndex(of: "/") else { return nil }
                return DeviceState(tenant: String(key[..<slash]), device: String(key[key.index(after: slash)...]), connected: p.connected,
                                   source: p.source, remoteAddress: p.remoteAddress, since: p.since, lastSeen: p.lastSeen)
            }
        }
    }

    /// States that `takeChangedStates` gave but the store did not keep (it was unreachable, say): the
    /// next call gives them again, as they are by then.
    public func returnUnsaved(_ states: [DeviceState]) {
        lock.withLock {
            for s in states { changedPresence.insert(Self.deviceKey(s.tenant, s.device)) }
        }
    }

    /// Device states kept from before a restart. Their connections ended with the hub that held them:
    /// a device recorded as connected is disconnected since that hub was last seen to see it.
    public func restore(states: [DeviceState]) {
        lock.withLock {
            for s in states {
                let key = Self.deviceKey(s.tenant, s.device)
                guard presence[key] == nil else { continue }
                presence[key] = DevicePresence(connected: false, source: s.source, remoteAddress: s.remoteAddress,
                                               since: s.connected ? s.lastSeen : s.since, lastSeen: s.lastSeen)
                if s.connected { changedPresence.insert(key) }
            }
        }
    }

    /// What the hub last saw of a device: connected or not, through which source, since when, and when
    /// it last connected, disconnected or authenticated a request. Nil when not seen since the start.
    public func presence(tenant: String, device: String) -> DevicePresence? {
        lock.withLock { presence[Self.deviceKey(tenant, device)] }
    }

    func log(from: ComponentInstance, level: UInt32, _ text: String) {
        let levels: [Logger.Level] = [.trace, .debug, .info, .notice, .warning, .error]
        let l = level < UInt32(levels.count) ? levels[Int(level)] : .error
        logger.log(level: l, "\(text)", metadata: ["plugin": "\(from.pluginName)", "\(from.kind)": "\(from.name)"])
    }

    func metric(from: ComponentInstance, type: UInt32, name: String, labels: [KeyValue], value: Double) {
        let dims = [("plugin", from.pluginName), (from.kind.rawValue, from.name)] + labels.map { ($0.key, $0.value) }
        switch type {
        case IOTC_METRIC_COUNTER: Counter(label: name, dimensions: dims).increment(by: Int64(value))
        case IOTC_METRIC_GAUGE: Gauge(label: name, dimensions: dims).record(value)
        default: Recorder(label: name, dimensions: dims, aggregate: true).record(value)
        }
    }

    // MARK: - Operations

    /// Sends a downlink message to a device through the source that holds it (or the one named) and
    /// waits until the source settles it.
    public func sendDownlink(_ message: Message, source: String? = nil, timeout: TimeInterval = 30) async -> (Int32, String?) {
        await withCheckedContinuation { (k: CheckedContinuation<(Int32, String?), Never>) in
            sendDownlink(message, source: source, timeout: timeout) { k.resume(returning: ($0, $1)) }
        }
    }

    /// Sends a downlink message; `done` is called exactly once, with the source's result or a time-out.
    /// Needs no Swift concurrency, so that sinks can call it from their own threads.
    func sendDownlink(_ message: Message, source: String?, timeout: TimeInterval, done: @escaping @Sendable (Int32, String?) -> Void) {
        let target: ComponentInstance? = lock.withLock {
            if let source { return sources[source]?.instance }
            if let via = connectedVia[Self.deviceKey(message.tenant, message.device)] { return sources[via]?.instance }
            let capable = sources.values.map(\.instance).filter(\.hasDownlink)
            return capable.count == 1 ? capable[0] : nil
        }
        guard let target else {
            return done(IOTC_ERR_NOT_FOUND, source.map { "no source named '\($0)'" } ?? "device '\(message.device)' is not connected; name the source")
        }
        guard target.hasDownlink else { return done(IOTC_ERR_UNSUPPORTED, "source '\(target.name)' has no downlink") }
        let once = Once()
        let token = lock.withLock { () -> UInt64 in
            let t = nextDownlinkToken
            nextDownlinkToken += 1
            downlinkWaiters[t] = { r, reason in if once.claim() { done(r, reason) } }
            return t
        }
        var m = message
        if m.id.isEmpty { m.id = nextMessageID() }
        let r = target.downlink(m, token: token)
        if r != IOTC_OK {
            _ = lock.withLock { downlinkWaiters.removeValue(forKey: token) }
            if once.claim() { done(r, "the source refused the downlink (code \(r))") }
            return
        }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout) { [weak self] in
            _ = self?.lock.withLock { self?.downlinkWaiters.removeValue(forKey: token) }
            if once.claim() { done(IOTC_ERR_RETRY, "the device did not take the message within \(Int(timeout))s") }
        }
    }

    /// Whether `name` is a running source that sends to devices.
    public func hasDownlinkSource(_ name: String) -> Bool { lock.withLock { sources[name]?.instance.hasDownlink ?? false } }

    /// The source a device is connected through, if any.
    public func connectedSource(tenant: String = "default", of device: String) -> String? {
        lock.withLock { connectedVia[Self.deviceKey(tenant, device)] }
    }

    /// Devices are unique per tenant: the key of one in the hub's tables. No tenant is `default`.
    public static func deviceKey(_ tenant: String, _ device: String) -> String { (tenant.isEmpty ? "default" : tenant) + "/" + device }

    /// Replays dead letters: a failed delivery goes back to its sink, a failed step back to its pipeline.
    /// Replayed entries leave the store. An entry whose sink or pipeline has no room now stays in the
    /// store (`left`), to be replayed later: this never waits for room, since it runs for the operator
    /// API on the process's shared task pool (waiting there, two replays into a stalled sink held every
    /// thread of the pool, and the API answered nothing). `skipped` are the ids asked for that are not
    /// in the store, or whose sink or pipeline is gone.
    public func replayDeadLetters(ids: [String]?) -> (replayed: Int, skipped: [String], left: Int) {
        let entries = ids.map { $0.compactMap { deadLetters.entry(id: $0) } } ?? deadLetters.list()
        var replayed = 0, left = 0, skipped: [String] = []
        if let ids { skipped = ids.filter { id in !entries.contains { $0.id == id } } }
        for e in entries {
            let (sink, pipeline) = lock.withLock { (e.sink.flatMap { sinks[$0]?.runtime }, pipelines[e.pipeline]) }
            let taken: Bool
            if e.sink != nil {
                guard let sink else { skipped.append(e.id); continue }
                taken = sink.offer(Delivery(message: e.message.pluginMessage, pipeline: e.pipeline, settlement: nil))
            } else {
                guard let pipeline else { skipped.append(e.id); continue }
                taken = pipeline.offer(PipelineInput(message: e.message, settlement: nil))
            }
            guard taken else {
                left += 1
                continue
            }
            deadLetters.remove(ids: [e.id])
            replayed += 1
        }
        return (replayed, skipped, left)
    }

    /// Takes an operator API request of this key from its rate: nil when allowed, else the seconds
    /// until the key may call again.
    public func takeAPIRequest(key: String) -> Double? {
        guard let limiter = limiters.withLockedValue({ $0.api }), let wait = limiter.take(key) else { return nil }
        apiLimited.increment()
        return wait
    }

    /// A snapshot for the API and the banner.
    public struct Status: Sendable {
        public var sources: [(name: String, component: String)]
        public var sinks: [(name: String, component: String, queued: Int)]
        public var pipelines: [(name: String, durable: Bool, queued: Int)]
    }

    public var status: Status {
        lock.withLock {
            Status(
                sources: sources.values.map { ($0.config.name, $0.config.component) }.sorted { $0.0 < $1.0 },
                sinks: sinks.values.map { ($0.config.name, $0.config.component, $0.runtime.queued) }.sorted { $0.0 < $1.0 },
                pipelines: pipelines.values.map { ($0.name, $0.isDurable, $0.queued) }.sorted { $0.0 < $1.0 })
        }
    }
}

/// A device that presented credentials the hub refused (never the credentials themselves).
public struct DeviceAuthFailure: Sendable {
    public var protocolName: String
    public var device: String
    public var source: String
    public var remoteAddress: String
}

/// A device's answer to a command.
public struct CommandResult: Sendable {
    public var tenant: String
    public var device: String
    public var id: String
    public var contentType: String
    public var payload: [UInt8]
}

/// A device's connection state as the hub saw it (milliseconds since the epoch).
public struct DevicePresence: Sendable, Equatable {
    public var connected: Bool
    public var source: String
    public var remoteAddress: String
    /// When it connected (or disconnected, when not connected).
    public var since: Int64
    /// Its last connect, disconnect or authenticated request.
    public var lastSeen: Int64
}

/// Calls `done` once all durable pipelines have logged a message (false if any failed).
final class DurabilityLatch: @unchecked Sendable {
    private let lock = NSLock()
    private var remaining: Int
    private var ok = true
    private let done: Arrival

    init(count: Int, done: Arrival) {
        remaining = count
        self.done = done
    }

    func arrive(_ success: Bool) {
        let finished = lock.withLock { () -> Bool in
            ok = ok && success
            remaining -= 1
            return remaining == 0
        }
        if finished { done(ok) }
    }
}

/// True the first time only.
final class Once: @unchecked Sendable {
    private let lock = NSLock()
    private var done = false
    func claim() -> Bool { lock.withLock { defer { done = true }; return !done } }
}
