import Foundation
import IoTCPluginKit

/// A validated set of pipeline files: sources, sinks, pipelines and device authentication.
public struct HubConfig: Sendable {
    public var sources: [ComponentConfig] = []
    public var sinks: [ComponentConfig] = []
    public var pipelines: [PipelineConfig] = []
    public var auth = AuthConfig()
    public var limits = LimitsConfig()
    public var access = TopicAccess()
    public var files: [String] = []
    /// What plugins' checks derived from their configs (a Modbus source's request plan), for `iotc check`.
    public var notes: [Diagnostic] = []

    public func source(_ name: String) -> ComponentConfig? { sources.first { $0.name == name } }
    public func sink(_ name: String) -> ComponentConfig? { sinks.first { $0.name == name } }
}

/// One source or sink instance as a pipeline file declares it.
public struct ComponentConfig: Sendable {
    public var name: String
    /// The component's name within its plugin (`http`, `file`).
    public var component: String
    /// The validated config handed to the plugin.
    public var config: Value.Object
    public var location: SourceLocation
    /// Kernel delivery options; sinks only.
    public var delivery = DeliveryOptions()
    /// Names of fields that are secret, so that nothing prints their values.
    public var secretFields: [String] = []
    /// What messages about the component must not show (its secrets, and what references brought in).
    public var concealed = Concealed()
}

/// How the kernel feeds a sink.
public struct DeliveryOptions: Sendable, Equatable {
    public var maxInFlight = 64
    public var queueSize = 1024
    /// Payload bytes queued, besides the count (one message always goes).
    public var queueBytes = 64 << 20
    public var maxAttempts = 10
    public var initialBackoff = 0.1
    public var maxBackoff = 30.0
}

/// A pipeline: where messages come from, the steps they go through, and where they go.
public struct PipelineConfig: Sendable {
    public var name: String
    public var from: [SourceReference]
    public var steps: [StepConfig]
    public var to: [String]
    /// Sinks for messages a step could not handle; empty means the dead-letter store.
    public var errors: [String]
    public var durable: Bool
    public var queueSize: Int
    public var location: SourceLocation
    /// Payload bytes queued, besides the count (one message always goes).
    public var queueBytes = PipelineConfig.defaultQueueBytes

    /// Messages a pipeline queues by default before its sources are told to back off.
    public static let defaultQueueSize = 8192
    public static let defaultQueueBytes = 64 << 20
}

/// `source` or `source:topic/filter/#`.
public struct SourceReference: Sendable, Equatable {
    public var source: String
    public var filter: TopicFilter?
    public var location: SourceLocation
}

/// Device credentials known before the device registry exists: static tokens per device.
public struct AuthConfig: Sendable {
    public var allowAnonymous = false
    public var tokens: [DeviceToken] = []

    public struct DeviceToken: Sendable {
        public var device: String
        public var tenant: String
        public var token: String
    }
}

/// A step as written in a pipeline.
public struct StepConfig: Sendable {
    public enum Kind: Sendable {
        /// Decode bytes to a value; nil means by the message's content type.
        case decode(PayloadCodec?)
        case encode(PayloadCodec)
        /// Build a new payload from expressions.
        case map([Assignment])
        /// Change fields of the payload, metadata or envelope.
        case set([Assignment])
        case filter(Expression)
        case route([RouteCase])
        /// Raise and clear alerts per key.
        case rule(RuleConfig)
        /// A step a plugin provides.
        case plugin(component: String, config: Value.Object)
    }
    public var kind: Kind
    public var location: SourceLocation
    /// The name used in errors and metrics (`decode`, `map`, ...).
    public var name: String
}

/// `target: expression` in map and set.
public struct Assignment: Sendable {
    public enum Target: Sendable, Equatable {
        case field([String])
        case metadata(String)
        case envelope(String)
    }
    public var target: Target
    public var expression: Expression
    public var location: SourceLocation
}

/// One case of a route step; the first that matches takes the message.
public struct RouteCase: Sendable {
    public var topic: TopicFilter?
    public var when: Expression?
    public var metadata: [KeyValue]
    public var to: [String]
    /// Also let the message go on through the rest of the pipeline.
    public var continues: Bool
    public var location: SourceLocation
}

/// Payload encodings the kernel handles itself.
public enum PayloadCodec: String, Sendable, CaseIterable {
    case json, cbor

    public var contentType: String {
        switch self {
        case .json: "application/json"
        case .cbor: "application/cbor"
        }
    }

    public init?(contentType: String) {
        switch MediaType(contentType) {
        case .json: self = .json
        case .cbor: self = .cbor
        case .other: return nil
        }
    }

    public func decode(_ bytes: [UInt8]) throws(DecodeError) -> Value {
        switch self {
        case .json: try JSON.decode(bytes)
        case .cbor: try CBOR.decode(bytes)
        }
    }

    public func encode(_ value: Value) -> [UInt8] {
        switch self {
        case .json: JSON.encode(value)
        case .cbor: CBOR.encode(value)
        }
    }
}
