import Foundation
import Glibc
import PMMCore
import PMMRouter
import Testing

/// Two at-least-once types, each with its own consumer service, so a router with two workers gives one type
/// to each. `alphaProducer` other than `api` moves alpha to a producer of its own (api's alpha pipes go).
func workerMesh(betaReplicas: Int = 2, alphaProducer: String = "api") -> String {
    let producers =
        alphaProducer == "api"
        ? "  api:\n    uid: 0\n    produces: [{dataType: alpha}, {dataType: beta}]\n"
        : "  api:\n    uid: 0\n    produces: [{dataType: beta}]\n  \(alphaProducer):\n    uid: 0\n    produces: [{dataType: alpha}]\n"
    return """
    apiVersion: pmm/v1
    kind: Mesh
    name: workers
    root: ROOT
    dataTypes:
      alpha:
        shards: 2
        qos: {delivery: at-least-once, buffer: 10000}
      beta:
        shards: 2
        qos: {delivery: at-least-once, buffer: 10000}
    services:
    \(producers)  sinka:
        uid: 0
        replicas: 2
        consumes: [{dataType: alpha}]
      sinkb:
        uid: 0
        replicas: \(betaReplicas)
        consumes: [{dataType: beta}]
    routes:
      alpha: {policy: round-robin, targets: [{service: sinka}]}
      beta: {policy: round-robin, targets: [{service: sinkb}]}

    """
}

