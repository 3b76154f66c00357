import CCoAP

/// Reading requests and writing responses of libcoap PDUs (opaque `coap_pdu_t` pointers).
public enum PDU {
    /// Whether a request came in a message that may carry one: Confirmable or Non-confirmable. A
    /// request in an Acknowledgement or Reset breaks RFC 7252 §4.2, and such messages are rejected by
    /// ignoring them (§4.2, §4.3): a handler returns without answering.
    public static func isRequestMessage(_ pdu: OpaquePointer) -> Bool {
        let type = coap_pdu_get_type(pdu)
        return type == COAP_MESSAGE_CON || type == COAP_MESSAGE_NON
    }

    /// The value of an unsigned-integer option, or nil when it is absent.
    public static func uint(_ pdu: OpaquePointer, _ option: Int32) -> UInt32? {
        var it = coap_opt_iterator_t()
        guard let opt = coap_check_option(pdu, coap_option_num_t(option), &it) else { return nil }
        return UInt32(coap_decode_var_bytes(coap_opt_value(opt), Int(coap_opt_length(opt))))
    }

    /// Every value of a repeatable string option (Uri-Path, Uri-Query, Location-Path), in order.
    public static func strings(_ pdu: OpaquePointer, _ option: Int32) -> [Substring] {
        var it = coap_opt_iterator_t()
        var filter = coap_opt_filter_t()
        coap_option_filter_clear(&filter)
        coap_option_filter_set(&filter, coap_option_num_t(option))
        guard coap_option_iterator_init(pdu, &it, &filter) != nil else { return [] }
        var out: [Substring] = []
        out.reserveCapacity(4)
        while let opt = coap_option_next(&it) {
            let n = Int(coap_opt_length(opt))
            out.append(n == 0 ? "" : Substring(String(decoding: UnsafeBufferPointer(start: coap_opt_value(opt), count: n), as: UTF8.self)))
        }
        return out
    }

    /// The request's Uri-Path segments.
    public static func path(_ pdu: OpaquePointer) -> [Substring] { strings(pdu, COAP_OPTION_URI_PATH) }

    /// The value of `name=value` among the Uri-Query options.
    public static func query(_ pdu: OpaquePointer, _ name: String) -> String? {
        for q in strings(pdu, COAP_OPTION_URI_QUERY) {
            if q == name { return "" }
            if q.hasPrefix(name + "=") { return String(q.dropFirst(name.count + 1)) }
        }
        return nil
    }

    /// The PDU's payload: one block of a block-wise transfer (`BlockUploads` puts those together).
    public static func body(_ pdu: OpaquePointer) -> [UInt8] {
        var len = 0, offset = 0, total = 0
        var data: UnsafePointer<UInt8>?
        guard coap_get_data_large(pdu, &len, &data, &offset, &total) != 0, let data, len > 0 else { return [] }
        return Array(UnsafeBufferPointer(start: data, count: len))
    }

    public static func code(_ pdu: OpaquePointer) -> coap_pdu_code_t { coap_pdu_get_code(pdu) }

    /// "2.05"-style text of a code.
    public static func codeText(_ code: coap_pdu_code_t) -> String {
        let c = Int(code.rawValue)
        return "\(c >> 5).\(String(format: "%02d", c & 0x1F))"
    }

    /// The value of an opaque option (the first, when repeated), or nil.
    public static func opaque(_ pdu: OpaquePointer, _ option: Int32) -> [UInt8]? {
        var it = coap_opt_iterator_t()
        guard let opt = coap_check_option(pdu, coap_option_num_t(option), &it) else { return nil }
        return Array(UnsafeBufferPointer(start: coap_opt_value(opt), count: Int(coap_opt_length(opt))))
    }

    public static func token(_ pdu: OpaquePointer) -> [UInt8] {
        let t = coap_pdu_get_token(pdu)
        guard t.length > 0, let s = t.s else { return [] }
        return Array(UnsafeBufferPointer(start: s, count: t.length))
    }

    /// Adds an unsigned-integer option.
    public static func addUInt(_ pdu: OpaquePointer, _ option: Int32, _ value: UInt32) {
        var buf = [UInt8](repeating: 0, count: 4)
        let n = coap_encode_var_safe(&buf, buf.count, value)
        _ = coap_add_option(pdu, coap_option_num_t(option), Int(n), buf)
    }

    /// Answers with a body of any size: libcoap sends it whole or block-wise (RFC 7959 Block2) as the
    /// request and the session allow, from a copy it frees when done. Sets 2.05 unless a code is set.
    public static func respondLarge(_ resource: OpaquePointer, _ session: OpaquePointer, _ request: OpaquePointer, _ response: OpaquePointer,
                                    _ query: UnsafePointer<coap_string_t>?, format: UInt32, etag: UInt64, body: [UInt8]) {
        if coap_pdu_get_code(response) == COAP_EMPTY_CODE { coap_pdu_set_code(response, COAP_RESPONSE_CODE_CONTENT) }
        // The ETag goes on every block (libcoap 4.3.1 does not add the one it is given), so that a
        // client can tell the blocks of one representation from another's.
        if etag != 0 {
            let tag = (0..<8).map { UInt8(truncatingIfNeeded: etag >> (8 * (7 - UInt64($0)))) }
            _ = coap_add_option(response, coap_option_num_t(COAP_OPTION_ETAG), tag.count, tag)
        }
        let copy = UnsafeMutablePointer<UInt8>.allocate(capacity: max(1, body.count))
        copy.initialize(from: body, count: body.count)
        // libcoap owns the copy from here and frees it through the release function on every path,
        // failures included (a Block2 request past the end gets 4.00): freeing it here too when the
        // call fails was a double free, which a GET for such a block turned into a crash.
        _ = coap_add_data_large_response(resource, session, request, response, query, UInt16(format), -1, 0, body.count, copy, pduReleaseCopy, copy)
    }

    /// Sets a response's code and, for errors, a diagnostic payload (RFC 7252 §5.5.2).
    public static func respond(_ response: OpaquePointer, _ code: coap_pdu_code_t, diagnostic: String? = nil) {
        coap_pdu_set_code(response, code)
        if let diagnostic, !diagnostic.isEmpty {
            let bytes = Array(diagnostic.utf8.prefix(200))
            _ = coap_add_data(response, bytes.count, bytes)
        }
    }
}

import Foundation

private let pduReleaseCopy: coap_release_large_data_t = { _, copy in
    copy?.assumingMemoryBound(to: UInt8.self).deallocate()
}
