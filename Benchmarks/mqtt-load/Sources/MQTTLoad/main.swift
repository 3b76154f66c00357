// mqtt-load: MQTT 3.1.1 load over real sockets, on one event-loop thread (so that it takes at most one of
// the machine's cores and needs no locks).
//
//   mqtt-load --port 1883 --pubs 100 --subs 1 --qos 1 --size 64 --duration 10 --warmup 2
//   mqtt-load --port 1883 --pubs 1000 --subs 1 --qos 1 --rate 10            (fixed load, latency)
//   mqtt-load --port 1883 --idle 10000 --server-pid PID                      (memory per connection)
//   mqtt-load --port 1883 --pubs 50 --subs 0 --qos 1 --json                  (ingest: PUBACK rate)
//   mqtt-load --port 1883 --connects 20000 --tokens FILE --concurrency 64     (authenticated CONNECTs/s)
//
// With --connects, each line of FILE is "DEVICE TOKEN": a client connects as DEVICE with TOKEN as its
// password, waits for CONNACK (success counted), disconnects, and the next one starts; --concurrency
// of them at a time, cycling through the file.
//
// Payload: publisher id, sequence number and send time (monotonic ns), padded to --size (or a JSON object
// of those with --json). Only messages sent inside the window [warmup, warmup + duration) count. At
// --rate 0 each publisher keeps at most --window messages sent and not yet received by every
// subscriber, and at QoS 1 at most --inflight without PUBACK. The last line is a JSON object.
import Foundation
import NIOCore
import NIOPosix

struct Options {
    var host = "127.0.0.1", port = 1883, pubs = 10, subs = 1, qos: UInt8 = 0, size = 64, rate = 0.0
    var window = 32, inflight = 32, duration = 10.0, warmup = 2.0, drain = 5.0, filter: String?, idle = 0
    var serverPID: Int32?, json = false, prefix = "load"
    var connects = 0, tokens: String?, concurrency = 64

    static let usage = """
        usage: MQTTLoad [--host H] [--port N] [--pubs N] [--subs N] [--qos 0|1|2] [--size BYTES] [--rate MSG_PER_S]
                        [--window N] [--inflight N] [--duration S] [--warmup S] [--drain S] [--filter F] [--json]
                        [--prefix P] [--idle N --server-pid PID] [--connects N --tokens FILE --concurrency N]
        """

    /// Stops with the usage on standard error (exit status 2), as command-line tools do.
    static func fail(_ why: String) -> Never {
        FileHandle.standardError.write(Data("MQTTLoad: \(why)\n\(usage)\n".utf8))
        exit(2)
    }

    init(_ args: [String]) {
        var i = 0
        func next() -> String {
            i += 1
            guard i < args.count else { Self.fail("missing value for \(args[i - 1])") }
            return args[i]
        }
        func number<T: LosslessStringConvertible>(_: T.Type = T.self) -> T {
            let text = next()
            guard let v = T(text) else { Self.fail("\(args[i - 1]) takes a number, not '\(text)'") }
            return v
        }
        while i < args.count {
            switch args[i] {
            case "--host": host = next()
            case "--port": port = number()
            case "--pubs": pubs = number()
            case "--subs": subs = number()
            case "--qos": qos = number()
            case "--size": size = number()
            case "--rate": rate = number()
            case "--window": window = number()
            case "--inflight": inflight = number()
            case "--duration": duration = number()
            case "--warmup": warmup = number()
            case "--drain": drain = number()
            case "--filter": filter = next()
            case "--idle": idle = number()
            case "--server-pid": serverPID = number()
            case "--json": json = true
            case "--prefix": prefix = next()
            case "--connects": connects = number()
            case "--tokens": tokens = next()
            case "--concurrency": concurrency = number()
            case "--help", "-h":
                print(Self.usage)
                exit(0)
            default: Self.fail("unknown option \(args[i])")
            }
            i += 1
        }
    }
}

func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

func rssKiB(_ pid: Int32) -> Int? {
    guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in s.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1])
    }
    return nil
}

// MARK: - Encoding

func varint(_ n: Int, _ b: inout ByteBuffer) {
    var v = n
    repeat {
        var byte = UInt8(v & 0x7F)
        v >>= 7
        if v > 0 { byte |= 0x80 }
        b.writeInteger(byte)
    } while v > 0
}

func mqttString(_ s: String, _ b: inout ByteBuffer) {
    b.writeInteger(UInt16(s.utf8.count))
    b.writeString(s)
}

