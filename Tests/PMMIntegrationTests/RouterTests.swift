import Foundation
import Glibc
import PMMCore
import PMMSpecYAML
import PMMRouter
import PMMWire
import Testing

/// The data plane end to end: real router, producer and consumer processes over real FIFOs.
@Suite(.enabled(if: isRoot, "services run as uid 0 so the test can play them all"), .serialized)
struct RouterTests {
    func instances(_ h: MeshHarness, canary: Bool = true, replicas: Int = 3) throws {
        for i in 0..<replicas { try h.startConsumer("collector-\(i)", dataType: "metrics") }
        if canary { try h.startConsumer("canary-0", dataType: "metrics") }
        try h.waitForHealthyConsumers()
    }

    @Test func router_deliversEveryFrameExactlyOnce_andKeysStickToTheContractsInstance() throws {
        let h = try MeshHarness(routerMesh())
        try h.startRouter()
        try instances(h)
        // 300 keys, 10 frames each, from two producers.
        for producer in ["api", "web"] {
            try h.send("--service", producer, "--data-type", "metrics", "--keys", "150", "--payload", "p", "--count", "1500")
        }
        try h.waitForReceived(3000)
        let received = h.allReceived
        #expect(received.count == 3000, "exactly once: \(received.count) received")
        let ids = received.map { "\($0.source)#\($0.sequence)" }
        #expect(Set(ids).count == 3000, "no duplicates")

        // Each key on one instance, the one the contract's routing table names.
        let yaml = try String(contentsOfFile: h.dir.specPath, encoding: .utf8)
        let spec = try #require(SpecLoader.load(yaml: yaml, file: "mesh.yaml").spec)
        let table = RoutingTable(spec: spec)
        var instanceOfKey: [String: Set<String>] = [:]
        for envelope in received { instanceOfKey[envelope.shardKey, default: []].insert(envelope.instance) }
        for (key, instances) in instanceOfKey {
            #expect(instances.count == 1, "key \(key) reached \(instances)")
            #expect(instances.first == table.instance(forKey: Array(key.utf8), dataType: "metrics"), "key \(key)")
        }
        #expect(instanceOfKey.count == 150)
        let canaryShare = Double(received.count { $0.instance == "canary-0" }) / Double(received.count)
        #expect(canaryShare > 0.03 && canaryShare < 0.2, "canary weight 10 of 100: got \(canaryShare)")
    }

    @Test func router_followsWeights_underPolicyWeighted() throws {
        let h = try MeshHarness(routerMesh(policy: "weighted", canaryWeight: 30))
        try h.startRouter()
        try instances(h)
        try h.send("--service", "api", "--data-type", "metrics", "--payload", "x", "--count", "6000")
        try h.waitForReceived(6000)
        let canary = h.allReceived.count { $0.instance == "canary-0" }
        let share = Double(canary) / 6000
        #expect(abs(share - 30.0 / 120.0) < 0.03, "canary share \(share), weight 30 of 120")
        #expect(h.allReceived.count == 6000)
    }

    @Test func router_spreadsEvenly_underPolicyRoundRobin() throws {
        let h = try MeshHarness(routerMesh(policy: "round-robin", canaryWeight: 0))
        try h.startRouter()
        try instances(h, canary: false)
        try h.send("--service", "api", "--data-type", "metrics", "--payload", "x", "--count", "3000", "--shard-key", "same-key")
        try h.waitForReceived(3000)
        let counts = (0..<3).map { i in h.received("collector-\(i)", dataType: "metrics").count }
        #expect(counts.allSatisfy { abs($0 - 1000) <= 1 }, "round-robin counts \(counts)")
    }

