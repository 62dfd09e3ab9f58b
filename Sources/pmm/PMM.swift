import ArgumentParser
import PMMSystem

@main
enum Main {
    static func main() {
        // Signals blocked by whoever started us (a test runner, a supervisor) would make SIGHUP and SIGTERM
        // silently pending forever.
        ProcessSignals.unblockAll()
        PMM.main()
    }
}

struct PMM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pmm",
        abstract: "The Pipe Mesh Manager: named pipes between the services of one host, declared in mesh.yaml.",
        discussion: """
            Describe data types, services and routes in mesh.yaml and keep it in git. Then:

              pmm validate -f mesh.yaml     check it (every error with file:line:column; schemas through protoc)
              pmm diff -f mesh.yaml         what apply would change (exit 0 none, 1 some, 2 error)
              pmm apply -f mesh.yaml        create, re-own and remove pipes; record a revision
              pmm history                   list revisions;  pmm rollback N  applies revision N again
              pmm router                    the data plane (pmm up: apply, then the router)
              pmm serve -f mesh.yaml        the control API (register, pipe-name, route set) and self-heal
              pmm status                    health, rates, dead letters, who holds each pipe
              pmm top                       a live view of instances, health, msgs/s, queues (q quits)
              pmm graph -f mesh.yaml        the mesh as a picture (Graphviz dot, or -o mermaid; --live)
              pmm send / pmm tail           write / read envelopes by hand
              pmm deadletters list|replay   what the router could not deliver
              pmm schema check -f mesh.yaml which schema version can read which
              pmm demo                      a guided tour in a temporary directory
              pmm version                   the version and the git commit this binary was built from

            Environment: PMM_ROOT overrides the spec's root, PMM_STATE_DIR the state directory \
            (default /var/lib/pmm), NO_COLOR turns colour off.
            """,
        version: BuildInfo.summary,
        subcommands: [
            Validate.self, Diff.self, Apply.self, History.self, Rollback.self, Status.self, RouterCommand.self, Up.self,
            Serve.self, Register.self, Deregister.self, PipeNameCommand.self, RouteCommand.self, Send.self, Tail.self,
            DeadLetters.self, SchemaCommand.self, BenchCommand.self, BenchRelayCommand.self, Demo.self, Graph.self, Top.self, Version.self,
        ]
    )
}
