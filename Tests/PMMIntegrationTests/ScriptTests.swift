import Foundation
import Glibc
import Testing

/// `scripts/test`, run from a copy whose setup, fuzz, soak and `swift` are stubs that only record that they ran.
@Suite struct ScriptTests {
    /// A copy of the repository's `scripts/test` next to stub `scripts/setup`, `scripts/fuzz` and `scripts/soak`, and a stub
    /// `swift` first on PATH; each stub appends its name to `ran.log`.
    static func stubbedCopy(_ dir: TemporaryDirectory) throws -> (script: String, path: String, log: String) {
        let scripts = dir.path + "/repo/scripts"
        let bin = dir.path + "/bin"
        let log = dir.path + "/out/ran.log"
        try FileManager.default.createDirectory(atPath: scripts, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir.path + "/out", withIntermediateDirectories: true)
        try installExecutable(from: packageRoot + "/scripts/test", to: scripts + "/test")
        for (path, name) in [(scripts + "/setup", "setup"), (scripts + "/fuzz", "fuzz"), (scripts + "/soak", "soak"), (bin + "/swift", "swift")] {
            try installScript("#!/usr/bin/env bash\necho \(name) >> \(log)\n", at: path)
        }
        for path in [dir.path, dir.path + "/repo", scripts, bin] { chmod(path, 0o755) }
        chmod(dir.path + "/out", 0o777)
        return (scripts + "/test", bin + ":/usr/bin:/bin", log)
    }

    /// Under CI=true, a run that is not root would skip the root-only suites (`.enabled(if: isRoot)`) and still
    /// pass: scripts/test refuses before running anything.
    @Test func scriptsTest_underCI_whenNotRoot_failsBeforeRunningAnything() throws {
        let dir = TemporaryDirectory()
        let (script, path, log) = try Self.stubbedCopy(dir)
        let environment = ["CI": "true", "PATH": path, "HOME": "/tmp"]
        // As root, drop to nobody; otherwise the tests already run as a user.
        let outcome =
            isRoot
            ? try run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/env", "PATH=\(path)", script], environment: environment)
            : try run(script, [], environment: environment)
        #expect(outcome.status != 0, "\(outcome.stdout) \(outcome.stderr)")
        #expect(outcome.stderr.contains("CI=true but scripts/test is not running as root"), "\(outcome.stderr)")
        #expect(!FileManager.default.fileExists(atPath: log), "nothing ran: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
    }

    @Test(.enabled(if: isRoot)) func scriptsTest_underCI_asRoot_runsEverything() throws {
        let dir = TemporaryDirectory()
        let (script, path, log) = try Self.stubbedCopy(dir)
        let outcome = try run(script, [], environment: ["CI": "true", "PATH": path])
        #expect(outcome.status == 0, "\(outcome.stdout) \(outcome.stderr)")
        #expect(try String(contentsOfFile: log, encoding: .utf8) == "setup\nswift\nfuzz\nsoak\nswift\n")
    }
}
