import CIoTCPluginABI
import Foundation
import IoTCPluginKit

#if canImport(Glibc)
import Glibc
#endif

/// A plugin library the kernel has opened and negotiated with.
public final class PluginLibrary: @unchecked Sendable {
    public let path: String
    public let name: String
    public let version: String
    public let description: String
    public let abiVersion: UInt32
    public let components: [LoadedComponent]

    init(path: String, name: String, version: String, description: String, abiVersion: UInt32, components: [LoadedComponent]) {
        self.path = path
        self.name = name
        self.version = version
        self.description = description
        self.abiVersion = abiVersion
        self.components = components
    }
}

/// One component of a loaded plugin: its spec and its C entry points.
public struct LoadedComponent: @unchecked Sendable {
    public let entry: ComponentCatalog.Entry
    let raw: UnsafePointer<iotc_component>

    /// A descriptor pointer closures may capture: descriptors live as long as the process.
    struct Pointer: @unchecked Sendable {
        let raw: UnsafePointer<iotc_component>
    }
}

/// Why a plugin could not be loaded; always names the file.
public struct PluginLoadError: Error, CustomStringConvertible, Sendable {
    public var path: String
    public var reason: String
    public var description: String { "cannot load plugin \(path): \(reason)" }
}

/// Finds and opens plugin libraries.
public enum PluginLoader {
    /// The ABI versions this kernel serves.
    public static let offeredVersions: [UInt32] = [IOTC_ABI_VERSION_1]

    /// File names the kernel treats as plugins when it scans a folder.
    public static func isPluginFileName(_ name: String) -> Bool {
        (name.hasPrefix("libiotc-plugin-") || name.hasPrefix("iotc-plugin-")) && (name.hasSuffix(".so") || name.hasSuffix(".dylib"))
    }

    /// Loads every plugin in the folders; problems come back one per file instead of stopping the scan.
    /// A folder or file reached twice (the same one named through a symbolic link, as `.build/release`
    /// names the executable's own folder) is read once.
    public static func discover(in directories: [String]) -> (plugins: [PluginLibrary], errors: [PluginLoadError]) {
        var plugins: [PluginLibrary] = [], errors: [PluginLoadError] = []
        var seen = Set<String>(), scanned = Set<String>(), files = Set<String>()
        func real(_ path: String) -> String { URL(fileURLWithPath: path).resolvingSymlinksInPath().standardizedFileURL.path }
        for dir in directories where scanned.insert(real(dir)).inserted {
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { continue }
            for name in names.sorted() where isPluginFileName(name) {
                let path = (dir as NSString).appendingPathComponent(name)
                guard files.insert(real(path)).inserted else { continue }
                do {
                    let p = try load(path)
                    if seen.contains(p.name) {
                        errors.append(PluginLoadError(path: path, reason: "a plugin named '\(p.name)' is already loaded from another file"))
                        continue
                    }
                    seen.insert(p.name)
                    plugins.append(p)
                } catch {
                    errors.append(error)
                }
            }
        }
        return (plugins, errors)
    }