func connectPacket(_ id: String, keepAlive: UInt16, username: String? = nil, password: String? = nil) -> ByteBuffer {
    var body = ByteBuffer()
    mqttString("MQTT", &body)
    body.writeInteger(UInt8(4))
    body.writeInteger(UInt8(2 | (username != nil ? 0x80 : 0) | (password != nil ? 0x40 : 0)))
    body.writeInteger(keepAlive)
    mqttString(id, &body)
    if let username { mqttString(username, &body) }
    if let password { mqttString(password, &body) }
    var out = ByteBuffer()
    out.writeInteger(UInt8(0x10))
    varint(body.readableBytes, &out)
    out.writeBuffer(&body)
    return out
}

// MARK: - State (all on the one event loop)

final class Run: @unchecked Sendable {
    let o: Options
    let start = now()
    var windowStart: UInt64 { start + UInt64(o.warmup * 1e9) }
    var windowEnd: UInt64 { windowStart + UInt64(o.duration * 1e9) }
    var publishers: [Publisher] = []
    var subscribers: [Subscriber] = []
    var latencies: [UInt32] = []  // microseconds x 10
    var sentInWindow = 0, receivedInWindow = 0, arrivedInWindow = 0, acked = 0, ackedInWindow = 0
    var lost = 0, dup = 0, errors = 0
    /// received[sub][pub]: messages that subscriber got from that publisher (for the window bound).
    var received: [[Int]] = []
    var lastSeq: [[Int64]] = []
    var windowSeen: [[Set<Int64>]] = []

    init(_ o: Options) { self.o = o }
}

final class Publisher: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let id: Int, run: Run, topic: String
    var channel: Channel?
    var connected = false
    var seq: Int64 = 0
    var unacked = 0
    var nextDue: UInt64 = 0
    var buffer = ByteBuffer()
    var sentInWindowSeqs: [Int64] = []

    init(_ id: Int, _ run: Run) {
        self.id = id
        self.run = run
        topic = "\(run.o.prefix)/p\(id)"
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var b = unwrapInboundIn(data)
        buffer.writeBuffer(&b)
        while let (type, body) = nextPacket(&buffer) {
            switch type {
            case 2: connected = true
            case 4:
                unacked -= 1
                run.acked += 1
                if now() >= run.windowStart, now() < run.windowEnd { run.ackedInWindow += 1 }
            default: break
            }
        }
        pump()
    }

    /// Sends what the rate, window and in-flight bounds allow, in one flush.
    func pump() {
        guard connected, let channel else { return }
        let t = now()
        guard t < run.windowEnd else { return }
        var out = channel.allocator.buffer(capacity: 4096)
        var n = 0
        while true {
            if run.o.rate > 0 {
                if nextDue == 0 { nextDue = t }
                guard nextDue <= t else { break }
                nextDue += UInt64(1e9 / run.o.rate)
            }
            if run.o.qos > 0, run.o.inflight > 0, unacked >= run.o.inflight { break }
            if run.o.window > 0, !run.subscribers.isEmpty {
                var slowest = Int.max
                for s in 0..<run.subscribers.count { slowest = min(slowest, run.received[s][id]) }
                if Int(seq) - slowest >= run.o.window { break }
            }
            writePublish(&out, t)
            n += 1
            if n >= 64 { break }
        }
        if n > 0 { channel.writeAndFlush(out, promise: nil) }
    }

    func writePublish(_ out: inout ByteBuffer, _ t: UInt64) {
        seq += 1
        if t >= run.windowStart, t < run.windowEnd { run.sentInWindow += 1 }
        var payload = ByteBuffer()
        if run.o.json {
            payload.writeString(#"{"pub":\#(id),"seq":\#(seq),"t":\#(t),"temperature_f":71.6,"humidity":40}"#)
        } else {
            payload.writeInteger(UInt32(id))
            payload.writeInteger(UInt64(seq))
            payload.writeInteger(t)
        }
        if payload.readableBytes < run.o.size { payload.writeRepeatingByte(0x20, count: run.o.size - payload.readableBytes) }
        let remaining = 2 + topic.utf8.count + (run.o.qos > 0 ? 2 : 0) + payload.readableBytes
        out.writeInteger(UInt8(0x30 | (run.o.qos << 1)))
        varint(remaining, &out)
        mqttString(topic, &out)
        if run.o.qos > 0 {
            out.writeInteger(UInt16(truncatingIfNeeded: seq % 65535 + 1))
            unacked += 1
        }
        out.writeBuffer(&payload)
    }
}

