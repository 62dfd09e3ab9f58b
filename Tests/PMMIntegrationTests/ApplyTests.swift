import Foundation
import Glibc
import PMMCore
import PMMReconciler
import PMMRegistry
import PMMSystem
import Testing

/// apply against real FIFOs in a temporary root and a real SQLite registry.
@Suite(.enabled(if: isRoot, "needs root to give pipes to other uids"))
struct ApplyTests {
    func apply(_ dir: TemporaryDirectory, prune: Bool = false, dryRun: Bool = false) throws -> ApplyReport {
        try Reconciler(state: dir.state).apply(try dir.load(), prune: prune, dryRun: dryRun)
    }

    @Test func apply_createsPipesWithOwnersAndModes_andRecordsARevision() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        let report = try apply(dir)
        #expect(report.revision?.number == 1)
        let ingress = try #require(dir.lstat("api.metrics.s0.in"))
        #expect(ingress.kind == .fifo && ingress.uid == 1001 && ingress.gid == 0 && ingress.mode == 0o240)
        let egress = try #require(dir.lstat("collector-1.metrics.out"))
        #expect(egress.kind == .fifo && egress.uid == 1002 && egress.mode == 0o420)
        let names = try FileManager.default.contentsOfDirectory(atPath: dir.root).sorted()
        #expect(names == ["api.metrics.s0.in", "api.metrics.s1.in", "collector-0.metrics.out", "collector-1.metrics.out"])
        let revision = try #require(report.revision)
        #expect(revision.specSHA256 == SHA256.hex(try dir.load().file.text))
        #expect(revision.specText.contains("name: test"))
    }

    @Test func apply_isIdempotent() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        _ = try apply(dir)
        let inode = dir.lstat("api.metrics.s0.in")?.inode
        let second = try apply(dir)
        #expect(second.plan.isEmpty && second.revision == nil)
        #expect(dir.lstat("api.metrics.s0.in")?.inode == inode)
        #expect(try Reconciler(state: dir.state).registry.revisions().count == 1)
    }

    @Test func apply_whenWriterChanges_replacesTheInode() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        _ = try apply(dir)
        let before = try #require(dir.lstat("api.metrics.s0.in"))
        dir.writeSpec(apiUID: 1005)
        let report = try apply(dir)
        #expect(report.plan.count(.replace) == 2)
        let after = try #require(dir.lstat("api.metrics.s0.in"))
        #expect(after.inode != before.inode && after.uid == 1005 && after.mode == 0o240)
    }

    @Test func apply_repairsDrift_modeWidenedAndPipeDeleted() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        _ = try apply(dir)
        let widened = try #require(dir.lstat("collector-0.metrics.out"))
        chmod(dir.root + "/collector-0.metrics.out", 0o666)
        unlink(dir.root + "/collector-1.metrics.out")
        chmod(dir.root + "/api.metrics.s0.in", 0o200)  // narrowed: fixed in place
        let narrowed = try #require(dir.lstat("api.metrics.s0.in"))
        let report = try apply(dir)
        #expect(report.plan.changes.map { "\($0.action) \($0.name)" } == [
            "create collector-1.metrics.out", "replace collector-0.metrics.out", "update api.metrics.s0.in",
        ])
        #expect(dir.lstat("collector-0.metrics.out").map { ($0.mode, $0.inode != widened.inode) } ?? (0, false) == (0o420, true))
        #expect(dir.lstat("api.metrics.s0.in").map { ($0.mode, $0.inode) } ?? (0, 0) == (0o240, narrowed.inode))
        #expect(dir.lstat("collector-1.metrics.out")?.kind == .fifo)
    }

    @Test func apply_whenSymlinkIsPlanted_refusesAndChangesNothing() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        _ = try apply(dir)
        unlink(dir.root + "/api.metrics.s1.in")
        dir.write("secret", to: "target.txt")
        symlink(dir.path + "/target.txt", dir.root + "/api.metrics.s1.in")
        chmod(dir.root + "/collector-0.metrics.out", 0o666)
        #expect {
            _ = try apply(dir)
        } throws: { error in
            guard case PMMError.conflicts(_, let conflicts) = error else { return false }
            return conflicts.map(\.name) == ["api.metrics.s1.in"] && conflicts[0].problem.contains("symbolic link")
        }
        // Nothing changed: the drifted mode is still there, the link and its target untouched.
        #expect(dir.lstat("collector-0.metrics.out")?.mode == 0o666)
        #expect(dir.lstat("api.metrics.s1.in")?.kind == .symlink)
        #expect(try String(contentsOfFile: dir.path + "/target.txt", encoding: .utf8) == "secret")
        var st = stat()
        stat(dir.path + "/target.txt", &st)
        #expect(st.st_mode & 0o777 == 0o644 && st.st_uid == 0)
    }

    @Test func apply_whenRootIsASymlink_refuses() throws {
        let dir = TemporaryDirectory()
        mkdir(dir.path + "/real", 0o755)
        symlink(dir.path + "/real", dir.root)
        dir.writeSpec()
        #expect {
            _ = try apply(dir)
        } throws: { error in
            guard case PMMError.system(let failure) = error else { return false }
            return failure.code == .symlink
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path + "/real").isEmpty)
    }

    @Test func apply_whenRootIsWritableByOthers_refuses() throws {
        let dir = TemporaryDirectory()
        mkdir(dir.root, 0o755)
        chmod(dir.root, 0o777)
        dir.writeSpec()
        #expect {
            _ = try apply(dir)
        } throws: { error in
            guard case PMMError.system(let failure) = error else { return false }
            return failure.code == .unsafePermissions && failure.description.contains("chmod go-w")
        }
    }

    @Test func apply_whenRootBelongsToAnotherUser_refuses() throws {
        let dir = TemporaryDirectory()
        mkdir(dir.root, 0o755)
        chown(dir.root, 1001, 1001)
        dir.writeSpec()
        #expect {
            _ = try apply(dir)
        } throws: { error in
            guard case PMMError.system(let failure) = error else { return false }
            return failure.code == .unsafeOwner && failure.path == dir.root
        }
    }

    @Test func apply_neverTouchesForeignFiles_evenWithPrune() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        _ = try apply(dir)
        dir.write("keep me", to: "pipes/notes.txt")
        mkfifo(dir.root + "/someone-elses.fifo", 0o600)
        dir.writeSpec(replicas: 1)
        let report = try apply(dir, prune: true)
        #expect(report.plan.changes.map { "\($0.action) \($0.name)" } == ["delete collector-1.metrics.out"])
        #expect(dir.lstat("notes.txt")?.kind == .regular && dir.lstat("someone-elses.fifo")?.kind == .fifo)
        #expect(dir.lstat("collector-1.metrics.out") == nil)
    }

    @Test func apply_whenForeignFIFOStandsAtAPipePath_refuses() throws {
        let dir = TemporaryDirectory()
        mkdir(dir.root, 0o755)
        mkfifo(dir.root + "/api.metrics.s0.in", 0o600)
        dir.writeSpec()
        #expect {
            _ = try apply(dir)
        } throws: { error in
            guard case PMMError.conflicts(_, let conflicts) = error else { return false }
            return conflicts.map(\.name) == ["api.metrics.s0.in"]
        }
        #expect(dir.lstat("api.metrics.s0.in")?.mode == 0o600)
        #expect(dir.lstat("api.metrics.s1.in") == nil, "nothing else was created either")
    }

    @Test func apply_withoutPrune_reportsOrphans_andPruneRemovesThem() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec(replicas: 3)
        _ = try apply(dir)
        dir.writeSpec(replicas: 1)
        let kept = try apply(dir)
        #expect(kept.plan.orphans.map(\.name) == ["collector-1.metrics.out", "collector-2.metrics.out"])
        #expect(dir.lstat("collector-2.metrics.out") != nil)
        let pruned = try apply(dir, prune: true)
        #expect(pruned.plan.count(.delete) == 2)
        #expect(dir.lstat("collector-1.metrics.out") == nil && dir.lstat("collector-2.metrics.out") == nil)
        #expect(try Reconciler(state: dir.state).registry.inventory().count == 3)
    }

    @Test func apply_dryRun_changesNothing() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        let report = try apply(dir, dryRun: true)
        #expect(report.plan.count(.create) == 4 && report.revision == nil)
        #expect(!FileManager.default.fileExists(atPath: dir.root))
    }

    @Test func rollback_appliesAnOldRevisionAsANewOne() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec(replicas: 1)
        _ = try apply(dir)
        dir.writeSpec(replicas: 3)
        _ = try apply(dir)
        let report = try Reconciler(state: dir.state).rollback(to: 1, rootOverride: nil, prune: true, dryRun: false)
        #expect(report.revision?.number == 3 && report.revision?.source == "rollback to 1")
        #expect(report.plan.count(.delete) == 2)
        #expect(dir.lstat("collector-1.metrics.out") == nil)
        #expect {
            _ = try Reconciler(state: dir.state).rollback(to: 9, rootOverride: nil, prune: false, dryRun: false)
        } throws: { error in
            guard case PMMError.noSuchRevision(9, latest: 3) = error else { return false }
            return true
        }
    }

    @Test func apply_whenAnotherApplyHoldsTheLock_refusesNamingIt() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        try dir.state.prepare()
        let held = try LockFile.acquire(at: dir.state.lockPath, owner: "pmm apply -f other.yaml", now: "now")
        #expect {
            _ = try apply(dir)
        } throws: { error in
            guard case PMMError.system(let failure) = error else { return false }
            return failure.code == .locked && failure.message.contains("pid \(getpid())") && failure.message.contains("other.yaml")
        }
        withExtendedLifetime(held) {}
    }

    @Test func apply_whenLockHolderDied_takesTheLockOver() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        try dir.state.prepare()
        // A holder killed with SIGKILL: flock(1) holds the lock until killed.
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/flock")
        holder.arguments = ["--exclusive", "--no-fork", dir.state.lockPath, "sleep", "60"]
        try holder.run()
        var held = false
        for _ in 0..<250 where !held {
            held = (try? LockFile.acquire(at: dir.state.lockPath, owner: "probe", now: "now")) == nil
            if !held { usleep(20_000) }
        }
        try #require(held, "flock(1) never took the lock")
        #expect("refused while the holder lives") {
            _ = try apply(dir)
        } throws: { error in
            guard case PMMError.system(let failure) = error else { return false }
            return failure.code == .locked && failure.path == dir.state.lockPath
        }
        kill(holder.processIdentifier, SIGKILL)
        holder.waitUntilExit()
        let report = try apply(dir)
        #expect(report.revision?.number == 1)
    }

    @Test func apply_leavesNoTemporaryFiles() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec()
        _ = try apply(dir)
        mkfifo(dir.root + "/\(PipeRoot.temporaryPrefix)123-api.metrics.s0.in", 0)  // left by a killed apply
        dir.writeSpec(apiUID: 1009)
        _ = try apply(dir)
        let names = try FileManager.default.contentsOfDirectory(atPath: dir.root)
        #expect(!names.contains { $0.hasPrefix(PipeRoot.temporaryPrefix) })
    }
}

