import Foundation
import Glibc
public import Logging
public import PMMCore
public import PMMSystem
import PMMWire

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
}

/// Why the router stopped.
public enum RouterExit: Sendable, Equatable {
    /// SIGTERM or SIGINT: drained and stopped. `undelivered` frames were still queued at the deadline.
    case stopped(undelivered: Int)
}

/// The data plane: reads frames from every ingress pipe and writes each to one consumer instance's egress pipe,
/// by data type, shard key and weights (DESIGN.md, "Routing", "Flow control and delivery").
///
/// One thread, one `poll(2)` loop: many frames per read(2), one write(2) per egress pipe per batch, no lock
/// and no task hop per frame. Frames are forwarded byte for byte as they arrived; only the routing fields
/// (data type, schema version, shard key) are located, never the payload.
///
/// Not thread-safe: `run` owns the object until it returns.
public final class Router {
    let options: RouterOptions
    let logger: Logger
    var layout: RouterLayout
    var root: PipeRoot
    var ingress: [IngressPipe] = []
    /// Ingress pipes removed or replaced by a reload, read until empty and then closed.
    var draining: [IngressPipe] = []
    var egress: [EgressPipe] = []
    var routes: [String: RouteState] = [:]
    var buckets: [String: TokenBucket] = [:]
    var spools: [Spool?] = []
    let deadLetters: DeadLetterSpool?
    var metrics: MetricsEndpoint?
    let routerMetrics = RouterMetrics()
    var startedAt = Date()
    var lastStatus: UInt64 = 0
    var lastCheck: UInt64 = 0
    var lastCheckpoint: UInt64 = 0
    var counters = Counters()
    var random = SplitMix(seed: UInt64(truncatingIfNeeded: realtimeNanos()))

    struct Counters {
        var deadLetters: [String: UInt64] = [:]
        var dropped: UInt64 = 0
        var reloads: UInt64 = 0
        var failedReloads: UInt64 = 0
        var lastReloadError: String?
        var replayed: UInt64 = 0
    }

    /// Per data type: its route, frames waiting for a healthy instance, round-robin state.
    final class RouteState {
        var route: RouterLayout.Route
        var parked = FrameQueue()
        var current: [Int]
        var rotation = 0
        /// While choosing a frame's instance: which targets can read its schema version (nil: all).
        var eligible: [Bool]?

        init(route: RouterLayout.Route) {
            self.route = route
            self.current = Array(repeating: 0, count: route.entry.targets.count)
        }

        var capacity: Int { route.qos.buffer }
    }

    /// - Parameters:
    ///   - layout: what to route, from the applied revision.
    public init(layout: RouterLayout, options: RouterOptions = RouterOptions(), logger: Logger) throws(FIFOError) {
        self.options = options
        self.logger = logger
        self.layout = layout
        guard let root = try PipeRoot.open(layout.root) else {
            throw FIFOError(.systemCall, path: layout.root, "the pipe root does not exist", hint: "run pmm apply first")
        }
        self.root = root
        if let directory = options.spoolDirectory {
            try PipeRoot.makeDirectories(directory, mode: 0o700)
        }
        deadLetters = options.deadLetterDirectory.map { DeadLetterSpool(directory: $0) }
        if let (host, port) = options.metricsListen {
            metrics = try MetricsEndpoint(host: host, port: port)
        }
        install(layout)
    }

    // MARK: Layout

    /// Opens what `layout` names that is not open yet, starts draining what it no longer names, swaps routes.
    func install(_ new: RouterLayout) {
        var oldIngress = Dictionary(uniqueKeysWithValues: ingress.map { ($0.name, $0) })
        var next: [IngressPipe] = []
        for spec in new.ingress {
            if let pipe = oldIngress.removeValue(forKey: spec.name) {
                pipe.spec = spec
                if case .some(let file) = try? root.stat(spec.name), file.inode == pipe.inode, file.device == pipe.device {
                    next.append(pipe)
                    continue
                }
                // Replaced by apply (a new writer): finish the old inode, read the new one.
                if pipe.spool != nil {
                    switchToNewInode(pipe)
                    next.append(pipe)
                    continue
                }
                startDraining(pipe)
            }
            let pipe = IngressPipe(spec: spec, maximumFrameSize: options.maximumFrameSize)
            attachSpool(pipe)
            openIngress(pipe)
            next.append(pipe)
        }
        for pipe in oldIngress.values { startDraining(pipe) }
        ingress = next
        buckets = buckets.filter { key, _ in next.contains { $0.bucketKey == key } }

        var oldEgress = Dictionary(uniqueKeysWithValues: egress.map { ($0.name, $0) })
        var nextEgress: [EgressPipe] = []
        var orphaned: [DetachedFrame] = []
        for spec in new.egress {
            if let pipe = oldEgress.removeValue(forKey: spec.name) {
                pipe.spec = spec
                if pipe.fd < 0 || ((try? root.stat(spec.name))?.map { $0.inode == pipe.inode && $0.device == pipe.device } ?? false) {
                    nextEgress.append(pipe)
                    continue
                }
                // Replaced by apply (a new reader): what is queued goes to the new pipe's instance.
                orphaned += detach(pipe)
                closeEgress(pipe, reason: nil)
            }
            nextEgress.append(EgressPipe(spec: spec))
        }
        for pipe in oldEgress.values {
            orphaned += detach(pipe)
            closeEgress(pipe, reason: nil)
        }
        egress = nextEgress
        for pipe in egress where pipe.fd < 0 { probe(pipe, now: monotonicNanos()) }

        for state in routes.values { orphaned += state.parked.takeNotReadWhole(unread: 0) }
        routes = new.routes.mapValues { RouteState(route: $0) }
        layout = new
        for frame in orphaned { reroute(frame) }
    }