    @Test func router_spreadsLoad_underPolicyLeastLoaded() throws {
        let h = try MeshHarness(routerMesh(policy: "least-loaded"))
        try h.startRouter()
        try instances(h)
        try h.send("--service", "api", "--data-type", "metrics", "--payload", "x", "--count", "4000")
        try h.waitForReceived(4000)
        let counts = (0..<3).map { i in h.received("collector-\(i)", dataType: "metrics").count } + [h.received("canary-0", dataType: "metrics").count]
        #expect(counts.reduce(0, +) == 4000)
        #expect(counts.allSatisfy { $0 > 0 }, "every instance gets work: \(counts)")
    }

    @Test func sighup_withChangedWeights_appliesNewSharesWithNothingLostOrDoubled() throws {
        let h = try MeshHarness(routerMesh(policy: "weighted", canaryWeight: 10))
        try h.startRouter()
        try instances(h)
        // A producer sending steadily while the spec changes and the router reloads.
        let producer = try h.spawn(
            ["send", h.stateArgument, "--service", "api", "--data-type", "metrics", "--payload", "x", "--count", "6000", "--rate", "3000"],
            output: h.dir.path + "/producer.log")
        usleep(700_000)
        h.dir.write(routerMesh(policy: "weighted", canaryWeight: 90).replacingOccurrences(of: "ROOT", with: h.dir.root))
        let apply = try pmm("apply", "-f", h.dir.specPath, h.stateArgument, "--wait", "--wait-timeout", "10")
        #expect(apply.status == 0, "\(apply.stdout) \(apply.stderr)")
        #expect(apply.stdout.contains("The router serves revision 2."))
        producer.waitUntilExit()
        #expect(producer.terminationStatus == 0)
        try h.waitForReceived(6000)
        let received = h.allReceived
        #expect(received.count == 6000, "nothing lost or doubled across the reload: \(received.count)")
        #expect(Set(received.map(\.sequence)).count == 6000)
        // After the reload the canary gets about half (90 of 180), before it about a tenth.
        let late = received.filter { $0.sequence > 4500 }
        let share = Double(late.count { $0.instance == "canary-0" }) / Double(late.count)
        #expect(share > 0.38 && share < 0.62, "canary share after reload \(share)")
        #expect(h.status?.revision == 2 && h.status?.reloads == 1)
    }

    @Test func sighup_whenTheRevisionCannotLoad_keepsServingTheOldOne() throws {
        let h = try MeshHarness(routerMesh())
        try h.startRouter()
        try instances(h, canary: false)
        // Corrupt the applied revision's text behind pmm's back, then ask for a reload.
        let registry = h.dir.path + "/state/registry.sqlite"
        #expect(try run("/usr/bin/python3", ["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"update revision set specText='kind: [' \"); c.commit()", registry]).status == 0)
        h.signalRouter(SIGHUP)
        try waitFor("a failed reload") { (h.status?.failedReloads ?? 0) == 1 }
        #expect(h.status?.revision == 1)
        // The producer side reads the revision too, so frames go straight into the pipe here.
        try h.writeFrames(to: "api.metrics.s0.in", count: 100)
        try h.waitForReceived(100)
        #expect(h.routerLog().contains("reload failed; the current revision keeps serving"))
    }

