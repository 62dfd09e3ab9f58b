import ArgumentParser
import Foundation
import PMMCore
import PMMReconciler
import PMMRegistry
import PMMSpecYAML
import PMMSystem

struct History: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the applied revisions, oldest first.",
        discussion: "Each revision: number, time (UTC), sha256 of the spec, git commit (+ when dirty), origin and what changed." + ExitStatus.help("0 listed; 1 the registry cannot be read"))

    @OptionGroup var state: StateOptions

    @Option(name: .shortAndLong, help: "Output format: text, json or yaml.")
    var output: StateOutputFormat = .text

    struct Entry: Encodable {
        var revision: Int
        var appliedAt: String
        var specSHA256: String
        var specFile: String
        var gitCommit: String?
        var gitDirty: Bool?
        var source: String
        var summary: String
    }

    func loadRevisions() throws(PMMError) -> [Revision] {
        let reconciler = try Reconciler(state: state.directory, create: false)
        do { return try reconciler.registry.revisions() } catch { throw .registry(error) }
    }

    func run() throws {
        let revisions: [Revision]
        do {
            revisions = try loadRevisions()
        } catch {
            throw report(error, exitCode: 1, color: useColor)
        }
        if output != .text {
            try printDocument(
                revisions.map {
                    Entry(
                        revision: $0.number, appliedAt: $0.appliedAt, specSHA256: $0.specSHA256, specFile: $0.specFile,
                        gitCommit: $0.gitCommit, gitDirty: $0.gitDirty, source: $0.source, summary: $0.summary)
                }, as: output)
            return
        }
        guard !revisions.isEmpty else {
            print("No revisions yet: nothing has been applied with state directory \(state.directory.path).")
            return
        }
        print("REV  APPLIED (UTC)          SHA256        GIT            SOURCE          SUMMARY")
        for revision in revisions {
            let git = revision.gitCommit.map { String($0.prefix(12)) + (revision.gitDirty == true ? "+" : " ") } ?? "-"
            print(
                [
                    String(revision.number).padding(toLength: 4, withPad: " ", startingAt: 0),
                    revision.appliedAt.padding(toLength: 22, withPad: " ", startingAt: 0),
                    String(revision.specSHA256.prefix(12)).padding(toLength: 13, withPad: " ", startingAt: 0),
                    git.padding(toLength: 14, withPad: " ", startingAt: 0),
                    revision.source.padding(toLength: 15, withPad: " ", startingAt: 0),
                    revision.summary,
                ].joined(separator: " "))
        }
    }
}
