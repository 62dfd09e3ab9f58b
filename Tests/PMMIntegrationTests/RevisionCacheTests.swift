import Foundation
import PMMCore
import PMMReconciler
import PMMRegistry
import PMMSystem
import Testing

/// What the control server reads per request: the spec of the current revision, parsed once per revision.
@Suite(.enabled(if: isRoot, "needs root to give pipes to other uids"))
struct RevisionCacheTests {
    @Test func currentRevision_parsesTheSpecOncePerRevision_notPerCall() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        let reconciler = try Reconciler(state: dir.state)
        _ = try reconciler.apply(try dir.load(), prune: false, dryRun: false)
        for _ in 0..<1000 {
            let current = try #require(try reconciler.currentRevision())
            #expect(current.revision.number == 1 && current.spec.services.count == 2)
        }
        _ = try reconciler.currentRevision(runtime: false)
        #expect(reconciler.revisionParses == 1, "one parse for 1,001 calls: \(reconciler.revisionParses)")

        // Another process records revision 2: the next call sees it, parsed once.
        dir.writeSpec(replicas: 3)
        _ = try Reconciler(state: dir.state).apply(try dir.load(), prune: false, dryRun: false)
        for _ in 0..<100 {
            #expect(try reconciler.currentRevision()?.spec.service(named: "collector")?.replicas == 3)
        }
        #expect(reconciler.revisionParses == 2)
    }

    /// Revisions are never edited, but if the file is changed behind pmm's back, the change is seen (the
    /// router's reload then fails on a corrupt revision instead of serving a stale parse).
    @Test func currentRevision_whenAnotherProcessEditsTheRevision_parsesItAgain() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        let reconciler = try Reconciler(state: dir.state)
        _ = try reconciler.apply(try dir.load(), prune: false, dryRun: false)
        _ = try reconciler.currentRevision()
        let edit = try run(
            "/usr/bin/python3",
            ["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"update revision set specText='kind: ['\"); c.commit()", dir.state.registryPath])
        #expect(edit.status == 0, "\(edit.stderr)")
        #expect(throws: PMMError.self) { try reconciler.currentRevision() }
        #expect(reconciler.revisionParses == 2)
    }

    @Test func currentRevision_stillAppliesRuntimeRulesEveryCall() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        let reconciler = try Reconciler(state: dir.state)
        _ = try reconciler.apply(try dir.load(), prune: false, dryRun: false)
        #expect(try reconciler.currentRevision()?.spec.routes.first?.targets.first?.weight == 1)
        try reconciler.registry.setRoutingRule(RoutingRule(dataType: "metrics", service: "collector", weight: 7, setBy: 0, at: "t"))
        #expect(try reconciler.currentRevision()?.spec.routes.first?.targets.first?.weight == 7, "the overlay is not cached")
        #expect(try reconciler.currentRevision(runtime: false)?.spec.routes.first?.targets.first?.weight == 1)
        #expect(reconciler.revisionParses == 1)
    }
}
