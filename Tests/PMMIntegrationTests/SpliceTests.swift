import Foundation
import Glibc
import PMMRouter
import PMMSystem
import Testing

/// The router's splice paths: a busy at-most-once ingress pipe is looked at with tee(2) and runs of frames for
/// one consumer move into its pipe with splice(2) (`Router.peekIngress`); an at-least-once pipe's runs move
/// from its spool file (`Router.spliceBack`). Each test runs the real router with `--splice always`, so that
/// modest test traffic takes those paths, and checks what the consumers read, byte for byte (the exact
/// consumer prints every frame's sequence, in the order read).
@Suite(.enabled(if: isRoot, "services run as uid 0 so the test can play them all"), .serialized)
struct SpliceTests {
    /// `events` from `api` (one shard, so one ingress pipe) to `worker`, with 1 MiB pipes: a consumer's pipe
    /// must have room for every buffer a run may span (up to a whole look's 256 KiB) to take a run from a pipe.
    static func mesh(delivery: String = "at-most-once", replicas: Int = 1, buffer: Int = 10_000) -> String {
        faultMesh(delivery: delivery, buffer: buffer, replicas: replicas, policy: "shard", shards: 1)
            .replacingOccurrences(of: "overflow: block, maxRate: 0}", with: "overflow: block, maxRate: 0, pipeSize: 1MiB}")
    }

    static func spliced(_ h: MeshHarness) -> UInt64 { h.status?.splicedBytes ?? 0 }
    static func splicedFromSpools(_ h: MeshHarness) -> UInt64 { h.status?.splicedFromSpoolBytes ?? 0 }

    /// Starts the router with `router` arguments and an exact consumer on `worker-0`, then a producer sending
    /// `count` frames of `payload` bytes at `rate` per second.
    static func startStream(_ h: MeshHarness, router: [String], count: Int, payload: Int, rate: Int) throws -> (consumer: Process, producer: Process) {
        try h.startRouter(router)
        let consumer = try h.startExactConsumer("worker-0")
        try h.waitForHealthy(["worker-0"])
        let producer = try h.spawn(
            ["send", h.stateArgument, "--service", "api", "--data-type", "events", "--payload", String(repeating: "s", count: payload), "--count", String(count), "--rate", String(rate)],
            output: h.dir.path + "/producer.log")
        return (consumer, producer)
    }

    /// Why `received` is not frames 1 to its count in order: how many, and the first out of place.
    static func disorder(_ received: [UInt64]) -> String {
        "\(received.count) frames, first out of order at \(zip(received, 1...).first { $0.0 != UInt64($0.1) }.map { "\($0.1)" } ?? "-")"
    }

