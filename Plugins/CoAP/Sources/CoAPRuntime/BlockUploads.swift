import CCoAP
import Foundation

/// Block-wise request bodies being put together (RFC 7959 §2.5, Block1), for every endpoint of a
/// source; on the loop thread only. libcoap is told not to put bodies together itself (no
/// `COAP_BLOCK_SINGLE_BODY`): its 4.3.1 reassembly dereferences a body it never built when a
/// transfer's blocks carry no payload or no Size1, so two datagrams from anyone crashed the process.
/// (The LwM2M server gathers the Block2 answers to its own requests by token.) Bounded three ways, so
/// that devices that start uploads and never finish them cannot hold the hub's memory: a few transfers
/// per endpoint, a budget of bytes for all of them, and an age after which a transfer is dropped (its
/// device starts again).
public struct BlockUploads {
    public struct Upload {
        public var body: [UInt8]
        /// The block size of the last block taken.
        public var size: Int
        /// When its last block came, in seconds.
        public var at: TimeInterval

        public init(body: [UInt8], size: Int, at: TimeInterval) {
            self.body = body
            self.size = size
            self.at = at
        }
    }
    public struct Key: Hashable {
        public var endpoint: ObjectIdentifier
        /// The resource and Request-Tag (RFC 9175 §3): a transfer's blocks have different tokens.
        public var transfer: [UInt8]

        public init(endpoint: ObjectIdentifier, transfer: [UInt8]) {
            self.endpoint = endpoint
            self.transfer = transfer
        }
    }
    private var uploads: [Key: Upload] = [:]
    private var perEndpoint: [ObjectIdentifier: Int] = [:]
    /// Bytes held across all uploads.
    public private(set) var held = 0
    public let budget: Int
    public static let maxPerEndpoint = 4
    /// CoAP's EXCHANGE_LIFETIME (RFC 7252 §4.8.2).
    public static let maxAge: TimeInterval = 247

    public init(budget: Int) { self.budget = budget }

    /// Takes an upload out to add to it (the caller puts it back with `put` or drops it).
    public mutating func take(_ key: Key, now: TimeInterval) -> Upload? {
        guard let u = uploads.removeValue(forKey: key) else { return nil }
        forget(key.endpoint, bytes: u.body.count)
        return now - u.at <= Self.maxAge ? u : nil
    }

    /// Keeps an upload for its next block; false when the budget or the endpoint's share is spent.
    public mutating func put(_ key: Key, _ u: Upload) -> Bool {
        guard held + u.body.count <= budget, perEndpoint[key.endpoint, default: 0] < Self.maxPerEndpoint else { return false }
        uploads[key] = u
        held += u.body.count
        perEndpoint[key.endpoint, default: 0] += 1
        return true
    }

    /// Drops an endpoint's uploads (its session ended).
    public mutating func drop(endpoint: ObjectIdentifier) {
        guard perEndpoint[endpoint] != nil else { return }
        for (k, u) in uploads where k.endpoint == endpoint {
            uploads[k] = nil
            forget(endpoint, bytes: u.body.count)
        }
    }

    /// Drops uploads whose last block is older than `maxAge`.
    public mutating func expire(now: TimeInterval) {
        for (k, u) in uploads where now - u.at > Self.maxAge {
            uploads[k] = nil
            forget(k.endpoint, bytes: u.body.count)
        }
    }

    public var count: Int { uploads.count }

    private mutating func forget(_ endpoint: ObjectIdentifier, bytes: Int) {
        held -= bytes
        let n = (perEndpoint[endpoint] ?? 1) - 1
        perEndpoint[endpoint] = n > 0 ? n : nil
    }

    public enum Assembled {
        /// The whole body; `blockSize` is the one the peer used, nil when it did not use blocks.
        case body([UInt8], blockSize: Int?)
        /// More blocks are to come, or the transfer was wrong: the response is set.
        case answered
        /// The upload would exceed the budget or the endpoint's share: the caller answers (5.03).
        case full
    }

