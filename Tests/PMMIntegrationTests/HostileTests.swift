import Foundation
import Glibc
import PMMCore
import PMMRouter
import PMMWire
import Testing

/// A catalogue of hostile inputs: each test makes pmm face one, and checks that it stays up, keeps serving the
/// rest of its traffic, and says what happened.
@Suite(.enabled(if: isRoot, "services run as uid 0 (and uid 1001 for the read-only state directory)"), .serialized)
struct HostileTests {
    // MARK: - Helpers

    /// One `events` envelope from `api`, framed.
    static func eventFrame(sequence: UInt64, payload: String = "hostile") throws -> [UInt8] {
        var envelope = Envelope()
        envelope.dataType = "events"
        envelope.source = "api"
        envelope.sequence = sequence
        envelope.shardKey = Data("key-\(sequence)".utf8)
        envelope.payload = Data(payload.utf8)
        return try envelope.framed()
    }

    /// Writes `events` frames with sequences `sequences` into an ingress pipe, one write(2) each.
    static func writeEvents(_ h: MeshHarness, to pipe: String, _ sequences: ClosedRange<UInt64>) throws {
        let fd = open(h.dir.root + "/" + pipe, O_WRONLY)
        try #require(fd >= 0, "open \(pipe): \(String(cString: strerror(errno)))")
        defer { close(fd) }
        for sequence in sequences {
            let frame = try eventFrame(sequence: sequence)
            #expect(write(fd, frame, frame.count) == frame.count)
        }
    }

    /// A length prefix of 4 GiB followed by bytes that are not an envelope.
    static var fourGiBGarbage: [UInt8] {
        var bytes: [UInt8] = []
        Varint.encode(4 << 30, into: &bytes)
        return bytes + Array("and then some bytes that are not an envelope".utf8)
    }

    /// Writes `bytes` into ingress pipe `pipe` in one write(2).
    static func writeRaw(_ h: MeshHarness, to pipe: String, _ bytes: [UInt8]) throws {
        let fd = open(h.dir.root + "/" + pipe, O_WRONLY)
        try #require(fd >= 0, "open \(pipe): \(String(cString: strerror(errno)))")
        defer { close(fd) }
        #expect(write(fd, bytes, bytes.count) == bytes.count)
    }

