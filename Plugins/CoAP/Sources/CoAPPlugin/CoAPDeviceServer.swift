import CCoAP
import CIoTCPluginABI
import CoAPRuntime
import Foundation
import IoTCPluginKit
import NIOConcurrencyHelpers
import Synchronization

/// The CoAP resources of the `coap` source, served on its libcoap loop thread: every request comes
/// through libcoap's unknown-resource handler and is routed by the source's path templates.
final class CoAPDeviceServer: @unchecked Sendable {
    unowned let source: CoAPSource
    let loop: CoAPEventLoop
    var host: PluginHost { source.host }
    /// A token is checked again after this long (a revoked one stops working on a known endpoint too).
    static let reauthenticateAfterMs: Int64 = 2_000

    /// Block-wise uploads being put together: all of them hold at most eight bodies' worth of bytes.
    private var uploads: BlockUploads
    /// Observations of attributes resources (loop thread): each tick (a second) compares every observed
    /// device's attributes with what its observer last got, and a change (through the API or an
    /// `attributes` sink; another node's once the registry reloads) goes out as a notification.
    private var attributeWatches: [Observation] = []
    /// Each device's observations, oldest first, from every endpoint it observed from (loop thread).
    private var deviceObservations: [String: [DeviceObservation]] = [:]
    /// Observations one device may hold across its endpoints: past it, the oldest goes. An endpoint
    /// holds at most `PeerState.maxObservations`, but a device observing from ever new source ports
    /// (a NAT that rebinds, or a client that means harm) kept sessions that are never idle, about 7 KB
    /// each, for good.
    static let maxObservationsPerDevice = 32

    private struct DeviceObservation {
        weak var peer: PeerState?
        weak var observation: Observation?
        var live: Bool { peer != nil && observation?.open == true }
    }

    init(source: CoAPSource, loop: CoAPEventLoop) {
        self.source = source
        self.loop = loop
        uploads = BlockUploads(budget: 8 * source.config.max_body_size)
    }

    func install() {
        let r = coap_resource_unknown_init2(coapDeviceRequest, 0)
        // Every method comes here, so that one a resource does not take gets 4.05 (libcoap would
        // answer a DELETE it has no handler for with 2.02 Deleted, and FETCH or PATCH with 4.04).
        for m in [COAP_REQUEST_GET, COAP_REQUEST_POST, COAP_REQUEST_PUT, COAP_REQUEST_DELETE, COAP_REQUEST_FETCH, COAP_REQUEST_PATCH, COAP_REQUEST_IPATCH] {
            coap_register_handler(r, m, coapDeviceRequest)
        }
        coap_resource_set_userdata(r, Unmanaged.passUnretained(self).toOpaque())
        coap_add_resource(loop.context, r)
        // Resource discovery (RFC 6690) in place of libcoap's, which lists nothing here: every request
        // comes through the unknown-resource handler.
        let wellKnown = coap_resource_init(coap_make_str_const(".well-known/core"), 0)
        for m in [COAP_REQUEST_GET, COAP_REQUEST_POST, COAP_REQUEST_PUT, COAP_REQUEST_DELETE, COAP_REQUEST_FETCH, COAP_REQUEST_PATCH, COAP_REQUEST_IPATCH] {
            coap_register_handler(wellKnown, m, coapDeviceRequest)
        }
        coap_resource_set_userdata(wellKnown, Unmanaged.passUnretained(self).toOpaque())
        coap_add_resource(loop.context, wellKnown)
        loop.nack = { [unowned self] session, sent in nack(session, sent) }
        loop.tick = { [unowned self] in
            uploads.expire(now: Date().timeIntervalSince1970)
            notifyChangedAttributes()
            forgetEndedObservations()
        }
    }

    // MARK: requests

