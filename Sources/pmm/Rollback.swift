import ArgumentParser
import Foundation
import PMMCore
import PMMReconciler
import PMMRegistry
import PMMSpecYAML
import PMMSystem

struct Rollback: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply revision N's spec again, as a new revision.",
        discussion: "The revision's recorded spec text is applied as `pmm apply` would; see `pmm history` for numbers." + ExitStatus.help("0 applied; 1 no such revision, or refused or failed as apply can be"))

    @Argument(help: "The revision to return to.")
    var revision: Int

    @OptionGroup var state: StateOptions

    @Option(help: ArgumentHelp("The directory of the mesh's pipes, overriding the revision's 'root' (env: PMM_ROOT).", valueName: "dir"))
    var root: String?

    @Flag(help: "Show what would change and change nothing.")
    var dryRun = false

    @Flag(help: "Remove pipes pmm created that revision N does not name.")
    var prune = false

    @OptionGroup var waiting: WaitOptions

    func validate() throws {
        guard revision >= 1 else { throw ValidationError("revision numbers start at 1") }
    }

    func run() throws {
        let override = SpecOptions.parseOrExit(root.map { ["--root", $0] } ?? []).rootOverride
        do {
            let reconciler = try Reconciler(state: state.directory)
            let report = try reconciler.rollback(to: revision, rootOverride: override, prune: prune, dryRun: dryRun)
            print(ApplyOutput.text(report, renderer: Renderer(color: useColor)))
            if !dryRun { try waiting.notifyRouter(state: state.directory, report: report) }
        } catch let error as PMMError {
            throw report(error, exitCode: 1, color: useColor)
        }
    }
}
