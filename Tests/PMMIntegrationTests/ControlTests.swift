import Foundation
import Glibc
import PMMCore
import PMMRouter
import PipeMesh
import Testing

/// A spec whose services run as real, distinct uids: api 1001 (produces metrics, 4 shards), collector 1002
/// (2 replicas) and canary 1003 consume it; adminUid 1500 may set routes.
func controlMesh(canaryWeight: Int = 10, collectorReplicas: Int = 2) -> String {
    """
    apiVersion: pmm/v1
    kind: Mesh
    name: control
    root: ROOT
    adminUid: 1500
    dataTypes:
      metrics:
        shards: 4
        qos: {delivery: at-most-once}
        versions: [{version: 2, schema: metrics_v2.proto, message: shop.metrics.v2.Sample}]
    services:
      api:
        uid: 1001
        produces: [{dataType: metrics, version: 2}]
      collector:
        uid: 1002
        replicas: \(collectorReplicas)
        consumes: [{dataType: metrics}]
      canary:
        uid: 1003
        consumes: [{dataType: metrics}]
    routes:
      metrics:
        targets:
          - {service: collector, weight: 90}
          - {service: canary, weight: \(canaryWeight)}

    """
}

/// `pmm serve` (and optionally the router) on a mesh in a temporary directory other uids can reach.
final class ControlHarness {
    let mesh: MeshHarness
    var serve: Process?
    var binaries: String { mesh.dir.path + "/bin" }

    /// - Parameter arguments: more arguments for `pmm serve`.
    init(_ yaml: String = controlMesh(), interval: Double = 0.5, arguments: [String] = []) throws {
        let schema = try String(contentsOfFile: packageRoot + "/schemas/shop/metrics_v2.proto", encoding: .utf8)
        mesh = try MeshHarness(yaml, files: ["metrics_v2.proto": schema])
        chmod(mesh.dir.path, 0o755)
        // Copies of the binaries that other uids can execute, wherever the build directory lives.
        mkdir(binaries, 0o755)
        for name in ["pmm", "example-producer", "example-consumer"] {
            let source = URL(fileURLWithPath: pmmBinary).deletingLastPathComponent().appendingPathComponent(name).path
            try installExecutable(from: source, to: binaries + "/" + name)
        }
        serve = try mesh.spawn(["serve", "-f", mesh.dir.specPath, mesh.stateArgument, "--interval", String(interval)] + arguments, output: mesh.dir.path + "/serve.log")
        try waitFor("the control socket") { FileManager.default.fileExists(atPath: self.mesh.dir.path + "/state/pmm.sock") }
        // Its loop runs (and SIGHUP is trapped) once it says so; a SIGHUP before that would be lost.
        try waitFor("the loop serving") { self.serveLog.contains("serving the control API") }
    }

    deinit {
        if let serve, serve.isRunning {
            kill(serve.processIdentifier, SIGKILL)
            serve.waitUntilExit()
        }
    }

    /// Runs a copied binary as `uid` (gid = uid, no supplementary groups).
    func runAs(_ uid: Int, _ binary: String = "pmm", _ arguments: [String]) throws -> Outcome {
        try run("/usr/bin/setpriv", ["--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", binaries + "/" + binary] + arguments, environment: ["HOME": "/tmp"])
    }

    func spawnAs(_ uid: Int, _ binary: String, _ arguments: [String], output: String) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        process.arguments = ["--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", binary.hasPrefix("/") ? binary : binaries + "/" + binary] + arguments
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        process.standardOutput = FileHandle(forWritingAtPath: output)
        process.standardError = FileHandle(forWritingAtPath: output)
        try process.run()
        return process
    }

    var serveLog: String { (try? String(contentsOfFile: mesh.dir.path + "/serve.log.err", encoding: .utf8)) ?? "" }
}

