import Foundation
import Glibc
import PMMCore
import PMMRouter
import PipeMesh
import Testing

/// A mesh whose consumer service `collector` (uid 1002, 2 replicas) receives frames only on leased instances;
/// `api` (root) produces `metrics` (2 shards, at-least-once).
func leasedMesh(registration: String = "required") -> String {
    """
    apiVersion: pmm/v1
    kind: Mesh
    name: leased
    root: ROOT
    dataTypes:
      metrics:
        shards: 2
    services:
      api:
        uid: 0
        produces: [{dataType: metrics}]
      collector:
        uid: 1002
        replicas: 2
        registration: \(registration)
        consumes: [{dataType: metrics}]
      canary:
        uid: 1003
        consumes: [{dataType: metrics}]
    routes:
      metrics:
        targets: [{service: collector}]

    """
}

extension ControlHarness {
    /// One column of the registry's tables (sqlite3 through python, as an outside reader would).
    func query(_ sql: String) throws -> [String] {
        let outcome = try run(
            "/usr/bin/python3",
            ["-c", "import sqlite3,sys\nfor row in sqlite3.connect(sys.argv[1]).execute(sys.argv[2]): print(row[0])", mesh.dir.path + "/state/registry.sqlite", sql])
        return outcome.stdout.split(separator: "\n").map(String.init)
    }

    var leases: [String] { (try? query("select instance from instance order by instance")) ?? [] }

    /// The instances the router routes `metrics` to now.
    var routed: Set<String> { Set(mesh.status?.egress.map(\.instance) ?? []) }

    /// A process that runs as `uid` until killed.
    func sleeper(as uid: Int) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        process.arguments = ["--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", "/bin/sleep", "60"]
        try process.run()
        return process
    }
}

@Suite(.enabled(if: isRoot, "needs root to run services as their own uids"), .serialized)
struct LeaseTests {
    @Test func registerWithTTL_outlivesTheShell_andTheSameUIDDeregistersIt() throws {
        let c = try ControlHarness(leasedMesh())
        let register = try c.runAs(1002, "pmm", ["register", c.mesh.stateArgument, "--service", "collector", "--ttl", "60"])
        #expect(register.status == 0, "\(register.stderr)")
        #expect(register.stdout.contains("Registered collector-0: it lasts 60s"), "\(register.stdout)")
        #expect(register.stdout.contains("pmm deregister --service collector --instance collector-0"))
        usleep(600_000)  // more than two lease checks after the CLI exited
        #expect(c.leases == ["collector-0"], "a ttl lease lives with no process")

        let stranger = try c.runAs(1003, "pmm", ["deregister", c.mesh.stateArgument, "--service", "collector"])
        #expect(stranger.status == 1 && stranger.stderr.contains("uid 1003 may not deregister service 'collector'"), "\(stranger.stderr)")
        let deregister = try c.runAs(1002, "pmm", ["deregister", c.mesh.stateArgument, "--service", "collector"])
        #expect(deregister.status == 0, "\(deregister.stderr)")
        #expect(c.leases.isEmpty)
        #expect(try c.query("select message from event where kind='deregistered'").first?.contains("collector-0 by pid") == true)
        let again = try c.runAs(1002, "pmm", ["deregister", c.mesh.stateArgument, "--service", "collector"])
        #expect(again.status == 1 && again.stderr.contains("no instance of 'collector' holds a lease"), "\(again.stderr)")
    }

