// swift-tools-version:6.1
// The project's CoAP load generator: confirmable POSTs over one UDP socket with a fixed number in
// flight, counting piggybacked and separate answers. `Benchmarks/coap.sh` drives the hub and libcoap's
// own example server with it in the same run.
import PackageDescription

let package = Package(
    name: "CoAPLoad",
    targets: [.executableTarget(name: "CoAPLoad")],
    swiftLanguageModes: [.v6]
)
