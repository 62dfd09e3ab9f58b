import ArgumentParser
import Foundation
import Glibc
import PMMCore
import PMMReconciler
import PMMRouter
import PMMSystem
import PMMWire

struct Send: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write envelopes into a service's ingress pipe, by hand (debugging).",
        discussion: """
            Each payload becomes one envelope (data type, version, shard key, source, sequence, time) written \
            with one write(2) to the ingress pipe of the shard the key hashes to. Payloads come from --payload \
            (repeated --count times) or, without it, one per line of standard input. The service defaults to \
            the one whose uid is yours. Frames above PIPE_BUF (4096 bytes) are written under an flock on the \
            pipe so they never interleave with other writers.
            """)

    @OptionGroup var state: StateOptions

    @Option(help: "The data type to send.")
    var dataType: String

    @Option(help: "The producing service (default: the service that runs as your uid).")
    var service: String?

    @Option(help: "The shard key; by default each message gets key-<sequence> (see --keys).")
    var shardKey: String?

    @Option(help: "Cycle over this many keys, key-0 … key-<N-1> (0: a new key per message).")
    var keys: Int = 0

    @Option(help: "The schema version to stamp (default: the version the service declares).")
    var version: Int?

    @Option(help: "The payload text; without it, each line of standard input is one payload.")
    var payload: String?

    @Option(help: "How many times to send --payload.")
    var count: Int = 1

    @Option(help: "Messages per second (0 = as fast as the pipe takes them).")
    var rate: Double = 0

    @Option(help: "The first sequence number.")
    var startSequence: UInt64 = 1

    @Option(help: ArgumentHelp("Add a header (repeatable).", valueName: "key=value"))
    var header: [String] = []

    func validate() throws {
        guard count >= 0 else { throw ValidationError("--count must not be negative") }
        guard rate >= 0 else { throw ValidationError("--rate must not be negative") }
        guard keys >= 0 else { throw ValidationError("--keys must not be negative") }
        for entry in header where !entry.contains("=") { throw ValidationError("--header takes key=value, found \(entry)") }
    }

    func run() throws {
        let (spec, producer, dataType, version) = try resolve()
        let writer = try IngressWriter(spec: spec, producer: producer, dataType: dataType)
        var envelope = Envelope()
        envelope.dataType = dataType.name
        envelope.schemaVersion = UInt32(version ?? 0)
        envelope.source = producer.name
        for entry in header {
            let parts = entry.split(separator: "=", maxSplits: 1)
            envelope.headers[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
        }
        var sequence = startSequence
        let interval = rate > 0 ? 1 / rate : 0
        let started = Date()
        var sent = 0
        func send(_ text: String) throws {
            envelope.sequence = sequence
            envelope.shardKey = Data((shardKey ?? "key-\(keys > 0 ? sequence % UInt64(keys) : sequence)").utf8)
            envelope.payload = Data(text.utf8)
            envelope.sentAtUnixNanos = realtimeNanos()
            try writer.write(envelope)
            sequence += 1
            sent += 1
            if interval > 0 {
                let due = started.addingTimeInterval(Double(sent) * interval).timeIntervalSinceNow
                if due > 0 { usleep(UInt32(due * 1e6)) }
            }
        }
        if let payload {
            for _ in 0..<count { try send(payload) }
        } else {
            while let line = readLine() { try send(line) }
        }
    }

    func resolve() throws -> (MeshSpec, Service, DataType, Int?) {
        let spec = try state.appliedSpec()
        guard let dataType = spec.dataType(named: self.dataType) else {
            printError("error: data type '\(self.dataType)' is not in the applied spec")
            throw ExitCode(1)
        }
        let producers = spec.services.filter { $0.produces.contains { $0.dataType == dataType.name } }
        let producer: Service
        if let service {
            guard let named = producers.first(where: { $0.name == service }) else {
                printError("error: service '\(service)' does not produce '\(dataType.name)' (producers: \(producers.map(\.name).joined(separator: ", ")))")
                throw ExitCode(1)
            }
            producer = named
        } else {
            let mine = producers.filter { $0.uid == geteuid() }
            guard mine.count == 1 else {
                printError("error: say which service sends with --service (producers of '\(dataType.name)': \(producers.map(\.name).joined(separator: ", ")))")
                throw ExitCode(1)
            }
            producer = mine[0]
        }
        let declared = producer.produces.first { $0.dataType == dataType.name }?.version ?? dataType.latestVersion
        return (spec, producer, dataType, version ?? declared)
    }
}

