import Foundation
import Glibc
import Histogram
public import PMMCore
import PMMSystem
import PMMWire

/// One benchmark workload.
public struct BenchConfig: Sendable {
    public var producers = 1
    public var consumers = 1
    /// Payload bytes per message.
    public var size = 128
    /// Messages per producer.
    public var count = 1_000_000
    /// Messages per second per producer; 0 sends as fast as the pipe takes them.
    public var rate: Double = 0
    public var policy: RoutingPolicy = .shard
    public var delivery: Delivery = .atMostOnce
    /// Bytes a producer writes per write(2) when unpaced (with `writes == .batch`).
    public var batchBytes = 64 << 10
    /// How producers write.
    public var writes: WriteMode = .batch

    public init() {}
}

/// How a bench producer writes its frames.
public enum WriteMode: String, Sendable, CaseIterable {
    /// Many frames per write(2), up to `batchBytes` (a tuned producer; the default).
    case batch
    /// One write(2) per frame, no lock.
    case frame
    /// One write(2) per frame under the pipe's flock, as PipeMesh's `Producer` and `pmm send` write.
    case lockedFrame = "locked-frame"
}

/// What one run measured.
public struct BenchResult: Codable, Sendable {
    public var path: String
    public var frames: Int
    public var seconds: Double
    public var messagesPerSecond: Double
    public var megabytesPerSecond: Double
    public var p50Microseconds: Double
    public var p99Microseconds: Double
    public var p999Microseconds: Double
    public var maxMicroseconds: Double
    public var lost: Int
    public var duplicated: Int
    public var routerCPUSeconds: Double?
    public var routerPeakRSSMiB: Double?
}

/// Runs the same workload through the real router, through a minimal relay (the hop's floor) and through direct
/// FIFOs (the physical baseline).
///
/// Producers and consumers are threads of this process, each on its own pipe end, with blocking I/O; the
/// router is a separate `pmm router` process. Each envelope carries its sender's sequence number and a
/// CLOCK_REALTIME timestamp: the consumers check every sequence arrived once and record latency (from the
/// send timestamp to the read that delivered it) in an HdrHistogram.
public final class Bench {
    let config: BenchConfig
    let pmm: String
    let workspace: String
    let log: (String) -> Void

    /// - Parameters:
    ///   - pmm: the pmm binary (to start the router).
    ///   - log: progress, for a terminal.
    public init(config: BenchConfig, pmm: String, workspace: String, log: @escaping (String) -> Void) {
        self.config = config
        self.pmm = pmm
        self.workspace = workspace
        self.log = log
    }

    // MARK: Direct

    /// Each producer writes straight into a FIFO its own consumer reads.
    public func direct() throws -> BenchResult {
        let directory = workspace + "/direct"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let paths = (0..<config.producers).map { directory + "/p\($0).fifo" }
        for path in paths {
            unlink(path)
            mkfifo(path, 0o600)
        }
        let tally = Tally(producers: config.producers, count: config.count)
        let readers = paths.map { path in ConsumerThread(path: path, tally: tally, expected: config.producers * config.count) }
        for reader in readers { reader.start() }
        let seconds = produce(into: paths, tally: tally)
        for reader in readers { reader.stop() }
        return tally.result(path: "direct FIFO", seconds: seconds, frameBytes: ProducerThread.frameSize(config), router: nil)
    }

    // MARK: Relay

    /// The same producers and consumers with a minimal relay between them (no routing): the hop's floor.
    public func relay() throws -> BenchResult {
        let directory = workspace + "/relay"
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let ingress = (0..<config.producers).map { directory + "/p\($0).in" }
        let egress = (0..<config.consumers).map { directory + "/c\($0).out" }
        for path in ingress + egress { mkfifo(path, 0o600) }
        let tally = Tally(producers: config.producers, count: config.count)
        let readers = egress.map { ConsumerThread(path: $0, tally: tally, expected: config.producers * config.count) }
        for reader in readers { reader.start() }
        let relay = RelayThread(ingress: ingress, egress: egress)
        relay.start()
        let seconds = produce(into: ingress, tally: tally)
        let cpu = relay.wait()
        for reader in readers { reader.stop() }
        return tally.result(path: "relay (no routing)", seconds: seconds, frameBytes: ProducerThread.frameSize(config), router: (cpu, nil))
    }

    // MARK: Routed

