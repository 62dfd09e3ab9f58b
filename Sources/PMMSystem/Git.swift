import Foundation

/// What git says about a spec file: the commit it sits at and whether it differs from it. Runs the `git`
/// command; any failure (no git, not a work tree) means "not in git".
public struct GitInfo: Sendable, Equatable {
    public var commit: String
    public var dirty: Bool

    /// The HEAD commit of the work tree holding `file`, and whether `file` has uncommitted changes.
    public static func of(file: String) -> GitInfo? {
        let directory = (file as NSString).deletingLastPathComponent
        guard let commit = run(["rev-parse", "HEAD"], in: directory)?.trimmed, !commit.isEmpty else { return nil }
        let status = run(["status", "--porcelain", "--", (file as NSString).lastPathComponent], in: directory) ?? ""
        return GitInfo(commit: commit, dirty: !status.trimmed.isEmpty)
    }

    /// The text of `file` at git revision `revision` (`git show REV:path`), or nil.
    public static func show(revision: String, file: String) -> String? {
        let directory = (file as NSString).deletingLastPathComponent
        guard let top = run(["rev-parse", "--show-prefix"], in: directory) else { return nil }
        let relative = top.trimmed + (file as NSString).lastPathComponent
        return run(["show", "\(revision):\(relative)"], in: directory)
    }

    static func run(_ arguments: [String], in directory: String) -> String? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["git", "-C", directory.isEmpty ? "." : directory] + arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        do { try process.run() } catch { return nil }
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { return nil }
        return String(decoding: data, as: UTF8.self)
    }
}

extension String {
    var trimmed: String { trimmingCharacters(in: .whitespacesAndNewlines) }
}