    fileprivate func handle(_ resource: OpaquePointer, _ session: OpaquePointer, _ request: OpaquePointer, _ query: UnsafePointer<coap_string_t>?,
                            _ response: OpaquePointer) {
        guard PDU.isRequestMessage(request) else { return }
        let peer = loop.peer(session)
        let state = PeerState.of(peer)
        let mid = coap_pdu_get_mid(request)
        // The second call for a request answered late (a separate response): its answer is ready.
        if let pending = PendingAnswer.resumed(session, request) {
            answer(pending.result ?? IOTC_ERR_INTERNAL, response)
            // The request itself was acknowledged empty; a copy that comes now gets that same empty
            // acknowledgement (RFC 7252 §4.5), while this confirmable response is retransmitted until
            // the device acknowledges it.
            state.remember(pending.mid, COAP_EMPTY_CODE)
            return
        }
        if let code = state.answered(mid) {
            // A duplicate of an answered request: the same answer, nothing submitted again.
            coap_pdu_set_code(response, code)
            return
        }
        let path = PDU.path(request)
        if path.count == 2, path[0] == ".well-known", path[1] == "core" {
            return discover(resource, session, request, query, response, peer)
        }
        guard let (values, route) = match(path) else {
            PDU.respond(response, COAP_RESPONSE_CODE_NOT_FOUND)
            return
        }
        let method = coap_request_t(UInt32(PDU.code(request).rawValue))
        switch route {
        case .ingest(.attributes, _) where method == COAP_REQUEST_GET:
            // The attributes the operator set for the device: its configuration.
            guard let identity = authenticate(peer, request, response, device: values["device"]), acceptsJSON(request, response) else { return }
            let json = host.attributes(identity) ?? Array("{}".utf8)
            let etag = Self.etag(json)
            let token = PDU.token(request)
            switch PDU.uint(request, COAP_OPTION_OBSERVE) {
            case 0?:
                // Register (or refresh) the observation: later changes follow as notifications.
                guard admitObservation(state, token, response) else { return }
                let observation = Observation(session: session, loop: loop, token: token, box: "", attributesOf: identity)
                observation.etag = etag
                state.observations.append(observation)
                keep(observation, of: identity, at: state)
                attributeWatches.append(observation)
                PDU.addUInt(response, COAP_OPTION_OBSERVE, observation.nextSequence())
            case 1?:
                state.cancel(token: token, mailboxes: source.mailboxes)
            default:
                break
            }
            PDU.respondLarge(resource, session, request, response, query, format: ContentFormat.json, etag: etag, body: json)
        case .ingest(let kind, let suffix):
            guard method == COAP_REQUEST_POST || method == COAP_REQUEST_PUT else { return notAllowed(response) }
            guard let identity = authenticate(peer, request, response, device: values["device"]) else { return }
            ingest(session, request, response, state, identity, kind: kind, topic: state.topic(device: identity.device, suffix: suffix), extra: [])
        case .result:
            guard method == COAP_REQUEST_POST || method == COAP_REQUEST_PUT else { return notAllowed(response) }
            guard let identity = authenticate(peer, request, response, device: values["device"]), let command = values["command"] else { return }
            ingest(session, request, response, state, identity, kind: .commandResult, topic: CommandTopics.result(device: identity.device, id: command),
                   extra: [KeyValue("command_id", command)])
        case .commands:
            guard method == COAP_REQUEST_GET else { return notAllowed(response) }
            guard let identity = authenticate(peer, request, response, device: values["device"]), acceptsJSON(request, response) else { return }
            commands(Request(resource: resource, session: session, pdu: request, query: query), response, peer, state, identity)
        }
    }

    /// Makes room for an observation by `token` (a new one with the same token replaces the old): false,
    /// answered 5.03, when the endpoint holds as many as it may.
    private func admitObservation(_ state: PeerState, _ token: [UInt8], _ response: OpaquePointer) -> Bool {
        state.cancel(token: token, mailboxes: source.mailboxes)
        guard state.observations.count < PeerState.maxObservations else {
            PDU.respond(response, COAP_RESPONSE_CODE_SERVICE_UNAVAILABLE, diagnostic: "too many observations from this endpoint")
            return false
        }
        return true
    }

