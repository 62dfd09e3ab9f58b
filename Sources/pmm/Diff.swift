import ArgumentParser
import Foundation
import PMMCore
import PMMReconciler
import PMMRegistry
import PMMSpecYAML
import PMMSystem

struct Diff: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what apply would change. Exit 0: no differences, 1: differences, 2: error.",
        discussion: """
            Compares the spec with the live root (read with lstat; symlinks are never followed) and with pmm's \
            registry: pipes to create (+), replace with a new inode (±), update in place (~) and remove (-); \
            spec fields that change against the current revision (routes, weights, QoS, versions); and the \
            revision apply would record.

            With --base OTHER it works offline, for CI: OTHER is a file or a git revision of the same file \
            (main, HEAD~1, a commit), and the diff shows what the change does to pipes, permissions and routes, \
            and what share of shard keys move to another shard or instance.

            In a mesh with nodes, --node NAME (or PMM_NODE) compares that node's share of the pipes with this \
            host. Without it, every node's share is compared with the same node's share of the current \
            revision (this host cannot see the other nodes' pipes), one section per node.
            """ + ExitStatus.help("0 no differences; 1 differences; 2 an error, or a conflict apply would refuse (as kubectl diff)"))

    @OptionGroup var spec: SpecOptions
    @OptionGroup var state: StateOptions
    @OptionGroup var node: NodeOptions

    @Option(name: .shortAndLong, help: "Output format: text or json.")
    var output: OutputFormat = .text

    @Option(help: ArgumentHelp("Compare with this file or git revision instead of the live host.", valueName: "file-or-rev"))
    var base: String?

    @Flag(help: "Count pipes the spec no longer names as removals (as apply --prune would).")
    var prune = false

    @Flag(name: .shortAndLong, help: "Print nothing (as git diff --quiet): the exit code alone says whether anything would change.")
    var quiet = false

    func run() throws {
        let loaded = try readSpec(spec, failure: 2, schemas: .required, node: node.name)
        guard let desired = loaded.validSpec else {
            throw report(.invalidSpec(loaded), exitCode: 2, color: useColor)
        }
        if !quiet { printDiagnostics(loaded, color: useColor) }  // warnings
        if !desired.nodes.isEmpty && node.name == nil && base == nil { return try everyNode(desired) }
        let result: DiffOutput
        do {
            if let base {
                result = try offline(desired, file: loaded.file, base: base, node: node.name)
            } else {
                let reconciler = try Reconciler(state: state.directory, create: false)
                reconciler.node = node.name
                try reconciler.checkNode(of: desired)
                let diff = try reconciler.diff(desired, prune: prune)
                result = DiffOutput(root: desired.root, diff: diff, spec: desired)
            }
        } catch {
            throw report(error, exitCode: 2, color: useColor)
        }
        if quiet {
        } else if output == .json {
            try printJSON(result)
        } else {
            print(result.text(Renderer(color: useColor)))
        }
        if !result.conflicts.isEmpty { throw ExitCode(2) }
        throw ExitCode(result.differences ? 1 : 0)
    }

    /// A mesh with nodes and no `--node`: each node's share against the same node's share of the current revision.
    func everyNode(_ desired: MeshSpec) throws {
        var shares: [String: DiffOutput] = [:]
        do {
            let reconciler = try Reconciler(state: state.directory, create: false)
            let current = try reconciler.currentRevision(runtime: false)
            for meshNode in desired.nodes {
                shares[meshNode.name] = Self.share(
                    of: desired, node: meshNode.name, base: current?.spec, baseName: current.map { "revision \($0.revision.number)" })
            }
        } catch {
            throw report(error, exitCode: 2, color: useColor)
        }
        if quiet {
        } else if output == .json {
            try printJSON(shares)
        } else {
            for meshNode in desired.nodes {
                print("node \(meshNode.name) (\(meshNode.address)):")
                print(shares[meshNode.name]!.text(Renderer(color: useColor)).split(separator: "\n", omittingEmptySubsequences: false).map { "  " + $0 }.joined(separator: "\n"))
            }
        }
        throw ExitCode(shares.values.contains { $0.differences } ? 1 : 0)
    }

    /// What `desired` does to `node`'s pipes, taking `base`'s share of that node as applied exactly.
    static func share(of desired: MeshSpec, node: String?, base: MeshSpec?, baseName: String?) -> DiffOutput {
        var observed = ObservedState(rootExists: true)
        for (index, pipe) in (base?.desiredPipes(node: base?.nodes.isEmpty == false ? node : nil) ?? []).enumerated() {
            let file = ObservedFile(name: pipe.name, kind: .fifo, uid: pipe.uid, gid: pipe.gid, mode: pipe.mode, device: 0, inode: UInt64(index + 1))
            observed.files[pipe.name] = file
            observed.inventory[pipe.name] = InventoryRecord(
                name: pipe.name, kind: pipe.kind, dataType: pipe.dataType, uid: pipe.uid, gid: pipe.gid, mode: pipe.mode,
                pipeSize: pipe.pipeSize, device: 0, inode: UInt64(index + 1))
        }
        let plan = Planner.plan(desired: desired.desiredPipes(node: desired.nodes.isEmpty ? nil : node), observed: observed, prune: true)
        return DiffOutput(
            root: desired.root, base: baseName, plan: plan, specChanges: base.map { SpecChange.between($0, desired) } ?? [],
            movement: base.map { KeyMovement.compare(base: $0, new: desired) } ?? [])
    }

    /// The diff between `base` (a file or a git revision of the spec) and `desired`, without touching the host.
    func offline(_ desired: MeshSpec, file: SpecFile, base: String, node: String?) throws(PMMError) -> DiffOutput {
        let text: String
        let name: String
        if let baseFile = try? SpecFile.read(base) {
            text = baseFile.text
            name = base
        } else if let shown = GitInfo.show(revision: base, file: file.absolutePath) {
            text = shown
            name = "\(base):\((file.absolutePath as NSString).lastPathComponent)"
        } else {
            throw .baseNotFound(base)
        }
        let baseLoaded = LoadedSpec.load(SpecFile(displayPath: name, absolutePath: file.absolutePath, text: text), rootOverride: spec.rootOverride)
        guard let baseSpec = baseLoaded.spec, !baseLoaded.diagnostics.hasErrors else {
            throw .invalidSpec(baseLoaded)
        }
        // The base's pipes, as if applied exactly: the planner then tells what the change does to them.
        return Self.share(of: desired, node: node, base: baseSpec, baseName: name)
    }
}