    @Test func theServicesUID_endsALeaseSomeoneElseMade_andNamesOneWhenSeveralAreHeld() throws {
        let c = try ControlHarness(leasedMesh())
        #expect(try pmm("register", c.mesh.stateArgument, "--service", "collector", "--ttl", "60").status == 0, "root registers collector-0")
        #expect(try c.runAs(1002, "pmm", ["register", c.mesh.stateArgument, "--service", "collector", "--ttl", "60"]).status == 0)
        #expect(c.leases == ["collector-0", "collector-1"])
        let ambiguous = try c.runAs(1002, "pmm", ["deregister", c.mesh.stateArgument, "--service", "collector"])
        #expect(ambiguous.status == 1 && ambiguous.stderr.contains("2 instances of 'collector' hold leases (collector-0, collector-1); name one"), "\(ambiguous.stderr)")
        let taken = try c.runAs(1002, "pmm", ["register", c.mesh.stateArgument, "--service", "collector", "--instance", "collector-0", "--ttl", "60"])
        #expect(taken.status == 1 && taken.stderr.contains("collector-0 holds a lease of uid 0"), "another holder's lease is not taken over: \(taken.stderr)")
        let renewed = try c.runAs(1002, "pmm", ["register", c.mesh.stateArgument, "--service", "collector", "--instance", "collector-1", "--ttl", "90"])
        #expect(renewed.status == 0, "the same uid renews its own ttl lease: \(renewed.stderr)")
        let ended = try c.runAs(1002, "pmm", ["deregister", c.mesh.stateArgument, "--service", "collector", "--instance", "collector-0"])
        #expect(ended.status == 0, "the service's uid ends root's lease on its instance: \(ended.stderr)")
        #expect(c.leases == ["collector-1"])
    }

