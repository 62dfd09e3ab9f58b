import Foundation
import Glibc
import PMMCore
import PMMRouter
import PMMWire
import Testing

/// A mesh applied in a temporary directory, with real `pmm router`, producer and consumer processes.
/// Every service runs as root here (uid 0), so the test process may play any of them.
final class MeshHarness {
    let dir = TemporaryDirectory("pmm-mesh")
    var router: Process?
    var consumers: [String: (process: Process, output: String)] = [:]
    var stateArgument: String { "--state-dir=\(dir.path)/state" }

    /// - Parameter yaml: a spec; `ROOT` is replaced by the pipe root.
    /// - Parameter files: more files to write next to the spec first (schemas), by relative path.
    init(_ yaml: String, files: [String: String] = [:]) throws {
        signal(SIGPIPE, SIG_IGN)  // tests write into pipes whose reader may be gone: EPIPE, not death
        for (name, text) in files { dir.write(text, to: name) }
        dir.write(yaml.replacingOccurrences(of: "ROOT", with: dir.root))
        let outcome = try pmm("apply", "-f", dir.specPath, stateArgument)
        try #require(outcome.status == 0, "apply failed: \(outcome.stderr)")
    }

    deinit {
        for (process, _) in consumers.values where process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        if let router, router.isRunning { kill(router.processIdentifier, SIGKILL); router.waitUntilExit() }
    }

    /// Starts a process writing its stdout and stderr to files in the directory.
    func spawn(_ arguments: [String], output: String) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: pmmBinary)
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment["NO_COLOR"] = "1"
        process.environment = environment
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        _ = FileManager.default.createFile(atPath: output + ".err", contents: nil)
        process.standardOutput = FileHandle(forWritingAtPath: output)
        process.standardError = FileHandle(forWritingAtPath: output + ".err")
        process.standardInput = FileHandle.nullDevice
        try process.run()
        return process
    }

    func startRouter(_ extra: [String] = []) throws {
        router = try spawn(["router", stateArgument] + extra, output: dir.path + "/router.log")
        try waitFor("the router's status") { self.status != nil }
    }

    /// Starts `pmm tail -o json` on an instance's egress pipe.
    func startConsumer(_ instance: String, dataType: String, count: Int = 0) throws {
        let output = dir.path + "/\(instance).\(dataType).jsonl"
        let process = try spawn(
            ["tail", stateArgument, "--instance", instance, "--data-type", dataType, "-o", "json", "--count", String(count)], output: output)
        consumers["\(instance).\(dataType)"] = (process, output)
    }

    /// Waits until the router reports every started consumer healthy.
    func waitForHealthyConsumers() throws {
        try waitFor("healthy consumers") {
            let healthy = Set(self.status?.egress.filter(\.healthy).map { "\($0.instance).\($0.dataType)" } ?? [])
            return Set(self.consumers.keys).isSubset(of: healthy)
        }
    }

    /// `pmm send` with arguments, to completion.
    @discardableResult
    func send(_ arguments: String..., stdin: String? = nil) throws -> Outcome {
        let outcome = try pmm(["send", stateArgument] + arguments, stdin: stdin)
        #expect(outcome.status == 0, "send failed: \(outcome.stderr)")
        return outcome
    }

    var status: RouterStatus? {
        RouterStatus.read(from: dir.path + "/state/router.json")
    }

    /// The envelopes a consumer printed so far.
    func received(_ instance: String, dataType: String) -> [Received] {
        guard let path = consumers["\(instance).\(dataType)"]?.output, let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            return []
        }
        return text.split(separator: "\n").compactMap { try? JSONDecoder().decode(Received.self, from: Data($0.utf8)) }
    }

    /// Every envelope received by any consumer, with the instance that got it.
    var allReceived: [Received] {
        consumers.keys.sorted().flatMap { key -> [Received] in
            let parts = key.split(separator: ".")
            return received(String(parts[0]), dataType: String(parts[1]))
        }
    }

    /// Waits until consumers together hold `count` envelopes (or fails after `timeout`).
    func waitForReceived(_ count: Int, timeout: Double = 20) throws {
        try waitFor("\(count) envelopes (have \(allReceived.count))", timeout: timeout) { self.allReceived.count >= count }
        usleep(200_000)  // anything beyond `count` (a duplicate) has time to show
    }

    /// Writes `count` envelopes of `metrics` from `api` straight into an ingress pipe.
    func writeFrames(to pipe: String, count: Int, firstSequence: UInt64 = 1) throws {
        let fd = open(dir.root + "/" + pipe, O_WRONLY)
        try #require(fd >= 0)
        defer { close(fd) }
        for sequence in firstSequence..<(firstSequence + UInt64(count)) {
            var envelope = Envelope()
            envelope.dataType = "metrics"
            envelope.source = "api"
            envelope.sequence = sequence
            envelope.shardKey = Data("key-\(sequence)".utf8)
            envelope.payload = Data("direct".utf8)
            let frame = try envelope.framed()
            #expect(write(fd, frame, frame.count) == frame.count)
        }
    }

    func signalRouter(_ signal: Int32) {
        if let router { kill(router.processIdentifier, signal) }
    }

    /// SIGSTOP, returning once the router's every thread has stopped (it reads nothing from then on).
    func stopRouter() {
        if let router { stopProcess(router.processIdentifier) }
    }

    func routerLog() -> String {
        (try? String(contentsOfFile: dir.path + "/router.log.err", encoding: .utf8)) ?? ""
    }
}

/// Polls `condition` every 20 ms until it holds, or records a failure after `timeout` seconds.
func waitFor(_ what: String, timeout: Double = 20, _ condition: () -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while !condition() {
        if Date() > deadline { throw WaitTimeout(what: what) }
        usleep(20_000)
    }
}

struct WaitTimeout: Error, CustomStringConvertible {
    var what: String
    var description: String { "timed out waiting for \(what)" }
}

/// One line of `pmm tail -o json`.
struct Received: Decodable, Hashable {
    var dataType: String
    var source: String
    var sequence: UInt64
    var shardKey: String
    var instance: String
    var payload: String?
    var schemaVersion: UInt32
}

/// A mesh for router tests: `api` and `web` produce `metrics` (4 shards); `collector` (3 replicas, weight 90)
/// and `canary` (1, weight 10) consume it under `policy`.
func routerMesh(policy: String = "shard", canaryWeight: Int = 10, collectorReplicas: Int = 3) -> String {
    """
    apiVersion: pmm/v1
    kind: Mesh
    name: routed
    root: ROOT
    dataTypes:
      metrics:
        shards: 4
        qos: {delivery: at-most-once}
    services:
      api:
        uid: 0
        produces: [{dataType: metrics}]
      web:
        uid: 0
        produces: [{dataType: metrics}]
      collector:
        uid: 0
        replicas: \(collectorReplicas)
        consumes: [{dataType: metrics}]
      canary:
        uid: 0
        consumes: [{dataType: metrics}]
    routes:
      metrics:
        policy: \(policy)
        targets:
          - {service: collector, weight: 90}
          - {service: canary, weight: \(canaryWeight)}

    """
}