    /// The frames of a pipe being closed that its reader did not read whole.
    func detach(_ pipe: EgressPipe) -> [DetachedFrame] {
        let unread = pipe.fd >= 0 ? unreadBytes(pipe.fd) : 0
        let frames = pipe.queue.takeNotReadWhole(unread: unread)
        pipe.rerouted += UInt64(frames.count)
        return frames
    }

    /// Moves `pipe` to the FIFO now at its path. An at-least-once pipe first splices what the old inode holds
    /// into its spool (read back in order, like everything else); an at-most-once pipe hands the old
    /// descriptor to a draining twin.
    func switchToNewInode(_ pipe: IngressPipe) {
        if let spool = pipe.spool, pipe.fd >= 0 {
            while spool.splice(from: pipe.fd, length: 1 << 20) > 0 {}
            close(pipe.fd)
            pipe.fd = -1
        } else if pipe.fd >= 0 {
            let old = IngressPipe(spec: pipe.spec, maximumFrameSize: options.maximumFrameSize)
            old.fd = pipe.fd
            old.draining = true
            old.buffer = pipe.buffer
            draining.append(old)
            pipe.fd = -1
            pipe.buffer.reset()
        }
        openIngress(pipe)
    }

    func startDraining(_ pipe: IngressPipe) {
        guard pipe.fd >= 0 else { return }
        pipe.draining = true
        draining.append(pipe)
    }

    /// Gives an at-least-once pipe its spool (reusing one left by an earlier run: its frames are replayed).
    func attachSpool(_ pipe: IngressPipe) {
        guard pipe.spec.qos.delivery == .atLeastOnce, let directory = options.spoolDirectory else { return }
        do {
            let spool = try Spool(directory: directory, pipe: pipe.name)
            if spool.unread > 0 {
                logger.notice(
                    "replaying frames spooled by an earlier router", metadata: ["pipe": "\(pipe.name)", "bytes": "\(spool.unread)"])
            }
            pipe.spool = spool
            pipe.replayUntil = spool.size
            pipe.spoolIndex = Int32(spools.count)
            spools.append(spool)
        } catch {
            logger.error("cannot open the spool; this pipe is at-most-once until fixed", metadata: ["pipe": "\(pipe.name)", "error": "\(error)"])
        }
    }

    func openIngress(_ pipe: IngressPipe) {
        switch root.openFIFO(pipe.name, forWriting: false) {
        case .opened(let fd, let file):
            if pipe.fd >= 0 { close(pipe.fd) }
            pipe.fd = fd
            pipe.inode = file.inode
            pipe.device = file.device
            pipe.missing = false
            setPipeSize(fd, pipe.spec.pipeSize, name: pipe.name)
        case .missing:
            if !pipe.missing { logger.warning("ingress pipe is missing; run pmm apply", metadata: ["pipe": "\(pipe.name)"]) }
            pipe.missing = true
            pipe.lastError = "missing"
        case .noReader:
            break  // cannot happen for a read end
        case .failed(let error):
            pipe.lastError = error.message
            logger.error("cannot open ingress pipe", metadata: ["pipe": "\(pipe.name)", "error": "\(error)"])
        }
    }

    func setPipeSize(_ fd: Int32, _ size: Int?, name: String) {
        guard let size else { return }
        if fcntl(fd, F_SETPIPE_SZ, Int32(clamping: size)) < 0 {
            logger.warning(
                "cannot set the pipe size (F_SETPIPE_SZ); fs.pipe-max-size may be lower",
                metadata: ["pipe": "\(name)", "size": "\(size)", "errno": "\(errno)"])
        }
    }

