// link-probe: one end of a pmm link, for the tests across network namespaces and the link benchmark.
//
// It runs a LinkManager the way a router does (a poll loop on the wake descriptor, a LinkOutbox holding every
// frame until acknowledged, resending after each reconnect) and sends or receives numbered frames:
//
//   link-probe --node a --listen 10.250.0.1:7400 --peer b=10.250.0.2:7400 --nodes a,b \
//              [--ca ca.pem --cert a.pem --key a-key.pem] [--idle-timeout-ms 5000] [--heartbeat-ms 1000]
//              [--send N --to b --size 128 [--rate FRAMES_PER_S]]    # sender
//              [--expect N]                                          # receiver
//              [--time-limit SECONDS]
//
// Each frame is a real pipe frame (a varint length, then a pmm.v1.Envelope of --size bytes whose `sequence` is
// the frame's number 0..<N). Lines on stdout: `listening port=P`, `connected peer=…`, `disconnected peer=…`,
// `refused …`, `progress acked=…`; a sender ends with `sent-done frames=N seconds=S fps=F disconnects=D` once
// every frame is acknowledged, a receiver with `received distinct=N duplicates=D` once it has all N (it then
// lingers a second so its acknowledgements go out). Exit 0 on success, 1 on an error, 2 on the time limit.
import Foundation
import Logging
import PMMLink
import PMMWire

func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("link-probe: error: \(message)\n".utf8))
    exit(1)
}

var options: [String: String] = [:]
var peers: [String: LinkAddress] = [:]
var arguments = CommandLine.arguments.dropFirst()
while let name = arguments.popFirst() {
    guard name.hasPrefix("--"), let value = arguments.popFirst() else { fail("expected --option value, got \(name)") }
    if name == "--peer" {
        let parts = value.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, let address = LinkAddress(parts[1]) else { fail("--peer NAME=HOST:PORT, got \(value)") }
        peers[parts[0]] = address
    } else {
        options[String(name.dropFirst(2))] = value
    }
}
guard let node = options["node"] else { fail("--node is required") }
guard let listen = LinkAddress(options["listen"] ?? "127.0.0.1:0") else { fail("--listen HOST:PORT") }
let nodes = Set(
    (options["nodes"] ?? ([node] + peers.keys).joined(separator: ",")).split(separator: ",").map(String.init))
var configuration = LinkConfiguration(
    node: node, listen: listen, peers: peers, knownNodes: nodes, revision: 1,
    tls: options["ca"].map { LinkTLS(ca: $0, certificate: options["cert"] ?? "", key: options["key"] ?? "") })
if let ms = options["idle-timeout-ms"].flatMap(Int.init) { configuration.idleTimeout = .milliseconds(ms) }
if let ms = options["heartbeat-ms"].flatMap(Int.init) { configuration.heartbeatInterval = .milliseconds(ms) }
if let bytes = options["window"].flatMap(Int.init) { configuration.windowBytes = bytes }

var logger = Logger(label: "link-probe")
logger.logLevel = options["verbose"] != nil ? .debug : .warning
let manager: LinkManager
do {
    manager = try LinkManager(configuration: configuration, logger: logger)
} catch {
    fail(error.description)
}
say("listening port=\(manager.listeningPort)")

let total = options["send"].flatMap(Int.init) ?? 0
let expect = options["expect"].flatMap(Int.init) ?? 0
let size = options["size"].flatMap(Int.init) ?? 128
let rate = options["rate"].flatMap(Double.init) ?? 0
let to = options["to"] ?? peers.keys.sorted().first ?? ""
let target = options["target"] ?? "collector-\(to)-0"
let timeLimit = options["time-limit"].flatMap(Double.init) ?? 120
guard size >= 16 else { fail("--size must be at least 16") }

/// A pipe frame whose envelope (field 5 sequence, field 7 payload padding) is `size` bytes.
func frame(_ number: Int) -> [UInt8] {
    var envelope: [UInt8] = [0x28]
    Varint.encode(UInt64(number), into: &envelope)
    var pad = size - envelope.count - 2
    while pad > 0 && envelope.count + 1 + Varint.size(of: UInt64(pad)) + pad > size { pad -= 1 }
    envelope.append(0x3a)
    Varint.encode(UInt64(pad), into: &envelope)
    envelope.append(contentsOf: repeatElement(0x61, count: pad))
    var bytes: [UInt8] = []
    bytes.reserveCapacity(envelope.count + 3)
    Varint.encode(UInt64(envelope.count), into: &bytes)
    bytes.append(contentsOf: envelope)
    return bytes
}

