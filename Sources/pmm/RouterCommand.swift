import ArgumentParser
import Foundation
import Glibc
import Logging
import PMMCore
import PMMReconciler
import PMMRegistry
import PMMRouter
import PMMSystem

struct RouterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "router",
        abstract: "Run the data plane: route frames from ingress pipes to consumer instances, by the applied revision.",
        discussion: """
            Serves the newest revision recorded by `pmm apply` in the state directory. SIGHUP loads the newest \
            revision without losing or doubling a frame (pipes in both stay open, new ones open, removed ones are \
            drained first); SIGTERM or SIGINT stop reading, deliver what is queued (up to --drain-timeout) and \
            exit 0. Writes its pid to <state-dir>/router.pid and its counters to <state-dir>/router.json. \
            One router per state directory.

            In a mesh with nodes, the router serves one node (--node, else PMM_NODE, else the node the revision \
            was applied on): it listens on that node's address for the other routers, keeps a link to each, \
            and sends frames for instances placed elsewhere over those links (mutual TLS with links.tls).
            """ + ExitStatus.help("0 stopped by SIGTERM or SIGINT with every queued frame delivered; 1 cannot start (nothing applied, another router on this state directory, a node it cannot listen as); 3 stopped with frames still queued at the drain deadline (at-least-once frames stay in the spool for the next router)"))

    @OptionGroup var state: StateOptions
    @OptionGroup var router: RouterFlags
    @OptionGroup var node: NodeOptions

    func run() throws {
        let stateDirectory = state.directory
        let logger = makeLogger(label: "pmm.router", level: router.logLevel)
        do {
            let service = try RouterService(state: stateDirectory, flags: router, node: node.name, logger: logger)
            let exit = try service.runAsDaemon(logger: logger)
            if case .stopped(let undelivered) = exit, undelivered > 0 { throw ExitCode(3) }
        } catch let error as PMMError {
            throw report(error, exitCode: 1, color: useColor)
        }
    }
}

/// Router options shared by `pmm router` and `pmm up`.
struct RouterFlags: ParsableArguments {
    @Option(help: ArgumentHelp("The largest frame accepted, in bytes; a larger one resets its ingress pipe.", valueName: "bytes"))
    var maxFrame: Int = 1 << 20

    @Option(
        help: ArgumentHelp(
            "Seconds SIGTERM waits for queued frames to reach consumers; also how long a removed pipe may keep half a frame before it is dead-lettered.",
            valueName: "seconds"))
    var drainTimeout: Double = 5

    @Option(help: ArgumentHelp("Seconds a consumer may read nothing while its pipe holds data before it counts as stalled.", valueName: "seconds"))
    var stallTimeout: Double = 5

    @Option(
        help: ArgumentHelp(
            "Bytes the router may hold in memory for frames routed and not yet read by their consumer (all pipes together); at the limit producers are held back.",
            valueName: "bytes"))
    var memoryLimit: Int = 256 << 20

    @Option(
        help: ArgumentHelp(
            "Undelivered bytes the at-least-once spools may hold on disk (all pipes together); at the limit at-least-once producers are held back.",
            valueName: "bytes"))
    var spoolLimit: Int64 = 1 << 30

    @Option(help: ArgumentHelp("Serve Prometheus metrics over HTTP on this address, e.g. 127.0.0.1:9464.", valueName: "host:port"))
    var metricsListen: String?

    @Option(
        help: ArgumentHelp(
            "Router threads. Each routes a share of the data types (all of a type's pipes on one thread, so a type uses one core); default: one per core, no more than the types with producers. A multi-node mesh uses one.",
            valueName: "n"))
    var workers: Int?

