public import Foundation
import Glibc
public import PMMCore
public import PMMRegistry
public import PMMSystem

/// What an apply did (or, for a dry run, would do).
public struct ApplyReport: Sendable {
    /// The pipe root applied to.
    public var root: String
    public var plan: Plan
    /// The revision recorded, or nil when nothing changed (or for a dry run).
    public var revision: Revision?
    /// The revision that was current before.
    public var previous: Revision?
    /// Field-level spec changes against the previous revision.
    public var specChanges: [SpecChange]
    public var dryRun: Bool
    /// The previous holder of the apply lock, when it was taken over from a process that died.
    public var tookOverLockFrom: String?
    /// Runtime routing rules this apply cleared (the spec is the truth again).
    public var clearedRules: [RoutingRule] = []
    /// Whether a running router must load the result (a new revision, or cleared rules).
    public var routerNeedsReload: Bool { revision != nil || !clearedRules.isEmpty }
}

/// What `pmm diff` reports.
public struct DiffReport: Sendable {
    public var plan: Plan
    public var specChanges: [SpecChange]
    /// The revision the spec is compared with (the newest applied), if any.
    public var current: Revision?
    /// The number an apply would record.
    public var nextRevision: Int
    /// Runtime routing rules that differ from the spec: apply clears them.
    public var runtimeDrift: [RoutingRule]
    /// Whether apply would record a new revision (pipes or spec change; clearing rules alone records none).
    public var recordsRevision: Bool { !plan.isEmpty || !specChanges.isEmpty || current == nil }
    /// Whether apply would change anything.
    public var hasDifferences: Bool { !plan.isEmpty || !specChanges.isEmpty || current == nil || !runtimeDrift.isEmpty }
}

/// The imperative shell around the pure planner: observe the host, plan, execute, record.
///
/// One per command. Holds the registry open; takes the apply lock only while applying.
public final class Reconciler {
    public let state: StateDirectory
    /// The node this host is in a multi-node mesh (`--node`, `PMM_NODE`): apply, diff and repair touch only
    /// its share of the pipes. Nil on one host.
    public var node: String?
    public let registry: Registry
    let now: @Sendable () -> Date
    /// The newest revision and its parsed spec, until a newer revision is recorded (or another process changes
    /// the registry): the revision's text is parsed once per change, not once per control request.
    var parsedRevision: (revision: Revision, loaded: LoadedSpec, dataVersion: Int)?
    /// How many times a revision's spec text was parsed for `currentRevision` (tests and diagnostics).
    public private(set) var revisionParses = 0
    /// Tests only (`PMM_TEST_CRASH_BEFORE_LINK` / `PMM_TEST_CRASH_AFTER_LINK`): the pipe name before or after
    /// whose link into place this process `_exit`s, as a crash would stop it.
    let crashBeforeLink: String?
    let crashAfterLink: String?

    /// The exit status of a crash asked for by `PMM_TEST_CRASH_BEFORE_LINK` or `PMM_TEST_CRASH_AFTER_LINK`.
    public static let testCrashStatus: Int32 = 86

    /// Opens the registry in `state` (creating the directory when `create`).
    public init(state: StateDirectory, create: Bool = true, now: @escaping @Sendable () -> Date = Date.init) throws(PMMError) {
        self.state = state
        self.now = now
        let environment = ProcessInfo.processInfo.environment
        crashBeforeLink = environment["PMM_TEST_CRASH_BEFORE_LINK"].flatMap { $0.isEmpty ? nil : $0 }
        crashAfterLink = environment["PMM_TEST_CRASH_AFTER_LINK"].flatMap { $0.isEmpty ? nil : $0 }
        do throws(FIFOError) {
            if create { try state.prepare() }
        } catch { throw .system(error) }
        if !create && !state.exists {
            // A read-only command on a host where nothing was ever applied: an empty registry in memory.
            do { registry = try Registry(inMemory: nil) } catch { throw .registry(error) }
            return
        }
        do { registry = try Registry(path: state.registryPath) } catch { throw .registry(error) }
    }

    var timestamp: String {
        ISO8601DateFormatter().string(from: now())
    }

