import CIoTCKernelSupport
import IoTCPluginKit

/// A compact binary form of a canonical message, for the write-ahead log.
enum MessageCodec {
    static func encode(_ m: CanonicalMessage, into out: inout [UInt8]) {
        func u32(_ v: Int) { withUnsafeBytes(of: UInt32(v).littleEndian) { out.append(contentsOf: $0) } }
        func i64(_ v: Int64) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func str(_ s: String) { u32(s.utf8.count); out.append(contentsOf: s.utf8) }
        out.append(1)  // format version
        str(m.id)
        out.append(UInt8(truncatingIfNeeded: m.kind.rawValue))
        str(m.tenant); str(m.device); str(m.topic); str(m.contentType)
        let payload = m.payloadBytes
        u32(payload.count)
        out.append(contentsOf: payload)
        i64(m.deviceTime ?? Int64.min)
        i64(m.receivedTime)
        out.append(m.qos)
        u32(m.properties.count)
        for kv in m.properties { str(kv.key); str(kv.value) }
        u32(m.metadata.count)
        for kv in m.metadata { str(kv.key); str(kv.value) }
    }

    static func decode(_ b: ArraySlice<UInt8>) -> CanonicalMessage? {
        var i = b.startIndex
        func u8() -> UInt8? { guard i < b.endIndex else { return nil }; defer { i += 1 }; return b[i] }
        func u32() -> Int? {
            guard b.endIndex - i >= 4 else { return nil }
            var v: UInt32 = 0
            for k in 0..<4 { v |= UInt32(b[i + k]) << (8 * UInt32(k)) }
            i += 4
            return Int(v)
        }
        func i64() -> Int64? {
            guard b.endIndex - i >= 8 else { return nil }
            var v: UInt64 = 0
            for k in 0..<8 { v |= UInt64(b[i + k]) << (8 * UInt64(k)) }
            i += 8
            return Int64(bitPattern: v)
        }
        func bytes() -> ArraySlice<UInt8>? {
            guard let n = u32(), b.endIndex - i >= n else { return nil }
            defer { i += n }
            return b[i..<i + n]
        }
        func str() -> String? { bytes().map { String(decoding: $0, as: UTF8.self) } }
        func pairs() -> [KeyValue]? {
            guard let n = u32(), n <= b.count else { return nil }
            var out: [KeyValue] = []
            for _ in 0..<n {
                guard let k = str(), let v = str() else { return nil }
                out.append(KeyValue(k, v))
            }
            return out
        }
        guard u8() == 1, let id = str(), let kindRaw = u8(), let tenant = str(), let device = str(), let topic = str(),
              let contentType = str(), let payload = bytes(), let deviceTime = i64(), let received = i64(), let qos = u8(),
              let properties = pairs(), let metadata = pairs()
        else { return nil }
        let m = Message(id: id, kind: MessageKind(rawValue: UInt32(kindRaw)) ?? .telemetry, tenant: tenant, device: device,
                        topic: topic, contentType: contentType, payload: Array(payload),
                        deviceTime: deviceTime == Int64.min ? nil : deviceTime, receivedTime: received, qos: qos,
                        properties: properties, metadata: metadata)
        return CanonicalMessage(m, receivedTime: received)
    }
}

/// CRC-32C (Castagnoli), for write-ahead log records.
enum CRC32C {
    /// Slicing-by-8 tables (8 x 256 entries), filled once and then only read.
    nonisolated(unsafe) private static let tables: UnsafeMutablePointer<UInt32> = {
        let t = UnsafeMutablePointer<UInt32>.allocate(capacity: 8 * 256)
        for i in 0..<256 {
            var c = UInt32(i)
            for _ in 0..<8 { c = c & 1 != 0 ? 0x82F6_3B78 ^ (c >> 1) : c >> 1 }
            t[i] = c
        }
        for k in 1..<8 {
            for i in 0..<256 { t[k * 256 + i] = (t[(k - 1) * 256 + i] >> 8) ^ t[Int(t[(k - 1) * 256 + i] & 0xFF)] }
        }
        return t
    }()

    static func checksum<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        bytes.withContiguousStorageIfAvailable { checksum(UnsafeRawBufferPointer($0)) } ?? Array(bytes).withUnsafeBytes { checksum($0) }
    }

    /// With the processor's CRC-32C instruction when it has one (SSE 4.2), else by tables.
    static func checksum(_ p: UnsafeRawBufferPointer) -> UInt32 {
        guard hardware, let base = p.baseAddress else { return software(p) }
        return iotc_crc32c_hardware(0xFFFF_FFFF, base.assumingMemoryBound(to: UInt8.self), p.count) ^ 0xFFFF_FFFF
    }

    static let hardware = iotc_crc32c_hardware_available() != 0

    /// Slicing-by-8, for processors without the instruction (and to check it against).
    static func software(_ p: UnsafeRawBufferPointer) -> UInt32 {
        let t = tables
        var c: UInt32 = 0xFFFF_FFFF
        var i = 0
        let n = p.count
        while n - i >= 8 {
            let lo = c ^ (UInt32(p[i]) | UInt32(p[i + 1]) << 8 | UInt32(p[i + 2]) << 16 | UInt32(p[i + 3]) << 24)
            c = t[7 * 256 + Int(lo & 0xFF)] ^ t[6 * 256 + Int((lo >> 8) & 0xFF)] ^ t[5 * 256 + Int((lo >> 16) & 0xFF)] ^ t[4 * 256 + Int(lo >> 24)]
                ^ t[3 * 256 + Int(p[i + 4])] ^ t[2 * 256 + Int(p[i + 5])] ^ t[256 + Int(p[i + 6])] ^ t[Int(p[i + 7])]
            i += 8
        }
        while i < n {
            c = t[Int((c ^ UInt32(p[i])) & 0xFF)] ^ (c >> 8)
            i += 1
        }
        return c ^ 0xFFFF_FFFF
    }
}
