import CCoAP
import CIoTCPluginABI
import CoAPRuntime
import Foundation
import IoTCPluginKit
import LwM2MCodec

/// The `lwm2m` source's server, on its libcoap loop thread: the registration interface as a CoAP
/// server, and device management as requests the hub sends to registered clients over the session
/// they registered on.
final class LwM2MServer: @unchecked Sendable {
    unowned let source: LwM2MSource
    let loop: CoAPEventLoop
    var host: PluginHost { source.host }
    private var table: Registrations
    /// Per registration id: the session the client last spoke on (referenced) and its identity.
    private var links: [String: (held: HeldSession, identity: Identity)] = [:]
    /// Requests sent and not answered, and observations, by token.
    private var pending: [[UInt8]: Pending] = [:]
    /// Commands for queue-mode clients that are asleep, by registration id: sent when the client next
    /// speaks (registers again or updates).
    private var waiting: [String: [(Message, Ack)]] = [:]
    /// Request bodies clients send block-wise (Block1): all of them hold at most eight bodies' worth.
    private var uploads: BlockUploads
    /// Response bodies clients send block-wise (Block2), by the token of the request they answer:
    /// libcoap asks for each next block and hands every block over as it comes.
    private var downloads: [[UInt8]: Download] = [:]

    struct Download {
        /// The session the answer comes on.
        var session: OpaquePointer
        var body: [UInt8]
        /// The first block's Observe option: a notification's later blocks answer plain GETs.
        var observe: UInt32?
        /// Why the body cannot be used (over `max_body_size`, or blocks out of order): later blocks are dropped.
        var problem: String?
        var at: TimeInterval
    }

    struct Pending {
        enum Purpose {
            /// An API command: its result goes back to the hub.
            case command(id: String, name: String)
            /// An observation: notifications become telemetry.
            case observation
            /// A step of a client's bootstrap.
            case bootstrap(Bootstrapping)
        }
        var purpose: Purpose
        var registration: String
        var path: LwM2MPath
        /// The Uri-Path the request went to (the path, under the client's alternate path if it has one).
        var uriPath: [String]
        var observing: Bool
        /// The notifications used so far, against which later ones are ordered.
        var order = ObserveOrder()
    }

    init(source: LwM2MSource, loop: CoAPEventLoop) {
        self.source = source
        self.loop = loop
        uploads = BlockUploads(budget: 8 * source.config.max_body_size)
        // Registration ids stay unique across restarts of the hub.
        table = Registrations(idPrefix: String(UInt64(Date().timeIntervalSince1970), radix: 36) + "-")
    }

    func install() {
        let r = coap_resource_unknown_init2(lwm2mRequest, 0)
        for m in [COAP_REQUEST_GET, COAP_REQUEST_POST, COAP_REQUEST_PUT, COAP_REQUEST_DELETE, COAP_REQUEST_FETCH, COAP_REQUEST_PATCH, COAP_REQUEST_IPATCH] {
            coap_register_handler(r, m, lwm2mRequest)
        }
        coap_resource_set_userdata(r, Unmanaged.passUnretained(self).toOpaque())
        coap_add_resource(loop.context, r)
        loop.response = { [unowned self] session, sent, received in self.response(session, received) }
        loop.nack = { [unowned self] session, sent in if let sent { self.unanswered(session, sent) } }
        loop.tick = { [unowned self] in self.expire() }
    }

    /// After the loop stopped: every registration ends (without lifecycle messages: the hub is stopping).
    func stopped() {
        for id in Array(links.keys) {
            if let r = table.deregister(id: id) { forget(r, reason: "the lwm2m source stopped", event: nil) }
        }
    }

    // MARK: the registration interface

    fileprivate func handle(_ session: OpaquePointer, _ request: OpaquePointer, _ response: OpaquePointer) {
        guard PDU.isRequestMessage(request) else { return }
        // The second call for a Send answered late (a separate response): the hub's verdict is in.
        if let pending = PendingAnswer.resumed(session, request) {
            answerSend(pending.result ?? IOTC_ERR_INTERNAL, response)
            return
        }
        let path = PDU.path(request)
        let method = coap_request_t(UInt32(PDU.code(request).rawValue))
        let body: [UInt8]
        switch uploads.assemble(request, response, endpoint: ObjectIdentifier(loop.peer(session)), limit: source.config.max_body_size,
                                now: Date().timeIntervalSince1970) {
        case .body(let b, _): body = b
        case .answered: return
        case .full:
            PDU.respond(response, COAP_RESPONSE_CODE_SERVICE_UNAVAILABLE, diagnostic: "too many block-wise bodies in progress")
            PDU.addUInt(response, COAP_OPTION_MAXAGE, 2)
            return
        }
        switch (method, path.count, path.first) {
        case (COAP_REQUEST_POST, 1, "rd"?): register(session, request, response, body: body)
        case (COAP_REQUEST_POST, 2, "rd"?): update(session, request, response, body: body, id: String(path[1]))
        case (COAP_REQUEST_DELETE, 2, "rd"?): deregister(session, request, response, id: String(path[1]))
        case (COAP_REQUEST_POST, 1, "dp"?): report(session, request, response, body: body)
        case (COAP_REQUEST_POST, 1, "bs"?): bootstrap(session, request, response)
        case (_, 1, "rd"?), (_, 2, "rd"?): PDU.respond(response, COAP_RESPONSE_CODE_NOT_ALLOWED)
        default: PDU.respond(response, COAP_RESPONSE_CODE_NOT_FOUND)
        }
    }

    /// The Uri-Query options as name → value; nil (and a 4.00 set) when one is named twice.
    private func queries(_ request: OpaquePointer, _ response: OpaquePointer) -> [String: String]? {
        var out: [String: String] = [:]
        for q in PDU.strings(request, COAP_OPTION_URI_QUERY) {
            let (name, value) = q.firstIndex(of: "=").map { (String(q[..<$0]), String(q[q.index(after: $0)...])) } ?? (String(q), "")
            guard out.updateValue(value, forKey: name) == nil else {
                PDU.respond(response, COAP_RESPONSE_CODE_BAD_REQUEST, diagnostic: "'\(name.prefix(16))' given twice")
                return nil
            }
        }
        return out
    }

