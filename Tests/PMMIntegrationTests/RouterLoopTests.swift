import Foundation
import Glibc
import Logging
import PMMCore
@testable import PMMRouter
import PMMRouterCore
import PMMSpecYAML
import PMMSystem
import PMMWire
import SwiftProtobuf
import SystemPackage
import Testing

/// The router's loop, one step at a time, in the test process: a `Router` over real FIFOs of an applied mesh,
/// driven through the steps a pass of `run` takes (readiness, `serviceAttention`, `flushAll`, `waitTimeout`), so
/// that an order of events the process meets only now and then is met every time.
@Suite(.enabled(if: isRoot, "services run as uid 0 so the test can play them all"), .serialized)
struct RouterLoopTests {
    /// An ingress pipe that waits for its consumer's queue (a look whose run could not move: `waitForQueue`)
    /// is switched off in epoll when it becomes readable meanwhile. When the same pass's `flushAll` writes that
    /// queue out, the wait is over: the next wait must not sleep, or the pipe (full, its producer blocked)
    /// stays unread until the loop's 100 ms timeout. `pmm bench --size 4000` met that several times a run
    /// (router epoll_wait timing out at 100 ms, producer and consumer asleep: 1.0–2.4 s for what takes 0.6).
    @Test func aWaitForAQueueThatEndsInTheFlush_doesNotSleepUntilTheTimeout() throws {
        let loop = try Loop(splice: .never)  // frames are read and queued; the wait is set below as a refused look sets it
        let (router, writer, slot, egress) = (loop.router, loop.writer, loop.slot, loop.egress)
        func send(_ sequences: ClosedRange<UInt64>) throws {
            for sequence in sequences {
                let frame = try Loop.frame(sequence, payload: 4000)
                #expect(write(writer, frame, frame.count) == frame.count)
            }
        }
        let id = router.core.ingress[slot].id

        // Frames routed into the consumer's queue, not written yet; the pipe waits for that queue.
        try send(1...10)
        router.readIngress(slot, budget: 1)
        #expect(router.core.egress[egress].queue.unwrittenBytes > 0)
        router.ingressFDs[id]?.waitsFor = (egress, monotonicNanos())
        // More frames: the pipe is readable while it waits, so its readiness is switched off.
        try send(11...20)
        router.ingressReady(id)
        #expect(router.ingressFDs[id]?.armed == false)
        // The rest of the pass: the wait still holds when attention is looked at, then the flush writes the
        // queue out, then housekeeping.
        router.serviceAttention()
        router.flushAll()
        router.housekeeping(now: monotonicNanos())
        #expect(router.core.egress[egress].queue.unwrittenBytes == 0)
        // The wait is over and the pipe holds frames: the next wait returns at once, and the pass after it
        // reads the pipe again.
        #expect(router.waitTimeout(now: monotonicNanos()) == 0)
        router.serviceAttention()
        #expect(router.ingressFDs[id]?.armed == true)
    }

