import Foundation
import Glibc
public import Logging
public import PMMCore
public import PMMSystem
import PMMLink
import PMMRouterCore
import PMMWire
import SystemPackage

/// Settings of the data plane that are not in the spec.
public struct RouterOptions: Sendable {
    /// The largest frame accepted on an ingress pipe, length prefix included. Larger ones reset that pipe.
    public var maximumFrameSize: Int = 1 << 20
    /// Bytes read from one ingress pipe per read(2).
    public var readSize: Int = 256 << 10
    /// How long SIGTERM waits for queued frames to reach their consumers.
    public var drainTimeout: Double = 5
    /// A consumer that reads nothing for this long while its pipe holds data is stalled: no new frames go
    /// to it until it drains its pipe.
    public var stallTimeout: Double = 5
    /// Bytes the router holds in queues, all pipes together; at the limit producers are held back.
    public var memoryLimit: Int = 256 << 20
    /// Undelivered bytes the at-least-once spools may hold, all pipes together; at the limit at-least-once
    /// producers are held back.
    public var spoolLimit: Int64 = 1 << 30
    /// How often every pipe's inode is checked (a pipe deleted or replaced under the router).
    public var checkInterval: Double = 2
    /// Where to write the status JSON (pid, revision, counters), if anywhere.
    public var statusPath: String?
    public var statusInterval: Double = 1
    /// The at-least-once spools; nil keeps every type in memory (at-most-once).
    public var spoolDirectory: String?
    /// The dead-letter spool; nil drops undeliverable frames (counted and logged).
    public var deadLetterDirectory: String?
    /// Serve Prometheus metrics on this TCP address (`127.0.0.1:9464`).
    public var metricsListen: (host: String, port: UInt16)?

    public init() {}

    var core: RouterCoreOptions {
        var core = RouterCoreOptions()
        core.maximumFrameSize = maximumFrameSize
        core.readSize = readSize
        core.stallTimeout = UInt64(stallTimeout * 1e9)
        core.memoryLimit = memoryLimit
        core.spoolLimit = spoolLimit
        core.drainGrace = UInt64(max(drainTimeout, 1) * 1e9)
        return core
    }
}

/// Why the router stopped.
public enum RouterExit: Sendable, Equatable {
    /// SIGTERM or SIGINT: drained and stopped. `undelivered` frames were still queued at the deadline.
    case stopped(undelivered: Int)
}

/// The data plane's shell: one thread, one `poll(2)` loop that turns readiness, reads, writes and timers into
/// events for the `RouterCore` and performs the actions it returns (DESIGN.md, "Routing", "Flow control and
/// delivery").
///
/// Every decision (where a frame goes, when an instance is down or stalled, what waits, what is dead-lettered)
/// is the core's; this class owns every descriptor and does the system calls. Many frames per read(2), one
/// write(2) per egress pipe per batch, no lock and no task hop per frame. Frames are forwarded byte for byte.
///
/// A reload (SIGHUP) or stop (SIGTERM) is acted on between poll passes, never inside one, and pipes are named
/// by the core's `PipeID`s, so a pass never reaches a pipe through a stale index.
///
/// Not thread-safe: `run` owns the object until it returns.
public final class Router {
    let options: RouterOptions
    let logger: Logger
    var core: RouterCore
    let root: PipeRoot
    /// Opens of files in the root (inotify): a consumer that opens its egress pipe is probed at once.
    let opens: OpenWatch?
    /// Read descriptors of ingress pipes, by the core's identifier.
    var ingressFDs: [PipeID: Held] = [:]
    /// Write descriptors of egress pipes (present while a reader is there).
    var egressFDs: [PipeID: Held] = [:]
    /// Spool files by ingress pipe name.
    var spoolFiles: [String: SpoolFile] = [:]
    let deadLetters: DeadLetterSpool?
    var metrics: MetricsEndpoint?
    let routerMetrics = RouterMetrics()
    var startedAt = Date()
    var lastStatus: UInt64 = 0
    var lastCheck: UInt64 = 0
    var lastCheckpoint: UInt64 = 0
    var shellCounters = ShellCounters()
    var rates: [PipeID: (frames: UInt64, rate: Double)] = [:]
    var linkRates: [String: (frames: UInt64, rate: Double)] = [:]
    /// Nanoseconds to add to the monotonic clock for the wall clock (for status timestamps).
    let wallOffset: Int64
    /// The node this router serves in a multi-node mesh (nil: one host).
    public var servedNode: String? { core.layout.node }
    /// The links to the other nodes' routers (a multi-node mesh), or nil.
    var links: LinkManager?
    /// The health last told to the peers, and the core's epoch it was looked at.
    var announcedHealth: [String: Bool] = [:]
    var announcedEpoch: UInt64 = .max

