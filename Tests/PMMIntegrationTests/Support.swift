import Foundation
import Glibc
import PMMCore
import PMMReconciler
import PMMSystem
import Testing

/// Whether the tests run as root (CI does): needed to give pipes to other uids and to drop privileges.
let isRoot = geteuid() == 0

/// A fresh directory under /tmp, removed when the test is done.
final class TemporaryDirectory {
    let path: String

    init(_ label: String = "pmm-test") {
        var template = Array("/tmp/\(label)-XXXXXX".utf8CString)
        path = String(cString: mkdtemp(&template)!)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    var root: String { path + "/pipes" }
    var state: StateDirectory { StateDirectory(path: path + "/state") }
    var specPath: String { path + "/mesh.yaml" }

    func write(_ text: String, to name: String = "mesh.yaml") {
        let full = path + "/" + name
        try? FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: full, contents: Data(text.utf8))
    }

    /// Writes a spec rooted in this directory.
    func writeSpec(apiUID: Int = 1001, collectorUID: Int = 1002, replicas: Int = 2, shards: Int = 2, weight: Int = 1) {
        write(meshYAML(root: root, apiUID: apiUID, collectorUID: collectorUID, replicas: replicas, shards: shards, weight: weight))
    }

    func load() throws -> LoadedSpec {
        LoadedSpec.load(try SpecFile.read(specPath))
    }

    func lstat(_ name: String) -> ObservedFile? {
        try? PipeRoot.open(root)?.stat(name)
    }
}

func meshYAML(root: String, apiUID: Int = 1001, collectorUID: Int = 1002, replicas: Int = 2, shards: Int = 2, weight: Int = 1) -> String {
    """
    apiVersion: pmm/v1
    kind: Mesh
    name: test
    root: \(root)
    dataTypes:
      metrics:
        shards: \(shards)
    services:
      api:
        uid: \(apiUID)
        produces:
          - dataType: metrics
      collector:
        uid: \(collectorUID)
        replicas: \(replicas)
        consumes:
          - dataType: metrics
    routes:
      metrics:
        targets:
          - service: collector
            weight: \(weight)

    """
}

/// The result of running a program.
struct Outcome {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs `executable` with `arguments`, optionally in `directory` with extra environment, and waits.
@discardableResult
func run(
    _ executable: String, _ arguments: [String], in directory: String? = nil, environment: [String: String] = [:], stdin: String? = nil,
    background: (() -> Void)? = nil
) throws -> Outcome {
    // A test holding descriptors by the thousand makes Process.run crash the whole test process (see
    // HeldDescriptors): said here as a failure of the test that spawns, not a SIGSEGV of every test.
    let held = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0
    if held > 1_000 {
        Issue.record("the test process holds \(held) descriptors: over about 1,300, Foundation's Process.run can crash it; hold them in a child (HeldDescriptors)")
    }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
    var env = ProcessInfo.processInfo.environment
    env["NO_COLOR"] = "1"
    env["PMM_ROOT"] = nil
    env["PMM_STATE_DIR"] = nil
    for (key, value) in environment { env[key] = value }
    process.environment = env
    let out = Pipe()
    let err = Pipe()
    let input = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = input
    try process.run()
    if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
    try input.fileHandleForWriting.close()
    if let background {
        usleep(300_000)  // let the program start
        background()
    }
    // Read both pipes concurrently so neither fills up.
    nonisolated(unsafe) var errData = Data()
    let group = DispatchGroup()
    DispatchQueue.global().async(group: group) { errData = err.fileHandleForReading.readDataToEndOfFile() }
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    process.waitUntilExit()
    return Outcome(status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self), stderr: String(decoding: errData, as: UTF8.self))
}

/// The built `pmm` binary, next to the test bundle.
let pmmBinary: String = {
    let bundleDirectory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    let candidates = [
        bundleDirectory.appendingPathComponent("pmm").path,
        packageRoot + "/.build/debug/pmm",
    ]
    return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates[1]
}()

/// The package's root directory.
let packageRoot: String = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

/// Runs `pmm` with arguments.
@discardableResult
func pmm(_ arguments: String..., in directory: String? = nil, environment: [String: String] = [:], stdin: String? = nil) throws -> Outcome {
    try run(pmmBinary, arguments, in: directory, environment: environment, stdin: stdin)
}

/// Runs `pmm` with an argument array.
@discardableResult
func pmm(_ arguments: [String], in directory: String? = nil, environment: [String: String] = [:], stdin: String? = nil) throws -> Outcome {
    try run(pmmBinary, arguments, in: directory, environment: environment, stdin: stdin)
}

/// Opens `path` as `uid`/`gid` (no supplementary groups) with `flags` ("r", "w" or "rw", always non-blocking),
/// through `setpriv`, and returns "ok" or the errno name (EACCES, ENXIO, …).
func openAs(uid: Int, gid: Int, path: String, mode: String) throws -> String {
    let flags = ["r": "os.O_RDONLY", "w": "os.O_WRONLY", "rw": "os.O_RDWR"][mode]!
    let script = """
        import errno, os, sys
        try:
            os.open(sys.argv[1], \(flags) | os.O_NONBLOCK)
            print("ok")
        except OSError as e:
            print(errno.errorcode[e.errno])
        """
    let outcome = try run("/usr/bin/setpriv", ["--reuid=\(uid)", "--regid=\(gid)", "--clear-groups", "/usr/bin/python3", "-c", script, path])
    return outcome.stdout.trimmingCharacters(in: .whitespacesAndNewlines) + outcome.stderr
}

