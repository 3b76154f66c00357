import IoTCPluginKit
import MQTTBroker
import MQTTCodec
import NIOConcurrencyHelpers
import NIOCore

/// Devices' configuration on MQTT: a device (authenticated by the hub) that subscribes to its
/// `config_topic` gets the attributes the operator set for it (JSON) as a retained message there at
/// once, and each change after that. The source compares every connected watched device's attributes
/// with what it last published once a second, so a change made through this hub's API or by an
/// `attributes` sink arrives within about a second (one made on another node once this node's registry
/// reloads, every 2 s); a device that was offline gets the current
/// ones when it connects again (its persistent session keeps the subscription). The topic is the hub's:
/// devices may not publish to it.
final class DeviceConfigs: @unchecked Sendable {
    private let host: PluginHost
    /// The topic template's text before and after `{device}`.
    private let prefix: String, suffix: String
    private struct Watch {
        var identity: Identity
        var connections: Int
        var etag: UInt64?
    }
    /// Devices that subscribed to their configuration, by tenant and device.
    private let watches = NIOLockedValueBox<[String: Watch]>([:])
    /// Set at start; the retained messages go into it.
    var broker: Broker?

    init(host: PluginHost, template: String) {
        self.host = host
        let marker = template.range(of: "{device}")
        prefix = String(template[..<(marker?.lowerBound ?? template.endIndex)])
        suffix = String(template[(marker?.upperBound ?? template.endIndex)...])
    }

    func topic(device: String) -> String { prefix + device + suffix }

    /// Whether `topic` is `device`'s configuration topic. It runs for every publish of a device, so it
    /// compares bytes and builds nothing.
    func isConfigTopic(_ topic: String, device: String) -> Bool {
        let t = topic.utf8
        return t.count == prefix.utf8.count + device.utf8.count + suffix.utf8.count && t.starts(with: prefix.utf8)
            && t.dropFirst(prefix.utf8.count).starts(with: device.utf8) && t.suffix(suffix.utf8.count).elementsEqual(suffix.utf8)
    }

    private static func key(_ identity: Identity) -> String { identity.tenant + "/" + identity.device }

    /// A device subscribes to `filter`: when it covers the device's configuration topic, the device is
    /// watched from now on, and its configuration is retained there before the subscription takes it.
    func subscribing(_ identity: Identity, filter: String) {
        guard TopicMatch.matches(topic: topic(device: identity.device), filter: filter) else { return }
        let key = Self.key(identity)
        watches.withLockedValue { w in
            if w[key] == nil { w[key] = Watch(identity: identity, connections: 1, etag: nil) } else { w[key]?.identity = identity }
        }
        publishIfChanged(key)
    }

    func connected(_ identity: Identity) {
        let key = Self.key(identity)
        let watched = watches.withLockedValue { w -> Bool in
            guard w[key] != nil else { return false }
            w[key]?.identity = identity
            w[key]?.connections += 1
            return true
        }
        if watched { publishIfChanged(key) }
    }

    func disconnected(_ identity: Identity) {
        watches.withLockedValue { w in
            let key = Self.key(identity)
            if let c = w[key]?.connections { w[key]?.connections = max(0, c - 1) }
        }
    }

    /// Publishes what changed for the connected watched devices (every second).
    func poll() {
        for key in watches.withLockedValue({ w in w.filter { $0.value.connections > 0 }.map(\.key) }) { publishIfChanged(key) }
    }

    private func publishIfChanged(_ key: String) {
        guard let broker, let identity = watches.withLockedValue({ $0[key]?.identity }) else { return }
        let json = host.attributes(identity) ?? Array("{}".utf8)
        let etag = FNV1a.hash(json)
        let changed = watches.withLockedValue { w -> Bool in
            guard w[key] != nil, w[key]?.etag != etag else { return false }
            w[key]?.etag = etag
            return true
        }
        guard changed else { return }
        let space = TenantSpace(tenant: identity.tenant)
        broker.publish(BrokerMessage(topic: space.topic(topic(device: identity.device)), payload: ByteBuffer(bytes: json), qos: 1, retain: true,
                                     properties: [.string(MQTTProperty.contentType, "application/json"), .byte(MQTTProperty.payloadFormatIndicator, 1)]),
                       from: nil)
    }
}