    /// Frames of every size arrive whole and in order; the small ones move pipe to pipe (at a rate the consumer
    /// keeps up with: a run moves only when its queue has nothing older to write), and a frame larger than one
    /// look (256 KiB) is read and written as before.
    @Test(arguments: ["at-most-once", "at-least-once"], [(100, 30_000, 20_000), (4000, 5_000, 5_000), (300_000, 40, 0)])
    func aBusyStream_arrivesWholeAndInOrder(delivery: String, frames: (payload: Int, count: Int, rate: Int)) throws {
        let (payload, count, rate) = frames
        let h = try MeshHarness(Self.mesh(delivery: delivery))
        try h.startRouter(["--splice", "always"])
        let consumer = try h.startExactConsumer("worker-0")
        defer { kill(consumer.processIdentifier, SIGKILL) }
        try h.waitForHealthy(["worker-0"])
        if rate > 0 {
            let sent = try h.send(
                "--service", "api", "--data-type", "events", "--payload", String(repeating: "b", count: payload), "--count", String(count), "--rate", String(rate))
            #expect(sent.status == 0, "send: \(sent.stderr)")
        } else {
            // Too large for an argument: written straight into the ingress pipe, each frame in one write.
            let fd = open(h.dir.root + "/api.events.s0.in", O_WRONLY)
            try #require(fd >= 0)
            for sequence in UInt64(1)...UInt64(count) {
                let frame = try HostileTests.eventFrame(sequence: sequence, payload: String(repeating: "b", count: payload))
                var offset = 0
                while offset < frame.count {
                    let n = frame[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                    try #require(n > 0)
                    offset += n
                }
            }
            close(fd)
        }
        try waitFor("every frame", timeout: 60) { h.exactReceived(["worker-0"]).count >= count }
        usleep(200_000)
        let received = h.exactReceived(["worker-0"])
        #expect(received == Array(1...UInt64(count)), "\(Self.disorder(received))")
        let moved = Self.spliced(h)
        print("FIGURES splice, \(delivery), \(count) frames of \(payload) B: \(moved) bytes moved without a copy")
        if payload < 256 << 10 { #expect(moved > 0, "the splice path was taken") }
        // An at-least-once pipe is never looked at: all it moves comes from its spool file.
        #expect(Self.splicedFromSpools(h) == (delivery == "at-least-once" ? moved : 0), "bytes moved from the spool, of \(moved)")
    }

    /// The consumer the frames go to is killed mid-stream: what it had not read (including runs spliced into
    /// its pipe) goes to the other instance; it loses at most the frame it was printing.
    @Test(arguments: ["at-most-once", "at-least-once"])
    func consumerKilledMidStream_losesOnlyWhatItRead(delivery: String) throws {
        let h = try MeshHarness(Self.mesh(delivery: delivery, replicas: 2))
        try h.startRouter(["--splice", "always"])
        let consumers = try ["worker-0", "worker-1"].map { try h.startExactConsumer($0) }
        defer { for p in consumers where p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        try h.waitForHealthy(["worker-0", "worker-1"])
        let count = 40_000
        let producer = try h.spawn(
            ["send", h.stateArgument, "--service", "api", "--data-type", "events", "--payload", String(repeating: "k", count: 1000), "--count", String(count), "--rate", "20000", "--shard-key", "one"],
            output: h.dir.path + "/producer.log")
        // One key: every frame goes to one instance until it dies, then to the other.
        try waitFor("frames flowing", timeout: 10) { h.exactReceived(["worker-0", "worker-1"]).count > 5_000 }
        let victim = h.exactReceived(["worker-0"]).count > h.exactReceived(["worker-1"]).count ? 0 : 1
        kill(consumers[victim].processIdentifier, SIGKILL)
        consumers[victim].waitUntilExit()
        producer.waitUntilExit()
        try waitFor("every frame", timeout: 30) { Set(h.exactReceived(["worker-0", "worker-1"])).count >= count - 1 }
        usleep(300_000)
        let received = h.exactReceived(["worker-0", "worker-1"])
        let unique = Set(received)
        let lost = (1...UInt64(count)).count { !unique.contains($0) }
        print("FIGURES splice, \(delivery), consumer SIGKILLed mid-stream: sent \(count), delivered \(unique.count), duplicated \(received.count - unique.count), lost \(lost), spliced \(Self.spliced(h)) bytes")
        #expect(lost <= 1, "\(lost) frames lost")
        #expect(Self.spliced(h) > 0, "the splice path was taken")
        #expect((h.status?.egress.first { $0.instance == "worker-\(victim)" }?.failures ?? 0) >= 1)
    }

    /// The consumer stops reading (SIGSTOP) mid-stream, with the router on its default `--splice auto`: a look
    /// whose run cannot move waits for the consumer's queue before the next (`Router.waitsForSplice`), at most
    /// 2 ms at a time (an at-least-once pipe keeps moving into its spool meanwhile), so the router stops for good
    /// neither then nor once the queue is full (200 frames) and the producer held back, and does not spin while
    /// it waits; when the consumer resumes, every frame arrives once and in order.
    @Test(arguments: ["at-most-once", "at-least-once"])
    func aConsumerThatStops_isWaitedFor_withoutSpinning_andGetsEveryFrame(delivery: String) throws {
        let h = try MeshHarness(Self.mesh(delivery: delivery, buffer: 200))
        let count = 30_000
        let (consumer, producer) = try Self.startStream(h, router: [], count: count, payload: 4000, rate: 10_000)
        defer { for p in [consumer, producer] where p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        try waitFor("frames flowing", timeout: 20) { h.exactReceived(["worker-0"]).count > 3_000 }
        kill(consumer.processIdentifier, SIGSTOP)
        usleep(300_000)  // its pipe, its queue (800 KB) and the ingress pipe fill in less than 0.1 s
        let router = try #require(h.router).processIdentifier
        let before = ProcessTable.cpuSeconds(of: router)
        usleep(1_000_000)
        let cpu = ProcessTable.cpuSeconds(of: router) - before
        kill(consumer.processIdentifier, SIGCONT)
        producer.waitUntilExit()
        try waitFor("every frame", timeout: 60) { h.exactReceived(["worker-0"]).count >= count }
        usleep(200_000)
        let received = h.exactReceived(["worker-0"])
        print("FIGURES splice, \(delivery), consumer stopped 1.3 s: router CPU \(cpu) s in the last second of it; \(received.count) frames, \(Self.spliced(h)) bytes moved pipe to pipe")
        #expect(received == Array(1...UInt64(count)), "\(Self.disorder(received))")
        #expect(cpu < 0.05, "the router used \(cpu) CPU seconds in a second while its only consumer was stopped")
        #expect(Self.spliced(h) > 0, "the splice path was taken")
    }

    /// The router is SIGKILLed while it moves at-least-once frames from its spool into a consumer's pipe, and
    /// started again: nothing is lost (frames in the pipe and not yet read are sent again: duplicates are
    /// allowed), and no frame arrives torn.
    @Test func routerKilledWhileSplicingFromTheSpool_losesNothing() throws {
        let h = try MeshHarness(Self.mesh(delivery: "at-least-once"))
        let count = 30_000
        let (consumer, producer) = try Self.startStream(h, router: ["--splice", "always"], count: count, payload: 1000, rate: 15_000)
        defer { for p in [consumer, producer] where p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        // (router.json is written every second.)
        try waitFor("frames moved from the spool", timeout: 10) { h.exactReceived(["worker-0"]).count > 5_000 && Self.spliced(h) > 0 }
        let spliced = Self.spliced(h)
        h.signalRouter(SIGKILL)
        h.router?.waitUntilExit()
        usleep(300_000)
        try h.startRouter(["--splice", "always"])
        producer.waitUntilExit()
        #expect(producer.terminationStatus == 0)
        try waitFor("every frame", timeout: 30) { Set(h.exactReceived(["worker-0"])).count >= count }
        usleep(300_000)
        let received = h.exactReceived(["worker-0"])
        let unique = Set(received)
        let lost = (1...UInt64(count)).count { !unique.contains($0) }
        print("FIGURES splice, at-least-once, router SIGKILLed mid-stream: sent \(count), delivered \(unique.count), duplicated \(received.count - unique.count), lost \(lost), spliced before the kill \(spliced) bytes")
        #expect(lost == 0, "\(lost) frames lost")
        #expect(received.allSatisfy { $0 >= 1 && $0 <= UInt64(count) }, "a frame arrived torn (a sequence out of range)")
        #expect(spliced > 0, "the splice path was taken before the kill")
    }

    /// Garbage after good frames in one write: the good frames arrive, the pipe is reset and dead-lettered,
    /// and frames written after it arrive too.
    @Test func garbageAfterGoodFrames_resetsThePipe_andTheFramesAroundItArrive() throws {
        let h = try MeshHarness(Self.mesh())
        try h.startRouter(["--splice", "always"])
        let consumer = try h.startExactConsumer("worker-0")
        defer { kill(consumer.processIdentifier, SIGKILL) }
        try h.waitForHealthy(["worker-0"])
        var bytes: [UInt8] = []
        for sequence in UInt64(1)...200 { bytes += try HostileTests.eventFrame(sequence: sequence, payload: String(repeating: "g", count: 500)) }
        try HostileTests.writeRaw(h, to: "api.events.s0.in", bytes + HostileTests.fourGiBGarbage)
        try waitFor("the reset counted", timeout: 5) { (HostileTests.ingress(h, "api.events.s0.in")?.resets ?? 0) >= 1 }
        try HostileTests.writeEvents(h, to: "api.events.s0.in", 201...300)
        try waitFor("the frames after it", timeout: 5) { h.exactReceived(["worker-0"]).count >= 300 }
        #expect(h.exactReceived(["worker-0"]) == Array(1...300))
        #expect(Self.spliced(h) > 0, "the splice path was taken")
        #expect(h.router?.isRunning == true)
    }
}