    /// Opens one plugin. The library is never unloaded: Swift metadata must outlive every use.
    public static func load(_ path: String) throws(PluginLoadError) -> PluginLibrary {
        func fail(_ reason: String) -> PluginLoadError { PluginLoadError(path: path, reason: reason) }
        var st = stat()
        guard stat(path, &st) == 0 else { throw fail(String(cString: strerror(errno)).lowercased()) }
        guard st.st_mode & S_IFMT == S_IFREG else { throw fail("not a regular file") }
        // RTLD_LOCAL keeps each plugin's copies of SwiftNIO's C shims, libyaml and the like apart.
        guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE) else {
            let text = dlerror().map { String(cString: $0) } ?? "unknown error"
            // dlerror repeats the path; keep only the reason.
            let reason = text.replacingOccurrences(of: "\(path): ", with: "")
            throw fail("not a loadable shared library (\(reason))")
        }
        guard let symbol = dlsym(handle, IOTC_PLUGIN_ENTRY_SYMBOL) else {
            throw fail("not an IoT Connect Center plugin: it does not export \(IOTC_PLUGIN_ENTRY_SYMBOL)")
        }
        let entry = unsafeBitCast(symbol, to: iotc_plugin_entry_fn.self)
        let descriptor = offeredVersions.withUnsafeBufferPointer { entry($0.baseAddress, $0.count) }
        guard let descriptor else { throw fail("the plugin refused every ABI version offered (\(versions(offeredVersions)))") }
        let d = descriptor.pointee
        let name = d.name.map { String(cString: $0) } ?? "?"
        guard offeredVersions.contains(d.abi_version) else {
            throw fail("plugin '\(name)' speaks plugin ABI version \(d.abi_version); this hub speaks \(versions(offeredVersions))")
        }
        guard d.struct_size >= UInt32(MemoryLayout<iotc_plugin>.offset(of: \.reserved)!) else {
            throw fail("plugin descriptor is too small (\(d.struct_size) bytes)")
        }
        guard !name.isEmpty, name != "?" else { throw fail("the plugin has no name") }
        var components: [LoadedComponent] = []
        for i in 0..<d.component_count {
            let c = d.components.advanced(by: i)
            guard c.pointee.struct_size >= UInt32(MemoryLayout<iotc_component>.offset(of: \.reserved)!) else {
                throw fail("component \(i) descriptor is too small (\(c.pointee.struct_size) bytes)")
            }
            let kind: ComponentKind
            switch c.pointee.kind {
            case IOTC_COMPONENT_SOURCE: kind = .source
            case IOTC_COMPONENT_SINK: kind = .sink
            case IOTC_COMPONENT_STEP: kind = .step
            default: throw fail("component \(i) has unknown kind \(c.pointee.kind)")
            }
            guard let cname = c.pointee.name.map({ String(cString: $0) }), !cname.isEmpty else { throw fail("component \(i) has no name") }
            guard c.pointee.create != nil, c.pointee.start != nil, c.pointee.stop != nil, c.pointee.destroy != nil else {
                throw fail("component '\(cname)' lacks create, start, stop or destroy")
            }
            if kind == .sink, c.pointee.write == nil { throw fail("sink '\(cname)' has no write function") }
            if kind == .step, c.pointee.process == nil { throw fail("step '\(cname)' has no process function") }
            let fields = ConfigField.fields(c.pointee.fields, count: c.pointee.field_count)
            let reserved = Set((kind == .sink ? HubConfigLoader.sinkFields : kind == .source ? HubConfigLoader.sourceFields : []).map(\.name))
            if let clash = fields.first(where: { reserved.contains($0.name) }) {
                throw fail("\(kind) '\(cname)' declares field '\(clash.name)', which the hub reserves for every \(kind)")
            }
            let e = ComponentCatalog.Entry(
                name: cname, kind: kind, plugin: name,
                summary: c.pointee.summary.map { String(cString: $0) } ?? "",
                description: c.pointee.description.map { String(cString: $0) } ?? "",
                fields: fields, check: checker(c))
            components.append(LoadedComponent(entry: e, raw: c))
        }
        return PluginLibrary(path: path, name: name, version: d.version.map { String(cString: $0) } ?? "",
                             description: d.description.map { String(cString: $0) } ?? "",
                             abiVersion: d.abi_version, components: components)
    }

    private static func versions(_ v: [UInt32]) -> String { v.map(String.init).joined(separator: ", ") }

    /// The component's own config checks, when its descriptor is large enough to have the slot and
    /// fills it.
    private static func checker(_ c: UnsafePointer<iotc_component>) -> (@Sendable (Value.Object) -> [ConfigFinding])? {
        guard Int(c.pointee.struct_size) >= MemoryLayout<iotc_component>.offset(of: \.check)! + MemoryLayout<UnsafeRawPointer>.size,
              c.pointee.check != nil else { return nil }
        let component = LoadedComponent.Pointer(raw: c)
        return { config in
            let collector = FindingCollector()
            let json = JSON.encode(.object(config))
            json.withUnsafeBufferPointer { j in
                j.withMemoryRebound(to: CChar.self) { text in
                    component.raw.pointee.check?(component.raw, text.baseAddress, text.count, { context, severity, path, message, hint in
                        guard let context else { return }
                        let h = String(hint)
                        Unmanaged<FindingCollector>.fromOpaque(context).takeUnretainedValue().findings.append(ConfigFinding(
                            ConfigFinding.Severity(rawValue: severity) ?? .error, at: String(path), String(message), hint: h.isEmpty ? nil : h))
                    }, Unmanaged.passUnretained(collector).toOpaque())
                }
            }
            return withExtendedLifetime(collector) { collector.findings }
        }
    }
}

/// Where a component's check() reports land during the call.
private final class FindingCollector {
    var findings: [ConfigFinding] = []
}

/// The components of a set of plugins, as the config loader and the runtime need them.
public struct PluginSet: @unchecked Sendable {
    public let libraries: [PluginLibrary]
    public init(_ libraries: [PluginLibrary]) { self.libraries = libraries }

    /// Every component the loaded plugins offer, and the kernel's own (the `downlink` and `store` sinks).
    public var catalog: ComponentCatalog { ComponentCatalog(ComponentCatalog.builtins + libraries.flatMap { $0.components.map(\.entry) }) }

    func component(_ kind: ComponentKind, _ name: String) -> LoadedComponent? {
        for l in libraries { if let c = l.components.first(where: { $0.entry.kind == kind && $0.entry.name == name }) { return c } }
        return nil
    }

    /// Component names offered by more than one plugin (the first one loaded wins).
    public var conflicts: [String] {
        var seen = Set<String>(), dup: [String] = []
        for c in libraries.flatMap(\.components) {
            let key = "\(c.entry.kind.rawValue) '\(c.entry.name)'"
            if !seen.insert(key).inserted { dup.append(key) }
        }
        return dup
    }
}
