import ArgumentParser
import Foundation
import Glibc
import PMMBench
import PMMCore

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure the router hop: the same workload routed and through direct FIFOs, in one run.",
        discussion: """
            Builds a temporary mesh in its own directory (no root needed), starts the real router process, and \
            runs --producers producer threads and --consumers consumer threads three ways: producer-to-consumer \
            over plain FIFOs (the physical baseline); through a minimal relay (one poll loop, 256 KiB reads, one \
            write of whole frames per egress per read, no routing: the floor of any hop; in a process of its own, \
            as the router runs, unless --relay thread); and through the router. \
            Reports messages/s, MB/s, latency p50/p99/p99.9/max (HdrHistogram, from the send timestamp in each \
            envelope), the router's (and the relay's) CPU seconds beside the run's wall clock (CPU seconds far \
            below it in an unpaced run: the path waited instead of working), the router's peak RSS and the share \
            of the bytes it moved into consumers' pipes with splice(2) (from its final status; "from spools": \
            at-least-once), and the ratios routed/direct and routed/relay. Every sequence number is checked: \
            lost or duplicated frames are reported. Use --rate for a paced latency run and --runs for medians \
            (the machine is shared: compare ratios, not absolutes).

            --link adds a fourth path: the same workload across two nodes, producers on node a and consumers on \
            node b, one router process per node on loopback, linked over TCP with mutual TLS (certificates made by \
            openssl for the run; --link-plaintext without TLS), and reports the ratio across-nodes/routed and the \
            latency the link adds. On one machine the two nodes share its cores, and the path across does two \
            routers' work: --one-core-per-node plays two hosts of one core each instead (node a's producers and \
            router on CPU 0, node b's router and consumers on CPU 1, and every one-host path on CPU 0), so the \
            ratio compares hosts of the same size.

            --idle-pipes N adds another path: the routed workload in a mesh that also holds N idle pipes (a \
            16-shard data type whose producers never write, and consumer instances whose pipes are open but never \
            read). Before the traffic starts, the idle router's CPU (percent of one core) and memory are sampled, \
            in the plain mesh and in the crowded one; the ratio crowded/routed says what the idle pipes cost the \
            busy path.

            --types K spreads the routed mesh over K data types (producer p writes type p mod K, and each type has \
            its own consumer service of --consumers/K instances): K independent flows, which a router with several \
            workers (--workers, passed to pmm router) shares out by type. --compare-workers N also measures the \
            routed path with N workers in the same run and reports the ratio to the first.

            --hop-core gives the hop a core of its own, as a host that reserves one for pmm router: producers and \
            consumers (and so the direct path) on CPU 0, the router and the relay on CPU 1. Unpinned, the hop's \
            CPU per frame is taken from the producers and consumers it serves; pinned, it shows whether the hop \
            keeps up with them.
            """ + ExitStatus.help("0 every frame arrived exactly once; 1 a frame was lost, or a path could not run"))

    @Option(help: "Producer threads (each its own producing service and ingress pipe).")
    var producers = 1

    @Option(help: "Consumer instances.")
    var consumers = 1

    @Option(help: "Payload bytes per message.")
    var size = 128

    @Option(help: "Messages per producer.")
    var count = 1_000_000

    @Option(help: "Messages per second per producer (0: as fast as possible).")
    var rate: Double = 0

    @Option(help: "Routing policy: shard, weighted, round-robin, least-loaded.")
    var policy: String = "shard"

    @Option(help: "Delivery: at-most-once or at-least-once (spooled to disk).")
    var delivery: String = "at-most-once"

    @Option(
        help: ArgumentHelp(
            "How producers write: batch (many frames per write(2)), frame (one write(2) per frame), locked-frame (one per frame under the pipe's flock, as PipeMesh's Producer and pmm send do).",
            valueName: "mode"))
    var writes: String = "batch"

    @Flag(help: "Also measure the routed path across two nodes (two routers linked over TCP with mutual TLS).")
    var link = false

    @Flag(help: "With --link: plaintext links instead of mutual TLS.")
    var linkPlaintext = false

    @Flag(help: "Make each node a host of one core: one-host paths on CPU 0; across nodes, node a on CPU 0 and node b on CPU 1.")
    var oneCorePerNode = false

    @Flag(
        help:
            "Give the hop a core of its own, as a host that reserves one for pmm router: producers and consumers (and so the direct path) on CPU 0, the router and the relay on CPU 1.")
    var hopCore = false

    @Option(help: "Also measure the routed path in a mesh holding this many idle pipes besides (0: not).")
    var idlePipes = 0

    @Option(help: "Data types of the routed mesh (producers and consumers spread evenly over them).")
    var types = 1

    @Option(help: ArgumentHelp("pmm router --workers for the routed path (default: the router's own).", valueName: "n"))
    var workers: Int?

    @Option(
        help: ArgumentHelp(
            "Where the relay runs: process (its own, like the router: every hop between producer, relay and consumer crosses address spaces) or thread (a thread of the bench, whose wake-ups stay within one address space).",
            valueName: "where"))
    var relay: RelayPlacement = .process

    enum RelayPlacement: String, ExpressibleByArgument, CaseIterable {
        case process, thread
    }

    @Option(help: ArgumentHelp("Also measure the routed path with this many router workers, in the same run.", valueName: "n"))
    var compareWorkers: Int?

    @Option(help: "Repeat the pair of runs this many times and report medians.")
    var runs = 1

    @Option(help: ArgumentHelp("Start the routers from this pmm binary instead of this one (compare two builds' routers under the same harness).", valueName: "path"))
    var routerBinary: String?

    @Option(name: .shortAndLong, help: "Output format: text or json.")
    var output: OutputFormat = .text

    func validate() throws {
        guard producers >= 1 && producers <= 64, consumers >= 1 && consumers <= 64 else { throw ValidationError("--producers and --consumers: 1 to 64") }
        guard size >= 0 && size <= 60_000 else { throw ValidationError("--size: 0 to 60000 bytes") }
        guard idlePipes >= 0 && idlePipes <= 100_000 else { throw ValidationError("--idle-pipes: 0 to 100000") }
        guard types >= 1, producers % types == 0, consumers % types == 0 else {
            throw ValidationError("--types must divide --producers and --consumers (each type gets the same share)")
        }
        for (name, value) in [("--workers", workers), ("--compare-workers", compareWorkers)] {
            if let value, value < 1 || value > 256 { throw ValidationError("\(name): 1 to 256") }
        }
        if oneCorePerNode || hopCore, ProcessInfo.processInfo.activeProcessorCount < 2 {
            throw ValidationError("--\(hopCore ? "hop-core" : "one-core-per-node") needs two CPUs (this machine has \(ProcessInfo.processInfo.activeProcessorCount))")
        }
        if hopCore, oneCorePerNode || link {
            throw ValidationError("--hop-core: not with --one-core-per-node or --link (they place the hops themselves)")
        }
        if let routerBinary, access(routerBinary, X_OK) != 0 { throw ValidationError("--router-binary: \(routerBinary) is not an executable") }
        guard count >= 1, runs >= 1, rate >= 0 else { throw ValidationError("--count and --runs must be positive, --rate not negative") }
        guard RoutingPolicy(rawValue: policy) != nil else { throw ValidationError("unknown --policy \(policy)") }
        guard Delivery(rawValue: delivery) != nil else { throw ValidationError("unknown --delivery \(delivery)") }
        guard WriteMode(rawValue: writes) != nil else {
            throw ValidationError("unknown --writes \(writes) (\(WriteMode.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
    }

    struct Report: Encodable {
        var machine: String
        var workload: String
        var runs: [[BenchResult]]
        var median: [String: Double]
    }

    func run() throws {
        var config = BenchConfig()
        config.producers = producers
        config.consumers = consumers
        config.size = size
        config.count = count
        config.rate = rate
        config.policy = RoutingPolicy(rawValue: policy)!
        config.delivery = Delivery(rawValue: delivery)!
        config.writes = WriteMode(rawValue: writes)!
        config.measureIdle = idlePipes > 0
        config.types = types
        config.workers = workers
        config.oneCorePerNode = oneCorePerNode
        config.hopCore = hopCore
        let this = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        let binary = routerBinary ?? this
        // The relay runs from this binary, whichever router is measured (an older --router-binary may lack it).
        config.relayExecutable = relay == .process ? this : nil
        var template = Array((NSTemporaryDirectory() as NSString).appendingPathComponent("pmm-bench-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { throw ExitCode(1) }
        let workspace = String(cString: made)
        defer { try? FileManager.default.removeItem(atPath: workspace) }
        let interactive = isatty(STDERR_FILENO) == 1
        let bench = Bench(config: config, pmm: binary, workspace: workspace) { if interactive { printError($0) } }
        let workload =
            "\(producers) producer(s) -> \(consumers) consumer(s)\(types > 1 ? " over \(types) data types" : ""), \(size) B payloads, \(count) per producer, \(rate > 0 ? "paced at \(Int(rate))/s per producer" : "unpaced"), policy \(policy), \(delivery), \(writes) writes, relay in a \(relay.rawValue)\(oneCorePerNode ? ", one core per node" : "")\(hopCore ? ", the hop on a core of its own" : "")"
        if output == .text { print("pmm bench: \(workload)") }
        var all: [[BenchResult]] = []
        for run in 1...runs {
            do {
                let direct = try bench.direct()
                let relay = try bench.relay()
                let routed = try bench.routed()
                let linked = link ? try bench.linked(tls: !linkPlaintext) : nil
                let crowded = idlePipes > 0 ? try bench.routed(idlePipes: idlePipes) : nil
                let compared = try compareWorkers.map { try bench.routed(workers: $0) }
                let extra = [linked, crowded, compared].compactMap { $0 }
                all.append([direct, routed, relay] + extra)
                if output == .text {
                    print("run \(run):")
                    for result in [direct, relay, routed] + extra { print("  " + line(result)) }
                    if let compared {
                        print(String(format: "  ratio %@/routed: %.2f× throughput, p50 %+.0f µs", compared.path as NSString,
                            compared.messagesPerSecond / routed.messagesPerSecond, compared.p50Microseconds - routed.p50Microseconds))
                    }
                    if let crowded {
                        print(String(format: "  ratio crowded/routed: %.2f× throughput, p50 %+.0f µs; idle router %.2f%% → %.2f%% of a core, %.1f → %.1f MiB",
                            crowded.messagesPerSecond / routed.messagesPerSecond, crowded.p50Microseconds - routed.p50Microseconds,
                            routed.routerIdleCPUPercent ?? 0, crowded.routerIdleCPUPercent ?? 0, routed.routerIdleRSSMiB ?? 0, crowded.routerIdleRSSMiB ?? 0))
                    }
                    if let linked {
                        print(String(format: "  ratio across nodes/routed: %.2f× throughput, p50 %+.0f µs, p99 %+.0f µs", linked.messagesPerSecond / routed.messagesPerSecond, linked.p50Microseconds - routed.p50Microseconds, linked.p99Microseconds - routed.p99Microseconds))
                    }
                    print(String(format: "  ratio routed/direct: %.2f× throughput, p50 +%.0f µs, p99 +%.0f µs", routed.messagesPerSecond / direct.messagesPerSecond, routed.p50Microseconds - direct.p50Microseconds, routed.p99Microseconds - direct.p99Microseconds))
                    print(String(format: "  ratio routed/relay:  %.2f× throughput, p50 %+.0f µs, p99 %+.0f µs", routed.messagesPerSecond / relay.messagesPerSecond, routed.p50Microseconds - relay.p50Microseconds, routed.p99Microseconds - relay.p99Microseconds))
                }
            } catch {
                printError("error: \(error)")
                throw ExitCode(1)
            }
        }
        func median(_ values: [Double]) -> Double {
            let sorted = values.sorted()
            return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        }
        var medians: [String: Double] = [
            "directMessagesPerSecond": median(all.map { $0[0].messagesPerSecond }),
            "routedMessagesPerSecond": median(all.map { $0[1].messagesPerSecond }),
            "ratio": median(all.map { $0[1].messagesPerSecond / $0[0].messagesPerSecond }),
            "relayMessagesPerSecond": median(all.map { $0[2].messagesPerSecond }),
            "ratioToRelay": median(all.map { $0[1].messagesPerSecond / $0[2].messagesPerSecond }),
            "relayP50Microseconds": median(all.map { $0[2].p50Microseconds }),
            "relayCPUSeconds": median(all.map { $0[2].routerCPUSeconds ?? 0 }),
            "directP50Microseconds": median(all.map { $0[0].p50Microseconds }),
            "routedP50Microseconds": median(all.map { $0[1].p50Microseconds }),
            "directP99Microseconds": median(all.map { $0[0].p99Microseconds }),
            "routedP99Microseconds": median(all.map { $0[1].p99Microseconds }),
            "routerCPUSeconds": median(all.map { $0[1].routerCPUSeconds ?? 0 }),
            "routerPeakRSSMiB": median(all.map { $0[1].routerPeakRSSMiB ?? 0 }),
        ]
        if link {
            medians["linkedMessagesPerSecond"] = median(all.map { $0[3].messagesPerSecond })
            medians["ratioLinkedToRouted"] = median(all.map { $0[3].messagesPerSecond / $0[1].messagesPerSecond })
            medians["linkedP50Microseconds"] = median(all.map { $0[3].p50Microseconds })
            medians["linkedP99Microseconds"] = median(all.map { $0[3].p99Microseconds })
            medians["linkAddedP50Microseconds"] = median(all.map { $0[3].p50Microseconds - $0[1].p50Microseconds })
            medians["linkedRouterCPUSeconds"] = median(all.map { $0[3].routerCPUSeconds ?? 0 })
        }
        if let compareWorkers {
            let c = 3 + (link ? 1 : 0) + (idlePipes > 0 ? 1 : 0)
            medians["comparedWorkers"] = Double(compareWorkers)
            medians["comparedMessagesPerSecond"] = median(all.map { $0[c].messagesPerSecond })
            medians["ratioComparedToRouted"] = median(all.map { $0[c].messagesPerSecond / $0[1].messagesPerSecond })
            medians["comparedRouterCPUSeconds"] = median(all.map { $0[c].routerCPUSeconds ?? 0 })
        }
        if idlePipes > 0 {
            let c = link ? 4 : 3
            medians["crowdedMessagesPerSecond"] = median(all.map { $0[c].messagesPerSecond })
            medians["ratioCrowdedToRouted"] = median(all.map { $0[c].messagesPerSecond / $0[1].messagesPerSecond })
            medians["crowdedP50Microseconds"] = median(all.map { $0[c].p50Microseconds })
            medians["routedIdleCPUPercent"] = median(all.map { $0[1].routerIdleCPUPercent ?? 0 })
            medians["crowdedIdleCPUPercent"] = median(all.map { $0[c].routerIdleCPUPercent ?? 0 })
            medians["routedIdleRSSMiB"] = median(all.map { $0[1].routerIdleRSSMiB ?? 0 })
            medians["crowdedIdleRSSMiB"] = median(all.map { $0[c].routerIdleRSSMiB ?? 0 })
            medians["crowdedPipes"] = Double(all.first?[c].pipes ?? 0)
        }
        let lost = all.flatMap { $0 }.reduce(0) { $0 + $1.lost }
        if output == .json {
            try printJSON(Report(machine: machineLine(), workload: workload, runs: all, median: medians))
        } else {
            if runs > 1 {
                print(String(format: "median of %d: direct %.0f msg/s, routed %.0f msg/s, ratio %.2f×; p50 %.0f → %.0f µs, p99 %.0f → %.0f µs", runs,
                    medians["directMessagesPerSecond"]!, medians["routedMessagesPerSecond"]!, medians["ratio"]!, medians["directP50Microseconds"]!,
                    medians["routedP50Microseconds"]!, medians["directP99Microseconds"]!, medians["routedP99Microseconds"]!))
                print(String(format: "median of %d: relay %.0f msg/s (p50 %.0f µs), routed/relay %.2f×", runs,
                    medians["relayMessagesPerSecond"]!, medians["relayP50Microseconds"]!, medians["ratioToRelay"]!))
                if let compareWorkers {
                    print(String(format: "median of %d: routed with --workers %d %.0f msg/s, ratio to routed %.2f×; router CPU %.2f s → %.2f s", runs,
                        compareWorkers, medians["comparedMessagesPerSecond"]!, medians["ratioComparedToRouted"]!, medians["routerCPUSeconds"]!,
                        medians["comparedRouterCPUSeconds"]!))
                }
                if link {
                    print(String(format: "median of %d: across nodes %.0f msg/s, across/routed %.2f×; p50 %.0f µs (+%.0f µs over routed), p99 %.0f µs", runs,
                        medians["linkedMessagesPerSecond"]!, medians["ratioLinkedToRouted"]!, medians["linkedP50Microseconds"]!,
                        medians["linkAddedP50Microseconds"]!, medians["linkedP99Microseconds"]!))
                }
            }
            print(lost == 0 ? "nothing lost (every sequence number checked)." : "LOST \(lost) frames.")
        }
        if lost > 0 { throw ExitCode(1) }
    }

    func line(_ r: BenchResult) -> String {
        var text = String(
            format: "%-28@ %9.0f msg/s %7.1f MB/s  p50 %6.0f µs  p99 %7.0f µs  p99.9 %7.0f µs  max %7.0f µs  lost %d dup %d",
            r.path as NSString, r.messagesPerSecond, r.megabytesPerSecond, r.p50Microseconds, r.p99Microseconds, r.p999Microseconds, r.maxMicroseconds, r.lost,
            r.duplicated)
        if let cpu = r.routerCPUSeconds { text += String(format: "  router %.2f CPU s (run %.2f s)", cpu, r.seconds) }
        if let rss = r.routerPeakRSSMiB { text += String(format: ", %.1f MiB peak RSS", rss) }
        if let spliced = r.routerSplicedBytes, r.megabytesPerSecond > 0 {
            // Of the bytes delivered, the share that went into consumers' pipes by splice(2), without a copy.
            let delivered = r.megabytesPerSecond * r.seconds * 1e6
            text += String(format: ", spliced %.0f%%", min(100, Double(spliced) / delivered * 100))
            if let spool = r.routerSplicedFromSpoolBytes, spool > 0 { text += String(format: " (%.0f%% from spools)", min(100, Double(spool) / delivered * 100)) }
        }
        return text
    }

    func machineLine() -> String {
        let cpu = ((try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? "").split(separator: "\n").first { $0.hasPrefix("model name") }
            .map { String($0.split(separator: ":", maxSplits: 1)[1]).trimmingCharacters(in: .whitespaces) } ?? "?"
        return "\(ProcessInfo.processInfo.activeProcessorCount) cores, \(cpu), \(ProcessInfo.processInfo.physicalMemory >> 30) GiB"
    }
}