    /// The object links of a Register or Update payload (Content-Format 40); nil with a 4.00 set.
    private func objectLinks(_ request: OpaquePointer, _ response: OpaquePointer, _ body: [UInt8]) -> [LinkFormat.Link]?? {
        if body.isEmpty { return .some(nil) }
        if let f = PDU.uint(request, COAP_OPTION_CONTENT_FORMAT), f != ContentFormat.linkFormat {
            PDU.respond(response, COAP_RESPONSE_CODE_UNSUPPORTED_CONTENT_FORMAT, diagnostic: "the object list is link format (40)")
            return nil
        }
        guard let text = String(validating: body, as: UTF8.self) else {
            PDU.respond(response, COAP_RESPONSE_CODE_BAD_REQUEST, diagnostic: "the object list is not UTF-8")
            return nil
        }
        do {
            let links = try LinkFormat.parse(text)
            let root = LinkFormat.root(of: links)
            for l in links where l.objectPath(under: root) == nil && l.target != "/" && l.attributes["rt"] != "oma.lwm2m" {
                PDU.respond(response, COAP_RESPONSE_CODE_BAD_REQUEST, diagnostic: "'\(l.target.prefix(32))' is not an object or object instance")
                return nil
            }
            for l in links where (l.objectPath(under: root)?.count ?? 0) > 2 {
                PDU.respond(response, COAP_RESPONSE_CODE_BAD_REQUEST, diagnostic: "'\(l.target.prefix(32))': the object list names objects and instances only")
                return nil
            }
            return .some(links)
        } catch {
            PDU.respond(response, COAP_RESPONSE_CODE_BAD_REQUEST, diagnostic: error.description)
            return nil
        }
    }

    private func lifetime(_ q: [String: String], _ response: OpaquePointer) -> Int?? {
        guard let text = q["lt"] else { return .some(nil) }
        guard let lt = Int(text), lt > 0 else {
            PDU.respond(response, COAP_RESPONSE_CODE_BAD_REQUEST, diagnostic: "lt must be a positive number of seconds")
            return nil
        }
        return .some(min(lt, Int(source.config.max_lifetime)))
    }

    private func binding(_ q: [String: String], _ response: OpaquePointer) -> String?? {
        guard let b = q["b"] else { return .some(nil) }
        guard !b.isEmpty, b.count <= 8, b.allSatisfy({ "UMHTSNQ".contains($0) }) else {
            PDU.respond(response, COAP_RESPONSE_CODE_BAD_REQUEST, diagnostic: "b must be binding letters (U, T, S, N, Q)")
            return nil
        }
        return .some(b)
    }

    /// The device this request speaks for: the DTLS identity, or the hub's authentication of `device`.
    private func identity(_ session: OpaquePointer, device: String, token: String?) -> Identity? {
        let peer = loop.peer(session)
        if peer.dtls { return peer.identity }
        if let id = peer.identity, id.device == device { return id }
        let id = host.authenticate(Credentials(protocolName: "lwm2m", device: device, secret: token ?? "", remoteAddress: peer.remote))
        peer.identity = id
        return id
    }

    /// The endpoint name a Register or Bootstrap-Request gives; nil with a 4.00 set.
    private func endpoint(_ q: [String: String], _ response: OpaquePointer) -> String? {
        guard let ep = q["ep"], CommandTopics.isDeviceID(ep) else {
            PDU.respond(response, COAP_RESPONSE_CODE_BAD_REQUEST, diagnostic: "ep (the endpoint name) is required: 1 to 128 characters without / + #")
            return nil
        }
        return ep
    }

    /// The device a client speaks for, when it is the endpoint it names; nil with a 4.01 or 4.03 set.
    private func client(_ session: OpaquePointer, endpoint ep: String, _ q: [String: String], _ response: OpaquePointer, doing: String) -> Identity? {
        guard let id = identity(session, device: ep, token: q["token"]) else {
            PDU.respond(response, COAP_RESPONSE_CODE_UNAUTHORIZED, diagnostic: "unknown client")
            return nil
        }
        guard id.device == ep else {
            PDU.respond(response, COAP_RESPONSE_CODE_FORBIDDEN, diagnostic: "this client may \(doing) only as \(id.device)")
            return nil
        }
        return id
    }

    private func register(_ session: OpaquePointer, _ request: OpaquePointer, _ response: OpaquePointer, body: [UInt8]) {
        guard let q = queries(request, response), let lt = lifetime(q, response), let b = binding(q, response),
              let objects = objectLinks(request, response, body) else { return }
        // Over DTLS the credentials name the client, and a 1.1 client may leave the endpoint name out.
        let peer = loop.peer(session)
        guard let ep = (q["ep"] == nil && peer.dtls ? peer.identity?.device : nil) ?? endpoint(q, response) else { return }
        let version = q["lwm2m"] ?? "1.0"
        guard ["1.0", "1.1", "1.2"].contains(version) else {
            // The versions are not compatible (OMA-TS-LightweightM2M-Core 1.1 §6.2.1).
            PDU.respond(response, COAP_RESPONSE_CODE_PRECONDITION_FAILED, diagnostic: "LwM2M \(version.prefix(8)) is not supported (1.0 to 1.2 are)")
            return
        }
        guard let id = client(session, endpoint: ep, q, response, doing: "register") else { return }
        guard table.count < source.config.max_registrations || table.registration(tenant: id.tenant, endpoint: ep) != nil else {
            PDU.respond(response, COAP_RESPONSE_CODE_SERVICE_UNAVAILABLE, diagnostic: "the server holds its maximum of registrations")
            return
        }
        let outcome = table.register(endpoint: ep, tenant: id.tenant, device: id.device, lifetime: lt ?? Int(source.config.default_lifetime),
                                     binding: b ?? "U", queueMode: q["Q"] != nil, version: version, objects: objects ?? [], remote: peer.remote,
                                     now: Date().timeIntervalSince1970)
        guard case .registered(let r, let replaced) = outcome else {
            PDU.respond(response, COAP_RESPONSE_CODE_FORBIDDEN, diagnostic: "the endpoint name is registered by another device")
            return
        }
        if let replaced {
            // Commands waiting for the earlier registration go to this one.
            if let held = waiting.removeValue(forKey: replaced.id) { waiting[r.id] = held }
            forget(replaced, reason: "it registered again", event: nil)
        }
        links[r.id] = (loop.hold(session), id)
        coap_pdu_set_code(response, COAP_RESPONSE_CODE_CREATED)
        for segment in ["rd", r.id] { _ = coap_add_option(response, coap_option_num_t(COAP_OPTION_LOCATION_PATH), segment.utf8.count, segment) }
        host.deviceConnected(id, remoteAddress: peer.remote)
        lifecycle(r, "registered")
        observeConfiguredPaths(r, had: [])
        wake(r.id)
    }

