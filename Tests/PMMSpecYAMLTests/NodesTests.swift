import Foundation
import PMMCore
import PMMSpecYAML
import Testing

/// A mesh over two nodes: `api` on every node (no placement), `collector` placed 1 + 2.
let nodesYAML = """
    apiVersion: pmm/v1
    kind: Mesh
    name: wide
    root: /run/pmm/wide
    nodes:
      edge-a:
        address: 10.250.0.1:7400
        labels: {zone: west}
      edge-b:
        address: 10.250.0.2:7400
        labels: {zone: east}
    links:
      tls:
        ca: /etc/pmm/ca.pem
        cert: /etc/pmm/${NODE}.pem
        key: /etc/pmm/${NODE}-key.pem
    dataTypes:
      metrics:
        shards: 2
    services:
      api:
        uid: 1001
        produces: [{dataType: metrics}]
      collector:
        uid: 1002
        placement: {edge-a: 1, edge-b: 2}
        consumes: [{dataType: metrics}]
    routes:
      metrics:
        locality: prefer-local
        targets: [{service: collector}]

    """

func nodesReplacing(_ old: String, with new: String) -> String {
    precondition(nodesYAML.contains(old), "fixture does not contain \(old)")
    return nodesYAML.replacingOccurrences(of: old, with: new)
}

