import PMMCore
import Testing

/// A small spec: api produces metrics (2 shards), collector (2 replicas) consumes them.
func sampleSpec(apiUID: UInt32 = 1001, collectorReplicas: Int = 2, shards: Int = 2) -> MeshSpec {
    MeshSpec(
        name: "shop", root: "/run/pmm/shop",
        dataTypes: [DataType(name: "metrics", shards: shards)],
        services: [
            Service(name: "api", uid: apiUID, produces: [Binding(dataType: "metrics")]),
            Service(name: "collector", uid: 1002, replicas: collectorReplicas, consumes: [Binding(dataType: "metrics")]),
        ])
}

/// The observed state after `spec` was applied exactly, with inodes 1, 2, …
func applied(_ spec: MeshSpec) -> ObservedState {
    var state = ObservedState(rootExists: true)
    for (index, pipe) in spec.desiredPipes().enumerated() {
        let inode = UInt64(index + 1)
        state.files[pipe.name] = ObservedFile(
            name: pipe.name, kind: .fifo, uid: pipe.uid, gid: pipe.gid, mode: pipe.mode, device: 7, inode: inode)
        state.inventory[pipe.name] = InventoryRecord(
            name: pipe.name, kind: pipe.kind, dataType: pipe.dataType, uid: pipe.uid, gid: pipe.gid, mode: pipe.mode,
            pipeSize: pipe.pipeSize, device: 7, inode: inode)
    }
    return state
}

@Suite struct DesiredStateTests {
    @Test func desiredPipes_listsIngressPerShardAndEgressPerInstance() {
        let pipes = sampleSpec().desiredPipes()
        #expect(pipes.map(\.name) == ["api.metrics.s0.in", "api.metrics.s1.in", "collector-0.metrics.out", "collector-1.metrics.out"])
        let ingress = pipes[0]
        #expect(ingress.uid == 1001 && ingress.gid == 0 && ingress.mode == 0o240 && ingress.kind == .ingress)
        let egress = pipes[2]
        #expect(egress.uid == 1002 && egress.mode == 0o420 && egress.instance == "collector-0")
    }

    @Test func desiredPipes_appliesPipeSizeOverrides() {
        var spec = sampleSpec()
        spec.dataTypes[0].qos.pipeSize = 1 << 20
        spec.services[1].consumes[0].qos.pipeSize = 65536
        let sizes = Dictionary(uniqueKeysWithValues: spec.desiredPipes().map { ($0.name, $0.pipeSize) })
        #expect(sizes["api.metrics.s0.in"] == 1 << 20)
        #expect(sizes["collector-0.metrics.out"] == 65536)
    }
}

@Suite struct PlannerTests {
    @Test func plan_onEmptyHost_createsRootAndEveryPipe() {
        let plan = Planner.plan(desired: sampleSpec().desiredPipes(), observed: .empty, prune: false)
        #expect(plan.createRoot)
        #expect(plan.changes.map(\.action) == [.create, .create, .create, .create])
        #expect(plan.conflicts.isEmpty && plan.orphans.isEmpty)
    }

    @Test func plan_whenHostMatches_isEmpty() {
        let spec = sampleSpec()
        let plan = Planner.plan(desired: spec.desiredPipes(), observed: applied(spec), prune: true)
        #expect(plan.isEmpty)
        #expect(plan.unchanged.count == 4)
    }

    @Test func plan_whenWriterChanges_replaces() throws {
        let plan = Planner.plan(desired: sampleSpec(apiUID: 1005).desiredPipes(), observed: applied(sampleSpec()), prune: false)
        #expect(plan.changes.map(\.action) == [.replace, .replace])
        let change = try #require(plan.changes.first)
        #expect(change.fields == [FieldChange(field: "owner", before: "uid 1001", after: "uid 1005")])
        #expect(change.reason?.contains("new inode") == true)
    }

    @Test func plan_whenModeWidenedByHand_replaces_andWhenNarrowed_updates() {
        let spec = sampleSpec()
        var observed = applied(spec)
        observed.files["api.metrics.s0.in"]!.mode = 0o666
        observed.files["api.metrics.s1.in"]!.mode = 0o200
        let plan = Planner.plan(desired: spec.desiredPipes(), observed: observed, prune: false)
        #expect(plan.changes.map { "\($0.action) \($0.name)" } == ["replace api.metrics.s0.in", "update api.metrics.s1.in"])
    }

