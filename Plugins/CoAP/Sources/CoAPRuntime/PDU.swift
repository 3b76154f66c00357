import CCoAP

/// Reading requests and writing responses of libcoap PDUs (opaque `coap_pdu_t` pointers).
public enum PDU {
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
        while let opt = coap_option_next(&it) {
            let n = Int(coap_opt_length(opt))
            let bytes = n == 0 ? [] : Array(UnsafeBufferPointer(start: coap_opt_value(opt), count: n))
            out.append(Substring(String(decoding: bytes, as: UTF8.self)))
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

    /// The whole body (libcoap reassembles Block1 transfers), or nil when there is none.
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
