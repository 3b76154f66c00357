// swift-tools-version:6.1
// A seeded mutation fuzzer for the MQTT server: mutated packets go through the decoder (in random
// chunks, as a socket delivers them) and the whole server logic. `make fuzz` runs a million inputs.
import PackageDescription

let package = Package(
    name: "MQTTFuzz",
    dependencies: [
        .package(name: "IoTConnectCenter", path: "../../.."),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        .executableTarget(name: "MQTTFuzz", dependencies: [
            .product(name: "IoTCMQTT", package: "IoTConnectCenter"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)