@Suite("Nodes, placement, links and locality in the spec")
struct NodesSpecTests {
    @Test func load_readsNodesPlacementLinksAndLocality() throws {
        let result = SpecLoader.loadAndValidate(yaml: nodesYAML, file: "mesh.yaml")
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics.map(\.summary))")
        let spec = try #require(result.spec)
        #expect(spec.nodes.map(\.name) == ["edge-a", "edge-b"])
        #expect(spec.node(named: "edge-b")?.zone == "east")
        #expect(spec.node(named: "edge-a")?.hostAndPort?.port == 7400)
        #expect(spec.linkTLS?.resolved(for: "edge-b") == LinkTLS(ca: "/etc/pmm/ca.pem", cert: "/etc/pmm/edge-b.pem", key: "/etc/pmm/edge-b-key.pem"))
        #expect(spec.route(for: "metrics")?.locality == .preferLocal)
        let collector = try #require(spec.service(named: "collector"))
        #expect(collector.replicas == 3)
        #expect(collector.instanceNames == ["collector-edge-a-0", "collector-edge-b-0", "collector-edge-b-1"])
        #expect(collector.node(of: "collector-edge-b-1") == "edge-b")
        // No placement: `replicas` (1) on every node.
        let api = try #require(spec.service(named: "api"))
        #expect(api.placement == ["edge-a": 1, "edge-b": 1])
        #expect(api.instanceNames == ["api-edge-a-0", "api-edge-b-0"])
    }

    @Test func desiredPipes_ofANode_areItsShareOnly() throws {
        let spec = try #require(SpecLoader.loadAndValidate(yaml: nodesYAML, file: "mesh.yaml").spec)
        let a = spec.desiredPipes(node: "edge-a").map(\.name)
        let b = spec.desiredPipes(node: "edge-b").map(\.name)
        #expect(a == ["api.metrics.s0.in", "api.metrics.s1.in", "collector-edge-a-0.metrics.out"])
        #expect(b == ["api.metrics.s0.in", "api.metrics.s1.in", "collector-edge-b-0.metrics.out", "collector-edge-b-1.metrics.out"])
        #expect(Set(spec.desiredPipes().map(\.name)) == Set(a + b))
        // A producer placed only on edge-b has no ingress pipes on edge-a.
        let placed = try #require(
            SpecLoader.loadAndValidate(
                yaml: nodesReplacing("  api:\n    uid: 1001\n", with: "  api:\n    uid: 1001\n    placement: {edge-b: 1}\n"),
                file: "mesh.yaml"
            ).spec)
        #expect(!placed.desiredPipes(node: "edge-a").contains { $0.kind == .ingress })
        #expect(placed.desiredPipes(node: "edge-b").filter { $0.kind == .ingress }.count == 2)
    }

    @Test func load_withoutNodes_isOneHostAsBefore() throws {
        let spec = try #require(SpecLoader.loadAndValidate(yaml: validYAML, file: "mesh.yaml").spec)
        #expect(spec.nodes.isEmpty && spec.linkTLS == nil)
        #expect(spec.service(named: "collector")?.instanceNames == ["collector-0", "collector-1", "collector-2"])
        #expect(spec.desiredPipes(node: "anything") == spec.desiredPipes())
    }

    static let bad: [BadSpec] = [
        BadSpec(
            name: "a placement on an undeclared node", yaml: nodesReplacing("{edge-a: 1, edge-b: 2}", with: "{edge-a: 1, edge-c: 2}"),
            code: .unknownReference, at: "26:28", path: "services.collector.placement.edge-c", summary: "node 'edge-c', which is not declared",
            note: "did you mean 'edge-a'?"),
        BadSpec(
            name: "replicas other than the placement's sum",
            yaml: nodesReplacing("    placement: {edge-a: 1, edge-b: 2}\n", with: "    replicas: 2\n    placement: {edge-a: 1, edge-b: 2}\n"),
            code: .invalidValue, at: "26:15", path: "services.collector.replicas", summary: "replicas is 2 but its placement puts 3 instances"),
        BadSpec(
            name: "two nodes on one address", yaml: nodesReplacing("10.250.0.2:7400", with: "10.250.0.1:7400"), code: .nameCollision,
            at: "10:14", path: "nodes.edge-b.address", summary: "nodes 'edge-a' and 'edge-b' have the same address 10.250.0.1:7400"),
        BadSpec(
            name: "an address that is not host:port", yaml: nodesReplacing("10.250.0.2:7400", with: "10.250.0.2"), code: .invalidValue,
            at: "10:14", path: "nodes.edge-b.address", summary: "address '10.250.0.2' is not host:port"),
        BadSpec(
            name: "a node name that is not a name", yaml: nodesReplacing("  edge-b:\n", with: "  Edge_B:\n")
                .replacingOccurrences(of: "edge-b: 2", with: "Edge_B: 2"),
            code: .invalidName, at: "9:3", path: "nodes.Edge_B", summary: "node 'Edge_B' is not a valid name"),
        BadSpec(
            name: "names that collide once the node is in them",
            yaml: nodesYAML
                .replacingOccurrences(of: "  edge-b:\n    address: 10.250.0.2:7400\n    labels: {zone: east}\n", with: "  b-c:\n    address: 10.250.0.2:7400\n  c:\n    address: 10.250.0.3:7400\n")
                .replacingOccurrences(of: "{edge-a: 1, edge-b: 2}", with: "{b-c: 1}")
                .replacingOccurrences(of: "  api:\n    uid: 1001\n", with: "  collector-b:\n    uid: 1003\n    placement: {c: 1}\n    consumes: [{dataType: metrics}]\n  api:\n    uid: 1001\n"),
            code: .nameCollision, at: nil, path: "services.collector-b", summary: "instance 'collector-b-c-0' of service 'collector-b' has the same name as instance 'collector-b-c-0' of service 'collector'"),
        BadSpec(
            name: "a placement without nodes",
            yaml: replacing("    replicas: 3\n", with: "    placement: {edge-a: 3}\n"), code: .invalidValue, at: "19:16",
            path: "services.collector.placement", summary: "has a placement, but the mesh declares no nodes"),
        BadSpec(
            name: "a TLS file missing on this node", yaml: nodesYAML, code: .missingFile, at: "15:11", path: "links.tls.cert",
            summary: "links.tls.cert: /etc/pmm/edge-b.pem does not exist on node 'edge-b'"),
    ]

    @Test(arguments: bad)
    func load_whenNodesAreWrong_saysWhereAndWhat(_ bad: BadSpec) throws {
        let result = SpecLoader.loadAndValidate(yaml: bad.yaml, file: "mesh.yaml") { _ in
            ValidationEnvironment(node: "edge-b", existingLinkFiles: ["/etc/pmm/ca.pem", "/etc/pmm/edge-b-key.pem"])
        }
        let first = try #require(
            result.diagnostics.first { $0.code == bad.code && $0.severity == .error },
            "no \(bad.code) in \(result.diagnostics.map { "\($0.code) \($0.path) \($0.summary)" })")
        if let at = bad.at { #expect(first.location.map { "\($0.line):\($0.column)" } == at, "\(first.summary)") }
        #expect(first.path.description == bad.path)
        #expect(first.summary.contains(bad.summary), "\(first.summary)")
        if let note = bad.note { #expect(first.notes.contains { $0.contains(note) }, "\(first.notes)") }
    }

    @Test func warnings_plaintextLinks_localityOnOneHost_linksWithoutNodes() {
        let plaintext = SpecLoader.loadAndValidate(
            yaml: nodesReplacing("links:\n  tls:\n    ca: /etc/pmm/ca.pem\n    cert: /etc/pmm/${NODE}.pem\n    key: /etc/pmm/${NODE}-key.pem\n", with: ""),
            file: "mesh.yaml")
        #expect(plaintext.diagnostics.map(\.summary) == ["links between the nodes' routers are plaintext"])
        #expect(plaintext.diagnostics.allSatisfy { $0.severity == .warning })
        let oneHost = SpecLoader.loadAndValidate(yaml: replacing("    policy: shard\n", with: "    policy: shard\n    locality: prefer-local\n"), file: "mesh.yaml")
        #expect(oneHost.diagnostics.map(\.summary) == ["locality: prefer-local has no effect on one host"])
        let links = SpecLoader.loadAndValidate(
            yaml: replacing("dataTypes:\n", with: "links:\n  tls: {ca: /a, cert: /b, key: /c}\ndataTypes:\n"), file: "mesh.yaml")
        #expect(links.diagnostics.map(\.summary) == ["links has no effect without nodes"])
    }
}