    /// Observes the configured paths whose object the client lists and did not list before (`had`:
    /// its earlier object list), once the answer to its Register or Update is on its way.
    private func observeConfiguredPaths(_ r: Registrations.Registration, had: [LinkFormat.Link]) {
        func lists(_ objects: [LinkFormat.Link], _ object: UInt16) -> Bool {
            let root = LinkFormat.root(of: objects)
            return objects.contains { $0.objectPath(under: root)?.first == object }
        }
        let paths = source.observePaths.filter { lists(r.objects, $0.object) && !lists(had, $0.object) }
        guard !paths.isEmpty else { return }
        loop.execute { [weak self] in
            for p in paths { _ = self?.send(r.id, COAP_REQUEST_GET, p, observe: 0, accept: nil, purpose: .observation) }
        }
    }

    private func update(_ session: OpaquePointer, _ request: OpaquePointer, _ response: OpaquePointer, body: [UInt8], id: String) {
        guard let q = queries(request, response), let lt = lifetime(q, response), let b = binding(q, response),
              let objects = objectLinks(request, response, body) else { return }
        guard let r = table.byID[id] else {
            PDU.respond(response, COAP_RESPONSE_CODE_NOT_FOUND, diagnostic: "no such registration: register again")
            return
        }
        guard let who = identity(session, device: r.device, token: q["token"]), who.device == r.device, who.tenant == r.tenant else {
            PDU.respond(response, COAP_RESPONSE_CODE_FORBIDDEN)
            return
        }
        let peer = loop.peer(session)
        guard let updated = table.update(id: id, lifetime: lt, binding: b, queueMode: q["Q"] != nil ? true : nil, objects: objects, remote: peer.remote,
                                         now: Date().timeIntervalSince1970) else { return }
        if let old = links[id], old.held.session != session {
            // The client's address changed (NAT): later requests go to the new one.
            links[id] = (loop.hold(session), who)
        }
        coap_pdu_set_code(response, COAP_RESPONSE_CODE_CHANGED)
        lifecycle(updated, "updated")
        // An object the client lists for the first time has its configured paths observed.
        observeConfiguredPaths(updated, had: r.objects)
        wake(id)
    }

    private func deregister(_ session: OpaquePointer, _ request: OpaquePointer, _ response: OpaquePointer, id: String) {
        guard let r = table.byID[id] else {
            PDU.respond(response, COAP_RESPONSE_CODE_NOT_FOUND)
            return
        }
        guard let who = identity(session, device: r.device, token: nil), who.device == r.device, who.tenant == r.tenant else {
            PDU.respond(response, COAP_RESPONSE_CODE_FORBIDDEN)
            return
        }
        coap_pdu_set_code(response, COAP_RESPONSE_CODE_DELETED)
        if let r = table.deregister(id: id) { forget(r, reason: "it de-registered", event: "deregistered") }
    }

    /// A queue-mode client spoke: the commands that waited for it go now, after its answer.
    private func wake(_ id: String) {
        guard let held = waiting.removeValue(forKey: id), !held.isEmpty else { return }
        loop.execute { [weak self] in
            for (m, ack) in held { self?.command(m, ack: ack) }
        }
    }

    /// The Send operation (LwM2M 1.1 §6.4.6): a registered client reports values of its own accord, as
    /// SenML-JSON or SenML-CBOR, or LwM2M CBOR (1.2); they become telemetry as notifications do.
    private func report(_ session: OpaquePointer, _ request: OpaquePointer, _ response: OpaquePointer, body: [UInt8]) {
        let peer = loop.peer(session)
        guard let id = peer.identity, let r = table.registration(tenant: id.tenant, endpoint: id.device) else {
            PDU.respond(response, COAP_RESPONSE_CODE_FORBIDDEN, diagnostic: "register before sending")
            return
        }
        let format = PDU.uint(request, COAP_OPTION_CONTENT_FORMAT)
        guard let format, [ContentFormat.senmlJSON, ContentFormat.senmlCBOR, ContentFormat.lwm2mCBOR].contains(format) else {
            PDU.respond(response, COAP_RESPONSE_CODE_UNSUPPORTED_CONTENT_FORMAT, diagnostic: "Send takes SenML-JSON (110), SenML-CBOR (112) or LwM2M CBOR (11544)")
            return
        }
        let values: [(LwM2MPath, Value)]
        do { values = try source.values.decode(body, format: format, path: LwM2MPath([])) } catch {
            PDU.respond(response, COAP_RESPONSE_CODE_BAD_REQUEST, diagnostic: "\(error)")
            return
        }
        table.heard(id: r.id, now: Date().timeIntervalSince1970)
        // Grouped by object: each message names the object it reports, and its version.
        var byObject: [UInt16: [(LwM2MPath, Value)]] = [:]
        for v in values { byObject[v.0.object, default: []].append(v) }
        // 2.04 once the hub has every message (a durable pipeline: in its write-ahead log), in a
        // separate response when that is not at once; 5.03 when it could not take one, so that the
        // client sends the values again.
        let pending = PendingAnswer(mid: coap_pdu_get_mid(request), parts: byObject.count)
        for (object, values) in byObject.sorted(by: { $0.key < $1.key }) {
            telemetry(r, LwM2MPath([object]), values, format: format, sequence: nil, sent: pending)
        }
        wake(r.id)
        if let result = pending.deferIfOpen() {
            answerSend(result, response)
        } else if !pending.answerLater(session, request, loop: loop) {
            answerSend(IOTC_ERR_BUSY, response)
        }
    }

    /// The answer to a Send: 2.04, or 5.03 with Max-Age when the hub could not take its values.
    private func answerSend(_ result: Int32, _ response: OpaquePointer) {
        guard result != IOTC_OK else {
            coap_pdu_set_code(response, COAP_RESPONSE_CODE_CHANGED)
            return
        }
        PDU.respond(response, COAP_RESPONSE_CODE_SERVICE_UNAVAILABLE, diagnostic: "the hub could not take the values; send them again")
        PDU.addUInt(response, COAP_OPTION_MAXAGE, 2)
    }

    /// What the hub held for a registration that ended (the table no longer has it): its requests,
    /// observations and waiting commands go, and the device is offline. `event` names the end in a
    /// lifecycle message.
    private func forget(_ r: Registrations.Registration, reason: String, event: String?) {
        for (_, ack) in waiting.removeValue(forKey: r.id) ?? [] { ack.retry(reason) }
        pending = pending.filter { $0.value.registration != r.id }
        if let link = links.removeValue(forKey: r.id) {
            host.deviceDisconnected(link.identity, reason: reason)
        }
        if let event { lifecycle(r, event) }
    }