@Suite struct RegistryTests {
    @Test func registry_persistsRevisionsAndInventoryAcrossOpens() throws {
        let dir = TemporaryDirectory()
        let path = dir.path + "/r.sqlite"
        do {
            let registry = try Registry(path: path)
            let revision = try registry.append(Revision(appliedAt: "t", specSHA256: "abc", specText: "x", specFile: "/m.yaml", root: "/r", gitCommit: "c0ffee", gitDirty: true, source: "apply", summary: "s"))
            #expect(revision.number == 1)
            try registry.record(InventoryRecord(name: "a.b.s0.in", kind: .ingress, dataType: "b", uid: 4_000_000_000, gid: 1, mode: 0o240, pipeSize: nil, device: UInt64.max, inode: 1 << 63))
        }
        let reopened = try Registry(path: path)
        let revision = try #require(try reopened.latestRevision())
        #expect(revision.gitCommit == "c0ffee" && revision.gitDirty == true && revision.root == "/r")
        let record = try #require(try reopened.inventory()["a.b.s0.in"])
        #expect(record.uid == 4_000_000_000 && record.device == UInt64.max && record.inode == 1 << 63 && record.pipeSize == nil)
        try reopened.forget("a.b.s0.in")
        #expect(try reopened.inventory().isEmpty)
        #expect(try reopened.events().contains { $0.kind == "revision" })
    }

    @Test func registry_whenFileIsNotADatabase_failsWithItsPath() throws {
        let dir = TemporaryDirectory()
        dir.write(String(repeating: "garbage ", count: 200), to: "r.sqlite")
        #expect {
            _ = try Registry(path: dir.path + "/r.sqlite")
        } throws: { error in
            (error as? RegistryError)?.description.contains("r.sqlite") == true
        }
    }
}