final class Subscriber: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let index: Int, run: Run
    var channel: Channel?
    var subscribed = false
    var buffer = ByteBuffer()

    init(_ index: Int, _ run: Run) {
        self.index = index
        self.run = run
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var b = unwrapInboundIn(data)
        buffer.writeBuffer(&b)
        var acks = context.channel.allocator.buffer(capacity: 256)
        let t = now()
        var touched = false
        while let (type, body) = nextPacket(&buffer) {
            switch type {
            case 2:
                var s = ByteBuffer()
                s.writeInteger(UInt16(1))
                mqttString(run.o.filter ?? "\(run.o.prefix)/#", &s)
                s.writeInteger(run.o.qos)
                var p = ByteBuffer()
                p.writeInteger(UInt8(0x82))
                varint(s.readableBytes, &p)
                p.writeBuffer(&s)
                context.writeAndFlush(wrapOutboundOut(p), promise: nil)
            case 9: subscribed = true
            case 3:
                var body = body
                guard let tlen: UInt16 = body.readInteger() else { continue }
                body.moveReaderIndex(forwardBy: Int(tlen))
                let qos = run.o.qos
                if qos > 0, let pid: UInt16 = body.readInteger() {
                    acks.writeInteger(UInt8(0x40))
                    acks.writeInteger(UInt8(2))
                    acks.writeInteger(pid)
                }
                record(body, t)
                touched = true
            default: break
            }
        }
        if acks.readableBytes > 0 { context.writeAndFlush(wrapOutboundOut(acks), promise: nil) }
        if touched { for p in run.publishers { p.pump() } }
    }

    typealias OutboundOut = ByteBuffer

    func record(_ payload: ByteBuffer, _ t: UInt64) {
        var pub = 0, seq: Int64 = 0, sent: UInt64 = 0
        if run.o.json {
            guard let text = payload.getString(at: payload.readerIndex, length: payload.readableBytes),
                  let data = text.data(using: .utf8),
                  let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return }
            pub = (obj["pub"] as? NSNumber)?.intValue ?? 0
            seq = (obj["seq"] as? NSNumber)?.int64Value ?? 0
            sent = (obj["t"] as? NSNumber)?.uint64Value ?? 0
        } else {
            guard let p = payload.getInteger(at: payload.readerIndex, as: UInt32.self),
                  let s = payload.getInteger(at: payload.readerIndex + 4, as: UInt64.self),
                  let ts = payload.getInteger(at: payload.readerIndex + 12, as: UInt64.self) else { return }
            pub = Int(p)
            seq = Int64(s)
            sent = ts
        }
        guard pub < run.publishers.count else { return }
        run.received[index][pub] += 1
        if t >= run.windowStart, t < run.windowEnd { run.arrivedInWindow += 1 }
        if seq <= run.lastSeq[index][pub] { run.dup += 1 }
        run.lastSeq[index][pub] = max(run.lastSeq[index][pub], seq)
        if sent >= run.windowStart, sent < run.windowEnd {
            run.receivedInWindow += 1
            run.latencies.append(UInt32(min((t - sent) / 100, UInt64(UInt32.max))))
        }
    }
}

/// Splits one complete packet off the front of `b`: (type, body).
func nextPacket(_ b: inout ByteBuffer) -> (UInt8, ByteBuffer)? {
    let start = b.readerIndex
    guard let first: UInt8 = b.getInteger(at: start) else { return nil }
    var length = 0, mult = 1, i = start + 1
    while true {
        guard let byte: UInt8 = b.getInteger(at: i) else { return nil }
        length += Int(byte & 0x7F) * mult
        mult *= 128
        i += 1
        if byte & 0x80 == 0 { break }
    }
    guard b.readableBytes >= i - start + length else { return nil }
    b.moveReaderIndex(to: i)
    let body = b.readSlice(length: length)!
    if b.readableBytes == 0 { b.clear() }
    return (first >> 4, body)
}

final class Idle: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    nonisolated(unsafe) static var connected = 0
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var b = unwrapInboundIn(data)
        if b.readInteger(as: UInt8.self) == 0x20 { Idle.connected += 1 }
    }
}

// MARK: - Main

let o = Options(Array(CommandLine.arguments.dropFirst()))
let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
let loop = group.next()
let run = Run(o)

func connect(_ handler: ChannelHandler & Sendable, id: String, keepAlive: UInt16 = 60) throws -> Channel {
    let ch = try ClientBootstrap(group: loop)
        .channelOption(.socketOption(.tcp_nodelay), value: 1)
        .channelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(handler) } }
        .connect(host: o.host, port: o.port).wait()
    ch.writeAndFlush(connectPacket(id, keepAlive: keepAlive), promise: nil)
    return ch
}