    @Test func plan_whenPipeSizeChanges_updatesInPlace() {
        let spec = sampleSpec()
        var bigger = spec
        bigger.dataTypes[0].qos.pipeSize = 1 << 20
        let plan = Planner.plan(desired: bigger.desiredPipes(), observed: applied(spec), prune: false)
        #expect(plan.changes.count == 4)
        #expect(plan.changes.allSatisfy { $0.action == .update && $0.fields.map(\.field) == ["size"] })
    }

    @Test func plan_whenPipeDeletedByHand_recreates() {
        let spec = sampleSpec()
        var observed = applied(spec)
        observed.files["collector-1.metrics.out"] = nil
        let plan = Planner.plan(desired: spec.desiredPipes(), observed: observed, prune: false)
        #expect(plan.changes.map(\.action) == [.create])
        #expect(plan.changes[0].reason == "it was removed outside pmm")
    }

    @Test(arguments: [FileKind.symlink, .regular, .directory, .socket])
    func plan_whenSomethingElseStandsAtAPipePath_conflicts(_ kind: FileKind) {
        let spec = sampleSpec()
        var observed = applied(spec)
        observed.files["api.metrics.s0.in"]!.kind = kind
        let plan = Planner.plan(desired: spec.desiredPipes(), observed: observed, prune: true)
        #expect(plan.conflicts.map(\.name) == ["api.metrics.s0.in"])
        #expect(plan.conflicts[0].problem.contains(kind.withArticle))
    }

    @Test func plan_whenFIFOIsNotInInventory_conflicts() {
        let spec = sampleSpec()
        var observed = applied(spec)
        observed.files["api.metrics.s0.in"]!.inode = 999  // replaced by someone else
        observed.inventory["api.metrics.s1.in"] = nil  // never made by pmm
        let plan = Planner.plan(desired: spec.desiredPipes(), observed: observed, prune: true)
        #expect(plan.conflicts.map(\.name) == ["api.metrics.s0.in", "api.metrics.s1.in"])
    }

    @Test func plan_whenSpecDropsPipes_reportsOrphans_andDeletesOnlyWithPrune() {
        let old = sampleSpec(collectorReplicas: 3)
        let new = sampleSpec(collectorReplicas: 2)
        let keep = Planner.plan(desired: new.desiredPipes(), observed: applied(old), prune: false)
        #expect(keep.changes.isEmpty)
        #expect(keep.orphans.map(\.name) == ["collector-2.metrics.out"])
        let prune = Planner.plan(desired: new.desiredPipes(), observed: applied(old), prune: true)
        #expect(prune.changes.map { "\($0.action) \($0.name)" } == ["delete collector-2.metrics.out"])
    }

    @Test func plan_neverTouchesForeignFiles() {
        let spec = sampleSpec()
        var observed = applied(spec)
        observed.files["notes.txt"] = ObservedFile(name: "notes.txt", kind: .regular, uid: 0, gid: 0, mode: 0o644, device: 7, inode: 50)
        observed.files["other.fifo"] = ObservedFile(name: "other.fifo", kind: .fifo, uid: 0, gid: 0, mode: 0o600, device: 7, inode: 51)
        let plan = Planner.plan(desired: [], observed: observed, prune: true)
        #expect(!plan.changes.contains { $0.name == "notes.txt" || $0.name == "other.fifo" })
        #expect(plan.changes.count == 4)
    }

    @Test func plan_whenInventoryFileIsGoneOrReplaced_forgetsWithoutTouching() {
        let spec = sampleSpec()
        var observed = applied(spec)
        observed.files["collector-0.metrics.out"] = nil
        observed.files["collector-1.metrics.out"]!.inode = 77
        let plan = Planner.plan(desired: sampleSpec(collectorReplicas: 0).desiredPipes(), observed: observed, prune: false)
        #expect(plan.changes.map(\.name) == ["collector-0.metrics.out", "collector-1.metrics.out"])
        #expect(plan.changes.allSatisfy { $0.action == .delete && $0.observed == nil })
    }

