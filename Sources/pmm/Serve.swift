import ArgumentParser
import Foundation
import Glibc
import Logging
import PMMControl
import PMMCore
import PMMReconciler
import PMMSystem
import PipeMesh

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the control plane: the API on <state-dir>/pmm.sock, and self-healing of drift.",
        discussion: """
            Applies -f FILE at start (idempotent), then serves RegisterService, DeregisterService, GetPipeName and \
            SetRoutingRule to local processes, identified by SO_PEERCRED (a service's uid may only speak for \
            itself; routing rules need root or the mesh's adminUid). Every --interval seconds it repairs the \
            pipes against the applied revision (deleted, re-moded or replaced by hand); leases that end (process \
            gone, ttl passed, three heartbeats missed) are removed within a quarter second, each with an event. SIGHUP re-reads FILE and applies it (an invalid spec is refused and \
            the current revision keeps serving); SIGTERM stops. A running router is sent SIGHUP whenever it must \
            load something new (once per pass of the loop, however many changes the pass made; several SIGHUPs \
            within one pass are one reload).

            The socket is open to every local user (0666), so no client can take the server down: each uid but \
            root may send --rate-limit requests/s (bursts of --rate-burst), and is answered "rate limited, retry \
            in …" beyond that while other uids are served; a connection that leaves more than \
            --reply-buffer-limit bytes of answers unread is closed; a uid other than root may hold \
            --max-connections-per-uid connections at once; events that clients cause (refusals, rate \
            limits, malformed requests, closed connections) are logged one by one at most once per 10 s per kind \
            and uid, the rest summed up in one event; the registry keeps the newest 10,000 events.
            """ + ExitStatus.help("0 stopped by SIGTERM or SIGINT; 1 cannot start (an invalid spec, the socket in use, the apply refused)"))

    @OptionGroup var spec: SpecOptions
    @OptionGroup var state: StateOptions
    @OptionGroup var node: NodeOptions

    @Option(help: ArgumentHelp("Seconds between self-heal rounds.", valueName: "seconds"))
    var interval: Double = 5

    @Option(
        help: ArgumentHelp(
            "Control requests per second each uid may send (one token bucket per uid, shared by its connections; root is exempt); 0: no limit.",
            valueName: "requests/s"))
    var rateLimit: Double = ControlOptions().rateLimit

    @Option(help: ArgumentHelp("Requests a uid may send at once before --rate-limit applies.", valueName: "requests"))
    var rateBurst: Double = ControlOptions().rateBurst

    @Option(
        help: ArgumentHelp(
            "Bytes of answers a connection may leave unread; a client that sends requests and does not read the answers is disconnected beyond this.",
            valueName: "bytes"))
    var replyBufferLimit: Int = ControlOptions().maximumUnreadReplies

    @Option(
        help: ArgumentHelp(
            "Connections one uid may hold at once (root is exempt); more are closed at accept, so one user cannot take every one of the 1024.",
            valueName: "count"))
    var maxConnectionsPerUid: Int = ControlOptions().maximumClientsPerUID

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func validate() throws {
        guard interval >= 0.1 else { throw ValidationError("--interval must be at least 0.1 seconds") }
        guard rateLimit >= 0, rateLimit.isFinite else { throw ValidationError("--rate-limit must be 0 (no limit) or more requests/s") }
        guard rateBurst >= 1, rateBurst.isFinite else { throw ValidationError("--rate-burst must be at least 1 request") }
        guard maxConnectionsPerUid >= 1 else { throw ValidationError("--max-connections-per-uid must be at least 1") }
        guard replyBufferLimit >= 4096 else {
            throw ValidationError("--reply-buffer-limit must be at least 4096 bytes (one answer must fit)")
        }
    }

    func run() throws {
        let logger = makeLogger(label: "pmm.serve", level: logLevel)
        let loaded = try readSpec(spec, failure: 1, node: node.name)
        let directory = state.directory
        do {
            let reconciler = try Reconciler(state: directory)
            reconciler.node = node.name
            let report = try reconciler.apply(loaded, prune: false, dryRun: false, source: "serve")
            printDiagnostics(loaded, color: useColor)
            print(ApplyOutput.text(report, renderer: Renderer(color: useColor)))
            fflush(nil)
            var options = ControlOptions()
            options.interval = interval
            options.rateLimit = rateLimit
            options.rateBurst = rateBurst
            options.maximumUnreadReplies = replyBufferLimit
            options.maximumClientsPerUID = maxConnectionsPerUid
            let server: ControlServer
            do {
                server = try ControlServer(
                    reconciler: reconciler, specPath: loaded.file.absolutePath, rootOverride: spec.rootOverride, options: options, logger: logger)
            } catch { throw PMMError.system(error) }
            if report.routerNeedsReload { signalRouter(directory) }
            let handed = Handed(value: server)
            _ = try runDaemon(name: "pmm serve", logger: logger) { signals in
                handed.value.run(signals: signals) { signalRouter(directory) }
            }
        } catch let error as PMMError {
            throw report(error, exitCode: 1, color: useColor)
        }
    }
}