    /// Counts a new observation to its device; past `maxObservationsPerDevice`, the device's oldest
    /// one, wherever it is, is cancelled (RFC 7641 §3.6 lets a server forget an observer).
    private func keep(_ observation: Observation, of identity: Identity, at state: PeerState) {
        let key = identity.tenant + "/" + identity.device
        var list = deviceObservations[key, default: []].filter(\.live)
        while list.count >= Self.maxObservationsPerDevice {
            let oldest = list.removeFirst()
            if let o = oldest.observation { oldest.peer?.cancel(token: o.token, mailboxes: source.mailboxes) }
        }
        list.append(DeviceObservation(peer: state, observation: observation))
        deviceObservations[key] = list
    }

    /// Observations that ended (cancelled, their endpoint gone) leave the device counts, and a device
    /// with none leaves the table (each second): ids are many, and some are whatever a client says.
    private func forgetEndedObservations() {
        for (key, list) in deviceObservations {
            let live = list.filter(\.live)
            deviceObservations[key] = live.isEmpty ? nil : live
        }
    }

    private func notAllowed(_ response: OpaquePointer) { PDU.respond(response, COAP_RESPONSE_CODE_NOT_ALLOWED) }

    /// `GET /.well-known/core`: the resources of the device asking (its DTLS identity, or the device of
    /// its `token=`), in CoRE Link Format with their resource types, Content-Formats and whether they
    /// can be observed. Without credentials the list is empty: it names no device. A query parameter
    /// other than `token` filters the links (RFC 6690 §4.1: `rt=iotc.commands`, `href=/c*`).
    private func discover(_ resource: OpaquePointer, _ session: OpaquePointer, _ request: OpaquePointer, _ query: UnsafePointer<coap_string_t>?,
                          _ response: OpaquePointer, _ peer: CoAPPeer) {
        guard coap_request_t(UInt32(PDU.code(request).rawValue)) == COAP_REQUEST_GET else { return notAllowed(response) }
        var identity: Identity?
        if peer.dtls || PDU.query(request, "token") != nil {
            guard let id = authenticate(peer, request, response, device: nil) else { return }
            identity = id
        }
        let filter = PDU.strings(request, COAP_OPTION_URI_QUERY).first { !$0.hasPrefix("token=") && $0 != "token" }
        var links: [String] = []
        if let identity {
            for (template, route) in source.routes {
                // Results are posted to a command's own path: nothing to list.
                guard let href = template.filled(["device": identity.device]), let link = DiscoveredLink(href: href, route: route) else { continue }
                if link.passes(filter) { links.append(link.text) }
            }
        }
        PDU.respondLarge(resource, session, request, response, query, format: ContentFormat.linkFormat, etag: 0, body: Array(links.joined(separator: ",").utf8))
    }

    /// The attributes and commands resources serve JSON only: a request whose Accept option names
    /// another Content-Format gets 4.06 Not Acceptable (RFC 7252 §5.10.4).
    private func acceptsJSON(_ request: OpaquePointer, _ response: OpaquePointer) -> Bool {
        guard let accept = PDU.uint(request, COAP_OPTION_ACCEPT), accept != ContentFormat.json else { return true }
        PDU.respond(response, COAP_RESPONSE_CODE_NOT_ACCEPTABLE, diagnostic: "Content-Format \(accept) is not served here (use 50, JSON)")
        return false
    }

    /// An ETag for a representation: FNV-1a of its bytes (never 0, which means none).
    static func etag(_ bytes: [UInt8]) -> UInt64 {
        let h = FNV1a.hash(bytes)
        return h == 0 ? 1 : h
    }

    private func match(_ path: [Substring]) -> (PathMatch, CoAPRoute)? {
        for (template, route) in source.routes {
            if let values = template.match(path) { return (values, route) }
        }
        return nil
    }