    /// Random traffic through the loop, a pass at a time (each with a zero epoll timeout): a producer writing
    /// frames of several sizes as its pipe takes them, a consumer reading random amounts or not at all for a
    /// while, and a reload every 1,000 passes. After every pass (and every reload), if the loop would sleep,
    /// nothing it could do may be left without something to wake it: no ingress pipe holding bytes the core
    /// wants read, out of epoll and not waiting for a queue; no queued frames for an empty egress pipe that is
    /// out of epoll, unless a timer comes within 2 ms. Then every frame arrives once, in order.
    @Test(arguments: [
        (UInt64(1), SpliceMode.always, "at-most-once"), (2, .always, "at-most-once"), (3, .auto, "at-most-once"), (4, .never, "at-most-once"),
        (5, .always, "at-least-once"), (6, .auto, "at-least-once"),
    ])
    func randomTraffic_theLoopNeverSleepsWithWorkItCouldDo(seed: UInt64, splice: SpliceMode, delivery: String) throws {
        let loop = try Loop(splice: splice, delivery: delivery)
        let router = loop.router
        router.startLoop(signals: nil)
        var random = SeededRandom(seed: seed)
        let sizes = [60, 500, 4000, 12_000]
        var outbox: [UInt8] = []
        var inbox = MessageBuffer(maximumSize: 1 << 20)
        var sent: UInt64 = 0
        var received: [UInt64] = []
        var violations: [String] = []
        var scratch = [UInt8](repeating: 0, count: 1 << 20)

        func produce() {
            guard !outbox.isEmpty else { return }
            let n = outbox.withUnsafeBytes { write(loop.writer, $0.baseAddress, $0.count) }
            if n > 0 { outbox.removeFirst(n) }
        }
        func consume(upTo limit: Int) throws {
            let n = scratch.withUnsafeMutableBytes { read(loop.reader, $0.baseAddress, min(limit, $0.count)) }
            guard n > 0 else { return }
            inbox.append(scratch[0..<n])
            while let body = try inbox.next() {
                guard let envelope = try? Envelope(serializedBytes: body) else {
                    violations.append("the consumer read bytes that are not an envelope")
                    continue
                }
                received.append(envelope.sequence)
            }
        }
        func check(_ step: Int) {
            let now = monotonicNanos()
            let wait = router.waitTimeout(now: now)
            guard wait > 0 else { return }
            let (slot, egress) = (loop.slot, loop.egress)
            let id = router.core.ingress[slot].id
            if let held = router.ingressFDs[id], !held.armed, unreadBytes(held.fd.rawValue) > 0,
                router.inPlace({ $0.wantsToRead(slot, now: now) }), !router.waitsForSplice(id, now: now)
            {
                violations.append("step \(step): the ingress pipe holds \(unreadBytes(held.fd.rawValue)) bytes the core wants read, is out of epoll, waits for nothing, and the loop would sleep \(wait) ms")
            }
            let egressID = router.core.egress[egress].id
            if let held = router.egressFDs[egressID], !held.armed, unreadBytes(held.fd.rawValue) == 0,
                router.core.egress[egress].queue.unwrittenBytes > 0, wait > 2
            {
                violations.append("step \(step): \(router.core.egress[egress].queue.unwrittenBytes) bytes are queued for an empty pipe out of epoll, and the loop would sleep \(wait) ms")
            }
        }

        for step in 0..<4000 {
            switch random.next() % 4 {
            case 0:
                for _ in 0..<(1 + random.next() % 24) {
                    sent += 1
                    outbox += try Loop.frame(sent, payload: sizes[Int(random.next() % UInt64(sizes.count))])
                }
            case 1:
                try consume(upTo: 1 + Int(random.next() % (256 << 10)))
            default:
                break
            }
            produce()
            _ = router.pass(timeout: 0, signals: nil)
            check(step)
            if step % 1000 == 999 {
                // A reload in the middle of the traffic (rescans the pipes, ends every wait).
                loop.reload(revision: 2 + step / 1000)
                #expect(router.core.layout.revision == 2 + step / 1000)
                check(step)
            }
        }
        let deadline = monotonicNanos() + 20_000_000_000
        while (received.count < Int(sent) || !outbox.isEmpty) && monotonicNanos() < deadline {
            produce()
            _ = router.pass(timeout: 1, signals: nil)
            try consume(upTo: 1 << 20)
        }
        #expect(violations.isEmpty, "\(violations.prefix(5))")
        #expect(sent > 1000)
        if delivery == "at-least-once" {
            // The frames went through the spool.
            let spools = try FileManager.default.contentsOfDirectory(atPath: loop.mesh.dir.path + "/spool")
            #expect(spools.contains { $0.hasSuffix(".spool") }, "\(spools)")
        }
        #expect(received == Array(1...sent), "\(received.count) of \(sent) frames, the first out of place at \(zip(received, 1...).first { $0.0 != $0.1 }.map { "\($0.1)" } ?? "-")")
    }

    /// A `Router` over the FIFOs of an applied mesh (`events` from `api`, one shard, to `worker-0`, 1 MiB
    /// pipes; at-least-once spools in the mesh's directory), with the test holding the consumer's end (read,
    /// nonblocking) and the producer's (write, nonblocking).
    final class Loop {
        let mesh: MeshHarness
        let router: Router
        let reader: Int32
        let writer: Int32
        let spec: MeshSpec
        let ingressName: String
        let egressName: String
        /// The slots of the two pipes (looked up by name: a reload may move them).
        var slot: Int { router.core.ingress.firstIndex { $0.name == ingressName }! }
        var egress: Int { router.core.egress.firstIndex { $0.name == egressName }! }

        init(splice: SpliceMode, delivery: String = "at-most-once") throws {
            mesh = try MeshHarness(SpliceTests.mesh(delivery: delivery, replicas: 1))
            let text = try String(contentsOfFile: mesh.dir.specPath, encoding: .utf8)
            let loaded = SpecLoader.loadAndValidate(yaml: text, file: "mesh.yaml")
            spec = try #require(loaded.spec, "\(loaded.diagnostics.map(\.summary))")
            let layout = RouterLayout(spec: spec, revision: 1)
            egressName = try #require(layout.egress.first { $0.dataType == "events" }?.name)
            ingressName = try #require(layout.ingress.first { $0.dataType == "events" }?.name)
            // The consumer's end first, so that the router opens the pipe for writing.
            reader = open(mesh.dir.root + "/" + egressName, O_RDONLY | O_NONBLOCK)
            try #require(reader >= 0)
            var options = RouterOptions()
            options.splice = splice
            options.spoolDirectory = mesh.dir.path + "/spool"
            router = try Router(layout: layout, options: options, logger: Logger(label: "loop-test"))
            writer = open(mesh.dir.root + "/" + ingressName, O_WRONLY | O_NONBLOCK)
            try #require(writer >= 0)
            try #require(router.core.ingress.contains { $0.name == ingressName } && router.core.egress.contains { $0.name == egressName })
            router.housekeeping(now: monotonicNanos())  // the timers a first pass sets
        }

        /// A SIGHUP's reload, between two passes as in `run`, of the same spec as `revision`.
        func reload(revision: Int) {
            router.reloadLayout { RouterLayout(spec: spec, revision: revision) }
        }

        deinit {
            close(reader)
            close(writer)
        }

        /// A framed envelope of `events` from `api` with `payload` bytes.
        static func frame(_ sequence: UInt64, payload: Int) throws -> [UInt8] {
            var envelope = Envelope()
            envelope.dataType = "events"
            envelope.source = "api"
            envelope.sequence = sequence
            envelope.payload = Data(repeating: UInt8(truncatingIfNeeded: sequence), count: payload)
            return try envelope.framed()
        }
    }
}

/// SplitMix64: the same numbers for the same seed.
struct SeededRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
