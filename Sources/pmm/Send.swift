import ArgumentParser
import Foundation
import Glibc
import PMMCore
import PMMReconciler
import PMMRouter
import PMMSystem
import PMMWire
import PipeMesh

struct Send: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write envelopes into a service's ingress pipe, by hand (debugging).",
        discussion: """
            Each payload becomes one envelope (data type, version, shard key, source, sequence, time) written \
            with one write(2) to the ingress pipe of the shard the key hashes to. Payloads come from --payload \
            (repeated --count times) or, without it, one per line of standard input. The service defaults to \
            the one whose uid is yours. Every frame is written under an flock on the pipe, held until its last \
            byte, so frames never interleave with other writers (replicas, other pmm send) whatever their sizes. \
            Before it exits it waits (--finish-timeout) until the router has taken everything out of the pipe, \
            holding the pipe meanwhile, so a router restarting under it loses nothing.
            """ + ExitStatus.help("0 every envelope was written, and taken by the router or waiting for it; 1 no such data type or service, the pipe cannot be opened or written, or bytes were left in a pipe no router read at --finish-timeout"))

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

    @Option(help: "How many times to send --payload (default 1).")
    var count: Int?

    @Option(help: "Messages per second (0 = as fast as the pipe takes them).")
    var rate: Double = 0

    @Option(help: "The first sequence number.")
    var startSequence: UInt64 = 1

    @Option(help: ArgumentHelp("Add a header (repeatable).", valueName: "key=value"))
    var header: [String] = []

    @Option(help: ArgumentHelp(
        "Before exiting, wait at most this long for the router to take what is in the pipe (a pipe's unread bytes are lost when its last writer exits while no router reads it).",
        valueName: "seconds"))
    var finishTimeout: Double = 5

    func validate() throws {
        if let count, count < 0 { throw ValidationError("--count must not be negative") }
        if count != nil && payload == nil {
            throw ValidationError("--count repeats --payload; without --payload each line of standard input is one message")
        }
        guard rate >= 0 else { throw ValidationError("--rate must not be negative") }
        guard keys >= 0 else { throw ValidationError("--keys must not be negative") }
        guard finishTimeout >= 0 else { throw ValidationError("--finish-timeout must not be negative") }
        for entry in header where !entry.contains("=") { throw ValidationError("--header takes key=value, found \(entry)") }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)  // a router that goes away is EPIPE, which the writer handles
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
            for _ in 0..<(count ?? 1) { try send(payload) }
        } else {
            while let line = readLine() { try send(line) }
        }
        try writer.finish(timeout: finishTimeout)
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

/// Writes envelopes into a producer's ingress pipes, choosing the shard by key (PipeMesh's writer does the rest).
final class IngressWriter {
    let writer: IngressFrameWriter
    let dataType: DataType

    init(spec: MeshSpec, producer: Service, dataType: DataType) throws {
        guard FileManager.default.fileExists(atPath: spec.root) else {
            printError("error: \(spec.root) does not exist; run pmm apply first")
            throw ExitCode(1)
        }
        let paths = (0..<dataType.shards).map {
            Naming.path(root: spec.root, fileName: Naming.ingress(producer: producer.name, dataType: dataType.name, shard: $0))
        }
        self.dataType = dataType
        writer = IngressFrameWriter(paths: paths, waitForFirstReader: false) { path in
            printError("note: no router is reading \((path as NSString).lastPathComponent); waiting for one")
        }
    }

    /// Waits for the router to take what is in the pipes (`IngressFrameWriter.finish`) and closes them; exit 1,
    /// saying which pipe held what, when `timeout` ran out first with no router reading a pipe that held bytes.
    func finish(timeout: Double) throws {
        let untaken = writer.finish(timeout: timeout)
        for pipe in untaken {
            if pipe.routerReading {
                printError("note: \(pipe.path): \(pipe.bytes) bytes still wait in the pipe; the router holds it but has not taken them (its buffer is full: a slow or absent consumer)")
            } else {
                printError("error: \(PipeMeshError.notTaken(path: pipe.path, bytes: pipe.bytes))")
            }
        }
        if untaken.contains(where: { !$0.routerReading }) { throw ExitCode(1) }
    }

    func write(_ envelope: Envelope) throws {
        let frame = try envelope.framed()
        do {
            try writer.write(frame, shard: ShardHash.shard(forKey: envelope.shardKey, shards: dataType.shards))
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
    }
}
