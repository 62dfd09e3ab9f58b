// An example service that produces `metrics` with the PipeMesh library: register, then send typed messages.
//
//   example-producer --service api --count 1000 --rate 200
//
// It needs `pmm serve` (for the registration) and `pmm router` (to read what it writes) on the same state
// directory, and must run as the uid the spec gives the service (or root).
import ArgumentParser
import Foundation
import Glibc
import PipeMesh
import ShopSchemas
import SwiftProtobuf

@main
struct ProducerExample: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "example-producer", abstract: "Send shop.metrics.v2.Sample messages through the mesh.")

    @Option(help: "pmm's state directory (env PMM_STATE_DIR).")
    var stateDir: String?

    @Option(help: "The producing service, as named in mesh.yaml.")
    var service: String = "api"

    @Option(help: "How many messages (0: until interrupted).")
    var count: Int = 0

    @Option(help: "Messages per second.")
    var rate: Double = 100

    @Option(help: "How many hosts (shard keys) the samples come from.")
    var hosts: Int = 50

    func run() async throws {
        let mesh = PipeMesh(stateDirectory: stateDir)
        let registration = try mesh.register(service: service, dataType: "metrics")
        let heartbeats = registration.startHeartbeats()
        defer { heartbeats.cancel() }
        let metrics = try registration.producer(for: "metrics", of: Shop_Metrics_V2_Sample.self)
        say("\(registration.instance): sending metrics v\(metrics.version)")
        var sent = 0
        let started = ContinuousClock.now
        while count == 0 || sent < count {
            let host = "host-\(sent % max(1, hosts))"
            let sample = Shop_Metrics_V2_Sample.with {
                $0.name = "cpu"
                $0.value = Double(sent % 100) / 100
                $0.timestampUnixNanos = Int64(Date().timeIntervalSince1970 * 1e9)
                $0.labels = ["host": host]
            }
            try await metrics.send(sample, shardKey: host)
            sent += 1
            // Paced against the start, not per message, so the rate holds whatever a send costs.
            if rate > 0 {
                let due = started + .seconds(Double(sent) / rate)
                if due > ContinuousClock.now { try await Task.sleep(until: due) }
            }
        }
        try await metrics.finish()  // the router has taken every frame out of the pipe: safe to exit
        say("\(registration.instance): sent \(sent)")
        try mesh.deregister(service: service, instance: registration.instance)
    }
}

/// Prints a line and flushes it at once (stdout is block-buffered when it is not a terminal).
func say(_ line: String) {
    print(line)
    fflush(nil)
}
