/// CoAP Content-Format numbers (RFC 7252 §12.3, RFC 8428, OMA LwM2M) and the media types the hub's
/// messages carry.
public enum ContentFormat {
    public static let textPlain: UInt32 = 0
    public static let linkFormat: UInt32 = 40
    public static let octetStream: UInt32 = 42
    public static let json: UInt32 = 50
    public static let cbor: UInt32 = 60
    public static let senmlJSON: UInt32 = 110
    public static let senmlCBOR: UInt32 = 112
    public static let lwm2mTLV: UInt32 = 11542
    public static let lwm2mJSON: UInt32 = 11543
    public static let lwm2mCBOR: UInt32 = 11544

    private static let types: [UInt32: String] = [
        textPlain: "text/plain; charset=utf-8",
        linkFormat: "application/link-format",
        41: "application/xml",
        octetStream: "application/octet-stream",
        json: "application/json",
        cbor: "application/cbor",
        senmlJSON: "application/senml+json",
        senmlCBOR: "application/senml+cbor",
        lwm2mTLV: "application/vnd.oma.lwm2m+tlv",
        lwm2mJSON: "application/vnd.oma.lwm2m+json",
        lwm2mCBOR: "application/vnd.oma.lwm2m+cbor",
    ]

    /// The media type of a Content-Format number, or nil when it has none here.
    public static func mediaType(_ format: UInt32) -> String? { types[format] }

    /// The Content-Format number of a media type (parameters other than charset ignored).
    public static func number(_ mediaType: String) -> UInt32? {
        let bare = mediaType.split(separator: ";", maxSplits: 1).first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
        if bare == "text/plain" { return textPlain }
        return types.first { $0.value == bare }?.key
    }
}

import Foundation
