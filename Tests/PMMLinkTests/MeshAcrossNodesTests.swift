import Foundation
import Glibc
import Testing

/// The built pmm.
let pmmBinary = builtProduct("pmm")

/// Three nodes of one mesh, each a network namespace of the test's own with its own pipe root and state
/// directory, each running the real `pmm router --node`, linked with mutual TLS (certificates made now).
final class ThreeNodeMesh: @unchecked Sendable {
    let network: TestNetwork
    let directory = TemporaryDirectory("pmm-nodes")
    let nodes = ["a", "b", "c"]
    var routers: [String: NamespacedProcess] = [:]
    var started: [String: Int] = [:]

    init(spec: (_ address: (Int) -> String, _ tls: String) -> String) throws {
        network = try TestNetwork(hosts: nodes, subnet: "10.250.9")
        let pki = try TestPKI(directory: directory)
        for node in nodes { _ = try pki.issue(commonName: node, dnsNames: [node], file: node) }
        let tls = "{ca: \"\(pki.ca)\", cert: \"\(directory.path)/${NODE}.pem\", key: \"\(directory.path)/${NODE}-key.pem\"}"
        try spec({ network.address($0) }, tls).write(toFile: specPath, atomically: true, encoding: .utf8)
        for node in nodes {
            try FileManager.default.createDirectory(atPath: state(node), withIntermediateDirectories: true)
            _ = try run(["env", "PMM_STATE_DIR=\(state(node))", "PMM_ROOT=\(root(node))", pmmBinary, "apply", "-f", specPath, "--node", node])
        }
    }

    var specPath: String { directory.path + "/mesh.yaml" }
    func state(_ node: String) -> String { directory.path + "/\(node)/state" }
    func root(_ node: String) -> String { directory.path + "/\(node)/pipes" }
    func env(_ node: String) -> [String] { ["env", "PMM_STATE_DIR=\(state(node))"] }

    func startRouter(_ node: String) throws {
        started[node, default: 0] += 1
        routers[node] = try NamespacedProcess(
            namespace: network.namespace(node), env(node) + [pmmBinary, "router", "--node", node],
            output: directory.path + "/router-\(node)-\(started[node]!).log")
    }

    func kill(_ node: String) {
        guard let router = routers[node] else { return }
        // `ip netns exec` and `env` exec the next program: the process is the router itself.
        Glibc.kill(router.process.processIdentifier, SIGKILL)
        router.process.waitUntilExit()
    }

    /// The router's status file.
    func status(_ node: String) -> [String: Any] { routerStatus(stateDirectory: state(node)) }

    /// Whether `node`'s router has its link to `peer` up (per its status file).
    func linkUp(_ node: String, _ peer: String) -> Bool {
        let links = status(node)["links"] as? [[String: Any]] ?? []
        return links.contains { $0["peer"] as? String == peer && $0["up"] as? Bool == true }
    }

    /// Whether `node`'s router counts `pipe` (an egress pipe, local or remote) healthy.
    func healthy(_ node: String, _ pipe: String) -> Bool { egressHealthy(status(node), pipe) }

    func logs() -> String {
        routers.keys.sorted().map { "--- router \($0):\n" + (routers[$0]?.output.suffix(3000) ?? "") }.joined(separator: "\n")
    }

    deinit {
        for node in routers.keys { kill(node) }
        network.remove()
    }
}

/// A router's status file (`router.json` in its state directory), or nothing yet.
func routerStatus(stateDirectory: String) -> [String: Any] {
    guard let data = FileManager.default.contents(atPath: stateDirectory + "/router.json"),
        let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
    else { return [:] }
    return object
}

/// Whether a router's status counts `pipe` (an egress pipe, local or remote) healthy.
func egressHealthy(_ status: [String: Any], _ pipe: String) -> Bool {
    let egress = status["egress"] as? [[String: Any]] ?? []
    return egress.contains { $0["name"] as? String == pipe && $0["healthy"] as? Bool == true }
}