/// One authenticated connection at a time on its slot: CONNECT, CONNACK, DISCONNECT, then the next.
final class Connector: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    nonisolated(unsafe) static var accepted = 0
    nonisolated(unsafe) static var refused = 0
    var buffer = ByteBuffer()
    let done: (Bool) -> Void
    init(done: @escaping (Bool) -> Void) { self.done = done }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var b = unwrapInboundIn(data)
        buffer.writeBuffer(&b)
        guard let (type, body) = nextPacket(&buffer), type == 2 else { return }
        let ok = body.getInteger(at: body.readerIndex + 1, as: UInt8.self) == 0
        if ok { Connector.accepted += 1 } else { Connector.refused += 1 }
        var bye = ByteBuffer()
        bye.writeBytes([0xE0, 0x00])
        context.writeAndFlush(NIOAny(bye)).whenComplete { _ in context.close(promise: nil) }
        done(ok)
    }
}

if o.connects > 0 {
    guard let path = o.tokens, let text = try? String(contentsOfFile: path, encoding: .utf8) else { Options.fail("--connects needs --tokens FILE (one device token per line)") }
    let pairs = text.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }.filter { $0.count == 2 }
    precondition(!pairs.isEmpty, "no DEVICE TOKEN lines in \(path)")
    /// The slots' shared state; touched on the one event loop only.
    // Resolved once: a connect by host name would resolve it again for every connection.
    let address = try SocketAddress.makeAddressResolvingHost(o.host, port: o.port)
    final class Connects: @unchecked Sendable {
        var next = 0, finished = 0
        let pairs: [[String]]
        let address: SocketAddress
        let allDone: EventLoopPromise<Void>
        init(_ pairs: [[String]], _ address: SocketAddress, _ allDone: EventLoopPromise<Void>) {
            self.pairs = pairs
            self.address = address
            self.allDone = allDone
        }

        func finish() {
            finished += 1
            if finished == o.connects { allDone.succeed(()) } else { start() }
        }

        func start() {
            guard next < o.connects else { return }
            let pair = pairs[next % pairs.count]
            next += 1
            let handler = Connector { _ in self.finish() }
            ClientBootstrap(group: loop)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(handler) } }
                .connect(to: address)
                .whenComplete { r in
                    switch r {
                    case .success(let ch): ch.writeAndFlush(connectPacket(pair[0], keepAlive: 60, username: pair[0], password: pair[1]), promise: nil)
                    case .failure:
                        run.errors += 1
                        self.finish()
                    }
                }
        }
    }
    let t0 = now()
    let allDone = loop.makePromise(of: Void.self)
    let connects = Connects(pairs, address, allDone)
    try loop.submit { for _ in 0..<min(o.concurrency, o.connects) { connects.start() } }.wait()
    try allDone.futureResult.wait()
    let seconds = Double(now() - t0) / 1e9
    let (accepted, refused) = try loop.submit { (Connector.accepted, Connector.refused) }.wait()
    print(String(format: "connects: %d in %.2f s = %.0f/s (accepted %d, refused %d, errors %d; %d distinct devices, %d at a time)",
                 o.connects, seconds, Double(o.connects) / seconds, accepted, refused, run.errors, pairs.count, o.concurrency))
    print(#"{"connects":\#(o.connects),"accepted":\#(accepted),"refused":\#(refused),"errors":\#(run.errors),"seconds":\#(seconds),"rate":\#(Double(o.connects) / seconds)}"#)
    exit(accepted == o.connects ? 0 : 2)
}

