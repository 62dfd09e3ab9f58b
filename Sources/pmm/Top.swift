import ArgumentParser
import Foundation
import Glibc
import PMMCore
import PMMReconciler
import PMMRegistry
import PMMRouter
import PMMSystem
import PMMViews

struct Top: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A live view of the router: instances, health, msgs/s in and out, queues, stalls, dead letters.",
        discussion: """
            Reads the router's status (<state-dir>/router.json, rewritten every second while anything changes, \
            confirmed every second while nothing does) and redraws it every \
            --interval seconds, like kubectl top or nats-top: one row per consumer instance and data type \
            (health and since when, msgs/s out, frames, queued, in its pipe, stalls, failures, re-routed, dead \
            letters, dropped), one per producer and type (open pipes, msgs/s in, resets, misaddressed, replayed, \
            spooled bytes), totals, frames waiting for an instance and dead letters by reason. Links to other \
            nodes' routers appear when the router reports them.

            q or Ctrl-C quits. The screen is redrawn in place only on a terminal; piped, each frame is printed \
            after the last, and --once prints one frame and exits (for scripts; with --quiet, nothing: \
            only the exit code). Colour only on a terminal, \
            and never with NO_COLOR set.

            Exit codes: 0 done; 1 --once found no running router (the frame says so); 64 bad arguments.
            """)

    @OptionGroup var state: StateOptions

    @Flag(help: "Print one frame and exit.")
    var once = false

    @Flag(name: .shortAndLong, help: "With --once: print nothing; the exit code says whether a router runs.")
    var quiet = false

    @Option(help: ArgumentHelp("Seconds between frames.", valueName: "seconds"))
    var interval: Double = 1

    func validate() throws {
        guard interval >= 0.1, interval <= 3600 else { throw ValidationError("--interval must be between 0.1 and 3600 seconds") }
        if quiet && !once { throw ValidationError("--quiet needs --once (a live view that prints nothing shows nothing)") }
    }

    func run() throws {
        let directory = state.directory
        let color = useColor
        if once {
            let (lines, running) = frame(directory)
            if !quiet { write(lines.joined(separator: "\n") + "\n") }
            if !running { throw ExitCode(1) }
            return
        }
        let screen = isatty(STDOUT_FILENO) == 1 && ProcessInfo.processInfo.environment["TERM"] != "dumb"
        let keyboard = screen && isatty(STDIN_FILENO) == 1
        // q and Ctrl-C arrive as keys (no canonical mode, no echo, no signal keys); SIGINT, SIGTERM and SIGHUP
        // from elsewhere are blocked and looked for between short polls. Either way the terminal is put back
        // before exiting.
        var blocked = sigset_t()
        sigemptyset(&blocked)
        for signal in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&blocked, signal) }
        pthread_sigmask(SIG_BLOCK, &blocked, nil)
        var saved = termios()
        if keyboard, tcgetattr(STDIN_FILENO, &saved) == 0 {
            var raw = saved
            raw.c_lflag &= ~tcflag_t(ICANON | ECHO | ISIG)
            tcsetattr(STDIN_FILENO, TCSANOW, &raw)
        }
        if screen { write("\u{1B}[?1049h\u{1B}[?25l") }  // the alternate screen, cursor hidden
        defer {
            if screen { write("\u{1B}[?25h\u{1B}[?1049l") }
            if keyboard { tcsetattr(STDIN_FILENO, TCSANOW, &saved) }
        }
        var first = true
        while true {
            var (lines, _) = frame(directory)
            if screen {
                lines.append("")
                lines.append(paint("q quits · every \(TopCLI.seconds(interval))", "2", color))
                write("\u{1B}[H\u{1B}[2J" + lines.joined(separator: "\n") + "\n")
            } else {
                write((first ? "" : "\n") + lines.joined(separator: "\n") + "\n")
            }
            first = false
            let deadline = monotonicSeconds() + interval
            while true {
                let left = deadline - monotonicSeconds()
                if left <= 0 { break }
                var pending = sigset_t()
                sigpending(&pending)
                if [SIGINT, SIGTERM, SIGHUP].contains(where: { sigismember(&pending, $0) == 1 }) { return }
                var fds = [pollfd(fd: keyboard ? STDIN_FILENO : -1, events: Int16(POLLIN), revents: 0)]
                let ready = poll(&fds, 1, Int32(min(left, 0.1) * 1000) + 1)
                guard ready > 0 else { continue }
                if keyboard, fds[0].revents != 0 {
                    var bytes = [UInt8](repeating: 0, count: 64)
                    let count = read(STDIN_FILENO, &bytes, bytes.count)
                    if count <= 0 { return }  // the terminal went away
                    if bytes[..<count].contains(where: { $0 == UInt8(ascii: "q") || $0 == UInt8(ascii: "Q") || $0 == 3 || $0 == 4 }) {
                        return
                    }
                }
            }
        }
    }

    /// One frame's lines, and whether the router runs.
    func frame(_ directory: StateDirectory) -> ([String], Bool) {
        let running = directory.runningRouterPID != nil
        let status = RouterStatus.read(from: directory.routerStatusPath)
        let links = FileManager.default.contents(atPath: directory.routerStatusPath).flatMap { TopLink.decode(statusJSON: $0) }
        let current = try? Reconciler(state: directory, create: false).currentRevision()
        let input = TopView.Input(
            status: status, routerRunning: running, mesh: current?.spec.name, appliedRevision: current?.revision.number, links: links,
            stateDirectory: directory.path, now: Date())
        return (TopView.render(input, color: useColor), running && status != nil)
    }

    func paint(_ text: String, _ code: String, _ color: Bool) -> String { color ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text }

    func write(_ text: String) { FileHandle.standardOutput.write(Data(text.utf8)) }
}

enum TopCLI {
    /// `1s`, `0.5s`.
    static func seconds(_ value: Double) -> String {
        value == value.rounded() ? "\(Int(value))s" : "\(value)s"
    }
}