    // MARK: The loop

    enum Owner {
        case signal
        case ingress(Int)
        case egress(Int)
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
            "router serving", metadata: ["revision": "\(layout.revision)", "ingress": "\(ingress.count)", "egress": "\(egress.count)"])
        var fds: [pollfd] = []
        var owners: [Owner] = []
        while true {
            let now = monotonicNanos()
            fds.removeAll(keepingCapacity: true)
            owners.removeAll(keepingCapacity: true)
            fds.append(pollfd(fd: signals.readFD, events: Int16(POLLIN), revents: 0))
            owners.append(.signal)
            let blocked = blockedRoutes()
            var timeout: Int32 = 100
            var spoolBacklog = false
            for (index, pipe) in ingress.enumerated() where pipe.fd >= 0 && !blocked.contains(pipe.spec.dataType) {
                if pipe.pausedUntil > now {
                    timeout = min(timeout, Int32(clamping: (pipe.pausedUntil - now) / 1_000_000 + 1))
                    continue
                }
                if (pipe.spool?.unread ?? 0) > 0 || pipe.backlog { spoolBacklog = true }
                fds.append(pollfd(fd: pipe.fd, events: Int16(POLLIN), revents: 0))
                owners.append(.ingress(index))
            }
            for (index, pipe) in egress.enumerated() where pipe.fd >= 0 {
                // Always watched: POLLERR tells that the reader went away even when nothing is queued.
                fds.append(pollfd(fd: pipe.fd, events: pipe.queue.unwrittenBytes > 0 ? Int16(POLLOUT) : 0, revents: 0))
                owners.append(.egress(index))
            }
            if let metrics {
                fds.append(pollfd(fd: metrics.listener, events: Int16(POLLIN), revents: 0))
                owners.append(.metricsListener)
                for client in metrics.clients.keys {
                    fds.append(pollfd(fd: client, events: Int16(POLLIN), revents: 0))
                    owners.append(.metricsClient(client))
                }
            }
            if spoolBacklog || !draining.isEmpty { timeout = 0 }
            let ready = poll(&fds, nfds_t(fds.count), timeout)
            if ready < 0 && errno != EINTR {
                logger.critical("poll failed", metadata: ["errno": "\(errno)"])
            }
            for (slot, owner) in owners.enumerated() {
                let revents = Int32(fds[slot].revents)
                switch owner {
                case .signal:
                    guard revents != 0 else { continue }
                    for signal in signals.drain() {
                        switch signal {
                        case .reload: reloadLayout(reload)
                        case .stop: return stop()
                        }
                    }
                case .ingress(let index):
                    let pipe = ingress[index]
                    if revents != 0 || (pipe.spool?.unread ?? 0) > 0 || pipe.backlog { readIngress(pipe, budget: 4) }
                case .egress(let index):
                    let pipe = egress[index]
                    if revents & (POLLERR | POLLHUP) != 0 && pipe.fd >= 0 {
                        consumerGone(pipe, reason: "the reader went away")
                    }
                case .metricsListener:
                    if revents != 0 { metrics?.accept() }
                case .metricsClient(let fd):
                    if revents != 0 { metrics?.respond(fd) { self.metricsText() } }
                }
            }
            // Removed or replaced pipes are read without waiting for POLLIN (an empty pipe with a writer never
            // becomes readable) and closed once empty at a frame boundary.
            draining.removeAll { pipe in
                guard readIngress(pipe, budget: 64) else { return false }
                close(pipe.fd)
                pipe.fd = -1
                logger.info("drained and closed a removed ingress pipe", metadata: ["pipe": "\(pipe.name)"])
                return true
            }
            flushAll()
            housekeeping(now: monotonicNanos())
        }
    }

    func reloadLayout(_ reload: () throws -> RouterLayout) {
        do {
            let new = try reload()
            install(new)
            counters.reloads += 1
            logger.info("reloaded", metadata: ["revision": "\(new.revision)"])
        } catch {
            counters.failedReloads += 1
            counters.lastReloadError = "\(error)"
            logger.error(
                "reload failed; the current revision keeps serving",
                metadata: ["revision": "\(layout.revision)", "error": "\(error)"])
        }
        writeStatus(force: true)
    }

    /// Timers: probes of down instances, stall checks, pipes deleted or replaced underneath, spool
    /// checkpoints, the status file.
    func housekeeping(now: UInt64) {
        for pipe in egress {
            if pipe.fd < 0 {
                if now >= pipe.nextProbe { probe(pipe, now: now) }
            } else {
                checkProgress(pipe, now: now)
            }
        }
        if now - lastCheck >= UInt64(options.checkInterval * 1e9) {
            lastCheck = now
            checkPipes()
        }
        if now - lastCheckpoint >= 50_000_000 {
            lastCheckpoint = now
            checkpointSpools()
        }
        writeStatus(force: false)
    }

    /// Writes every spool's watermark; truncates those fully delivered.
    func checkpointSpools() {
        var pending = [Int](repeating: 0, count: spools.count)
        for pipe in ingress + draining where pipe.spoolIndex >= 0 && pipe.spool != nil {
            pending[Int(pipe.spoolIndex)] += pipe.buffer.pending
        }
        for (index, spool) in spools.enumerated() { spool?.checkpoint(pendingBytes: pending[index]) }
    }

    /// A pipe deleted under the router, or replaced behind its back: ingress pipes are reopened (the old inode
    /// drained), egress pipes closed (their frames go elsewhere) and probed again.
    func checkPipes() {
        for pipe in ingress where pipe.buffer.pending == 0 && !pipe.backlog && (pipe.spool?.unread ?? 0) == 0 {
            pipe.buffer.shrinkIfIdle()  // an idle pipe costs no memory
        }
        for pipe in ingress {
            guard let file = try? root.stat(pipe.name), file.kind == .fifo else {
                if !pipe.missing {
                    logger.error("ingress pipe deleted underneath; run pmm apply to restore it", metadata: ["pipe": "\(pipe.name)"])
                }
                pipe.missing = true
                pipe.lastError = "missing"
                continue
            }
            if pipe.fd < 0 {
                openIngress(pipe)
            } else if file.inode != pipe.inode || file.device != pipe.device {
                logger.warning("ingress pipe replaced underneath; following the new one", metadata: ["pipe": "\(pipe.name)"])
                switchToNewInode(pipe)
            } else if pipe.missing {
                pipe.missing = false
            }
        }
        for pipe in egress where pipe.fd >= 0 {
            if let file = try? root.stat(pipe.name), file.inode == pipe.inode, file.device == pipe.device { continue }
            consumerGone(pipe, reason: "its pipe was deleted or replaced underneath")
        }
    }

    // MARK: Stopping

    /// Stops reading, completes frames half read, writes what is queued until the drain timeout, closes.
    func stop() -> RouterExit {
        logger.info("stopping: draining queued frames", metadata: ["timeout": "\(options.drainTimeout)s"])
        let deadline = monotonicNanos() + UInt64(options.drainTimeout * 1e9)
        // Finish frames already half read, so the pipe is left at a frame boundary.
        for pipe in ingress + draining where pipe.fd >= 0 && pipe.buffer.pending > 0 && pipe.spool == nil {
            pipe.draining = true
            while pipe.buffer.pending > 0 && monotonicNanos() < deadline {
                var fds = [pollfd(fd: pipe.fd, events: Int16(POLLIN), revents: 0)]
                _ = poll(&fds, 1, 50)
                readIngress(pipe, budget: 1)
            }
        }
        while monotonicNanos() < deadline {
            flushAll()
            let now = monotonicNanos()
            for pipe in egress where pipe.fd < 0 && now >= pipe.nextProbe && pipe.queue.count > 0 { probe(pipe, now: now) }
            if waitingFrames == 0 { break }
            var fds = egress.filter { $0.fd >= 0 && $0.queue.unwrittenBytes > 0 }.map { pollfd(fd: $0.fd, events: Int16(POLLOUT), revents: 0) }
            _ = poll(&fds, nfds_t(fds.count), 20)
        }
        let undelivered = waitingFrames
        if undelivered > 0 {
            let spooled = spools.isEmpty ? "" : " (at-least-once frames stay in the spool for the next router)"
            logger.error("stopped with frames undelivered\(spooled)", metadata: ["frames": "\(undelivered)"])
        }
        checkpointSpools()
        writeStatus(force: true, stopping: true)
        for pipe in ingress + draining where pipe.fd >= 0 { close(pipe.fd) }
        for pipe in egress where pipe.fd >= 0 { close(pipe.fd) }
        logger.info("stopped")
        return .stopped(undelivered: undelivered)
    }

    /// Frames routed and not yet written anywhere.
    var waitingFrames: Int {
        egress.reduce(0) { $0 + $1.queue.count } + routes.values.reduce(0) { $0 + $1.parked.count }
    }
}

/// A small, fast PRNG for weighted choice (SplitMix64). Not for secrets.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        return ShardHash.mix(state &- 0x9e37_79b9_7f4a_7c15)
    }
}
