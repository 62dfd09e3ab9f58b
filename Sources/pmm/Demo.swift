import ArgumentParser
import Foundation
import Glibc
import PMMCore
import PMMReconciler
import PMMRegistry
import PMMRouter
import PMMSpecYAML
import PMMSystem

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A guided tour on the embedded example mesh, in a temporary directory.",
        discussion: """
            Writes mesh.yaml.example and its schemas into a fresh temporary directory, then validates, diffs and \
            applies it there; drifts the pipes by hand (a widened mode, a deleted pipe, a planted symlink) and \
            shows pmm refuse and repair; changes routes, replicas and shards and shows the diff, the keys that \
            move, prune, history and rollback. Needs no root: run as another user, every service gets that \
            user's uid. Cleans up after itself unless --keep.
            """ + ExitStatus.help("0 the tour ran to its end; 1 a step failed (it says which)"))

    @Option(help: ArgumentHelp("Work in this new directory instead of a temporary one.", valueName: "dir"))
    var dir: String?

    @Flag(help: "Leave the directory in place at the end.")
    var keep = false

    func run() throws {
        let workspace = try makeWorkspace()
        defer {
            if keep { print("\nKept \(workspace).") } else { try? FileManager.default.removeItem(atPath: workspace) }
        }
        do {
            try DemoTour(workspace: workspace, renderer: Renderer(color: useColor)).run()
        } catch let error as PMMError {
            throw report(error, exitCode: 1, color: useColor)
        }
    }

    func makeWorkspace() throws -> String {
        if let dir {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            return dir
        }
        var template = Array((NSTemporaryDirectory() as NSString).appendingPathComponent("pmm-demo-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else {
            printError("error: cannot create a temporary directory: \(String(cString: strerror(errno)))")
            throw ExitCode(1)
        }
        return String(cString: made)
    }
}

/// The steps of the tour. Everything goes through the same library calls as the real commands.
struct DemoTour {
    let workspace: String
    let renderer: Renderer
    var root: String { workspace + "/pipes" }
    var specPath: String { workspace + "/mesh.yaml" }
    var state: StateDirectory { StateDirectory(path: workspace + "/state") }

    func step(_ title: String) {
        print("\n" + renderer.paint("== \(title)", "1;36"))
    }