    /// A descriptor and the inode it was opened on.
    struct Held {
        var fd: FileDescriptor
        var inode: UInt64
        var device: UInt64
        /// The pipe's capacity in bytes (F_GETPIPE_SZ), for egress pipes.
        var capacity: Int
    }

    struct ShellCounters {
        /// Undeliverable frames with no dead-letter spool to keep them.
        var dropped: UInt64 = 0
        var failedReloads: UInt64 = 0
        var lastReloadError: String?
    }

    /// - Parameters:
    ///   - layout: what to route, from the applied revision.
    public init(layout: RouterLayout, options: RouterOptions = RouterOptions(), logger: Logger) throws(FIFOError) {
        self.options = options
        self.logger = logger
        guard let root = try PipeRoot.open(layout.root) else {
            throw FIFOError(.systemCall, path: layout.root, "the pipe root does not exist", hint: "run pmm apply first")
        }
        self.root = root
        opens = OpenWatch(directory: layout.root)
        if let directory = options.spoolDirectory {
            try PipeRoot.makeDirectories(directory, mode: 0o700)
        }
        deadLetters = options.deadLetterDirectory.map { DeadLetterSpool(directory: $0) }
        if let (host, port) = options.metricsListen {
            metrics = try MetricsEndpoint(host: host, port: port)
        }
        let now = monotonicNanos()
        wallOffset = realtimeNanos() - Int64(now)
        var spoolFiles: [String: SpoolFile] = [:]
        core = RouterCore(
            layout: layout, options: options.core, now: now, seed: UInt64(truncatingIfNeeded: realtimeNanos()),
            openSpool: Self.spoolOpener(options.spoolDirectory, root: root, logger: logger) { spoolFiles[$0.pipe] = $0 })
        // Spools of pipes this layout no longer names (a crash after an apply removed them) are read back too.
        if let directory = options.spoolDirectory, let names = try? FileManager.default.contentsOfDirectory(atPath: directory) {
            let live = Set(layout.ingress.map(\.name))
            for name in names.sorted() where name.hasSuffix(".spool") {
                let pipe = String(name.dropLast(".spool".count))
                guard !live.contains(pipe), let (file, ledger) = try? SpoolFile.open(directory: directory, pipe: pipe, source: nil) else { continue }
                if core.adoptSpool(ledger, now: now) {
                    spoolFiles[pipe] = file
                    logger.notice("replaying the spool of a removed pipe", metadata: ["pipe": "\(pipe)", "bytes": "\(ledger.live)"])
                }
            }
        }
        self.spoolFiles = spoolFiles
        performActions()
        do {
            links = try Self.startLinks(layout, logger: logger)
        } catch {
            throw FIFOError(
                .systemCall, path: "node \(layout.node ?? "?")", "\(error)",
                hint: "each node's router needs its own address from the spec's nodes, free to listen on")
        }
    }

    /// Opens spool files for the core; `register` keeps each file.
    static func spoolOpener(_ directory: String?, root: PipeRoot, logger: Logger, register: @escaping (SpoolFile) -> Void) -> (String) -> SpoolLedger? {
        { pipe in
            guard let directory else { return nil }
            do {
                let source = (try? root.stat(pipe))?.inode
                let (file, ledger) = try SpoolFile.open(directory: directory, pipe: pipe, source: source)
                register(file)
                return ledger
            } catch {
                logger.error("cannot open the spool; this pipe is at-most-once until fixed", metadata: ["pipe": "\(pipe)", "error": "\(error)"])
                return nil
            }
        }
    }

    // MARK: The loop

    enum Owner {
        case signal
        case opens
        case links
        case ingress(PipeID)
        case egress(PipeID)
        case metricsListener
        case metricsClient(Int32)
    }