    @Test func garbageAndOversizedFrames_resetOnlyTheirPipe() throws {
        let h = try MeshHarness(routerMesh())
        try h.startRouter(["--max-frame", "65536"])
        try instances(h)
        // Every api shard gets garbage, then an oversized length prefix (4 GiB), then valid traffic again.
        for shard in 0..<4 {
            let fd = open(h.dir.root + "/api.metrics.s\(shard).in", O_WRONLY | O_NONBLOCK)
            #expect(fd >= 0)
            let garbage: [UInt8] = [0x05, 0xff, 0xff, 0xff, 0xff, 0x0f] + Array("not protobuf at all".utf8)
            _ = write(fd, garbage, garbage.count)
            close(fd)
        }
        try waitFor("resets of api's pipes") { (h.status?.ingress.filter { $0.name.hasPrefix("api.") }.map(\.resets).reduce(0, +) ?? 0) >= 4 }
        var oversized: [UInt8] = []
        Varint.encode(4 << 30, into: &oversized)
        let fd = open(h.dir.root + "/api.metrics.s0.in", O_WRONLY | O_NONBLOCK)
        _ = write(fd, oversized + [0, 0, 0], oversized.count + 3)
        close(fd)
        try waitFor("the oversized prefix's reset") { h.status?.ingress.first { $0.name == "api.metrics.s0.in" }?.resets ?? 0 >= 2 }
        // Meanwhile and afterwards, web's traffic and api's later traffic are untouched.
        try h.send("--service", "web", "--data-type", "metrics", "--payload", "w", "--count", "2000")
        try h.send("--service", "api", "--data-type", "metrics", "--payload", "a", "--count", "1000", "--start-sequence", "10001")
        try h.waitForReceived(3000)
        #expect(h.allReceived.count == 3000)
        #expect(h.allReceived.count { $0.source == "web" } == 2000)
        #expect(h.routerLog().contains("ingress reset: bytes that are not a frame"))
        #expect(h.routerLog().contains("producer=api"))
        #expect(h.status?.ingress.filter { $0.name.hasPrefix("web.") }.allSatisfy { $0.resets == 0 } == true)
    }