/// The diff as both people and machines read it.
struct DiffOutput: Encodable {
    struct Pipe: Encodable {
        var action: String
        var name: String
        var kind: String?
        var dataType: String?
        var fields: [Field]
        var reason: String?
    }
    struct Field: Encodable {
        var field: String
        var before: String
        var after: String
    }
    struct SpecField: Encodable {
        var path: String
        var before: String?
        var after: String?
    }
    struct ConflictEntry: Encodable {
        var name: String
        var problem: String
        var fix: String
    }
    struct Movement: Encodable {
        var dataType: String
        var sampledKeys: Int
        var shardMovedShare: Double
        var instanceMovedShare: Double
    }
    struct RuntimeRule: Encodable {
        var dataType: String
        var service: String
        var runtimeWeight: Int
        var specWeight: Int?
        var setBy: UInt32
        var at: String
    }
    struct RevisionInfo: Encodable {
        var current: Int?
        var next: Int?
    }

    var differences: Bool
    var root: String
    var base: String?
    var pipes: [Pipe]
    var orphans: [Pipe]
    var conflicts: [ConflictEntry]
    var spec: [SpecField]
    var keyMovement: [Movement]
    var revision: RevisionInfo
    var unchangedPipes: Int
    /// Weights set at run time that the spec does not say (apply clears them).
    var runtimeRules: [RuntimeRule] = []

    init(root: String, diff: DiffReport, spec: MeshSpec? = nil) {
        self.init(root: root, base: nil, plan: diff.plan, specChanges: diff.specChanges, movement: [])
        differences = diff.hasDifferences
        runtimeRules = diff.runtimeDrift.map { rule in
            RuntimeRule(
                dataType: rule.dataType, service: rule.service, runtimeWeight: rule.weight,
                specWeight: spec?.effectiveRoute(for: rule.dataType)?.targets.first { $0.service == rule.service }?.weight,
                setBy: rule.setBy, at: rule.at)
        }
        revision = RevisionInfo(current: diff.current?.number, next: diff.recordsRevision ? diff.nextRevision : nil)
    }