if o.idle > 0 {
    let before = o.serverPID.flatMap(rssKiB)
    let t0 = now()
    var channels: [Channel] = []
    for i in 0..<o.idle {
        do { channels.append(try connect(Idle(), id: "\(o.prefix)-idle-\(i)", keepAlive: 600)) } catch { run.errors += 1 }
    }
    let deadline = now() + 30_000_000_000
    while try loop.submit({ Idle.connected }).wait() < channels.count, now() < deadline { usleep(50_000) }
    let connectedCount = try loop.submit({ Idle.connected }).wait()
    let seconds = Double(now() - t0) / 1e9
    sleep(2)
    let after = o.serverPID.flatMap(rssKiB)
    var perConnection: Double?
    if let before, let after { perConnection = Double(after - before) * 1024 / Double(max(connectedCount, 1)) }
    print("idle: \(connectedCount)/\(o.idle) connected in \(String(format: "%.2f", seconds)) s")
    if let before, let after, let perConnection {
        print("server RSS \(before) KiB before, \(after) KiB connected: \(Int(perConnection)) bytes per connection")
    }
    print(#"{"idle":\#(o.idle),"connected":\#(connectedCount),"errors":\#(run.errors),"rss_before_kib":\#(before ?? -1),"rss_after_kib":\#(after ?? -1),"bytes_per_connection":\#(Int(perConnection ?? -1))}"#)
    for c in channels { c.close(promise: nil) }
    exit(connectedCount == o.idle ? 0 : 2)
}

run.received = Array(repeating: Array(repeating: 0, count: o.pubs), count: o.subs)
run.lastSeq = Array(repeating: Array(repeating: 0, count: o.pubs), count: o.subs)
for s in 0..<o.subs {
    let sub = Subscriber(s, run)
    run.subscribers.append(sub)
    sub.channel = try connect(sub, id: "\(o.prefix)-sub-\(s)")
}
let subDeadline = now() + 10_000_000_000
while try loop.submit({ run.subscribers.allSatisfy(\.subscribed) }).wait() == false, now() < subDeadline { usleep(10_000) }
if try loop.submit({ run.subscribers.allSatisfy(\.subscribed) }).wait() == false {
    FileHandle.standardError.write(Data("subscribers not subscribed within 10 s: is the server up?\n".utf8))
    exit(3)
}
for p in 0..<o.pubs {
    let pub = Publisher(p, run)
    run.publishers.append(pub)
    pub.channel = try connect(pub, id: "\(o.prefix)-pub-\(p)")
}
let cpuBefore = o.serverPID.flatMap { pid -> Double? in
    guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return nil }
    let f = s.split(separator: ")").last!.split(separator: " ")
    return (Double(f[11])! + Double(f[12])!) / 100
}
// A tick drives rate-limited publishers and restarts stalled windows.
let tick = loop.scheduleRepeatedTask(initialDelay: .milliseconds(1), delay: .milliseconds(1)) { _ in
    for p in run.publishers { p.pump() }
}
// (The window may be over already, on a machine busy enough: no wait then, not a negative one.)
let beforeEnd = now()
Thread.sleep(forTimeInterval: Double(run.windowEnd > beforeEnd ? run.windowEnd - beforeEnd : 0) / 1e9)
let cpuAfter = o.serverPID.flatMap { pid -> Double? in
    guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return nil }
    let f = s.split(separator: ")").last!.split(separator: " ")
    return (Double(f[11])! + Double(f[12])!) / 100
}
// Drain: wait for what was sent in the window to arrive (or be acknowledged).
let drainEnd = now() + UInt64(o.drain * 1e9)
while now() < drainEnd {
    let done = try loop.submit { () -> Bool in
        let expected = run.sentInWindow * o.subs
        return o.subs == 0 ? run.publishers.allSatisfy { $0.unacked == 0 } : run.receivedInWindow >= expected
    }.wait()
    if done { break }
    usleep(20_000)
}
tick.cancel()
let result = try loop.submit { () -> String in
    let expected = run.sentInWindow * o.subs
    run.lost = max(0, expected - run.receivedInWindow)
    let sorted = run.latencies.sorted()
    func pct(_ p: Double) -> Double { sorted.isEmpty ? 0 : Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]) / 10 }
    let recvRate = Double(run.arrivedInWindow) / o.duration
    let ackRate = Double(run.ackedInWindow) / o.duration
    let pubRate = Double(run.sentInWindow) / o.duration
    var cpu = "null"
    if let a = cpuAfter, let b = cpuBefore { cpu = String(format: "%.1f", (a - b) / (o.duration + o.warmup) * 100) }
    print("pubs \(o.pubs) subs \(o.subs) qos \(o.qos) size \(o.size) rate \(o.rate == 0 ? "max" : "\(o.rate)/s")")
    print(String(format: "sent %.0f/s, received %.0f/s, acknowledged %.0f/s; lost %d, duplicates %d", pubRate, recvRate, ackRate, run.lost, run.dup))
    print(String(format: "latency p50 %.0f us, p99 %.0f us, p99.9 %.0f us, max %.0f us", pct(0.5), pct(0.99), pct(0.999), pct(1.0)))
    return String(format: #"{"pubs":%d,"subs":%d,"qos":%d,"size":%d,"sent":%d,"received":%d,"expected":%d,"lost":%d,"dup":%d,"pub_rate":%.1f,"recv_rate":%.1f,"ack_rate":%.1f,"p50_us":%.1f,"p99_us":%.1f,"p999_us":%.1f,"max_us":%.1f,"#,
                  o.pubs, o.subs, Int(o.qos), o.size, run.sentInWindow, run.receivedInWindow, expected, run.lost, run.dup,
                  pubRate, recvRate, ackRate, pct(0.5), pct(0.99), pct(0.999), pct(1.0)) + #""server_cpu_pct":\#(cpu)}"#
}.wait()
print(result)
exit(0)