/// The frame's number, read back from its envelope.
func number(of raw: UnsafeRawBufferPointer) -> Int? {
    guard case .value(_, let prefix) = Varint.decode(raw, at: 0), raw.count > prefix + 1, raw[prefix] == 0x28,
        case .value(let n, _) = Varint.decode(raw, at: prefix + 1)
    else { return nil }
    return Int(n)
}

let clock = ContinuousClock()
let started = clock.now
var outbox = LinkOutbox()
var generated = 0
var connected = false
var disconnects = 0
var sendStart: ContinuousClock.Instant?
var seen = [UInt64](repeating: 0, count: max(expect, 1) / 64 + 1)
var distinct = 0
var duplicates = 0
var doneAt: ContinuousClock.Instant?
var lastProgress = clock.now
// Bound what the probe itself holds: a router holds its spool on disk; the probe generates lazily.
let holdLimit = max(4096, 2 * configuration.windowBytes / max(size, 1))
var poller = pollfd(fd: manager.wakeDescriptor, events: Int16(POLLIN), revents: 0)

while true {
    _ = poll(&poller, 1, 5)
    for event in manager.events() {
        switch event {
        case .connected(let peer, let info):
            connected = true
            if peer == to { outbox.connected(resumeAfter: info.resumeAfter) }
            if sendStart == nil { sendStart = clock.now }
            say("connected peer=\(peer) resume=\(info.resumeAfter) revision=\(info.revision)")
        case .disconnected(let peer, let reason):
            connected = false
            disconnects += 1
            say("disconnected peer=\(peer) reason=\(reason)")
        case .refused(let peer, let remote, let reason):
            say("refused peer=\(peer ?? "?") remote=\(remote) reason=\(reason)")
        case .acknowledged(let peer, let upTo):
            if peer == to { outbox.acknowledged(upTo: upTo) }
        case .received(let peer, let batch):
            for i in batch.frames.indices {
                guard let n = batch.frames.withFrameBytes(at: i, number(of:)), n < expect else {
                    fail("a frame not of this run: \(batch.frames[i].bytes.prefix(8))")
                }
                if seen[n / 64] & (1 << UInt64(n % 64)) != 0 {
                    duplicates += 1
                } else {
                    seen[n / 64] |= 1 << UInt64(n % 64)
                    distinct += 1
                }
            }
            manager.acknowledge(peer: peer, stream: batch.stream, upTo: batch.lastSequence)
        case .health: break
        }
    }
    let now = clock.now
    if total > 0 {
        var allowed = total
        if rate > 0 {
            // Paced from the first connection on.
            allowed = 0
            if let sendStart {
                let elapsed =
                    Double((now - sendStart).components.attoseconds) / 1e18
                    + Double((now - sendStart).components.seconds)
                allowed = min(total, Int(elapsed * rate) + 1)
            }
        }
        while generated < allowed && outbox.count < holdLimit {
            outbox.append(LinkFrame(target: target, bytes: frame(generated)))
            generated += 1
        }
        if connected && !outbox.unsent.isEmpty {
            outbox.sent(manager.send(to: to, frames: outbox.unsent))
        }
        if generated == total && outbox.isEmpty {
            let seconds =
                Double((now - (sendStart ?? started)).components.attoseconds) / 1e18
                + Double((now - (sendStart ?? started)).components.seconds)
            say(
                "sent-done frames=\(total) seconds=\(seconds) fps=\(Int(Double(total) / seconds)) disconnects=\(disconnects)"
            )
            manager.stop()
            exit(0)
        }
    }
    if expect > 0 && distinct == expect && doneAt == nil {
        doneAt = now
        say("received distinct=\(distinct) duplicates=\(duplicates)")
    }
    if let doneAt, now - doneAt > .seconds(1) {
        manager.stop()
        exit(0)
    }
    if now - lastProgress > .milliseconds(500) {
        lastProgress = now
        if total > 0 { say("progress acked=\(generated - outbox.count) generated=\(generated)") }
        if expect > 0 { say("progress distinct=\(distinct) duplicates=\(duplicates)") }
    }
    if now - started > .seconds(timeLimit) {
        say("time-limit acked=\(generated - outbox.count) distinct=\(distinct)")
        exit(2)
    }
}