    /// The root's entries and pmm's inventory. Refuses an unsafe root (a symlink, writable by others).
    ///
    /// A FIFO that an interrupted apply linked into place before recording it (its intent names this very inode)
    /// counts as pmm's: the next apply adopts it (`finishIntents`), and `diff` says what that apply will do.
    public func observe(root path: String) throws(PMMError) -> ObservedState {
        try systemOrRegistry {
            var inventory = try registry.inventory()
            guard let root = try PipeRoot.open(path) else {
                return ObservedState(rootExists: false, files: [:], inventory: inventory)
            }
            let files = try root.scan()
            for intent in try registry.intents() where intent.root == path {
                if let file = files[intent.record.name], intent.record.matches(file) { inventory[intent.record.name] = intent.record }
            }
            return ObservedState(rootExists: true, files: files, inventory: inventory)
        }
    }

    /// The pipes `spec` asks for on this host (this node's share of a multi-node mesh): a single-user mesh
    /// (0600) when pmm does not run as root.
    func desiredPipes(_ spec: MeshSpec) -> [DesiredPipe] {
        spec.desiredPipes(singleUserUID: geteuid() == 0 ? nil : geteuid(), node: spec.nodes.isEmpty ? nil : node)
    }

    /// Checks that this host's `node` fits `spec`: a multi-node spec needs a node it declares.
    public func checkNode(of spec: MeshSpec) throws(PMMError) {
        guard !spec.nodes.isEmpty else { return }
        guard let node, spec.node(named: node) != nil else { throw .node(given: node, declared: spec.nodes.map(\.name)) }
    }

    /// What applying `spec` would change.
    public func diff(_ spec: MeshSpec, prune: Bool) throws(PMMError) -> DiffReport {
        let observed = try observe(root: spec.root)
        let plan = Planner.plan(desired: desiredPipes(spec), observed: observed, prune: prune)
        let current: Revision?
        do { current = try registry.latestRevision() } catch { throw .registry(error) }
        let currentSpec = current.flatMap { LoadedSpec.load(SpecFile(revision: $0), rootOverride: $0.root, checkSchemaFiles: false).spec }
        let rules: [RoutingRule]
        do { rules = try registry.routingRules() } catch { throw .registry(error) }
        return DiffReport(
            plan: plan, specChanges: SpecChange.between(currentSpec, spec), current: current,
            nextRevision: (current?.number ?? 0) + 1, runtimeDrift: spec.drift(of: rules))
    }

    /// Makes the host match `loaded`'s spec and records a revision.
    ///
    /// - Parameters:
    ///   - source: what the revision says it came from (`apply`, `rollback to 3`).
    /// - Throws: `PMMError.invalidSpec` or `.conflicts` before anything is changed; `.system` or `.registry`
    ///   if a step fails midway (the inventory then holds exactly what was done, and applying again converges).
    public func apply(_ loaded: LoadedSpec, prune: Bool, dryRun: Bool, source: String = "apply") throws(PMMError) -> ApplyReport {
        guard let spec = loaded.validSpec else { throw .invalidSpec(loaded) }
        let lock: LockFile?
        do {
            lock = dryRun ? nil : try LockFile.acquire(at: state.lockPath, owner: "pmm \(source) -f \(loaded.file.displayPath)", now: timestamp)
        } catch { throw .system(error) }
        defer { withExtendedLifetime(lock) {} }
        if !dryRun { try finishIntents() }

        try checkNode(of: spec)
        let diff = try self.diff(spec, prune: prune)
        let plan = diff.plan
        guard plan.conflicts.isEmpty else { throw .conflicts(root: spec.root, plan.conflicts) }
        var report = ApplyReport(
            root: spec.root, plan: plan, revision: nil, previous: diff.current, specChanges: diff.specChanges, dryRun: dryRun,
            tookOverLockFrom: lock?.tookOverFrom)
        if dryRun { return report }

        try execute(plan, root: spec.root)

        do { report.clearedRules = try registry.clearRoutingRules() } catch { throw .registry(error) }
        if diff.recordsRevision {
            let git = GitInfo.of(file: loaded.file.absolutePath)
            let revision = Revision(
                appliedAt: timestamp, specSHA256: SHA256.hex(loaded.file.text), specText: loaded.file.text,
                specFile: loaded.file.absolutePath, root: spec.root, gitCommit: git?.commit, gitDirty: git?.dirty, source: source,
                summary: Self.summary(plan, specChanges: diff.specChanges), schemaMatrix: Self.encode(loaded.readers),
                node: spec.nodes.isEmpty ? nil : node)
            do { report.revision = try registry.append(revision) } catch { throw .registry(error) }
        }
        return report
    }

