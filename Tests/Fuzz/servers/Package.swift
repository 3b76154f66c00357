// swift-tools-version:6.1
// Seeded mutation fuzzers for the hub's network decoders, as sockets feed them (in random chunks):
// MQTTFuzz (the MQTT decoder and the whole server logic) and HTTPFuzz (the HTTP device API's request
// decoder). `make fuzz` runs a million inputs through each.
import PackageDescription

let package = Package(
    name: "ServerFuzz",
    dependencies: [
        .package(name: "IoTConnectCenter", path: "../../.."),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        .target(name: "FuzzSupport"),
        .executableTarget(name: "MQTTFuzz", dependencies: [
            "FuzzSupport",
            .product(name: "IoTCMQTT", package: "IoTConnectCenter"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
        ]),
        .executableTarget(name: "HTTPFuzz", dependencies: [
            "FuzzSupport",
            .product(name: "IoTCHTTPCodec", package: "IoTConnectCenter"),
            .product(name: "NIOCore", package: "swift-nio"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)
