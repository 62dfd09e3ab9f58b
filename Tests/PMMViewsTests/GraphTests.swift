import Foundation
import PMMCore
import PMMViews
import Testing

/// `pmm graph`'s pictures against golden text, and through the real Graphviz.
@Suite struct GraphTests {
    /// A mesh on two nodes with placements, a weight-0 target and a consumer left out of its route.
    static let nodesYAML = """
        apiVersion: pmm/v1
        kind: Mesh
        name: edge
        root: /run/pmm/edge
        nodes:
          edge-a: {address: "10.250.0.1:7400", labels: {zone: west}}
          edge-b: {address: "10.250.0.2:7400", labels: {zone: east}}
        links:
          tls: {ca: /etc/pmm/ca.pem, cert: "/etc/pmm/${NODE}.pem", key: "/etc/pmm/${NODE}-key.pem"}
        dataTypes:
          metrics:
            shards: 2
            qos: {delivery: at-most-once, maxRate: 1000}
        services:
          agent:
            uid: 2001
            produces: [{dataType: metrics}]
          collector:
            uid: 2002
            placement: {edge-a: 1, edge-b: 2}
            consumes: [{dataType: metrics}]
          archive:
            uid: 2003
            placement: {edge-b: 1}
            consumes: [{dataType: metrics}]
          audit:
            uid: 2004
            placement: {edge-a: 1}
            registration: required
            consumes: [{dataType: metrics, capacity: 500}]
        routes:
          metrics:
            policy: least-loaded
            locality: prefer-local
            targets:
              - {service: collector, weight: 3}
              - {service: archive, weight: 0}

        """

    static let live = GraphLive(
        instances: ["collector-edge-a-0": .healthy, "collector-edge-b-0": .stalled, "collector-edge-b-1": .down, "archive-edge-b-0": .healthy],
        egress: ["collector-edge-a-0.metrics": 120.4, "collector-edge-b-0.metrics": 30],
        ingress: ["agent.metrics": 150.6], waiting: ["metrics": 7])

    @Test func dot_whenExampleMesh_matchesTheCommittedDocsMeshDot() throws {
        // scripts/graph writes docs/mesh.dot (and docs/mesh.svg) from mesh.yaml.example: change the example
        // without running it and this fails.
        let example = try spec(yaml: repositoryFile("mesh.yaml.example"), file: "mesh.yaml.example")
        let committed = try repositoryFile("docs/mesh.dot")
        #expect(MeshGraph.render(example, format: .dot) == committed, "docs/mesh.dot is stale: run scripts/graph")
        let svg = try repositoryFile("docs/mesh.svg")
        #expect(svg.contains("<svg"), "docs/mesh.svg is not an SVG: run scripts/graph")
    }

    @Test func mermaid_whenExampleMesh_matchesGolden() throws {
        let example = try spec(yaml: repositoryFile("mesh.yaml.example"), file: "mesh.yaml.example")
        try assertSnapshot(MeshGraph.render(example, format: .mermaid), named: "example.mermaid")
    }

    @Test(arguments: GraphFormat.allCases)
    func render_whenNodesAndLiveFigures_drawsClustersHealthAndRates(format: GraphFormat) throws {
        let mesh = try spec(yaml: Self.nodesYAML)
        try assertSnapshot(MeshGraph.render(mesh, format: format, live: Self.live), named: "nodes-live.\(format.rawValue)")
    }

    @Test func render_isDeterministic() throws {
        let mesh = try spec(yaml: Self.nodesYAML)
        #expect(MeshGraph.render(mesh, format: .dot, live: Self.live) == MeshGraph.render(mesh, format: .dot, live: Self.live))
    }

    /// The real Graphviz reads every picture (scripts/setup installs the Debian package graphviz).
    @Test func dot_whenDrawnByGraphviz_givesAnSVG() throws {
        let dot = try #require(
            ["/usr/bin/dot", "/usr/local/bin/dot"].first { FileManager.default.isExecutableFile(atPath: $0) },
            "Graphviz' dot is missing: run scripts/setup")
        let example = try spec(yaml: repositoryFile("mesh.yaml.example"), file: "mesh.yaml.example")
        let nodes = try spec(yaml: Self.nodesYAML)
        for text in [MeshGraph.render(example, format: .dot), MeshGraph.render(nodes, format: .dot, live: Self.live)] {
            let result = try runProgram(dot, ["-Tsvg"], stdin: text)
            #expect(result.status == 0, "dot failed: \(result.stderr)")
            #expect(result.stderr.isEmpty, "dot warned: \(result.stderr)")
            #expect(result.stdout.contains("<svg"))
        }
    }
}
