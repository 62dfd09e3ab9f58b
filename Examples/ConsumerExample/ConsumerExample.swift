// An example service that consumes `metrics` with the PipeMesh library: register, then read typed messages.
//
//   example-consumer --service collector --count 100
//
// It needs `pmm serve` and `pmm router` on the same state directory, and must run as the service's uid.
import ArgumentParser
import Foundation
import Glibc
import PipeMesh
import ShopSchemas
import SwiftProtobuf

@main
struct ConsumerExample: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "example-consumer", abstract: "Receive shop.metrics.v2.Sample messages from the mesh.")

    @Option(help: "pmm's state directory (env PMM_STATE_DIR).")
    var stateDir: String?

    @Option(help: "The consuming service, as named in mesh.yaml.")
    var service: String = "collector"

    @Option(help: "The instance to be (default: the first free replica).")
    var instance: String?

    @Option(help: "Stop after this many messages (0: until interrupted).")
    var count: Int = 0

    @Flag(help: "Print one line per message (otherwise a summary per second).")
    var verbose = false

    func run() async throws {
        let mesh = PipeMesh(stateDirectory: stateDir)
        let registration = try mesh.register(service: service, dataType: "metrics", instance: instance)
        let heartbeats = registration.startHeartbeats()
        defer { heartbeats.cancel() }
        say("\(registration.instance): reading metrics v\(registration.versions["metrics"] ?? 0)")
        var received = 0
        var lastReport = Date()
        for try await sample in try registration.consumer(for: "metrics", of: Shop_Metrics_V2_Sample.self) {
            received += 1
            if verbose {
                say("\(registration.instance): \(sample.message.labels["host"] ?? "?") \(sample.message.name)=\(sample.message.value) (v\(sample.schemaVersion), \(sample.source)#\(sample.sequence))")
            } else if Date().timeIntervalSince(lastReport) >= 1 {
                say("\(registration.instance): \(received) received")
                lastReport = Date()
            }
            if count > 0 && received >= count { break }
        }
        say("\(registration.instance): received \(received)")
        try mesh.deregister(service: service, instance: registration.instance)
    }
}

/// Prints a line and flushes it at once (stdout is block-buffered when it is not a terminal).
func say(_ line: String) {
    print(line)
    fflush(nil)
}
