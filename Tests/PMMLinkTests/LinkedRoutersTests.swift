import Foundation
import Glibc
import PMMSystem
import Testing

/// Two nodes of one mesh on 127.0.0.1 (no root, no namespaces): each its own pipe root and state directory,
/// each running the real `pmm router --node`, linked in plaintext; node a serves Prometheus metrics.
final class LoopbackTwoNodes: @unchecked Sendable {
    let directory = TemporaryDirectory("pmm-loopback-nodes")
    let ports: [Int]
    var routers: [String: NamespacedProcess] = [:]

    init() throws {
        ports = try freeLoopbackPorts(3)
        let spec = """
            apiVersion: pmm/v1
            kind: Mesh
            name: pair
            root: /run/pmm-pair-unused
            nodes:
              a: {address: "127.0.0.1:\(ports[0])"}
              b: {address: "127.0.0.1:\(ports[1])"}
            dataTypes:
              metrics:
                qos: {delivery: at-most-once}
            services:
              gen:
                uid: 0
                placement: {a: 1}
                produces: [{dataType: metrics}]
              sink:
                uid: 0
                placement: {b: 1}
                consumes: [{dataType: metrics}]
            routes:
              metrics:
                policy: shard
                targets: [{service: sink}]

            """
        try spec.write(toFile: specPath, atomically: true, encoding: .utf8)
        for node in ["a", "b"] {
            try FileManager.default.createDirectory(atPath: state(node), withIntermediateDirectories: true)
            _ = try run(["env", "PMM_STATE_DIR=\(state(node))", "PMM_ROOT=\(directory.path)/\(node)/pipes", pmmBinary, "apply", "-f", specPath, "--node", node])
        }
    }

    var specPath: String { directory.path + "/mesh.yaml" }
    var metricsPort: Int { ports[2] }
    func state(_ node: String) -> String { directory.path + "/\(node)/state" }
    func env(_ node: String) -> [String] { ["env", "PMM_STATE_DIR=\(state(node))"] }

    func start(_ node: String, _ arguments: [String], output: String) throws -> NamespacedProcess {
        try NamespacedProcess(env(node) + arguments, output: directory.path + "/" + output)
    }

    func startRouters() throws {
        routers["a"] = try start("a", [pmmBinary, "router", "--node", "a", "--metrics-listen", "127.0.0.1:\(metricsPort)"], output: "router-a.log")
        routers["b"] = try start("b", [pmmBinary, "router", "--node", "b"], output: "router-b.log")
    }

    func healthy(_ node: String, _ pipe: String) -> Bool { egressHealthy(routerStatus(stateDirectory: state(node)), pipe) }

    /// Node a's `pmm_link_unacknowledged_frames` for its link to b, scraped from its metrics endpoint (nil if
    /// the scrape failed).
    func unacknowledgedAtA() -> Int? {
        guard let text = httpGet(port: metricsPort, path: "/metrics") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("pmm_link_unacknowledged_frames{") {
            return line.split(separator: " ").last.flatMap { Double($0) }.map { Int($0) }
        }
        return nil
    }

    /// SIGKILL: a router stopping gracefully would wait its drain timeout for the frames the test left unread.
    deinit {
        for router in routers.values {
            kill(router.process.processIdentifier, SIGKILL)
            router.process.waitUntilExit()
        }
    }

    func logs() -> String {
        routers.keys.sorted().map { "--- router \($0):\n" + (routers[$0]?.output.suffix(3000) ?? "") }.joined(separator: "\n")
    }
}