    /// The device the request speaks for: the DTLS identity, or the device of a `token=` query
    /// option (cached per endpoint for a short while).
    private func authenticate(_ peer: CoAPPeer, _ request: OpaquePointer, _ response: OpaquePointer, device: String?) -> Identity? {
        if let device, !CommandTopics.isDeviceID(device) {
            PDU.respond(response, COAP_RESPONSE_CODE_BAD_REQUEST, diagnostic: "invalid device id")
            return nil
        }
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        if peer.dtls {
            // DTLS endpoints are authenticated in the handshake; no token is looked at.
            guard let id = peer.identity else {
                PDU.respond(response, COAP_RESPONSE_CODE_UNAUTHORIZED, diagnostic: "no DTLS identity")
                return nil
            }
            return check(id, device, response)
        }
        let token = PDU.query(request, "token") ?? ""
        if let id = peer.identity, peer.token == token, now - peer.authenticatedAt < Self.reauthenticateAfterMs, device == nil || id.device == device {
            return id
        }
        guard let id = host.authenticate(Credentials(protocolName: "coap", device: device ?? "", secret: token, remoteAddress: peer.remote)) else {
            peer.identity = nil
            PDU.respond(response, COAP_RESPONSE_CODE_UNAUTHORIZED, diagnostic: token.isEmpty ? "credentials required (token=...)" : "invalid credentials")
            return nil
        }
        peer.identity = id
        peer.token = token
        peer.authenticatedAt = now
        return check(id, device, response)
    }

    private func check(_ id: Identity, _ device: String?, _ response: OpaquePointer) -> Identity? {
        if let device, device != id.device {
            PDU.respond(response, COAP_RESPONSE_CODE_FORBIDDEN, diagnostic: "these credentials belong to another device")
            return nil
        }
        return id
    }

    private func ingest(_ session: OpaquePointer, _ request: OpaquePointer, _ response: OpaquePointer, _ state: PeerState,
                        _ identity: Identity, kind: MessageKind, topic: String, extra: [KeyValue]) {
        let mid = coap_pdu_get_mid(request)
        let format = PDU.uint(request, COAP_OPTION_CONTENT_FORMAT) ?? ContentFormat.textPlain
        guard let (body, blockSize) = assemble(request, response, state) else { return }
        if let problem = PayloadCheck.problem(body, format: format) {
            let code = problem.unsupported ? COAP_RESPONSE_CODE_UNSUPPORTED_CONTENT_FORMAT : COAP_RESPONSE_CODE_BAD_REQUEST
            PDU.respond(response, code, diagnostic: problem.text)
            state.remember(mid, code)
            return
        }
        guard state.permit.allows(identity, topic, host: host, now: Int64(Date().timeIntervalSince1970 * 1000), lifetime: Self.reauthenticateAfterMs) else {
            PDU.respond(response, COAP_RESPONSE_CODE_FORBIDDEN, diagnostic: "not allowed to publish to \(topic)")
            return
        }
        var properties = extra
        properties.reserveCapacity(extra.count + 5)
        let method = coap_request_t(UInt32(PDU.code(request).rawValue))
        properties.append(KeyValue("coap.method", method == COAP_REQUEST_PUT ? "PUT" : "POST"))
        properties.append(KeyValue("coap.type", coap_pdu_get_type(request) == COAP_MESSAGE_CON ? "con" : "non"))
        properties.append(KeyValue("coap.content_format", String(format)))
        properties.append(KeyValue("coap.message_id", String(mid)))
        if let blockSize { properties.append(KeyValue("coap.block1_size", String(blockSize))) }
        let message = Message(kind: kind, tenant: identity.tenant, device: identity.device, topic: topic,
                              contentType: ContentFormat.mediaType(format) ?? "application/octet-stream", payload: body,
                              qos: coap_pdu_get_type(request) == COAP_MESSAGE_CON ? 1 : 0, properties: properties)
        let pending = PendingAnswer(mid: mid)
        let loop = self.loop
        let status = host.submit(message) { result in
            if pending.settle(result) { loop.execute { pending.trigger() } }
        }
        switch status {
        case .queued:
            if let result = pending.deferIfOpen() {
                state.remember(mid, answer(result, response))
                return
            }
            // Not yet in the hub's hands (a durable pipeline's write-ahead log): answer separately.
            guard pending.answerLater(session, request, loop: loop) else {
                PDU.respond(response, COAP_RESPONSE_CODE_SERVICE_UNAVAILABLE)
                return
            }
            state.started(mid)
        case .busy:
            busy(response)
        case .rejected(IOTC_ERR_NOT_FOUND):
            PDU.respond(response, COAP_RESPONSE_CODE_NOT_FOUND, diagnostic: "no pipeline reads \(topic)")
        case .rejected(IOTC_ERR_DENIED):
            PDU.respond(response, COAP_RESPONSE_CODE_FORBIDDEN, diagnostic: "not allowed to publish to \(topic)")
        case .rejected:
            PDU.respond(response, COAP_RESPONSE_CODE_BAD_REQUEST, diagnostic: "the hub refused the message")
        }
    }

