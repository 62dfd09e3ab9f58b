// The router's steps per frame, measured alone: framing, the routing-field scan, the routing decision,
// encoding. Wall time and allocations per frame (`.mallocCountTotal` / the scaled iteration count).
import Benchmark
import Foundation
import PMMCore
import PMMWire

let frameCount = 1000

/// 1000 frames of 128-byte payloads, as a producer writes them.
let stream: [UInt8] = (0..<frameCount).flatMap { i -> [UInt8] in
    var envelope = Envelope()
    envelope.dataType = "metrics"
    envelope.schemaVersion = 2
    envelope.shardKey = Data("host-\(i % 64)".utf8)
    envelope.source = "api"
    envelope.sequence = UInt64(i)
    envelope.sentAtUnixNanos = 1_700_000_000_000_000_000
    envelope.payload = Data(repeating: 7, count: 128)
    return try! envelope.framed()
}

let spec = MeshSpec(
    name: "bench", root: "/run/pmm/bench", dataTypes: [DataType(name: "metrics", shards: 4)],
    services: [
        Service(name: "api", uid: 1, produces: [Binding(dataType: "metrics")]),
        Service(name: "collector", uid: 2, replicas: 3, consumes: [Binding(dataType: "metrics")]),
        Service(name: "canary", uid: 3, consumes: [Binding(dataType: "metrics")]),
    ],
    routes: [Route(dataType: "metrics", targets: [RouteTarget(service: "collector", weight: 90), RouteTarget(service: "canary", weight: 10)])])

let benchmarks: @Sendable () -> Void = {
    let metrics: [BenchmarkMetric] = [.wallClock, .mallocCountTotal, .throughput]
    let configuration = Benchmark.Configuration(metrics: metrics, scalingFactor: .kilo, maxDuration: .seconds(2))

    Benchmark("frame decode + routing-field scan (per 1000 frames)", configuration: configuration) { benchmark in
        var buffer = FrameBuffer(maximumFrameSize: 1 << 20)
        buffer.prepare(minimum: stream.count)
        for _ in benchmark.scaledIterations {
            buffer.reset()
            buffer.append(stream)
            var found = 0
            while let frame = try buffer.next() { found += frame.fields.shardKey.count }
            blackHole(found)
        }
    }

    Benchmark("envelope scan only (per frame)", configuration: configuration) { benchmark in
        let body = Array(stream[2..<Int(stream[0]) + 2])
        for _ in benchmark.scaledIterations {
            body.withUnsafeBytes { blackHole(try! EnvelopeScanner.scan($0)) }
        }
    }

    Benchmark("routing decision, policy shard (per frame)", configuration: configuration) { benchmark in
        let entry = RoutingTable(spec: spec).entries["metrics"]!
        let keys = (0..<64).map { ShardHash.fnv1a64("host-\($0)") }
        var i = 0
        for _ in benchmark.scaledIterations {
            blackHole(entry.chooseByKey(hash: keys[i & 63]) { _, _ in true })
            i &+= 1
        }
    }

    Benchmark("envelope encode + frame (per frame)", configuration: configuration) { benchmark in
        var envelope = Envelope()
        envelope.dataType = "metrics"
        envelope.shardKey = Data("host-1".utf8)
        envelope.payload = Data(repeating: 7, count: 128)
        for _ in benchmark.scaledIterations {
            blackHole(try envelope.framed())
        }
    }
}