@Suite(.enabled(if: isRoot, "needs root to run services as their own uids"), .serialized)
struct ControlTests {
    @Test func register_theOwnerMay_aStrangerIsRefusedWithAReason() throws {
        let c = try ControlHarness()
        let owner = try c.runAs(1001, "pmm", ["register", c.mesh.stateArgument, "--service", "api", "-o", "json"])
        #expect(owner.status == 0, "\(owner.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(owner.stdout.utf8)) as? [String: Any])
        #expect(json["instance"] as? String == "api-0")
        #expect(((json["ingress"] as? [String: [String]])?["metrics"])?.count == 4)
        #expect((json["versions"] as? [String: Int])?["metrics"] == 2)
        let stranger = try c.runAs(1002, "pmm", ["register", c.mesh.stateArgument, "--service", "api"])
        #expect(stranger.status == 1)
        #expect(stranger.stderr.contains("refused: uid 1002 may not register service 'api': it runs as uid 1001"), "\(stranger.stderr)")
        #expect(c.serveLog.contains("refused: pid"), "every refusal is logged")
        let events = try run("/usr/bin/python3", ["-c", "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\"select count(*) from event where kind='refused'\").fetchone()[0])", c.mesh.dir.path + "/state/registry.sqlite"])
        #expect(events.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "1", "and an event in the registry")
    }

    @Test func routingRule_rootSetsIt_diffShowsDrift_applyClearsIt_aServiceMayNot() throws {
        let c = try ControlHarness()
        let service = try c.runAs(1002, "pmm", ["route", "set", c.mesh.stateArgument, "--data-type", "metrics", "--service", "canary", "--weight", "50"])
        #expect(service.status == 1 && service.stderr.contains("uid 1002 may not set routing rules"), "\(service.stderr)")
        let admin = try c.runAs(1500, "pmm", ["route", "set", c.mesh.stateArgument, "--data-type", "metrics", "--service", "canary", "--weight", "40"])
        #expect(admin.status == 0, "the mesh's adminUid may: \(admin.stderr)")
        let root = try pmm("route", "set", c.mesh.stateArgument, "--data-type", "metrics", "--service", "canary", "--weight", "50")
        #expect(root.status == 0, "\(root.stderr)")
        let zero = try pmm("route", "set", c.mesh.stateArgument, "--data-type", "metrics", "--service", "api", "--weight", "5")
        #expect(zero.status == 1 && zero.stderr.contains("does not consume"))
        let diff = try pmm("diff", "-f", c.mesh.dir.specPath, c.mesh.stateArgument)
        #expect(diff.status == 1, "drift from the spec is a difference")
        #expect(diff.stdout.contains("routes.metrics.targets.canary.weight: 50 (set at run time by uid 0) → 10 (spec)"), "\(diff.stdout)")
        let apply = try pmm("apply", "-f", c.mesh.dir.specPath, c.mesh.stateArgument)
        #expect(apply.stdout.contains("Cleared the runtime routing rule metrics -> canary weight 50"), "\(apply.stdout)")
        #expect(try pmm("diff", "-f", c.mesh.dir.specPath, c.mesh.stateArgument).status == 0)
    }

    @Test func routingRule_takesEffectInTheRouterAtOnce() throws {
        let c = try ControlHarness()
        try c.mesh.startRouter()
        for instance in ["collector-0", "collector-1", "canary-0"] { try c.mesh.startConsumer(instance, dataType: "metrics") }
        try c.mesh.waitForHealthyConsumers()
        #expect(try pmm("route", "set", c.mesh.stateArgument, "--data-type", "metrics", "--service", "collector", "--weight", "0").status == 0)
        try waitFor("the router's reload") { (c.mesh.status?.reloads ?? 0) >= 1 }
        try c.mesh.send("--service", "api", "--data-type", "metrics", "--payload", "x", "--count", "300")
        try c.mesh.waitForReceived(300)
        #expect(c.mesh.allReceived.allSatisfy { $0.instance == "canary-0" }, "collector's weight is 0 now")
    }

    @Test func pipeName_isStablePerKey_andSpreadsOverTheShards() throws {
        let c = try ControlHarness()
        var shards: Set<String> = []
        for key in 0..<40 {
            let first = try c.runAs(1001, "pmm", ["pipe-name", c.mesh.stateArgument, "--data-type", "metrics", "--shard-key", "user-\(key)"])
            #expect(first.status == 0, "\(first.stderr)")
            if key < 5 {
                let again = try c.runAs(1001, "pmm", ["pipe-name", c.mesh.stateArgument, "--data-type", "metrics", "--shard-key", "user-\(key)"])
                #expect(again.stdout == first.stdout)
            }
            let path = first.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(path.hasPrefix(c.mesh.dir.root + "/api.metrics.s") && path.hasSuffix(".in"))
            let expected = ShardHash.shard(forKey: Array("user-\(key)".utf8), shards: 4)
            #expect(path.hasSuffix("s\(expected).in"))
            shards.insert(path)
        }
        #expect(shards.count == 4, "40 keys reach every shard")
        let foreign = try c.runAs(1002, "pmm", ["pipe-name", c.mesh.stateArgument, "--data-type", "metrics", "--service", "api"])
        #expect(foreign.status == 1 && foreign.stderr.contains("uid 1002 may not"))
    }

