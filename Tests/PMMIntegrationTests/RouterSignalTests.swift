import Foundation
import Glibc
import PMMSystem
import Testing

/// `pmm apply` and `pmm serve` signal the router (SIGHUP) only when the process is proven to be it: the holder of
/// `<state-dir>/router.lock`. A `router.pid` left by a crashed router may name a pid the kernel has since given
/// to an unrelated process, which SIGHUP would kill.
@Suite(.enabled(if: isRoot, "apply gives the pipes to their uids"), .serialized)
struct RouterSignalTests {
    /// A live process that is not a router: `sleep 30` by default. It is started with every signal unblocked and
    /// SIGHUP at its default action (the test runner's blocked mask would otherwise be inherited and leave a
    /// SIGHUP pending), so a SIGHUP kills it and `isRunning` tells whether it got one.
    static func bystander(_ arguments: [String] = ["/bin/sleep", "30"]) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [
            "-c",
            "import os, signal, sys; signal.pthread_sigmask(signal.SIG_SETMASK, []); "
                + "signal.signal(signal.SIGHUP, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])",
        ] + arguments
        try process.run()
        return process
    }

    static func stop(_ process: Process) {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    /// A state directory whose `router.pid` names `pid`, as a crashed router leaves it.
    static func stateWithStalePID(_ dir: TemporaryDirectory, _ pid: Int32) throws -> String {
        try dir.state.prepare()
        #expect(FileManager.default.createFile(atPath: dir.state.routerPIDPath, contents: Data("\(pid)\n".utf8)))
        return "--state-dir=\(dir.state.path)"
    }

    @Test func apply_whenRouterPIDNamesAnUnrelatedProcess_andNoRouterRuns_signalsNothing() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec(apiUID: 0, collectorUID: 0)
        let sleeper = try Self.bystander()
        defer { Self.stop(sleeper) }
        let state = try Self.stateWithStalePID(dir, sleeper.processIdentifier)

        let apply = try pmm("apply", "-f", dir.specPath, state)
        #expect(apply.status == 0, "\(apply.stderr)")
        #expect(apply.stdout.contains("Applied revision 1"), "\(apply.stdout)")
        #expect(!apply.stdout.contains("Signalled the router"), "\(apply.stdout)")
        usleep(200_000)
        #expect(sleeper.isRunning, "the unrelated process got no SIGHUP")

        let wait = try pmm("apply", "-f", dir.specPath, state, "--wait")
        #expect(wait.status == 1 && wait.stderr.contains("--wait: no router is running"), "\(wait.stderr)")
        let status = try pmm("status", state)
        #expect(!status.stdout.contains("Router: pid \(sleeper.processIdentifier)"), "\(status.stdout)")
    }

    /// Another process holds router.lock (here flock(1)), and router.pid names a third: neither is the router
    /// that router.pid claims, so neither is signalled.
    @Test func apply_whenRouterPIDIsNotTheLockHolder_signalsNothing() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec(apiUID: 0, collectorUID: 0)
        let sleeper = try Self.bystander()
        defer { Self.stop(sleeper) }
        let state = try Self.stateWithStalePID(dir, sleeper.processIdentifier)
        let holder = try Self.bystander(["/usr/bin/flock", "--exclusive", "--no-fork", dir.state.routerLockPath, "/bin/sleep", "30"])
        defer { Self.stop(holder) }
        try waitFor("flock(1) holds router.lock") {
            (try? LockFile.acquire(at: dir.state.routerLockPath, owner: "probe", now: "now")) == nil
        }

        let apply = try pmm("apply", "-f", dir.specPath, state)
        #expect(apply.status == 0, "\(apply.stderr)")
        #expect(!apply.stdout.contains("Signalled the router"), "\(apply.stdout)")
        usleep(200_000)
        #expect(sleeper.isRunning, "the process router.pid names got no SIGHUP")
        #expect(holder.isRunning, "the lock holder, which router.pid does not name, got no SIGHUP")
    }

    @Test func serve_whenRouterPIDNamesAnUnrelatedProcess_andNoRouterRuns_signalsNothing() throws {
        let dir = TemporaryDirectory()
        dir.writeSpec(apiUID: 0, collectorUID: 0)
        let sleeper = try Self.bystander()
        defer { Self.stop(sleeper) }
        let state = try Self.stateWithStalePID(dir, sleeper.processIdentifier)

        // serve applies the spec at start (a new revision), which is when it would signal a router.
        let serve = Process()
        serve.executableURL = URL(fileURLWithPath: pmmBinary)
        serve.arguments = ["serve", "-f", dir.specPath, state]
        serve.standardOutput = FileHandle.nullDevice
        serve.standardError = FileHandle.nullDevice
        try serve.run()
        defer { Self.stop(serve) }
        try waitFor("the control socket") { FileManager.default.fileExists(atPath: dir.state.socketPath) }
        usleep(200_000)
        #expect(sleeper.isRunning, "the unrelated process got no SIGHUP")
    }

    /// The real router holds router.lock and is named by router.pid: apply signals it, and it serves the new
    /// revision.
    @Test func apply_whenTheRouterRuns_signalsIt() throws {
        let h = try MeshHarness(routerMesh())
        try h.startRouter()
        let pid = try #require(h.router?.processIdentifier)
        #expect(h.dir.state.runningRouterPID == pid)
        h.dir.write(routerMesh(canaryWeight: 20).replacingOccurrences(of: "ROOT", with: h.dir.root))
        let apply = try pmm("apply", "-f", h.dir.specPath, h.stateArgument, "--wait")
        #expect(apply.status == 0, "\(apply.stderr)")
        #expect(apply.stdout.contains("Signalled the router (pid \(pid)) to load revision 2."), "\(apply.stdout)")
        #expect(apply.stdout.contains("The router serves revision 2."), "\(apply.stdout)")
    }
}