    private func expire() {
        let now = Date().timeIntervalSince1970
        for r in table.expire(now: now) { forget(r, reason: "the registration's lifetime passed", event: "expired") }
        uploads.expire(now: now)
        // A block-wise response whose blocks stopped coming (libcoap gave up on the next block's request).
        downloads = downloads.filter { pending[$0.key] != nil && now - $0.value.at <= BlockUploads.maxAge }
    }

    /// libcoap forgot a session: the bodies it was sending are dropped.
    func closed(_ peer: CoAPPeer) {
        uploads.drop(endpoint: ObjectIdentifier(peer))
    }

    private func lifecycle(_ r: Registrations.Registration, _ event: String) {
        let topic = "devices/\(r.endpoint)/lifecycle"
        guard host.routes(topic) != .notRouted else { return }
        let body: Value = [
            "event": .string(event), "endpoint": .string(r.endpoint), "registration": .string(r.id), "lifetime": .int(Int64(r.lifetime)),
            "binding": .string(r.binding), "queue_mode": .bool(r.queueMode), "lwm2m": .string(r.version), "objects": .string(LinkFormat.write(r.objects)),
        ]
        host.submit(Message(kind: .lifecycle, tenant: r.tenant, device: r.device, topic: topic, contentType: "application/json",
                            payload: JSON.encode(body), qos: 0, properties: [KeyValue("lwm2m.endpoint", r.endpoint), KeyValue("lwm2m.version", r.version)]))
    }

    // MARK: device management

    /// Sends one request to a registered client; false when it has no session or libcoap refused.
    private func send(_ registration: String, _ method: coap_request_t, _ path: LwM2MPath, observe: UInt32? = nil, contentFormat: UInt32? = nil,
                      accept: UInt32?, query: [String] = [], payload: [UInt8] = [], purpose: Pending.Purpose) -> Bool {
        guard let link = links[registration] else { return false }
        // Under the client's alternate path for its objects, when it gave one.
        let root = (table.byID[registration]?.rootPath ?? "/").split(separator: "/").map(String.init)
        return send(on: link.held.session, registration: registration, method, path, uriPath: root.isEmpty ? nil : root + path.ids.map(String.init),
                    observe: observe, contentFormat: contentFormat, accept: accept, query: query, payload: payload, purpose: purpose)
    }

    /// Sends one request on a session; false when libcoap refused.
    private func send(on session: OpaquePointer, registration: String, _ method: coap_request_t, _ path: LwM2MPath, uriPath: [String]? = nil,
                      observe: UInt32? = nil, contentFormat: UInt32? = nil, accept: UInt32?, query: [String] = [], payload: [UInt8] = [],
                      purpose: Pending.Purpose) -> Bool {
        guard let pdu = coap_new_pdu(COAP_MESSAGE_CON, coap_pdu_code_t(rawValue: method.rawValue), session) else { return false }
        var token = [UInt8](repeating: 0, count: 8)
        var length = token.count
        coap_session_new_token(session, &length, &token)
        token = Array(token[..<length])
        _ = coap_add_token(pdu, token.count, token)
        if let observe { PDU.addUInt(pdu, COAP_OPTION_OBSERVE, observe) }
        let uriPath = uriPath ?? path.ids.map(String.init)
        for s in uriPath {
            _ = coap_add_option(pdu, coap_option_num_t(COAP_OPTION_URI_PATH), s.utf8.count, s)
        }
        if let contentFormat { PDU.addUInt(pdu, COAP_OPTION_CONTENT_FORMAT, contentFormat) }
        for q in query { _ = coap_add_option(pdu, coap_option_num_t(COAP_OPTION_URI_QUERY), q.utf8.count, q) }
        if let accept { PDU.addUInt(pdu, COAP_OPTION_ACCEPT, accept) }
        if !payload.isEmpty {
            // libcoap sends large bodies block-wise from a copy it frees when done.
            let copy = UnsafeMutablePointer<UInt8>.allocate(capacity: payload.count)
            copy.initialize(from: payload, count: payload.count)
            guard coap_add_data_large_request(session, pdu, payload.count, copy, lwm2mReleaseCopy, copy) != 0 else {
                coap_delete_pdu(pdu)
                return false
            }
        }
        pending[token] = Pending(purpose: purpose, registration: registration, path: path, uriPath: uriPath, observing: observe == 0)
        if coap_send(session, pdu) == COAP_INVALID_MID {
            pending[token] = nil
            return false
        }
        return true
    }