    @Test func hundredConcurrentClients_areAllAnswered() throws {
        let c = try ControlHarness()
        let socket = c.mesh.dir.path + "/state/pmm.sock"
        let script = """
            import socket, sys, threading
            def call(i, results):
                s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
                call = bytes([0x0a, 0x07]) + b"metrics" + bytes([0x12, 0x01, 0x41 + i % 26, 0x1a, 0x03]) + b"api"
                body = bytes([0x08, i % 100 + 1, 0x22, len(call)]) + call
                s.sendall(bytes([len(body)]) + body)
                data = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk: break
                    data += chunk
                    if len(data) > 1 and len(data) >= data[0] + 1: break
                results[i] = data; s.close()
            results = {}
            threads = [threading.Thread(target=call, args=(i, results)) for i in range(100)]
            [t.start() for t in threads]; [t.join() for t in threads]
            ok = sum(1 for r in results.values() if b"api.metrics.s" in r)
            print(ok)
            """
        let outcome = try run("/usr/bin/python3", ["-c", script, socket])
        #expect(outcome.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "100", "\(outcome.stdout) \(outcome.stderr)")
    }

    @Test func garbageOnTheSocket_closesThatConnectionOnly() throws {
        let c = try ControlHarness()
        let socket = c.mesh.dir.path + "/state/pmm.sock"
        let garbage = try run("/usr/bin/python3", ["-c", """
            import socket, sys
            for payload in [b"\\x05\\xff\\xff\\xff\\xff\\xff", b"\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff", b"\\xfe\\xff\\x7f"]:
                s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(payload)
                s.settimeout(5)
                print(len(s.recv(100)))
            """, socket])
        #expect(garbage.stdout.split(separator: "\n") == ["0", "0", "0"], "each closed without an answer: \(garbage.stdout) \(garbage.stderr)")
        let after = try pmm("pipe-name", c.mesh.stateArgument, "--data-type", "metrics", "--service", "api")
        #expect(after.status == 0, "the server still answers: \(after.stderr)")
        #expect(c.serveLog.contains("malformed"))
    }

    @Test func selfHeal_bringsBackAPipeRemovedByHand() throws {
        let c = try ControlHarness(interval: 0.3)
        let path = c.mesh.dir.root + "/collector-1.metrics.out"
        unlink(path)
        chmod(c.mesh.dir.root + "/api.metrics.s0.in", 0o666)
        try waitFor("the pipe back", timeout: 5) { FileManager.default.fileExists(atPath: path) }
        try waitFor("the mode repaired", timeout: 5) { c.mesh.dir.lstat("api.metrics.s0.in")?.mode == 0o240 }
        try waitFor("the log line, written after the repair") { c.serveLog.contains("self-heal repaired drift") }
    }

    @Test func sighup_withAChangedSpec_reconciles_andAnInvalidOneIsRefused() throws {
        let c = try ControlHarness()
        c.mesh.dir.write(controlMesh(collectorReplicas: 3).replacingOccurrences(of: "ROOT", with: c.mesh.dir.root))
        kill(c.serve!.processIdentifier, SIGHUP)
        try waitFor("collector-2's pipe") { FileManager.default.fileExists(atPath: c.mesh.dir.root + "/collector-2.metrics.out") }
        try waitFor("the revision") { (try? pmm("history", c.mesh.stateArgument).stdout.contains("serve (SIGHUP)")) == true }
        c.mesh.dir.write("apiVersion: pmm/v1\nkind: Mesh\nname: BROKEN\n")
        kill(c.serve!.processIdentifier, SIGHUP)
        try waitFor("the refusal") { c.serveLog.contains("reload-refused") }
        #expect(c.serve!.isRunning)
        #expect(try pmm("pipe-name", c.mesh.stateArgument, "--data-type", "metrics", "--service", "api").status == 0, "revision 2 keeps serving")
    }

