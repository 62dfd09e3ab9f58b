import ArgumentParser

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print pmm's version and the git commit it was built from.",
        discussion: """
            The commit is written into the binary by scripts/package (which rewrites Sources/pmm/BuildInfo.swift \
            for its release build and restores it afterwards); a binary from a plain `swift build` prints \
            "unknown". `-dirty` means the work tree had uncommitted changes. `pmm --version` prints the same on \
            one line.
            """ + ExitStatus.help("0 printed"))

    @Option(name: .shortAndLong, help: "Output format: text or json.")
    var output: OutputFormat = .text

    func run() throws {
        struct Info: Encodable {
            var version: String
            var commit: String
        }
        if output == .json { return try printJSON(Info(version: BuildInfo.version, commit: BuildInfo.commit)) }
        print("pmm \(BuildInfo.version)")
        print("commit \(BuildInfo.commit)")
    }
}