    @Test func aLeaseForAPid_endsWhenThatProcessDies_andMustBeTheCallersProcess() throws {
        let c = try ControlHarness(leasedMesh())
        let own = try c.sleeper(as: 1002)
        let foreign = try c.sleeper(as: 1003)
        defer { for p in [own, foreign] where p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        let refused = try c.runAs(1002, "pmm", ["register", c.mesh.stateArgument, "--service", "collector", "--pid", "\(foreign.processIdentifier)"])
        #expect(refused.status == 1 && refused.stderr.contains("process \(foreign.processIdentifier) runs as uid 1003, not uid 1002"), "\(refused.stderr)")
        let missing = try c.runAs(1002, "pmm", ["register", c.mesh.stateArgument, "--service", "collector", "--pid", "4000000"])
        #expect(missing.status == 1 && missing.stderr.contains("there is no process 4000000"), "\(missing.stderr)")
        let register = try c.runAs(1002, "pmm", ["register", c.mesh.stateArgument, "--service", "collector", "--pid", "\(own.processIdentifier)"])
        #expect(register.status == 0 && register.stdout.contains("it lives while process \(own.processIdentifier) lives"), "\(register.stdout) \(register.stderr)")
        usleep(600_000)
        #expect(c.leases == ["collector-0"], "the lease outlives the CLI")
        kill(own.processIdentifier, SIGKILL)
        own.waitUntilExit()
        try waitFor("the lease's end", timeout: 5) { c.leases.isEmpty }
        #expect(c.serveLog.contains("lease-ended: collector-0: its process \(own.processIdentifier) is gone"), "\(c.serveLog)")
        #expect(try c.query("select count(*) from event where kind='lease-ended'") == ["1"])
    }

    @Test func aTTLLease_expiresWithAnEvent() throws {
        let c = try ControlHarness(leasedMesh())
        let register = try c.runAs(1002, "pmm", ["register", c.mesh.stateArgument, "--service", "collector", "--ttl", "0.5"])
        #expect(register.status == 0, "\(register.stderr)")
        #expect(c.leases == ["collector-0"])
        try waitFor("the expiry", timeout: 5) { c.leases.isEmpty }
        #expect(try c.query("select message from event where kind='lease-expired'") == [
            "collector-0: its ttl of 0.5s passed without a renewal; it leaves routing"
        ])
        let bad = try c.runAs(1002, "pmm", ["register", c.mesh.stateArgument, "--service", "collector", "--ttl", "soon"])
        #expect(bad.status != 0 && bad.stderr.contains("--ttl 'soon' is not a duration"), "\(bad.stderr)")
    }

    @Test func heartbeats_keepALeaseAlive_andThreeMissedExpireIt() throws {
        let c = try ControlHarness(leasedMesh())
        let mesh = PipeMesh(stateDirectory: c.mesh.dir.path + "/state")
        // A lease of this (long-lived) test process that also needs heartbeats every 0.2 s.
        let registration = try mesh.register(service: "collector", heartbeatInterval: 0.2)
        #expect(registration.leasePID == getpid())
        let heartbeats = registration.startHeartbeats(every: 0.2)
        usleep(1_500_000)  // seven intervals: without heartbeats the lease would have ended after three
        #expect(c.leases == [registration.instance], "\(c.serveLog)")
        #expect(heartbeats.lastError == nil)
        heartbeats.cancel()
        try waitFor("three missed heartbeats", timeout: 5) { c.leases.isEmpty }
        #expect(c.serveLog.contains("lease-expired: \(registration.instance): three heartbeats missed (promised every 0.2s)"), "\(c.serveLog)")
        #expect(throws: PipeMeshError.self, "a heartbeat for an ended lease is refused") { try mesh.heartbeat(instance: registration.instance) }
    }

    /// The two transitions under traffic: an instance receives frames only while it holds a lease; when one
    /// registers its keys move to it at once, when one deregisters everything goes to the other, nothing lost.
    @Test func requiredRegistration_routesOnlyToLeasedInstances_underTraffic() throws {
        let c = try ControlHarness(leasedMesh())
        try c.mesh.startRouter()
        for instance in ["collector-0", "collector-1", "canary-0"] { try c.mesh.startConsumer(instance, dataType: "metrics") }
        try waitFor("the router serving canary-0 (it needs no lease) and no collector") { c.routed == ["canary-0"] }
        #expect(try c.runAs(1002, "pmm", ["register", c.mesh.stateArgument, "--service", "collector", "--instance", "collector-0", "--ttl", "600"]).status == 0)
        try waitFor("collector-0 routed") { c.mesh.status?.egress.contains { $0.instance == "collector-0" && $0.healthy } == true }
        #expect(c.routed == ["collector-0", "canary-0"], "collector-1 holds no lease")
        let status = try pmm("status", c.mesh.stateArgument)
        #expect(status.stdout.contains("Not routed (registration: required, no lease): collector-1"), "\(status.stdout)")

        // 3,000 frames at 600/s (5 s); the transitions happen while they flow.
        let total = 3000
        let sender = try c.mesh.spawn(
            ["send", c.mesh.stateArgument, "--service", "api", "--data-type", "metrics", "--payload", "x", "--count", "\(total)", "--rate", "600"],
            output: c.mesh.dir.path + "/send.log")
        defer { if sender.isRunning { kill(sender.processIdentifier, SIGKILL) } }
        func count(_ instance: String) -> Int { c.mesh.received(instance, dataType: "metrics").count }
        try waitFor("traffic on collector-0") { count("collector-0") >= 300 }
        #expect(count("collector-1") == 0, "no lease, no frames")

        #expect(try c.runAs(1002, "pmm", ["register", c.mesh.stateArgument, "--service", "collector", "--instance", "collector-1", "--ttl", "600"]).status == 0)
        try waitFor("collector-1 routed") { c.mesh.status?.egress.contains { $0.instance == "collector-1" && $0.healthy } == true }
        try waitFor("keys on collector-1 at once", timeout: 3) { count("collector-1") >= 50 }
        let bothBefore = count("collector-0")
        try waitFor("both receive") { count("collector-0") > bothBefore + 50 }

        let deregister = try c.runAs(1002, "pmm", ["deregister", c.mesh.stateArgument, "--service", "collector", "--instance", "collector-0"])
        #expect(deregister.status == 0, "\(deregister.stderr)")
        try waitFor("collector-0 out of routing") { !c.routed.contains("collector-0") }
        usleep(300_000)  // what was already in its pipe may still be read
        let settled = count("collector-0")

        sender.waitUntilExit()
        #expect(sender.terminationStatus == 0)
        try waitFor("every frame delivered") { Set(c.mesh.allReceived.map(\.sequence)).count >= total }
        usleep(500_000)
        #expect(count("collector-0") == settled, "no frame reaches an instance after its lease ended")
        let sequences = c.mesh.allReceived.map(\.sequence)
        #expect(Set(sequences) == Set(1...UInt64(total)), "nothing lost end to end")
        #expect(count("canary-0") == 0, "the route does not target canary")
    }
}
