public import Logging
public import PMMCore
public import PMMSystem
import Foundation
import Glibc
import Synchronization

/// The data plane on several cores: one `Router` per worker thread, each routing its share of the data types
/// (`WorkerAssignment`), sharing nothing on the path of a frame.
///
/// - Each worker has its own epoll loop, core, pipes, spools and queues; an egress pipe has one writer, so
///   frames never interleave, and a key's frames keep their order (they come through one ingress pipe, which
///   one worker reads).
/// - The calling thread owns the process's signals: SIGHUP loads the revision once, splits it and hands each
///   worker its share; SIGTERM stops every worker at once and waits for their drains.
/// - The memory and spool limits are the whole router's: each worker gets an equal part (at least twice the
///   largest frame).
/// - Worker 0 writes the status file and serves metrics, merging what every worker last published.
/// - One worker: exactly the single-threaded router, run on the calling thread.
public final class RouterGroup {
    let workers: [Router]
    let controls: [SignalPipe]
    let options: RouterOptions
    let logger: Logger
    let board: StatusBoard?
    let mailbox: LayoutMailbox
    var assignment: WorkerAssignment

    /// The node this router serves in a multi-node mesh.
    public let servedNode: String?

    /// - Parameters:
    ///   - layout: what to route, from the applied revision.
    ///   - options: `options.workers` asks for a number of workers (nil: one per core); no more run than the
    ///     layout's data types with ingress pipes, and one in a multi-node mesh.
    public init(layout: RouterLayout, options: RouterOptions = RouterOptions(), logger: Logger) throws(FIFOError) {
        let count = WorkerAssignment.workers(
            requested: options.workers, cores: ProcessInfo.processInfo.activeProcessorCount, for: layout)
        self.options = options
        self.logger = logger
        servedNode = layout.node
        assignment = WorkerAssignment(workers: count)
        mailbox = LayoutMailbox(workers: count)
        guard count > 1 else {
            workers = [try Router(layout: layout, options: options, logger: logger)]
            controls = []
            board = nil
            return
        }
        let board = StatusBoard(workers: count)
        self.board = board
        let live = layout.spooledIngress
        // Spools left for pipes no revision names at least once any more: their types get a worker now, which
        // adopts them.
        var orphans: Set<String> = []
        if let directory = options.spoolDirectory, let names = try? FileManager.default.contentsOfDirectory(atPath: directory) {
            for name in names where name.hasSuffix(".spool") {
                let pipe = String(name.dropLast(".spool".count))
                if !live.contains(pipe), let parsed = Naming.parse(pipe) { orphans.insert(parsed.dataType) }
            }
        }
        let shares = assignment.split(layout, alsoTypes: orphans)
        let owners = assignment
        var routers: [Router] = []
        for (index, share) in shares.enumerated() {
            var part = options
            part.memoryLimit = max(2 * options.maximumFrameSize, options.memoryLimit / count)
            part.spoolLimit = max(Int64(2 * options.maximumFrameSize), options.spoolLimit / Int64(count))
            if index != 0 { part.metricsListen = nil }
            var workerLogger = logger
            workerLogger[metadataKey: "worker"] = "\(index)"
            // A spool left for a pipe no revision names any more goes to the worker of the type its name carries.
            let seat = Router.Seat(index: index, board: board) { pipe in
                !live.contains(pipe) && owners.owner(of: Naming.parse(pipe)?.dataType ?? "") == index
            }
            routers.append(try Router(layout: share, options: part, logger: workerLogger, seat: seat))
        }
        workers = routers
        controls = routers.map { _ in SignalPipe.events() }
        logger.info(
            "router workers", metadata: ["workers": "\(count)", "types": "\(owners.owners.sorted { $0.key < $1.key }.map { "\($0.key)→\($0.value)" })"])
    }