    /// The request's body, put together from its blocks when it comes in Block1 (`BlockUploads`): nil
    /// when the response is set (more blocks to come, a wrong transfer, or no room for it).
    private func assemble(_ request: OpaquePointer, _ response: OpaquePointer, _ state: PeerState) -> (body: [UInt8], blockSize: Int?)? {
        switch uploads.assemble(request, response, endpoint: ObjectIdentifier(state), limit: source.config.max_body_size, now: Date().timeIntervalSince1970) {
        case .body(let body, let blockSize): return (body, blockSize)
        case .answered: return nil
        case .full:
            busy(response)
            return nil
        }
    }

    /// Sets the answer to a submitted message and returns its code.
    @discardableResult
    private func answer(_ result: Int32, _ response: OpaquePointer) -> coap_pdu_code_t {
        if result == IOTC_OK {
            coap_pdu_set_code(response, COAP_RESPONSE_CODE_CHANGED)
            return COAP_RESPONSE_CODE_CHANGED
        }
        busy(response)
        return COAP_RESPONSE_CODE_SERVICE_UNAVAILABLE
    }

    private func busy(_ response: OpaquePointer) {
        coap_pdu_set_code(response, COAP_RESPONSE_CODE_SERVICE_UNAVAILABLE)
        PDU.addUInt(response, COAP_OPTION_MAXAGE, UInt32(source.config.retry_after.rounded(.up)))
    }

    // MARK: commands

    /// What libcoap hands a request handler, for answers that may go block-wise.
    struct Request {
        var resource: OpaquePointer
        var session: OpaquePointer
        var pdu: OpaquePointer
        var query: UnsafePointer<coap_string_t>?
    }