    @Test func registeredProcessThatDies_isDeregistered() throws {
        let c = try ControlHarness(interval: 0.3)
        let consumer = try c.spawnAs(1002, "example-consumer", ["--state-dir", c.mesh.dir.path + "/state", "--service", "collector"], output: c.mesh.dir.path + "/consumer.log")
        try waitFor("the registration") { c.serveLog.contains("registered: collector-0") }
        kill(consumer.processIdentifier, SIGKILL)
        consumer.waitUntilExit()
        try waitFor("the deregistration", timeout: 5) { c.serveLog.contains("lease-ended: collector-0: its process") }
    }

    @Test func exampleProducerAndConsumer_exchangeTypedMessagesThroughTheRouter() throws {
        let c = try ControlHarness()
        try c.mesh.startRouter()
        let state = c.mesh.dir.path + "/state"
        let consumers = try [("collector", 1002), ("collector", 1002), ("canary", 1003)].enumerated().map { index, service in
            try c.spawnAs(service.1, "example-consumer", ["--state-dir", state, "--service", service.0, "--verbose"], output: c.mesh.dir.path + "/consumer\(index).log")
        }
        defer { for p in consumers { kill(p.processIdentifier, SIGKILL) } }
        try waitFor("three healthy instances") { (c.mesh.status?.egress.filter(\.healthy).count ?? 0) == 3 }
        let producer = try c.runAs(1001, "example-producer", ["--state-dir", state, "--service", "api", "--count", "400", "--rate", "0"])
        #expect(producer.status == 0, "\(producer.stdout) \(producer.stderr)")
        #expect(producer.stdout.contains("api-0: sent 400"))
        func lines() -> [String] {
            (0..<3).flatMap { index in
                ((try? String(contentsOfFile: c.mesh.dir.path + "/consumer\(index).log", encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
            }.filter { $0.contains("(v2, api#") }
        }
        try waitFor("400 typed messages") { lines().count == 400 }
        #expect(lines().allSatisfy { $0.contains("cpu=") && $0.contains("host-") })
        #expect(Set(lines().map { $0.split(separator: ":")[0] }).count == 3, "every instance got some")
    }

    @Test func exampleProducer_keepsItsDefaultSIGPIPE_andSurvivesTheRouterDying() throws {
        let c = try ControlHarness()
        try c.mesh.startRouter()
        let state = c.mesh.dir.path + "/state"
        // example-producer never touches SIGPIPE: only its writer thread blocks it. It starts with the default
        // disposition (env resets the SIG_IGN this test process would pass on).
        let producer = try c.spawnAs(
            1001, "/usr/bin/env",
            ["--default-signal=PIPE", c.binaries + "/example-producer", "--state-dir", state, "--service", "api", "--count", "1500", "--rate", "500"],
            output: c.mesh.dir.path + "/producer.log")
        defer { if producer.isRunning { kill(producer.processIdentifier, SIGKILL) } }
        usleep(1_000_000)
        let status = (try? String(contentsOfFile: "/proc/\(producer.processIdentifier)/status", encoding: .utf8)) ?? ""
        let ignored = status.split(separator: "\n").first { $0.hasPrefix("SigIgn:") }.flatMap { UInt64($0.split(separator: "\t").last ?? "", radix: 16) }
        #expect(ignored.map { $0 & (1 << (UInt64(SIGPIPE) - 1)) == 0 } == true, "the producer ignores SIGPIPE: \(String(describing: ignored))")
        c.mesh.signalRouter(SIGKILL)
        c.mesh.router?.waitUntilExit()
        usleep(500_000)
        try c.mesh.startRouter()
        producer.waitUntilExit()
        let output = (try? String(contentsOfFile: c.mesh.dir.path + "/producer.log", encoding: .utf8)) ?? ""
        #expect(producer.terminationReason == .exit && producer.terminationStatus == 0, "the producer died: \(producer.terminationReason) \(producer.terminationStatus) \(output)")
        #expect(output.contains("sent 1500"), "\(output)")
    }

    @Test func commands_whenTheServerIsNotRunning_sayHowToStartIt() throws {
        let dir = TemporaryDirectory()
        let outcome = try pmm("pipe-name", "--state-dir=\(dir.path)", "--data-type", "metrics")
        #expect(outcome.status == 1)
        #expect(outcome.stderr.contains("is `pmm serve` running for this state directory?"), "\(outcome.stderr)")
    }
}
