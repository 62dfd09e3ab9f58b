import Foundation
import Glibc
import PMMCore
import PMMRouter
import PMMSystem
import PMMWire
import Testing

/// A consumer that never holds a frame it has read whole without printing it: it reads the varint length
/// byte by byte, then exactly the frame, prints the envelope's sequence (field 5) and flushes. So when it is
/// killed, every frame it took from the pipe is in its output, except at most the one being printed.
let byteExactConsumer = #"""
import os, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDONLY)
out = sys.stdout
class Closed(Exception): pass
def read_exactly(n):
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise Closed()
        data += chunk
    return data
def varint(data, i):
    shift = value = 0
    while True:
        b = data[i]; i += 1
        value |= (b & 0x7f) << shift
        if b < 0x80: return value, i
        shift += 7
while True:
    try:
        length = shift = 0
        while True:
            b = read_exactly(1)
            length |= (b[0] & 0x7f) << shift
            if b[0] < 0x80: break
            shift += 7
        body = read_exactly(length)
    except Closed:
        # The router went away (a frame it had half written dies with it): wait for the next one.
        os.close(fd)
        fd = os.open(path, os.O_RDONLY)
        continue
    i = 0; sequence = 0
    while i < len(body):
        tag, i = varint(body, i)
        kind = tag & 7
        if kind == 0:
            value, i = varint(body, i)
            if tag >> 3 == 5: sequence = value
        elif kind == 2:
            n, i = varint(body, i); i += n
        elif kind == 1: i += 8
        elif kind == 5: i += 4
    out.write("%d\n" % sequence); out.flush()