    /// Runs until SIGTERM or SIGINT arrives on `signals`; SIGHUP calls `reload` and installs its layout.
    ///
    /// - Parameters:
    ///   - signals: the read end of a `SignalPipe`.
    ///   - reload: loads the newest applied revision; a throw leaves the current layout serving.
    public func run(signals: SignalPipe, reload: () throws -> RouterLayout) -> RouterExit {
        startedAt = Date()
        writeStatus(force: true)
        logger.info(
            "router serving",
            metadata: ["revision": "\(core.layout.revision)", "ingress": "\(core.ingress.count)", "egress": "\(core.egress.count)"])
        do { try ServiceManager.notifyReady() } catch { logger.warning("cannot tell the service manager the router is ready: \(error)") }
        var fds: [pollfd] = []
        var owners: [Owner] = []
        while true {
            let now = monotonicNanos()
            fds.removeAll(keepingCapacity: true)
            owners.removeAll(keepingCapacity: true)
            fds.append(pollfd(fd: signals.readFD, events: Int16(POLLIN), revents: 0))
            owners.append(.signal)
            if let opens {
                fds.append(pollfd(fd: opens.fd, events: Int16(POLLIN), revents: 0))
                owners.append(.opens)
            }
            if let links {
                fds.append(pollfd(fd: links.wakeDescriptor, events: Int16(POLLIN), revents: 0))
                owners.append(.links)
            }
            var timeout: Int32 = 100
            if let wake = core.nextWake(after: now) { timeout = min(timeout, Int32(clamping: (wake - now) / 1_000_000 + 1)) }
            for slot in core.ingress.indices where core.wantsToRead(slot, now: now) {
                let id = core.ingress[slot].id
                if core.hasBufferedWork(slot) { timeout = 0 }
                guard let held = ingressFDs[id] else { continue }
                fds.append(pollfd(fd: held.fd.rawValue, events: Int16(POLLIN), revents: 0))
                owners.append(.ingress(id))
            }
            for slot in core.egress.indices {
                guard let held = egressFDs[core.egress[slot].id] else { continue }
                // Always watched: POLLERR tells that the reader went away even when nothing is queued.
                fds.append(pollfd(fd: held.fd.rawValue, events: core.hasUnwritten(slot) ? Int16(POLLOUT) : 0, revents: 0))
                owners.append(.egress(core.egress[slot].id))
            }
            if let metrics {
                fds.append(pollfd(fd: metrics.listener, events: Int16(POLLIN), revents: 0))
                owners.append(.metricsListener)
                for client in metrics.clients.keys {
                    fds.append(pollfd(fd: client, events: Int16(POLLIN), revents: 0))
                    owners.append(.metricsClient(client))
                }
            }
            let ready = poll(&fds, nfds_t(fds.count), timeout)
            if ready < 0 && errno != EINTR {
                logger.critical("poll failed", metadata: ["errno": "\(errno)"])
            }
            var reloadRequested = false
            var stopRequested = false
            for (slot, owner) in owners.enumerated() {
                let revents = Int32(fds[slot].revents)
                switch owner {
                case .signal:
                    guard revents != 0 else { continue }
                    for signal in signals.drain() {
                        switch signal {
                        case .reload: reloadRequested = true
                        case .stop: stopRequested = true
                        }
                    }
                case .links:
                    continue  // drained by pumpLinks, every pass
                case .opens:
                    guard revents != 0, let opens else { continue }
                    for name in opens.drain() where name.hasSuffix(".out") { core.egressOpenedByReader(named: name, now: now) }
                case .ingress(let id):
                    guard let slot = core.ingressSlot(id) else { continue }
                    if revents != 0 || core.hasBufferedWork(slot) { readIngress(slot, budget: 4) }
                case .egress(let id):
                    guard revents & (POLLERR | POLLHUP) != 0, let slot = core.egressSlot(id) else { continue }
                    egressFailed(slot, reason: "the reader went away")
                case .metricsListener:
                    if revents != 0 { metrics?.accept() }
                case .metricsClient(let fd):
                    if revents != 0 { metrics?.respond(fd) { self.metricsText() } }
                }
            }
            // Removed or replaced pipes are read without waiting for POLLIN (an empty pipe with a writer never
            // becomes readable), once per pass, and closed once empty at a frame boundary.
            for slot in core.ingress.indices where core.ingress[slot].draining { readIngress(slot, budget: 16) }
            // Links before the pipes: what this pass routed to other nodes goes out now, and what came from them
            // is written to its pipes in this pass's flush, not the next one's.
            pumpLinks(now: monotonicNanos())
            flushAll()
            housekeeping(now: monotonicNanos())
            if stopRequested { return stop() }
            if reloadRequested { reloadLayout(reload) }
        }
    }

