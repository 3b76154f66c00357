// swift-tools-version:6.1
import PackageDescription
import Foundation

// Each plugin is a dynamic library that statically links its own Swift dependencies. The linker
// version script exports only the ABI entry symbol, so that two plugins' copies of SwiftNIO's C shims,
// libyaml and the like never bind to each other (see "Writing a plugin" in README.md).
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().path
let pluginLinkerSettings: [LinkerSetting] = [
    .unsafeFlags(["-Xlinker", "--version-script=\(root)/Core/PluginABI/iotc_plugin.map"]),
]

func plugin(_ name: String, folder: String, dependencies: [Target.Dependency], swiftSettings: [SwiftSetting] = []) -> Target {
    .target(
        name: name,
        dependencies: ["IoTCPluginKit"] + dependencies,
        path: "Plugins/\(folder)/Sources/\(name)",
        swiftSettings: swiftSettings,
        linkerSettings: pluginLinkerSettings
    )
}

// The MQTT server's hot path: no dynamic exclusivity checks in release builds (they were about a tenth
// of its CPU time in a profile); debug builds and tests keep them.
let hotPath: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]

let nio: [Target.Dependency] = [
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOPosix", package: "swift-nio"),
]

let package = Package(
    name: "IoTConnectCenter",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "iotc", targets: ["iotc"]),
        .library(name: "IoTCPluginKit", targets: ["IoTCPluginKit"]),
        // The MQTT codec and server logic, and the HTTP device API's request decoder, for the
        // network fuzzers in Tests/Fuzz/servers.
        .library(name: "IoTCMQTT", targets: ["MQTTCodec", "MQTTBroker"]),
        .library(name: "IoTCHTTPCodec", targets: ["HTTPCodec"]),
        .library(name: "iotc-plugin-http", type: .dynamic, targets: ["HTTPPlugin"]),
        .library(name: "iotc-plugin-webhook", type: .dynamic, targets: ["WebhookPlugin"]),
        .library(name: "iotc-plugin-file", type: .dynamic, targets: ["FilePlugin"]),
        .library(name: "iotc-plugin-log", type: .dynamic, targets: ["LogPlugin"]),
        .library(name: "iotc-plugin-mqtt", type: .dynamic, targets: ["MQTTPlugin"]),
        .library(name: "iotc-plugin-coap", type: .dynamic, targets: ["CoAPPlugin"]),
        .library(name: "iotc-plugin-lwm2m", type: .dynamic, targets: ["LwM2MPlugin"]),
        .library(name: "iotc-plugin-modbus", type: .dynamic, targets: ["ModbusPlugin"]),
        .library(name: "iotc-plugin-email", type: .dynamic, targets: ["EmailPlugin"]),
        .library(name: "iotc-plugin-timer", type: .dynamic, targets: ["TimerPlugin"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
    ],
    targets: [
        .target(name: "CIoTCPluginABI", path: "Core/PluginABI", exclude: ["iotc_plugin.map"]),
        .target(
            name: "IoTCPluginKit",
            dependencies: ["CIoTCPluginABI"],
            path: "Core/PluginKit"
        ),
        // C the kernel needs beside Swift (the CRC-32C instruction); not part of the plugin ABI.
        .target(name: "CIoTCKernelSupport", path: "Core/KernelSupport"),
        .target(
            name: "IoTCKernel",
            dependencies: [
                "CIoTCPluginABI", "CIoTCKernelSupport", "IoTCPluginKit", "IoTCStore",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Atomics", package: "swift-atomics"),
            ],
            path: "Core/Kernel"
        ),
        // The system's SQLite (libsqlite3-dev), for the embedded store engine.
        .systemLibrary(name: "CSQLite", path: "Core/CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        .target(
            name: "IoTCStore",
            dependencies: [
                "CSQLite", "IoTCPluginKit",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CryptoExtras", package: "swift-crypto"),
            ],
            path: "Core/Store"
        ),
        // What the kernel's and the plugins' servers share: listeners that wait out a lack of descriptors.
        .target(name: "IoTCNetworking", dependencies: ["IoTCPluginKit", .product(name: "NIOCore", package: "swift-nio")], path: "Core/Networking"),
        .target(
            name: "IoTCAPI",
            dependencies: [
                "IoTCKernel", "IoTCStore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            path: "Core/API"
        ),
        .executableTarget(
            name: "iotc",
            dependencies: [
                "IoTCKernel", "IoTCAPI", "IoTCStore", "IoTCNetworking",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            path: "Core/iotc"
        ),
        // Helpers several plugins' servers share: listen addresses, server TLS, certificate fingerprints.
        .target(name: "PluginNetworking", dependencies: [
            "IoTCPluginKit", "IoTCNetworking",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Crypto", package: "swift-crypto"),
        ], path: "Plugins/Shared/Sources/PluginNetworking"),
        .target(name: "HTTPCodec", dependencies: nio, path: "Plugins/HTTP/Sources/HTTPCodec"),
        plugin("HTTPPlugin", folder: "HTTP", dependencies: nio + [
            "HTTPCodec", "PluginNetworking",
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
        ]),
        plugin("WebhookPlugin", folder: "Webhook", dependencies: [
            "PluginNetworking",
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        plugin("FilePlugin", folder: "File", dependencies: []),
        plugin("LogPlugin", folder: "Log", dependencies: []),
        // Cron schedules (no I/O), for the timer source and its tests.
        .target(name: "TimerSchedule", path: "Plugins/Timer/Sources/TimerSchedule"),
        plugin("TimerPlugin", folder: "Timer", dependencies: ["TimerSchedule"]),
        plugin("EmailPlugin", folder: "Email", dependencies: nio + [.product(name: "NIOSSL", package: "swift-nio-ssl")]),
        .target(name: "MQTTCodec", dependencies: nio + ["IoTCPluginKit"], path: "Plugins/MQTT/Sources/MQTTCodec", swiftSettings: hotPath),
        .target(name: "MQTTBroker", dependencies: nio + ["MQTTCodec", "IoTCPluginKit", .product(name: "Atomics", package: "swift-atomics"),
                                                         .product(name: "DequeModule", package: "swift-collections")],
                path: "Plugins/MQTT/Sources/MQTTBroker", swiftSettings: hotPath),
        plugin("MQTTPlugin", folder: "MQTT", dependencies: nio + [
            "MQTTCodec", "MQTTBroker", "PluginNetworking",
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOWebSocket", package: "swift-nio"),
        ], swiftSettings: hotPath),
        // libcoap 4.3 with OpenSSL (DTLS), from Debian's libcoap3-dev, and the event loop, PDU helpers
        // and content formats the CoAP and LwM2M plugins share.
        .systemLibrary(name: "CCoAP", path: "Plugins/CoAP/Sources/CCoAP", pkgConfig: "libcoap-3-openssl", providers: [.apt(["libcoap3-dev"])]),
        .target(name: "CoAPRuntime", dependencies: [
            "CCoAP", "IoTCPluginKit", .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "Crypto", package: "swift-crypto"),
        ], path: "Plugins/CoAP/Sources/CoAPRuntime"),
        // LwM2M without I/O: TLV, link format, object definitions (built-in and OMA XML), values and the
        // registration table; for the LwM2M source, its tests and the fuzzer.
        .target(name: "LwM2MCodec", dependencies: ["IoTCPluginKit"], path: "Plugins/LwM2M/Sources/LwM2MCodec"),
        plugin("LwM2MPlugin", folder: "LwM2M", dependencies: ["CCoAP", "CoAPRuntime", "LwM2MCodec"]),
        plugin("CoAPPlugin", folder: "CoAP", dependencies: [
            "CCoAP", "CoAPRuntime", .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ]),
        // libmodbus 3.1 (Debian's libmodbus-dev) for the Modbus master, and the register maps without
        // I/O: types, byte orders, checks and the read plan, for the source and its tests.
        .systemLibrary(name: "CModbus", path: "Plugins/Modbus/Sources/CModbus", pkgConfig: "libmodbus", providers: [.apt(["libmodbus-dev"])]),
        .target(name: "ModbusMap", dependencies: ["IoTCPluginKit"], path: "Plugins/Modbus/Sources/ModbusMap"),
        plugin("ModbusPlugin", folder: "Modbus", dependencies: ["CModbus", "ModbusMap"]),
        .testTarget(
            name: "KernelTests",
            dependencies: [
                "IoTCKernel", "IoTCAPI", "IoTCStore",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Tests/KernelTests",
            exclude: ["Fixtures"]
        ),
        .testTarget(
            name: "PluginTests",
            dependencies: [
                "IoTCKernel", "MQTTCodec", "MQTTBroker", "HTTPCodec", "CoAPRuntime", "LwM2MCodec", "ModbusMap", "TimerSchedule",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ],
            path: "Tests/PluginTests"
        ),
    ],
    swiftLanguageModes: [.v6]
)
