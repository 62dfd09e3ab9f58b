import ArgumentParser
import Foundation
import PMMCore
import PMMReconciler
import PMMRouter
import PMMSystem
import PMMViews

struct Graph: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Draw the mesh: services, data types, routes with their weights and policy, nodes.",
        discussion: """
            Prints Graphviz (-o dot, the default) or a mermaid flowchart (-o mermaid) on standard output:

              pmm graph -f mesh.yaml | dot -Tsvg > mesh.svg

            Producers point at the data types they write and data types at the services they are routed to; \
            edges say the version, rate limit, policy, weight and share. With nodes: in the spec, each node is \
            a cluster holding the services it runs. --live adds what the running router reports \
            (<state-dir>/router.json): each instance's health (stalled and down instances are coloured and \
            dashed) and messages/s on every edge.

            Exit codes: 0 the picture was printed; 1 the spec is unreadable or invalid, or --live found no \
            running router's status; 64 bad arguments.
            """)

    @OptionGroup var spec: SpecOptions
    @OptionGroup var state: StateOptions

    @Option(name: .shortAndLong, help: "Output format: dot or mermaid.")
    var output: GraphOutput = .dot

    @Flag(help: "Add health and msgs/s from the running router (its router.json in the state directory).")
    var live = false

    enum GraphOutput: String, ExpressibleByArgument, CaseIterable {
        case dot, mermaid
    }

    func run() throws {
        // The picture is of the file as written: schemas are not needed to draw it.
        let loaded = try readSpec(spec, failure: 1, schemas: .skip)
        guard let mesh = loaded.validSpec else {
            throw report(.invalidSpec(loaded), exitCode: 1, color: useColor)
        }
        var figures: GraphLive?
        if live {
            let directory = state.directory
            guard directory.runningRouterPID != nil, let status = RouterStatus.read(from: directory.routerStatusPath) else {
                printError("error: --live: no running router in \(directory.path) (start pmm router, or drop --live for the spec alone)")
                throw ExitCode(1)
            }
            figures = GraphLive(status: status)
        }
        print(MeshGraph.render(mesh, format: output == .dot ? .dot : .mermaid, live: figures), terminator: "")
    }
}