    private func commands(_ r: Request, _ response: OpaquePointer, _ peer: CoAPPeer, _ state: PeerState, _ identity: Identity) {
        let (session, request) = (r.session, r.pdu)
        let box = CommandMailboxes.key(tenant: identity.tenant, device: identity.device)
        let token = PDU.token(request)
        // A device that asks for its commands is reachable until its session ends: the hub's queued
        // commands come to this source from now on.
        if !state.connected {
            state.connected = true
            host.deviceConnected(identity, remoteAddress: peer.remote)
        }
        switch PDU.uint(request, COAP_OPTION_OBSERVE) {
        case 0?:
            // Register (or refresh) this observation; queued commands follow as notifications.
            guard admitObservation(state, token, response) else { return }
            let observation = Observation(session: session, loop: loop, token: token, box: box)
            let loop = self.loop
            let contentFormat = ContentFormat.json
            observation.waiter = source.mailboxes.wait(box: box, persistent: true) { [weak observation] command in
                guard let observation, observation.open else { return false }
                loop.execute { [weak self] in self?.notify(observation, command, contentFormat) }
                return true
            }
            state.observations.append(observation)
            keep(observation, of: identity, at: state)
            coap_pdu_set_code(response, COAP_RESPONSE_CODE_CONTENT)
            PDU.addUInt(response, COAP_OPTION_OBSERVE, observation.nextSequence())
        case 1?:
            state.cancel(token: token, mailboxes: source.mailboxes)
            coap_pdu_set_code(response, COAP_RESPONSE_CODE_CONTENT)
        default:
            if let block2 = PDU.uint(request, COAP_OPTION_BLOCK2), block2 >> 4 > 0 {
                // A later block of the last large command this endpoint was sent (RFC 7959 §2.6).
                guard let large = state.large else {
                    PDU.respond(response, COAP_RESPONSE_CODE_NOT_FOUND, diagnostic: "no large command to continue")
                    return
                }
                PDU.respondLarge(r.resource, session, request, response, r.query, format: ContentFormat.json, etag: large.etag, body: large.body)
                return
            }
            // One command, if one waits.
            let slot = NIOLockedValueBox<(open: Bool, command: PendingCommand?)>((true, nil))
            let waiter = source.mailboxes.wait(box: box, persistent: false) { command in
                slot.withLockedValue { s in
                    guard s.open else { return false }
                    s.command = command
                    return true
                }
            }
            let command = slot.withLockedValue { s -> PendingCommand? in
                s.open = false
                return s.command
            }
            if waiter != 0 { source.mailboxes.cancel(box: box, waiter: waiter) }
            coap_pdu_set_code(response, COAP_RESPONSE_CODE_CONTENT)
            if let command {
                var bytes: [UInt8] = []
                EnvelopeJSON.encode(command.message, into: &bytes)
                let etag = state.remember(large: bytes)
                PDU.respondLarge(r.resource, session, request, response, r.query, format: ContentFormat.json, etag: etag, body: bytes)
                command.ack.succeed()
            }
        }
    }

    /// Sends one command to an observer as a confirmable notification.
    private func notify(_ o: Observation, _ command: PendingCommand, _ contentFormat: UInt32) {
        guard o.open else {
            source.mailboxes.deliver(command)
            return
        }
        var bytes: [UInt8] = []
        EnvelopeJSON.encode(command.message, into: &bytes)
        // A command too large for one datagram is kept for the device's Block2 requests of the rest.
        let keep = { coap_session_get_app_data(o.session).map { PeerState.of(Unmanaged<CoAPPeer>.fromOpaque($0).takeUnretainedValue()).remember(large: bytes) } ?? 1 }
        switch send(bytes, to: o, format: contentFormat, etag: keep) {
        case nil: source.mailboxes.deliver(command)
        case false?: command.ack.retry("the notification could not be sent")
        case true?: command.ack.succeed()
        }
    }

    /// Sends the attributes of each observed device whose attributes changed since its observer last
    /// got them.
    private func notifyChangedAttributes() {
        attributeWatches.removeAll { !$0.open }
        for o in attributeWatches {
            guard let identity = o.attributesOf else { continue }
            let json = host.attributes(identity) ?? Array("{}".utf8)
            let etag = Self.etag(json)
            guard etag != o.etag else { continue }
            o.etag = etag
            // The device GETs the rest of a large representation with Block2 and this ETag.
            _ = send(json, to: o, format: ContentFormat.json, etag: { etag })
        }
    }

