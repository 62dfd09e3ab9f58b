import Foundation
import Glibc
import PMMRouter
import PMMWire
import Testing

/// `events` at-least-once from `api` (SHARDS shards) to `worker` (REPLICAS replicas), round-robin.
func reloadMesh(shards: Int, replicas: Int) -> String {
    """
    apiVersion: pmm/v1
    kind: Mesh
    name: reload
    root: ROOT
    dataTypes:
      events:
        shards: \(shards)
        qos: {delivery: at-least-once}
    services:
      api:
        uid: 0
        produces: [{dataType: events}]
      worker:
        uid: 0
        replicas: \(replicas)
        consumes: [{dataType: events}]
    routes:
      events:
        policy: round-robin
        targets: [{service: worker}]

    """
}

/// Reloads under traffic, with the real router process: the trap issue 11 starts from.
@Suite(.enabled(if: isRoot, "services run as uid 0 so the test can play them all"), .serialized)
struct ReloadTests {
    /// Writes `count` at-least-once frames into `pipe` at about `rate` per second, from another thread.
    func writeSteadily(_ h: MeshHarness, pipe: String, count: Int, rate: Int) -> Thread {
        let path = h.dir.root + "/" + pipe
        let thread = Thread {
            let fd = open(path, O_WRONLY)
            guard fd >= 0 else { return }
            defer { close(fd) }
            let started = Date()
            for sequence in 1...count {
                var envelope = Envelope()
                envelope.dataType = "events"
                envelope.source = "api"
                envelope.sequence = UInt64(sequence)
                envelope.shardKey = Data("k\(sequence % 97)".utf8)
                envelope.payload = Data(repeating: 0x61, count: 64 + sequence % 900)
                guard let frame = try? envelope.framed() else { return }
                guard write(fd, frame, frame.count) == frame.count else { return }
                let due = started.addingTimeInterval(Double(sequence) / Double(rate))
                let wait = due.timeIntervalSinceNow
                if wait > 0 { usleep(UInt32(wait * 1e6)) }
            }
        }
        thread.start()
        return thread
    }

    @Test func applyThatShrinksThenGrows_underAtLeastOnceTraffic_sameRouterServes_nothingLost() throws {
        let h = try MeshHarness(reloadMesh(shards: 3, replicas: 3))
        try h.startRouter()
        let workers = ["worker-0", "worker-1", "worker-2"]
        var consumers = try workers.map { try h.startExactConsumer($0) }
        defer { for consumer in consumers where consumer.isRunning { kill(consumer.processIdentifier, SIGKILL) } }
        try h.waitForHealthy(workers)
        let routerPID = h.router!.processIdentifier

        let count = 12_000
        let writer = writeSteadily(h, pipe: "api.events.s0.in", count: count, rate: 4_000)
        usleep(600_000)
        // Fewer shards and fewer replicas, pruned: what the old router trapped on.
        h.dir.write(reloadMesh(shards: 1, replicas: 1).replacingOccurrences(of: "ROOT", with: h.dir.root))
        let shrink = try pmm("apply", "-f", h.dir.specPath, h.stateArgument, "--prune", "--wait", "--wait-timeout", "10")
        #expect(shrink.status == 0, "\(shrink.stdout) \(shrink.stderr)")
        #expect(shrink.stdout.contains("The router serves revision 2."), "\(shrink.stdout)")
        usleep(600_000)
        // And back.
        h.dir.write(reloadMesh(shards: 3, replicas: 3).replacingOccurrences(of: "ROOT", with: h.dir.root))
        let grow = try pmm("apply", "-f", h.dir.specPath, h.stateArgument, "--wait", "--wait-timeout", "10")
        #expect(grow.status == 0, "\(grow.stdout) \(grow.stderr)")
        for instance in ["worker-1", "worker-2"] { consumers.append(try h.startExactConsumer(instance)) }
        try h.waitForHealthy(workers)

        while !writer.isFinished { usleep(50_000) }
        try waitFor("every frame", timeout: 30) { Set(h.exactReceived(workers)).count == count }
        let received = h.exactReceived(workers)
        #expect(h.router?.isRunning == true && h.router?.processIdentifier == routerPID, "the same router process serves")
        #expect(h.status?.revision == 3 && h.status?.reloads == 2)
        #expect(!h.routerLog().contains("Fatal error"))
        #expect(Set(received) == Set(1...UInt64(count)))
        print("FIGURES shrink and grow under traffic: \(count) sent, \(Set(received).count) delivered, \(received.count - Set(received).count) duplicates, 0 lost")
    }
}
