import CIoTCPluginABI
import Foundation

/// Builds the C descriptor of a plugin. A plugin's whole export is one line:
///
/// ```swift
/// @_cdecl("iotc_plugin_entry") public func entry(_ v: UnsafePointer<UInt32>?, _ n: Int) -> UnsafeRawPointer? {
///     Plugin.entry(name: "file", version: "1.0.0", components: [FileSink.self], offered: v, count: n)
/// }
/// ```
public enum Plugin {
    /// The ABI versions this plugin kit can speak, most preferred first.
    public static let supportedVersions: [UInt32] = [IOTC_ABI_VERSION_1]

    public static func entry(
        name: String, version: String, description: String = "", components: [any Component.Type],
        offered: UnsafePointer<UInt32>?, count: Int
    ) -> UnsafeRawPointer? {
        let offeredVersions = offered.map { Array(UnsafeBufferPointer(start: $0, count: count)) } ?? []
        let chosen = supportedVersions.first(where: offeredVersions.contains) ?? supportedVersions[0]
        return descriptorLock.withLock {
            if let d = descriptor { return UnsafeRawPointer(d) }
            let d = UnsafeMutablePointer<iotc_plugin>.allocate(capacity: 1)
            var p = iotc_plugin()
            p.struct_size = UInt32(MemoryLayout<iotc_plugin>.size)
            p.abi_version = chosen
            p.name = CFieldBuilder.cString(name)
            p.version = CFieldBuilder.cString(version)
            p.description = CFieldBuilder.cString(description)
            let list = UnsafeMutablePointer<iotc_component>.allocate(capacity: components.count)
            for (i, type) in components.enumerated() { list.advanced(by: i).initialize(to: cComponent(type)) }
            p.components = UnsafePointer(list)
            p.component_count = components.count
            d.initialize(to: p)
            descriptor = d
            return UnsafeRawPointer(d)
        }
    }

    private static func cComponent<T: Component>(_ type: T.Type) -> iotc_component {
        var c = iotc_component()
        c.struct_size = UInt32(MemoryLayout<iotc_component>.size)
        c.kind = T.self is any Source.Type ? IOTC_COMPONENT_SOURCE
            : T.self is any Sink.Type ? IOTC_COMPONENT_SINK : IOTC_COMPONENT_STEP
        c.name = CFieldBuilder.cString(T.name)
        c.summary = CFieldBuilder.cString(T.summary)
        c.description = CFieldBuilder.cString(T.description)
        (c.fields, c.field_count) = CFieldBuilder.build(T.fields)
        c.user_data = Unmanaged.passRetained(ComponentFactory(T.self)).toOpaque()
        c.create = { selfPointer, host, json, length, err in
            guard let selfPointer, let host, let factory = selfPointer.pointee.user_data else { return nil }
            let bytes = json.map { Data(bytes: $0, count: length) } ?? Data("{}".utf8)
            do {
                let instance = try Unmanaged<ComponentFactory>.fromOpaque(factory).takeUnretainedValue()
                    .make(bytes, PluginHost(host))
                return Unmanaged.passRetained(instance).toOpaque()
            } catch {
                fill(err, IOTC_ERR_INVALID, describe(error))
                return nil
            }
        }
        c.start = { instance, err in
            do {
                try box(instance).component.start()
                return IOTC_OK
            } catch {
                fill(err, IOTC_ERR_INTERNAL, describe(error))
                return IOTC_ERR_INTERNAL
            }
        }
        c.stop = { instance in box(instance).component.stop() }
        c.destroy = { instance in
            guard let instance else { return }
            Unmanaged<ComponentInstance>.fromOpaque(instance).release()
        }
        c.write = { instance, message, token in
            let b = box(instance)
            guard let sink = b.sink, let message else { return IOTC_ERR_UNSUPPORTED }
            return sink.write(Message(message), ack: Ack(host: b.host, token: token)) ? IOTC_OK : IOTC_ERR_BUSY
        }
        c.write_batch = { instance, messages, tokens, count in
            let b = box(instance)
            guard let sink = b.sink, let messages, let tokens, count > 0 else { return 0 }
            let list = (0..<count).map { Message(messages + $0) }
            let acks = (0..<count).map { Ack(host: b.host, token: tokens[$0]) }
            return max(0, min(count, sink.write(list, acks: acks)))
        }
        c.downlink = { instance, message, token in
            let b = box(instance)
            guard let source = b.source, let message else { return IOTC_ERR_UNSUPPORTED }
            return source.downlink(Message(message), ack: Ack(host: b.host, token: token)) ? IOTC_OK : IOTC_ERR_UNSUPPORTED
        }
        c.disconnect = { instance, handle, reason in
            guard let source = box(instance).source else { return 0 }
            return max(0, source.disconnect(identityHandle: handle, reason: String(reason)))
        }
        c.check = { selfPointer, json, length, report, context in
            guard let selfPointer, let report, let factory = selfPointer.pointee.user_data else { return }
            let bytes = json.map { Data(bytes: $0, count: length) } ?? Data("{}".utf8)
            // A config that does not decode is reported by create(), with the field it stopped at.
            let findings = Unmanaged<ComponentFactory>.fromOpaque(factory).takeUnretainedValue().check(bytes)
            for f in findings {
                f.path.withIOTCString { p in
                    f.text.withIOTCString { t in
                        (f.hint ?? "").withIOTCString { h in report(context, f.severity.rawValue, p, t, h) }
                    }
                }
            }
        }
        c.process = { instance, message, emit, emitContext, err in
            guard let step = box(instance).step, let message, let emit else {
                return IOTC_ERR_UNSUPPORTED
            }
            do {
                for out in try step.process(Message(message)) { out.withCMessage { emit(emitContext, $0) } }
                return IOTC_OK
            } catch {
                fill(err, IOTC_ERR_INVALID, describe(error))
                return IOTC_ERR_INVALID
            }
        }
        return c
    }

