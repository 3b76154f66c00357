// swift-tools-version:6.1
// An IoT Connect Center plugin built outside the hub's own package. Copy this folder to start a plugin;
// point the dependency at the hub's repository (a path here, so that the hub's tests can build it).
import PackageDescription
import Foundation

let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent().path

let package = Package(
    name: "ExamplePlugin",
    products: [
        // Plugins are found by file name: lib<product>.so must start with libiotc-plugin-.
        .library(name: "iotc-plugin-example", type: .dynamic, targets: ["ExamplePlugin"]),
    ],
    dependencies: [
        .package(name: "IoTConnectCenter", path: "../.."),
    ],
    targets: [
        .target(
            name: "ExamplePlugin",
            dependencies: [.product(name: "IoTCPluginKit", package: "IoTConnectCenter")],
            // Export only iotc_plugin_entry, so that this plugin's copies of its dependencies stay private.
            linkerSettings: [.unsafeFlags(["-Xlinker", "--version-script=\(here)/iotc_plugin.map"])]
        ),
    ],
    swiftLanguageModes: [.v6]
)