/// `count` TCP ports on 127.0.0.1 that nothing listens on now.
func freeLoopbackPorts(_ count: Int) throws -> [Int] {
    var sockets: [Int32] = []
    defer { for fd in sockets { close(fd) } }
    return try (0..<count).map { _ in
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        sockets.append(fd)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard fd >= 0, bound else { throw CommandFailed(command: ["bind 127.0.0.1:0"], status: errno, output: "") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

/// The body of an HTTP/1.0 GET to 127.0.0.1:`port`, or nil.
func httpGet(port: Int, path: String) -> String? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    let connected = withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
    guard connected else { return nil }
    let request = Array("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8)
    guard write(fd, request, request.count) == request.count else { return nil }
    var response: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fd, &chunk, chunk.count)
        if n <= 0 { break }
        response += chunk[0..<n]
    }
    let text = String(decoding: response, as: UTF8.self)
    guard let body = text.range(of: "\r\n\r\n") else { return nil }
    return String(text[body.upperBound...])
}

extension NamespacedProcess {
    /// A process in this test's own network namespace (none: the host's loopback).
    convenience init(_ arguments: [String], output: String) throws {
        try self.init(namespace: nil, arguments, output: output)
    }
}

@Suite(.serialized) struct LinkedRoutersTests {
    /// The receiving router acknowledges a frame as soon as its consumer has read it, not at its next wake-up
    /// for something else. A router that wrote the last frames of a burst and went back to sleep used to hear
    /// of their reading only at its next timer (52 ms here, up to 100): the sender's window stayed full
    /// meanwhile, which made the links stall in bursts (4 KB frames across: 35,000 msg/s in plaintext, the
    /// machine mostly idle).
    @Test func aFrameReadOnTheOtherNode_isAcknowledgedToTheSenderAtOnce() throws {
        let mesh = try LoopbackTwoNodes()
        try mesh.startRouters()
        let tail = try mesh.start("b", [pmmBinary, "tail", "--instance", "sink-b-0", "--data-type", "metrics", "-o", "json"], output: "tail.out")
        let ready = waitFor(seconds: 30) { mesh.healthy("a", "sink-b-0.metrics.out") && mesh.unacknowledgedAtA() == 0 }
        #expect(ready, "a never saw sink-b-0 healthy\n\(mesh.logs())")
        guard ready else { return }
        var delays: [Double] = []
        for round in 1...5 {
            _ = try run(mesh.env("a") + [pmmBinary, "send", "--data-type", "metrics", "--service", "gen", "--payload", "m\(round)"])
            let deadline = Date().addingTimeInterval(10)
            while sequences(in: tail.output).count < round && Date() < deadline { usleep(500) }
            let read = Date()
            #expect(sequences(in: tail.output).count == round, "frame \(round) did not arrive\n\(mesh.logs())")
            while mesh.unacknowledgedAtA() != 0 && Date() < read.addingTimeInterval(5) { usleep(500) }
            delays.append(Date().timeIntervalSince(read) * 1000)
        }
        let median = delays.sorted()[delays.count / 2]
        print("a frame read on b acknowledged to a after (ms): \(delays.map { String(format: "%.1f", $0) }), median \(String(format: "%.1f", median))")
        #expect(median < 20, "acknowledged \(delays) ms after its consumer read it\n\(mesh.logs())")

        // A consumer that stops reading with frames in its pipe: b looks for their reading less often once
        // nothing was read for a while, instead of every millisecond for as long as they wait.
        kill(tail.process.processIdentifier, SIGSTOP)
        defer { kill(tail.process.processIdentifier, SIGCONT) }
        _ = try run(mesh.env("a") + [pmmBinary, "send", "--data-type", "metrics", "--service", "gen", "--payload", "held", "--count", "50"])
        #expect(waitFor(seconds: 10) { mesh.unacknowledgedAtA() == 50 }, "the 50 frames never reached b\n\(mesh.logs())")
        usleep(500_000)
        let router = try #require(mesh.routers["b"]).process.processIdentifier
        let before = ProcessTable.cpuSeconds(of: router)
        let start = Date()
        usleep(4_000_000)
        let share = (ProcessTable.cpuSeconds(of: router) - before) / Date().timeIntervalSince(start)
        print("router b with 50 frames unread by a stopped consumer: \(String(format: "%.2f", share * 100))% of a core")
        #expect(share < 0.015, "router b used \(share * 100)% of a core waiting for a stopped consumer")
        _ = tail
    }
}