    /// The newest applied revision and its spec (with the root it was applied to), or nil before the first
    /// apply. This is what the data plane serves.
    ///
    /// - Parameter runtime: apply the runtime routing rules, the leases registered instances hold, and the
    ///   rates and capacities they asked for (what the router routes by); false gives the revision's spec as
    ///   applied. A lease that has ended (its process gone, its ttl or heartbeats missed) counts for nothing
    ///   here even before `pmm serve` removes it.
    public func currentRevision(runtime: Bool = true) throws(PMMError) -> (revision: Revision, spec: MeshSpec)? {
        guard let (latest, loaded) = try latestParsedRevision() else { return nil }
        guard var spec = loaded.spec, !loaded.diagnostics.hasErrors else { throw .invalidSpec(loaded) }
        if runtime {
            do {
                spec = spec.applying(try registry.routingRules())
                var rates: [String: Int] = [:]
                let seconds = now().timeIntervalSince1970
                for instance in try registry.instances()
                where instance.leaseEnd(now: seconds, processAlive: ProcessTable.isAlive(pid: instance.pid, startTime: instance.pidStartTime)) == nil {
                    spec.leases[instance.instance] = InstanceLease(capacity: instance.capacity)
                    if instance.maxRate > 0 { rates[instance.service] = min(rates[instance.service] ?? Int.max, instance.maxRate) }
                }
                spec = spec.narrowingRates(rates)
            } catch { throw .registry(error) }
        }
        return (latest, spec)
    }

    /// The newest revision with its spec parsed: from `parsedRevision` while no newer revision is recorded and
    /// no other process committed to the registry (one small query per call); parsed again otherwise.
    func latestParsedRevision() throws(PMMError) -> (revision: Revision, loaded: LoadedSpec)? {
        do {
            guard let key = try registry.latestRevisionKey() else { return nil }
            if let parsedRevision, parsedRevision.revision.number == key.number, parsedRevision.revision.specSHA256 == key.specSHA256,
                parsedRevision.dataVersion == key.dataVersion
            {
                return (parsedRevision.revision, parsedRevision.loaded)
            }
            guard let latest = try registry.revision(key.number) else { return nil }
            let loaded = LoadedSpec.load(SpecFile(revision: latest), rootOverride: latest.root, checkSchemaFiles: false)
            revisionParses += 1
            parsedRevision = (latest, loaded, key.dataVersion)
            return (latest, loaded)
        } catch {
            throw .registry(error)
        }
    }

    /// The checked compatibility matrix recorded with `revision` (nil when no schema check ran then).
    public func readers(of revision: Revision) -> [String: [Int: [Int]]]? {
        guard let text = revision.schemaMatrix, let data = text.data(using: .utf8),
            let decoded = try? JSONDecoder().decode([String: [String: [Int]]].self, from: data)
        else { return nil }
        return decoded.mapValues { matrix in
            Dictionary(uniqueKeysWithValues: matrix.compactMap { key, value in Int(key).map { ($0, value) } })
        }
    }