/// Why a test could not set itself up.
struct SetupFailure: Error, CustomStringConvertible {
    let description: String
}

/// Puts a copy of the executable `source` at `destination`, mode 0755, by way of a `cp` child process.
///
/// A file this test process holds open for writing is inherited, still open for writing, by any process another
/// test forks at that moment, and exec(2) of it then fails with ETXTBSY: CI saw `setpriv: failed to execute
/// …/pmm: Text file busy` after `FileManager.copyItem`. Copied by `cp`, the file is never open in this process.
func installExecutable(from source: String, to destination: String) throws {
    let outcome = try run("/bin/cp", [source, destination])
    guard outcome.status == 0 else { throw SetupFailure(description: "cp \(source) \(destination): \(outcome.stderr)") }
    guard chmod(destination, 0o755) == 0 else { throw SetupFailure(description: "chmod \(destination): errno \(errno)") }
}

/// Writes `text` as an executable script at `destination` (through a file that is never executed, then
/// `installExecutable`, for the reason given there).
func installScript(_ text: String, at destination: String) throws {
    let draft = destination + ".draft"
    guard FileManager.default.createFile(atPath: draft, contents: Data(text.utf8)) else {
        throw SetupFailure(description: "cannot write \(draft)")
    }
    defer { unlink(draft) }
    try installExecutable(from: draft, to: destination)
}

/// The arguments process `pid` was started with (`/proc/<pid>/cmdline`); empty once it is gone.
func processArguments(_ pid: Int32) -> [String] {
    guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return [] }
    return data.split(separator: 0, omittingEmptySubsequences: false).dropLast().map { String(decoding: $0, as: UTF8.self) }
}

/// The parent of process `pid` (`/proc/<pid>/stat`), if it is still there.
func parentProcess(_ pid: Int32) -> Int32? {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let end = stat.lastIndex(of: ")") else { return nil }
    // After the command name: the state, then the parent's pid.
    let fields = stat[stat.index(after: end)...].split(separator: " ")
    return fields.count > 1 ? Int32(fields[1]) : nil
}

/// Sends SIGSTOP to `pid` and waits (at most 5 s) until every one of its threads has stopped: the signal is
/// only queued when kill(2) returns, and a thread running on another core goes on for a moment.
func stopProcess(_ pid: Int32) {
    kill(pid, SIGSTOP)
    let deadline = Date().addingTimeInterval(5)
    while Date() < deadline {
        let threads = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        let stopped = threads.allSatisfy { thread in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(thread)/stat", encoding: .utf8),
                let end = stat.lastIndex(of: ")")
            else { return true }  // gone
            return stat[stat.index(after: end)...].split(separator: " ").first == "T"
        }
        if stopped { return }
        usleep(1_000)
    }
}

/// Descriptors held open by a child process (python3) rather than by the test process.
///
/// The test process must not hold more than a few hundred descriptors while other tests start processes:
/// Foundation's `Process.run` lists /proc/self/fd and copies 256 bytes of every entry's name, past the end of
/// glibc's directory buffer when an entry sits at its end (fixed in swift-corelibs-foundation by pull request
/// 5472; Swift 6.3.1, this toolchain, still has it). With about 1,300 descriptors open, the listing reaches that end, and
/// a full run crashed twice with SIGSEGV in `Process.run` (descriptor names 1358 and 1359 in the registers).
/// Consumers or clients that a test needs by the thousand are held here, as real ones would be, by another
/// process.
final class HeldDescriptors {
    let process = Process()
    private let input = Pipe()
    /// How many the child holds.
    let count: Int

    /// Opens each FIFO for reading (non-blocking), as an idle consumer would.
    convenience init(readingFIFOs paths: [String]) throws {
        try self.init(["fifo"] + paths)
    }

    /// Connects `connections` times to the Unix socket at `path` and keeps every connection open.
    convenience init(connections: Int, toUnixSocket path: String) throws {
        try self.init(["unix", path, String(connections)])
    }

    private init(_ arguments: [String]) throws {
        let script = """
            import os, resource, socket, sys
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            held = []
            if sys.argv[1] == "fifo":
                for path in sys.argv[2:]:
                    held.append(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            else:
                for _ in range(int(sys.argv[3])):
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(sys.argv[2])
                    held.append(s)
            print(len(held), flush=True)
            sys.stdin.read()
            """
        let output = Pipe()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", script] + arguments
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while read(output.fileHandleForReading.fileDescriptor, &byte, 1) == 1 && byte != UInt8(ascii: "\n") { line.append(byte) }
        guard let held = Int(String(decoding: line, as: UTF8.self)) else {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
            throw SetupFailure(description: "python3 could not open the descriptors asked of it (exit \(process.terminationStatus))")
        }
        count = held
    }

    /// Closes them all: the child exits.
    func release() {
        try? input.fileHandleForWriting.close()
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit { release() }
}