"""#

/// A mesh with at-least-once `events` from `api` (2 shards) to `worker` (2 replicas).
func faultMesh(
    delivery: String = "at-least-once", buffer: Int = 10_000, overflow: String = "block", maxRate: Int = 0, burst: Int = 0, replicas: Int = 2,
    policy: String = "round-robin", shards: Int = 2
) -> String {
    """
    apiVersion: pmm/v1
    kind: Mesh
    name: faults
    root: ROOT
    dataTypes:
      events:
        shards: \(shards)
        qos: {delivery: \(delivery), buffer: \(buffer), overflow: \(overflow), maxRate: \(maxRate)\(burst > 0 ? ", burst: \(burst)" : "")}
      other:
        qos: {delivery: at-most-once}
    services:
      api:
        uid: 0
        produces: [{dataType: events}, {dataType: other}]
      worker:
        uid: 0
        replicas: \(replicas)
        consumes: [{dataType: events}]
    routes:
      events:
        policy: \(policy)
        targets: [{service: worker}]

    """
}

extension MeshHarness {
    /// Starts the byte-exact consumer on `instance`'s pipe of `dataType`, appending sequences to its file.
    func startExactConsumer(_ instance: String, dataType: String = "events") throws -> Process {
        let script = dir.path + "/consumer.py"
        if !FileManager.default.fileExists(atPath: script) { dir.write(byteExactConsumer, to: "consumer.py") }
        let output = dir.path + "/\(instance).\(dataType).seq"
        if !FileManager.default.fileExists(atPath: output) { _ = FileManager.default.createFile(atPath: output, contents: nil) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [script, dir.root + "/" + Naming.egress(instance: instance, dataType: dataType)]
        let handle = FileHandle(forWritingAtPath: output)!
        handle.seekToEndOfFile()
        process.standardOutput = handle
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// Sequences every exact consumer of `dataType` printed, with repeats.
    func exactReceived(_ instances: [String], dataType: String = "events") -> [UInt64] {
        instances.flatMap { instance -> [UInt64] in
            let text = (try? String(contentsOfFile: dir.path + "/\(instance).\(dataType).seq", encoding: .utf8)) ?? ""
            return text.split(separator: "\n").compactMap { UInt64($0) }
        }
    }

    /// Waits (at most 10 s) until ingress `pipe` holds `bytes` unread, asking through a descriptor opened and
    /// closed each time (one held open would keep the pipe's bytes alive by itself).
    func waitForUnread(in pipe: String, atLeast bytes: Int) {
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            let fd = open(dir.root + "/" + pipe, O_WRONLY | O_NONBLOCK)
            let unread = fd >= 0 ? unreadBytes(fd) : 0
            if fd >= 0 { close(fd) }
            if unread >= bytes { return }
            usleep(10_000)
        }
    }

    func waitForHealthy(_ instances: [String]) throws {
        try waitFor("\(instances) healthy") {
            let healthy = Set(self.status?.egress.filter(\.healthy).map(\.instance) ?? [])
            return Set(instances).isSubset(of: healthy)
        }
    }
}

/// Faults with real processes, each test asserting counts: sent, delivered, duplicated, lost.
@Suite(.enabled(if: isRoot, "services run as uid 0 so the test can play them all"), .serialized)
struct FaultTests {
    /// Prints the figures for the note on the issue, and checks them.
    func account(_ name: String, sent: Int, received: [UInt64], allowedLoss: Int = 0) {
        let unique = Set(received)
        let lost = (1...UInt64(sent)).count { !unique.contains($0) }
        let duplicates = received.count - unique.count
        print("FIGURES \(name): sent \(sent), delivered \(unique.count), duplicated \(duplicates), lost \(lost)")
        #expect(lost <= allowedLoss, "\(name): \(lost) frames lost")
    }

    @Test func consumerKilledMidStream_andRestarted_losesNothingItHadNotReadWhole() throws {
        let h = try MeshHarness(faultMesh())
        try h.startRouter()
        var victim = try h.startExactConsumer("worker-0")
        let survivor = try h.startExactConsumer("worker-1")
        defer { for p in [victim, survivor] where p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        try h.waitForHealthy(["worker-0", "worker-1"])
        let producer = try h.spawn(
            ["send", h.stateArgument, "--service", "api", "--data-type", "events", "--payload", String(repeating: "e", count: 200), "--count", "20000", "--rate", "8000"],
            output: h.dir.path + "/producer.log")
        usleep(800_000)
        kill(victim.processIdentifier, SIGKILL)
        victim.waitUntilExit()
        usleep(700_000)
        let beforeRestart = h.exactReceived(["worker-0"]).count
        victim = try h.startExactConsumer("worker-0")
        producer.waitUntilExit()
        try waitFor("every frame", timeout: 30) { Set(h.exactReceived(["worker-0", "worker-1"])).count >= 19_999 }
        usleep(300_000)
        account("consumer SIGKILLed and restarted", sent: 20_000, received: h.exactReceived(["worker-0", "worker-1"]), allowedLoss: 1)
        #expect(h.exactReceived(["worker-0"]).count > beforeRestart, "the restarted consumer gets traffic again")
        #expect((h.status?.egress.first { $0.instance == "worker-0" }?.failures ?? 0) >= 1)
    }

    @Test func routerKilledMidStream_andRestarted_atLeastOnce_losesNothing() throws {
        let h = try MeshHarness(faultMesh())
        try h.startRouter()
        let consumers = try ["worker-0", "worker-1"].map { try h.startExactConsumer($0) }
        defer { for p in consumers where p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        try h.waitForHealthy(["worker-0", "worker-1"])
        let producer = try h.spawn(
            ["send", h.stateArgument, "--service", "api", "--data-type", "events", "--payload", String(repeating: "r", count: 100), "--count", "30000", "--rate", "10000"],
            output: h.dir.path + "/producer.log")
        usleep(1_000_000)
        h.signalRouter(SIGKILL)
        h.router?.waitUntilExit()
        usleep(500_000)
        try h.startRouter()
        producer.waitUntilExit()
        #expect(producer.terminationStatus == 0)
        try waitFor("every frame", timeout: 30) { Set(h.exactReceived(["worker-0", "worker-1"])).count >= 30_000 }
        usleep(300_000)
        account("router SIGKILLed and restarted (at-least-once)", sent: 30_000, received: h.exactReceived(["worker-0", "worker-1"]))
        let replayed = h.status.map { $0.ingress.reduce(0) { $0 + $1.frames } } ?? 0
        print("FIGURES router restart: frames the new router took in \(replayed)")
    }

    /// A consumer slower than its producer keeps the router at its memory limit for long: the router's peak
    /// memory stays near the limit. (Counting only the frames still held, 240 MB through a 32 MiB limit peaked
    /// at 303 MiB of RSS; counting the queue's whole buffer, 108 MiB, 65 above idle: the buffer, one array,
    /// was resident twice while it grew by copying. In segments that never grow, 77 MiB, 34 above idle.)
    @Test func aSlowConsumer_keepsTheRoutersMemoryNearItsLimit() throws {
        let h = try MeshHarness("""
            apiVersion: pmm/v1
            kind: Mesh
            name: slow
            root: ROOT
            dataTypes:
              blob:
                shards: 1
                qos: {buffer: 1000000}
            services:
              api: {uid: 0, produces: [{dataType: blob}]}
              sink: {uid: 0, consumes: [{dataType: blob}]}
            routes:
              blob: {targets: [{service: sink}]}

            """)
        let limit = 32 << 20
        try h.startRouter(["--memory-limit", String(limit)])
        let pid = try #require(h.router?.processIdentifier)
        func kibibytes(_ field: String) -> Int {
            let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
            let line = text.split(separator: "\n").first { $0.hasPrefix(field + ":") } ?? ""
            return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
        }
        h.dir.write(
            "import os, sys, time\nfd = os.open(sys.argv[1], os.O_RDONLY)\nwhile True:\n    b = os.read(fd, 65536)\n"
                + "    if not b: break\n    time.sleep(0.001)\n", to: "slow.py")
        let consumer = Process()
        consumer.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        consumer.arguments = [h.dir.path + "/slow.py", h.dir.root + "/sink-0.blob.out"]
        consumer.standardOutput = FileHandle.nullDevice
        try consumer.run()
        defer { if consumer.isRunning { kill(consumer.processIdentifier, SIGKILL) } }
        try h.waitForHealthy(["sink-0"])
        let idle = kibibytes("VmRSS")
        let count = 60_000
        let sent = try h.send("--service", "api", "--data-type", "blob", "--payload", String(repeating: "x", count: 4000), "--count", String(count))
        #expect(sent.status == 0, "send: \(sent.stderr)")
        try waitFor("the slow consumer to read everything", timeout: 60) { (h.status?.egress.first?.frames ?? 0) >= UInt64(count) }
        let peak = kibibytes("VmHWM")
        print("FIGURES slow consumer, memory limit \(limit >> 20) MiB: \(count) frames of 4 KB, router RSS \(idle >> 10) MiB idle, peak \(peak >> 10) MiB")
        #expect((peak - idle) << 10 <= limit * 3 / 2, "peak \(peak) KiB, idle \(idle) KiB: more than 1.5× the limit above idle")
    }

    @Test func everyConsumerDown_framesWait_thenFlow() throws {
        let h = try MeshHarness(faultMesh())
        try h.startRouter()
        try h.send("--service", "api", "--data-type", "events", "--payload", "w", "--count", "500")
        try waitFor("500 waiting") { (h.status?.waiting["events"] ?? 0) == 500 }
        let consumer = try h.startExactConsumer("worker-1")
        defer { kill(consumer.processIdentifier, SIGKILL) }
        try waitFor("delivery") { Set(h.exactReceived(["worker-1"])).count == 500 }
        account("every consumer down, then one back", sent: 500, received: h.exactReceived(["worker-1"]))
    }

    @Test func everyConsumerDown_withDeadLetterOverflow_keepsTheRestInDeadLetters() throws {
        let h = try MeshHarness(faultMesh(buffer: 10, overflow: "dead-letter"))
        try h.startRouter()
        try h.send("--service", "api", "--data-type", "events", "--payload", "d", "--count", "50")
        try waitFor("40 dead letters") { (h.status?.deadLetters["no-healthy-instance"] ?? 0) == 40 }
        #expect(h.status?.waiting["events"] == 10)
        let list = try pmm("deadletters", "list", h.stateArgument, "-o", "json")
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as? [[String: Any]])
        #expect(rows.count == 40 && rows.allSatisfy { $0["reason"] as? String == "no-healthy-instance" })
        let consumer = try h.startExactConsumer("worker-0")
        defer { kill(consumer.processIdentifier, SIGKILL) }
        try waitFor("the 10 waiting") { Set(h.exactReceived(["worker-0"])).count == 10 }
        let replay = try pmm("deadletters", "replay", h.stateArgument)
        #expect(replay.status == 0 && replay.stdout.contains("Replayed 40 dead letters"), "\(replay.stderr)")
        try waitFor("the replayed 40") { Set(h.exactReceived(["worker-0"])).count == 50 }
        account("dead letters replayed", sent: 50, received: h.exactReceived(["worker-0"]))
        #expect(try pmm("deadletters", "list", h.stateArgument).stdout.contains("No dead letters."))
    }

    @Test func producerOverItsRate_isHeldBack_nothingDropped() throws {
        let h = try MeshHarness(faultMesh(maxRate: 1000, burst: 100))
        try h.startRouter()
        let consumer = try h.startExactConsumer("worker-0")
        defer { kill(consumer.processIdentifier, SIGKILL) }
        try h.waitForHealthy(["worker-0"])
        let started = Date()
        try h.send("--service", "api", "--data-type", "events", "--payload", "r", "--count", "3000")
        try waitFor("every frame") { Set(h.exactReceived(["worker-0", "worker-1"])).count == 3000 }
        let elapsed = Date().timeIntervalSince(started)
        print("FIGURES producer over its rate: 3000 frames at maxRate 1000/s, burst 100, took \(String(format: "%.2f", elapsed)) s")
        #expect(elapsed > 2.5, "held to about 1000/s: \(elapsed) s")
        account("producer over its rate", sent: 3000, received: h.exactReceived(["worker-0", "worker-1"]))
    }

    @Test func slowConsumer_stalls_othersKeepTheirRate_andItReturns() throws {
        let h = try MeshHarness(faultMesh())
        try h.startRouter(["--stall-timeout", "0.5"])
        let slow = try h.startExactConsumer("worker-0")
        let fast = try h.startExactConsumer("worker-1")
        defer { for p in [slow, fast] { kill(p.processIdentifier, SIGCONT); kill(p.processIdentifier, SIGKILL) } }
        try h.waitForHealthy(["worker-0", "worker-1"])
        kill(slow.processIdentifier, SIGSTOP)
        let started = Date()
        try h.send("--service", "api", "--data-type", "events", "--payload", String(repeating: "s", count: 1000), "--count", "20000")
        let sendTime = Date().timeIntervalSince(started)
        try waitFor("worker-0 stalled") { h.status?.egress.first { $0.instance == "worker-0" }?.stalled == true }
        try waitFor("the fast one gets the rest", timeout: 30) { Set(h.exactReceived(["worker-1"])).count + 400 >= 20_000 }
        print("FIGURES slow consumer: 20000 frames sent in \(String(format: "%.2f", sendTime)) s with worker-0 stopped (SIGSTOP)")
        kill(slow.processIdentifier, SIGCONT)
        try waitFor("every frame", timeout: 30) { Set(h.exactReceived(["worker-0", "worker-1"])).count == 20_000 }
        try waitFor("worker-0 back in service") { h.status?.egress.first { $0.instance == "worker-0" }?.healthy == true }
        account("slow consumer (stopped, then resumed)", sent: 20_000, received: h.exactReceived(["worker-0", "worker-1"]))
    }

    /// A consumer stopped while its pipe fills: the router waits for it to read instead of spinning. The pipe is
    /// full by the router's count (pages, not bytes: a 3000-byte frame written alone takes a page of its own)
    /// before it is full by the kernel's, which then still reports it writable; the router must not take that
    /// as room, over and over, until the stall timeout. Frames then go PIPE_BUF bytes at a time until the kernel
    /// refuses a write (the pipe is full: EPOLLOUT waits); a frame larger than PIPE_BUF waits for the reader,
    /// looked at by the loop's timeout.
    @Test(arguments: [3000, 7000])
    func stoppedConsumer_withItsPipeFullByTheRoutersCount_costsTheRouterNoCPU(payload: Int) throws {
        let h = try MeshHarness(faultMesh(delivery: "at-most-once", replicas: 1))
        try h.startRouter(["--stall-timeout", "60"])
        let consumer = try h.startExactConsumer("worker-0")
        defer { kill(consumer.processIdentifier, SIGCONT); kill(consumer.processIdentifier, SIGKILL) }
        try h.waitForHealthy(["worker-0"])
        kill(consumer.processIdentifier, SIGSTOP)
        // One frame per write, as paced traffic comes: each takes a page of the 64 KiB pipe.
        for _ in 0..<40 {
            try h.send("--service", "api", "--data-type", "events", "--payload", String(repeating: "p", count: payload), "--count", "1")
        }
        try waitFor("frames queued behind the full pipe") { (h.status?.egress.first?.queued ?? 0) > 0 }
        let router = try #require(h.router).processIdentifier
        let before = ProcessTable.cpuSeconds(of: router)
        Thread.sleep(forTimeInterval: 2)
        let used = ProcessTable.cpuSeconds(of: router) - before
        print("FIGURES stopped consumer, pipe full by the router's count, \(payload) B frames: router used \(String(format: "%.2f", used)) CPU s in 2 s")
        #expect(used < 0.2, "the router used \(used) CPU seconds in 2 s waiting for a stopped consumer")
        kill(consumer.processIdentifier, SIGCONT)
        // (Each `pmm send` numbers its frames from 1: 40 frames numbered 1.)
        try waitFor("every frame") { h.exactReceived(["worker-0"]).count == 40 }
    }

    @Test func pipeDeletedUnderTheRouter_trafficMoves_andApplyRestoresIt() throws {
        let h = try MeshHarness(faultMesh())
        try h.startRouter(["--stall-timeout", "5"])
        let a = try h.startExactConsumer("worker-0")
        let b = try h.startExactConsumer("worker-1")
        defer { for p in [a, b] { kill(p.processIdentifier, SIGKILL) } }
        try h.waitForHealthy(["worker-0", "worker-1"])
        unlink(h.dir.root + "/worker-0.events.out")
        try waitFor("worker-0 down") { h.status?.egress.first { $0.instance == "worker-0" }?.healthy == false }
        try h.send("--service", "api", "--data-type", "events", "--payload", "p", "--count", "1000")
        try waitFor("the other instance gets it all") { Set(h.exactReceived(["worker-1"])).count == 1000 }
        let apply = try pmm("apply", "-f", h.dir.specPath, h.stateArgument, "--wait")
        #expect(apply.status == 0 && apply.stdout.contains("+ worker-0.events.out"), "\(apply.stdout)\(apply.stderr)")
        let restarted = try h.startExactConsumer("worker-0")
        defer { kill(restarted.processIdentifier, SIGKILL) }
        try h.waitForHealthy(["worker-0"])
        try h.send("--service", "api", "--data-type", "events", "--payload", "q", "--count", "1000", "--start-sequence", "1001")
        try waitFor("both instances") { Set(h.exactReceived(["worker-0", "worker-1"])).count == 2000 }
        #expect(Set(h.exactReceived(["worker-0"])).count > 0)
        account("egress pipe deleted under the router", sent: 2000, received: h.exactReceived(["worker-0", "worker-1"]))
    }

    @Test func misaddressedFrame_goesToDeadLetters() throws {
        let h = try MeshHarness(faultMesh())
        try h.startRouter()
        var envelope = Envelope()
        envelope.dataType = "metrics"  // not what api.events pipes carry
        envelope.source = "api"
        envelope.sequence = 7
        let frame = try envelope.framed()
        let fd = open(h.dir.root + "/api.events.s0.in", O_WRONLY)
        #expect(write(fd, frame, frame.count) == frame.count)
        close(fd)
        try waitFor("a misaddressed dead letter") { (h.status?.deadLetters["misaddressed"] ?? 0) == 1 }
        let list = try pmm("deadletters", "list", h.stateArgument)
        #expect(list.stdout.contains("misaddressed api#7"), "\(list.stdout)")
    }

    @Test func status_showsHealthRatesAndFlagsForeignHolders() throws {
        let h = try MeshHarness(faultMesh())
        try h.startRouter()
        let consumer = try h.startExactConsumer("worker-0")
        defer { kill(consumer.processIdentifier, SIGKILL) }
        try h.waitForHealthy(["worker-0"])
        // A process that may not: a writer on an egress pipe.
        let intruder = open(h.dir.root + "/worker-0.events.out", O_WRONLY | O_NONBLOCK)
        defer { close(intruder) }
        let text = try pmm("status", h.stateArgument)
        #expect(text.status == 0)
        #expect(text.stdout.contains("Router: pid \(h.router!.processIdentifier), serving revision 1"))
        #expect(text.stdout.contains("worker-0") && text.stdout.contains("healthy"))
        #expect(text.stdout.contains("not allowed by the spec"))
        let json = try #require(try JSONSerialization.jsonObject(with: Data(try pmm("status", h.stateArgument, "-o", "json").stdout.utf8)) as? [String: Any])
        #expect(json["disallowedHolders"] as? Int == 1)
        let holders = try #require(json["holders"] as? [[String: Any]])
        #expect(holders.contains { $0["pid"] as? Int32 == getpid() && $0["allowed"] as? Bool == false })
    }

    @Test func metricsEndpoint_servesPrometheusText() throws {
        let h = try MeshHarness(faultMesh())
        let port = 20_000 + Int(getpid() % 20_000)
        try h.startRouter(["--metrics-listen", "127.0.0.1:\(port)"])
        let consumer = try h.startExactConsumer("worker-0")
        defer { kill(consumer.processIdentifier, SIGKILL) }
        try h.waitForHealthy(["worker-0"])
        try h.send("--service", "api", "--data-type", "events", "--payload", "m", "--count", "100")
        try waitFor("delivery") { Set(h.exactReceived(["worker-0", "worker-1"])).count == 100 }
        let scrape = try run("/usr/bin/python3", ["-c", "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1]).read().decode())", "http://127.0.0.1:\(port)/metrics"])
        #expect(scrape.status == 0, "\(scrape.stderr)")
        #expect(scrape.stdout.contains("pmm_egress_frames_total{"), "\(scrape.stdout)")
        #expect(scrape.stdout.contains("instance=\"worker-0\""))
        #expect(scrape.stdout.contains("pmm_egress_healthy"))
    }

    /// An apply makes a type at-most-once while its spool still holds frames a consumer has not read, and the
    /// router is killed before it delivers them. The next router serves the pipe at most once, without a spool,
    /// and must still deliver what the spool holds: it adopts that spool as it does a removed pipe's. Before,
    /// only the spools of pipes the revision no longer named were read back, and these frames stayed on disk.
    @Test func aTypeMadeAtMostOnce_whileItsSpoolHoldsFrames_andARouterKilled_losesNothingSpooled() throws {
        let mesh = { (delivery: String) in faultMesh(delivery: delivery, replicas: 1, policy: "shard", shards: 1) }
        let h = try MeshHarness(mesh("at-least-once"))
        try h.startRouter()
        let consumer = try h.startExactConsumer("worker-0")
        defer { if consumer.isRunning { kill(consumer.processIdentifier, SIGKILL) } }
        try h.waitForHealthy(["worker-0"])
        // The consumer stops reading: what api sends stays in the spool (and the consumer's pipe).
        kill(consumer.processIdentifier, SIGSTOP)
        let count = 5_000
        let sent = try h.send("--service", "api", "--data-type", "events", "--payload", String(repeating: "m", count: 100), "--count", String(count))
        #expect(sent.status == 0, "send: \(sent.stderr)")
        try waitFor("the frames spooled") { (h.status?.spooledBytes ?? 0) > 0 && (h.status?.ingress.first { $0.dataType == "events" }?.frames ?? 0) >= UInt64(count) }

        h.dir.write(mesh("at-most-once").replacingOccurrences(of: "ROOT", with: h.dir.root))
        let applied = try pmm("apply", "-f", h.dir.specPath, h.stateArgument)
        #expect(applied.status == 0, "apply: \(applied.stderr)")
        h.signalRouter(SIGKILL)
        h.router?.waitUntilExit()

        try h.startRouter()
        kill(consumer.processIdentifier, SIGCONT)
        try? waitFor("every frame", timeout: 30) { Set(h.exactReceived(["worker-0"])).count >= count }
        account("type made at-most-once, router killed", sent: count, received: h.exactReceived(["worker-0"]))
        #expect(h.routerLog().contains("replaying the spool"), "\(h.routerLog().suffix(2000))")
    }

    /// `pmm send` finishes while the router has not read what it wrote (stopped here), and the router is killed:
    /// a FIFO's unread bytes live only while some descriptor holds it, so if send has exited by then they are
    /// gone with the router's end. Send now holds the pipe until a router took everything (`--finish-timeout`),
    /// and the next router delivers it all. Before: every frame lost (300 of 300).
    @Test func aRouterKilled_beforeItReadWhatSendWrote_theNextRouterDeliversIt() throws {
        let h = try MeshHarness(faultMesh(delivery: "at-least-once", replicas: 1, policy: "shard", shards: 1))
        try h.startRouter()
        let consumer = try h.startExactConsumer("worker-0")
        defer { if consumer.isRunning { kill(consumer.processIdentifier, SIGKILL) } }
        try h.waitForHealthy(["worker-0"])
        h.stopRouter()  // it keeps its end of the pipe and reads nothing
        let count = 300  // about 45 KB: the pipe takes them all, send never blocks
        var restarted: (any Error)?
        let sent = try run(
            pmmBinary, ["send", h.stateArgument, "--service", "api", "--data-type", "events", "--payload", String(repeating: "m", count: 100), "--count", String(count)],
            background: {
                // Once send wrote them all: it is done, or waiting for the router.
                h.waitForUnread(in: "api.events.s0.in", atLeast: count * 100)
                h.signalRouter(SIGKILL)
                h.router?.waitUntilExit()
                do { try h.startRouter() } catch { restarted = error }
            })
        #expect(restarted == nil, "\(String(describing: restarted))")
        #expect(sent.status == 0, "send: \(sent.stderr)")
        try? waitFor("every frame", timeout: 20) { Set(h.exactReceived(["worker-0"])).count >= count }
        account("send finished under a stopped router, then the router killed", sent: count, received: h.exactReceived(["worker-0"]))
    }

    /// At `--finish-timeout`, `pmm send` exits 0 with a note when the router still holds the pipe (stopped here,
    /// as one whose buffer is full), and 1, naming the pipe, when no router reads it.
    @Test func send_atItsFinishTimeout_notesARouterBehind_failsWhenNoneReads() throws {
        let h = try MeshHarness(faultMesh(delivery: "at-least-once", replicas: 1, policy: "shard", shards: 1))
        try h.startRouter()
        h.stopRouter()
        let arguments = ["send", h.stateArgument, "--service", "api", "--data-type", "events", "--payload", "m", "--count", "3", "--finish-timeout", "1"]
        let behind = try pmm(arguments)
        #expect(behind.status == 0, "\(behind.stderr)")
        #expect(behind.stderr.contains("api.events.s0.in") && behind.stderr.contains("still wait in the pipe"), "\(behind.stderr)")
        let orphaned = try run(pmmBinary, arguments, background: {
            // Once send has written (and waits for the router), kill the router.
            h.waitForUnread(in: "api.events.s0.in", atLeast: 3 * 20)
            h.signalRouter(SIGKILL)
            h.router?.waitUntilExit()
        })
        #expect(orphaned.status == 1)
        #expect(orphaned.stderr.contains("api.events.s0.in") && orphaned.stderr.contains("no router reads the pipe"), "\(orphaned.stderr)")
    }
}