    @Option(
        help: ArgumentHelp(
            "When frames move into a consumer's pipe with splice(2), without a copy through the router: from a busy at-most-once producer's pipe, or from an at-least-once type's spool file. auto (runs of 64 KiB or more; busy pipes, to consumers whose pipes hold 256 KiB or more), always (every read, runs of any length; for tests), never (read and write only).",
            valueName: "mode"))
    var splice: String = SpliceMode.auto.rawValue

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func validate() throws {
        guard maxFrame >= 64 && maxFrame <= 64 << 20 else { throw ValidationError("--max-frame must be between 64 and 67108864") }
        guard drainTimeout >= 0 else { throw ValidationError("--drain-timeout must not be negative") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level \(logLevel)") }
        guard stallTimeout > 0 else { throw ValidationError("--stall-timeout must be positive") }
        guard memoryLimit >= 2 * maxFrame else { throw ValidationError("--memory-limit must be at least twice --max-frame") }
        guard spoolLimit >= Int64(2 * maxFrame) else { throw ValidationError("--spool-limit must be at least twice --max-frame") }
        guard SpliceMode(rawValue: splice) != nil else { throw ValidationError("--splice takes auto, always or never") }
        if let workers, workers < 1 || workers > 256 { throw ValidationError("--workers must be between 1 and 256") }
        if let metricsListen, metricsAddress(metricsListen) == nil {
            throw ValidationError("--metrics-listen takes host:port with an IPv4 host, e.g. 127.0.0.1:9464")
        }
    }

    func metricsAddress(_ text: String) -> (host: String, port: UInt16)? {
        let parts = text.split(separator: ":")
        guard parts.count == 2, let port = UInt16(parts[1]) else { return nil }
        return (String(parts[0]), port)
    }

    var options: RouterOptions {
        var options = RouterOptions()
        options.maximumFrameSize = maxFrame
        options.drainTimeout = drainTimeout
        options.stallTimeout = stallTimeout
        options.memoryLimit = memoryLimit
        options.spoolLimit = spoolLimit
        options.metricsListen = metricsListen.flatMap(metricsAddress)
        options.workers = workers
        options.splice = SpliceMode(rawValue: splice) ?? .auto
        return options
    }
}

/// A logger writing to standard error.
func makeLogger(label: String, level: String) -> Logger {
    var logger = Logger(label: label) { StreamLogHandler.standardError(label: $0) }
    logger.logLevel = Logger.Level(rawValue: level) ?? .info
    return logger
}

/// The router process: lock, pid file, load, run, clean up.
final class RouterService {
    let state: StateDirectory
    let reconciler: Reconciler
    let router: RouterGroup
    let lock: LockFile
    let logger: Logger

    /// The node asked for (`--node`, `PMM_NODE`); nil: the node the revision was applied on.
    let node: String?

    init(state: StateDirectory, flags: RouterFlags, node: String? = nil, logger: Logger) throws(PMMError) {
        self.state = state
        self.logger = logger
        self.node = node
        reconciler = try Reconciler(state: state)
        do {
            lock = try LockFile.acquire(at: state.routerLockPath, owner: "pmm router", now: ISO8601DateFormatter().string(from: Date()))
        } catch {
            throw .system(error)
        }
        guard let layout = try Self.layout(reconciler, node: node) else {
            throw .system(FIFOError(.systemCall, path: state.path, "nothing has been applied yet", hint: "run pmm apply -f mesh.yaml first"))
        }
        var options = flags.options
        options.statusPath = state.routerStatusPath
        options.spoolDirectory = state.spoolPath
        options.deadLetterDirectory = state.deadLetterPath
        do { router = try RouterGroup(layout: layout, options: options, logger: logger) } catch { throw .system(error) }
        _ = FileManager.default.createFile(atPath: state.routerPIDPath, contents: Data("\(getpid())\n".utf8))
    }

    /// The layout of the newest revision, for `node` (else the node it was applied on) when the spec has nodes.
    static func layout(_ reconciler: Reconciler, node: String?) throws(PMMError) -> RouterLayout? {
        guard let (revision, spec) = try reconciler.currentRevision() else { return nil }
        var served: String?
        if !spec.nodes.isEmpty {
            let name = node ?? revision.node
            guard let name, spec.node(named: name) != nil else { throw .node(given: name, declared: spec.nodes.map(\.name)) }
            served = name
        }
        return RouterLayout(spec: spec, revision: revision.number, readers: reconciler.readers(of: revision), node: served)
    }

    /// Runs the router's loop as a `Service` in a `ServiceGroup` (graceful shutdown on SIGTERM and SIGINT,
    /// SIGHUP reloads) until it stops.
    func runAsDaemon(logger: Logger) throws -> RouterExit {
        let handed = Handed(value: self)
        let exit = try runDaemon(name: "pmm router", logger: logger) { signals in handed.value.run(signals: signals) }
        return exit ?? .stopped(undelivered: 0)
    }

    /// Runs until SIGTERM/SIGINT (or `signals.send(.stop)`).
    func run(signals: SignalPipe = SignalPipe()) -> RouterExit {
        defer { unlink(state.routerPIDPath) }
        // A reload keeps serving the node the router started with.
        let node = router.servedNode
        return router.run(signals: signals) { [reconciler] in
            guard let layout = try Self.layout(reconciler, node: node) else { throw PMMError.noSuchRevision(1, latest: nil) }
            return layout
        }
    }
}