    /// The example, with every uid and gid made the caller's when not root (only root may give pipes away).
    func exampleText() -> String {
        var text = ExampleMesh.files["mesh.yaml"] ?? ""
        if geteuid() != 0 {
            let uid = geteuid()
            let gid = getegid()
            for (pattern, replacement) in [
                (#"uid: \d+"#, "uid: \(uid)"), (#"gid: \d+"#, "gid: \(gid)"), (#"routerGroup: \d+"#, "routerGroup: \(gid)"),
            ] {
                text = text.replacingOccurrences(of: pattern, with: replacement, options: .regularExpression)
            }
        }
        return text
    }

    func write(_ text: String) throws {
        try text.write(toFile: specPath, atomically: true, encoding: .utf8)
    }

    func load() throws(PMMError) -> LoadedSpec {
        do {
            return LoadedSpec.load(try SpecFile.read(specPath), rootOverride: root, schemas: .optional)
        } catch {
            throw .system(error)
        }
    }

    func apply(prune: Bool = false) throws(PMMError) {
        let report = try Reconciler(state: state).apply(try load(), prune: prune, dryRun: false)
        print(ApplyOutput.text(report, renderer: renderer))
    }

    func diff() throws(PMMError) {
        guard let spec = try load().validSpec else { return }
        let report = try Reconciler(state: state).diff(spec, prune: false)
        print(DiffOutput(root: root, diff: report).text(renderer))
    }

    func listPipes() throws {
        guard let pipeRoot = try PipeRoot.open(root) else { return }
        for file in try pipeRoot.scan().values.sorted(by: { $0.name < $1.name }) {
            print("  \(Planner.octal(file.mode)) \(file.uid):\(file.gid)  \(file.kind.rawValue)  \(file.name)")
        }
    }

    func run() throws {
        print("pmm demo: the control plane on the example mesh, in \(workspace)")
        for (path, text) in ExampleMesh.files.sorted(by: { $0.key < $1.key }) where path != "mesh.yaml" {
            let full = workspace + "/" + path
            try FileManager.default.createDirectory(
                atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try text.write(toFile: full, atomically: true, encoding: .utf8)
        }
        try write(exampleText())

        step("1. pmm validate -f mesh.yaml")
        let loaded = try load()
        guard let spec = loaded.validSpec else { throw PMMError.invalidSpec(loaded) }
        do {
            print("mesh.yaml: valid (\(spec.dataTypes.count) data types, \(spec.services.count) services, \(spec.desiredPipes().count) pipes).")
        }

        step("2. pmm diff: nothing applied yet")
        try diff()

        step("3. pmm apply: the pipes appear with their owners and modes")
        try apply()
        try listPipes()

        step("4. pmm apply again: idempotent")
        try apply()

        step("5. drift by hand: chmod 0666 a pipe, delete another, plant a symlink where a third belongs")
        _ = chmod(root + "/collector-0.metrics.out", 0o666)
        _ = unlink(root + "/billing-1.orders.out")
        _ = unlink(root + "/api.orders.s0.in")
        _ = symlink("/etc/passwd", root + "/api.orders.s0.in")
        print("$ pmm apply   (refused: pmm never follows or replaces a symlink)")
        do {
            try apply()
        } catch {
            guard case .conflicts(let root, let conflicts) = error else { throw error }
            print(renderer.conflicts(conflicts, root: root))
        }
        _ = unlink(root + "/api.orders.s0.in")
        print("$ rm \(root)/api.orders.s0.in; pmm diff")
        try diff()
        print("$ pmm apply   (a widened mode is a new inode: descriptors opened meanwhile lose the pipe)")
        try apply()

        step("6. change the spec: canary weight 10 -> 50, collector replicas 3 -> 2, metrics shards 4 -> 8")
        let before = try load()
        var text = exampleText()
        text = text.replacingOccurrences(of: "weight: 10", with: "weight: 50")
        text = text.replacingOccurrences(of: "replicas: 3 ", with: "replicas: 2 ")
        text = text.replacingOccurrences(of: "shards: 4 ", with: "shards: 8 ")
        try write(text)
        if let old = before.validSpec, let new = try load().validSpec {
            print("$ pmm diff --base <previous mesh.yaml>   (offline, as in CI)")
            for movement in KeyMovement.compare(base: old, new: new) {
                print(
                    "Keys of '\(movement.dataType)': \(movement.shardMoved * 100 / movement.sampled)% move to another shard, \(movement.instanceMoved * 100 / movement.sampled)% to another instance.")
            }
        }
        print("$ pmm diff")
        try diff()
        print("$ pmm apply   (without --prune, pipes no longer named are only reported)")
        try apply()
        print("$ pmm apply --prune")
        try apply(prune: true)

        step("7. pmm history, then pmm rollback 1")
        let reconciler = try Reconciler(state: state)
        do {
            for revision in try reconciler.registry.revisions() {
                print("  \(revision.number)  \(revision.appliedAt)  \(revision.specSHA256.prefix(12))  \(revision.source): \(revision.summary)")
            }
        } catch { throw PMMError.registry(error) }
        let report = try reconciler.rollback(to: 1, rootOverride: root, prune: true, dryRun: false)
        print(ApplyOutput.text(report, renderer: renderer))

        try DataPlaneTour(tour: self).run()
        print("\nDone.")
    }
}

/// The second half of the tour: the router, producers and consumers as real processes, live figures, a
/// consumer killed and its traffic moving.
struct DataPlaneTour {
    let tour: DemoTour
    var seconds: Int = 3

    var binary: String { URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path }
    var stateArgument: String { "--state-dir=\(tour.state.path)" }

    /// The example services (Examples/), when they were built next to pmm.
    var examples: (producer: String, consumer: String)? {
        let directory = (binary as NSString).deletingLastPathComponent
        let producer = directory + "/example-producer"
        let consumer = directory + "/example-consumer"
        guard FileManager.default.isExecutableFile(atPath: producer), FileManager.default.isExecutableFile(atPath: consumer) else { return nil }
        return (producer, consumer)
    }

    func spawn(_ arguments: [String], executable: String? = nil) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable ?? binary)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        process.standardInput = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// SIGTERM, then SIGKILL if the process has not exited after `grace` seconds.
    func stop(_ process: Process, grace: Double = 3) {
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(grace)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    func run() throws {
        let examples = self.examples
        tour.step(
            "8. pmm serve, pmm router; consumers collector-0..2, collector-canary-0, billing-0..1; producer api"
                + (examples == nil ? "" : " (the example services, on the PipeMesh library)"))
        var children: [String: Process] = [:]
        defer {
            for process in children.values where process.isRunning { kill(process.processIdentifier, SIGKILL) }
            for process in children.values { process.waitUntilExit() }
        }
        // The spec on disk is revision 1's again (the rollback), so serve's start-up apply changes nothing.
        try tour.write(tour.exampleText())
        children["serve"] = try spawn(["serve", "-f", tour.specPath, "--root", tour.root, stateArgument, "--log-level", "error"])
        let router = try spawn(["router", stateArgument, "--log-level", "error"])
        children["router"] = router
        let statusPath = tour.state.routerStatusPath
        for _ in 0..<200 where RouterStatus.read(from: statusPath) == nil || !FileManager.default.fileExists(atPath: tour.state.socketPath) {
            usleep(20_000)
        }
        for (instance, dataType) in [
            ("collector-0", "metrics"), ("collector-1", "metrics"), ("collector-2", "metrics"), ("collector-canary-0", "metrics"),
            ("billing-0", "orders"), ("billing-1", "orders"),
        ] {
            if let examples, dataType == "metrics" {
                let service = String(instance[..<instance.lastIndex(of: "-")!])
                children[instance] = try spawn(
                    ["--state-dir", tour.state.path, "--service", service, "--instance", instance], executable: examples.consumer)
            } else {
                children[instance] = try spawn(["tail", stateArgument, "--instance", instance, "--data-type", dataType, "-o", "json"])
            }
        }
        for _ in 0..<200 {
            if (RouterStatus.read(from: statusPath)?.egress.filter(\.healthy).count ?? 0) >= 6 { break }
            usleep(20_000)
        }
        if let examples {
            children["api-metrics"] = try spawn(
                ["--state-dir", tour.state.path, "--service", "api", "--hosts", "1000", "--rate", "4000"], executable: examples.producer)
        } else {
            children["api-metrics"] = try spawn([
                "send", stateArgument, "--service", "api", "--data-type", "metrics", "--keys", "1000", "--rate", "4000",
                "--count", "1000000", "--payload", "cpu=0.42",
            ])
        }
        children["api-orders"] = try spawn([
            "send", stateArgument, "--service", "api", "--data-type", "orders", "--keys", "50", "--rate", "500",
            "--count", "1000000", "--payload", "order",
        ])
        print("api sends metrics at 4000/s over 1000 keys and orders at 500/s; the route gives collector 90, collector-canary 10.")
        var previous = RouterStatus.read(from: statusPath)
        func show(_ rounds: Int) {
            for _ in 0..<rounds {
                sleep(1)
                guard let status = RouterStatus.read(from: statusPath) else { continue }
                let before = Dictionary(uniqueKeysWithValues: (previous?.egress ?? []).map { ($0.name, $0.frames) })
                var line: [String] = []
                var metrics: [(String, UInt64)] = []
                for egress in status.egress.sorted(by: { $0.name < $1.name }) {
                    let rate = egress.frames - (before[egress.name] ?? 0)
                    line.append("\(egress.instance) \(rate)/s\(egress.healthy ? "" : " (down)")")
                    if egress.dataType == "metrics" { metrics.append((egress.instance, rate)) }
                }
                let total = max(1, metrics.reduce(0) { $0 + $1.1 })
                let canary = metrics.filter { $0.0.hasPrefix("collector-canary") }.reduce(0) { $0 + $1.1 }
                print("  " + line.joined(separator: "  ") + String(format: "   canary share %.0f%%", Double(canary) * 100 / Double(total)))
                previous = status
            }
        }
        show(seconds)

        tour.step("9. kill -9 collector-1: the router sees EPIPE and moves its keys to the other instances")
        if let victim = children["collector-1"] {
            kill(victim.processIdentifier, SIGKILL)
            victim.waitUntilExit()
        }
        show(seconds)

        tour.step("10. SIGTERM to the producers and the router: it delivers what it holds and exits 0")
        for name in ["api-metrics", "api-orders"] {
            if let process = children[name] { stop(process) }
        }
        stop(router, grace: 10)
        if let serve = children["serve"] { stop(serve) }
        let status = RouterStatus.read(from: statusPath)
        let sent = status?.ingress.reduce(0) { $0 + $1.frames } ?? 0
        let delivered = status?.egress.reduce(0) { $0 + $1.frames } ?? 0
        print("router exited with status \(router.terminationStatus): \(sent) frames in, \(delivered) delivered, \(status?.egress.reduce(0) { $0 + $1.rerouted } ?? 0) re-routed from the dead instance.")
    }
}
