// swift-tools-version:6.1
// The project's MQTT load generator: publishers and subscribers over real sockets on one SwiftNIO
// event loop, with end-to-end latency, loss and duplicate counts. `Benchmarks/mqtt.sh` drives the hub
// and mosquitto with it in the same run.
import PackageDescription

let package = Package(
    name: "MQTTLoad",
    dependencies: [.package(url: "https://github.com/apple/swift-nio", from: "2.101.2")],
    targets: [
        .executableTarget(name: "MQTTLoad", dependencies: [
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)