    func reloadLayout(_ reload: () throws -> RouterLayout) {
        do {
            let new = try reload()
            install(new)
            logger.info("reloaded", metadata: ["revision": "\(new.revision)"])
            if let links {
                links.updateRevision(UInt64(max(0, new.revision)))
                let configured = Set(links.configuration.peers.keys)
                if configured != Set(new.peers.map(\.name)) {
                    logger.warning(
                        "the revision changes the mesh's nodes; links follow the nodes the router started with until it restarts",
                        metadata: ["started_with": "\(configured.sorted())", "now": "\(new.peers.map(\.name))"])
                }
            }
        } catch {
            shellCounters.failedReloads += 1
            shellCounters.lastReloadError = "\(error)"
            logger.error(
                "reload failed; the current revision keeps serving",
                metadata: ["revision": "\(core.layout.revision)", "error": "\(error)"])
        }
        writeStatus(force: true)
    }

    /// Installs `new` in the core: pipes whose FIFO apply replaced are told apart by their inode, and every
    /// consumer's progress is read first, so what goes elsewhere is exactly what it did not read.
    func install(_ new: RouterLayout) {
        let now = monotonicNanos()
        acknowledgeAll(now: now)
        let names = Set(new.ingress.map(\.name))
        var replacedIngress: Set<String> = []
        for pipe in core.ingress where !pipe.draining && names.contains(pipe.name) {
            guard let held = ingressFDs[pipe.id], case .some(let file) = try? root.stat(pipe.name) else { continue }
            if file.inode != held.inode || file.device != held.device { replacedIngress.insert(pipe.name) }
        }
        let egressNames = Set(new.egress.map(\.name))
        var replacedEgress: Set<String> = []
        for pipe in core.egress where egressNames.contains(pipe.name) {
            guard let held = egressFDs[pipe.id] else { continue }
            if let file = try? root.stat(pipe.name), file.inode == held.inode, file.device == held.device { continue }
            replacedEgress.insert(pipe.name)
        }
        var opened: [SpoolFile] = []
        core.install(
            new, replacedIngress: replacedIngress, replacedEgress: replacedEgress, now: now,
            openSpool: Self.spoolOpener(options.spoolDirectory, root: root, logger: logger) { opened.append($0) })
        for file in opened { spoolFiles[file.pipe] = file }
        performActions()
    }

    /// Timers: consumers' progress (acknowledgements, stalls), probes, pipes deleted or replaced underneath,
    /// spool checkpoints, the status file.
    func housekeeping(now: UInt64) {
        acknowledgeAll(now: now)
        core.tick(now: now)
        performActions()
        if now - lastCheck >= UInt64(options.checkInterval * 1e9) {
            lastCheck = now
            checkPipes(now: now)
        }
        if now - lastCheckpoint >= 50_000_000 {
            lastCheckpoint = now
            checkpointSpools()
        }
        tellPeers()
        writeStatus(force: false)
    }

    /// Tells the core how much every open egress pipe still holds (FIONREAD).
    func acknowledgeAll(now: UInt64) {
        for slot in core.egress.indices {
            guard let held = egressFDs[core.egress[slot].id] else { continue }
            core.egressUnread(slot, unread: unreadBytes(held.fd), now: now)
        }
        performActions()
    }

    /// Writes every spool's watermark; frees what is delivered.
    func checkpointSpools() {
        for pipe in core.ingress where pipe.spool >= 0 && !pipe.draining {
            if let held = ingressFDs[pipe.id], let ledger = core.spools[pipe.spool] { spoolFiles[ledger.pipe]?.source = held.inode }
        }
        for index in core.spools.indices {
            guard let ledger = core.spools[index], let file = spoolFiles[ledger.pipe] else { continue }
            if ledger.size > 0 && core.spoolEmptyable(index) {
                // Truncate first: a crash in between leaves a mark past the end, which opening clamps to 0.
                if file.truncate() { core.spoolTruncated(index) }
            } else {
                file.release(before: ledger.watermark)
            }
            if let ledger = core.spools[index] { file.writeMark(ledger) }
        }
    }

