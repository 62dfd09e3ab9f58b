import ArgumentParser
import Foundation
import PMMCore
import PMMReconciler
import PMMRegistry
import PMMRouter
import Glibc
import PMMSpecYAML
import PMMSystem

struct Apply: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make the host match the spec and record a revision.",
        discussion: """
            Creates the pipes the spec names with their owners and modes, replaces a pipe (new inode) when its \
            writer or reader changes, and records a revision (time, sha256 of the spec, git commit and dirty \
            flag). Idempotent: a second apply changes nothing and records nothing. One apply runs at a time. \
            Files pmm did not create are never touched; pipes the spec no longer names are removed only with \
            --prune. A symlink, a foreign file or an unsafe root is refused before anything changes.
            """ + ExitStatus.help("0 applied, or nothing to change; 1 refused or failed (an invalid spec, a conflict, another apply holding the lock, --wait not answered in time); applying again converges"))

    @OptionGroup var spec: SpecOptions
    @OptionGroup var state: StateOptions
    @OptionGroup var node: NodeOptions

    @Flag(help: "Show what would change and change nothing.")
    var dryRun = false

    @Flag(help: "Remove pipes pmm created that the spec no longer names.")
    var prune = false

    @OptionGroup var waiting: WaitOptions

    @Flag(name: .shortAndLong, help: "Print nothing but errors (warnings and the plan are left out).")
    var quiet = false

    @Option(name: .shortAndLong, help: "Output format: text or json (what changed, and the revision recorded).")
    var output: OutputFormat = .text

    func run() throws {
        let loaded = try readSpec(spec, failure: 1, node: node.name)
        let applied: ApplyReport
        do {
            let reconciler = try Reconciler(state: state.directory)
            reconciler.node = node.name
            applied = try reconciler.apply(loaded, prune: prune, dryRun: dryRun)
        } catch {
            throw report(error, exitCode: 1, color: useColor)
        }
        if quiet {
        } else if output == .json {
            try printJSON(ApplyOutput.JSON(applied))
        } else {
            printDiagnostics(loaded, color: useColor)  // warnings only: errors threw
            print(ApplyOutput.text(applied, renderer: Renderer(color: useColor)))
        }
        if !dryRun { try waiting.notifyRouter(state: state.directory, report: applied, quiet: quiet || output == .json) }
    }
}

/// `--wait`: after an apply, the router is told (SIGHUP) and, if asked, awaited.
struct WaitOptions: ParsableArguments {
    @Flag(help: "Return only once the router serves the new revision (fail after --wait-timeout).")
    var wait = false

    @Option(help: ArgumentHelp("Seconds --wait waits.", valueName: "seconds"))
    var waitTimeout: Double = 30

    /// Sends SIGHUP to a running router when a revision was recorded; with --wait, polls its status file until
    /// it serves that revision.
    func notifyRouter(state: StateDirectory, report: ApplyReport, quiet: Bool = false) throws {
        let target = report.revision?.number ?? report.previous?.number ?? 0
        guard let pid = state.runningRouterPID else {
            if wait {
                printError("error: --wait: no router is running for \(state.path); start it with pmm router")
                throw ExitCode(1)
            }
            return
        }
        if report.routerNeedsReload {
            // Signalled only once proven to be the router (it holds router.lock), never a pid router.pid names.
            guard let signalled = state.signalRouter(SIGHUP) else {
                // It stopped in between; whichever router starts next loads the newest revision.
                printError("\(wait ? "error" : "note"): the router (pid \(pid)) stopped before it was told to load revision \(target)")
                if wait { throw ExitCode(1) }
                return
            }
            if !quiet { print("Signalled the router (pid \(signalled)) to load revision \(target).") }
        }
        guard wait else { return }
        let deadline = Date().addingTimeInterval(waitTimeout)
        var status = RouterStatus.read(from: state.routerStatusPath)
        while (status?.revision ?? 0) < target {
            if Date() > deadline {
                let serving = status.map { "it serves revision \($0.revision)" } ?? "it wrote no status"
                let reason = status?.lastReloadError.map { "; last reload error: \($0)" } ?? ""
                printError("error: the router (pid \(pid)) did not serve revision \(target) within \(waitTimeout)s: \(serving)\(reason)")
                throw ExitCode(1)
            }
            usleep(50_000)
            status = RouterStatus.read(from: state.routerStatusPath)
        }
        if !quiet { print("The router serves revision \(target).") }
    }
}

enum ApplyOutput {
    /// `apply -o json`: the changes in the shape `diff -o json` gives them, and the revision recorded.
    struct JSON: Encodable {
        var dryRun: Bool
        /// The revision recorded (nil: nothing changed, or a dry run).
        var revision: Int?
        /// The revision that was current before.
        var previous: Int?
        var changes: DiffOutput
        /// Runtime routing rules this apply cleared.
        var clearedRules: Int

        init(_ report: ApplyReport) {
            dryRun = report.dryRun
            revision = report.revision?.number
            previous = report.previous?.number
            changes = DiffOutput(root: report.root, base: nil, plan: report.plan, specChanges: report.specChanges, movement: [])
            clearedRules = report.clearedRules.count
        }
    }

    static func text(_ report: ApplyReport, renderer r: Renderer) -> String {
        let root = report.root
        var lines: [String] = []
        if let previous = report.tookOverLockFrom {
            lines.append("note: took over the apply lock left by a process that is gone (\(previous))")
        }
        if report.plan.createRoot { lines.append("  \(r.symbol(.create)) \(root)/  (the root directory)") }
        lines += r.pipes(report.plan.changes)
        if !report.plan.orphans.isEmpty {
            lines.append("Left in place (the spec no longer names them; remove with --prune):")
            lines += r.pipes(report.plan.orphans)
        }
        for rule in report.clearedRules {
            lines.append("Cleared the runtime routing rule \(rule.dataType) -> \(rule.service) weight \(rule.weight) (set by uid \(rule.setBy) at \(rule.at)): the spec's routes apply again.")
        }
        if report.dryRun {
            lines.append("Dry run: \(r.counts(report.plan, future: true)); nothing was changed.")
        } else if let revision = report.revision {
            var origin = ""
            if let commit = revision.gitCommit {
                origin = ", git \(commit.prefix(12))\(revision.gitDirty == true ? " (dirty)" : "")"
            }
            lines.append(
                "Applied revision \(revision.number) (sha256 \(revision.specSHA256.prefix(12))\(origin)): \(r.counts(report.plan, future: false)).")
        } else {
            lines.append("No changes. Revision \(report.previous?.number ?? 0) is current.")
        }
        return lines.joined(separator: "\n")
    }
}