    static func encode(_ readers: [String: [Int: [Int]]]?) -> String? {
        guard let readers else { return nil }
        let stringKeyed = readers.mapValues { matrix in Dictionary(uniqueKeysWithValues: matrix.map { (String($0.key), $0.value) }) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return (try? encoder.encode(stringKeyed)).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Applies revision `number`'s spec again, as a new revision.
    public func rollback(to number: Int, rootOverride: String?, prune: Bool, dryRun: Bool) throws(PMMError) -> ApplyReport {
        let revision: Revision?
        let latest: Revision?
        do {
            revision = try registry.revision(number)
            latest = try registry.latestRevision()
        } catch { throw .registry(error) }
        guard let revision else { throw .noSuchRevision(number, latest: latest?.number) }
        let loaded = LoadedSpec.load(SpecFile(revision: revision), rootOverride: rootOverride ?? revision.root, schemas: .optional)
        return try apply(loaded, prune: prune, dryRun: dryRun, source: "rollback to \(number)")
    }

    /// Carries out `plan` in `rootPath` (created if needed), recording each change in the inventory as it is made.
    func execute(_ plan: Plan, root rootPath: String) throws(PMMError) {
        do {
            try systemOrRegistry {
                let root = try PipeRoot.openOrCreate(rootPath)
                try root.removeLeftovers()
                for change in plan.changes {
                    try execute(change, in: root)
                }
            }
        } catch {
            if case .system(let failure) = error { try? registry.event(kind: "apply-failed", message: failure.description, at: timestamp) }
            throw error
        }
    }

    /// Runs `body`, whose failures are the pipe root's (`FIFOError`) and the registry's (`RegistryError`), and
    /// throws them as `PMMError`.
    func systemOrRegistry<T>(_ body: () throws -> T) throws(PMMError) -> T {
        do {
            return try body()
        } catch let error as FIFOError {
            throw .system(error)
        } catch let error as RegistryError {
            throw .registry(error)
        } catch {
            preconditionFailure("unexpected error \(error)")
        }
    }

    /// Self-heal: makes the live root match the current revision again (pipes deleted, re-moded or replaced
    /// by hand), without recording a revision. Skips the round (nil) when an apply holds the lock.
    ///
    /// - Returns: what was repaired, or nil when nothing was applied yet or another apply is running.
    /// - Throws: `.conflicts` when something pmm must not touch stands in the way (nothing is changed).
    public func repair() throws(PMMError) -> Plan? {
        guard let (revision, spec) = try currentRevision(runtime: false) else { return nil }
        let lock: LockFile
        do {
            lock = try LockFile.acquire(at: state.lockPath, owner: "pmm serve (self-heal of revision \(revision.number))", now: timestamp)
        } catch let error where error.code == .locked {
            return nil
        } catch {
            throw .system(error)
        }
        defer { withExtendedLifetime(lock) {} }
        try finishIntents()
        let observed = try observe(root: spec.root)
        let plan = Planner.plan(desired: desiredPipes(spec), observed: observed, prune: false)
        guard plan.conflicts.isEmpty else { throw .conflicts(root: spec.root, plan.conflicts) }
        guard !plan.isEmpty else { return plan }
        try execute(plan, root: spec.root)
        let summary = plan.changes.map { "\($0.action.symbol) \($0.name)" }.joined(separator: ", ")
        try? registry.event(kind: "self-heal", message: "revision \(revision.number): \(summary)", at: timestamp)
        return plan
    }

    func execute(_ change: PipeChange, in root: PipeRoot) throws {
        switch change.action {
        case .create:
            guard let pipe = change.desired else { return }
            let prepared = try root.prepareFIFO(pipe.name, uid: pipe.uid, gid: pipe.gid, mode: pipe.mode)
            try linkIntoPlace(prepared, for: pipe, action: .create, in: root) { () throws(FIFOError) in try root.link(prepared) }
        case .replace:
            guard let pipe = change.desired, let observed = change.observed else { return }
            let prepared = try root.prepareFIFO(pipe.name, uid: pipe.uid, gid: pipe.gid, mode: pipe.mode)
            try linkIntoPlace(prepared, for: pipe, action: .replace, in: root) { () throws(FIFOError) in
                try root.rename(prepared, over: observed)
            }
        case .update:
            guard let pipe = change.desired, let observed = change.observed else { return }
            let file = observed.mode == pipe.mode ? observed : try root.setMode(pipe.name, expected: observed, mode: pipe.mode)
            try registry.record(InventoryRecord(pipe, file))
        case .delete:
            if let observed = change.observed {
                try root.removeFIFO(change.name, expected: observed)
            }
            try registry.forget(change.name)
        case .noop:
            return
        }
    }

    // MARK: Intents

    /// Links a prepared FIFO into place with an intent recorded first, then records it in the inventory (which
    /// ends the intent). A crash between the link and the inventory row leaves the intent, and the next apply
    /// or self-heal finishes it (`finishIntents`) instead of refusing the pipe as foreign forever after.
    func linkIntoPlace(
        _ prepared: PipeRoot.PreparedFIFO, for pipe: DesiredPipe, action: PipeIntent.Action, in root: PipeRoot,
        link: () throws(FIFOError) -> ObservedFile
    ) throws {
        do {
            try registry.recordIntent(PipeIntent(action: action, root: root.path, record: InventoryRecord(pipe, prepared.file), at: timestamp))
        } catch {
            root.discard(prepared)
            throw error
        }
        crashIfAsked(crashBeforeLink, pipe.name)
        let file: ObservedFile
        do {
            file = try link()
        } catch {
            try? registry.forgetIntent(pipe.name)
            throw error
        }
        crashIfAsked(crashAfterLink, pipe.name)
        try registry.record(InventoryRecord(pipe, file))
    }

    /// Tests only: stops the process at once (no cleanup, no unwinding), as a crash or SIGKILL would.
    func crashIfAsked(_ point: String?, _ name: String) {
        guard let point, point == name || point == "*" else { return }
        _exit(Self.testCrashStatus)
    }

    /// Finishes or undoes what an interrupted apply announced: for each intent left in the registry, a FIFO
    /// at its name that is the intent's very inode (device and inode) was linked by pmm, and is adopted into
    /// the inventory; anything else there (nothing, the old pipe, or what someone put there since) means the
    /// link did not happen, and the intent is dropped (its temporary FIFO goes with the other leftovers). Each
    /// outcome is an event. Runs under the apply lock, before observing.
    ///
    /// - Returns: what was done, one line per intent.
    @discardableResult
    public func finishIntents() throws(PMMError) -> [String] {
        var done: [String] = []
        try systemOrRegistry {
            for intent in try registry.intents() {
                let name = intent.record.name
                let file = try PipeRoot.open(intent.root)?.stat(name)
                let line: String
                if let file, intent.record.matches(file) {
                    try registry.record(intent.record)
                    line = "adopted \(name) (inode \(file.inode)): an apply linked it into place (\(intent.action.rawValue)) and stopped before recording it"
                } else {
                    try registry.forgetIntent(name)
                    line = "dropped the intent to \(intent.action.rawValue) \(name): the apply stopped before linking it into place"
                }
                try? registry.event(kind: "apply-recovered", message: line, at: timestamp)
                done.append(line)
            }
        }
        return done
    }

    /// `2 created, 1 replaced, 1 removed; routes changed`.
    static func summary(_ plan: Plan, specChanges: [SpecChange]) -> String {
        var parts: [String] = []
        for (action, word) in [(Action.create, "created"), (.replace, "replaced"), (.update, "updated"), (.delete, "removed")] {
            let count = plan.count(action)
            if count > 0 { parts.append("\(count) \(word)") }
        }
        if parts.isEmpty { parts.append("no pipe changes") }
        if !specChanges.isEmpty {
            parts.append("\(specChanges.count) spec field\(specChanges.count == 1 ? "" : "s") changed")
        }
        return parts.joined(separator: ", ")
    }
}

extension InventoryRecord {
    init(_ pipe: DesiredPipe, _ file: ObservedFile) {
        self.init(
            name: pipe.name, kind: pipe.kind, dataType: pipe.dataType, uid: file.uid, gid: file.gid, mode: file.mode,
            pipeSize: pipe.pipeSize, device: file.device, inode: file.inode)
    }
}

extension SpecFile {
    /// The spec a revision recorded, as if read from its file.
    init(revision: Revision) {
        self.init(displayPath: "revision \(revision.number)", absolutePath: revision.specFile, text: revision.specText)
    }
}