    /// A pipe deleted under the router, or replaced behind its back: ingress pipes are reopened (the old inode
    /// drained), egress pipes closed (their frames go elsewhere) and probed again.
    func checkPipes(now: UInt64) {
        var replaced: Set<String> = []
        for pipe in core.ingress where !pipe.draining {
            guard let file = try? root.stat(pipe.name), file.kind == .fifo else {
                core.ingressUnavailable(pipe.id, missing: true, error: "missing")
                continue
            }
            guard let held = ingressFDs[pipe.id] else {
                openIngress(pipe.id, name: pipe.name, pipeSize: pipe.spec.pipeSize)
                continue
            }
            if file.inode != held.inode || file.device != held.device {
                logger.warning("ingress pipe replaced underneath; following the new one", metadata: ["pipe": "\(pipe.name)"])
                replaced.insert(pipe.name)
            }
        }
        for slot in core.egress.indices {
            let pipe = core.egress[slot]
            guard let held = egressFDs[pipe.id] else { continue }
            if let file = try? root.stat(pipe.name), file.inode == held.inode, file.device == held.device { continue }
            egressFailed(slot, reason: "its pipe was deleted or replaced underneath")
        }
        if !replaced.isEmpty {
            core.install(core.layout, replacedIngress: replaced, now: now, isReload: false)
            performActions()
        }
        for slot in core.ingress.indices where core.ingress[slot].pendingBytes == 0 {
            core.shrinkIfIdle(slot)  // an idle pipe costs no memory
        }
    }

    // MARK: Stopping

    /// Stops reading, completes frames half read, writes what is queued until the drain timeout, closes.
    func stop() -> RouterExit {
        logger.info("stopping: draining queued frames", metadata: ["timeout": "\(options.drainTimeout)s"])
        let deadline = monotonicNanos() + UInt64(options.drainTimeout * 1e9)
        core.beginStop()
        // Finish frames already half read, so the pipe is left at a frame boundary.
        while monotonicNanos() < deadline {
            let reading = core.ingress.indices.filter { core.wantsToRead($0, now: monotonicNanos()) }
            guard !reading.isEmpty else { break }
            var fds = reading.compactMap { ingressFDs[core.ingress[$0].id].map { pollfd(fd: $0.fd.rawValue, events: Int16(POLLIN), revents: 0) } }
            _ = poll(&fds, nfds_t(fds.count), 50)
            for slot in reading { readIngress(slot, budget: 1) }
        }
        // Deliver what is queued; wait (a little) for consumers to read what was written, so at-least-once
        // frames are not replayed by the next router.
        let settle = monotonicNanos() + 1_000_000_000
        while monotonicNanos() < deadline {
            pumpLinks(now: monotonicNanos())
            flushAll()
            housekeeping(now: monotonicNanos())
            if core.waitingFrames == 0 && (core.heldFrames == 0 || core.spools.isEmpty || monotonicNanos() > settle) { break }
            var fds = core.egress.indices.compactMap { slot in
                core.hasUnwritten(slot) ? egressFDs[core.egress[slot].id].map { pollfd(fd: $0.fd.rawValue, events: Int16(POLLOUT), revents: 0) } : nil
            }
            _ = poll(&fds, nfds_t(fds.count), 20)
        }
        let undelivered = core.waitingFrames
        if undelivered > 0 {
            let spooled = core.spools.isEmpty ? "" : " (at-least-once frames stay in the spool for the next router)"
            logger.error("stopped with frames undelivered\(spooled)", metadata: ["frames": "\(undelivered)"])
        }
        checkpointSpools()
        writeStatus(force: true, stopping: true)
        for held in ingressFDs.values { try? held.fd.close() }
        for held in egressFDs.values { try? held.fd.close() }
        ingressFDs = [:]
        egressFDs = [:]
        // Frames sent to peers and not acknowledged stay in the spool: the next router routes them again.
        links?.stop()
        links = nil
        logger.info("stopped")
        return .stopped(undelivered: undelivered)
    }
}

/// Bytes the pipe behind `fd` holds unread (FIONREAD works on either end of a pipe).
func unreadBytes(_ fd: FileDescriptor) -> Int {
    var count: Int32 = 0
    return ioctl(fd.rawValue, UInt(FIONREAD), &count) == 0 ? Int(count) : 0
}

/// F_SETPIPE_SZ / F_GETPIPE_SZ: `_GNU_SOURCE`-only in Glibc, so not imported into Swift (SWIFT-NOTES §2).
let F_SETPIPE_SZ: Int32 = 1031
let F_GETPIPE_SZ: Int32 = 1032

/// The capacity of the pipe behind `fd`, in bytes (64 KiB when the kernel will not say).
func pipeCapacity(_ fd: FileDescriptor) -> Int {
    let size = fcntl(fd.rawValue, F_GETPIPE_SZ)
    return size > 0 ? Int(size) : 65_536
}