    init(root: String, base: String?, plan: Plan, specChanges: [SpecChange], movement: [KeyMovement]) {
        func pipe(_ change: PipeChange) -> Pipe {
            Pipe(
                action: change.action.rawValue, name: change.name, kind: change.desired?.kind.rawValue,
                dataType: change.desired?.dataType,
                fields: change.fields.map { Field(field: $0.field, before: $0.before, after: $0.after) },
                reason: change.reason)
        }
        self.root = root
        self.base = base
        self.pipes = plan.changes.map(pipe)
        self.orphans = plan.orphans.map(pipe)
        self.conflicts = plan.conflicts.map { ConflictEntry(name: $0.name, problem: $0.problem, fix: $0.fix) }
        self.spec = specChanges.map { SpecField(path: $0.path, before: $0.before, after: $0.after) }
        self.keyMovement = movement.map {
            Movement(
                dataType: $0.dataType, sampledKeys: $0.sampled,
                shardMovedShare: Double($0.shardMoved) / Double(max(1, $0.sampled)),
                instanceMovedShare: Double($0.instanceMoved) / Double(max(1, $0.sampled)))
        }
        self.revision = RevisionInfo(current: nil, next: nil)
        self.unchangedPipes = plan.unchanged.count
        self.differences = !plan.isEmpty || !specChanges.isEmpty
        self.plan = plan
    }

    private var plan: Plan
    enum CodingKeys: String, CodingKey {
        case differences, root, base, pipes, orphans, conflicts, spec, keyMovement, revision, unchangedPipes, runtimeRules
    }

    func text(_ r: Renderer) -> String {
        var lines: [String] = []
        let against = base.map { "from \($0)" } ?? (revision.current.map { "against revision \($0) and the live root" } ?? "against the live root (nothing applied yet)")
        lines.append(r.paint("pmm diff \(against)", "1"))
        if plan.createRoot && base == nil { lines.append("  \(r.symbol(.create)) \(root)/  (the root directory)") }
        if plan.changes.isEmpty {
            lines.append("Pipes in \(root): no changes (\(unchangedPipes) as desired).")
        } else {
            lines.append("Pipes in \(root):")
            lines += r.pipes(plan.changes)
        }
        if !plan.orphans.isEmpty {
            lines.append("Pipes pmm made that the spec no longer names (removed only with --prune):")
            lines += r.pipes(plan.orphans)
        }
        if !plan.conflicts.isEmpty { lines.append(r.conflicts(plan.conflicts, root: root)) }
        let specChanges = spec.map { SpecChange(path: $0.path, before: $0.before, after: $0.after) }
        if !specChanges.isEmpty {
            lines.append("Spec fields\(base == nil ? (revision.current.map { " (against revision \($0))" } ?? "") : ""):")
            lines += r.spec(specChanges)
        }
        if !runtimeRules.isEmpty {
            lines.append("Runtime routing rules that differ from the spec (set with pmm route set; apply clears them):")
            for rule in runtimeRules {
                lines.append(
                    "  \(r.symbol(.update)) routes.\(rule.dataType).targets.\(rule.service).weight: \(rule.runtimeWeight) (set at run time by uid \(rule.setBy)) → \(rule.specWeight.map(String.init) ?? "absent") (spec)")
            }
        }
        for movement in keyMovement {
            lines.append(
                "Keys of '\(movement.dataType)': \(percent(movement.shardMovedShare)) move to another shard, \(percent(movement.instanceMovedShare)) to another instance (of \(movement.sampledKeys) sampled).")
        }
        let rules = runtimeRules.isEmpty ? "" : " \(runtimeRules.count) runtime rule\(runtimeRules.count == 1 ? "" : "s") to clear."
        let summary = "\(r.counts(plan, future: true)); \(spec.count) spec field\(spec.count == 1 ? "" : "s") change.\(rules)"
        if !differences {
            lines.append("No differences." + (revision.current.map { " Revision \($0) is current." } ?? ""))
        } else if let next = revision.next {
            lines.append("Summary: \(summary) Apply would record revision \(next).")
        } else {
            lines.append("Summary: \(summary)")
        }
        return lines.joined(separator: "\n")
    }

    func percent(_ share: Double) -> String {
        String(format: "%.1f%%", share * 100)
    }
}