    /// The same producers and consumers with the router between them.
    public func routed() throws -> BenchResult {
        let directory = workspace + "/routed"
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let uid = geteuid()
        let gid = getegid()
        var services = ""
        for p in 0..<config.producers { services += "  p\(p): {uid: \(uid), gid: \(gid), produces: [{dataType: bench}]}\n" }
        services += "  sink: {uid: \(uid), gid: \(gid), replicas: \(config.consumers), consumes: [{dataType: bench}]}\n"
        let spec = """
            apiVersion: pmm/v1
            kind: Mesh
            name: bench
            root: \(directory)/pipes
            routerGroup: \(gid)
            dataTypes:
              bench:
                qos: {delivery: \(config.delivery.rawValue), buffer: 1000000, pipeSize: 1MiB}
            services:
            \(services)routes:
              bench: {policy: \(config.policy.rawValue), targets: [{service: sink}]}

            """
        let specPath = directory + "/mesh.yaml"
        try spec.write(toFile: specPath, atomically: true, encoding: .utf8)
        let state = directory + "/state"
        let apply = try runProcess(pmm, ["apply", "-f", specPath, "--state-dir", state])
        guard apply == 0 else { throw BenchError("pmm apply failed (exit \(apply))") }
        let router = Process()
        router.executableURL = URL(fileURLWithPath: pmm)
        router.arguments = ["router", "--state-dir", state, "--log-level", "error"]
        router.standardOutput = FileHandle.nullDevice
        try router.run()
        defer {
            if router.isRunning { kill(router.processIdentifier, SIGKILL) }
            router.waitUntilExit()
        }
        let statusPath = state + "/router.json"
        try waitUntil("the router's status", timeout: 10) { FileManager.default.fileExists(atPath: statusPath) }

        let tally = Tally(producers: config.producers, count: config.count)
        let readers = (0..<config.consumers).map { i in
            ConsumerThread(path: directory + "/pipes/" + Naming.egress(instance: "sink-\(i)", dataType: "bench"), tally: tally, expected: config.producers * config.count)
        }
        for reader in readers { reader.start() }
        try waitUntil("healthy consumers", timeout: 10) {
            let data = FileManager.default.contents(atPath: statusPath) ?? Data()
            return String(decoding: data, as: UTF8.self).components(separatedBy: "\"healthy\" : true").count - 1 >= self.config.consumers
        }
        let cpuBefore = processCPUSeconds(router.processIdentifier)
        let seconds = produce(
            into: (0..<config.producers).map { directory + "/pipes/" + Naming.ingress(producer: "p\($0)", dataType: "bench", shard: 0) }, tally: tally)
        let cpu = processCPUSeconds(router.processIdentifier) - cpuBefore
        let rss = peakRSSMiB(router.processIdentifier)
        kill(router.processIdentifier, SIGTERM)
        for reader in readers { reader.stop() }
        return tally.result(path: "routed (\(config.delivery.rawValue))", seconds: seconds, frameBytes: ProducerThread.frameSize(config), router: (cpu, rss))
    }

    /// Runs one producer per pipe in `paths` until each sent its count and every frame arrived (or 30 s passed);
    /// the seconds from the first send to the last arrival.
    func produce(into paths: [String], tally: Tally) -> Double {
        let started = realtimeNanos()
        let producers = paths.enumerated().map { index, path in ProducerThread(path: path, index: index, config: config) }
        for producer in producers { producer.start() }
        for producer in producers { producer.wait() }
        tally.waitForAll(timeout: 30)
        return Double(tally.lastArrival - started) / 1e9
    }

    func waitUntil(_ what: String, timeout: Double, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() {
            if Date() > deadline { throw BenchError("timed out waiting for \(what)") }
            usleep(10_000)
        }
    }

    func runProcess(_ path: String, _ arguments: [String]) throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        return process.terminationStatus
    }
}

public struct BenchError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}


/// utime + stime of a process, from /proc/<pid>/stat (clock ticks of 1/100 s on Linux).
func processCPUSeconds(_ pid: Int32) -> Double {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = text.lastIndex(of: ")") else { return 0 }
    let fields = text[text.index(after: close)...].split(separator: " ")
    guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// VmHWM of a process, in MiB.
func peakRSSMiB(_ pid: Int32) -> Double? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
        let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
        let kib = Double(line.split(separator: " ", omittingEmptySubsequences: true)[1])
    else { return nil }
    return kib / 1024
}
