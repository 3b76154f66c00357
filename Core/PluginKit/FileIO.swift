#if canImport(Glibc)
import Glibc
#endif

/// Small file writes with plain system calls, for the places that write on a message's path (the
/// write-ahead log, the file sink, dead letters), where Foundation's file calls cost several times more.
public enum FileIO {
    /// Writes every byte of `bytes` to `fd`, again after a signal interrupts; nil, or the system's text
    /// for the error that stopped it.
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> String? {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                return errorText()
            }
            offset += n
        }
        return nil
    }

    /// Writes a whole file: a hidden temporary name in the same folder first, then renamed over `path`,
    /// so that a crash leaves the old file or the new one, never half of one. Nil, or what failed.
    public static func replace(_ path: String, with bytes: [UInt8]) -> String? {
        let slash = path.lastIndex(of: "/")
        let temporary = slash.map { String(path[...$0]) + "." + path[path.index(after: $0)...] } ?? "." + path
        let tmp = temporary + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return "cannot write \(tmp): \(errorText())" }
        let failed = writeAll(fd, bytes)
        close(fd)
        if let failed {
            unlink(tmp)
            return "cannot write \(tmp): \(failed)"
        }
        guard rename(tmp, path) == 0 else {
            let why = errorText()
            unlink(tmp)
            return "cannot rename \(tmp) to \(path): \(why)"
        }
        return nil
    }

    /// The system's text for the last error (`errno`).
    public static func errorText() -> String { String(cString: strerror(errno)) }
}
