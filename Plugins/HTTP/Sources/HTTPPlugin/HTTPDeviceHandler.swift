import CIoTCPluginABI
import Crypto
import Foundation
import IoTCPluginKit
import NIOCore
import NIOHTTP1
import NIOSSL

/// One device connection: parses requests, authenticates, submits messages and serves command fetches.
final class HTTPDeviceHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        case idle
        case receiving(HTTPRequestHead, Route, ByteBuffer)
        /// The body is being discarded because the request was already answered.
        case discarding
    }

    enum Route: Equatable {
        case ingest(device: String, kind: MessageKind, suffix: String)
        case result(device: String, command: String)
        case poll(device: String)
        case stream(device: String)
    }

    private let source: HTTPSource
    private var state = State.idle
    /// The identity of the last token seen on this connection, so keep-alive requests authenticate once.
    private var cached: (token: String, device: String, identity: Identity)?
    private var streaming: (device: String, waiter: UInt64, identity: Identity)?
    private var polling: (device: String, waiter: UInt64)?

    init(source: HTTPSource) { self.source = source }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            guard let route = Self.route(head) else {
                let known = Self.route(HTTPRequestHead(version: head.version, method: .POST, uri: head.uri)) != nil
                    || Self.route(HTTPRequestHead(version: head.version, method: .GET, uri: head.uri)) != nil
                respond(context, head, known ? .methodNotAllowed : .notFound, problem: known ? "method \(head.method) is not allowed here" : "no such resource")
                state = .discarding
                return
            }
            if let length = head.headers.first(name: "content-length").flatMap(Int.init), length > source.config.max_body_size {
                respond(context, head, .payloadTooLarge, problem: "the body is \(length) bytes; the limit is \(source.config.max_body_size)", close: true)
                state = .discarding
                return
            }
            state = .receiving(head, route, context.channel.allocator.buffer(capacity: 0))
        case .body(var chunk):
            guard case .receiving(let head, let route, var body) = state else { return }
            if body.readableBytes + chunk.readableBytes > source.config.max_body_size {
                respond(context, head, .payloadTooLarge, problem: "the body is over the limit of \(source.config.max_body_size) bytes", close: true)
                state = .discarding
                return
            }
            state = .idle
            body.writeBuffer(&chunk)
            state = .receiving(head, route, body)
        case .end:
            guard case .receiving(let head, let route, let body) = state else {
                state = .idle
                return
            }
            state = .idle
            handle(context, head, route, body)
        }
    }

    static func route(_ head: HTTPRequestHead) -> Route? {
        let uri = head.uri
        let path = uri.firstIndex(of: "?").map { uri[..<$0] } ?? uri[...]
        let prefix = "/v1/devices/"
        guard path.hasPrefix(prefix) else { return nil }
        let parts = path.dropFirst(prefix.count).split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count >= 2 else { return nil }
        // Percent-decoding goes through Foundation; most ids need none.
        guard let device = parts[0].contains("%") ? parts[0].removingPercentEncoding : String(parts[0]),
              Self.validDeviceID(device) else { return nil }
        let tail = parts.dropFirst()
        switch (head.method, tail.count) {
        case (.POST, 1):
            switch tail.first! {
            case "telemetry": return .ingest(device: device, kind: .telemetry, suffix: "telemetry")
            case "events": return .ingest(device: device, kind: .event, suffix: "events")
            case "attributes": return .ingest(device: device, kind: .attributes, suffix: "attributes")
            default: return nil
            }
        case (.GET, 1) where tail.first! == "commands": return .poll(device: device)
        case (.GET, 2) where tail.first! == "commands" && tail.last! == "stream": return .stream(device: device)
        case (.POST, 3) where tail.first! == "commands" && tail.last! == "result" && !tail[tail.startIndex + 1].isEmpty:
            return .result(device: device, command: String(tail[tail.startIndex + 1]))
        default: return nil
        }
    }

    /// Device ids are 1 to 128 characters without '/', '+', '#' or control characters.
    static func validDeviceID(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 128 && !s.unicodeScalars.contains { $0 == "/" || $0 == "+" || $0 == "#" || $0.value < 0x20 || $0.value == 0x7F }
    }

    private func authenticate(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, device: String) -> Identity? {
        var token = ""
        if let auth = head.headers.first(name: "authorization") {
            guard auth.count > 7, auth.prefix(7).lowercased() == "bearer " else {
                respond(context, head, .unauthorized, problem: "use Authorization: Bearer TOKEN", extra: [("WWW-Authenticate", "Bearer")])
                return nil
            }
            token = String(auth.dropFirst(7).drop { $0 == " " })
        }
        if let c = cached, c.token == token, c.device == device { return c.identity }
        let remote = context.channel.remoteAddress?.description ?? ""
        var fingerprint = ""
        if let cert = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self).peerCertificate {
            fingerprint = CertificateFingerprint.sha256(cert)
        }
        guard let identity = source.host.authenticate(Credentials(protocolName: "http", device: device, secret: token, certificateFingerprint: fingerprint, remoteAddress: remote)) else {
            respond(context, head, .unauthorized, problem: token.isEmpty ? "credentials required" : "invalid credentials", extra: [("WWW-Authenticate", "Bearer")])
            return nil
        }
        guard identity.device == device else {
            respond(context, head, .forbidden, problem: "these credentials belong to another device")
            return nil
        }
        cached = (token, device, identity)
        return identity
    }

    private func handle(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, _ route: Route, _ body: ByteBuffer) {
        switch route {
        case .ingest(let device, let kind, let suffix):
            submit(context, head, body, device: device, kind: kind, topic: "devices/\(device)/\(suffix)")
        case .result(let device, let command):
            submit(context, head, body, device: device, kind: .commandResult, topic: "devices/\(device)/commands/\(command)/result",
                   extraProperties: [KeyValue("command_id", command)])
        case .poll(let device):
            poll(context, head, device: device)
        case .stream(let device):
            stream(context, head, device: device)
        }
    }

    private func submit(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, _ body: ByteBuffer, device: String, kind: MessageKind,
                        topic: String, extraProperties: [KeyValue] = []) {
        guard let identity = authenticate(context, head, device: device) else { return }
        let contentType = head.headers.first(name: "content-type") ?? ""
        let format = MediaType(contentType)
        guard format != .other else {
            respond(context, head, .unsupportedMediaType, problem: contentType.isEmpty ? "a Content-Type is required" : "content type '\(contentType.prefix(64))' is not accepted",
                    extra: [("Accept-Post", "application/json, application/cbor")])
            return
        }
        let bytes = Array(body.readableBytesView)
        // Well-formedness is checked at the edge, so that a device learns of a bad body at once.
        if format == .json ? !JSON.validate(bytes) : (try? CBOR.decode(bytes)) == nil {
            let reason: String
            do {
                _ = format == .json ? try JSON.decode(bytes) : try CBOR.decode(bytes)
                reason = "malformed"
            } catch {
                reason = error.description
            }
            respond(context, head, .badRequest, problem: "the body is not valid \(format == .json ? "JSON" : "CBOR"): \(reason)")
            return
        }
        guard source.host.authorize(identity, .publish, topic: topic) else {
            respond(context, head, .forbidden, problem: "not allowed to publish to \(topic)")
            return
        }
        var properties = extraProperties
        if let rid = head.headers.first(name: "x-request-id") { properties.append(KeyValue("http.request_id", String(rid.prefix(128)))) }
        var deviceTime: Int64?
        if let t = head.headers.first(name: "x-device-time") {
            deviceTime = Int64(t) ?? DeviceTime.parse(t)
            if deviceTime == nil {
                respond(context, head, .badRequest, problem: "X-Device-Time should be RFC 3339 or milliseconds since the epoch")
                return
            }
        }
        let message = Message(kind: kind, tenant: identity.tenant, device: device, topic: topic, contentType: contentType,
                              payload: bytes, deviceTime: deviceTime, qos: 1, properties: properties)
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        let status = source.host.submit(message) { result in
            let answer: @Sendable () -> Void = {
                let (handler, context) = bound.value
                if result == IOTC_OK {
                    handler.respond(context, head, .accepted, json: #"{"status":"accepted"}"#)
                } else {
                    handler.respond(context, head, .serviceUnavailable, problem: "the message could not be stored; retry", extra: [("Retry-After", "1")])
                }
            }
            // A pipeline without a write-ahead log accepts at once, on this event loop.
            if loop.inEventLoop { answer() } else { loop.execute(answer) }
        }
        switch status {
        case .queued: break
        case .busy: respond(context, head, .serviceUnavailable, problem: "the pipeline is full; retry later", extra: [("Retry-After", "1")])
        case .rejected(IOTC_ERR_NOT_FOUND): respond(context, head, .notFound, problem: "no pipeline reads \(topic)")
        case .rejected(IOTC_ERR_DENIED): respond(context, head, .forbidden, problem: "not allowed to publish to \(topic)")
        case .rejected: respond(context, head, .badRequest, problem: "the hub refused the message")
        }
    }

    private func poll(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, device: String) {
        guard let identity = authenticate(context, head, device: device) else { return }
        let query = head.uri.split(separator: "?", maxSplits: 1).dropFirst().first.map(String.init) ?? ""
        let waitParam = query.split(separator: "&").first { $0.hasPrefix("wait=") }.flatMap { Double($0.dropFirst(5)) } ?? 0
        let wait = max(0, min(waitParam, source.config.long_poll_timeout))
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        source.host.deviceConnected(identity, remoteAddress: context.channel.remoteAddress?.description ?? "")
        let channel = context.channel
        let id = source.mailboxes.wait(device: device, persistent: false) { command in
            guard channel.isActive else { return false }
            loop.execute {
                let (handler, context) = bound.value
                handler.polling = nil
                var line: [UInt8] = []
                EnvelopeJSON.encode(command.message, into: &line)
                handler.respond(context, head, .ok, body: line, contentType: "application/json")
                command.ack.succeed()
                handler.source.host.deviceDisconnected(identity, reason: "poll answered")
            }
            return true
        }
        guard id != 0 else { return }
        polling = (device, id)
        loop.scheduleTask(in: .milliseconds(Int64(wait * 1000))) {
            let (handler, context) = bound.value
            guard let p = handler.polling, p.waiter == id else { return }
            handler.source.mailboxes.cancel(device: device, waiter: id)
            handler.polling = nil
            handler.respond(context, head, .noContent, json: nil)
            handler.source.host.deviceDisconnected(identity, reason: "poll timed out")
        }
    }

    private func stream(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, device: String) {
        guard let identity = authenticate(context, head, device: device) else { return }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/event-stream")
        headers.add(name: "Cache-Control", value: "no-cache")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: ": connected\n\n")))), promise: nil)
        source.host.deviceConnected(identity, remoteAddress: context.channel.remoteAddress?.description ?? "")
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        let channel = context.channel
        let id = source.mailboxes.wait(device: device, persistent: true) { command in
            guard channel.isActive else { return false }
            var line: [UInt8] = Array("event: command\nid: \(command.message.id)\ndata: ".utf8)
            EnvelopeJSON.encode(command.message, into: &line)
            line += Array("\n\n".utf8)
            loop.execute {
                let (_, context) = bound.value
                context.writeAndFlush(NIOAny(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: line)))))
                    .whenComplete { r in if case .success = r { command.ack.succeed() } else { command.ack.retry("the stream closed") } }
            }
            return true
        }
        streaming = (device, id, identity)
        keepAlive(context, bound)
    }

    private func keepAlive(_ context: ChannelHandlerContext, _ bound: NIOLoopBound<(HTTPDeviceHandler, ChannelHandlerContext)>) {
        context.eventLoop.scheduleTask(in: .seconds(15)) {
            let (handler, context) = bound.value
            guard handler.streaming != nil, context.channel.isActive else { return }
            context.writeAndFlush(handler.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: ": keep-alive\n\n")))), promise: nil)
            handler.keepAlive(context, bound)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // A connection that sends nothing is closed, unless it is waiting for commands.
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read, streaming == nil, polling == nil {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let s = streaming {
            source.mailboxes.cancel(device: s.device, waiter: s.waiter)
            source.host.deviceDisconnected(s.identity, reason: "stream closed")
            streaming = nil
        }
        if let p = polling {
            source.mailboxes.cancel(device: p.device, waiter: p.waiter)
            polling = nil
        }
        context.fireChannelInactive()
    }

    // MARK: - Responses

    private func respond(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, _ status: HTTPResponseStatus, problem: String,
                         extra: [(String, String)] = [], close: Bool = false) {
        var o = Value.Object()
        o["type"] = "about:blank"
        o["title"] = .string(status.reasonPhrase)
        o["status"] = .int(Int64(status.code))
        o["detail"] = .string(problem)
        respond(context, head, status, body: JSON.encode(.object(o)), contentType: "application/problem+json", extra: extra, close: close)
    }

    private func respond(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, _ status: HTTPResponseStatus, json: String?) {
        respond(context, head, status, body: json.map { Array($0.utf8) } ?? [], contentType: json == nil ? nil : "application/json")
    }

    private func respond(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, _ status: HTTPResponseStatus, body: [UInt8],
                         contentType: String?, extra: [(String, String)] = [], close: Bool = false) {
        guard context.channel.isActive else { return }
        var headers = HTTPHeaders()
        if let contentType { headers.add(name: "Content-Type", value: contentType) }
        headers.add(name: "Content-Length", value: String(body.count))
        for (k, v) in extra { headers.add(name: k, value: v) }
        let keepAlive = head.isKeepAlive && !close
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if !body.isEmpty {
            var buffer = context.channel.allocator.buffer(capacity: body.count)
            buffer.writeBytes(body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}

enum DeviceTime {
    /// RFC 3339 text as milliseconds since the epoch.
    static func parse(_ s: String) -> Int64? {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let d = f.date(from: s) { return Int64(d.timeIntervalSince1970 * 1000) }
        f.formatOptions = [.withInternetDateTime]
        return f.date(from: s).map { Int64($0.timeIntervalSince1970 * 1000) }
    }
}

enum CertificateFingerprint {
    /// Lower-case hex SHA-256 of the certificate's DER form.
    static func sha256(_ cert: NIOSSLCertificate) -> String {
        guard let der = try? cert.toDERBytes() else { return "" }
        return SHA256.hash(data: der).map { String(format: "%02x", $0) }.joined()
    }
}