    /// An API command for a registered client, as an LwM2M operation.
    func command(_ message: Message, ack: Ack) {
        // API commands carry their name and id as metadata; a pipeline's downlink names them in the topic.
        let named = CommandTopics.parseCommand(message.topic)
        let id = message.metadata("command_id") ?? named.map { String($0.id) } ?? message.id
        let name = message.metadata("command") ?? named.map { String($0.name) } ?? ""
        guard let r = table.registration(tenant: message.tenant.isEmpty ? "default" : message.tenant, endpoint: message.device) else {
            ack.retry("\(message.device) is not registered")
            return
        }
        guard r.awake(now: Date().timeIntervalSince1970, listening: source.config.queue_mode_listen) else {
            // Queue mode, asleep: the command goes when the client next registers or updates. The hub
            // offers a command again until it is delivered: keep one copy, settling the older offer.
            var held = waiting[r.id] ?? []
            if let i = held.firstIndex(where: { $0.0.id == message.id }) {
                held[i].1.retry("offered again")
                held[i] = (message, ack)
            } else {
                held.append((message, ack))
            }
            waiting[r.id] = held
            return
        }
        // From here the command is delivered; a mistake in it is its failed result.
        ack.succeed()
        let fail = { (why: String) in self.result(r, commandID: id, path: nil, ok: false, code: nil, fields: ["error": .string(why)]) }
        let args: Value
        do { args = message.payload.isEmpty ? .object(Value.Object()) : try JSON.decode(message.payload) } catch { return fail("the command's payload is not JSON") }
        // Composite operations name their paths in the payload and act on the root.
        let composite = name.hasSuffix("-composite")
        let path: LwM2MPath
        if composite {
            path = LwM2MPath([])
        } else {
            guard case .string(let text)? = args["path"], let p = LwM2MPath(text) else { return fail("the command needs a \"path\" such as \"/3/0/9\"") }
            path = p
        }
        let format: UInt32?
        switch args["format"] {
        case nil, .null?: format = nil
        case .string("tlv")?: format = ContentFormat.lwm2mTLV
        case .string("senml-json")?: format = ContentFormat.senmlJSON
        case .string("senml-cbor")?: format = ContentFormat.senmlCBOR
        case .string("text")?: format = ContentFormat.textPlain
        case .string("cbor")?: format = ContentFormat.cbor
        case .string("lwm2m-cbor")?: format = ContentFormat.lwm2mCBOR
        default: return fail("format is one of tlv, senml-json, senml-cbor, text, cbor, lwm2m-cbor")
        }
        let purpose = Pending.Purpose.command(id: id, name: name)
        var sent = false
        switch name {
        case "read":
            sent = send(r.id, COAP_REQUEST_GET, path, accept: format, purpose: purpose)
        case "discover":
            sent = send(r.id, COAP_REQUEST_GET, path, accept: ContentFormat.linkFormat, purpose: purpose)
        case "observe":
            sent = send(r.id, COAP_REQUEST_GET, path, observe: 0, accept: format, purpose: purpose)
        case "cancel-observe":
            pending = pending.filter { !($0.value.registration == r.id && $0.value.path == path && $0.value.observing) }
            sent = send(r.id, COAP_REQUEST_GET, path, observe: 1, accept: format, purpose: purpose)
        case "execute":
            var body: [UInt8] = []
            if case .string(let a)? = args["args"] { body = Array(a.utf8) }
            guard path.ids.count == 3 else { return fail("execute names a resource: /object/instance/resource") }
            sent = send(r.id, COAP_REQUEST_POST, path, contentFormat: body.isEmpty ? nil : ContentFormat.textPlain, accept: nil, payload: body, purpose: purpose)
        case "delete":
            guard path.ids.count == 2 else { return fail("delete names an object instance: /object/instance") }
            sent = send(r.id, COAP_REQUEST_DELETE, path, accept: nil, purpose: purpose)
        case "write-attributes":
            guard case .object(let attributes)? = args["attributes"], !attributes.isEmpty else { return fail("write-attributes needs \"attributes\", such as {\"pmin\": 10}") }
            var query: [String] = []
            for (k, v) in attributes {
                guard ["pmin", "pmax", "gt", "lt", "st", "epmin", "epmax", "edge", "con", "hqmax"].contains(k) else { return fail("unknown attribute '\(k.prefix(16))'") }
                switch v {
                case .null: query.append(k)
                case .int(let i): query.append("\(k)=\(i)")
                case .double(let d): query.append("\(k)=\(d)")
                default: return fail("attribute \(k) takes a number or null")
                }
            }
            sent = send(r.id, COAP_REQUEST_PUT, path, accept: nil, query: query, purpose: purpose)
        case "write", "create":
            // The format the client reads, when the command names none.
            let format: UInt32? = format ?? r.writeFormat
            var values: [(UInt16, Value)] = []
            if let v = args["value"] {
                guard path.ids.count == 3, name == "write" else { return fail("\"value\" writes one resource: give /object/instance/resource") }
                values = [(path.ids[2], v)]
            } else if case .object(let o)? = args["values"] {
                for (k, v) in o {
                    guard let rid = UInt16(k) else { return fail("\"values\" are keyed by resource id, not '\(k.prefix(16))'") }
                    values.append((rid, v))
                }
            } else {
                return fail("\(name) needs \"value\" or \"values\"")
            }
            let payload: [UInt8]
            do {
                if name == "create" {
                    guard path.ids.count == 1 else { return fail("create names an object: /object") }
                    var instance: UInt16?
                    if case .int(let i)? = args["instance"] { instance = UInt16(exactly: i) }
                    switch format {
                    case ContentFormat.senmlJSON?, ContentFormat.senmlCBOR?:
                        // SenML names every resource by its full path, so the instance is in the payload.
                        guard let instance else { return fail("a create in SenML names its \"instance\" (TLV lets the client choose)") }
                        payload = try source.values.encodeSenML(path: LwM2MPath([path.object, instance]), values: values,
                                                                cbor: format == ContentFormat.senmlCBOR)
                    case nil, ContentFormat.lwm2mTLV?:
                        let inner = try source.values.encodeTLV(path: LwM2MPath([path.object, instance ?? 0]), values: values)
                        let children = try TLV.decode(inner)
                        payload = instance.map { TLV.encode([TLV.Entry(kind: .objectInstance, id: $0, children: children)]) } ?? inner
                    default:
                        return fail("create sends tlv, senml-json or senml-cbor")
                    }
                } else {
                    guard path.ids.count >= 2 else { return fail("write names an object instance or a resource") }
                    switch format {
                    case ContentFormat.senmlJSON?, ContentFormat.senmlCBOR?:
                        payload = try source.values.encodeSenML(path: path, values: values, cbor: format == ContentFormat.senmlCBOR)
                    case ContentFormat.textPlain?:
                        guard path.ids.count == 3, values.count == 1 else {
                            return fail("a text write is one value of one resource: /object/instance/resource")
                        }
                        payload = try source.values.encodeText(path: path, value: values[0].1)
                    case nil, ContentFormat.lwm2mTLV?:
                        payload = try source.values.encodeTLV(path: path, values: values)
                    default:
                        return fail("write sends tlv, senml-json, senml-cbor or text")
                    }
                }
            } catch {
                return fail("\(error)")
            }
            let replace: Bool = if case .bool(true)? = args["replace"] { true } else { path.ids.count == 3 }
            sent = send(r.id, name == "create" || !replace ? COAP_REQUEST_POST : COAP_REQUEST_PUT, path,
                        contentFormat: format ?? ContentFormat.lwm2mTLV, accept: nil, payload: payload, purpose: purpose)
        case "read-composite", "observe-composite", "cancel-observe-composite":
            // LwM2M 1.1 composite operations: FETCH on the root with the paths as SenML names.
            guard case .array(let list)? = args["paths"], (1...64).contains(list.count) else {
                return fail("\(name) needs \"paths\" (1 to 64), such as [\"/3/0/9\", \"/3303/0/5700\"]")
            }
            var paths: [LwM2MPath] = []
            for item in list {
                guard case .string(let s) = item, let p = LwM2MPath(s) else { return fail("\"paths\" are LwM2M paths such as \"/3/0/9\"") }
                paths.append(p)
            }
            guard let f = Self.compositeFormat(format, r) else { return fail("composite operations use senml-json or senml-cbor") }
            let records = paths.map { SenML.Record(name: $0.description) }
            let body = f == ContentFormat.senmlCBOR ? SenML.encodeCBOR(records) : SenML.encodeJSON(records)
            if name == "cancel-observe-composite" {
                pending = pending.filter { !($0.value.registration == r.id && $0.value.path.ids.isEmpty && $0.value.observing) }
            }
            let observe: UInt32? = name == "observe-composite" ? 0 : name == "cancel-observe-composite" ? 1 : nil
            sent = send(r.id, COAP_REQUEST_FETCH, LwM2MPath([]), observe: observe, contentFormat: f, accept: f, payload: body, purpose: purpose)
        case "write-composite":
            // iPATCH on the root with the new values as SenML records, typed by the object model.
            guard case .object(let o)? = args["values"], (1...64).contains(o.count) else {
                return fail("write-composite needs \"values\" by resource path, such as {\"/3/0/14\": \"+02\", \"/1/0/3\": 60}")
            }
            guard let f = Self.compositeFormat(format, r) else { return fail("composite operations use senml-json or senml-cbor") }
            var records: [SenML.Record] = []
            for (k, v) in o {
                guard let p = LwM2MPath(k), p.ids.count == 3 else { return fail("write-composite values are keyed by resource path (/object/instance/resource), not '\(k.prefix(32))'") }
                do { records += try source.values.senmlRecords(path: p, values: [(p.ids[2], v)]) } catch { return fail("\(error)") }
            }
            let body = f == ContentFormat.senmlCBOR ? SenML.encodeCBOR(records) : SenML.encodeJSON(records)
            sent = send(r.id, COAP_REQUEST_IPATCH, LwM2MPath([]), contentFormat: f, accept: nil, payload: body, purpose: purpose)
        default:
            return fail("unknown LwM2M operation '\(name.prefix(32))' (read, discover, write, write-attributes, execute, create, delete, observe, cancel-observe, read-composite, write-composite, observe-composite, cancel-observe-composite)")
        }
        if !sent { fail("the request could not be sent") }
    }

