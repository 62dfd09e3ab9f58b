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
    /// Pipes of a second, idle data type in the routed mesh (half ingress, half egress): what a big mesh costs
    /// the router when nothing moves on those pipes, and what it costs the busy path.
    public var idlePipes = 0
    /// Seconds the router's idle CPU is sampled before the traffic starts (with `idlePipes`).
    public var idleSeconds = 3.0
    /// Sample the idle router of the plain routed mesh too (the baseline beside a crowded one).
    public var measureIdle = false
    /// Data types of the routed mesh: producer p sends type p mod `types`, and each type has its own consumer
    /// service with `consumers / types` instances (independent flows, which router workers can share out).
    public var types = 1
    /// `pmm router --workers` for the routed path; nil: the router's default.
    public var workers: Int?
    /// Runs the relay in a process of its own from this executable (`pmm bench-relay`), as the router runs;
    /// nil runs it as a thread of the bench.
    public var relayExecutable: String?
    /// Each node a host of one core: the one-host paths run on CPU 0 (producers, relay or router, consumers);
    /// across nodes, node a (producers, router a) on CPU 0 and node b (router b, consumers) on CPU 1. What two
    /// hosts would give the link, on a machine that has to play both.
    public var oneCorePerNode = false
    /// Producers and consumers on CPU 0, the hop (router, relay) on CPU 1.
    public var hopCore = false

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
    /// Bytes the routers moved into consumers' pipes with splice(2), and of those from at-least-once spools
    /// (`splicedBytes`, `splicedFromSpoolBytes` in their final status), when they report them.
    public var routerSplicedBytes: UInt64?
    public var routerSplicedFromSpoolBytes: UInt64?
    /// The CPUs each router process was allowed (`Cpus_allowed_list`), in the order they were started.
    public var routerCPUs: [String]?
    /// Pipes the router served (the idle ones included), when measured.
    public var pipes: Int?
    /// The router's CPU while nothing moved, in percent of one core, before the traffic started.
    public var routerIdleCPUPercent: Double?
    /// The router's resident memory while idle (VmRSS), in MiB.
    public var routerIdleRSSMiB: Double?
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
        let readers = paths.map { path in ConsumerThread(path: path, tally: tally, expected: config.producers * config.count, cpu: cpu(node: nil)) }
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
        let readers = egress.map { ConsumerThread(path: $0, tally: tally, expected: config.producers * config.count, cpu: cpu(node: nil)) }
        for reader in readers { reader.start() }
        let seconds: Double
        let relayCPU: Double
        if let executable = config.relayExecutable {
            let relay = try RelayProcess(executable: executable, ingress: ingress, egress: egress, cpu: hopCPU(node: nil))
            seconds = produce(into: ingress, tally: tally)
            relayCPU = try relay.wait()
        } else {
            let relay = RelayThread(ingress: ingress, egress: egress, cpu: hopCPU(node: nil))
            relay.start()
            seconds = produce(into: ingress, tally: tally)
            relayCPU = relay.wait()
        }
        for reader in readers { reader.stop() }
        return tally.result(path: "relay (no routing)", seconds: seconds, frameBytes: ProducerThread.frameSize(config), router: (relayCPU, nil))
    }

    // MARK: Routed

    /// The same producers and consumers with the router between them; with `idlePipes`, in a mesh that also
    /// holds that many idle pipes (a second data type whose producers never write and whose consumers never
    /// read), after sampling the router's idle CPU and memory.
    ///
    /// - Parameter workers: `pmm router --workers` (nil: `config.workers`).
    public func routed(idlePipes: Int = 0, workers: Int? = nil) throws -> BenchResult {
        // The crowded mesh has one more type (the idle one), which would give it one more worker by default than
        // the plain routed mesh: it runs as many as the plain one, so the two compare like with like.
        let workers = workers ?? config.workers ?? (idlePipes > 0 ? min(ProcessInfo.processInfo.activeProcessorCount, config.types) : nil)
        let directory = try fresh(idlePipes > 0 ? "crowded" : "routed")
        var services = ""
        for p in 0..<config.producers {
            services += "  p\(p): {uid: \(geteuid()), gid: \(getegid()), produces: [{dataType: \(typeName(p % config.types, of: config.types))}]}\n"
        }
        for k in 0..<config.types {
            services += "  \(sinkName(k, of: config.types)): {uid: \(geteuid()), gid: \(getegid()), replicas: \(config.consumers / config.types), consumes: [{dataType: \(typeName(k, of: config.types))}]}\n"
        }
        let idle = IdleMesh(pipes: idlePipes)
        services += idle.services(uid: geteuid(), gid: getegid())
        let state = directory + "/state"
        try apply(
            spec(directory: directory, services: services, types: config.types, extraTypes: idle.dataTypes, extraRoutes: idle.routes),
            directory: directory, states: [(state, nil)])
        // The idle consumers are there (their pipes open for reading) but read nothing, as idle services do.
        let idleReaders = try idle.openReaders(pipes: directory + "/pipes")
        defer { for fd in idleReaders { close(fd) } }
        let router = try startRouter(state: state, node: nil, workers: workers)
        defer { stopRouter(router) }
        let pipes = (0..<config.types).flatMap { k in
            (0..<(config.consumers / config.types)).map {
                Naming.egress(instance: "\(sinkName(k, of: config.types))-\($0)", dataType: typeName(k, of: config.types))
            }
        }
        let readers = try startReaders(directory: directory, pipes: pipes, statusPath: state + "/router.json", node: nil)
        var idleCPU: Double?
        var idleRSS: Double?
        if config.idleSeconds > 0 && (idlePipes > 0 || config.measureIdle) {
            // Settled: the start's opens, first probes and first status writes are behind it (a router over
            // 10,000 pipes spends about a second of CPU starting).
            usleep(2_000_000)
            let before = ProcessTable.cpuSeconds(of: router.processIdentifier)
            usleep(UInt32(config.idleSeconds * 1e6))
            idleCPU = (ProcessTable.cpuSeconds(of: router.processIdentifier) - before) / config.idleSeconds * 100
            idleRSS = residentMiB(router.processIdentifier)
        }
        // The workers the router runs (it runs no more than the types with producers), as its status says.
        let running = workers.map { _ in Self.routerWorkers(statusPath: state + "/router.json") }
        let name =
            idlePipes > 0
            ? "routed, +\(idle.total) idle pipes" : "routed (\(config.delivery.rawValue)\(running.map { ", \($0) worker\($0 == 1 ? "" : "s")" } ?? ""))"
        var result = measure(
            name, directory: directory, types: config.types,
            readers: readers.readers, tally: readers.tally, routers: [router], statusPaths: [state + "/router.json"])
        if idleCPU != nil {
            result.pipes = config.producers + config.consumers + idle.total
            result.routerIdleCPUPercent = idleCPU
            result.routerIdleRSSMiB = idleRSS
        }
        return result
    }

    // MARK: Across two nodes

    /// The same workload across two nodes: the producers on node a, the consumers on node b, a router process
    /// for each on loopback, linked over TCP (mutual TLS with certificates made now by openssl when `tls`):
    /// producer pipe → router a → link → router b → consumer pipe.
    public func linked(tls: Bool) throws -> BenchResult {
        let directory = try fresh("linked")
        let ports = try freePorts(2)
        var links = ""
        if tls {
            let pki = directory + "/pki"
            try makeCertificates(in: pki, nodes: ["a", "b"])
            links = "links:\n  tls: {ca: \"\(pki)/ca.pem\", cert: \"\(pki)/${NODE}.pem\", key: \"\(pki)/${NODE}-key.pem\"}\n"
        }
        var services = ""
        for p in 0..<config.producers {
            services += "  p\(p): {uid: \(geteuid()), gid: \(getegid()), placement: {a: 1}, produces: [{dataType: bench}]}\n"
        }
        services += "  sink: {uid: \(geteuid()), gid: \(getegid()), placement: {b: \(config.consumers)}, consumes: [{dataType: bench}]}\n"
        let nodes = "nodes:\n  a: {address: \"127.0.0.1:\(ports[0])\"}\n  b: {address: \"127.0.0.1:\(ports[1])\"}\n" + links
        // One pipe root serves both nodes here: each applies only its own share (a the ingress pipes, b the egress).
        let states = [(directory + "/state-a", "a"), (directory + "/state-b", "b")]
        try apply(spec(directory: directory, services: services, nodes: nodes), directory: directory, states: states)
        let a = try startRouter(state: states[0].0, node: "a")
        defer { stopRouter(a) }
        let b = try startRouter(state: states[1].0, node: "b")
        defer { stopRouter(b) }
        // Node a's status shows the remote instances healthy once the link is up and b's consumers read.
        let readers = try startReaders(
            directory: directory, pipes: (0..<config.consumers).map { Naming.egress(instance: "sink-b-\($0)", dataType: "bench") },
            statusPath: states[0].0 + "/router.json", node: "b")
        return measure(
            "across nodes (\(tls ? "TLS" : "plaintext"))", directory: directory, readers: readers.readers, tally: readers.tally, routers: [a, b],
            statusPaths: states.map { $0.0 + "/router.json" })
    }

    // MARK: Helpers

    /// The CPU a node's producer and consumer threads run on: with `oneCorePerNode`, their node's (nil: one
    /// host); with `hopCore`, CPU 0; else unpinned.
    func cpu(node: String?) -> Int? {
        if config.hopCore { return 0 }
        guard config.oneCorePerNode else { return nil }
        return node == "b" ? 1 : 0
    }

    /// The CPU a hop (a router, the relay) runs on: with `hopCore`, CPU 1, apart from the threads it serves;
    /// else its node's, as `cpu(node:)`.
    func hopCPU(node: String?) -> Int? {
        config.hopCore ? 1 : cpu(node: node)
    }

    func fresh(_ name: String) throws -> String {
        let directory = workspace + "/" + name
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return directory
    }

    /// The name of bench data type `k` of `types` ("bench" when there is one).
    func typeName(_ k: Int, of types: Int) -> String { types == 1 ? "bench" : "bench\(k)" }
    /// The consumer service of bench data type `k` of `types`.
    func sinkName(_ k: Int, of types: Int) -> String { types == 1 ? "sink" : "sink\(k)" }

    func spec(directory: String, services: String, types: Int = 1, nodes: String = "", extraTypes: String = "", extraRoutes: String = "") -> String {
        let benchTypes = (0..<types).map { "  \(typeName($0, of: types)):\n    qos: {delivery: \(config.delivery.rawValue), buffer: 1000000, pipeSize: 1MiB}\n" }.joined()
        let benchRoutes = (0..<types).map { "  \(typeName($0, of: types)): {policy: \(config.policy.rawValue), targets: [{service: \(sinkName($0, of: types))}]}\n" }.joined()
        return """
        apiVersion: pmm/v1
        kind: Mesh
        name: bench
        root: \(directory)/pipes
        routerGroup: \(getegid())
        \(nodes)dataTypes:
        \(benchTypes)\(extraTypes)services:
        \(services)routes:
        \(benchRoutes)\(extraRoutes)
        """
    }

    /// Writes the spec and applies it into each state directory (for each node, when given).
    func apply(_ spec: String, directory: String, states: [(String, String?)]) throws {
        let specPath = directory + "/mesh.yaml"
        try spec.write(toFile: specPath, atomically: true, encoding: .utf8)
        for (state, node) in states {
            let status = try runProcess(pmm, ["apply", "-f", specPath, "--state-dir", state] + (node.map { ["--node", $0] } ?? []))
            guard status == 0 else { throw BenchError("pmm apply\(node.map { " --node \($0)" } ?? "") failed (exit \(status))") }
        }
    }

    func startRouter(state: String, node: String?, workers: Int? = nil) throws -> Process {
        let router = Process()
        let (executable, arguments) = pinned(
            pmm, ["router", "--state-dir", state, "--log-level", "error"] + (node.map { ["--node", $0] } ?? []) + (workers.map { ["--workers", "\($0)"] } ?? []),
            cpu: hopCPU(node: node))
        router.executableURL = URL(fileURLWithPath: executable)
        router.arguments = arguments
        router.standardOutput = FileHandle.nullDevice
        try router.run()
        let statusPath = state + "/router.json"
        do {
            try waitUntil("the router's status", timeout: 10) { FileManager.default.fileExists(atPath: statusPath) || !router.isRunning }
        } catch {
            stopRouter(router)
            throw error
        }
        guard router.isRunning else { throw BenchError("the router\(node.map { " of node \($0)" } ?? "") exited (\(router.terminationStatus))") }
        return router
    }

    func stopRouter(_ router: Process) {
        if router.isRunning { kill(router.processIdentifier, SIGKILL) }
        router.waitUntilExit()
    }

    /// The router's status file at `path`, parsed (not searched as text: its layout is the router's to choose),
    /// or nil when it is not there yet.
    static func routerStatus(at path: String) -> [String: Any]? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? JSONSerialization.jsonObject(with: data) as? [String: Any]
    }

    /// How many workers the router whose status is at `statusPath` runs (1 when the status does not say).
    static func routerWorkers(statusPath: String) -> Int {
        routerStatus(at: statusPath)?["workers"] as? Int ?? 1
    }

    /// Starts a consumer thread on each egress pipe (names in the pipe root); returns once the router at
    /// `statusPath` counts them all healthy.
    /// - Parameter node: the node the consumers run on (nil: one host).
    func startReaders(directory: String, pipes: [String], statusPath: String, node: String?) throws -> (readers: [ConsumerThread], tally: Tally) {
        let tally = Tally(producers: config.producers, count: config.count)
        let readers = pipes.map { pipe in
            ConsumerThread(path: directory + "/pipes/" + pipe, tally: tally, expected: config.producers * config.count, cpu: cpu(node: node))
        }
        for reader in readers { reader.start() }
        let wanted = Set(pipes)
        try waitUntil("healthy consumers", timeout: 20) {
            guard let egress = Self.routerStatus(at: statusPath)?["egress"] as? [[String: Any]] else { return false }
            let healthy = egress.filter { ($0["healthy"] as? Bool) == true }.compactMap { $0["name"] as? String }
            return wanted.isSubset(of: healthy)
        }
        return (readers, tally)
    }

    /// Produces into the producers' ingress pipes and reports what the readers got, with the routers' CPU
    /// seconds (added up) and the largest peak RSS.
    /// - Parameters:
    ///   - types: how many bench data types the mesh has (producer p writes type p mod `types`).
    ///   - statusPaths: the routers' status files: once they stopped (SIGTERM, at most 5 s), the bytes they
    ///     spliced are read from them.
    func measure(
        _ path: String, directory: String, types: Int = 1, readers: [ConsumerThread], tally: Tally, routers: [Process], statusPaths: [String] = []
    ) -> BenchResult {
        let cpuBefore = routers.map { ProcessTable.cpuSeconds(of: $0.processIdentifier) }
        let dataTypes = (0..<config.producers).map { typeName($0 % types, of: types) }
        let seconds = produce(
            into: (0..<config.producers).map { directory + "/pipes/" + Naming.ingress(producer: "p\($0)", dataType: dataTypes[$0], shard: 0) },
            dataTypes: dataTypes, tally: tally)
        let cpu = zip(routers, cpuBefore).reduce(0) { $0 + ProcessTable.cpuSeconds(of: $1.0.processIdentifier) - $1.1 }
        let rss = routers.compactMap { peakRSSMiB($0.processIdentifier) }.max()
        let allowed = routers.compactMap { allowedCPUs($0.processIdentifier) }
        for router in routers { kill(router.processIdentifier, SIGTERM) }
        if !statusPaths.isEmpty {
            // A router writes its final status as it stops.
            try? waitUntil("the routers to stop", timeout: 5) { routers.allSatisfy { !$0.isRunning } }
        }
        for reader in readers { reader.stop() }
        var result = tally.result(path: path, seconds: seconds, frameBytes: ProducerThread.frameSize(config), router: (cpu, rss))
        result.routerCPUs = allowed
        let statuses = statusPaths.compactMap(Self.routerStatus(at:))
        if !statuses.isEmpty, statuses.allSatisfy({ $0["splicedBytes"] != nil }) {
            result.routerSplicedBytes = statuses.reduce(0) { $0 + (($1["splicedBytes"] as? NSNumber)?.uint64Value ?? 0) }
            result.routerSplicedFromSpoolBytes = statuses.reduce(0) { $0 + (($1["splicedFromSpoolBytes"] as? NSNumber)?.uint64Value ?? 0) }
        }
        return result
    }

    /// `count` TCP ports on 127.0.0.1 that nothing listens on now.
    func freePorts(_ count: Int) throws -> [Int] {
        var ports: [Int] = []
        var sockets: [Int32] = []
        defer { for fd in sockets { close(fd) } }
        for _ in 0..<count {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw BenchError("socket(2) failed: errno \(errno)") }
            sockets.append(fd)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            address.sin_port = 0
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let bound = withUnsafeMutablePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
            }
            guard bound else { throw BenchError("cannot find a free port: errno \(errno)") }
            ports.append(Int(UInt16(bigEndian: address.sin_port)))
        }
        return ports
    }

    /// A CA and a certificate per node (CN and DNS name = the node), made by openssl.
    func makeCertificates(in directory: String, nodes: [String]) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let openssl = ["/usr/bin/openssl", "/bin/openssl"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let openssl else { throw BenchError("--link with TLS needs openssl (apt-get install openssl), or pass --link-plaintext") }
        func run(_ arguments: [String]) throws {
            let status = try runProcess(openssl, arguments)
            guard status == 0 else { throw BenchError("openssl \(arguments.first ?? "") failed (exit \(status))") }
        }
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        try run(["req", "-x509"] + ec + ["-keyout", directory + "/ca-key.pem", "-out", directory + "/ca.pem", "-days", "1", "-subj", "/CN=pmm-bench-ca"])
        for node in nodes {
            let base = directory + "/" + node
            try run(["req"] + ec + ["-keyout", base + "-key.pem", "-out", base + ".csr", "-subj", "/CN=\(node)"])
            try "subjectAltName=DNS:\(node)\n".write(toFile: base + ".ext", atomically: true, encoding: .utf8)
            try run([
                "x509", "-req", "-in", base + ".csr", "-CA", directory + "/ca.pem", "-CAkey", directory + "/ca-key.pem", "-CAcreateserial",
                "-out", base + ".pem", "-days", "1", "-extfile", base + ".ext",
            ])
        }
    }

    /// Runs one producer per pipe in `paths` until each sent its count and every frame arrived (or 30 s passed);
    /// the seconds from the first send to the last arrival.
    /// - Parameter dataTypes: each pipe's data type (nil: "bench").
    func produce(into paths: [String], dataTypes: [String]? = nil, tally: Tally) -> Double {
        let started = realtimeNanos()
        let producers = paths.enumerated().map { index, path in
            // Producers are on node a when there are nodes: the one host's CPU either way.
            ProducerThread(path: path, index: index, config: config, dataType: dataTypes?[index] ?? "bench", cpu: cpu(node: nil))
        }
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


/// The idle part of a crowded mesh: a data type of 16 shards, producers of it (16 ingress pipes each) and
/// consumer services of up to 1,000 replicas (one egress pipe each), about half and half.
struct IdleMesh {
    let producers: Int
    let sinks: [Int]

    init(pipes: Int) {
        producers = pipes <= 0 ? 0 : max(1, (pipes / 2 + 15) / 16)
        let instances = pipes <= 0 ? 0 : max(1, pipes - producers * 16)
        sinks = stride(from: 0, to: instances, by: 1000).map { min(1000, instances - $0) }
    }

    var total: Int { producers * 16 + sinks.reduce(0, +) }
    var dataTypes: String { producers == 0 ? "" : "  idle: {shards: 16}\n" }

    func services(uid: uid_t, gid: gid_t) -> String {
        var text = ""
        for q in 0..<producers { text += "  idle-p\(q): {uid: \(uid), gid: \(gid), produces: [{dataType: idle}]}\n" }
        for (k, replicas) in sinks.enumerated() { text += "  idle-sink\(k): {uid: \(uid), gid: \(gid), replicas: \(replicas), consumes: [{dataType: idle}]}\n" }
        return text
    }

    /// Opens every idle egress pipe for reading (non-blocking, never read).
    func openReaders(pipes: String) throws -> [Int32] {
        var fds: [Int32] = []
        for (k, replicas) in sinks.enumerated() {
            for i in 0..<replicas {
                let fd = open(pipes + "/" + Naming.egress(instance: "idle-sink\(k)-\(i)", dataType: "idle"), O_RDONLY | O_NONBLOCK | O_CLOEXEC)
                guard fd >= 0 else {
                    for fd in fds { close(fd) }
                    throw BenchError("cannot open an idle consumer's pipe: errno \(errno) (raise ulimit -n?)")
                }
                fds.append(fd)
            }
        }
        return fds
    }

    var routes: String {
        producers == 0 ? "" : "  idle: {policy: shard, targets: [\(sinks.indices.map { "{service: idle-sink\($0)}" }.joined(separator: ", "))]}\n"
    }
}

/// VmRSS of a process, in MiB.
func residentMiB(_ pid: Int32) -> Double? { statusField("VmRSS:", pid) }

/// VmHWM of a process, in MiB.
func peakRSSMiB(_ pid: Int32) -> Double? { statusField("VmHWM:", pid) }

func statusField(_ name: String, _ pid: Int32) -> Double? {
    guard let kib = statusText(name, pid).flatMap(Double.init) else { return nil }
    return kib / 1024
}

/// The CPUs a process may run on (its `Cpus_allowed_list`, as "0-1" or "1").
func allowedCPUs(_ pid: Int32) -> String? { statusText("Cpus_allowed_list:", pid) }

/// The first word after `name` on its line of /proc/<pid>/status.
func statusText(_ name: String, _ pid: Int32) -> String? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
        let line = text.split(separator: "\n").first(where: { $0.hasPrefix(name) })
    else { return nil }
    return line.dropFirst(name.count).split(whereSeparator: { $0 == " " || $0 == "\t" }).first.map(String.init)
}
