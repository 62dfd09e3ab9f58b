import Foundation
import Glibc
import PMMCore
import PMMReconciler
import PMMRegistry
import PMMSystem
import Testing

/// `pmm apply` stopped dead between linking a FIFO into place and recording it in the inventory (the test
/// hooks `PMM_TEST_CRASH_AFTER_LINK` / `PMM_TEST_CRASH_BEFORE_LINK` make it `_exit(86)` there): the next apply,
/// or self-heal, finishes or undoes the job instead of refusing the pipe as foreign forever after.
@Suite(.enabled(if: isRoot, "needs root to give pipes to other uids"))
struct ApplyCrashTests {
    let crashStatus: Int32 = 86

    func pmmApply(_ dir: TemporaryDirectory, crash: (point: String, pipe: String)? = nil) throws -> Outcome {
        try pmm(
            ["apply", "-f", dir.specPath, "--state-dir=\(dir.path)/state"],
            environment: crash.map { ["PMM_TEST_CRASH_\($0.point)_LINK": $0.pipe] } ?? [:])
    }

    /// One value from the registry, through Python's sqlite3.
    func sql(_ dir: TemporaryDirectory, _ query: String) throws -> String {
        let outcome = try run(
            "/usr/bin/python3",
            ["-c", "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])", dir.path + "/state/registry.sqlite", query])
        return outcome.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func crashAfterLinkingANewPipe_theNextApplyAdoptsIt() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        let crashed = try pmmApply(dir, crash: ("AFTER", "collector-0.metrics.out"))
        #expect(crashed.status == crashStatus, "the hook stopped the apply: \(crashed.status) \(crashed.stderr)")
        let linked = try #require(dir.lstat("collector-0.metrics.out"), "the FIFO was linked into place")
        #expect(try sql(dir, "select count(*) from inventory where name = 'collector-0.metrics.out'") == "0", "and not recorded")

        let diff = try pmm("diff", "-f", dir.specPath, "--state-dir=\(dir.path)/state")
        #expect(!(diff.stdout + diff.stderr).contains("did not create"), "diff sees no conflict: \(diff.stdout) \(diff.stderr)")

        let again = try pmmApply(dir)
        #expect(again.status == 0, "the next apply succeeds: \(again.stdout) \(again.stderr)")
        let inventory = try Reconciler(state: dir.state).registry.inventory()
        let record = try #require(inventory["collector-0.metrics.out"], "the pipe is managed")
        #expect(record.inode == linked.inode && dir.lstat("collector-0.metrics.out")?.inode == linked.inode, "the very FIFO, adopted")
        #expect(record.uid == 1002 && record.mode == 0o420)
        #expect(inventory.count == 4)
        #expect(try sql(dir, "select count(*) from event where kind = 'apply-recovered' and message like 'adopted collector-0.metrics.out%'") == "1")
        #expect(try pmm("diff", "-f", dir.specPath, "--state-dir=\(dir.path)/state").status == 0, "nothing left to do")
    }

    @Test func crashAfterRenamingAReplacement_theNextApplyAdoptsTheNewInode() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        #expect(try pmmApply(dir).status == 0)
        let old = try #require(dir.lstat("api.metrics.s0.in"))
        dir.writeSpec(apiUID: 1005)
        let crashed = try pmmApply(dir, crash: ("AFTER", "api.metrics.s0.in"))
        #expect(crashed.status == crashStatus, "\(crashed.stderr)")
        let replaced = try #require(dir.lstat("api.metrics.s0.in"))
        #expect(replaced.inode != old.inode && replaced.uid == 1005, "the new FIFO is in place")

        let again = try pmmApply(dir)
        #expect(again.status == 0, "the next apply succeeds: \(again.stdout) \(again.stderr)")
        let record = try #require(try Reconciler(state: dir.state).registry.inventory()["api.metrics.s0.in"])
        #expect(record.inode == replaced.inode && record.uid == 1005)
        #expect(dir.lstat("api.metrics.s0.in")?.inode == replaced.inode, "not replaced a second time")
        #expect(try pmm("diff", "-f", dir.specPath, "--state-dir=\(dir.path)/state").status == 0)
    }

    @Test func crashBeforeTheLink_theNextApplyDropsTheIntent_andCreatesThePipe() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        let crashed = try pmmApply(dir, crash: ("BEFORE", "api.metrics.s1.in"))
        #expect(crashed.status == crashStatus, "\(crashed.stderr)")
        #expect(dir.lstat("api.metrics.s1.in") == nil, "not linked")
        let names = try FileManager.default.contentsOfDirectory(atPath: dir.root)
        #expect(names.contains { $0.hasPrefix(PipeRoot.temporaryPrefix) }, "its temporary FIFO is left: \(names)")
        #expect(try sql(dir, "select count(*) from intent") == "1", "and the intent")

        let again = try pmmApply(dir)
        #expect(again.status == 0, "\(again.stdout) \(again.stderr)")
        #expect(try sql(dir, "select count(*) from intent") == "0")
        #expect(try sql(dir, "select count(*) from event where kind = 'apply-recovered' and message like 'dropped the intent to create api.metrics.s1.in%'") == "1")
        let after = try FileManager.default.contentsOfDirectory(atPath: dir.root)
        #expect(!after.contains { $0.hasPrefix(PipeRoot.temporaryPrefix) }, "no leftover: \(after)")
        let record = try #require(try Reconciler(state: dir.state).registry.inventory()["api.metrics.s1.in"])
        #expect(record.inode == dir.lstat("api.metrics.s1.in")?.inode)
    }

    /// Self-heal (`pmm serve`'s repair) finishes the job as well: a pipe removed by hand, an apply that crashed
    /// after linking it back, and repair adopts it instead of refusing.
    @Test func crashAfterLink_selfHealAdoptsThePipe() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        #expect(try pmmApply(dir).status == 0)
        unlink(dir.root + "/collector-1.metrics.out")
        #expect(try pmmApply(dir, crash: ("AFTER", "collector-1.metrics.out")).status == crashStatus)
        let linked = try #require(dir.lstat("collector-1.metrics.out"))
        let plan = try #require(try Reconciler(state: dir.state).repair(), "repair ran")
        #expect(plan.isEmpty && plan.conflicts.isEmpty, "nothing to repair once adopted: \(plan.changes) \(plan.conflicts)")
        #expect(try Reconciler(state: dir.state).registry.inventory()["collector-1.metrics.out"]?.inode == linked.inode)
    }
}