    /// A response or notification for a request the hub sent.
    private func response(_ session: OpaquePointer, _ received: OpaquePointer) -> Bool {
        let token = PDU.token(received)
        guard pending[token] != nil else { return false }  // RST ends a stale observation
        var observeSequence = PDU.uint(received, COAP_OPTION_OBSERVE)
        var body = PDU.body(received)
        var decodeError: String?
        if let block2 = PDU.uint(received, COAP_OPTION_BLOCK2) {
            // One block of a block-wise response (RFC 7959 §2.4): kept until the last one.
            let num = Int(block2 >> 4), more = block2 & 0x8 != 0, start = num * (16 << Int(min(block2 & 0x7, 6)))
            let limit = source.config.max_body_size
            guard var d = num == 0 ? Download(session: session, body: [], observe: observeSequence, problem: nil, at: 0) : downloads.removeValue(forKey: token) else {
                return true  // a later block of a transfer that was dropped
            }
            if d.problem != nil || start + body.count == d.body.count {
                // Dropped, or the last block again.
            } else if start != d.body.count {
                d.problem = "the client's block-wise answer came out of order"
            } else if d.body.count + body.count > limit {
                d.problem = "the client's answer is over max_body_size (\(limit) bytes)"
            } else {
                d.body += body
            }
            d.at = Date().timeIntervalSince1970
            guard !more else {
                downloads[token] = d
                return true
            }
            body = d.problem == nil ? d.body : []
            observeSequence = d.observe
            decodeError = d.problem
        }
        if case .bootstrap(let job)? = pending[token]?.purpose {
            pending[token] = nil
            bootstrapAnswered(job, code: coap_pdu_get_code(received), body: body)
            return true
        }
        guard var p = pending[token], let r = table.byID[p.registration] else { return false }
        table.heard(id: r.id, now: Date().timeIntervalSince1970)
        let code = coap_pdu_get_code(received)
        let success = code.rawValue >> 5 == 2
        let format = PDU.uint(received, COAP_OPTION_CONTENT_FORMAT)
        var decoded: [(LwM2MPath, Value)] = []
        if success, !body.isEmpty {
            if format == ContentFormat.linkFormat {
                decoded = []
            } else {
                do { decoded = try source.values.decode(body, format: format ?? ContentFormat.textPlain, path: p.path) } catch { decodeError = "\(error)" }
            }
        }
        switch p.purpose {
        case .command(let id, _):
            var fields: Value.Object = [:]
            if format == ContentFormat.linkFormat, let text = String(validating: body, as: UTF8.self) {
                fields["links"] = .string(text)
            } else if !decoded.isEmpty {
                fields["values"] = .object(Value.Object(decoded.map { ($0.0.description, $0.1) }))
            }
            if let decodeError { fields["error"] = .string(decodeError) }
            if !success, let text = String(validating: body, as: UTF8.self), !text.isEmpty { fields["error"] = .string(String(text.prefix(200))) }
            if !success, fields["error"] == nil { fields["error"] = .string(Self.reason(code)) }
            let locations = PDU.strings(received, COAP_OPTION_LOCATION_PATH)
            if !locations.isEmpty { fields["location"] = .string("/" + locations.joined(separator: "/")) }
            result(r, commandID: id, path: p.path, ok: success && decodeError == nil, code: code, fields: fields)
            if p.observing, success, let observeSequence {
                p.purpose = .observation
                _ = p.order.take(observeSequence, at: Date().timeIntervalSince1970)
                pending[token] = p
            } else {
                pending[token] = nil
            }
        case .bootstrap:
            break  // answered above
        case .observation:
            guard success else {
                pending[token] = nil
                return true
            }
            if let observeSequence {
                // A notification older than the last one used came out of order (RFC 7641 §3.4): dropped.
                guard p.order.take(observeSequence, at: Date().timeIntervalSince1970) else { return true }
                pending[token] = p
            } else {
                pending[token] = nil  // the client would not observe it
            }
            if let decodeError { host.log(.warning, "lwm2m: a notification of \(p.path) from \(r.endpoint) was dropped: \(decodeError)") }
            if !decoded.isEmpty { telemetry(r, p.path, decoded, format: format, sequence: observeSequence) }
        }
        return true
    }