    /// Runs until SIGTERM or SIGINT arrives on `signals`; SIGHUP calls `reload` once and gives each worker its
    /// share of the layout. Returns when every worker has drained and stopped.
    public func run(signals: SignalPipe, reload: @escaping () throws -> RouterLayout) -> RouterExit {
        guard workers.count > 1 else { return workers[0].run(signals: signals, reload: reload) }
        let exits = Exits(workers: workers.count)
        let finished = DispatchGroup()
        for (index, router) in workers.enumerated() {
            let owned = Owned(router: router, control: controls[index], mailbox: mailbox)
            finished.enter()
            let thread = Thread {
                nameThisThread("pmm-router-\(index)")
                let exit = owned.router.run(signals: owned.control) { try owned.mailbox.take(index) }
                exits.values.withLock { $0[index] = exit }
                finished.leave()
            }
            thread.start()
        }
        // Ready once every worker serves and the merged status is there to read.
        if let board {
            let deadline = monotonicNanos() + 10_000_000_000
            while board.merged() == nil && monotonicNanos() < deadline { usleep(5_000) }
        }
        do { try ServiceManager.notifyReady() } catch { logger.warning("cannot tell the service manager the router is ready: \(error)") }
        while true {
            var fds = [pollfd(fd: signals.readFD, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, 1, -1)
            for signal in signals.drain() {
                switch signal {
                case .reload:
                    deliverReload(reload)
                case .stop:
                    for control in controls { control.send(.stop) }
                    finished.wait()
                    if let path = options.statusPath, let board, let merged = board.merged() { _ = writeStatusFile(merged, to: path) }
                    let undelivered = exits.values.withLock { $0.reduce(0) { total, exit in
                        guard case .stopped(let frames) = exit else { return total }
                        return total + frames
                    } }
                    return .stopped(undelivered: undelivered)
                }
            }
        }
    }

    /// Loads the newest revision once, splits it, and tells every worker to install its share (or, when the
    /// load failed, to count and log the failure, as one router does).
    func deliverReload(_ reload: () throws -> RouterLayout) {
        let shares: [Result<RouterLayout, ReloadFailure>]
        do {
            shares = assignment.split(try reload()).map { .success($0) }
        } catch {
            logger.error("reload failed; the current revision keeps serving", metadata: ["error": "\(error)"])
            shares = Array(repeating: .failure(ReloadFailure(description: "\(error)")), count: workers.count)
        }
        for (index, share) in shares.enumerated() {
            mailbox.put(share, for: index)
            controls[index].send(.reload)
        }
    }

    /// How each worker stopped.
    final class Exits: Sendable {
        let values: Mutex<[RouterExit?]>
        init(workers: Int) { values = Mutex(Array(repeating: nil, count: workers)) }
    }

    struct ReloadFailure: Error, CustomStringConvertible {
        var description: String
    }

    /// A worker's router and channels, handed to its thread, which owns the router from then on.
    struct Owned: @unchecked Sendable {
        let router: Router
        let control: SignalPipe
        let mailbox: LayoutMailbox
    }
}

/// Each worker's next share of a reloaded layout.
final class LayoutMailbox: Sendable {
    private let slots: Mutex<[(share: Result<RouterLayout, RouterGroup.ReloadFailure>, taken: Bool)?]>

    init(workers: Int) { slots = Mutex(Array(repeating: nil, count: workers)) }

    /// Hands `worker` a share. A failed load does not take the place of a good share the worker has not taken
    /// yet: that worker still installs the revision the others got.
    func put(_ share: Result<RouterLayout, RouterGroup.ReloadFailure>, for worker: Int) {
        slots.withLock { slots in
            if case .failure = share, let waiting = slots[worker], !waiting.taken, case .success = waiting.share { return }
            slots[worker] = (share, false)
        }
    }

