import CoAPRuntime
import IoTCPluginKit

/// The edge check of a device's payload by its Content-Format, so that a device learns of a bad body
/// at once instead of the message failing in a pipeline.
enum PayloadCheck {
    struct Problem {
        var unsupported: Bool
        var text: String
    }

    static func problem(_ body: [UInt8], format: UInt32) -> Problem? {
        switch format {
        case ContentFormat.textPlain:
            return UTF8Text.string(body) == nil ? Problem(unsupported: false, text: "the text is not valid UTF-8") : nil
        case ContentFormat.json:
            guard !JSON.validate(body) else { return nil }
            do { _ = try JSON.decode(body) } catch { return Problem(unsupported: false, text: "not valid JSON: \(error)") }
            return Problem(unsupported: false, text: "not valid JSON")
        case ContentFormat.cbor:
            do { _ = try CBOR.decode(body) } catch { return Problem(unsupported: false, text: "not valid CBOR: \(error)") }
            return nil
        case ContentFormat.senmlJSON, ContentFormat.senmlCBOR:
            do { _ = try SenML.decode(body, cbor: format == ContentFormat.senmlCBOR) } catch { return Problem(unsupported: false, text: error.description) }
            return nil
        default:
            return Problem(unsupported: true, text: "Content-Format \(format) is not accepted (use 0, 50, 60, 110 or 112)")
        }
    }
}