    /// A request libcoap gave up on (no ACK, or RST).
    private func unanswered(_ session: OpaquePointer, _ sent: OpaquePointer) {
        var token = PDU.token(sent)
        if pending[token] == nil, PDU.uint(sent, COAP_OPTION_BLOCK2) != nil {
            // libcoap's request for a later block of an answer, under a token of its own: the transfer
            // on that session (the one whose request went to the same Uri-Path, when there are several).
            let sentPath = PDU.path(sent)
            let transfers = downloads.filter { $0.value.session == session }.map(\.key)
            token = (transfers.count == 1 ? transfers.first : transfers.first { t in
                pending[t].map { sentPath.elementsEqual($0.uriPath) { $0 == $1 } } ?? false
            }) ?? token
        }
        downloads[token] = nil
        if case .bootstrap(let job)? = pending[token]?.purpose {
            pending[token] = nil
            bootstrapFailed(job, "the client did not answer \(job.step.name)")
            return
        }
        guard let p = pending.removeValue(forKey: token), let r = table.byID[p.registration] else { return }
        if case .command(let id, _) = p.purpose {
            result(r, commandID: id, path: p.path, ok: false, code: nil, fields: ["error": .string("the client did not answer")])
        }
    }

    private func result(_ r: Registrations.Registration, commandID: String, path: LwM2MPath?, ok: Bool, code: coap_pdu_code_t?, fields: Value.Object) {
        var o: Value.Object = ["ok": .bool(ok)]
        if let code { o["code"] = .string(PDU.codeText(code)) }
        for (k, v) in fields { o[k] = v }
        var properties = [KeyValue("command_id", commandID), KeyValue("lwm2m.endpoint", r.endpoint)]
        if let path { properties.append(KeyValue("lwm2m.path", path.description)) }
        host.submit(Message(kind: .commandResult, tenant: r.tenant, device: r.device, topic: CommandTopics.result(device: r.device, id: commandID),
                            contentType: "application/json", payload: JSON.encode(.object(o)), qos: 1, properties: properties))
    }

    /// Values as a telemetry message. Those of a Send (`sent`) settle its answer with the hub's verdict;
    /// notifications are not held for it (the client does not keep them).
    private func telemetry(_ r: Registrations.Registration, _ observed: LwM2MPath, _ values: [(LwM2MPath, Value)], format: UInt32?, sequence: UInt32?,
                           sent: PendingAnswer? = nil) {
        let topic = "devices/\(r.endpoint)/telemetry"
        var fields = Value.Object()
        for (p, v) in values where p.ids.count >= 3 {
            let definition = source.values.objects[p.object]
            var name = definition?.fieldName(resource: p.ids[2]) ?? "\(p.object)_\(p.ids[2])"
            if p.ids[1] != 0 { name += "_\(p.ids[1])" }
            if p.ids.count == 4 { name += "_\(p.ids[3])" }
            fields[name] = v
        }
        guard !fields.isEmpty else {
            _ = sent?.settle(IOTC_OK)
            return
        }
        // A composite observation (of the root) is versioned by the object of its first value.
        let object = observed.ids.first ?? values.first?.0.ids.first ?? 0
        let version = r.link(of: object)?.attributes["ver"] ?? source.values.objects[object]?.version ?? "1.0"
        var properties = [KeyValue("lwm2m.path", observed.description), KeyValue("lwm2m.endpoint", r.endpoint), KeyValue("lwm2m.object_version", version)]
        if let sequence { properties.append(KeyValue("coap.observe", String(sequence))) }
        if let format { properties.append(KeyValue("coap.content_format", String(format))) }
        if sent != nil { properties.append(KeyValue("lwm2m.operation", "send")) }
        let message = Message(kind: .telemetry, tenant: r.tenant, device: r.device, topic: topic, contentType: "application/json",
                              payload: JSON.encode(.object(fields)), qos: sent == nil ? 0 : 1, properties: properties)
        guard let sent else {
            let status = host.submit(message)
            if status == .busy { host.metric(.counter, "iotc_lwm2m_notifications_dropped_total", labels: [KeyValue("reason", "busy")], 1) }
            return
        }
        let loop = self.loop
        let status = host.submit(message) { result in
            if sent.settle(result) { loop.execute { sent.trigger() } }
        }
        switch status {
        case .queued: break
        case .busy: _ = sent.settle(IOTC_ERR_BUSY)
        // No pipeline reads the values, or the device's profile may not publish them: dropped, as
        // notifications are; the client has nothing to send again.
        case .rejected: _ = sent.settle(IOTC_OK)
        }
    }

    /// The format of a composite request and its answer: SenML-JSON unless SenML-CBOR is asked for.
    static func compositeFormat(_ format: UInt32?, _ r: Registrations.Registration) -> UInt32? {
        switch format {
        case nil: r.compositeFormat
        case ContentFormat.senmlJSON?, ContentFormat.senmlCBOR?: format
        default: nil
        }
    }

    static func reason(_ code: coap_pdu_code_t) -> String {
        switch code {
        case COAP_RESPONSE_CODE_BAD_REQUEST: "Bad Request"
        case COAP_RESPONSE_CODE_UNAUTHORIZED: "Unauthorized"
        case COAP_RESPONSE_CODE_NOT_FOUND: "Not Found"
        case COAP_RESPONSE_CODE_NOT_ALLOWED: "Method Not Allowed"
        case COAP_RESPONSE_CODE_NOT_ACCEPTABLE: "Not Acceptable"
        case COAP_RESPONSE_CODE_UNSUPPORTED_CONTENT_FORMAT: "Unsupported Content-Format"
        default: "CoAP \(PDU.codeText(code))"
        }
    }
}

// MARK: - the bootstrap interface

/// One client's bootstrap, step by step on its session: Bootstrap-Delete of "/", Bootstrap-Write of
/// the Security and Server instances, Bootstrap-Finish.
final class Bootstrapping {
    enum Step: Int {
        case delete, discover, writeSecurity, writeServer, finish

        var name: String {
            switch self {
            case .delete: "Bootstrap-Delete"
            case .discover: "Bootstrap-Discover"
            case .writeSecurity, .writeServer: "Bootstrap-Write"
            case .finish: "Bootstrap-Finish"
            }
        }
    }
    let endpoint: String
    let identity: Identity
    private let held: HeldSession
    var session: OpaquePointer { held.session }
    /// The resources of the two instances, and the format the client prefers them in (`pct`).
    let security: [(UInt16, Value)], server: [(UInt16, Value)]
    let format: BootstrapPlan.WriteFormat
    var step = Step.delete
    /// Where the accounts go: free instances, from the client's Bootstrap-Discover.
    var instances = (security: BootstrapPlan.securityInstance, server: BootstrapPlan.serverInstance)