    @Test(arguments: [1000, 3900, 12000, 70000])
    func concurrentReplicasOnOnePipe_neverInterleave(payloadSize: Int) throws {
        let h = try MeshHarness(routerMesh(policy: "round-robin"))
        try h.startRouter(["--max-frame", "131072"])
        try instances(h)
        let payload = String(repeating: "z", count: payloadSize)
        // Four replicas of api, all writing shard key "one" (one pipe) at once.
        let writers = try (0..<4).map { replica in
            try h.spawn(
                ["send", h.stateArgument, "--service", "api", "--data-type", "metrics", "--shard-key", "one", "--payload", payload,
                 "--count", "150", "--start-sequence", String(replica * 1000 + 1)],
                output: h.dir.path + "/writer\(replica).log")
        }
        for writer in writers { writer.waitUntilExit(); #expect(writer.terminationStatus == 0) }
        try h.waitForReceived(600)
        let received = h.allReceived
        #expect(received.count == 600)
        #expect(received.allSatisfy { $0.payload?.count == payloadSize })
        #expect(h.status?.ingress.allSatisfy { $0.resets == 0 } == true, "no frame was torn")
    }

    @Test func sigterm_deliversWhatIsQueued_andExits0() throws {
        let h = try MeshHarness(routerMesh(policy: "round-robin"))
        try h.startRouter()
        try instances(h)
        try h.send("--service", "api", "--data-type", "metrics", "--payload", String(repeating: "q", count: 500), "--count", "20000")
        h.signalRouter(SIGTERM)
        h.router?.waitUntilExit()
        #expect(h.router?.terminationStatus == 0, "\(h.routerLog())")
        try h.waitForReceived(20000)
        #expect(h.allReceived.count == 20000)
        #expect(!FileManager.default.fileExists(atPath: h.dir.path + "/state/router.pid"))
    }

    @Test func consumerKilled_itsTrafficMovesToTheOthers() throws {
        let h = try MeshHarness(routerMesh())
        try h.startRouter()
        try instances(h)
        try h.send("--service", "api", "--data-type", "metrics", "--payload", "x", "--count", "1000")
        try h.waitForReceived(1000)
        let victim = try #require(h.consumers["collector-1.metrics"]?.process)
        kill(victim.processIdentifier, SIGKILL)
        victim.waitUntilExit()
        try h.send("--service", "api", "--data-type", "metrics", "--payload", "y", "--count", "1000", "--start-sequence", "1001")
        try waitFor("the survivors' share") { h.allReceived.count { $0.payload == "y" } >= 990 }
        let after = h.allReceived.filter { $0.payload == "y" }
        #expect(after.allSatisfy { $0.instance != "collector-1" })
        try waitFor("collector-1 reported unhealthy") { h.status?.egress.first { $0.instance == "collector-1" }?.healthy == false }
    }

    @Test func framesWaitForAConsumerThatStartsLater() throws {
        let h = try MeshHarness(routerMesh(policy: "round-robin", canaryWeight: 0, collectorReplicas: 1))
        try h.startRouter()
        try h.send("--service", "api", "--data-type", "metrics", "--payload", "early", "--count", "500")
        try h.startConsumer("collector-0", dataType: "metrics")
        try h.waitForReceived(500)
        #expect(h.allReceived.count == 500)
    }

    @Test func applyReplacingAnIngressPipe_routerMovesToTheNewInode() throws {
        let h = try MeshHarness(routerMesh(policy: "round-robin"))
        try h.startRouter()
        try instances(h)
        let path = h.dir.root + "/api.metrics.s0.in"
        let stale = open(path, O_WRONLY | O_NONBLOCK)
        try #require(stale >= 0)
        defer { close(stale) }
        // A new writer for api's pipes: apply makes new inodes and the router follows.
        h.dir.write(routerMesh(policy: "round-robin").replacingOccurrences(of: "ROOT", with: h.dir.root)
            .replacingOccurrences(of: "  api:\n    uid: 0", with: "  api:\n    uid: 1007"))
        let apply = try pmm("apply", "-f", h.dir.specPath, h.stateArgument, "--wait")
        #expect(apply.status == 0, "\(apply.stderr)")
        #expect(apply.stdout.contains("± api.metrics.s0.in"))
        try waitFor("the old inode drained") { !h.routerLog().isEmpty && h.routerLog().contains("drained and closed a removed ingress pipe") }
        // The revoked descriptor reaches nobody; the new pipe is served.
        var frame = try sampleFrame(sequence: 1)
        _ = write(stale, &frame, frame.count)  // EPIPE, or into the old inode nobody reads
        try h.writeFrames(to: "api.metrics.s0.in", count: 50, firstSequence: 100)
        try h.waitForReceived(50)
        #expect(h.allReceived.allSatisfy { $0.sequence >= 100 }, "nothing from the revoked writer")
    }

    @Test func applyWait_withoutARouter_failsWithTheReason() throws {
        let h = try MeshHarness(routerMesh())
        let outcome = try pmm("apply", "-f", h.dir.specPath, h.stateArgument, "--wait")
        #expect(outcome.status == 1 && outcome.stderr.contains("--wait: no router is running"))
    }

    @Test func up_appliesAndRoutes_untilSIGTERM() throws {
        let dir = TemporaryDirectory("pmm-up")
        dir.write(routerMesh(policy: "round-robin", canaryWeight: 0, collectorReplicas: 1).replacingOccurrences(of: "ROOT", with: dir.root))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: pmmBinary)
        process.arguments = ["up", "-f", dir.specPath, "--state-dir=\(dir.path)/state"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        try waitFor("pmm up's router") { FileManager.default.fileExists(atPath: dir.path + "/state/router.json") }
        let consumer = try run("/usr/bin/timeout", ["20", pmmBinary, "tail", "--state-dir=\(dir.path)/state", "--instance", "collector-0", "--data-type", "metrics", "--count", "10", "-o", "json"], stdin: nil, background: {
            _ = try? pmm("send", "--state-dir=\(dir.path)/state", "--service", "api", "--data-type", "metrics", "--payload", "u", "--count", "10")
        })
        #expect(consumer.stdout.split(separator: "\n").count == 10)
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
    }
}

func sampleFrame(sequence: UInt64) throws -> [UInt8] {
    var envelope = Envelope()
    envelope.dataType = "metrics"
    envelope.source = "api"
    envelope.sequence = sequence
    return try envelope.framed()
}