    /// Sends `bytes` to an observer as a confirmable notification: whole, or its first block with an
    /// ETag from `etag` when it does not fit a datagram (the device fetches the rest, RFC 7959 §2.6).
    /// Nil when no notification could be made, false when it could not be sent.
    private func send(_ bytes: [UInt8], to o: Observation, format contentFormat: UInt32, etag: () -> UInt64) -> Bool? {
        guard let pdu = coap_new_pdu(COAP_MESSAGE_CON, COAP_RESPONSE_CODE_CONTENT, o.session) else { return nil }
        _ = coap_add_token(pdu, o.token.count, o.token)
        let room = coap_session_max_pdu_size(o.session) - o.token.count - 40
        if bytes.count <= room {
            PDU.addUInt(pdu, COAP_OPTION_OBSERVE, o.nextSequence())
            PDU.addUInt(pdu, COAP_OPTION_CONTENT_FORMAT, contentFormat)
            _ = coap_add_data(pdu, bytes.count, bytes)
        } else {
            // Too large for one datagram: the first block, and the device GETs the rest with Block2
            // and this ETag (RFC 7959 §2.6).
            var szx: UInt32 = 6
            while szx > 0, 16 << szx > room { szx -= 1 }
            let etag = etag()
            let tag = (0..<8).map { UInt8(truncatingIfNeeded: etag >> (8 * (7 - UInt64($0)))) }
            _ = coap_add_option(pdu, coap_option_num_t(COAP_OPTION_ETAG), tag.count, tag)
            PDU.addUInt(pdu, COAP_OPTION_OBSERVE, o.nextSequence())
            PDU.addUInt(pdu, COAP_OPTION_CONTENT_FORMAT, contentFormat)
            PDU.addUInt(pdu, COAP_OPTION_BLOCK2, 1 << 3 | szx)
            PDU.addUInt(pdu, COAP_OPTION_SIZE2, UInt32(bytes.count))
            _ = coap_add_data(pdu, 16 << Int(szx), bytes)
        }
        return coap_send(o.session, pdu) != COAP_INVALID_MID
    }

    /// A notification was refused (RST: the device stopped observing) or never acknowledged.
    private func nack(_ session: OpaquePointer, _ sent: OpaquePointer?) {
        guard let sent, let p = coap_session_get_app_data(session) else { return }
        let peer = Unmanaged<CoAPPeer>.fromOpaque(p).takeUnretainedValue()
        PeerState.of(peer).cancel(token: PDU.token(sent), mailboxes: source.mailboxes)
    }

    /// libcoap forgot a session: its observations end.
    func closed(_ peer: CoAPPeer) {
        guard let state = peer.attachment as? PeerState else { return }
        uploads.drop(endpoint: ObjectIdentifier(state))
        for o in state.observations { state.cancel(token: o.token, mailboxes: source.mailboxes) }
        if state.connected, let id = peer.identity { host.deviceDisconnected(id, reason: "the CoAP session ended") }
    }
}


/// One resource in the `/.well-known/core` answer (RFC 6690, with RFC 7252 §7.2's `ct` and RFC
/// 7641's `obs`).
struct DiscoveredLink {
    let href: String
    let rt: String
    let formats: [UInt32]
    let observable: Bool

    init?(href: String, route: CoAPRoute) {
        self.href = href
        switch route {
        case .ingest(let kind, let suffix):
            // The topic's last segment names the resource type: iotc.telemetry, iotc.events, iotc.attributes.
            (rt, observable) = ("iotc." + suffix, kind == .attributes)
            formats = [ContentFormat.textPlain, ContentFormat.json, ContentFormat.cbor, ContentFormat.senmlJSON, ContentFormat.senmlCBOR]
        case .commands: (rt, formats, observable) = ("iotc.commands", [ContentFormat.json], true)
        case .result: return nil
        }
    }

    var text: String {
        let ct = formats.count == 1 ? "\(formats[0])" : "\"" + formats.map(String.init).joined(separator: " ") + "\""
        return "<\(href)>;rt=\"\(rt)\";ct=\(ct)" + (observable ? ";obs" : "")
    }

    /// A `name=value` query (RFC 6690 §4.1; a trailing `*` matches any rest) on href, rt, ct or obs;
    /// nil passes every link.
    func passes(_ filter: Substring?) -> Bool {
        guard let filter else { return true }
        let (name, value) = filter.firstIndex(of: "=").map { (filter[..<$0], filter[filter.index(after: $0)...]) } ?? (filter, "")
        func fits(_ target: String) -> Bool { value.hasSuffix("*") ? target.hasPrefix(value.dropLast()) : target == value }
        switch name {
        case "href": return fits(href)
        case "rt": return fits(rt)
        case "ct": return formats.contains { fits(String($0)) }
        case "obs": return observable
        default: return false
        }
    }
}