    init(endpoint: String, identity: Identity, session: OpaquePointer, loop: CoAPEventLoop, security: [(UInt16, Value)], server: [(UInt16, Value)],
         format: BootstrapPlan.WriteFormat) {
        self.endpoint = endpoint
        self.identity = identity
        held = loop.hold(session)
        self.security = security
        self.server = server
        self.format = format
    }

}

extension LwM2MServer {
    /// Bootstrap-Request (`POST /bs?ep=NAME`): answered 2.04, then the client is given the server
    /// account of `bootstrap.server_uri` (with its own pre-shared key when that is `coaps`).
    fileprivate func bootstrap(_ session: OpaquePointer, _ request: OpaquePointer, _ response: OpaquePointer) {
        guard let plan = source.bootstrap else {
            PDU.respond(response, COAP_RESPONSE_CODE_NOT_FOUND, diagnostic: "this server does not bootstrap clients")
            return
        }
        guard let q = queries(request, response), let ep = endpoint(q, response) else { return }
        let format: BootstrapPlan.WriteFormat
        do { format = try BootstrapPlan.WriteFormat(pct: q["pct"]) } catch {
            PDU.respond(response, COAP_RESPONSE_CODE_BAD_REQUEST, diagnostic: error.description)
            return
        }
        guard let id = client(session, endpoint: ep, q, response, doing: "bootstrap") else { return }
        let peer = loop.peer(session)
        var psk: (identity: [UInt8], key: [UInt8])?
        if plan.secure {
            // The server account gets the key the client proved it holds: it must have come over DTLS.
            guard let name = peer.pskIdentity, let key = peer.presharedKey else {
                PDU.respond(response, COAP_RESPONSE_CODE_FORBIDDEN, diagnostic: "bootstrap over DTLS with a pre-shared key for a coaps server")
                return
            }
            psk = (Array(name.utf8), key)
        }
        coap_pdu_set_code(response, COAP_RESPONSE_CODE_CHANGED)
        let job = Bootstrapping(endpoint: ep, identity: id, session: session, loop: loop, security: plan.securityValues(psk: psk),
                                server: plan.serverValues, format: format)
        // The steps follow once the 2.04 is on its way.
        loop.execute { [weak self] in self?.bootstrapStep(job) }
    }

    private func bootstrapStep(_ job: Bootstrapping) {
        let sent: Bool
        switch job.step {
        case .delete:
            sent = send(on: job.session, registration: "", COAP_REQUEST_DELETE, LwM2MPath([]), accept: nil, purpose: .bootstrap(job))
        case .discover:
            sent = send(on: job.session, registration: "", COAP_REQUEST_GET, LwM2MPath([]), accept: ContentFormat.linkFormat, purpose: .bootstrap(job))
        case .writeSecurity, .writeServer:
            // Encoded now, into the instances the client's Bootstrap-Discover left free (SenML names them).
            let (path, values) = job.step == .writeSecurity
                ? (LwM2MPath([0, job.instances.security]), job.security) : (LwM2MPath([1, job.instances.server]), job.server)
            let payload: [UInt8]
            do { payload = try BootstrapPlan.write(values, into: path, format: job.format, source.values) } catch {
                return bootstrapFailed(job, "\(job.step.name) of \(path): \(error.description)")
            }
            sent = send(on: job.session, registration: "", COAP_REQUEST_PUT, path, contentFormat: job.format.rawValue,
                        accept: nil, payload: payload, purpose: .bootstrap(job))
        case .finish:
            sent = send(on: job.session, registration: "", COAP_REQUEST_POST, LwM2MPath([]), uriPath: ["bs"], accept: nil, purpose: .bootstrap(job))
        }
        if !sent { bootstrapFailed(job, "\(job.step.name) could not be sent") }
    }

    fileprivate func bootstrapAnswered(_ job: Bootstrapping, code: coap_pdu_code_t, body: [UInt8]) {
        if job.step == .discover {
            // The free instances, from what the client lists; a client that does not answer
            // Bootstrap-Discover gets the usual ones.
            // A 1.1 answer starts with lwm2m="1.1", which is not a link.
            if code.rawValue >> 5 == 2, let text = String(validating: body, as: UTF8.self), let start = text.firstIndex(of: "<"),
               let links = try? LinkFormat.parse(String(text[start...]), limit: 4096) {
                job.instances = BootstrapPlan.instances(discovered: links)
            }
            job.step = .writeSecurity
            bootstrapStep(job)
            return
        }
        // Bootstrap-Delete answers 2.02, the writes and the finish 2.04.
        guard code.rawValue >> 5 == 2 else {
            bootstrapFailed(job, "the client answered \(job.step.name) with \(PDU.codeText(code))")
            return
        }
        guard let next = Bootstrapping.Step(rawValue: job.step.rawValue + 1) else {
            bootstrapEvent(job, "bootstrapped", reason: nil)
            return
        }
        job.step = next
        bootstrapStep(job)
    }

    fileprivate func bootstrapFailed(_ job: Bootstrapping, _ reason: String) {
        bootstrapEvent(job, "bootstrap_failed", reason: reason)
    }

    private func bootstrapEvent(_ job: Bootstrapping, _ event: String, reason: String?) {
        let topic = "devices/\(job.endpoint)/lifecycle"
        guard host.routes(topic) != .notRouted else { return }
        var body: Value.Object = ["event": .string(event), "endpoint": .string(job.endpoint), "server_uri": .string(source.bootstrap?.serverURI ?? "")]
        if let reason { body["reason"] = .string(reason) }
        host.submit(Message(kind: .lifecycle, tenant: job.identity.tenant, device: job.identity.device, topic: topic, contentType: "application/json",
                            payload: JSON.encode(.object(body)), qos: 0, properties: [KeyValue("lwm2m.endpoint", job.endpoint)]))
    }
}

private let lwm2mRequest: coap_method_handler_t = { resource, session, request, _, response in
    guard let resource, let session, let request, let response, let data = coap_resource_get_userdata(resource) else { return }
    Unmanaged<LwM2MServer>.fromOpaque(data).takeUnretainedValue().handle(session, request, response)
}

private let lwm2mReleaseCopy: coap_release_large_data_t = { _, copy in
    copy?.assumingMemoryBound(to: UInt8.self).deallocate()
}
