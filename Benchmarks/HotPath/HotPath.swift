// The router's steps per frame, measured alone: framing, the routing-field scan, the routing decision,
// encoding; and the whole path through the router core, from the bytes read(2) returned to the bytes handed to
// write(2) and acknowledged. Wall time and allocations per frame (`.mallocCountTotal` / the scaled iteration
// count). The whole-path benchmarks have a tolerance of zero allocations:
// `swift package benchmark thresholds check` fails on a single malloc per 1000 frames.
import Benchmark
import Foundation
import PMMCore
import PMMRouterCore
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

/// A router core serving `spec` with every pipe open, as the shell leaves it once the consumers are there.
/// `spooled`: at-least-once pipes get an empty spool ledger (without one they are served at most once).
func servingCore(_ spec: MeshSpec, spooled: Bool = false) -> RouterCore {
    var core = RouterCore(
        layout: RouterLayout(spec: spec, revision: 1), now: 1, seed: 7, openSpool: { spooled ? SpoolLedger(pipe: $0, size: 0, mark: 0) : nil })
    for action in core.takeActions() {
        switch action {
        case .openIngress(let id, _, _): core.ingressOpened(id)
        case .openEgress(let id, _, _): core.egressOpened(id, now: 1)
        default: break
        }
    }
    _ = core.takeActions()
    return core
}

/// One read's worth of `stream` through `core`: into ingress 0's buffer, routed, written from every egress queue
/// in one piece, and read by the consumers (FIONREAD 0), as the shell's pass does it. `lagging`: each consumer
/// has read all but the last write when asked (as under load), so frames are acknowledged a pass late.
func pass(_ core: inout RouterCore, now: UInt64, lagging: Bool = false) {
    // An at-least-once pipe's bytes go to its spool first, and are read back from there.
    if core.spool(of: 0) != nil { core.spoolAppended(0, count: stream.count) }
    let n = core.withReadSpace(0) { raw in
        stream.withUnsafeBytes { raw.copyMemory(from: $0) }
        return stream.count
    }
    core.ingressRead(0, count: n, now: now)
    for slot in core.egress.indices where core.hasUnwritten(slot) {
        let written = core.withUnwritten(slot, room: 1 << 30, pipeEmpty: true) { $0.count }
        core.wrote(slot, count: written)
        core.egressUnread(slot, unread: lagging ? written : 0, now: now)
    }
    core.settleActiveEgress()
}

/// Times `pass` over as many reads as the benchmark has frames to measure, after one pass that grows the
/// buffers (as in a router that has been running); returns the core for the caller's check.
func measurePasses(_ benchmark: Benchmark, _ core: RouterCore, lagging: Bool = false) -> RouterCore {
    var core = core
    // Enough passes to grow every buffer, and a lagging spool's ledger past its compaction.
    for now in 2..<(lagging ? 12 : 3) { pass(&core, now: UInt64(now), lagging: lagging) }
    var now: UInt64 = 12
    benchmark.startMeasurement()
    for _ in 0..<(benchmark.scaledIterations.count / frameCount) {
        pass(&core, now: now, lagging: lagging)
        now += 1
    }
    benchmark.stopMeasurement()
    return core
}

let benchmarks: @Sendable () -> Void = {
    let metrics: [BenchmarkMetric] = [.wallClock, .mallocCountTotal, .throughput]
    let configuration = Benchmark.Configuration(metrics: metrics, scalingFactor: .kilo, maxDuration: .seconds(2))
    // Zero allocations on the whole path, whatever the run: any malloc fails `benchmark thresholds check`.
    let allocationFree = Benchmark.Configuration(
        metrics: metrics, scalingFactor: .kilo, maxDuration: .seconds(2),
        thresholds: [.mallocCountTotal: BenchmarkThresholds(absolute: [.p0: 0, .p25: 0, .p50: 0, .p75: 0, .p90: 0, .p99: 0, .p100: 0])])

    // The whole path through the core, read(2)'s bytes to write(2)'s and the acknowledgement, per frame
    // (`scaledIterations` counts frames: one pass routes 1000 of them): one producer to one consumer (at most
    // once, and at least once through a spool), and one producer to three consumers by key plus a canary by
    // weight.
    Benchmark("core-path-one-consumer", configuration: allocationFree) { benchmark in
        let oneToOne = MeshSpec(
            name: "bench", root: "/run/pmm/bench", dataTypes: [DataType(name: "metrics", shards: 1)],
            services: [
                Service(name: "api", uid: 1, produces: [Binding(dataType: "metrics")]),
                Service(name: "collector", uid: 2, consumes: [Binding(dataType: "metrics")]),
            ])
        let core = measurePasses(benchmark, servingCore(oneToOne))
        precondition(core.egress.reduce(0) { $0 + $1.frames } > 0, "nothing was routed")
    }

    // The same through an at-least-once spool, read a pass late: each frame tracked in the spool's ledger until
    // it is read, and the ledger advanced past it.
    Benchmark("core-path-at-least-once", configuration: allocationFree) { benchmark in
        let oneToOne = MeshSpec(
            name: "bench", root: "/run/pmm/bench", dataTypes: [DataType(name: "metrics", shards: 1, qos: QoS(delivery: .atLeastOnce))],
            services: [
                Service(name: "api", uid: 1, produces: [Binding(dataType: "metrics")]),
                Service(name: "collector", uid: 2, consumes: [Binding(dataType: "metrics")]),
            ])
        let core = measurePasses(benchmark, servingCore(oneToOne, spooled: true), lagging: true)
        precondition(core.egress.reduce(0) { $0 + $1.frames } > 0, "nothing was routed")
        // A pass late, up to two passes' frames are not yet read whole.
        precondition(
            core.spools.compactMap { $0 }.count == 1 && core.spoolLive > 0 && core.spoolLive <= 2 * stream.count,
            "the frames did not go through a spool, or its ledger did not advance")
    }

    Benchmark("core-path-three-consumers-and-a-canary", configuration: allocationFree) { benchmark in
        let core = measurePasses(benchmark, servingCore(spec))
        precondition(core.egress.filter { $0.frames > 0 }.count == 4, "not every instance was routed to")
    }

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
