import Foundation
import Glibc
import PMMLink
import Testing

/// The built link-probe.
let linkProbe = builtProduct("link-probe")

/// A product of this package, beside this test bundle (or in the package's debug build directory).
func builtProduct(_ name: String) -> String {
    let bundleDirectory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    let candidates = [bundleDirectory.appendingPathComponent(name).path, root + "/.build/debug/" + name]
    return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates[1]
}

/// Two test hosts in network namespaces of this test's own, joined by veth pairs to a bridge that lives in a
/// third namespace of its own. Nothing is created in the host's namespace (each veth is made inside a test
/// namespace with its peer sent straight into the bridge's); every address is a 10.250.x.y of these hosts
/// only. `remove()` deletes the namespaces, which deletes their links.
final class TestNetwork: @unchecked Sendable {
    let prefix: String
    let subnet: String
    var namespaces: [String] = []

    init(hosts: [String], subnet: String = "10.250.7") throws {
        prefix = "pmmlink-\(getpid())-\(UInt16.random(in: 0...UInt16.max))"
        self.subnet = subnet
        do {
            let bridge = prefix + "-br"
            try run(["ip", "netns", "add", bridge])
            namespaces.append(bridge)
            try run(["ip", "-n", bridge, "link", "add", "br0", "type", "bridge"])
            try run(["ip", "-n", bridge, "link", "set", "br0", "up"])
            for (index, host) in hosts.enumerated() {
                let ns = namespace(host)
                try run(["ip", "netns", "add", ns])
                namespaces.append(ns)
                try run([
                    "ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port(host), "netns", bridge,
                ])
                try run(["ip", "-n", bridge, "link", "set", port(host), "master", "br0", "up"])
                try run(["ip", "-n", ns, "addr", "add", "\(subnet).\(index + 1)/24", "dev", "eth0"])
                try run(["ip", "-n", ns, "link", "set", "eth0", "up"])
                try run(["ip", "-n", ns, "link", "set", "lo", "up"])
            }
        } catch {
            remove()
            throw error
        }
    }

    func namespace(_ host: String) -> String { "\(prefix)-\(host)" }
    func port(_ host: String) -> String { "port-\(host)" }
    func address(_ index: Int) -> String { "\(subnet).\(index + 1)" }

    /// Pulls (or plugs back) the host's cable: its port on the bridge goes down (up).
    func cable(_ host: String, up: Bool) throws {
        try run(["ip", "-n", prefix + "-br", "link", "set", port(host), up ? "up" : "down"])
    }

    func remove() {
        for ns in namespaces.reversed() { _ = try? run(["ip", "netns", "del", ns], allowFailure: true) }
        namespaces = []
    }

    deinit { remove() }
}

/// A process started under `ip netns exec` (or, with no namespace, in the host's), its output in a file.
final class NamespacedProcess: @unchecked Sendable {
    let process = Process()
    let outputPath: String

    init(namespace: String?, _ arguments: [String], output: String) throws {
        outputPath = output
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = (namespace.map { ["ip", "netns", "exec", $0] } ?? []) + arguments
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
    }

    var output: String { (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "" }

    func lines(_ prefix: String) -> [String] {
        output.split(separator: "\n").map(String.init).filter { $0.hasPrefix(prefix) }
    }

    /// A `key=value` of the last line starting with `prefix`.
    func value(_ prefix: String, _ key: String) -> Int? {
        guard let line = lines(prefix).last else { return nil }
        for part in line.split(separator: " ") where part.hasPrefix(key + "=") {
            return Int(part.dropFirst(key.count + 1))
        }
        return nil
    }

    func waitExit(seconds: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(50_000) }
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
            return nil
        }
        return process.terminationStatus
    }

    deinit {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }
}

func waitFor(seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(50_000)
    }
    return condition()
}

let canUseNamespaces = isRoot && commandExists("ip") && commandExists("openssl")

@Suite(
    .serialized,
    .enabled(
        if: canUseNamespaces,
        "needs root, `ip` (iproute2) and openssl: it makes network namespaces of its own (scripts/setup installs both)")
)
struct LinkNamespaceTests {
    @Test func acrossNamespaces_withTLS_aCutCableHeals_andNothingTheSenderHeldIsLost() throws {
        let network = try TestNetwork(hosts: ["a", "b"])
        defer { network.remove() }
        let directory = TemporaryDirectory()
        let pki = try TestPKI(directory: directory)
        let tlsA = try pki.issue(commonName: "edge-a", dnsNames: ["edge-a"])
        let tlsB = try pki.issue(commonName: "edge-b", dnsNames: ["edge-b"])
        let total = 20_000
        let common = [
            "--nodes", "edge-a,edge-b", "--idle-timeout-ms", "1500", "--heartbeat-ms", "300", "--time-limit", "60",
        ]
        let b = try NamespacedProcess(
            namespace: network.namespace("b"),
            [
                linkProbe, "--node", "edge-b", "--listen", network.address(1) + ":7400", "--expect", "\(total)",
                "--ca", tlsB.ca, "--cert", tlsB.certificate, "--key", tlsB.key,
            ] + common,
            output: directory.path + "/b.out")
        #expect(waitFor(seconds: 10) { !b.lines("listening").isEmpty }, "b: \(b.output)")
        let a = try NamespacedProcess(
            namespace: network.namespace("a"),
            [
                linkProbe, "--node", "edge-a", "--listen", network.address(0) + ":7400",
                "--peer", "edge-b=\(network.address(1)):7400", "--to", "edge-b", "--send", "\(total)", "--size", "128",
                "--rate", "4000", "--ca", tlsA.ca, "--cert", tlsA.certificate, "--key", tlsA.key,
            ] + common,
            output: directory.path + "/a.out")
        // A quarter across, then the cable is cut until both sides have noticed, and plugged back.
        #expect(waitFor(seconds: 20) { (a.value("progress", "acked") ?? 0) >= total / 4 }, "a: \(a.output)")
        try network.cable("a", up: false)
        let noticed = waitFor(seconds: 10) { !a.lines("disconnected").isEmpty && !b.lines("disconnected").isEmpty }
        try network.cable("a", up: true)
        #expect(noticed, "a: \(a.output)\nb: \(b.output)")
        let aStatus = a.waitExit(seconds: 45)
        let bStatus = b.waitExit(seconds: 10)
        #expect(aStatus == 0, "a: \(a.output)")
        #expect(bStatus == 0, "b: \(b.output)")
        #expect(a.value("sent-done", "frames") == total)
        #expect((a.value("sent-done", "disconnects") ?? 0) >= 1)
        #expect(b.value("received", "distinct") == total, "b: \(b.output)")
        // What a resend repeats (sent again because its acknowledgement was lost with the cable) is dropped by
        // edge-b's link before its router sees it.
        #expect(b.value("received", "duplicates") == 0, "b: \(b.output)")
        // The link came back with the numbering resumed where edge-b's acknowledgements had got to.
        let connects = a.lines("connected")
        #expect(connects.count >= 2, "a: \(a.output)")
        #expect((a.value("connected", "resume") ?? 0) > 0, "a: \(a.output)")
        print(
            "namespaces: sent \(total), \(b.value("received", "duplicates") ?? -1) duplicates, "
                + "\(connects.count - 1) reconnects, \(a.output.split(separator: "\n").filter { $0.hasPrefix("sent-done") })"
        )
    }
}