    private static let descriptorLock = NSLock()
    nonisolated(unsafe) private static var descriptor: UnsafeMutablePointer<iotc_plugin>?
}

private func box(_ instance: UnsafeMutableRawPointer?) -> ComponentInstance {
    Unmanaged<ComponentInstance>.fromOpaque(instance!).takeUnretainedValue()
}

private func describe(_ error: any Error) -> String {
    switch error {
    case let e as PluginError: e.description
    case let e as DecodingError: ConfigDecodingError.describe(e)
    default: String(describing: error)
    }
}

private func fill(_ err: UnsafeMutablePointer<iotc_error>?, _ code: Int32, _ text: String) {
    guard let err else { return }
    err.pointee.code = code
    guard let buf = err.pointee.text, err.pointee.capacity > 0 else { return }
    let bytes = Array(text.utf8.prefix(err.pointee.capacity - 1))
    bytes.withUnsafeBufferPointer { src in
        src.withMemoryRebound(to: CChar.self) { buf.update(from: $0.baseAddress!, count: bytes.count) }
    }
    buf[bytes.count] = 0
}

final class ComponentFactory {
    let make: (Data, PluginHost) throws -> ComponentInstance
    let check: (Data) -> [ConfigFinding]
    init<T: Component>(_ type: T.Type) {
        make = { json, host in
            let config = try JSONDecoder().decode(T.Config.self, from: json)
            // The checks `iotc check` runs hold at start too, for configs that never went through it.
            if let error = T.check(config).first(where: { $0.severity == .error }) { throw PluginError(error.description) }
            return ComponentInstance(try T(config: config, host: host), host: host)
        }
        check = { json in
            guard let config = try? JSONDecoder().decode(T.Config.self, from: json) else { return [] }
            return T.check(config)
        }
    }
}

final class ComponentInstance {
    let component: any Component
    let host: PluginHost
    /// The component as each kind, cast once here rather than on every call.
    let sink: (any Sink)?
    let source: (any Source)?
    let step: (any Step)?

    init(_ component: any Component, host: PluginHost) {
        self.component = component
        self.host = host
        sink = component as? any Sink
        source = component as? any Source
        step = component as? any Step
    }
}

enum ConfigDecodingError {
    static func describe(_ e: DecodingError) -> String {
        func path(_ c: [any CodingKey]) -> String { c.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".") }
        switch e {
        case .keyNotFound(let key, let ctx): return "missing field '\(path(ctx.codingPath + [key]))'"
        case .typeMismatch(let type, let ctx): return "field '\(path(ctx.codingPath))' should be \(type)"
        case .valueNotFound(let type, let ctx): return "field '\(path(ctx.codingPath))' needs a \(type)"
        case .dataCorrupted(let ctx): return "invalid config at '\(path(ctx.codingPath))': \(ctx.debugDescription)"
        @unknown default: return "invalid config"
        }
    }
}