    /// Connects a non-blocking Unix stream socket to `path`; -1 on failure.
    static func connectUnix(_ path: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return -1 }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.prefix(raw.count - 1).enumerated() { raw[i] = b }
        }
        let ok = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard ok == 0 else {
            close(fd)
            return -1
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return fd
    }

    static func ingress(_ h: MeshHarness, _ name: String) -> RouterStatus.Ingress? {
        h.status?.ingress.first { $0.name == name }
    }

    // MARK: - The data plane

    /// A producer that writes one byte per second: the router waits for the rest of that frame on that pipe
    /// alone; the other shard's pipe keeps flowing; the slow frame arrives whole once finished, no reset.
    @Test func slowLorisProducer_oneBytePerSecond_otherPipesKeepFlowing() throws {
        let h = try MeshHarness(faultMesh())
        try h.startRouter()
        let consumers = try ["worker-0", "worker-1"].map { try h.startExactConsumer($0) }
        defer { for p in consumers where p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        try h.waitForHealthy(["worker-0", "worker-1"])

        let slowFrame = try Self.eventFrame(sequence: 9999)
        let slow = open(h.dir.root + "/api.events.s0.in", O_WRONLY)
        try #require(slow >= 0)
        defer { close(slow) }
        var sent = 0
        let started = Date()
        // Three bytes, a second apart; between them, 100 whole frames on the other shard each time.
        for round in 0..<3 {
            #expect(write(slow, Array(slowFrame[sent..<(sent + 1)]), 1) == 1)
            sent += 1
            let first = UInt64(round * 100 + 1)
            try Self.writeEvents(h, to: "api.events.s1.in", first...(first + 99))
            try waitFor("round \(round) delivered while a frame trickles in", timeout: 5) {
                Set(h.exactReceived(["worker-0", "worker-1"])).count >= (round + 1) * 100
            }
            usleep(1_000_000)
        }
        let trickle = Date().timeIntervalSince(started)
        #expect(!Set(h.exactReceived(["worker-0", "worker-1"])).contains(9999), "a partial frame is never delivered")
        // The rest of the slow frame: it is delivered whole, and the pipe was never reset.
        #expect(write(slow, Array(slowFrame[sent...]), slowFrame.count - sent) == slowFrame.count - sent)
        try waitFor("the slow frame", timeout: 5) { Set(h.exactReceived(["worker-0", "worker-1"])).contains(9999) }
        let received = Set(h.exactReceived(["worker-0", "worker-1"]))
        #expect(received.count == 301, "300 fast frames and the slow one: \(received.count)")
        #expect(Self.ingress(h, "api.events.s0.in")?.resets == 0)
        #expect(h.router?.isRunning == true)
        print("FIGURES slow loris: 3 bytes over \(String(format: "%.1f", trickle)) s on s0; 300 frames on s1 delivered meanwhile; slow frame delivered whole")
    }

    /// A 4 GiB length prefix: that pipe is reset (counted in `resets`, logged with the producer's name), every
    /// other pipe keeps flowing, and the reset pipe carries frames again afterwards.
    @Test func fourGiBLengthPrefix_resetsThatPipeOnly() throws {
        let h = try MeshHarness(faultMesh())
        try h.startRouter()
        let consumers = try ["worker-0", "worker-1"].map { try h.startExactConsumer($0) }
        defer { for p in consumers where p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        try h.waitForHealthy(["worker-0", "worker-1"])

        try Self.writeRaw(h, to: "api.events.s0.in", Self.fourGiBGarbage)
        try Self.writeEvents(h, to: "api.events.s1.in", 1...200)
        try waitFor("the reset counted", timeout: 5) { (Self.ingress(h, "api.events.s0.in")?.resets ?? 0) >= 1 }
        try waitFor("the other pipe's frames", timeout: 5) { Set(h.exactReceived(["worker-0", "worker-1"])).count >= 200 }
        #expect(Self.ingress(h, "api.events.s1.in")?.resets == 0)
        let resetLine = h.routerLog().split(separator: "\n").first { $0.contains("ingress reset") } ?? ""
        #expect(resetLine.contains("api"), "the reset is logged with the producer's name: \(h.routerLog().suffix(2000))")
        #expect(Self.ingress(h, "api.events.s0.in")?.lastError?.contains("exceeds the maximum") == true, "says why")
        // The reset pipe works again.
        try Self.writeEvents(h, to: "api.events.s0.in", 201...300)
        try waitFor("frames on the reset pipe", timeout: 5) { Set(h.exactReceived(["worker-0", "worker-1"])).count >= 300 }
        #expect(h.router?.isRunning == true)
        print("FIGURES 4 GiB prefix: resets on s0 = \(Self.ingress(h, "api.events.s0.in")?.resets ?? 0), 300 good frames delivered")
    }

    /// A consumer that opens its pipe and never reads: marked stalled after `--stall-timeout 0.5`, and the
    /// traffic goes to the other instance.
    @Test func consumerThatNeverReads_isStalled_trafficGoesElsewhere() throws {
        let h = try MeshHarness(faultMesh())
        try h.startRouter(["--stall-timeout", "0.5"])
        let silent = open(h.dir.root + "/worker-0.events.out", O_RDONLY | O_NONBLOCK)
        try #require(silent >= 0)
        defer { close(silent) }
        let reader = try h.startExactConsumer("worker-1")
        defer { kill(reader.processIdentifier, SIGKILL) }
        try h.waitForHealthy(["worker-0", "worker-1"])
        let count = 3000
        try h.send("--service", "api", "--data-type", "events", "--payload", String(repeating: "n", count: 500), "--count", String(count))
        try waitFor("worker-0 stalled", timeout: 5) { h.status?.egress.first { $0.instance == "worker-0" }?.stalled == true }
        // What the silent reader's pipe holds (at most its 64 KiB) is stuck there; everything else arrives.
        let inSilentPipe = Int(h.status?.egress.first { $0.instance == "worker-0" }?.inPipe ?? 0)
        try waitFor("worker-1 gets the rest", timeout: 8) { Set(h.exactReceived(["worker-1"])).count + 200 >= count }
        let status = h.status?.egress.first { $0.instance == "worker-0" }
        #expect((status?.stalls ?? 0) >= 1)
        #expect(h.router?.isRunning == true)
        print("FIGURES silent consumer: stalled, \(Set(h.exactReceived(["worker-1"])).count) of \(count) went to worker-1, \(inSilentPipe) frames stuck in worker-0's pipe")
    }

    // MARK: - The control socket

    /// A client that connects and never speaks: others are still answered at once.
    @Test func controlClientThatNeverSpeaks_othersAreAnswered() throws {
        let c = try ControlHarness()
        let socketPath = c.mesh.dir.path + "/state/pmm.sock"
        let silent = Self.connectUnix(socketPath)
        try #require(silent >= 0)
        defer { close(silent) }
        usleep(200_000)
        let started = Date()
        let answer = try pmm("pipe-name", c.mesh.stateArgument, "--data-type", "metrics", "--service", "api")
        let took = Date().timeIntervalSince(started)
        #expect(answer.status == 0, "\(answer.stderr)")
        #expect(answer.stdout.contains("api.metrics.s"), "\(answer.stdout)")
        #expect(took < 2, "answered at once despite a silent client: \(took) s")
        #expect(c.serve?.isRunning == true)
        print("FIGURES silent control client: another client answered in \(String(format: "%.3f", took)) s")
    }

    /// 1,000 connections at once: the server survives and still answers; beyond its cap of 1024 connections the
    /// extra ones are closed, not crashed on; once they go, everything is normal.
    @Test func thousandControlConnectionsAtOnce_serverSurvivesAndAnswers() throws {
        let c = try ControlHarness()
        let socketPath = c.mesh.dir.path + "/state/pmm.sock"
        // The 1,000 idle clients are another process (HeldDescriptors); the 100 past the cap are this one's.
        let clients = try HeldDescriptors(connections: 1000, toUnixSocket: socketPath)
        defer { clients.release() }
        var fds: [Int32] = []
        defer { for fd in fds { close(fd) } }
        #expect(clients.count == 1000, "every connect succeeded: \(clients.count)")
        usleep(500_000)  // serve accepts them all
        let during = try pmm("pipe-name", c.mesh.stateArgument, "--data-type", "metrics", "--service", "api")
        #expect(during.status == 0 && during.stdout.contains("api.metrics.s"), "answered with 1000 idle clients: \(during.stderr)")

        // Past the cap: 100 more; those past 1024 are closed by the server (EOF), and serve stays up.
        var extra: [Int32] = []
        for _ in 0..<100 {
            let fd = Self.connectUnix(socketPath)
            if fd >= 0 { extra.append(fd) }
        }
        fds += extra
        var closedByServer = 0
        try waitFor("the extra connections refused", timeout: 5) {
            closedByServer = 0
            for fd in extra {
                var byte: UInt8 = 0
                if recv(fd, &byte, 1, Int32(MSG_PEEK)) == 0 { closedByServer += 1 }
            }
            return closedByServer >= 70
        }
        #expect(closedByServer <= 100 - (1024 - 1000) + 1, "the cap is 1024, not lower: \(closedByServer) closed")
        #expect(c.serve?.isRunning == true)
        #expect(c.serveLog.contains("too many connections"), "the refusal is logged")
        for fd in fds { close(fd) }
        fds = []
        clients.release()
        usleep(500_000)
        let after = try pmm("pipe-name", c.mesh.stateArgument, "--data-type", "metrics", "--service", "api")
        #expect(after.status == 0, "answers once they are gone: \(after.stderr)")
        print("FIGURES 1100 control connections: 1000 held and another client answered; \(closedByServer) of 100 past the cap closed by the server")
    }

    // MARK: - apply

    /// A regular file, a directory or a socket where a pipe should be: apply refuses, names the path, and
    /// changes nothing (no FIFO made, no revision recorded).
    @Test(arguments: ["file", "directory", "socket"])
    func somethingElseWhereAPipeShouldBe_applyRefusesAndChangesNothing(kind: String) throws {
        let dir = TemporaryDirectory("pmm-hostile")
        dir.writeSpec(apiUID: 0, collectorUID: 0)
        try #require(mkdir(dir.root, 0o755) == 0)
        let squatted = "api.metrics.s0.in"
        let path = dir.root + "/" + squatted
        switch kind {
        case "file": _ = FileManager.default.createFile(atPath: path, contents: Data("not a pipe".utf8))
        case "directory": try #require(mkdir(path, 0o755) == 0)
        default:
            let bound = try run("/usr/bin/python3", ["-c", "import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])", path])
            try #require(bound.status == 0, "\(bound.stderr)")
        }
        let before = try FileManager.default.contentsOfDirectory(atPath: dir.root).sorted()
        let state = "--state-dir=\(dir.path)/state"
        let apply = try pmm("apply", "-f", dir.specPath, state)
        #expect(apply.status == 1, "refused: \(apply.stdout) \(apply.stderr)")
        #expect((apply.stdout + apply.stderr).contains(squatted), "names the path: \(apply.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.root).sorted() == before, "nothing created or removed")
        var info = stat()
        #expect(lstat(path, &info) == 0)
        let expectedType: mode_t = kind == "file" ? S_IFREG : kind == "directory" ? S_IFDIR : S_IFSOCK
        #expect(info.st_mode & S_IFMT == expectedType, "the squatter is untouched")
        let history = try pmm("history", state, "-o", "json")
        #expect(!history.stdout.contains("\"number\""), "no revision recorded: \(history.stdout)")
        print("FIGURES \(kind) where a pipe should be: apply exit \(apply.status): \(apply.stderr.split(separator: "\n").first ?? "")")
    }

    /// A read-only state directory (as a non-root user, since root ignores permission bits): apply fails with a
    /// clear error naming the directory, without a crash, and makes no pipe.
    @Test func readOnlyStateDirectory_applyFailsCleanly() throws {
        let dir = TemporaryDirectory("pmm-hostile")
        let uid = 1001
        dir.write(meshYAML(root: dir.root, apiUID: uid, collectorUID: uid))
        let bin = dir.path + "/bin"
        mkdir(bin, 0o755)
        try installExecutable(from: pmmBinary, to: bin + "/pmm")
        let state = dir.path + "/state"
        try #require(mkdir(state, 0o555) == 0)
        for path in [dir.path, state, dir.specPath] { chown(path, uid_t(uid), gid_t(uid)) }
        chmod(dir.path, 0o755)
        chmod(state, 0o555)
        let apply = try run(
            "/usr/bin/setpriv", ["--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", bin + "/pmm", "apply", "-f", dir.specPath, "--state-dir", state],
            environment: ["HOME": "/tmp"])
        #expect(apply.status == 1, "fails with exit 1, not a crash: \(apply.status) \(apply.stderr)")
        #expect(apply.stderr.contains(state), "names the state directory: \(apply.stderr)")
        #expect(!apply.stderr.contains("Fatal error") && !apply.stderr.contains("Backtrace"), "\(apply.stderr)")
        let made = (try? FileManager.default.contentsOfDirectory(atPath: dir.root)) ?? []
        #expect(made.isEmpty, "no pipe made without a registry to record it: \(made)")
        print("FIGURES read-only state directory: apply exit \(apply.status): \(apply.stderr.split(separator: "\n").first ?? "")")
    }
}
