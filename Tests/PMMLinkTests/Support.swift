import Foundation
import Glibc
import Logging
import PMMLink
import PMMWire
import Testing

let isRoot = geteuid() == 0

struct CommandFailed: Error, CustomStringConvertible {
    var command: [String]
    var status: Int32
    var output: String
    var description: String { "\(command.joined(separator: " ")) exited \(status): \(output)" }
}

/// Runs a command to completion; throws with its output when it fails.
@discardableResult
func run(_ command: [String], allowFailure: Bool = false) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = command
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let output = String(decoding: data, as: UTF8.self)
    if process.terminationStatus != 0 && !allowFailure {
        throw CommandFailed(command: command, status: process.terminationStatus, output: output)
    }
    return output
}

func commandExists(_ name: String) -> Bool {
    ["/usr/bin/", "/usr/sbin/", "/bin/", "/sbin/"].contains { FileManager.default.isExecutableFile(atPath: $0 + name) }
}

/// A fresh directory, removed when the value goes away.
final class TemporaryDirectory: @unchecked Sendable {
    let path: String

    init(_ label: String = "pmm-link-test") {
        var template = Array("/tmp/\(label)-XXXXXX".utf8CString)
        path = String(cString: mkdtemp(&template)!)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// A certificate authority and node certificates made with Debian's openssl (EC P-256: fast to make).
final class TestPKI: @unchecked Sendable {
    let directory: TemporaryDirectory
    let name: String
    var ca: String { directory.path + "/\(name)-ca.pem" }

    init(name: String = "pmm-test-ca", directory: TemporaryDirectory = TemporaryDirectory()) throws {
        self.directory = directory
        self.name = name
        try run([
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", directory.path + "/\(name)-ca-key.pem", "-out", ca, "-days", "2", "-subj", "/CN=\(name)",
        ])
    }

    /// Issues a certificate and key; returns the certificate's path (the key is beside it, `-key.pem`).
    func issue(commonName: String, dnsNames: [String], file: String? = nil) throws -> LinkTLS {
        let base = directory.path + "/" + (file ?? "\(name)-\(commonName)")
        try run([
            "openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", base + "-key.pem", "-out", base + ".csr", "-subj", "/CN=\(commonName)",
        ])
        var arguments = [
            "openssl", "x509", "-req", "-in", base + ".csr", "-CA", ca, "-CAkey",
            directory.path + "/\(name)-ca-key.pem",
            "-CAcreateserial", "-out", base + ".pem", "-days", "2",
        ]
        if !dnsNames.isEmpty {
            let ext = base + ".ext"
            try ("subjectAltName=" + dnsNames.map { "DNS:\($0)" }.joined(separator: ",") + "\n")
                .write(toFile: ext, atomically: true, encoding: .utf8)
            arguments += ["-extfile", ext]
        }
        try run(arguments)
        return LinkTLS(ca: ca, certificate: base + ".pem", key: base + "-key.pem")
    }

    func der(_ tls: LinkTLS) throws -> [UInt8] {
        let out = tls.certificate + ".der"
        try run(["openssl", "x509", "-in", tls.certificate, "-outform", "DER", "-out", out])
        return [UInt8](try Data(contentsOf: URL(fileURLWithPath: out)))
    }
}

/// A pipe frame numbered `n` (field 5 of its envelope), padded to about `size` bytes.
func numberedFrame(_ n: Int, size: Int = 100) -> [UInt8] {
    var envelope: [UInt8] = [0x28]
    Varint.encode(UInt64(n), into: &envelope)
    envelope.append(0x3a)
    let pad = max(1, size - envelope.count - 2)
    Varint.encode(UInt64(pad), into: &envelope)
    envelope += [UInt8](repeating: 0x61, count: pad)
    return pipeFrame(envelope)
}

func frameNumber(_ frame: [UInt8]) -> Int? {
    frame.withUnsafeBytes { raw -> Int? in
        guard case .value(_, let prefix) = Varint.decode(raw, at: 0), raw.count > prefix + 1, raw[prefix] == 0x28,
            case .value(let n, _) = Varint.decode(raw, at: prefix + 1)
        else { return nil }
        return Int(n)
    }
}

/// Drives a LinkManager the way a router does, from the test's thread: drains events, keeps an outbox for one
/// peer, acknowledges what it receives (when `autoAcknowledge`), and records everything.
final class Node: @unchecked Sendable {
    let manager: LinkManager
    var events: [LinkEvent] = []
    var outbox = LinkOutbox()
    var received: [Int] = []
    var autoAcknowledge = true
    var unacknowledged: [(peer: String, stream: UInt64, upTo: UInt64)] = []
    var peer: String?
    var connected = false

    init(
        _ name: String, peers: [String: LinkAddress] = [:], nodes: Set<String>, tls: LinkTLS? = nil,
        listen: LinkAddress = LinkAddress(host: "127.0.0.1", port: 0),
        configure: (inout LinkConfiguration) -> Void = { _ in }
    ) throws {
        var configuration = LinkConfiguration(
            node: name, listen: listen, peers: peers, knownNodes: nodes, revision: 1, tls: tls)
        configuration.heartbeatInterval = .milliseconds(200)
        configuration.idleTimeout = .seconds(2)
        configure(&configuration)
        var logger = Logger(label: "link-test-\(name)")
        logger.logLevel = .critical
        manager = try LinkManager(configuration: configuration, logger: logger)
    }

    var address: LinkAddress { LinkAddress(host: "127.0.0.1", port: manager.listeningPort) }

    /// One pass of the router's loop.
    func pump() {
        var poller = pollfd(fd: manager.wakeDescriptor, events: Int16(POLLIN), revents: 0)
        _ = poll(&poller, 1, 5)
        for event in manager.events() {
            events.append(event)
            switch event {
            case .connected(let p, let info):
                if p == peer { outbox.connected(resumeAfter: info.resumeAfter) }
                connected = true
            case .disconnected: connected = false
            case .acknowledged(let p, let upTo): if p == peer { outbox.acknowledged(upTo: upTo) }
            case .received(let p, let batch):
                received += batch.frames.compactMap { frameNumber($0.bytes) }
                if autoAcknowledge {
                    manager.acknowledge(peer: p, stream: batch.stream, upTo: batch.lastSequence)
                } else {
                    unacknowledged.append((p, batch.stream, batch.lastSequence))
                }
            default: break
            }
        }
        if let peer, connected, !outbox.unsent.isEmpty {
            outbox.sent(manager.send(to: peer, frames: outbox.unsent))
        }
    }

    func acknowledgeAll() {
        for u in unacknowledged { manager.acknowledge(peer: u.peer, stream: u.stream, upTo: u.upTo) }
        unacknowledged = []
    }

    var connectedCount: Int { events.filter { if case .connected = $0 { true } else { false } }.count }
    var refusals: [String] { events.compactMap { if case .refused(_, _, let reason) = $0 { reason } else { nil } } }
}

/// Pumps every node until `condition` holds or `seconds` pass; returns whether it held.
@discardableResult
func pump(_ nodes: [Node], seconds: Double = 10, until condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        for node in nodes { node.pump() }
        if condition() { return true }
    }
    return condition()
}