/// Tells a running router to load the newest revision and runtime rules: only a process proven to be the router
/// (the holder of router.lock), never whatever pid a stale router.pid names.
func signalRouter(_ state: StateDirectory) {
    state.signalRouter(SIGHUP)
}

/// Runs a control-API call, printing a refusal or an unreachable server as an error (exit 1).
func withControl<T>(_ state: StateOptions, _ body: (PipeMesh) throws(PipeMeshError) -> T) throws -> T {
    do {
        return try body(PipeMesh(stateDirectory: state.directory.path))
    } catch {
        printError("error: \(error)")
        throw ExitCode(1)
    }
}

struct Register: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "RegisterService through pmm serve: take a lease on an instance and print its pipes.",
        discussion: """
            Only the uid the spec gives the service may register it (or root). A registration is a lease. With \
            --pid P it lives while process P lives (P must run as your uid; root may name any process). With \
            --ttl D (60, 90s, 5m, 1h) it lives with no process for D, so it outlives this command; registering \
            the same instance again as the same uid renews it. With neither, it lives with this command's own \
            process and ends when the command exits.

            pmm serve ends a lease when its process dies, when its ttl passes without a renewal, or when \
            three heartbeats promised by a client (PipeMesh's startHeartbeats) are missed; each end is an event \
            in the registry ("lease-ended", "lease-expired"). A consumer service with `registration: required` \
            receives frames only on instances that hold a lease: registering one puts it into routing at once, \
            and `pmm deregister` (by the service's uid, whoever registered) or the end of its lease takes it out \
            at once, its unread frames going to the other instances. --capacity gives the instance's expected \
            volume, which the `least-loaded` policy weighs.
            """ + ExitStatus.help("0 registered (the pipes are printed); 1 refused (the reason is printed) or pmm serve cannot be reached"))

    @OptionGroup var state: StateOptions

    @Option(help: "The service to register.")
    var service: String

    @Option(help: "Only this data type's pipes.")
    var dataType: String?

    @Option(help: "Narrow the service's rate to this many messages/s.")
    var maxRate: UInt64 = 0

    @Option(help: "The instance wanted (default: the first free replica).")
    var instance: String?

    @Option(help: ArgumentHelp("The lease lives while this process lives (it must run as your uid; root may name any).", valueName: "pid"))
    var pid: Int32?

    @Option(help: ArgumentHelp("The lease lasts this long without a renewal: seconds, or 90s, 5m, 1h.", valueName: "duration"))
    var ttl: String?

    @Option(help: ArgumentHelp("A consumer's expected volume in messages/s, which least-loaded weighs.", valueName: "messages/s"))
    var capacity: UInt64 = 0

    @Option(name: .shortAndLong, help: "Output format: text or json.")
    var output: OutputFormat = .text

    func validate() throws {
        if pid != nil && ttl != nil { throw ValidationError("give --pid or --ttl, not both") }
        if let pid, pid <= 0 { throw ValidationError("--pid must be a process id (a positive number), found \(pid)") }
        if let ttl, Self.seconds(ttl) == nil {
            throw ValidationError("--ttl '\(ttl)' is not a duration: give seconds (60) or a number with s, m or h (90s, 5m, 1h), at least 0.1s")
        }
    }

    /// `60s`, `0.5s`.
    static func describe(_ seconds: Double) -> String {
        seconds == seconds.rounded() ? "\(Int(seconds))s" : "\(seconds)s"
    }

    /// `60` and `60s` -> 60, `5m` -> 300, `1h` -> 3600; nil for anything else or less than 0.1 s.
    static func seconds(_ text: String) -> Double? {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600]
        var number = Substring(text)
        var unit = 1.0
        if let last = text.last, let factor = units[last] {
            number = text.dropLast()
            unit = factor
        }
        guard let value = Double(number), value.isFinite, value * unit >= 0.1 else { return nil }
        return value * unit
    }

    func run() throws {
        let registration = try withControl(state) { mesh throws(PipeMeshError) in
            try mesh.register(
                service: service, dataType: dataType, maxRate: maxRate, instance: instance, pid: pid, ttl: ttl.flatMap(Self.seconds),
                capacity: capacity)
        }
        if output == .json {
            struct Row: Encodable {
                var service: String
                var instance: String
                var ingress: [String: [String]]
                var egress: [String: String]
                var versions: [String: UInt32]
                var leasePid: Int32
                var ttlSeconds: Double
            }
            return try printJSON(
                Row(service: registration.service, instance: registration.instance, ingress: registration.ingress, egress: registration.egress,
                    versions: registration.versions, leasePid: registration.leasePID, ttlSeconds: registration.ttl))
        }
        let lease: String
        switch (registration.leasePID, registration.ttl) {
        case (getpid(), _): lease = "it lives with this command (pid \(getpid())) and ends when it exits; use --ttl or --pid to keep it"
        case (0, let ttl): lease = "it lasts \(Self.describe(ttl)); register it again to renew it"
        case (let pid, 0): lease = "it lives while process \(pid) lives"
        case (let pid, let ttl): lease = "it lives while process \(pid) lives, for \(Self.describe(ttl)) after each renewal"
        }
        print("Registered \(registration.instance): \(lease).")
        print("  End it with: pmm deregister --service \(registration.service) --instance \(registration.instance)")
        for (dataType, paths) in registration.ingress.sorted(by: { $0.key < $1.key }) {
            print("  writes \(dataType): \(paths.joined(separator: " "))")
        }
        for (dataType, path) in registration.egress.sorted(by: { $0.key < $1.key }) {
            print("  reads \(dataType): \(path)")
        }
    }
}

