import Foundation

/// Block-wise request bodies being put together (RFC 7959 §2.5), for every endpoint of a source: on
/// the loop thread only. Bounded three ways, so that devices that start uploads and never finish them
/// cannot hold the hub's memory: a few transfers per endpoint, a budget of bytes for all of them, and
/// an age after which a transfer is dropped (its device starts again).
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
}
