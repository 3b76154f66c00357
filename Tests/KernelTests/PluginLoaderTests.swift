import CIoTCPluginABI
import Foundation
import Testing
@testable import IoTCKernel

@Suite struct PluginLoaderTests {
    /// Compiles a C fixture into a shared library named like a plugin.
    func compile(_ fixture: String, into dir: TempDir, as name: String) throws -> String {
        let out = dir.path + "/" + name
        let (code, output) = try run("/usr/bin/env", ["cc", "-shared", "-fPIC", "-I", Build.packageRoot + "/Core/PluginABI/include",
                                                       "-o", out, Build.packageRoot + "/Tests/KernelTests/Fixtures/" + fixture])
        #expect(code == 0, "cc failed: \(output)")
        return out
    }

    func loadError(_ path: String) -> String? {
        do {
            _ = try PluginLoader.load(path)
            return nil
        } catch {
            return error.description
        }
    }

    @Test func loadsTheBuiltPlugins() throws {
        let names = Build.plugins.libraries.map(\.name).sorted()
        #expect(names == ["coap", "email", "file", "http", "log", "lwm2m", "modbus", "mqtt", "timer", "webhook"])
        for p in Build.plugins.libraries { #expect(p.abiVersion == IOTC_ABI_VERSION_1) }
        let http = try #require(Build.plugins.libraries.first { $0.name == "http" })
        #expect(http.components.map(\.entry.name) == ["http"])
        #expect(http.components[0].entry.kind == .source)
        #expect(http.components[0].entry.fields.map(\.name).contains("max_body_size"))
        let mqtt = try #require(Build.plugins.libraries.first { $0.name == "mqtt" })
        #expect(mqtt.components.map(\.entry.name) == ["mqtt", "mqtt_publish", "mqtt_subscribe"])
        #expect(mqtt.components.first { $0.entry.name == "mqtt_publish" }?.entry.fields.first { $0.name == "password" }?.secret == true)
        // Secrets nested in lists of objects are marked too.
        let users = mqtt.components.first { $0.entry.name == "mqtt" }?.entry.fields.first { $0.name == "users" }
        #expect(users?.children?.first { $0.name == "password" }?.secret == true)
    }

    @Test func namesTheFileAndReasonForAMissingFile() {
        #expect(loadError("/nonexistent/libiotc-plugin-x.so") == "cannot load plugin /nonexistent/libiotc-plugin-x.so: no such file or directory")
    }

    @Test func refusesAGarbageFile() throws {
        let dir = TempDir()
        let path = dir.path + "/libiotc-plugin-garbage.so"
        try Data((0..<4096).map { _ in UInt8.random(in: 0...255) }).write(to: URL(fileURLWithPath: path))
        let e = try #require(loadError(path))
        #expect(e.hasPrefix("cannot load plugin \(path): not a loadable shared library ("))
        // A scan of the folder reports the bad file and carries on.
        let (plugins, errors) = PluginLoader.discover(in: [dir.path])
        #expect(plugins.isEmpty)
        #expect(errors.map(\.path) == [path])
        // The same folder through a symbolic link, and the same file linked from another folder, are
        // read once; a copy is another file.
        let other = TempDir()
        try FileManager.default.createSymbolicLink(atPath: other.path + "/again", withDestinationPath: dir.path)
        try FileManager.default.createSymbolicLink(atPath: other.path + "/libiotc-plugin-linked.so", withDestinationPath: path)
        #expect(PluginLoader.discover(in: [dir.path, other.path + "/again", other.path]).errors.map(\.path) == [path])
        try FileManager.default.copyItem(atPath: path, toPath: other.path + "/libiotc-plugin-copy.so")
        #expect(PluginLoader.discover(in: [dir.path, other.path]).errors.count == 2)
    }

    @Test func refusesAPluginThatAsksForAnUnsupportedABIVersion() throws {
        let dir = TempDir()
        let path = try compile("future_abi_plugin.c", into: dir, as: "libiotc-plugin-future.so")
        #expect(loadError(path) == "cannot load plugin \(path): plugin 'future' speaks plugin ABI version 99; this hub speaks 1")
    }

    @Test func refusesAPluginThatRefusesEveryVersion() throws {
        let dir = TempDir()
        let path = try compile("refusing_plugin.c", into: dir, as: "libiotc-plugin-refusing.so")
        #expect(loadError(path) == "cannot load plugin \(path): the plugin refused every ABI version offered (1)")
    }

    @Test func refusesALibraryWithoutTheEntryPoint() throws {
        let dir = TempDir()
        let path = try compile("no_entry_plugin.c", into: dir, as: "libiotc-plugin-none.so")
        #expect(loadError(path) == "cannot load plugin \(path): not an IoT Connect Center plugin: it does not export iotc_plugin_entry")
    }

    @Test func cAndSwiftAgreeOnTheLayout() {
        #expect(iotc_abi_message_size() == MemoryLayout<iotc_message>.size)
        #expect(iotc_abi_host_size() == MemoryLayout<iotc_host>.size)
        #expect(iotc_abi_component_size() == MemoryLayout<iotc_component>.size)
    }

    /// ld.gold leaves local symbols in .dynsym; only global and weak ones take part in symbol binding.
    @Test func pluginsExportOnlyTheEntrySymbol() throws {
        for p in Build.plugins.libraries {
            let (_, out) = try run("/usr/bin/env", ["nm", "-D", "--defined-only", "--extern-only", p.path])
            let exported = out.split(separator: "\n").compactMap { $0.split(separator: " ").last.map(String.init) }
            #expect(exported == ["iotc_plugin_entry"], "\(p.path) exports \(exported.prefix(5))")
        }
    }
}