/// Sequence numbers in `pmm tail -o json` output.
func sequences(in output: String) -> [Int] {
    output.split(separator: "\n").compactMap { line in
        guard let data = line.data(using: .utf8), let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
        return (object["sequence"] as? NSNumber)?.intValue
    }
}

@Suite(
    .serialized,
    .enabled(
        if: canUseNamespaces,
        "needs root, `ip` (iproute2) and openssl: it makes network namespaces of its own (scripts/setup installs both)")
)
struct MeshAcrossNodesTests {
    static func spec(_ address: (Int) -> String, _ tls: String) -> String {
        """
        apiVersion: pmm/v1
        kind: Mesh
        name: wide
        root: /run/pmm-wide-unused
        nodes:
          a: {address: "\(address(0)):7400", labels: {zone: west}}
          b: {address: "\(address(1)):7400", labels: {zone: west}}
          c: {address: "\(address(2)):7400", labels: {zone: east}}
        links:
          tls: \(tls)
        dataTypes:
          metrics:
            qos: {delivery: at-least-once}
        services:
          gen:
            uid: 0
            placement: {a: 1}
            produces: [{dataType: metrics}]
          sink:
            uid: 0
            placement: {b: 1, c: 1}
            consumes: [{dataType: metrics}]
        routes:
          metrics:
            policy: shard
            targets: [{service: sink}]

        """
    }

    /// A producer on a, the consumer service on b and c. Frames cross to the instance their key maps to; b's
    /// router is SIGKILLed and its cable cut mid-stream: its keys move to c; both come back and b's keys
    /// return. Nothing at-least-once is lost; duplicates are counted.
    @Test func threeNodes_aKilledRouterAndACutCable_loseNothing_andKeysMoveAndComeBack() throws {
        let mesh = try ThreeNodeMesh(spec: Self.spec)
        for node in mesh.nodes { try mesh.startRouter(node) }
        let links = waitFor(seconds: 30) { mesh.linkUp("a", "b") && mesh.linkUp("a", "c") && mesh.linkUp("b", "c") }
        #expect(links, "links did not come up\n\(mesh.logs())")
        guard links else { return }
        let tailB = try NamespacedProcess(
            namespace: mesh.network.namespace("b"),
            mesh.env("b") + [pmmBinary, "tail", "--instance", "sink-b-0", "--data-type", "metrics", "-o", "json"],
            output: mesh.directory.path + "/tail-b.out")
        let tailC = try NamespacedProcess(
            namespace: mesh.network.namespace("c"),
            mesh.env("c") + [pmmBinary, "tail", "--instance", "sink-c-0", "--data-type", "metrics", "-o", "json"],
            output: mesh.directory.path + "/tail-c.out")
        #expect(
            waitFor(seconds: 15) { mesh.healthy("a", "sink-b-0.metrics.out") && mesh.healthy("a", "sink-c-0.metrics.out") },
            "a never saw both remote instances healthy\n\(mesh.logs())")

        let total = 12_000
        let send = try NamespacedProcess(
            namespace: mesh.network.namespace("a"),
            mesh.env("a") + [pmmBinary, "send", "--data-type", "metrics", "--service", "gen", "--keys", "64", "--payload", "m", "--count", "\(total)", "--rate", "500"],
            output: mesh.directory.path + "/send.out")
        func received(_ tail: NamespacedProcess) -> Int { sequences(in: tail.output).count }

        // 1. A sixth of the way, b's router is SIGKILLed and its cable cut.
        #expect(waitFor(seconds: 30) { received(tailB) + received(tailC) >= total / 6 })
        #expect(received(tailB) > 0 && received(tailC) > 0, "both instances had keys before the failure")
        mesh.kill("b")
        try mesh.network.cable("b", up: false)
        var cut = Date()
        // a notices (the connection reset, or no heartbeat for the idle timeout) and moves b's keys to c.
        let moved = waitFor(seconds: 20) { !mesh.linkUp("a", "b") && !mesh.healthy("a", "sink-b-0.metrics.out") }
        let killMove = Date().timeIntervalSince(cut)
        #expect(moved, "a never noticed b was gone\n\(mesh.logs())")
        var atMove = received(tailC)
        #expect(waitFor(seconds: 10) { received(tailC) > atMove + 300 }, "c did not take b's keys")
        try mesh.network.cable("b", up: true)
        try mesh.startRouter("b")
        var restored = Date()
        #expect(waitFor(seconds: 30) { mesh.linkUp("a", "b") && mesh.healthy("a", "sink-b-0.metrics.out") }, "b did not come back\n\(mesh.logs())")
        let killBack = Date().timeIntervalSince(restored)
        var atReturn = received(tailB)
        #expect(waitFor(seconds: 10) { received(tailB) > atReturn + 100 }, "b's keys did not come back")

