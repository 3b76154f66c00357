import ArgumentParser
import Foundation
import IoTCKernel
import IoTCPluginKit
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

struct DeadLetters: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlq", abstract: "Inspect, replay and purge dead letters.",
        subcommands: [List.self, Replay.self, Purge.self])

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List dead letters (reads the data folder; works while the hub runs or not).")
        @Option(help: "Data folder.") var data = "data"
        @Flag(help: "Print JSON lines.") var json = false

        func run() throws {
            let store = try DeadLetterStore(directory: URL(fileURLWithPath: data).appendingPathComponent("dead-letters"))
            let entries = store.list()
            for e in entries {
                if json {
                    print(JSON.string(DeadLetterStore.json(e)))
                } else {
                    let place = e.sink.map { "sink \($0)" } ?? e.step.map { "step \($0)" } ?? "?"
                    print("\(e.id)  \(RFC3339.format(e.createdAt))  pipeline \(e.pipeline), \(place), attempts \(e.attempts): \(e.reason)")
                }
            }
            if !json { print("\(entries.count) dead letter(s)") }
        }
    }

    struct Replay: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Replay dead letters through the running hub (all, or the ids given).",
            discussion: "Needs an API key of the system tenant with the role operator or higher, in IOTC_API_KEY.")
        @Option(help: "Address of the running hub's API: HOST:PORT, or http:// or https:// in front.") var api = "127.0.0.1:8080"
        @Option(help: "With https: the CA certificates (PEM) to trust for the API's certificate, instead of the system's.") var caFile: String?
        @Argument(help: "Entry ids; none means all.") var ids: [String] = []

        func run() throws {
            let body = ids.isEmpty ? "{}" : JSON.string(.object(Value.Object([("ids", .array(ids.map { .string($0) }))])))
            let (status, text) = try APIClient.request(.POST, api: api, path: "/v1/dead-letters/replay", body: body, caFile: caFile)
            print(text)
            if status != 200 { throw ExitCode(1) }
        }
    }

    struct Purge: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete dead letters (all, or the ids given).")
        @Option(help: "Data folder.") var data = "data"
        @Argument(help: "Entry ids; none means all.") var ids: [String] = []

        func run() throws {
            let store = try DeadLetterStore(directory: URL(fileURLWithPath: data).appendingPathComponent("dead-letters"))
            print("purged \(store.remove(ids: ids.isEmpty ? nil : ids)) dead letter(s)")
        }
    }
}

/// A small blocking HTTP/1.1 client for talking to the running hub's API (plain HTTP, or HTTPS with the
/// certificate checked against the system's CAs or `caFile`), with the API key from IOTC_API_KEY (the
/// environment, not an option: options show in process lists).
enum APIClient {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Sends one request to `api` (`host:port`, `http://host:port` or `https://host:port`) and returns
    /// the status and body of the answer.
    static func request(_ method: HTTPMethod, api: String, path: String, body: String?, caFile: String? = nil,
                        timeout: TimeAmount = .seconds(30)) throws -> (Int, String) {
        let secure = api.hasPrefix("https://")
        let hostPort = secure ? String(api.dropFirst(8)) : api.hasPrefix("http://") ? String(api.dropFirst(7)) : api
        guard let address = HostPort(hostPort), address.port > 0 else { throw ValidationError("invalid API address \(api) (expected host:port)") }
        let (host, port) = (address.host, address.port)
        var ssl: NIOSSLContext?
        if secure {
            var tls = TLSConfiguration.makeClientConfiguration()
            do {
                if let caFile { tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile)) }
                ssl = try NIOSSLContext(configuration: tls)
            } catch {
                throw ValidationError("cannot use the CA file \(caFile ?? ""): \(error)")
            }
        } else if caFile != nil {
            throw ValidationError("--ca-file applies to an https:// API")
        }
        let tlsContext = ssl
        // Server name indication takes a name, not an address; an address is checked against the certificate as such.
        let serverName = (try? SocketAddress(ipAddress: host, port: 0)) != nil ? nil : host
        let group = MultiThreadedEventLoopGroup.singleton
        let promise = group.next().makePromise(of: (Int, String).self)
        let channel: any Channel
        do {
            channel = try ClientBootstrap(group: group)
                .connectTimeout(.seconds(5))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        if let tlsContext { try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tlsContext, serverHostname: serverName)) }
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(ResponseReader(promise))
                    }
                }
                .connect(host: host, port: port).wait()
        } catch {
            let failure = Failure(description: "cannot reach the hub at \(api): \(error)")
            promise.fail(failure)
            throw failure
        }
        let deadline = channel.eventLoop.scheduleTask(in: timeout) { promise.fail(Failure(description: "no answer from the hub at \(api) in time")) }
        defer { deadline.cancel(); _ = channel.close() }
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
        head.headers.add(name: "Host", value: hostPort)
        head.headers.add(name: "Connection", value: "close")
        if let key = ProcessInfo.processInfo.environment["IOTC_API_KEY"], !key.isEmpty {
            head.headers.add(name: "Authorization", value: "Bearer \(key)")
        }
        let bytes = Array((body ?? "").utf8)
        if body != nil { head.headers.add(name: "Content-Type", value: "application/json") }
        head.headers.add(name: "Content-Length", value: String(bytes.count))
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        if !bytes.isEmpty { channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: bytes))), promise: nil) }
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        return try promise.futureResult.wait()
    }

    /// Collects the answer's status and body (up to 16 MiB) and settles the promise at its end.
    private final class ResponseReader: ChannelInboundHandler {
        typealias InboundIn = HTTPClientResponsePart
        private let promise: EventLoopPromise<(Int, String)>
        private var status = 0
        private var body: [UInt8] = []

        init(_ promise: EventLoopPromise<(Int, String)>) { self.promise = promise }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                status = Int(head.status.code)
            case .body(var buffer):
                guard body.count + buffer.readableBytes <= 16 << 20 else {
                    promise.fail(Failure(description: "the hub's answer is over 16 MiB"))
                    context.close(promise: nil)
                    return
                }
                body += buffer.readBytes(length: buffer.readableBytes) ?? []
            case .end:
                promise.succeed((status, String(decoding: body, as: UTF8.self)))
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            promise.fail(Failure(description: "the hub closed the connection before answering"))
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            if case NIOSSLError.handshakeFailed = error {
                promise.fail(Failure(description: "the TLS handshake with the hub failed (is its certificate trusted? --ca-file names a CA to trust): \(error)"))
            } else {
                promise.fail(error)
            }
            context.close(promise: nil)
        }
    }
}
