import Foundation
import IoTCPluginKit

/// Reads pipeline files into a `HubConfig`, reporting every problem with its file:line:column.
public struct HubConfigLoader: Sendable {
    public let catalog: ComponentCatalog
    public let environment: [String: String]
    /// Unset `${env:...}` variables are warnings rather than errors (`iotc check --ignore-missing-env`).
    public let missingEnvironmentIsWarning: Bool

    public init(catalog: ComponentCatalog, environment: [String: String] = ProcessInfo.processInfo.environment,
                missingEnvironmentIsWarning: Bool = false) {
        self.catalog = catalog
        self.environment = environment
        self.missingEnvironmentIsWarning = missingEnvironmentIsWarning
    }

    /// Kernel options every sink takes besides its plugin's own fields.
    public static let sinkFields: [ConfigField] = [
        ConfigField("plugin", .string, "The sink component that delivers messages.", example: "webhook", required: true),
        ConfigField("max_in_flight", .int, "Most messages handed to the sink and not yet settled.", default: "64"),
        ConfigField("queue_size", .int, "Messages waiting for this sink before pipelines feeding it wait.", default: "1024"),
        ConfigField("queue_bytes", .byteSize, "Payload bytes waiting for this sink before pipelines feeding it wait, whatever their count (one message always goes).", default: String(DeliveryOptions().queueBytes), example: "64MiB"),
        ConfigField("retry", .object(retryFields), "Retries with exponential backoff and jitter before a message goes to the dead-letter store.", default: #"{"max_attempts":10,"initial_backoff":0.1,"max_backoff":30}"#),
    ]

    static let retryFields: [ConfigField] = [
        ConfigField("max_attempts", .int, "Deliveries tried before the message goes to the dead-letter store (0: no limit).", default: "10"),
        ConfigField("initial_backoff", .duration, "Wait before the first retry (at least 10ms); it doubles each time.", default: "0.1", example: "100ms"),
        ConfigField("max_backoff", .duration, "Longest wait between retries (not shorter than initial_backoff).", default: "30", example: "30s"),
    ]

    /// Kernel options every source takes besides its plugin's own fields.
    public static let sourceFields: [ConfigField] = [
        ConfigField("plugin", .string, "The source component that receives messages.", example: "http", required: true),
    ]

    /// The fields of a pipeline.
    public static let pipelineFields: [ConfigField] = [
        ConfigField("from", .list(.string), "Sources, each optionally with a topic filter: `devices` or `devices:sensors/+/telemetry`.", example: "[ devices ]", required: true),
        ConfigField("steps", .list(.any), "Steps applied in order: decode, encode, map, set, filter, route, or a plugin step.", default: "[]"),
        ConfigField("to", .list(.string), "Sinks that receive every message that leaves the last step.", default: "[]"),
        ConfigField("errors", .list(.string), "Sinks for messages a step could not handle; without it they go to the dead-letter store.", default: "[]"),
        ConfigField("durable", .bool, "Write each message to the write-ahead log before the device is acknowledged.", default: "false"),
        ConfigField("queue_size", .int, "Messages waiting for this pipeline before sources are told to back off (the default holds about a tenth of a second at 60,000 messages/s, so that a pipeline thread kept off the CPU for a moment does not turn into refusals).", default: String(PipelineConfig.defaultQueueSize)),
        ConfigField("queue_bytes", .byteSize, "Payload bytes waiting for this pipeline before sources are told to back off, whatever their count (one message always goes).", default: String(PipelineConfig.defaultQueueBytes), example: "64MiB"),
        ConfigField("description", .string, "What the pipeline is for."),
        ConfigField("fields", .list(.string), "The payload fields this pipeline's messages carry once decoded: iotc check warns of a step that reads another (after a map step, the fields it makes are known without this).", example: "[ temperature, humidity ]"),
    ]

    public static let authFields: [ConfigField] = [
        ConfigField("allow_anonymous", .bool, "Accept devices that present no credentials (for development only).", default: "false"),
        ConfigField("tokens", .list(.object([
            ConfigField("device", .string, "Device id.", required: true),
            ConfigField("token", .string, "Bearer token or password.", example: "${env:SENSOR_1_TOKEN}", required: true, secret: true),
            ConfigField("tenant", .string, "Tenant the device belongs to.", default: #""default""#),
        ])), "Static device tokens.", default: "[]"),
    ]

    public static let limitFields: [ConfigField] = [
        ConfigField("device_messages_per_second", .float, "Messages each device may send per second, on average; over it, the hub applies backpressure (HTTP 503 with Retry-After, MQTT stops reading). 0: no limit.", default: "0"),
        ConfigField("device_burst", .float, "Messages a device may send at once above its rate (default: twice the rate).", default: "0"),
        ConfigField("api_requests_per_second", .float, "Operator API requests each API key may make per second; over it, 429 with Retry-After. 0: no limit.", default: "0"),
        ConfigField("api_burst", .float, "API requests a key may make at once above its rate (default: twice the rate).", default: "0"),
    ]

    public static let profileFields: [ConfigField] = [
        ConfigField("publish", .list(.string), "Topic filters the profile's devices may publish to; `{device}` is the device's own id.",
                    default: #"[ "devices/{device}/#" ]"#, example: #"[ "devices/{device}/#", "gateways/{device}/#" ]"#),
        ConfigField("subscribe", .list(.string), "Topic filters the profile's devices may subscribe to (a subscription must lie within one of them).",
                    default: #"[ "devices/{device}/#" ]"#, example: #"[ "devices/+/commands/#" ]"#),
    ]

    public static let accessFields: [ConfigField] = [
        ConfigField("profiles", .map(.object(profileFields)), """
            Topic access per device profile, always within the device's own tenant. A profile not listed gets             `default`'s access; `default`, unless set, is the device's own topics (`devices/{device}/#`).
            """, default: "{}"),
    ]

    public static let topLevelFields: [ConfigField] = [
        ConfigField("version", .int, "Pipeline file format version.", default: "1", options: []),
        ConfigField("sources", .map(.object(sourceFields)), "Named source instances.", default: "{}"),
        ConfigField("sinks", .map(.object(sinkFields)), "Named sink instances.", default: "{}"),
        ConfigField("pipelines", .map(.object(pipelineFields)), "Named pipelines.", default: "{}"),
        ConfigField("auth", .object(authFields), "Device authentication.", default: "{}"),
        ConfigField("limits", .object(limitFields), "Rate limits per device and per API key.", default: "{}"),
        ConfigField("access", .object(accessFields), "Which topics devices may use, per device profile.", default: "{}"),
    ]

    /// Loads and checks files; throws every error found (warnings are returned, plugins' notes are in
    /// the config's `notes`).
    public func load(files: [String]) throws(ConfigurationError) -> (HubConfig, [Diagnostic]) {
        var texts: [(String, String)] = []
        var d = Diagnostics()
        for f in files {
            guard let data = FileManager.default.contents(atPath: f) else {
                d.error(.init(file: f, line: 1, column: 1), "cannot read file", hint: "check the path")
                continue
            }
            guard let text = String(data: data, encoding: .utf8) else {
                d.error(.init(file: f, line: 1, column: 1), "the file is not UTF-8 text")
                continue
            }
            texts.append((f, text))
        }
        if d.hasErrors { throw ConfigurationError(diagnostics: d.items) }
        return try load(texts: texts)
    }

    /// Loads and checks (file name, text) pairs.
    public func load(texts: [(file: String, text: String)]) throws(ConfigurationError) -> (HubConfig, [Diagnostic]) {
        var d = Diagnostics()
        var config = HubConfig()
        var pending: [(String, SourceLocation, YAMLNode, SpecValidator)] = []
        // Names declared even when their definition has errors, so that references to them do not cascade.
        var declared: (sources: Set<String>, sinks: Set<String>) = ([], [])
        for (file, text) in texts {
            config.files.append(file)
            let root: YAMLNode?
            do { root = try YAMLNode.parse(text, file: file) } catch {
                d.append(contentsOf: Diagnostics(error.diagnostics))
                continue
            }
            guard let root else { continue }
            // `${file:...}` paths are relative to the file's folder ("." for a file named without one).
            let folder = (file as NSString).deletingLastPathComponent
            var v = SpecValidator(baseDirectory: folder.isEmpty ? "." : folder, environment: environment,
                                  missingEnvironmentIsWarning: missingEnvironmentIsWarning)
            guard case .mapping(let pairs, _) = root else {
                d.error(root.location, "a pipeline file should be a mapping with sources, sinks and pipelines")
                continue
            }
            for (key, keyLoc, value) in pairs {
                switch key {
                case "version":
                    if value.string != "1" { d.error(value.location, "unsupported pipeline file version '\(value.string ?? value.typeName)'", hint: "this hub reads version 1") }
                case "sources", "sinks":
                    let kind: ComponentKind = key == "sources" ? .source : .sink
                    for (name, nameLoc, node) in mappingPairs(value, "'\(key)'", &d) where Self.checkName(name, of: "\(kind)", at: nameLoc, &d) {
                        let isNew = kind == .source ? declared.sources.insert(name).inserted : declared.sinks.insert(name).inserted
                        guard isNew else {
                            d.error(nameLoc, "\(kind) '\(name)' is defined twice")
                            continue
                        }
                        if let c = component(kind, name, nameLoc, node, &v) {
                            if kind == .source { config.sources.append(c) } else { config.sinks.append(c) }
                        }
                    }
                case "pipelines":
                    for (name, nameLoc, node) in mappingPairs(value, "'pipelines'", &d) where Self.checkName(name, of: "pipeline", at: nameLoc, &d) {
                        if config.pipelines.contains(where: { $0.name == name }) || pending.contains(where: { $0.0 == name }) {
                            d.error(nameLoc, "pipeline '\(name)' is defined twice")
                            continue
                        }
                        pending.append((name, nameLoc, node, v))
                    }
                case "auth":
                    let o = v.object(value, fields: Self.authFields, context: "auth")
                    if case .bool(let b)? = o["allow_anonymous"] { config.auth.allowAnonymous = config.auth.allowAnonymous || b }
                    if case .array(let items)? = o["tokens"] {
                        for case .object(let t) in items {
                            if case .string(let device)? = t["device"], case .string(let token)? = t["token"], case .string(let tenant)? = t["tenant"] {
                                config.auth.tokens.append(.init(device: device, tenant: tenant, token: token))
                            }
                        }
                    }
                case "limits":
                    let o = v.object(value, fields: Self.limitFields, context: "limits")
                    func number(_ k: String) -> Double? { o[k]?.number }
                    for (k, keyPath) in [("device_messages_per_second", \LimitsConfig.deviceMessagesPerSecond), ("device_burst", \LimitsConfig.deviceBurst),
                                         ("api_requests_per_second", \LimitsConfig.apiRequestsPerSecond), ("api_burst", \LimitsConfig.apiBurst)] {
                        guard let n = number(k) else { continue }
                        var at = value.location
                        if case .mapping(let pairs, _) = value, let pair = pairs.first(where: { $0.key == k }) { at = pair.value.location }
                        if n < 0 { d.error(at, "limits.\(k) cannot be negative", hint: "use 0 for no limit") } else { config.limits[keyPath: keyPath] = n }
                    }
                case "access":
                    let o = v.object(value, fields: Self.accessFields, context: "access")
                    guard case .object(let profiles)? = o["profiles"] else { break }
                    let profileNodes = value["profiles"].map { mappingPairs($0, "'access.profiles'", &d) } ?? []
                    for (name, rules) in profiles {
                        guard case .object(let r) = rules else { continue }
                        let node = profileNodes.first { $0.0 == name }?.2
                        func filters(_ key: String) -> [String] {
                            guard case .array(let items)? = r[key] else { return TopicAccess.Rules.ownTopics.publish }
                            var out: [String] = []
                            for (i, item) in items.enumerated() {
                                guard case .string(let f) = item else { continue }
                                if let why = TopicFilter.validate(TopicAccess.fill(f, "device")) {
                                    let at = listItems(node?[key]).dropFirst(i).first?.location ?? node?.location ?? value.location
                                    d.error(at, "access.profiles.\(name).\(key): '\(f)' is not a topic filter: \(why)")
                                }
                                out.append(f)
                            }
                            return out
                        }
                        if config.access.profiles[name] != nil, let node { d.error(node.location, "profile '\(name)' is defined twice") }
                        config.access.profiles[name] = TopicAccess.Rules(publish: filters("publish"), subscribe: filters("subscribe"))
                    }
                default:
                    let hint = Suggest.closest(key, in: Self.topLevelFields.map(\.name)).map { "did you mean '\($0)'?" }
                        ?? "a pipeline file has sources, sinks, pipelines, auth, limits and access"
                    d.error(keyLoc, "unknown section '\(key)'", hint: hint)
                }
            }
            d.append(contentsOf: v.diagnostics)
        }
        // Pipelines last: they refer to sources and sinks from any file.
        for (name, loc, node, validator) in pending {
            var v = validator
            v.diagnostics = Diagnostics()
            if let p = pipeline(name, loc, node, config, declared, &v) { config.pipelines.append(p) }
            d.append(contentsOf: v.diagnostics)
        }
        // The kernel's downlink sink names a source, from any file.
        for s in config.sinks where s.component == DownlinkSink.name {
            guard case .string(let source)? = s.config["source"], !declared.sources.contains(source) else { continue }
            let names = declared.sources.sorted()
            let hint = Suggest.closest(source, in: names).map { "did you mean '\($0)'?" }
                ?? (names.isEmpty ? "define it under 'sources'" : "defined sources: \(names.joined(separator: ", "))")
            d.error(s.location, "sink '\(s.name)' sends downlink through undefined source '\(source)'", hint: hint)
        }
        // The pipeline sink names a pipeline, from any file.
        for s in config.sinks where s.component == PipelineSink.name {
            guard case .string(let target)? = s.config["pipeline"], !config.pipelines.contains(where: { $0.name == target }) else { continue }
            let names = config.pipelines.map(\.name).sorted()
            let hint = Suggest.closest(target, in: names).map { "did you mean '\($0)'?" } ?? "defined pipelines: \(names.joined(separator: ", "))"
            d.error(s.location, "sink '\(s.name)' hands messages to undefined pipeline '\(target)'", hint: hint)
        }
        d.sort()
        if d.hasErrors { throw ConfigurationError(diagnostics: d.items) }
        config.notes = d.items.filter { $0.severity == .note }
        return (config, d.items.filter { $0.severity != .note })
    }

    /// Whether a source, sink or pipeline name is one the hub can use everywhere it goes: in file names
    /// under the data folder (a pipeline's write-ahead log and rule state), in `source:filter`
    /// references, metric labels and the API's paths. 1 to 64 letters, digits, '_', '-' and '.', not
    /// starting with '.'; an error at the name otherwise (a name such as "../x" would put files
    /// outside the data folder).
    static func checkName(_ name: String, of what: String, at loc: SourceLocation, _ d: inout Diagnostics) -> Bool {
        let bytes = Array(name.utf8)
        let ok = (1...64).contains(bytes.count) && bytes[0] != UInt8(ascii: ".")
            && bytes.allSatisfy { b in
                (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F || b == 0x2D || b == 0x2E
            }
        if !ok {
            d.error(loc, "'\(name.prefix(64))' is not a valid \(what) name", hint: "1 to 64 letters, digits, '_', '-' and '.', not starting with '.'")
        }
        return ok
    }

    private func mappingPairs(_ node: YAMLNode, _ context: String, _ d: inout Diagnostics) -> [(String, SourceLocation, YAMLNode)] {
        if node.isNullScalar { return [] }
        guard case .mapping(let pairs, _) = node else {
            d.error(node.location, "\(context) should be a mapping of names, not a \(node.typeName)")
            return []
        }
        return pairs.map { ($0.key, $0.keyLocation, $0.value) }
    }

    private func component(_ kind: ComponentKind, _ name: String, _ loc: SourceLocation, _ node: YAMLNode, _ v: inout SpecValidator) -> ComponentConfig? {
        let context = "\(kind) '\(name)'"
        guard case .mapping = node else {
            v.diagnostics.error(node.location, "\(context) should be a mapping with a 'plugin' field, not a \(node.typeName)")
            return nil
        }
        guard let pluginNode = node["plugin"], let plugin = pluginNode.string else {
            v.diagnostics.error(loc, "\(context) needs a 'plugin' field", hint: "one of: \(catalog.names(kind).sorted().joined(separator: ", "))")
            return nil
        }
        guard let entry = catalog.entry(kind, plugin) else {
            let other = ComponentKind.allCases.first { $0 != kind && catalog.entry($0, plugin) != nil }
            let hint = other.map { "'\(plugin)' is a \($0), not a \(kind)" }
                ?? Suggest.closest(plugin, in: catalog.names(kind)).map { "did you mean '\($0)'?" }
                ?? "known \(kind)s: \(catalog.names(kind).sorted().joined(separator: ", "))"
            v.diagnostics.error(pluginNode.location, "unknown \(kind) plugin '\(plugin)'", hint: hint)
            return nil
        }
        let kernelFields = kind == .sink ? Self.sinkFields : Self.sourceFields
        let errorsBefore = v.diagnostics.errors.count
        var config = v.object(node, fields: entry.fields + kernelFields.filter { $0.name != "plugin" }, context: context, ignoring: ["plugin"])
        var c = ComponentConfig(name: name, component: plugin, config: Value.Object(), location: loc)
        c.secretFields = entry.fields.filter(\.secret).map(\.name)
        if kind == .sink {
            if let n = Self.count("max_in_flight", in: config, node, least: 1, context: context, &v) { c.delivery.maxInFlight = n }
            if let n = Self.count("queue_size", in: config, node, least: 1, context: context, &v) { c.delivery.queueSize = n }
            if let n = Self.count("queue_bytes", in: config, node, least: 1, context: context, &v) { c.delivery.queueBytes = n }
            if case .object(let r)? = config["retry"] {
                if let n = Self.count("retry.max_attempts", in: r, node, least: 0, context: context, &v) { c.delivery.maxAttempts = n }
                // A failing sink retried without a pause would take a core (a file sink on a full disk
                // failed 80,000 times in five seconds with no backoff).
                var initialTaken = true
                if let s = r["initial_backoff"]?.number {
                    initialTaken = s >= 0.01
                    if initialTaken { c.delivery.initialBackoff = s } else {
                        v.diagnostics.error(node.descendant("retry.initial_backoff").location, "field 'initial_backoff' of \(context) must be at least 10ms")
                    }
                }
                // Compared with the initial backoff the file gave, not with the default in its place.
                if initialTaken, let s = r["max_backoff"]?.number {
                    if s >= c.delivery.initialBackoff { c.delivery.maxBackoff = s } else {
                        v.diagnostics.error(node.descendant("retry.max_backoff").location, "field 'max_backoff' of \(context) must not be shorter than initial_backoff")
                    }
                }
            }
        }
        for f in kernelFields { config[f.name] = nil }
        c.config = config
        c.concealed = v.concealed
        // The plugin's own checks, on a config whose fields are all well typed.
        if let check = entry.check, v.diagnostics.errors.count == errorsBefore {
            for f in check(config) {
                let at = node.descendant(f.path)
                let text = "\(context): \(c.concealed(f.text))", hint = f.hint.map { c.concealed($0) }
                switch f.severity {
                case .error: v.diagnostics.error(at.location, text, hint: hint)
                case .warning: v.diagnostics.warning(at.location, text, hint: hint)
                case .note: v.diagnostics.append(Diagnostic(.note, at: at.location, text, hint: hint))
                }
            }
        }
        return c
    }

    /// A count of the kernel's (a queue, a window, attempts) at `path` (dotted; its last part is read from
    /// `values`): an error at the value when it is below `least`.
    private static func count(_ path: String, in values: Value.Object, _ node: YAMLNode, least: Int64, context: String,
                              _ v: inout SpecValidator) -> Int? {
        let key = String(path.split(separator: ".").last ?? "")
        guard case .int(let n)? = values[key] else { return nil }
        guard n >= least else {
            v.diagnostics.error(node.descendant(path).location, "field '\(key)' of \(context) must be at least \(least), not \(n)")
            return nil
        }
        return Int(n)
    }

    private func pipeline(_ name: String, _ loc: SourceLocation, _ node: YAMLNode, _ config: HubConfig,
                          _ declared: (sources: Set<String>, sinks: Set<String>), _ v: inout SpecValidator) -> PipelineConfig? {
        let context = "pipeline '\(name)'"
        let o = v.object(node, fields: Self.pipelineFields.filter { $0.name != "steps" }, context: context, ignoring: ["steps"])
        guard case .mapping = node else { return nil }
        var p = PipelineConfig(name: name, from: [], steps: [], to: [], errors: [], durable: false, queueSize: PipelineConfig.defaultQueueSize, location: loc)
        if case .bool(let b)? = o["durable"] { p.durable = b }
        if let n = Self.count("queue_size", in: o, node, least: 1, context: context, &v) { p.queueSize = n }
        if let n = Self.count("queue_bytes", in: o, node, least: 1, context: context, &v) { p.queueBytes = n }
        // Source references, with their own locations.
        for item in listItems(node["from"]) {
            guard case .scalar(let text, let quoted, let l) = item else { continue }
            let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
            let source = parts.first ?? ""
            var ref = SourceReference(source: source, filter: nil, location: l)
            if config.source(source) == nil {
                if declared.sources.contains(source) { continue }
                let names = declared.sources.sorted()
                let hint = Suggest.closest(source, in: names).map { "did you mean '\($0)'?" }
                    ?? (names.isEmpty ? "define it under 'sources'" : "defined sources: \(names.joined(separator: ", "))")
                v.diagnostics.error(l, "\(context) reads from undefined source '\(source)'", hint: hint)
                continue
            }
            if parts.count == 2 {
                let at = l.advanced(by: source.count + 1 + (quoted ? 1 : 0))
                if let problem = TopicFilter.validate(parts[1]) {
                    v.diagnostics.error(at, "invalid topic filter '\(parts[1])' in \(context): \(problem)")
                    continue
                }
                ref.filter = TopicFilter(parts[1])
            }
            p.from.append(ref)
        }
        p.to = sinkNames(node["to"], context: "\(context) 'to'", config, declared.sinks, &v)
        p.errors = sinkNames(node["errors"], context: "\(context) 'errors'", config, declared.sinks, &v)
        if case .array(let fields)? = o["fields"] {
            v.payloadFields = Set(fields.compactMap { if case .string(let s) = $0 { s } else { nil } })
            v.payloadFieldsOrigin = "the fields of \(context)"
        }
        defer { v.payloadFields = nil }
        if let stepsNode = node["steps"] {
            if case .sequence(let items, _) = stepsNode {
                for item in items {
                    guard let s = step(item, context, config, declared, &v) else { continue }
                    p.steps.append(s)
                    Self.followFields(through: s, &v)
                }
            } else if !stepsNode.isNullScalar {
                v.diagnostics.error(stepsNode.location, "'steps' of \(context) should be a list, not a \(stepsNode.typeName)")
            }
        }
        let sends = p.steps.contains { step in
            switch step.kind {
            case .route: true
            case .rule: true  // its alerts reach the alert book, and sinks when it names some
            default: false
            }
        }
        if node["to"] == nil && !sends {
            v.diagnostics.warning(loc, "\(context) has no 'to' sinks, no route step and no rule: its messages go nowhere")
        }
        return p
    }

    private func listItems(_ node: YAMLNode?) -> [YAMLNode] {
        switch node {
        case .sequence(let items, _)?: items
        case .scalar(let s, _, _)? where !s.isEmpty: [node!]
        default: []
        }
    }

    private func sinkNames(_ node: YAMLNode?, context: String, _ config: HubConfig, _ declared: Set<String>, _ v: inout SpecValidator) -> [String] {
        var out: [String] = []
        for item in listItems(node) {
            guard case .scalar(let name, _, let l) = item else { continue }
            guard config.sink(name) != nil else {
                if declared.contains(name) { continue }
                let names = declared.sorted()
                let hint = Suggest.closest(name, in: names).map { "did you mean '\($0)'?" }
                    ?? (names.isEmpty ? "define it under 'sinks'" : "defined sinks: \(names.joined(separator: ", "))")
                v.diagnostics.error(l, "\(context) names undefined sink '\(name)'", hint: hint)
                continue
            }
            out.append(name)
        }
        return out
    }

    static let builtinSteps = ["decode", "encode", "map", "set", "filter", "route", "rule"]

    private func step(_ node: YAMLNode, _ context: String, _ config: HubConfig, _ declared: (sources: Set<String>, sinks: Set<String>),
                      _ v: inout SpecValidator) -> StepConfig? {
        guard case .mapping(let pairs, _) = node, pairs.count == 1, let (key, keyLoc, value) = pairs.first.map({ ($0.key, $0.keyLocation, $0.value) }) else {
            v.diagnostics.error(node.location, "a step is a mapping with one key, such as '- decode: json'",
                                hint: "steps: \(Self.builtinSteps.joined(separator: ", "))")
            return nil
        }
        let stepContext = "step '\(key)' of \(context)"
        func codec(_ allowAuto: Bool) -> PayloadCodec?? {
            guard case .scalar(let s, _, let l) = value else {
                v.diagnostics.error(value.location, "\(stepContext) takes a codec name, not a \(value.typeName)", hint: "json or cbor")
                return nil
            }
            if allowAuto, s == "auto" { return .some(nil) }
            guard let c = PayloadCodec(rawValue: s) else {
                let options = PayloadCodec.allCases.map(\.rawValue) + (allowAuto ? ["auto"] : [])
                v.diagnostics.error(l, "unknown codec '\(s)' in \(stepContext)", hint: Suggest.closest(s, in: options).map { "did you mean '\($0)'?" } ?? "one of: \(options.joined(separator: ", "))")
                return nil
            }
            return .some(c)
        }
        switch key {
        case "decode":
            guard let c = codec(true) else { return nil }
            return StepConfig(kind: .decode(c), location: keyLoc, name: key)
        case "encode":
            guard let c = codec(false), let codec = c else { return nil }
            return StepConfig(kind: .encode(codec), location: keyLoc, name: key)
        case "map", "set":
            guard case .mapping(let assignments, _) = value else {
                v.diagnostics.error(value.location, "\(stepContext) takes a mapping of 'field: expression'", hint: "for example temperature_c: \"(temperature - 32) / 1.8\"")
                return nil
            }
            var out: [Assignment] = []
            for (target, targetLoc, exprNode) in assignments {
                guard let t = assignmentTarget(target, targetLoc, stepContext, &v.diagnostics),
                      let e = expression(exprNode, stepContext, &v) else { continue }
                out.append(Assignment(target: t, expression: e, location: exprNode.location))
            }
            return StepConfig(kind: key == "map" ? .map(out) : .set(out), location: keyLoc, name: key)
        case "filter":
            guard let e = expression(value, stepContext, &v) else { return nil }
            return StepConfig(kind: .filter(e), location: keyLoc, name: key)
        case "rule":
            return rule(value, keyLoc, stepContext, config, declared.sinks, &v)
        case "route":
            guard case .sequence(let items, _) = value else {
                v.diagnostics.error(value.location, "\(stepContext) takes a list of cases", hint: "- { topic: \"alarms/#\", to: [ops] }")
                return nil
            }
            var cases: [RouteCase] = []
            for item in items {
                if let c = routeCase(item, stepContext, config, declared.sinks, &v) { cases.append(c) }
            }
            return StepConfig(kind: .route(cases), location: keyLoc, name: key)
        default:
            guard let entry = catalog.entry(.step, key) else {
                let candidates = Self.builtinSteps + catalog.names(.step)
                v.diagnostics.error(keyLoc, "unknown step '\(key)' in \(context)",
                                    hint: Suggest.closest(key, in: candidates).map { "did you mean '\($0)'?" } ?? "steps: \(candidates.joined(separator: ", "))")
                return nil
            }
            let config = v.object(value, fields: entry.fields, context: stepContext)
            return StepConfig(kind: .plugin(component: key, config: config), location: keyLoc, name: key)
        }
    }

    private func assignmentTarget(_ target: String, _ loc: SourceLocation, _ context: String, _ d: inout Diagnostics) -> Assignment.Target? {
        let parts = target.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard !parts.contains(where: \.isEmpty) else {
            d.error(loc, "invalid target '\(target)' in \(context)", hint: "a field name or path such as location.lat, meta.key or msg.topic")
            return nil
        }
        switch parts[0] {
        case "meta":
            guard parts.count == 2 else { d.error(loc, "metadata target '\(target)' should be meta.NAME"); return nil }
            return .metadata(parts[1])
        case "msg":
            let settable = ["topic", "device", "kind", "content_type", "tenant"]
            guard parts.count == 2, settable.contains(parts[1]) else {
                d.error(loc, "cannot set '\(target)' in \(context)", hint: "settable envelope fields: \(settable.map { "msg.\($0)" }.joined(separator: ", "))")
                return nil
            }
            return .envelope(parts[1])
        default:
            let path = parts[0] == "payload" ? Array(parts.dropFirst()) : parts
            // Payloads nest no deeper than the hub decodes them (and setting a field walks its path).
            let deepest = DecodeLimits().maxDepth
            guard path.count <= deepest else {
                d.error(loc, "target '\(target.prefix(40))…' in \(context) is nested deeper than \(deepest) levels")
                return nil
            }
            return .field(path)
        }
    }

    /// The payload fields known after a step: a map makes exactly its fields, a set adds its own,
    /// an encode or a plugin step leaves them unknown.
    static func followFields(through s: StepConfig, _ v: inout SpecValidator) {
        func fields(_ assignments: [Assignment]) -> Set<String>? {
            var out = Set<String>()
            for a in assignments {
                switch a.target {
                case .field(let path): guard let first = path.first else { return nil }; out.insert(first)
                default: continue
                }
            }
            return out
        }
        switch s.kind {
        case .map(let a):
            v.payloadFields = fields(a)
            v.payloadFieldsOrigin = "the map step at \(s.location.line):\(s.location.column)"
        case .set(let a):
            if let known = v.payloadFields, let added = fields(a) { v.payloadFields = known.union(added) } else { v.payloadFields = nil }
        case .encode, .plugin:
            v.payloadFields = nil
        default:
            break
        }
    }

    /// Warns of the payload fields an expression (or template) at `loc` reads that the messages are
    /// known not to carry.
    private func checkFields(_ refs: [(name: String, offset: Int)], at loc: SourceLocation, quoted: Bool, _ context: String, _ v: inout SpecValidator) {
        guard let known = v.payloadFields else { return }
        for r in refs where !known.contains(r.name) {
            let names = known.sorted()
            let hint = Suggest.closest(r.name, in: names).map { "did you mean '\($0)'?" }
                ?? "they carry \(names.isEmpty ? "none" : names.joined(separator: ", ")) (\(v.payloadFieldsOrigin))"
            v.diagnostics.warning(loc.advanced(by: r.offset + (quoted ? 1 : 0)),
                                  "\(context) reads field '\(r.name)', which the messages here do not carry: it would be an error on every message", hint: hint)
        }
    }

    private func expression(_ node: YAMLNode, _ context: String, _ v: inout SpecValidator) -> Expression? {
        guard case .scalar(let text, let quoted, let loc) = node else {
            v.diagnostics.error(node.location, "\(context) needs an expression, not a \(node.typeName)")
            return nil
        }
        do {
            let e = try Expression(text)
            checkFields(e.fieldReferences, at: loc, quoted: quoted, context, &v)
            return e
        } catch {
            v.diagnostics.error(loc.advanced(by: error.offset + (quoted ? 1 : 0)), "invalid expression in \(context): \(error.message)")
            return nil
        }
    }

    private func rule(_ node: YAMLNode, _ keyLoc: SourceLocation, _ context: String, _ config: HubConfig, _ declaredSinks: Set<String>,
                      _ v: inout SpecValidator) -> StepConfig? {
        let errors = v.diagnostics.errors.count
        let o = v.object(node, fields: RuleConfig.fields, context: context)
        // What a rule adds for its own conditions: the window's aggregates, an absence's silence.
        let outer = v.payloadFields
        if node["window"] != nil { v.payloadFields?.insert("window") }
        if node["absent"] != nil { v.payloadFields?.insert("silent_for") }
        defer { v.payloadFields = outer }
        // Every mistake is reported, not only the first.
        let raise = node["raise"].flatMap { expression($0, context, &v) }
        let clear = node["clear"].flatMap { expression($0, context, &v) }
        let key = node["key"].flatMap { expression($0, context, &v) }
        let when = node["when"].flatMap { expression($0, context, &v) }
        var window: RuleConfig.Window?
        if case .object(let w)? = o["window"], let ofNode = node["window"]?["of"], let of = expression(ofNode, context, &v) {
            window = RuleConfig.Window(over: Int64((w["over"]?.number ?? 0) * 1000), of: of,
                                       maxSamples: Self.count("window.max_samples", in: w, node, least: 1, context: context, &v) ?? 10000,
                                       tumbling: w["tumbling"] == .bool(true))
            if (window?.over ?? 0) <= 0, let n = node["window"]?["over"] { v.diagnostics.error(n.location, "window over must be longer than 0") }
        }
        var message: Template?
        if case .scalar(let text, let quoted, let loc)? = node["message"] {
            do {
                message = try Template(text)
                checkFields(message?.fieldReferences ?? [], at: loc, quoted: quoted, context, &v)
            } catch {
                v.diagnostics.error(loc.advanced(by: error.offset + (quoted ? 1 : 0)), "invalid template in \(context): \(error.message)")
            }
        }
        let to = sinkNames(node["to"], context: context, config, declaredSinks, &v)
        var command: RuleConfig.CommandAction?
        if case .object(let c)? = o["command"], case .string(let cname)? = c["name"] {
            let on = { if case .string(let s)? = c["on"] { s } else { "raised" } }()
            command = RuleConfig.CommandAction(name: cname, on: on == "both" ? ["raised", "cleared"] : [on],
                                               to: sinkNames(node["command"]?["to"], context: context, config, declaredSinks, &v))
            if case .mapping(let pairs, _)? = node["command"]?["group"] {
                var group: [(label: String, value: Template)] = []
                for (label, _, valueNode) in pairs {
                    guard case .scalar(let text, let quoted, let loc) = valueNode else { continue }
                    do { group.append((label, try Template(text))) } catch {
                        v.diagnostics.error(loc.advanced(by: error.offset + (quoted ? 1 : 0)), "invalid template in command group of \(context): \(error.message)")
                    }
                }
                if group.isEmpty, let g = node["command"]?["group"] {
                    v.diagnostics.error(g.location, "command group of \(context) has no labels", hint: "for example group: { zone: north }")
                }
                command?.group = group
            }
        }
        var escalate: (after: Int64, to: [String])?
        if case .object(let e)? = o["escalate"], let after = e["after"]?.number {
            escalate = (Int64(after * 1000), sinkNames(node["escalate"]?["to"], context: context, config, declaredSinks, &v))
        }
        // An absence rule is raised by silence, every other one by its condition.
        let absent = o["absent"]?.number.map { Int64($0 * 1000) }
        if absent != nil, let r = node["raise"] {
            v.diagnostics.error(r.location, "\(context) has both absent and raise", hint: "an absence rule is raised by silence; leave raise out")
        } else if absent == nil, node["raise"] == nil, node.isMapping {
            v.diagnostics.error(keyLoc, "\(context) needs field 'raise' (or 'absent')", hint: "for example raise: \"temperature > 80\"")
        }
        if absent.map({ $0 <= 0 }) == true, let a = node["absent"] { v.diagnostics.error(a.location, "absent must be longer than 0") }
        guard v.diagnostics.errors.count == errors, case .string(let name)? = o["name"],
              let raise = absent != nil ? try? Expression("false") : raise else { return nil }
        // A condition that reads no field of the message and is false can never raise the alert.
        if absent == nil, let r = node["raise"] {
            var c = EvaluationContext(payload: .object(Value.Object()), now: 0)
            if case .bool(false)? = try? raise.evaluate(&c) {
                v.diagnostics.warning(r.location, "rule '\(name)' in \(context) can never fire: its raise condition is always false")
            }
        }
        let rule = RuleConfig(name: name, raise: raise, clear: clear, holdFor: Int64(((o["for"]?.number) ?? 0) * 1000), key: key,
                              severity: { if case .string(let s)? = o["severity"] { s } else { "major" } }(), message: message, to: to,
                              when: when, window: window, absent: absent, command: command,
                              group: o["group"]?.number.map { Int64($0 * 1000) },
                              escalate: escalate, throttle: o["throttle"]?.number.map { Int64($0 * 1000) })
        return StepConfig(kind: .rule(rule), location: keyLoc, name: "rule")
    }

    private static let routeFields: [ConfigField] = [
        ConfigField("topic", .string, "Topic filter the message's topic must match."),
        ConfigField("when", .string, "Condition on the message."),
        ConfigField("meta", .map(.string), "Metadata entries the message must have."),
        ConfigField("to", .list(.string), "Sinks for matching messages.", required: true),
        ConfigField("continue", .bool, "Also pass matching messages on to the rest of the pipeline.", default: "false"),
    ]

    private func routeCase(_ node: YAMLNode, _ context: String, _ config: HubConfig, _ declaredSinks: Set<String>, _ v: inout SpecValidator) -> RouteCase? {
        let o = v.object(node, fields: Self.routeFields, context: "route case of \(context)")
        guard case .mapping = node else { return nil }
        var c = RouteCase(topic: nil, when: nil, metadata: [], to: [], continues: false, location: node.location)
        if let t = node["topic"], case .scalar(let text, _, let l) = t {
            if let problem = TopicFilter.validate(text) { v.diagnostics.error(l, "invalid topic filter '\(text)': \(problem)") }
            c.topic = TopicFilter(text)
        }
        if let w = node["when"] { c.when = expression(w, "route case of \(context)", &v) }
        if case .object(let m)? = o["meta"] { c.metadata = m.compactMap { k, v in if case .string(let s) = v { KeyValue(k, s) } else { nil } } }
        if case .bool(let b)? = o["continue"] { c.continues = b }
        c.to = sinkNames(node["to"], context: "route case of \(context)", config, declaredSinks, &v)
        if c.topic == nil && c.when == nil && c.metadata.isEmpty {
            v.diagnostics.warning(node.location, "route case of \(context) has no topic, when or meta: it takes every message")
        }
        return c
    }
}

extension Diagnostics {
    init(_ items: [Diagnostic]) {
        self.init()
        for i in items { append(i) }
    }
}
