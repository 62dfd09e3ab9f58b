import Foundation
import Glibc
import Testing

/// `pmm top` in a real terminal: tmux runs the built binary against a real router serving an applied mesh.
@Suite(.enabled(if: isRoot, "services run as uid 0 so the test can play them all"), .serialized)
struct TopTerminalTests {
    static let tmux = ["/usr/bin/tmux", "/usr/local/bin/tmux"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// A tmux server of the test's own (its own socket), so no other tmux session is seen or touched.
    final class Terminal {
        let socket = "pmm-top-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let tmux: String

        init(tmux: String, command: String) throws {
            self.tmux = tmux
            let status = try detached(["-L", socket, "new-session", "-d", "-s", "top", "-x", "160", "-y", "48", command])
            try #require(status == 0, "tmux new-session exited \(status)")
        }

        deinit { _ = try? detached(["-L", socket, "kill-server"]) }

        /// Runs tmux and waits for it, through posix_spawn and waitpid. Not `Process`: the tmux server that
        /// `new-session` forks keeps the descriptors Foundation watches to learn that its child exited, so
        /// `waitUntilExit` would wait for the server.
        func detached(_ arguments: [String]) throws -> Int32 {
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            for fd: Int32 in 0...2 { posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0) }
            let argv: [UnsafeMutablePointer<CChar>?] = ([tmux] + arguments).map { strdup($0) } + [nil]
            defer { for pointer in argv { free(pointer) } }
            // The test runner blocks signals the tmux server needs (SIGCHLD, SIGHUP, SIGTERM): start it with none
            // blocked and default dispositions, as from a shell.
            var attributes = posix_spawnattr_t()
            posix_spawnattr_init(&attributes)
            defer { posix_spawnattr_destroy(&attributes) }
            var none = sigset_t()
            sigemptyset(&none)
            var all = sigset_t()
            sigfillset(&all)
            sigdelset(&all, SIGKILL)
            sigdelset(&all, SIGSTOP)
            posix_spawnattr_setsigmask(&attributes, &none)
            posix_spawnattr_setsigdefault(&attributes, &all)
            posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
            var pid: pid_t = 0
            let spawned = posix_spawn(&pid, tmux, &actions, &attributes, argv, environ)
            try #require(spawned == 0, "posix_spawn tmux: \(spawned)")
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            return (status >> 8) & 0xff
        }

        func capture() -> String {
            (try? run(tmux, ["-L", socket, "capture-pane", "-p", "-t", "top"]).stdout) ?? ""
        }

        func send(_ keys: String...) throws {
            let sent = try run(tmux, ["-L", socket, "send-keys", "-t", "top"] + keys)
            #expect(sent.status == 0, "tmux send-keys: \(sent.stderr)")
        }
    }

    @Test func top_inATerminal_showsEveryInstance_andQuitsOnQ() throws {
        let tmux = try #require(Self.tmux, "tmux is missing: run scripts/setup")
        let h = try MeshHarness(routerMesh(collectorReplicas: 2))
        try h.startRouter()
        try h.startConsumer("collector-0", dataType: "metrics")
        try h.startConsumer("canary-0", dataType: "metrics")
        try h.waitForHealthyConsumers()
        try h.send("--service", "api", "--data-type", "metrics", "--keys", "20", "--payload", "p", "--count", "200")
        // After q the shell prints the exit status and waits, so the pane outlives pmm top.
        let terminal = try Terminal(
            tmux: tmux, command: "NO_COLOR=1 \(pmmBinary) top \(h.stateArgument) --interval 0.5; echo \"top exited $?\"; sleep 60")
        var pane = ""
        try waitFor("pmm top to draw every instance") {
            pane = terminal.capture()
            return ["collector-0", "collector-1", "canary-0", "api", "web"].allSatisfy { pane.contains($0) }
        }
        #expect(pane.contains("pmm top · mesh routed · revision 1"), "\(pane)")
        #expect(pane.contains("INSTANCE") && pane.contains("PRODUCER"))
        let rows = pane.split(separator: "\n")
        #expect(rows.contains { $0.hasPrefix("collector-0") && $0.contains("healthy") }, "\(pane)")
        #expect(rows.contains { $0.hasPrefix("collector-1") && $0.contains("down") }, "\(pane)")
        #expect(rows.contains { $0.hasPrefix("canary-0") && $0.contains("healthy") }, "\(pane)")
        #expect(pane.contains("q quits"))
        #expect(!pane.contains("\u{1B}"), "capture-pane -p prints text only")
        try terminal.send("q")
        try waitFor("pmm top to quit on q", timeout: 5) { terminal.capture().contains("top exited 0") }
        // The alternate screen is gone: the shell's own screen is back.
        #expect(!terminal.capture().contains("INSTANCE"))
    }

    @Test func top_inATerminal_quitsOnCtrlC() throws {
        let tmux = try #require(Self.tmux, "tmux is missing: run scripts/setup")
        let h = try MeshHarness(routerMesh(collectorReplicas: 1))
        try h.startRouter()
        let terminal = try Terminal(tmux: tmux, command: "\(pmmBinary) top \(h.stateArgument); echo \"top exited $?\"; sleep 60")
        try waitFor("pmm top to draw") { terminal.capture().contains("collector-0") }
        try terminal.send("C-c")
        try waitFor("pmm top to quit on Ctrl-C", timeout: 5) { terminal.capture().contains("top exited 0") }
    }

    @Test func topOnce_printsOneFrame_withoutEscapes_whenPiped() throws {
        let h = try MeshHarness(routerMesh(collectorReplicas: 1))
        try h.startRouter()
        let outcome = try pmm("top", "--once", h.stateArgument, environment: ["NO_COLOR": "1"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout.contains("collector-0") && outcome.stdout.contains("canary-0"))
        #expect(!outcome.stdout.contains("\u{1B}"))
        #expect(!outcome.stdout.contains("q quits"))
    }

    @Test func topOnce_whenNoRouter_exits1() throws {
        let h = try MeshHarness(routerMesh(collectorReplicas: 1))
        let outcome = try pmm("top", "--once", h.stateArgument)
        #expect(outcome.status == 1)
        #expect(outcome.stdout.contains("No router status"), "\(outcome.stdout)")
        let quiet = try pmm("top", "--once", "--quiet", h.stateArgument)
        #expect(quiet.status == 1 && quiet.stdout.isEmpty)
        #expect(try pmm("top", "--quiet", h.stateArgument).status == 64, "--quiet without --once is a usage error")
    }

    @Test func graphLive_colorsTheDownInstance_andWithoutARouterExits1() throws {
        let h = try MeshHarness(routerMesh(collectorReplicas: 2))
        let none = try pmm("graph", "-f", h.dir.specPath, "--live", h.stateArgument)
        #expect(none.status == 1 && none.stderr.contains("no running router"), "\(none.stderr)")
        try h.startRouter()
        try h.startConsumer("collector-0", dataType: "metrics")
        try h.waitForHealthyConsumers()
        let outcome = try pmm("graph", "-f", h.dir.specPath, "--live", h.stateArgument)
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout.contains("collector-0 ✓ healthy"))
        #expect(outcome.stdout.contains("collector-1 ✗ down"))
        #expect(outcome.stdout.contains("msg/s"))
        let mermaid = try pmm("graph", "-f", h.dir.specPath, "--live", "-o", "mermaid", h.stateArgument)
        #expect(mermaid.stdout.hasPrefix("---\ntitle: mesh routed"))
        #expect(mermaid.stdout.contains(" down\n"))
    }
}
