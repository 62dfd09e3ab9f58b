/// What this binary is: its version and the git commit it was built from.
///
/// SwiftPM has no way to pass a string into the compiler without a build plugin (`-D` defines only flags), and
/// pmm builds without plugins. So this file is committed with `commit = "unknown"`, and `scripts/package`
/// rewrites it with `git rev-parse HEAD` (and `-dirty` when the work tree has changes) just before its release
/// build and restores it afterwards, whatever happens. A binary from a plain `swift build` says "unknown".
enum BuildInfo {
    /// The release this source tree is.
    static let version = "0.1.0"
    /// The git commit the binary was built from, or "unknown" when it was not built by `scripts/package`.
    static let commit = "unknown"

    /// `0.1.0 (commit 1a2b3c4d5e6f)`: what `pmm --version` prints.
    static var summary: String {
        let shown = commit == "unknown" ? commit : String(commit.prefix(12)) + (commit.hasSuffix("-dirty") ? "-dirty" : "")
        return "\(version) (commit \(shown))"
    }
}