/// `pmm router --workers N`: real router processes with several worker threads, each routing a share of the
/// data types.
@Suite(.enabled(if: isRoot, "services run as uid 0 so the test can play them all"), .serialized)
struct WorkerTests {
    /// The names of a process's threads.
    static func threadNames(_ pid: Int32) -> [String] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.compactMap { try? String(contentsOfFile: "/proc/\(pid)/task/\($0)/comm", encoding: .utf8) }
            .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
    }

    /// Exact consumers of both types' instances, once the running router sees them all healthy (killed if it
    /// does not).
    static func startConsumers(_ h: MeshHarness, alpha: [String], beta: [String]) throws -> [Process] {
        var consumers = try alpha.map { try h.startExactConsumer($0, dataType: "alpha") }
        do {
            consumers += try beta.map { try h.startExactConsumer($0, dataType: "beta") }
            try h.waitForHealthy(alpha + beta)
        } catch {
            for p in consumers where p.isRunning { kill(p.processIdentifier, SIGKILL) }
            throw error
        }
        return consumers
    }

    @Test func twoWorkers_eachRoutesItsType_onItsOwnThread_andAKillAndAReloadLoseNothing() throws {
        let h = try MeshHarness(workerMesh())
        try h.startRouter(["--workers", "2"])
        let alpha = ["sinka-0", "sinka-1"]
        var beta = ["sinkb-0", "sinkb-1"]
        var consumers = try Self.startConsumers(h, alpha: alpha, beta: beta)
        defer { for p in consumers where p.isRunning { kill(p.processIdentifier, SIGKILL) } }

        // One status for the whole router: both workers' pipes, merged.
        let status = try #require(h.status)
        #expect(status.workers == 2)
        #expect(Set(status.ingress.map(\.dataType)) == ["alpha", "beta"])
        #expect(Set(status.egress.map(\.name)) == Set((alpha + beta).map { "\($0).\($0.hasPrefix("sinka") ? "alpha" : "beta").out" }))
        let threads = Self.threadNames(try #require(h.router?.processIdentifier))
        #expect(threads.contains("pmm-router-0") && threads.contains("pmm-router-1"), "threads: \(threads)")

        let count = 20_000
        let producers = try ["alpha", "beta"].map { type in
            try h.spawn(
                ["send", h.stateArgument, "--service", "api", "--data-type", type, "--payload", String(repeating: "w", count: 100),
                 "--count", String(count), "--rate", "8000"],
                output: h.dir.path + "/producer-\(type).log")
        }
        defer { for p in producers where p.isRunning { kill(p.processIdentifier, SIGKILL) } }

        // A reload mid-stream: beta gets a third consumer; `apply --wait` returns once every worker serves it.
        usleep(500_000)
        h.dir.write(workerMesh(betaReplicas: 3).replacingOccurrences(of: "ROOT", with: h.dir.root))
        let applied = try pmm("apply", "-f", h.dir.specPath, h.stateArgument, "--wait", "--wait-timeout", "20")
        #expect(applied.status == 0, "apply: \(applied.stderr)")
        #expect(h.status?.revision == 2)
        beta.append("sinkb-2")
        consumers.append(try h.startExactConsumer("sinkb-2", dataType: "beta"))

        // The router killed mid-stream, holding frames its stopped consumers had not taken, and started again:
        // each worker replays its own spools.
        usleep(300_000)
        for p in consumers { kill(p.processIdentifier, SIGSTOP) }
        usleep(500_000)
        h.signalRouter(SIGKILL)
        h.router?.waitUntilExit()
        for p in consumers { kill(p.processIdentifier, SIGCONT) }
        usleep(300_000)
        try h.startRouter(["--workers", "2"])
        for producer in producers {
            producer.waitUntilExit()
            #expect(producer.terminationStatus == 0)
        }
        // On a timeout the figures below say what is missing.
        try? waitFor("every frame of both types", timeout: 60) {
            Set(h.exactReceived(alpha, dataType: "alpha")).count >= count && Set(h.exactReceived(beta, dataType: "beta")).count >= count
        }
        usleep(300_000)
        for (type, instances) in [("alpha", alpha), ("beta", beta)] {
            let received = h.exactReceived(instances, dataType: type)
            let unique = Set(received)
            let lost = (1...UInt64(count)).count { !unique.contains($0) }
            print("FIGURES two workers, \(type): sent \(count), delivered \(unique.count), duplicated \(received.count - unique.count), lost \(lost)")
            #expect(lost == 0, "\(type): \(lost) frames lost")
        }
        let served = h.exactReceived(["sinkb-2"], dataType: "beta").count
        #expect(served > 0, "the consumer the reload added got frames")
        #expect(h.status?.workers == 2)
        #expect(h.status?.revision == 2)
    }

    /// A router killed holding at-least-once frames in the spool of a pipe that the next revision removes (the
    /// type moved to another producer): the restarted router, two workers, gives that spool to the worker that
    /// owns its type, which delivers every frame, while the other worker keeps routing its own type.
    @Test func aSpoolLeftByARemovedPipe_isDeliveredByTheWorkerThatOwnsItsType() throws {
        let h = try MeshHarness(workerMesh())
        try h.startRouter(["--workers", "2"])
        let alpha = ["sinka-0", "sinka-1"]
        let beta = ["sinkb-0", "sinkb-1"]
        let consumers = try Self.startConsumers(h, alpha: alpha, beta: beta)
        defer { for p in consumers where p.isRunning { kill(p.processIdentifier, SIGKILL) } }

        // alpha's consumers stopped: what api sends stays in its pipes' spools (and the consumers' pipes).
        for p in consumers.prefix(2) { kill(p.processIdentifier, SIGSTOP) }
        let count = 5_000
        let sent = try h.send("--service", "api", "--data-type", "alpha", "--payload", String(repeating: "s", count: 100), "--count", String(count))
        #expect(sent.status == 0, "send: \(sent.stderr)")
        usleep(500_000)
        h.signalRouter(SIGKILL)
        h.router?.waitUntilExit()

        // The next revision gives alpha to another producer: api's alpha pipes are deleted, their spools stay.
        h.dir.write(workerMesh(alphaProducer: "apx").replacingOccurrences(of: "ROOT", with: h.dir.root))
        let applied = try pmm("apply", "-f", h.dir.specPath, h.stateArgument, "--prune")
        #expect(applied.status == 0, "apply: \(applied.stderr)")
        #expect(!FileManager.default.fileExists(atPath: h.dir.root + "/api.alpha.s0.in"), "api's alpha pipe removed")

        try h.startRouter(["--workers", "2"])
        try waitFor("the new router's status") { h.status?.pid == h.router?.processIdentifier }
        for p in consumers.prefix(2) { kill(p.processIdentifier, SIGCONT) }
        #expect(h.status?.workers == 2)
        let beats = try h.send("--service", "api", "--data-type", "beta", "--payload", "b", "--count", "200")
        #expect(beats.status == 0, "send: \(beats.stderr)")
        try? waitFor("every alpha frame from the spool, and beta's", timeout: 30) {
            Set(h.exactReceived(alpha, dataType: "alpha")).count >= count && Set(h.exactReceived(beta, dataType: "beta")).count >= 200
        }
        let received = h.exactReceived(alpha, dataType: "alpha")
        let unique = Set(received)
        let lost = (1...UInt64(count)).count { !unique.contains($0) }
        print("FIGURES orphan spool, two workers: sent \(count), delivered \(unique.count), duplicated \(received.count - unique.count), lost \(lost)")
        // On failure, what the restarted router says of its pipes and did (one CI run lost 4,173 here, its replay
        // delivering nothing, and no run since has repeated it).
        #expect(
            lost == 0,
            "\(lost) alpha frames lost; egress \(String(describing: h.status?.egress.map { ($0.name, $0.healthy, $0.frames) })), ingress \(String(describing: h.status?.ingress.map(\.name)))\n\(h.routerLog().suffix(6000))")
        #expect(
            Set(h.exactReceived(beta, dataType: "beta")).count == 200,
            "the other worker routes beta: \(String(describing: h.status?.egress.map { ($0.name, $0.healthy, $0.frames) }))\n\(h.routerLog().suffix(3000))")
        #expect(h.routerLog().contains("replaying the spool of a pipe this revision does not spool"), "\(h.routerLog().suffix(2000))")
    }

    @Test func sigterm_stopsEveryWorker_drainsTheirQueues_andExits0() throws {
        let h = try MeshHarness(workerMesh())
        try h.startRouter(["--workers", "2"])
        let consumers = try [("sinka-0", "alpha"), ("sinka-1", "alpha"), ("sinkb-0", "beta"), ("sinkb-1", "beta")].map {
            try h.startExactConsumer($0.0, dataType: $0.1)
        }
        defer { for p in consumers where p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        try h.waitForHealthy(["sinka-0", "sinka-1", "sinkb-0", "sinkb-1"])
        // The consumers stop reading, so both workers hold frames when SIGTERM comes; they read again while
        // the workers drain.
        for p in consumers { kill(p.processIdentifier, SIGSTOP) }
        for type in ["alpha", "beta"] { try h.send("--service", "api", "--data-type", type, "--payload", String(repeating: "d", count: 2000), "--count", "500") }
        try waitFor("frames queued in both workers") {
            let queued = Dictionary(grouping: h.status?.egress ?? [], by: \.dataType).mapValues { $0.reduce(0) { $0 + $1.queued } }
            return (queued["alpha"] ?? 0) > 0 && (queued["beta"] ?? 0) > 0
        }
        h.signalRouter(SIGTERM)
        usleep(200_000)
        for p in consumers { kill(p.processIdentifier, SIGCONT) }
        h.router?.waitUntilExit()
        try waitFor("both types delivered") {
            Set(h.exactReceived(["sinka-0", "sinka-1"], dataType: "alpha")).count == 500
                && Set(h.exactReceived(["sinkb-0", "sinkb-1"], dataType: "beta")).count == 500
        }
        #expect(h.router?.terminationStatus == 0, "\(h.routerLog())")
        #expect(h.status?.stopping == true)
        #expect(h.status?.workers == 2)
        #expect(h.status?.egress.reduce(0) { $0 + $1.frames } == 1000)
    }

    @Test func metrics_mergeEveryWorker_andSIGHUPsInQuickSuccession_reloadWithoutAFailure() throws {
        let h = try MeshHarness(workerMesh())
        let port = 20_000 + Int((getpid() + 7) % 20_000)
        try h.startRouter(["--workers", "2", "--metrics-listen", "127.0.0.1:\(port)"])
        let consumers = try [("sinka-0", "alpha"), ("sinkb-0", "beta")].map { try h.startExactConsumer($0.0, dataType: $0.1) }
        defer { for p in consumers where p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        try h.waitForHealthy(["sinka-0", "sinkb-0"])
        for type in ["alpha", "beta"] { try h.send("--service", "api", "--data-type", type, "--payload", "m", "--count", "100") }
        try waitFor("delivery") {
            h.exactReceived(["sinka-0"], dataType: "alpha").count == 100 && h.exactReceived(["sinkb-0"], dataType: "beta").count == 100
        }
        // Worker 0 serves the metrics of both: its own type's pipes and the other worker's, as last published.
        try waitFor("both workers' counts in the metrics", timeout: 10) {
            let scrape = try? run(
                "/usr/bin/python3", ["-c", "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1]).read().decode())", "http://127.0.0.1:\(port)/metrics"])
            let text = scrape?.stdout ?? ""
            return text.contains("pmm_router_workers 2") && text.contains("instance=\"sinka-0\"") && text.contains("instance=\"sinkb-0\"")
                && text.contains("data_type=\"alpha\"") && text.contains("data_type=\"beta\"")
        }
        // Three reloads asked at once: every worker installs the newest share, none reports a failure.
        for _ in 0..<3 { h.signalRouter(SIGHUP) }
        try waitFor("the reloads") { (h.status?.reloads ?? 0) >= 1 }
        usleep(500_000)
        #expect(h.status?.failedReloads == 0, "\(h.status?.lastReloadError ?? "")")
        #expect(h.router?.isRunning == true)
    }
}
