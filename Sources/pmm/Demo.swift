import ArgumentParser
import Foundation
import Glibc
import PMMCore
import PMMReconciler
import PMMRegistry
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
            """)

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
            return LoadedSpec.load(try SpecFile.read(specPath), rootOverride: root)
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

        print("\nDone. Next: the data plane (pmm router) moves messages through these pipes.")
    }
}