/// Writes framed envelopes into a producer's ingress pipes, one write(2) per frame, choosing the shard by key.
final class IngressWriter {
    let root: PipeRoot
    let spec: MeshSpec
    let producer: Service
    let dataType: DataType
    var fds: [Int: Int32] = [:]

    init(spec: MeshSpec, producer: Service, dataType: DataType) throws {
        guard let root = try PipeRoot.open(spec.root) else {
            printError("error: \(spec.root) does not exist; run pmm apply first")
            throw ExitCode(1)
        }
        self.root = root
        self.spec = spec
        self.producer = producer
        self.dataType = dataType
        signal(SIGPIPE, SIG_IGN)
    }

    deinit { for fd in fds.values { close(fd) } }

    func fd(forShard shard: Int) throws -> Int32 {
        if let fd = fds[shard] { return fd }
        let name = Naming.ingress(producer: producer.name, dataType: dataType.name, shard: shard)
        switch root.openFIFO(name, forWriting: true) {
        case .opened(let fd, _):
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)  // block when the pipe is full: back-pressure
            fds[shard] = fd
            return fd
        case .noReader:
            printError("error: no router is reading \(Naming.path(root: spec.root, fileName: name)); start pmm router")
            throw ExitCode(1)
        case .missing:
            printError("error: \(Naming.path(root: spec.root, fileName: name)) does not exist; run pmm apply")
            throw ExitCode(1)
        case .failed(let error):
            printError("error: \(error)")
            throw ExitCode(1)
        }
    }

    func write(_ envelope: Envelope) throws {
        let frame = try envelope.framed()
        let shard = ShardHash.shard(forKey: envelope.shardKey, shards: dataType.shards)
        while true {
            let fd = try fd(forShard: shard)
            // Up to PIPE_BUF a write is atomic; above it, an flock keeps replicas' frames from interleaving.
            let locked = frame.count > Int(PIPE_BUF)
            if locked { DescriptorLock.lock(fd) }
            let result = writeAll(fd, frame)
            if locked { DescriptorLock.unlock(fd) }
            switch result {
            case 0:
                return
            case EPIPE:
                // The router went away: nothing of a frame up to PIPE_BUF reached the pipe. Keep this
                // descriptor open until the next router is reading: while a writer holds it, the pipe keeps
                // the frames the old router had not taken; closing it first would discard them.
                try waitForReader(shard: shard)
                close(fd)
            default:
                printError("error: write to the ingress pipe failed: \(String(cString: strerror(result)))")
                throw ExitCode(1)
            }
        }
    }

    /// Writes all of `frame`; returns 0 or the errno.
    func writeAll(_ fd: Int32, _ frame: [UInt8]) -> Int32 {
        var offset = 0
        while offset < frame.count {
            let n = frame.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                return errno
            }
            offset += n
        }
        return 0
    }

    /// Blocks until a router opens the shard's pipe for reading again, and makes that the shard's descriptor.
    func waitForReader(shard: Int) throws {
        let name = Naming.ingress(producer: producer.name, dataType: dataType.name, shard: shard)
        printError("note: no router is reading \(name); waiting for one")
        while true {
            switch root.openFIFO(name, forWriting: true) {
            case .opened(let fd, _):
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
                fds[shard] = fd
                return
            case .noReader, .missing:
                usleep(50_000)
            case .failed(let error):
                printError("error: \(error)")
                throw ExitCode(1)
            }
        }
    }
}
