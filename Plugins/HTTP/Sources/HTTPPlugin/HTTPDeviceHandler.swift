import CIoTCPluginABI
import Foundation
import HTTPCodec
import IoTCPluginKit
import NIOCore
import NIOSSL
import PluginNetworking

/// One device connection: frames requests from the bytes it reads, one at a time (pipelined ones
/// wait, unparsed, in the input buffer), authenticates, submits messages and serves command fetches.
/// Responses are written as bytes. It also closes a connection that sends nothing for `idle_timeout`.
/// Framing, answering and the idle check live in this one handler so that a request costs no hop
/// between handlers and no boxing of the parsed request.
final class HTTPDeviceHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Route: Equatable {
        case ingest(device: String, kind: MessageKind, suffix: String)
        case result(device: String, command: String)
        case poll(device: String)
        case attributes(device: String)
        case stream(device: String)

        var device: String {
            switch self {
            case .ingest(let d, _, _), .result(let d, _), .poll(let d), .attributes(let d), .stream(let d): d
            }
        }
    }

    /// The request whose header fields are in and whose body is coming was checked already.
    private var headChecked = false

    private let source: HTTPSource
    private var decoder: DeviceRequestDecoder
    /// Bytes read and not yet framed: later pipelined requests wait here while `current` is answered.
    private var input = ByteBuffer()
    /// How much a client may send ahead of the request being answered before reading stops.
    static let readAhead = 64 * 1024
    private var paused = false
    /// Set while requests are being taken from `input`, so that one answered at once does not recurse.
    private var draining = false
    private var closing = false
    private var lastRead = NIODeadline.now()
    /// When the first byte of the request not yet all in came. A request must come at a pace: all of it
    /// within `idle_timeout` of its first byte, plus a second for every 500 bytes of it that have come
    /// (`minimumRate`, as Apache's mod_reqtimeout). Timing only silence would let a client that sends a
    /// byte now and then hold the connection for as long as it liked.
    private var requestStarted: NIODeadline?
    static let minimumRate = 500
    private var idleCheck: Scheduled<Void>?
    /// The request being answered.
    private var current: DeviceRequest?
    /// What this connection counts in its source's `partialBytes`: what `input` held after the last
    /// read was handled.
    private var share = PartialBytes.Share()
    /// The identity of the last token seen on this connection, so keep-alive requests authenticate once
    /// every `reauthenticateAfter` (a revoked credential stops working on open connections too).
    private var cached: (token: String, device: String, identity: Identity, at: NIODeadline)?
    private var permit = PublishPermit()
    static let reauthenticateAfter = TimeAmount.seconds(2)
    private var streaming: (box: String, waiter: UInt64, identity: Identity)?
    private var polling: (box: String, waiter: UInt64)?
    /// A conditional GET of the attributes waits for them to change.
    private var waitingForAttributes = false

    init(source: HTTPSource) {
        self.source = source
        decoder = DeviceRequestDecoder(limits: DeviceRequestLimits(maxBodySize: source.config.max_body_size))
    }

    func channelActive(context: ChannelHandlerContext) {
        lastRead = .now()
        scheduleIdleCheck(context, at: lastRead + idleTimeout)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var chunk = unwrapInboundIn(data)
        lastRead = .now()
        if input.readableBytes == 0 {
            input = chunk
        } else {
            // Room is reclaimed once the requests read so far outweigh what is still waiting.
            if input.readerIndex > Self.readAhead { input.discardReadBytes() }
            input.writeBuffer(&chunk)
        }
        if current != nil {
            // Bound what a client may send ahead: stop reading until the request in hand is answered.
            if input.readableBytes > Self.readAhead { setReading(context, false) }
            hold(context)
            return
        }
        takeRequests(context)
        hold(context)
    }

    /// Counts what `input` holds now in the source's budget of bytes in requests not yet all in
    /// (`max_partial_bytes`), so that many slow or large uploads at once cannot hold the hub's memory
    /// beyond it, however many connections carry them. A request coming in that would take the total
    /// past it gets 503 and the connection closes, unless no other connection holds any (one request
    /// alone is bounded by `max_body_size`). Bytes waiting behind a request being answered are counted
    /// but not refused: they are at most `readAhead` and a read per connection.
    private func hold(_ context: ChannelHandlerContext) {
        guard !share.hold(input.readableBytes, in: source.partialBytes), current == nil, !closing else { return }
        share.release(from: source.partialBytes)
        current = DeviceRequest(method: .other, target: "", http10: false, keepAlive: false, body: ByteBuffer())
        respond(context, .serviceUnavailable, problem: "the hub is receiving more requests at once than it holds; retry later",
                extra: [("Retry-After", "1")], close: true)
    }

    /// Frames and starts requests from `input` while none is being answered.
    private func takeRequests(_ context: ChannelHandlerContext) {
        guard !draining else { return }
        draining = true
        defer { draining = false }
        while current == nil, !closing, input.readableBytes > 0 {
            let request: DeviceRequest?
            do {
                request = try decoder.decode(buffer: &input)
            } catch {
                return refuse(context, error as? DeviceRequestError ?? .malformed("\(error)"))
            }
            guard let request else {
                if !headChecked, let head = decoder.pendingHead {
                    headChecked = true
                    guard mayReceiveBody(context, head) else { return }
                }
                // Headers that asked for 100 Continue, and the client waits before sending the body.
                if decoder.takeContinue() { context.writeAndFlush(wrapOutboundOut(Self.continue100), promise: nil) }
                if requestStarted == nil { requestStarted = .now() }
                break
            }
            headChecked = false
            requestStarted = nil
            start(context, request)
        }
        if current == nil { setReading(context, true) }
    }

    private func setReading(_ context: ChannelHandlerContext, _ on: Bool) {
        guard paused == on else { return }
        paused = !on
        context.channel.setOption(ChannelOptions.autoRead, value: on).whenComplete { _ in }
    }

    private var idleTimeout: TimeAmount { .milliseconds(Int64(source.config.idle_timeout * 1000)) }

    /// A connection that sends nothing for `idle_timeout` is closed, unless it is waiting for commands
    /// or attributes.
    private func scheduleIdleCheck(_ context: ChannelHandlerContext, at deadline: NIODeadline) {
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        idleCheck = context.eventLoop.scheduleTask(deadline: deadline) {
            let (handler, context) = bound.value
            guard context.channel.isActive else { return }
            let now = NIODeadline.now()
            let requestDue = handler.requestDue
            if let requestDue, now >= requestDue { return handler.timeOutRequest(context) }
            let due = min(handler.lastRead + handler.idleTimeout, requestDue ?? .distantFuture)
            if now < due { return handler.scheduleIdleCheck(context, at: due) }
            if handler.streaming == nil, handler.polling == nil, !handler.waitingForAttributes {
                context.close(promise: nil)
            } else {
                handler.scheduleIdleCheck(context, at: .now() + handler.idleTimeout)
            }
        }
    }

    private func start(_ context: ChannelHandlerContext, _ request: DeviceRequest) {
        current = request
        // A method RFC 9110 does not define is not implemented (§9.1: 501), whatever the resource.
        guard request.method != .unknown else { return respond(context, .notImplemented, problem: "this method is not implemented") }
        guard let route = Self.route(request.method, request.target) else {
            // RFC 9110: a 405 lists the methods the resource takes (§15.5.6), and so does OPTIONS.
            let allowed = Self.allowedMethods(request.target)
            if allowed.isEmpty { return respond(context, .notFound, problem: "no such resource") }
            if request.method == .options { return respond(context, .noContent, body: [], contentType: nil, extra: [("Allow", allowed)]) }
            respond(context, .methodNotAllowed, problem: "this method is not allowed here", extra: [("Allow", allowed)])
            return
        }
        handle(context, request, route)
    }

    /// Checks a request as soon as its header fields are in, before its body is read: a request for no
    /// resource, or without valid credentials, is answered at once and the connection closes, its body
    /// unread. Before, the hub read the whole body first: 200 connections without credentials, each
    /// sending all but the last byte of a 1 MB body, held 214 MB of it (by hand), for as long as the
    /// request's pace allowed. False when it answered.
    private func mayReceiveBody(_ context: ChannelHandlerContext, _ head: DeviceRequest) -> Bool {
        var early = head
        early.keepAlive = false
        guard head.method != .unknown, let route = Self.route(head.method, head.target) else {
            start(context, early)
            return false
        }
        current = early
        guard authenticate(context, early, device: route.device) != nil else { return false }
        current = nil
        return true
    }

    /// Called when the current request's response is complete: the next pipelined one starts.
    private func finished(_ context: ChannelHandlerContext) {
        current = nil
        takeRequests(context)
        hold(context)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    /// Answers a request that could not be framed and closes the connection.
    private func refuse(_ context: ChannelHandlerContext, _ e: DeviceRequestError) {
        current = DeviceRequest(method: .other, target: "", http10: false, keepAlive: false, body: ByteBuffer())
        switch e {
        case .bodyTooLarge(let n?):
            respond(context, .payloadTooLarge, problem: "the body is \(n) bytes; the limit is \(source.config.max_body_size)", close: true)
        case .bodyTooLarge(nil):
            respond(context, .payloadTooLarge, problem: "the body is over the limit of \(source.config.max_body_size) bytes", close: true)
        case .headerTooLarge:
            respond(context, .headersTooLarge, problem: "the request line and headers are too large", close: true)
        case .malformed(let why):
            respond(context, .badRequest, problem: "malformed request: \(why)", close: true)
        case .unsupportedTransferCoding:
            respond(context, .notImplemented, problem: "the only transfer coding taken is chunked", close: true)
        case .unsupportedVersion:
            respond(context, .versionNotSupported, problem: "the device API speaks HTTP/1.1 (and 1.0)", close: true)
        }
    }

    /// When the request coming in must be all in (see `requestStarted`); nil when none is coming in.
    /// Its bytes so far are all of `input`: the requests before it were taken out.
    private var requestDue: NIODeadline? {
        guard let requestStarted, current == nil, !closing else { return nil }
        return requestStarted + idleTimeout + .milliseconds(Int64(input.readableBytes * 1000 / Self.minimumRate))
    }

    /// A request did not come at the pace `requestStarted` says (RFC 9110 §15.5.9: 408, and the
    /// connection closes).
    private func timeOutRequest(_ context: ChannelHandlerContext) {
        current = DeviceRequest(method: .other, target: "", http10: false, keepAlive: false, body: ByteBuffer())
        respond(context, .requestTimeout, problem: "the request did not all come within \(source.config.idle_timeout) s and a second per \(Self.minimumRate) bytes", close: true)
    }

    /// The methods a device resource takes, for `Allow`; empty when there is no such resource.
    static func allowedMethods(_ uri: String) -> String {
        let methods: [(DeviceRequest.Method, String)] = [(.get, "GET"), (.head, "HEAD"), (.post, "POST")]
        let taken = methods.filter { route($0.0, uri) != nil }.map(\.1)
        return taken.isEmpty ? "" : (taken + ["OPTIONS"]).joined(separator: ", ")
    }

    static func route(_ method: DeviceRequest.Method, _ uri: String) -> Route? {
        // Splits "/v1/devices/{id}/{rest...}" by scanning UTF-8 bytes: this runs for every request.
        var uri = uri
        return uri.withUTF8 { u -> Route? in
            var end = 0
            while end < u.count, u[end] != UInt8(ascii: "?") { end += 1 }
            let prefix: StaticString = "/v1/devices/"
            guard end >= prefix.utf8CodeUnitCount, memcmp(u.baseAddress!, prefix.utf8Start, prefix.utf8CodeUnitCount) == 0 else { return nil }
            // Up to four segments after the prefix, as byte ranges; a fifth means no route.
            var parts: (Range<Int>, Range<Int>, Range<Int>, Range<Int>) = (0..<0, 0..<0, 0..<0, 0..<0)
            var count = 0, start = prefix.utf8CodeUnitCount
            for k in start...end where k == end || u[k] == UInt8(ascii: "/") {
                guard count < 4 else { return nil }
                switch count {
                case 0: parts.0 = start..<k
                case 1: parts.1 = start..<k
                case 2: parts.2 = start..<k
                default: parts.3 = start..<k
                }
                count += 1
                start = k + 1
            }
            guard count >= 2 else { return nil }
            func text(_ r: Range<Int>) -> String { String(decoding: UnsafeBufferPointer(rebasing: u[r]), as: UTF8.self) }
            func equals(_ r: Range<Int>, _ s: StaticString) -> Bool {
                r.count == s.utf8CodeUnitCount && memcmp(u.baseAddress! + r.lowerBound, s.utf8Start, r.count) == 0
            }
            // Percent-decoding goes through Foundation; most ids need none.
            let raw = text(parts.0)
            guard let device = u[parts.0].contains(UInt8(ascii: "%")) ? raw.removingPercentEncoding : raw,
                  CommandTopics.isDeviceID(device) else { return nil }
            switch (method, count) {
            case (.post, 2):
                if equals(parts.1, "telemetry") { return .ingest(device: device, kind: .telemetry, suffix: "telemetry") }
                if equals(parts.1, "events") { return .ingest(device: device, kind: .event, suffix: "events") }
                if equals(parts.1, "attributes") { return .ingest(device: device, kind: .attributes, suffix: "attributes") }
                return nil
            case (.get, 2) where equals(parts.1, "commands"): return .poll(device: device)
            // HEAD is GET without the body, where GET is safe: the attributes, not the commands it takes.
            case (.get, 2) where equals(parts.1, "attributes"), (.head, 2) where equals(parts.1, "attributes"): return .attributes(device: device)
            case (.get, 3) where equals(parts.1, "commands") && equals(parts.2, "stream"): return .stream(device: device)
            case (.post, 4) where equals(parts.1, "commands") && equals(parts.3, "result") && !parts.2.isEmpty:
                return .result(device: device, command: text(parts.2))
            default: return nil
            }
        }
    }


    private func authenticate(_ context: ChannelHandlerContext, _ request: DeviceRequest, device: String) -> Identity? {
        var token = ""
        if let auth = request.authorization {
            guard auth.count > 7, auth.prefix(7).lowercased() == "bearer " else {
                respond(context, .unauthorized, problem: "use Authorization: Bearer TOKEN", extra: [("WWW-Authenticate", "Bearer")])
                return nil
            }
            token = String(auth.dropFirst(7).drop { $0 == " " })
        }
        if let c = cached, c.token == token, c.device == device, NIODeadline.now() - c.at < Self.reauthenticateAfter { return c.identity }
        let remote = context.channel.remoteAddress?.description ?? ""
        let presented = ServerTLS.presented(context.pipeline.syncOperations)
        guard let identity = source.host.authenticate(Credentials(protocolName: "http", device: device, secret: token, certificateFingerprint: presented.fingerprint,
                                                                  remoteAddress: remote, certificateChain: presented.chain)) else {
            respond(context, .unauthorized, problem: token.isEmpty ? "credentials required" : "invalid credentials", extra: [("WWW-Authenticate", "Bearer")])
            return nil
        }
        guard identity.device == device else {
            respond(context, .forbidden, problem: "these credentials belong to another device")
            return nil
        }
        cached = (token, device, identity, .now())
        return identity
    }

    private func handle(_ context: ChannelHandlerContext, _ request: DeviceRequest, _ route: Route) {
        let body = request.body
        // A content coding the hub does not undo (gzip and the like) would be read as the content
        // itself: 415, naming the one coding it takes (RFC 9110 §15.5.16).
        if let coding = request.contentEncoding, body.readableBytes > 0, coding.lowercased() != "identity" {
            return respond(context, .unsupportedMediaType, problem: "content coding '\(coding.prefix(32))' is not accepted: send the body as it is",
                           extra: [("Accept-Encoding", "identity")])
        }
        switch route {
        case .ingest(let device, let kind, let suffix):
            submit(context, request, body, device: device, kind: kind, topic: "devices/\(device)/\(suffix)")
        case .result(let device, let command):
            submit(context, request, body, device: device, kind: .commandResult, topic: CommandTopics.result(device: device, id: command),
                   extraProperties: [KeyValue("command_id", command)])
        case .attributes(let device):
            guard let identity = authenticate(context, request, device: device) else { return }
            attributes(context, request, identity)
        case .poll(let device):
            poll(context, request, device: device)
        case .stream(let device):
            stream(context, request, device: device)
        }
    }

    private func submit(_ context: ChannelHandlerContext, _ request: DeviceRequest, _ body: ByteBuffer, device: String, kind: MessageKind,
                        topic: String, extraProperties: [KeyValue] = []) {
        guard let identity = authenticate(context, request, device: device) else { return }
        let contentType = request.contentType ?? ""
        let format = MediaType(contentType)
        guard format != .other else {
            respond(context, .unsupportedMediaType, problem: contentType.isEmpty ? "a Content-Type is required" : "content type '\(contentType.prefix(64))' is not accepted",
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
            respond(context, .badRequest, problem: "the body is not valid \(format == .json ? "JSON" : "CBOR"): \(reason)")
            return
        }
        guard permit.allows(identity, topic, host: source.host, now: Int64(NIODeadline.now().uptimeNanoseconds / 1_000_000),
                            lifetime: Self.reauthenticateAfter.nanoseconds / 1_000_000) else {
            respond(context, .forbidden, problem: "not allowed to publish to \(topic)")
            return
        }
        var properties = extraProperties
        if let rid = request.requestID { properties.append(KeyValue("http.request_id", String(rid.prefix(128)))) }
        var deviceTime: Int64?
        if let t = request.deviceTime {
            deviceTime = Int64(t) ?? RFC3339.parse(t)
            if deviceTime == nil {
                respond(context, .badRequest, problem: "X-Device-Time should be RFC 3339 or milliseconds since the epoch")
                return
            }
        }
        let message = Message(kind: kind, tenant: identity.tenant, device: device, topic: topic, contentType: contentType,
                              payload: bytes, deviceTime: deviceTime, qos: 1, properties: properties)
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        let gate = source.gate
        let status = source.host.submit(message) { result in
            let answer: @Sendable () -> Void = {
                let (handler, context) = bound.value
                if result == IOTC_OK {
                    handler.accepted(context)
                } else {
                    handler.respond(context, .serviceUnavailable, problem: "the message could not be stored; retry", extra: [("Retry-After", "1")])
                }
            }
            // A pipeline without a write-ahead log accepts at once, on this event loop.
            if loop.inEventLoop { answer() } else { gate.execute(on: loop, answer) }
        }
        switch status {
        case .queued: break
        case .busy: respond(context, .serviceUnavailable, problem: "the pipeline is full; retry later", extra: [("Retry-After", "1")])
        case .rejected(IOTC_ERR_NOT_FOUND): respond(context, .notFound, problem: "no pipeline reads \(topic)")
        case .rejected(IOTC_ERR_DENIED): respond(context, .forbidden, problem: "not allowed to publish to \(topic)")
        case .rejected: respond(context, .badRequest, problem: "the hub refused the message")
        }
    }

    /// The device's attributes with their ETag. With `If-None-Match` naming the current ones: 304 at
    /// once, or with `?wait=S` when they change within S seconds (looked at every second; at most
    /// `long_poll_timeout`), 304 when they do not.
    private func attributes(_ context: ChannelHandlerContext, _ request: DeviceRequest, _ identity: Identity) {
        let current: @Sendable () -> [UInt8] = { [source] in source.host.attributes(identity) ?? Array("{}".utf8) }
        let json = current()
        let tag = Self.etag(json)
        guard let known = request.ifNoneMatch, known == tag || known == "*" else {
            return respond(context, .ok, body: json, contentType: "application/json", extra: [("ETag", tag)])
        }
        let wait = max(0, min(Self.queryNumber(request.target, "wait") ?? 0, source.config.long_poll_timeout))
        guard wait > 0 else { return respond(context, .notModified, body: [], contentType: nil, extra: [("ETag", tag)]) }
        let deadline = NIODeadline.now() + .milliseconds(Int64(wait * 1000))
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        waitingForAttributes = true
        let eventLoop = context.eventLoop
        @Sendable func look() {
            eventLoop.scheduleTask(in: .seconds(1)) {
                let (handler, context) = bound.value
                guard handler.waitingForAttributes, context.channel.isActive else { return }
                let json = current()
                let now = Self.etag(json)
                if now != tag {
                    handler.waitingForAttributes = false
                    handler.respond(context, .ok, body: json, contentType: "application/json", extra: [("ETag", now)])
                } else if NIODeadline.now() + .seconds(1) > deadline {
                    handler.waitingForAttributes = false
                    handler.respond(context, .notModified, body: [], contentType: nil, extra: [("ETag", tag)])
                } else {
                    look()
                }
            }
        }
        look()
    }

    /// A strong entity tag for a representation (quoted, as HTTP writes it).
    static func etag(_ bytes: [UInt8]) -> String { "\"" + String(FNV1a.hash(bytes), radix: 16) + "\"" }

    /// A number in the request's query (`?wait=30`).
    static func queryNumber(_ target: String, _ name: String) -> Double? {
        let query = target.split(separator: "?", maxSplits: 1).dropFirst().first ?? ""
        return query.split(separator: "&").first { $0.hasPrefix(name + "=") }.flatMap { Double($0.dropFirst(name.count + 1)) }
    }

    private func poll(_ context: ChannelHandlerContext, _ request: DeviceRequest, device: String) {
        guard let identity = authenticate(context, request, device: device) else { return }
        let wait = max(0, min(Self.queryNumber(request.target, "wait") ?? 0, source.config.long_poll_timeout))
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        source.host.deviceConnected(identity, remoteAddress: context.channel.remoteAddress?.description ?? "")
        let channel = context.channel
        let box = CommandMailboxes.key(tenant: identity.tenant, device: device)
        let gate = source.gate
        let id = source.mailboxes.wait(box: box, persistent: false) { command in
            guard channel.isActive else { return false }
            gate.execute(on: loop, {
                let (handler, context) = bound.value
                handler.polling = nil
                var line: [UInt8] = []
                EnvelopeJSON.encode(command.message, into: &line)
                handler.respond(context, .ok, body: line, contentType: "application/json")
                command.ack.succeed()
                handler.source.host.deviceDisconnected(identity, reason: "poll answered")
            }, otherwise: { command.ack.retry("the http source stopped") })
            return true
        }
        guard id != 0 else { return }
        polling = (box, id)
        loop.scheduleTask(in: .milliseconds(Int64(wait * 1000))) {
            let (handler, context) = bound.value
            guard let p = handler.polling, p.waiter == id else { return }
            handler.source.mailboxes.cancel(box: box, waiter: id)
            handler.polling = nil
            handler.respond(context, .noContent, json: nil)
            handler.source.host.deviceDisconnected(identity, reason: "poll timed out")
        }
    }

    private func stream(_ context: ChannelHandlerContext, _ request: DeviceRequest, device: String) {
        guard let identity = authenticate(context, request, device: device) else { return }
        // The stream has no length: it ends when the connection closes.
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n: connected\n\n")), promise: nil)
        source.host.deviceConnected(identity, remoteAddress: context.channel.remoteAddress?.description ?? "")
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        let channel = context.channel
        let box = CommandMailboxes.key(tenant: identity.tenant, device: device)
        let gate = source.gate
        let id = source.mailboxes.wait(box: box, persistent: true) { command in
            guard channel.isActive else { return false }
            var line: [UInt8] = Array("event: command\nid: \(command.message.id)\ndata: ".utf8)
            EnvelopeJSON.encode(command.message, into: &line)
            line += Array("\n\n".utf8)
            let event = line
            gate.execute(on: loop, {
                let (_, context) = bound.value
                context.writeAndFlush(NIOAny(ByteBuffer(bytes: event)))
                    .whenComplete { r in if case .success = r { command.ack.succeed() } else { command.ack.retry("the stream closed") } }
            }, otherwise: { command.ack.retry("the http source stopped") })
            return true
        }
        streaming = (box, id, identity)
        keepAlive(context, bound)
        // The device's attributes come first, and again each time they change.
        attributeEvents(context, bound, identity, sent: nil)
    }

    /// Sends the device's attributes as an `event: attributes` when they differ from what the stream
    /// last carried, and looks again in a second.
    private func attributeEvents(_ context: ChannelHandlerContext, _ bound: NIOLoopBound<(HTTPDeviceHandler, ChannelHandlerContext)>,
                                 _ identity: Identity, sent: String?) {
        guard streaming != nil, context.channel.isActive else { return }
        let json = source.host.attributes(identity) ?? Array("{}".utf8)
        let tag = Self.etag(json)
        if tag != sent {
            let event = Array("event: attributes\nid: \(tag.dropFirst().dropLast())\ndata: ".utf8) + json + Array("\n\n".utf8)
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: event)), promise: nil)
        }
        context.eventLoop.scheduleTask(in: .seconds(1)) {
            let (handler, context) = bound.value
            handler.attributeEvents(context, bound, identity, sent: tag)
        }
    }

    private func keepAlive(_ context: ChannelHandlerContext, _ bound: NIOLoopBound<(HTTPDeviceHandler, ChannelHandlerContext)>) {
        context.eventLoop.scheduleTask(in: .seconds(15)) {
            let (handler, context) = bound.value
            guard handler.streaming != nil, context.channel.isActive else { return }
            context.writeAndFlush(handler.wrapOutboundOut(ByteBuffer(string: ": keep-alive\n\n")), promise: nil)
            handler.keepAlive(context, bound)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        idleCheck?.cancel()
        idleCheck = nil
        share.release(from: source.partialBytes)
        if let s = streaming {
            source.mailboxes.cancel(box: s.box, waiter: s.waiter)
            source.host.deviceDisconnected(s.identity, reason: "stream closed")
            streaming = nil
        }
        if let p = polling {
            source.mailboxes.cancel(box: p.box, waiter: p.waiter)
            polling = nil
        }
        waitingForAttributes = false
        context.fireChannelInactive()
    }

    // MARK: - Responses

    /// The answer to an accepted message, rendered once.
    private static let continue100 = ByteBuffer(string: "HTTP/1.1 100 Continue\r\n\r\n")
    private static let acceptedKeepAlive = ByteBuffer(string: "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 21\r\nConnection: keep-alive\r\n\r\n{\"status\":\"accepted\"}")

    private func accepted(_ context: ChannelHandlerContext) {
        guard let request = current, request.keepAlive else {
            respond(context, .accepted, json: #"{"status":"accepted"}"#)
            return
        }
        guard context.channel.isActive else { return }
        context.writeAndFlush(wrapOutboundOut(Self.acceptedKeepAlive), promise: nil)
        finished(context)
    }

    struct Status {
        let code: Int
        let reason: String
        static let ok = Status(code: 200, reason: "OK"), accepted = Status(code: 202, reason: "Accepted")
        static let noContent = Status(code: 204, reason: "No Content"), badRequest = Status(code: 400, reason: "Bad Request")
        static let notModified = Status(code: 304, reason: "Not Modified")
        static let unauthorized = Status(code: 401, reason: "Unauthorized"), forbidden = Status(code: 403, reason: "Forbidden")
        static let notFound = Status(code: 404, reason: "Not Found"), methodNotAllowed = Status(code: 405, reason: "Method Not Allowed")
        static let requestTimeout = Status(code: 408, reason: "Request Timeout")
        static let payloadTooLarge = Status(code: 413, reason: "Content Too Large")
        static let notImplemented = Status(code: 501, reason: "Not Implemented")
        static let versionNotSupported = Status(code: 505, reason: "HTTP Version Not Supported")
        static let unsupportedMediaType = Status(code: 415, reason: "Unsupported Media Type")
        static let headersTooLarge = Status(code: 431, reason: "Request Header Fields Too Large")
        static let serviceUnavailable = Status(code: 503, reason: "Service Unavailable")
    }

    private func respond(_ context: ChannelHandlerContext, _ status: Status, problem: String,
                         extra: [(String, String)] = [], close: Bool = false) {
        var o = Value.Object()
        o["type"] = "about:blank"
        o["title"] = .string(status.reason)
        o["status"] = .int(Int64(status.code))
        o["detail"] = .string(problem)
        respond(context, status, body: JSON.encode(.object(o)), contentType: "application/problem+json", extra: extra, close: close)
    }

    private func respond(_ context: ChannelHandlerContext, _ status: Status, json: String?) {
        respond(context, status, body: json.map { Array($0.utf8) } ?? [], contentType: json == nil ? nil : "application/json")
    }

    /// Writes a complete response to the current request, then starts the next pipelined one.
    private func respond(_ context: ChannelHandlerContext, _ status: Status, body: [UInt8],
                         contentType: String?, extra: [(String, String)] = [], close: Bool = false) {
        guard context.channel.isActive else { return }
        let keepAlive = (current?.keepAlive ?? false) && !close
        var out = context.channel.allocator.buffer(capacity: 160 + body.count)
        out.writeString("HTTP/1.1 \(status.code) \(status.reason)\r\n")
        if let contentType { out.writeString("Content-Type: \(contentType)\r\n") }
        // 204 and 304 have no content, and no Content-Length of 0 either (RFC 9110 8.6).
        if status.code != 204 && status.code != 304 { out.writeString("Content-Length: \(body.count)\r\n") }
        for (k, v) in extra { out.writeString("\(k): \(v)\r\n") }
        out.writeString(keepAlive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n")
        // A HEAD response has the GET response's header fields, Content-Length included, and no content.
        if current?.method != .head { out.writeBytes(body) }
        let done = context.writeAndFlush(wrapOutboundOut(out))
        if keepAlive {
            finished(context)
        } else {
            current = nil
            closing = true
            input.clear()
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