    /// The share last handed to `worker`; throws when that reload failed (or none was handed). The share stays:
    /// two SIGHUPs close together may hand over twice before the worker looks once, and then it installs the
    /// newest share twice (an unchanged layout installs as a no-op) rather than report a failed reload.
    func take(_ worker: Int) throws -> RouterLayout {
        let share = slots.withLock { slots in
            slots[worker]?.taken = true
            return slots[worker]?.share
        }
        guard let share else { throw RouterGroup.ReloadFailure(description: "no layout was handed to this worker") }
        return try share.get()
    }
}

/// The status each worker last published; worker 0 writes their merge to the status file and serves it as
/// metrics.
final class StatusBoard: Sendable {
    private let statuses: Mutex<[RouterStatus?]>
    /// When each worker last looked at its status (monotonic ns), changed or not.
    private let seen: Mutex<[UInt64]>
    private let changes = Atomic<UInt64>(0)

    init(workers: Int) {
        statuses = Mutex(Array(repeating: nil, count: workers))
        seen = Mutex(Array(repeating: 0, count: workers))
    }

    /// A worker's sign of life, every status interval.
    func heartbeat(worker: Int, now: UInt64) { seen.withLock { $0[worker] = now } }

    /// Whether every worker gave a sign of life since `since` (a worker that stopped turning its loop does not).
    func everyWorkerSeen(since: UInt64) -> Bool { seen.withLock { $0.allSatisfy { $0 >= since } } }

    /// Goes up with every publication.
    var version: UInt64 { changes.load(ordering: .acquiring) }

    func publish(_ status: RouterStatus, worker: Int) {
        statuses.withLock { $0[worker] = status }
        changes.wrappingAdd(1, ordering: .releasing)
    }

    /// Every worker's status merged, with `own` in place of what `worker` last published; nil until every
    /// worker has published once.
    func merged(replacing worker: Int? = nil, with own: RouterStatus? = nil) -> RouterStatus? {
        var parts = statuses.withLock { $0 }
        if let worker, let own { parts[worker] = own }
        let complete = parts.compactMap { $0 }
        guard complete.count == parts.count else { return nil }
        return RouterStatus.merged(complete)
    }
}

extension RouterStatus {
    /// The status of a router whose workers' statuses are `parts` (worker 0 first): pipes side by side,
    /// counters summed, the revision every worker serves (the lowest), and the oldest update.
    static func merged(_ parts: [RouterStatus]) -> RouterStatus {
        var status = parts[0]
        status.workers = parts.count
        for part in parts.dropFirst() {
            status.revision = min(status.revision, part.revision)
            status.startedAt = min(status.startedAt, part.startedAt)
            status.updatedAt = min(status.updatedAt, part.updatedAt)
            status.stopping = status.stopping || part.stopping
            status.ingress += part.ingress
            status.egress += part.egress
            status.waiting.merge(part.waiting, uniquingKeysWith: +)
            status.deadLetters.merge(part.deadLetters, uniquingKeysWith: +)
            status.dropped += part.dropped
            // Every worker counts each reload.
            status.reloads = max(status.reloads, part.reloads)
            status.failedReloads = max(status.failedReloads, part.failedReloads)
            status.lastReloadError = status.lastReloadError ?? part.lastReloadError
            status.heldBytes = (status.heldBytes ?? 0) + (part.heldBytes ?? 0)
            status.spooledBytes = (status.spooledBytes ?? 0) + (part.spooledBytes ?? 0)
            status.splicedBytes = (status.splicedBytes ?? 0) + (part.splicedBytes ?? 0)
            status.splicedFromSpoolBytes = (status.splicedFromSpoolBytes ?? 0) + (part.splicedFromSpoolBytes ?? 0)
        }
        return status
    }
}

/// Writes `status` to `path` through a temporary file and a rename (readers never see half a file).
func writeStatusFile(_ status: RouterStatus, to path: String) -> Bool {
    let data = StatusJSON.encode(status)
    let temporary = path + ".tmp"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { return false }
    let written = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
    return written == data.count && rename(temporary, path) == 0
}
