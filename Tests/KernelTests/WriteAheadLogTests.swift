import Foundation
import Testing
@testable import IoTCKernel
import IoTCPluginKit

@Suite struct WriteAheadLogTests {
    func message(_ n: Int) -> CanonicalMessage {
        CanonicalMessage(Message(id: "m\(n)", device: "d", topic: "t/\(n)", contentType: "application/json", payload: Array("{\"n\":\(n)}".utf8),
                                 properties: [KeyValue("mqtt.user.k", "v")]), receivedTime: 42)
    }

    func appendSync(_ wal: WriteAheadLog, _ m: CanonicalMessage) -> UInt64 {
        final class Outcome: @unchecked Sendable { var ok = false }
        let outcome = Outcome()
        let done = DispatchSemaphore(value: 0)
        let seq = wal.append(m) { ok in
            outcome.ok = ok
            done.signal()
        }
        done.wait()
        #expect(outcome.ok, "the write-ahead log failed to write message \(m.id)")
        return seq
    }

    @Test func returnsUnfinishedMessagesAfterARestart() throws {
        let dir = TempDir()
        let wal = try WriteAheadLog(directory: dir.url)
        #expect(try wal.open().isEmpty)
        let seqs = (0..<5).map { appendSync(wal, message($0)) }
        wal.markDone(seqs[1])
        wal.markDone(seqs[3])
        wal.close()

        let again = try WriteAheadLog(directory: dir.url)
        let pending = try again.open()
        #expect(pending.map(\.message.id) == ["m0", "m2", "m4"])
        #expect(pending[0].message.properties == [KeyValue("mqtt.user.k", "v")])
        #expect(pending[2].message.payloadBytes == Array(#"{"n":4}"#.utf8))
        for e in pending { again.markDone(e.sequence) }
        again.close()
        #expect(try WriteAheadLog(directory: dir.url).open().isEmpty)
    }

    @Test func ignoresATornRecordAtTheTail() throws {
        let dir = TempDir()
        let wal = try WriteAheadLog(directory: dir.url)
        _ = try wal.open()
        _ = appendSync(wal, message(1))
        _ = appendSync(wal, message(2))
        wal.close()
        let file = try #require(try FileManager.default.contentsOfDirectory(atPath: dir.path).first { $0.hasSuffix(".log") })
        let path = dir.url.appendingPathComponent(file).path
        var bytes = [UInt8](FileManager.default.contents(atPath: path)!)
        bytes.removeLast(5)  // a crash in the middle of the last write
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect(try WriteAheadLog(directory: dir.url).open().map(\.message.id) == ["m1"])
    }

    @Test func ignoresACorruptRecord() throws {
        let dir = TempDir()
        let wal = try WriteAheadLog(directory: dir.url)
        _ = try wal.open()
        _ = appendSync(wal, message(1))
        wal.close()
        let file = try #require(try FileManager.default.contentsOfDirectory(atPath: dir.path).first { $0.hasSuffix(".log") })
        let path = dir.url.appendingPathComponent(file).path
        var bytes = [UInt8](FileManager.default.contents(atPath: path)!)
        bytes[bytes.count - 3] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect(try WriteAheadLog(directory: dir.url).open().isEmpty)
    }
}
