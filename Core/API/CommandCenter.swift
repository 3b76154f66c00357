import Foundation
import IoTCKernel
import IoTCPluginKit
import IoTCStore
import Logging
import NIOConcurrencyHelpers

/// Device commands from the API to the device and back. A command is kept in the store from the
/// start: it goes to the device at once when the device is connected, or waits (queued) until the
/// device connects or the command expires. The device's answer on `devices/{id}/results/{command}`
/// settles it. Whoever sent it may wait for the answer; anyone may look its status up later.
public final class CommandCenter: @unchecked Sendable {
    public let commands: Commands
    private let hub: Hub
    private let logger: Logger
    /// How long a source may take to hand a command to a connected device.
    let deliveryTimeout: TimeInterval
    private let lock = NIOLock()
    /// Commands being handed to a device now (not offered twice at once).
    private var inFlight: Set<String> = []
    /// Whether the store may hold open commands (unknown at start), and a count of commands made, so that
    /// the queue is not polled while there is nothing to deliver or expire.
    private var mayHaveOpen = true
    private var made = 0
    /// Callers waiting for a command to reach a final status.
    private var waiters: [String: [UInt64: AsyncStream<Void>.Continuation]] = [:]
    private var nextWaiter: UInt64 = 0

    public init(hub: Hub, commands: Commands, logger: Logger, deliveryTimeout: TimeInterval = 10) {
        self.hub = hub
        self.commands = commands
        self.logger = logger
        self.deliveryTimeout = deliveryTimeout
    }

    /// Receives the devices' answers from the hub.
    public func attach() {
        hub.observeCommandResults { [weak self] result, done in
            guard let self else { return done() }
            Task {
                await self.take(result)
                done()
            }
        }
    }

    /// Creates a command and hands it to its device if the device is connected.
    public func send(tenant: String, device: String, name: String, payload: Value, expiresIn: TimeInterval, source: String?) async throws -> DeviceCommand {
        let expiresAt = Int64((Date().timeIntervalSince1970 + expiresIn) * 1000)
        let c = try await commands.create(tenant: tenant, device: device, name: name, payload: String(decoding: JSON.encode(payload), as: UTF8.self), expiresAt: expiresAt)
        lock.withLock {
            made += 1
            mayHaveOpen = true
        }
        await offer(c, source: source)
        return try await commands.get(tenant: tenant, id: c.id) ?? c
    }

    /// Waits until the command is final (answered or expired) or `timeout` seconds pass; returns it as it is then.
    public func wait(tenant: String, id: String, timeout: TimeInterval) async throws -> DeviceCommand? {
        // Listening before looking: an answer in between still wakes us.
        let (stream, k) = AsyncStream<Void>.makeStream()
        let token = lock.withLock { () -> UInt64 in
            nextWaiter += 1
            waiters[id, default: [:]][nextWaiter] = k
            return nextWaiter
        }
        defer { lock.withLock { _ = waiters[id]?.removeValue(forKey: token); if waiters[id]?.isEmpty == true { waiters[id] = nil } } }
        guard let now = try await commands.get(tenant: tenant, id: id) else { return nil }
        guard !now.status.isFinal, timeout > 0 else { return now }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { for await _ in stream { break } }
            group.addTask { try? await Task.sleep(nanoseconds: UInt64(timeout * 1e9)) }
            _ = await group.next()
            group.cancelAll()
        }
        return try await commands.get(tenant: tenant, id: id)
    }

    private func wake(_ id: String) {
        let ks = lock.withLock { waiters[id].map { Array($0.values) } ?? [] }
        for k in ks { k.yield() }
    }

    /// A device answered: the command succeeds, or fails when the answer is a JSON object with
    /// `"ok": false` or an `error` member.
    func take(_ r: CommandResult) async {
        let text = r.payload.isEmpty ? "null" : String(decoding: r.payload, as: UTF8.self)
        let parsed = try? JSON.decode(r.payload)
        var failed = false
        if case .object(let o)? = parsed {
            if case .bool(false)? = o["ok"] { failed = true }
            if let e = o["error"], e != .null { failed = true }
        }
        // Kept as JSON: an answer that is not JSON becomes a JSON string.
        let result = parsed != nil ? text : String(decoding: JSON.encode(.string(text)), as: UTF8.self)
        do {
            if try await commands.complete(tenant: r.tenant, device: r.device, id: r.id, succeeded: !failed, result: result) {
                wake(r.id)
            }
        } catch {
            logger.warning("cannot record the answer to command \(r.id): \(error)")
        }
    }

    /// Hands a queued command to its device when the device is connected (through `source`, when named).
    private func offer(_ c: DeviceCommand, source: String?) async {
        guard let via = hub.connectedSource(tenant: c.tenant, of: c.device), source == nil || source == via else { return }
        guard lock.withLock({ inFlight.insert(c.id).inserted }) else { return }
        defer { _ = lock.withLock { inFlight.remove(c.id) } }
        var message = Message(kind: .command, tenant: c.tenant, device: c.device,
                              topic: CommandTopics.command(device: c.device, name: c.name, id: c.id),
                              contentType: "application/json", payload: Array(c.payload.utf8), qos: 1,
                              metadata: [KeyValue("command", c.name), KeyValue("command_id", c.id)])
        message.id = c.id
        // MQTT 5 devices are told where to answer.
        message.properties = [KeyValue("mqtt.response_topic", CommandTopics.result(device: c.device, id: c.id)),
                              KeyValue("mqtt.correlation_data", Base64.encode(Array(c.id.utf8)))]
        let (code, reason) = await hub.sendDownlink(message, source: via, timeout: deliveryTimeout)
        guard code == 0 else {
            logger.debug("command \(c.id) not delivered yet: \(reason ?? "code \(code)")")
            return
        }
        do { _ = try await commands.markDelivered(id: c.id) } catch { logger.warning("cannot record the delivery of command \(c.id): \(error)") }
    }

    /// Expires what is past its expiry and offers the queued commands to their devices that are
    /// connected now. Runs every `interval` seconds until cancelled; while no command is open it looks
    /// only every 15th time (for commands another node of the same store made).
    public func run(every interval: TimeInterval = 1) async {
        var round = 0
        while !Task.isCancelled {
            round += 1
            do {
                if let seen = lock.withLock({ mayHaveOpen || round % 15 == 0 ? made : nil }) {
                    try await commands.expire()
                    for c in try await commands.queued() where hub.connectedSource(tenant: c.tenant, of: c.device) != nil {
                        await offer(c, source: nil)
                    }
                    if try await commands.openCount() == 0 {
                        // Unless a command was made meanwhile.
                        lock.withLock { if made == seen { mayHaveOpen = false } }
                    }
                }
            } catch {
                logger.warning("command queue: \(error)")
            }
            try? await Task.sleep(nanoseconds: UInt64(interval * 1e9))
        }
    }
}
