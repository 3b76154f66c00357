// swift-tools-version:6.1
// A bare SwiftNIO server that answers every HTTP request with a fixed 202, parsing no more than it must
// to find where each request ends. `make bench` measures it beside the hub: the hub's HTTP source and
// pipeline run on the same event loops, so this is the ceiling for HTTP ingest on SwiftNIO.
import PackageDescription

let package = Package(
    name: "NIOBaseline",
    dependencies: [.package(url: "https://github.com/apple/swift-nio", from: "2.101.2")],
    targets: [
        .executableTarget(name: "NIOBaseline", dependencies: [
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)