struct Deregister: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "DeregisterService through pmm serve: end an instance's lease; it leaves routing at once.",
        discussion: """
            The service's uid (or root) may end the lease of any of its instances, whoever registered it. Without \
            --instance: the leases the calling process holds, or else the service's only registered instance \
            (several: name one). Frames the instance had not read go to the service's other instances.
            """ + ExitStatus.help("0 the lease ended; 1 refused (the reason is printed) or pmm serve cannot be reached"))

    @OptionGroup var state: StateOptions

    @Option(help: "The service.")
    var service: String

    @Option(help: "The instance (default: the caller's own, else the service's only registered one).")
    var instance: String?

    func run() throws {
        try withControl(state) { mesh throws(PipeMeshError) in try mesh.deregister(service: service, instance: instance) }
        print("Deregistered \(instance ?? service).")
    }
}

struct PipeNameCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pipe-name",
        abstract: "GetPipeName through pmm serve: print the ingress pipe for a data type and shard key.",
        discussion: "The service is the caller's (by uid); root may name one with --service. Prints the path alone." + ExitStatus.help("0 the path was printed; 1 refused (the reason is printed) or pmm serve cannot be reached"))

    @OptionGroup var state: StateOptions

    @Option(help: "The data type.")
    var dataType: String

    @Option(help: "The shard key.")
    var shardKey: String = ""

    @Option(help: "The producing service (root only; default: the caller's).")
    var service: String?

    func run() throws {
        let answer = try withControl(state) { mesh throws(PipeMeshError) in
            try mesh.pipeName(dataType: dataType, shardKey: Array(shardKey.utf8), service: service)
        }
        print(answer.path)
    }
}

struct RouteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "route", abstract: "Runtime routing rules.", subcommands: [Set.self])

    struct Set: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "SetRoutingRule through pmm serve: change a target's weight at run time (root or adminUid).",
            discussion: """
                Takes effect in the router at once. `pmm diff` shows it as drift from the spec until the spec says \
                the same; the next `pmm apply` of the spec clears it.
                """ + ExitStatus.help("0 the rule is recorded and the router uses it; 1 refused (the reason is printed) or pmm serve cannot be reached"))

        @OptionGroup var state: StateOptions

        @Option(help: "The data type whose route changes.")
        var dataType: String

        @Option(help: "The target service.")
        var service: String

        @Option(help: "Its new weight.")
        var weight: UInt32

        func run() throws {
            try withControl(state) { mesh throws(PipeMeshError) in
                try mesh.setRoutingRule(dataType: dataType, service: service, weight: weight)
            }
            print("Routing rule set: \(dataType) -> \(service) weight \(weight) (until the next pmm apply).")
        }
    }
}