    @Test func plan_isSortedByPhaseThenName_andDeterministic() {
        let old = sampleSpec(collectorReplicas: 3)
        var observed = applied(old)
        observed.files["api.metrics.s1.in"]!.mode = 0o644
        let new = sampleSpec(collectorReplicas: 2, shards: 3)
        let plan = Planner.plan(desired: new.desiredPipes(), observed: observed, prune: true)
        #expect(plan.changes.map(\.action) == [.create, .replace, .delete])
        #expect(plan == Planner.plan(desired: new.desiredPipes().reversed(), observed: observed, prune: true))
    }
}

@Suite struct RoutingTableTests {
    func spec(canaryWeight: Int = 10, replicas: Int = 3) -> MeshSpec {
        MeshSpec(
            name: "shop", root: "/run/pmm/shop", dataTypes: [DataType(name: "metrics", shards: 4)],
            services: [
                Service(name: "api", uid: 1001, produces: [Binding(dataType: "metrics")]),
                Service(name: "collector", uid: 1002, replicas: replicas, consumes: [Binding(dataType: "metrics")]),
                Service(name: "canary", uid: 1003, consumes: [Binding(dataType: "metrics")]),
            ],
            routes: [
                Route(dataType: "metrics", targets: [
                    RouteTarget(service: "collector", weight: 90), RouteTarget(service: "canary", weight: canaryWeight),
                ])
            ])
    }

    @Test func instance_followsWeights() {
        let table = RoutingTable(spec: spec())
        var canary = 0
        for i in 0..<20_000 where table.instance(forKey: Array("k\(i)".utf8), dataType: "metrics") == "canary-0" {
            canary += 1
        }
        #expect((1_700...2_300).contains(canary), "canary got \(canary) of 20000")
    }

    @Test func instance_whenAnInstanceFails_movesOnlyItsKeys() {
        let table = RoutingTable(spec: spec())
        var moved = 0
        for i in 0..<5_000 {
            let key = Array("k\(i)".utf8)
            let before = table.instance(forKey: key, dataType: "metrics")
            let after = table.instance(forKey: key, dataType: "metrics") { $0 != "collector-1" }
            if before != after {
                #expect(before == "collector-1")
                moved += 1
            }
        }
        #expect(moved > 0)
    }

    @Test func instance_whenNothingIsHealthy_isNil_andUnknownTypeIsNil() {
        let table = RoutingTable(spec: spec())
        #expect(table.instance(forKey: [1], dataType: "metrics") { _ in false } == nil)
        #expect(table.instance(forKey: [1], dataType: "nope") == nil)
    }

    @Test func keyMovement_countsKeysThatChangeShardOrInstance() throws {
        let same = KeyMovement.compare(base: spec(), new: spec(), sampleSize: 1000)
        #expect(same.isEmpty)
        let moved = try #require(KeyMovement.compare(base: spec(), new: spec(canaryWeight: 50), sampleSize: 1000).first)
        #expect(moved.shardMoved == 0 && moved.instanceMoved > 100)
    }
}

@Suite struct SpecDiffTests {
    @Test func between_reportsChangedFields_andIgnoresSpelledOutDefaults() {
        var new = sampleSpec()
        new.services[1].replicas = 3
        #expect(SpecChange.between(sampleSpec(), new).map(\.path) == ["services.collector.replicas"])
        var explicit = sampleSpec()
        explicit.dataTypes[0].qos = QoS(delivery: .atLeastOnce, maxRate: 0, buffer: 10_000, overflow: .block)
        #expect(SpecChange.between(sampleSpec(), explicit).isEmpty)
    }

    @Test func between_withNoBase_listsEverythingAsAdded() {
        let changes = SpecChange.between(nil, sampleSpec())
        #expect(!changes.isEmpty && changes.allSatisfy { $0.action == .create })
    }
}

@Suite struct SingleUserTests {
    @Test func desiredPipes_forANonRootUser_giveItsPipesOwnerReadWrite() {
        let pipes = sampleSpec(apiUID: 1001).desiredPipes(singleUserUID: 1001)
        #expect(pipes.filter { $0.uid == 1001 }.allSatisfy { $0.mode == 0o600 })
        #expect(pipes.filter { $0.uid != 1001 }.allSatisfy { $0.mode == 0o420 })
        #expect(sampleSpec().desiredPipes(singleUserUID: 0) == sampleSpec().desiredPipes(), "root keeps the contract's modes")
    }
}
