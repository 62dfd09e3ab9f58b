import Foundation
import Glibc
import PMMCore
import PMMRegistry
import PMMSystem
import Testing

/// A two-node mesh whose pipes live under `root`: `api` on both nodes, `collector` placed 1 + 2.
func twoNodeMesh(root: String) -> String {
    """
    apiVersion: pmm/v1
    kind: Mesh
    name: wide
    root: \(root)
    nodes:
      edge-a: {address: 10.250.0.1:7400}
      edge-b: {address: 10.250.0.2:7400}
    dataTypes:
      metrics: {shards: 2}
    services:
      api:
        uid: 0
        produces: [{dataType: metrics}]
      collector:
        uid: 0
        placement: {edge-a: 1, edge-b: 2}
        consumes: [{dataType: metrics}]

    """
}

@Suite("apply, diff and the router on a mesh with nodes", .serialized)
struct NodesApplyTests {
    func pipes(in dir: TemporaryDirectory) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir.root)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
    }

    @Test func apply_withNode_makesOnlyThatNodesPipes_andTheRevisionRecordsIt() throws {
        let dir = TemporaryDirectory()
        dir.write(twoNodeMesh(root: dir.root))
        let state = "--state-dir=\(dir.path)/state"
        let outcome = try pmm("apply", "-f", dir.specPath, state, "--node", "edge-b")
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(pipes(in: dir) == ["api.metrics.s0.in", "api.metrics.s1.in", "collector-edge-b-0.metrics.out", "collector-edge-b-1.metrics.out"])
        let registry = try Registry(path: dir.path + "/state/registry.sqlite")
        #expect(try registry.latestRevision()?.node == "edge-b")
        // Idempotent for the same node; PMM_NODE says the same as --node.
        let again = try pmm(["apply", "-f", dir.specPath, state], environment: ["PMM_NODE": "edge-b"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(try registry.revisions().count == 1)
    }

    @Test func apply_withoutNodeOrWithAStranger_isRefusedAndChangesNothing() throws {
        let dir = TemporaryDirectory()
        dir.write(twoNodeMesh(root: dir.root))
        let state = "--state-dir=\(dir.path)/state"
        let none = try pmm(["apply", "-f", dir.specPath, state], environment: ["PMM_NODE": ""])
        #expect(none.status == 1)
        #expect(none.stderr.contains("the spec spans nodes (edge-a, edge-b): say which one this host is with --node NAME or PMM_NODE"), "\(none.stderr)")
        let stranger = try pmm("apply", "-f", dir.specPath, state, "--node", "edge-c")
        #expect(stranger.status == 1)
        #expect(stranger.stderr.contains("node 'edge-c' is not one of the spec's nodes (edge-a, edge-b)"), "\(stranger.stderr)")
        #expect(pipes(in: dir).isEmpty)
    }

    @Test func diff_withoutNode_showsEveryNodesShare_withNode_thisHost() throws {
        let dir = TemporaryDirectory()
        dir.write(twoNodeMesh(root: dir.root))
        let state = "--state-dir=\(dir.path)/state"
        let every = try pmm(["diff", "-f", dir.specPath, state], environment: ["PMM_NODE": ""])
        #expect(every.status == 1, "\(every.stderr)")
        #expect(every.stdout.contains("node edge-a (10.250.0.1:7400):") && every.stdout.contains("node edge-b (10.250.0.2:7400):"), "\(every.stdout)")
        #expect(every.stdout.contains("collector-edge-a-0.metrics.out") && every.stdout.contains("collector-edge-b-1.metrics.out"))
        let json = try pmm(["diff", "-f", dir.specPath, state, "-o", "json"], environment: ["PMM_NODE": ""])
        let shares = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        #expect(Set(shares?.keys.map { $0 } ?? []) == ["edge-a", "edge-b"])

        #expect(try pmm("apply", "-f", dir.specPath, state, "--node", "edge-a").status == 0)
        let mine = try pmm("diff", "-f", dir.specPath, state, "--node", "edge-a")
        #expect(mine.status == 0, "edge-a is applied on this host: \(mine.stdout) \(mine.stderr)")
        // Every node's share against the revision just applied: nothing changes anywhere.
        let after = try pmm(["diff", "-f", dir.specPath, state], environment: ["PMM_NODE": ""])
        #expect(after.status == 0, "\(after.stdout)")
    }

    /// The router serves the node the revision was applied on (or --node): it listens on that node's address,
    /// and says so plainly when it cannot (here: 10.250.0.1 is no address of this host). Routing across nodes
    /// itself is tested in network namespaces (PMMLinkTests, MeshAcrossNodesTests).
    @Test func router_onAMeshWithNodes_servesTheAppliedNode_andSaysWhyItCannotListen() throws {
        let dir = TemporaryDirectory()
        dir.write(twoNodeMesh(root: dir.root))
        let state = "--state-dir=\(dir.path)/state"
        #expect(try pmm("apply", "-f", dir.specPath, state, "--node", "edge-a").status == 0)
        let router = try pmm("router", state)
        #expect(router.status != 0)
        #expect(router.stderr.contains("node edge-a: cannot listen for links on 10.250.0.1:7400"), "\(router.stderr)")
        let unknown = try pmm("router", state, "--node", "edge-z")
        #expect(unknown.status != 0)
        #expect(unknown.stderr.contains("edge-z") && unknown.stderr.contains("edge-b"), "names the nodes there are: \(unknown.stderr)")
    }
}
