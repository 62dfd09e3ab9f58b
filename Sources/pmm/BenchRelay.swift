import ArgumentParser
import Foundation
import Glibc
import PMMBench

/// `pmm bench-relay`: the bench's minimal relay in a process of its own (`pmm bench --relay process`). Not for
/// users; hidden from the help.
struct BenchRelayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-relay",
        abstract: "The minimal relay of pmm bench, as a process (started by pmm bench).",
        discussion: "Prints ready once the ingress FIFOs are open, then, when every producer has closed, its CPU seconds.",
        shouldDisplay: false)

    @Option(help: "An ingress FIFO (repeat for several); frames of ingress i go to egress i mod the egress count.")
    var ingress: [String] = []

    @Option(help: "An egress FIFO (repeat for several).")
    var egress: [String] = []

    func validate() throws {
        guard !ingress.isEmpty, !egress.isEmpty else { throw ValidationError("at least one --ingress and one --egress") }
    }

    func run() throws {
        let cpu = Relay.run(ingress: ingress, egress: egress) { say("ready") }
        say("cpu \(cpu)")
    }

    /// One line to pmm bench, at once (stdout is a pipe, which print would buffer).
    private func say(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress, $0.count) }
    }
}