    /// The request's body, put together from its blocks when it comes in Block1. While more blocks
    /// are to come the response is set to 2.31 Continue with the Block1 option; a block out of
    /// sequence gets 4.08 Request Entity Incomplete (§2.9.2), a body over `limit` 4.13 with Size1
    /// (§2.9.3), and SZX 7 (BERT, only for CoAP over TCP) 4.00. The answer to the last block names it
    /// (§2.3). A transfer is the resource and its Request-Tag (RFC 9175 §3): its blocks have
    /// different tokens.
    public mutating func assemble(_ request: OpaquePointer, _ response: OpaquePointer, endpoint: ObjectIdentifier, limit: Int,
                                  now: TimeInterval) -> Assembled {
        var length = 0, offset = 0, total = 0
        var data: UnsafePointer<UInt8>?
        let chunk: UnsafeBufferPointer<UInt8> = coap_get_data_large(request, &length, &data, &offset, &total) != 0 && data != nil
            ? UnsafeBufferPointer(start: data, count: length) : UnsafeBufferPointer(start: nil, count: 0)
        func tooLarge() -> Assembled {
            PDU.respond(response, COAP_RESPONSE_CODE_REQUEST_TOO_LARGE, diagnostic: "the body is over \(limit) bytes")
            PDU.addUInt(response, COAP_OPTION_SIZE1, UInt32(clamping: limit))
            return .answered
        }
        func outOfSequence() -> Assembled {
            PDU.respond(response, COAP_RESPONSE_CODE_INCOMPLETE, diagnostic: "a block-wise body starts at block 0 and goes in order")
            return .answered
        }
        guard let block1 = PDU.uint(request, COAP_OPTION_BLOCK1) else {
            return chunk.count <= limit ? .body(Array(chunk), blockSize: nil) : tooLarge()
        }
        let num = Int(block1 >> 4), more = block1 & 0x8 != 0, szx = Int(block1 & 0x7)
        guard szx < 7 else {
            PDU.respond(response, COAP_RESPONSE_CODE_BAD_REQUEST, diagnostic: "BERT blocks (SZX 7) are for CoAP over TCP")
            return .answered
        }
        let size = 16 << szx, start = num * size
        // A block that is not the last carries exactly its size (§2.2).
        guard !more || chunk.count == size else {
            PDU.respond(response, COAP_RESPONSE_CODE_BAD_REQUEST, diagnostic: "a block before the last carries \(size) bytes")
            return .answered
        }
        let key = Key(endpoint: endpoint, transfer: Array(PDU.strings(request, COAP_OPTION_URI_PATH).joined(separator: "/").utf8) + [0]
                                                        + (PDU.opaque(request, COAP_OPTION_RTAG) ?? []))
        // Taken out of the table while it grows, so that its body is not copied at every block.
        var upload = take(key, now: now)
        if num == 0 { upload = Upload(body: [], size: size, at: now) }
        // A transfer that did not start at block 0, or whose earlier blocks were dropped.
        guard var partial = upload else { return outOfSequence() }
        if start == partial.body.count {
            guard partial.body.count + chunk.count <= limit, total <= limit else { return tooLarge() }
            partial.body.append(contentsOf: chunk)
            partial.size = size
        } else if start + chunk.count != partial.body.count {
            // Neither the next block nor the last one again (a retransmission).
            return outOfSequence()
        }
        partial.at = now
        guard !more else {
            guard put(key, partial) else { return .full }
            coap_pdu_set_code(response, COAP_RESPONSE_CODE_CONTINUE)
            PDU.addUInt(response, COAP_OPTION_BLOCK1, block1)
            return .answered
        }
        PDU.addUInt(response, COAP_OPTION_BLOCK1, block1)
        return .body(partial.body, blockSize: size)
    }
}