        // 2. c's cable alone is cut (its router lives on, holding what it received): only silence tells.
        try mesh.network.cable("c", up: false)
        cut = Date()
        #expect(waitFor(seconds: 20) { !mesh.linkUp("a", "c") && !mesh.healthy("a", "sink-c-0.metrics.out") }, "a never noticed c was cut off\n\(mesh.logs())")
        let cableMove = Date().timeIntervalSince(cut)
        atMove = received(tailB)
        #expect(waitFor(seconds: 10) { received(tailB) > atMove + 300 }, "b did not take c's keys")
        try mesh.network.cable("c", up: true)
        restored = Date()
        #expect(waitFor(seconds: 30) { mesh.linkUp("a", "c") && mesh.healthy("a", "sink-c-0.metrics.out") }, "c did not come back\n\(mesh.logs())")
        let cableBack = Date().timeIntervalSince(restored)
        atReturn = received(tailC)
        #expect(waitFor(seconds: 10) { received(tailC) > atReturn + 100 } || send.waitExit(seconds: 0) != nil, "c's keys did not come back")

        #expect(send.waitExit(seconds: 90) == 0, "send: \(send.output)")
        let all = waitFor(seconds: 60) { Set(sequences(in: tailB.output) + sequences(in: tailC.output)).count >= total }
        let fromB = sequences(in: tailB.output)
        let fromC = sequences(in: tailC.output)
        let delivered = Set(fromB + fromC)
        let lost = Set(1...total).subtracting(delivered)
        #expect(all && lost.isEmpty, "lost \(lost.count): \(lost.sorted().prefix(20))\n\(mesh.logs())")
        let duplicated = fromB.count + fromC.count - delivered.count
        // The producer's spool empties: every frame was acknowledged over the links.
        #expect(waitFor(seconds: 20) { (mesh.status("a")["spooledBytes"] as? NSNumber)?.intValue == 0 }, "a's spool: \(mesh.status("a")["spooledBytes"] ?? "-")")
        // pmm status on a shows both links up, what crossed them, and the revision each peer serves.
        let status = try run(mesh.env("a") + [pmmBinary, "status"])
        let linkLines = status.split(separator: "\n").filter { $0.hasPrefix("b ") || $0.hasPrefix("c ") }
        #expect(status.contains("on node a") && status.contains("LINK TO") && linkLines.count == 2, "\(status)")
        #expect(linkLines.allSatisfy { $0.contains(" up ") }, "\(status)")
        // pmm top shows the same links, from the same router.json.
        let top = try run(mesh.env("a") + ["NO_COLOR=1", pmmBinary, "top", "--once"])
        #expect(top.contains("LINK") && top.split(separator: "\n").filter { $0.hasPrefix("b ") || $0.hasPrefix("c ") }.count == 2, "\(top)")
        let f = { (seconds: Double) in String(format: "%.1f s", seconds) }
        print(
            "three nodes: sent \(total), delivered \(delivered.count) distinct (\(fromB.count) at b, \(fromC.count) at c), "
                + "duplicated \(duplicated), lost \(lost.count); b killed + cut: keys moved after \(f(killMove)), back \(f(killBack)) "
                + "after the restart; c's cable cut: keys moved after \(f(cableMove)), back \(f(cableBack)) after the cable")
        _ = tailB
        _ = tailC
    }
}