/// One observation of a command resource, or of a device's attributes.
final class Observation: @unchecked Sendable {
    private let held: HeldSession
    var session: OpaquePointer { held.session }
    let token: [UInt8]
    let box: String
    var waiter: UInt64 = 0
    /// For an attributes observation: whose, and the ETag of what the observer last got (loop thread).
    let attributesOf: Identity?
    var etag: UInt64 = 0
    private let lock = NIOLock()
    private var _open = true
    private var sequence: UInt32 = 1

    var open: Bool { lock.withLock { _open } }

    init(session: OpaquePointer, loop: CoAPEventLoop, token: [UInt8], box: String, attributesOf: Identity? = nil) {
        held = loop.hold(session)
        self.token = token
        self.box = box
        self.attributesOf = attributesOf
    }

    /// Observe sequence numbers are 24 bits and only grow (RFC 7641 §4.4).
    func nextSequence() -> UInt32 {
        sequence = (sequence + 1) & 0xFFFFFF
        return sequence
    }

    func close() -> Bool {
        lock.withLock {
            defer { _open = false }
            return _open
        }
    }

}

/// Per-endpoint state of the `coap` source: observations and recent answers (deduplication).
final class PeerState {
    var observations: [Observation] = []
    /// The hub's last yes to this endpoint's device publishing to a topic.
    var permit = PublishPermit()
    /// Observations one endpoint may hold at once (commands and attributes).
    static let maxObservations = 16

    /// Whether the hub was told the device is reachable here (it asked for its commands).
    var connected = false
    /// The last command sent in blocks, for the device's Block2 requests of the rest.
    private(set) var large: (etag: UInt64, body: [UInt8])?
    private var etags: UInt64 = UInt64(Date().timeIntervalSince1970 * 1000) << 16

    /// Keeps a command body for Block2 requests; returns its ETag.
    func remember(large body: [UInt8]) -> UInt64 {
        etags &+= 1
        large = (etags, body)
        return etags
    }
    /// The topic this endpoint's device last sent to, kept so that it is not built for every request.
    private var lastTopic: (device: String, suffix: String, topic: String)?

    func topic(device: String, suffix: String) -> String {
        if let t = lastTopic, t.device == device, t.suffix == suffix { return t.topic }
        let topic = "devices/\(device)/\(suffix)"
        lastTopic = (device, suffix, topic)
        return topic
    }

    /// Answers remembered per endpoint: more than a device sends within EXCHANGE_LIFETIME at its rate.
    private var answers = RecentAnswers<coap_pdu_code_t>(capacity: 64, pending: COAP_EMPTY_CODE)

    static func of(_ peer: CoAPPeer) -> PeerState {
        if let s = peer.attachment as? PeerState { return s }
        let s = PeerState()
        peer.attachment = s
        return s
    }

    /// The answer already given to this message id, if any.
    func answered(_ mid: Int32) -> coap_pdu_code_t? { answers.answer(mid) }

    func started(_ mid: Int32) { answers.started(mid) }

    func remember(_ mid: Int32, _ code: coap_pdu_code_t) { answers.remember(mid, code) }

    func cancel(token: [UInt8], mailboxes: CommandMailboxes) {
        observations.removeAll { o in
            guard o.token == token else { return false }
            if o.close(), o.waiter != 0 { mailboxes.cancel(box: o.box, waiter: o.waiter) }
            return true
        }
    }
}

private let coapDeviceRequest: coap_method_handler_t = { resource, session, request, query, response in
    guard let resource, let session, let request, let response, let data = coap_resource_get_userdata(resource) else { return }
    Unmanaged<CoAPDeviceServer>.fromOpaque(data).takeUnretainedValue().handle(resource, session, request, query, response)
}
