import ArgumentParser
import Foundation
import PMMReconciler
import PMMRouter

struct Up: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply the spec, then run the router in the foreground (small deployments, trials).",
        discussion: """
            The same as `pmm apply -f FILE [--node N]` followed by `pmm router` (one ServiceGroup); SIGHUP and \
            SIGTERM behave as for `pmm router`. Under systemd (Type=notify) it reports READY=1 once the router \
            serves the applied revision.
            """ + ExitStatus.help("0 stopped by SIGTERM or SIGINT with every queued frame delivered; 1 the apply was refused or the router cannot start; 3 stopped with frames still queued at the drain deadline"))

    @OptionGroup var spec: SpecOptions
    @OptionGroup var state: StateOptions
    @OptionGroup var node: NodeOptions
    @OptionGroup var router: RouterFlags

    @Flag(help: "Remove pipes pmm created that the spec no longer names.")
    var prune = false

    func run() throws {
        let loaded = try readSpec(spec, failure: 1, node: node.name)
        let logger = makeLogger(label: "pmm.up", level: router.logLevel)
        do {
            let reconciler = try Reconciler(state: state.directory)
            reconciler.node = node.name
            let report = try reconciler.apply(loaded, prune: prune, dryRun: false)
            printDiagnostics(loaded, color: useColor)
            print(ApplyOutput.text(report, renderer: Renderer(color: useColor)))
            let service = try RouterService(state: state.directory, flags: router, logger: logger)
            if case .stopped(let undelivered) = try service.runAsDaemon(logger: logger), undelivered > 0 { throw ExitCode(3) }
        } catch let error as PMMError {
            throw report(error, exitCode: 1, color: useColor)
        }
    }
}
