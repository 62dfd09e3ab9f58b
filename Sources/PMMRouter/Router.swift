import Foundation
import Glibc
import Logging
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
    /// Router workers (threads), each routing a share of the data types (`RouterGroup`); nil: one per core.
    public var workers: Int?
    /// When a busy at-most-once ingress pipe is peeked and its frames moved with splice(2) (`peekIngress`).
    public var splice: SpliceMode = .auto

    public init() {}

    var core: RouterCoreOptions {
        var core = RouterCoreOptions()
        core.maximumFrameSize = maximumFrameSize
        core.readSize = readSize
        core.stallTimeout = UInt64(stallTimeout * 1e9)
        core.memoryLimit = memoryLimit
        core.spoolLimit = spoolLimit
        core.drainGrace = UInt64(max(drainTimeout, 1) * 1e9)
        // `always` moves every run it can, however short, so that small test traffic takes the splice path.
        if splice == .always { core.minimumSplice = 1 }
        return core
    }
}

/// When the router moves frames from an ingress pipe, or from an at-least-once pipe's spool file, into a
/// consumer's pipe with splice(2) instead of writing them from its queue.
public enum SpliceMode: String, Sendable, CaseIterable {
    /// At-most-once ingress pipes that are busy (the last read or peek found a run's worth, 64 KiB or more), and
    /// runs of 64 KiB or more read back from a spool.
    case auto
    /// Every read of an at-most-once ingress pipe, and runs of any length (for tests: small traffic takes the
    /// same path).
    case always
    /// Never: read(2) and write(2) only.
    case never
}

/// Why the router stopped.
public enum RouterExit: Sendable, Equatable {
    /// SIGTERM or SIGINT: drained and stopped. `undelivered` frames were still queued at the deadline.
    case stopped(undelivered: Int)
}

/// The data plane's shell: one thread, one epoll loop that turns readiness, reads, writes and timers into
/// events for the `RouterCore` and performs the actions it returns (DESIGN.md, "Routing", "Flow control and
/// delivery").
///
/// Every decision (where a frame goes, when an instance is down or stalled, what waits, what is dead-lettered)
/// is the core's; this class owns every descriptor and does the system calls. Many frames per read(2), one
/// write(2) per egress pipe per batch, no lock and no task hop per frame. Frames are forwarded byte for byte.
///
/// A reload (SIGHUP) or stop (SIGTERM) is acted on between passes, never inside one, and pipes are named
/// by the core's `PipeID`s, so a pass never reaches a pipe through a stale index.
///
/// Not thread-safe: `run` owns the object until it returns.
public final class Router {
    let options: RouterOptions
    let logger: Logger
    var core: RouterCore
    let root: PipeRoot
    /// Opens, creations and removals in the root (inotify): a consumer that opens its egress pipe is probed at
    /// once, a pipe deleted or replaced is noticed at once.
    let watch: RootWatch?
    /// Every descriptor the loop waits on, registered once (an idle pipe costs nothing per pass).
    let epoll: Epoll
    /// Read descriptors of ingress pipes, by the core's identifier.
    var ingressFDs: [PipeID: Held] = [:]
    /// Write descriptors of egress pipes (present while a reader is there).
    var egressFDs: [PipeID: Held] = [:]
    /// Ingress pipes that need a look on every pass without an event of their own: frames buffered unrouted,
    /// spooled bytes to read back, or readiness switched off because the core does not want them read now (a
    /// rate pause, the memory limit, a blocked route): level-triggered epoll would otherwise wake at once.
    var attention = PipeList()
    /// Removed or replaced ingress pipes still being drained: read on every pass (an empty pipe whose writer
    /// is still there never becomes readable, and they close only once read empty at a frame boundary).
    var drainingIngress = PipeList()
    /// Names inotify reported created, deleted or moved, checked at the next housekeeping.
    var changedNames: Set<String> = []
    var checkEverything = false
    /// The core's timers are looked at (O(pipes)) when one is due, when the core's epoch moved, or every
    /// `sweepInterval` at the latest; not on every pass.
    var nextTimer: UInt64 = 0
    var nextSweep: UInt64 = 0
    /// Set by the flushes since the last `flushAll` began: how soon an egress pipe that waits for room by the
    /// router's count, with a reader not seen reading (so without EPOLLOUT), is looked at again.
    var roomPoll: UInt64?
    var sweptEpoch: UInt64 = .max
    /// Spool files by ingress pipe name.
    var spoolFiles: [String: SpoolFile] = [:]
    let deadLetters: DeadLetterSpool?
    var metrics: MetricsEndpoint?
    let routerMetrics = RouterMetrics()
    var startedAt = Date()
    var lastStatus: UInt64 = 0
    /// What the status file last written showed (`statusSignature`), and whether any rate in it was not 0.
    var writtenStatus: (signature: Int, hadRates: Bool) = (0, true)
    var lastCheck: UInt64 = 0
    var lastCheckpoint: UInt64 = 0
    /// The core's `spoolRevision` at the last checkpoint: idle spools are not looked at.
    var checkpointedSpools: UInt64 = .max
    var shellCounters = ShellCounters()
    /// The private pipe through which busy ingress pipes are peeked (nil: none could be made; they are read).
    lazy var peekPipe: PeekPipe? = options.splice == .never ? nil : PeekPipe(capacity: options.readSize)
    var rates: [PipeID: (frames: UInt64, rate: Double)] = [:]
    var linkRates: [String: (frames: UInt64, rate: Double)] = [:]
    /// Nanoseconds to add to the monotonic clock for the wall clock (for status timestamps).
    let wallOffset: Int64
    /// The node this router serves in a multi-node mesh (nil: one host).
    public var servedNode: String? { core.layout.node }

    /// This router's place in a `RouterGroup` of several workers; nil: the only one.
    let seat: Seat?
    /// The board version worker 0 last wrote to the status file.
    var mergedVersion: UInt64 = .max

    /// A worker's place in a group: its index, where it publishes its status, and which spools of pipes no
    /// revision names any more are its to deliver.
    struct Seat: Sendable {
        let index: Int
        let board: StatusBoard
        let adopts: @Sendable (String) -> Bool
    }
    /// The links to the other nodes' routers (a multi-node mesh), or nil.
    var links: LinkManager?
    /// The health last told to the peers, and the core's epoch it was looked at.
    var announcedHealth: [String: Bool] = [:]
    var announcedEpoch: UInt64 = .max
    /// When frames from other nodes were last received or acknowledged (monotonic nanoseconds).
    var lastLinkProgress: UInt64 = 0

    /// A descriptor and the inode it was opened on.
    struct Held {
        var fd: FileDescriptor
        var inode: UInt64
        var device: UInt64
        /// Ingress: EPOLLIN is on. Egress: EPOLLOUT is on (a write found the pipe full).
        var armed: Bool
        /// Egress: how much the pipe may hold (its capacity, F_GETPIPE_SZ, and a bound kept between asks).
        var occupancy = PipeOccupancy(capacity: 0)
        /// Egress: when its reader was last seen reading (or the pipe opened).
        var readAt: UInt64 = 0
        /// Egress: the end of its queue (`FrameQueue.endOffset`) when it was last flushed; frames queued since
        /// (by `housekeeping`, after the pass's flush) make the next wait return at once.
        var flushedEnd = -1
        /// Ingress: the last read or peek found a run's worth of bytes (the pipe is busy: peek it, see
        /// `peekIngress`).
        var busy = false
        /// Ingress: reads left before the next peek, after a peek in which no run could move (`Int.max`: tee(2)
        /// refused this pipe).
        var peekPause = 0
        /// Ingress: after a look or a spool read-back whose run to one consumer could not move (its queue held
        /// older frames, or its pipe lacked room), that egress slot and since when: the pipe is not looked at or
        /// read back again until the queue is written out (`waitsForSplice`; an at-least-once pipe still moves
        /// into its spool meanwhile, `spoolWhileWaiting`).
        var waitsFor: (egress: Int, since: UInt64)?

        /// Ingress: a read(2) returned `count` (-1: nothing). One read less to wait before the next peek.
        mutating func readFound(_ count: Int, busyAt minimum: Int) {
            busy = count >= minimum
            if peekPause > 0 && peekPause < .max { peekPause -= 1 }
        }
    }

    /// Identifiers in the order they joined, each once.
    struct PipeList {
        var ids: [PipeID] = []
        var members: Set<PipeID> = []
        var isEmpty: Bool { ids.isEmpty }
        mutating func insert(_ id: PipeID) {
            if members.insert(id).inserted { ids.append(id) }
        }
        /// Empties the list and returns what it held (to visit it while the list may be added to).
        mutating func take() -> [PipeID] {
            guard !ids.isEmpty else { return [] }
            defer {
                ids = []
                members.removeAll(keepingCapacity: true)
            }
            return ids
        }
        mutating func removeAll() {
            ids.removeAll(keepingCapacity: true)
            members.removeAll(keepingCapacity: true)
        }
    }

    /// What an epoll token names: the kind in the top byte, a `PipeID` or a descriptor below it.
    enum Token {
        static let signal: UInt64 = 1 << 56
        static let watch: UInt64 = 2 << 56
        static let links: UInt64 = 3 << 56
        static let ingress: UInt64 = 4 << 56
        static let egress: UInt64 = 5 << 56
        static let metricsListener: UInt64 = 6 << 56
        static let metricsClient: UInt64 = 7 << 56
        static let kind: UInt64 = 0xff << 56
    }

    struct ShellCounters {
        /// Undeliverable frames with no dead-letter spool to keep them.
        var dropped: UInt64 = 0
        var failedReloads: UInt64 = 0
        var lastReloadError: String?
        /// Bytes moved into egress pipes with splice(2): from ingress pipes, and from spool files.
        var splicedBytes: UInt64 = 0
        /// Of those, the bytes moved from spool files (at-least-once).
        var splicedFromSpoolBytes: UInt64 = 0
    }

    /// - Parameters:
    ///   - layout: what to route, from the applied revision.
    ///   - seat: its place in a group of workers, if it is one of several.
    init(layout: RouterLayout, options: RouterOptions = RouterOptions(), logger: Logger, seat: Seat? = nil) throws(FIFOError) {
        self.options = options
        self.logger = logger
        self.seat = seat
        guard let root = try PipeRoot.open(layout.root) else {
            throw FIFOError(.systemCall, path: layout.root, "the pipe root does not exist", hint: "run pmm apply first")
        }
        self.root = root
        let descriptors = raiseDescriptorLimit()
        if descriptors < layout.ingress.count + layout.egress.count + 64 {
            logger.warning(
                "the limit on open descriptors is below the mesh's pipes; some pipes will fail to open",
                metadata: ["limit": "\(descriptors)", "pipes": "\(layout.ingress.count + layout.egress.count)"])
        }
        watch = RootWatch(directory: layout.root)
        epoll = try Epoll()
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
        // Spools of pipes this layout no longer names at least once (a crash after an apply removed them, or
        // made their type at-most-once) are read back too.
        if let directory = options.spoolDirectory, let names = try? FileManager.default.contentsOfDirectory(atPath: directory) {
            let live = layout.spooledIngress
            let adopts = seat?.adopts ?? { !live.contains($0) }
            for name in names.sorted() where name.hasSuffix(".spool") {
                let pipe = String(name.dropLast(".spool".count))
                guard adopts(pipe), let (file, ledger) = try? SpoolFile.open(directory: directory, pipe: pipe, source: nil) else { continue }
                if core.adoptSpool(ledger, now: now) {
                    // Opened without a source: its ledger ends with a change of source, which SpoolFile.open has
                    // written to the mark.
                    spoolFiles[pipe] = file
                    logger.notice(
                        "replaying the spool of a pipe this revision does not spool (removed, or its type made at-most-once)",
                        metadata: ["pipe": "\(pipe)", "bytes": "\(ledger.live)"])
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

    /// Runs until SIGTERM or SIGINT arrives on `signals`; SIGHUP calls `reload` and installs its layout.
    ///
    /// Each pass waits on epoll for what is ready (descriptors are registered once, when opened), reads the
    /// ingress pipes that are readable, writes the egress pipes that got frames, and looks at the core's timers.
    /// Work per pass follows what moved, not the size of the mesh; only a sweep every `sweepInterval` touches
    /// every pipe.
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
        // A worker of a group leaves it to the group, once every worker serves.
        if seat == nil {
            do { try ServiceManager.notifyReady() } catch { logger.warning("cannot tell the service manager the router is ready: \(error)") }
        }
        startLoop(signals: signals)
        while true {
            let asked = pass(timeout: waitTimeout(now: monotonicNanos()), signals: signals)
            if asked.stop { return stop() }
            if asked.reload { reloadLayout(reload) }
        }
    }

    /// Registers the loop's own descriptors (the signal pipe, the root's watch, links, metrics) and looks at
    /// every ingress pipe once.
    func startLoop(signals: SignalPipe?) {
        if let signals { epoll.add(signals.readFD, interest: Epoll.readable, token: Token.signal) }
        if let watch { epoll.add(watch.fd, interest: Epoll.readable, token: Token.watch) }
        if let links { epoll.add(links.wakeDescriptor, interest: Epoll.readable, token: Token.links) }
        if let metrics { epoll.add(metrics.listener, interest: Epoll.readable, token: Token.metricsListener) }
        rescanIngress()
    }

    /// One pass of the loop: waits on epoll up to `timeout` milliseconds, handles what is ready, reads the
    /// ingress pipes that want it, writes the egress pipes that got frames, and looks at the core's timers.
    /// Returns whether a signal asked to reload or to stop.
    func pass(timeout: Int32, signals: SignalPipe?) -> (reload: Bool, stop: Bool) {
        var reloadRequested = false
        var stopRequested = false
        let ready = epoll.wait(timeout: timeout) { event in
            let value = event.token & ~Token.kind
            switch event.token & Token.kind {
            case Token.signal:
                for signal in signals?.drain() ?? [] {
                    switch signal {
                    case .reload: reloadRequested = true
                    case .stop: stopRequested = true
                    }
                }
            case Token.watch:
                watchChanged()
            case Token.ingress:
                ingressReady(PipeID(raw: UInt32(truncatingIfNeeded: value)))
            case Token.egress:
                let id = PipeID(raw: UInt32(truncatingIfNeeded: value))
                guard let slot = core.egressSlot(id) else { return }
                if event.failed {
                    egressFailed(slot, reason: "the reader went away")
                } else if event.writable {
                    flush(slot)
                }
            case Token.metricsListener:
                for client in metrics?.accept() ?? [] {
                    epoll.add(client, interest: Epoll.readable, token: Token.metricsClient | UInt64(UInt32(bitPattern: client)))
                }
            case Token.metricsClient:
                metrics?.respond(Int32(bitPattern: UInt32(truncatingIfNeeded: value))) { self.metricsText(of: self.routerWideStatus) }
            default:
                break  // links: drained by pumpLinks, every pass
            }
        }
        if ready < 0 { logger.critical("epoll_wait failed", metadata: ["errno": "\(errno)"]) }
        serviceAttention()
        // Removed or replaced pipes are read without waiting for readiness, once per pass, and closed once
        // empty at a frame boundary.
        for id in drainingIngress.take() {
            guard let slot = core.ingressSlot(id), core.ingress[slot].draining else { continue }
            readIngress(slot, budget: 16)
            if core.ingressSlot(id) != nil { drainingIngress.insert(id) }
        }
        // Links before the pipes: what this pass routed to other nodes goes out now, and what came from them
        // is written to its pipes in this pass's flush, not the next one's.
        pumpLinks(now: monotonicNanos())
        flushAll()
        housekeeping(now: monotonicNanos())
        if let seat, seat.index == 0, seat.board.version != mergedVersion { writeMergedStatus(force: false) }
        return (reloadRequested, stopRequested)
    }

    /// Asks the core `query` in place. A core method the compiler cannot see into, called on the stored
    /// property, makes it copy the whole core first (a retain and release of each of its arrays), since the call
    /// might change the property under it; exclusive (inout) access lends the core without a copy.
    @inline(__always)
    func inPlace<R>(_ query: (inout RouterCore) throws -> R) rethrows -> R { try query(&core) }

    /// How long the next wait may last: not at all while buffered frames wait to be routed or queued frames
    /// wait for their pipe's first flush, else until the earliest timer (a paused pipe, a probe, a sweep,
    /// frames of other nodes to acknowledge), 100 ms at most.
    func waitTimeout(now: UInt64) -> Int32 {
        var wake = min(nextTimer, nextSweep, now + 100_000_000)
        if inPlace({ $0.awaitsLinkCompletions }) { wake = min(wake, now + linkCompletionPoll(now: now)) }
        if let roomPoll { wake = min(wake, now + roomPoll) }
        for id in attention.ids {
            guard let slot = core.ingressSlot(id) else { continue }
            if waitsForSplice(id, now: now), let since = ingressFDs[id]?.waitsFor?.since {
                // Waiting for a queue: its writes wake the loop, and the wait ends by then. (Asked, not read off
                // `waitsFor`: a wait that ended while the core did not want the pipe read, so that nothing asked,
                // would set the wake in the past, and the loop would spin.)
                wake = min(wake, since + Self.spliceWait)
            } else if inPlace({ $0.wantsToRead(slot, now: now) }) && (inPlace({ $0.hasBufferedWork(slot) }) || ingressFDs[id]?.armed == false) {
                // Buffered work, or a pipe switched off while it waited for a queue that this pass's flush wrote
                // out (after `serviceAttention` kept it off): the next pass switches it on and reads it. Sleeping
                // instead left a full pipe unread until the 100 ms timeout, its producer blocked (4 KB frames
                // met it several times a run).
                return 0
            }
            let paused = core.ingress[slot].pausedUntil
            if paused > now { wake = min(wake, paused) }
        }
        var index = 0
        while index < core.activeEgress.count {
            let slot = core.activeEgress[index]
            index += 1
            // Frames queued after this pass's flush, by `housekeeping` (its timers and pipe checks: a probe that
            // opened the pipe of a consumer that came back queues the frames held for it): the next pass writes
            // them. Sleeping instead left them until the next timer, up to 100 ms, unless something else happened
            // to wake the loop (the router's own open of a pipe is an inotify event).
            if core.hasUnwritten(slot) && egressFDs[core.egress[slot].id]?.flushedEnd != core.egress[slot].queue.endOffset { return 0 }
        }
        return wake <= now ? 0 : Int32(clamping: (wake - now + 999_999) / 1_000_000)
    }

    /// How long the router may sleep while frames from other nodes wait to be read by their consumers here.
    /// Nothing wakes it when a consumer reads a pipe that was not full, and the sender's window stays closed
    /// until the frames are acknowledged, so it looks every millisecond while they are being read; once nothing
    /// was read for 200 ms (a consumer that stopped), every 50 ms. (Doubling the wait after each look without
    /// progress was tried: on a busy machine a consumer thread not scheduled for a few milliseconds pushed the
    /// wait to its ceiling, and the link idled: 4 KB frames across 90,000 msg/s instead of 120,000.)
    func linkCompletionPoll(now: UInt64) -> UInt64 {
        now &- lastLinkProgress < 200_000_000 ? 1_000_000 : 50_000_000
    }

    /// An ingress pipe is readable: read it if the core wants it read, else switch its readiness off until the
    /// core does (`serviceAttention`).
    func ingressReady(_ id: PipeID) {
        guard let slot = core.ingressSlot(id) else { return }
        let now = monotonicNanos()
        if inPlace({ $0.wantsToRead(slot, now: now) }) && (!waitsForSplice(id, now: now) || spoolWhileWaiting(slot, id: id)) {
            readIngress(slot, budget: 4)
            if let slot = core.ingressSlot(id), inPlace({ $0.hasBufferedWork(slot) }) { attention.insert(id) }
        } else {
            armIngress(id, false)
            attention.insert(id)
        }
    }

    /// Ingress pipes in `attention`: buffered work is done when the core allows it, readiness switched back on
    /// when it wants the pipe read again; a pipe leaves once it has neither.
    func serviceAttention() {
        for id in attention.take() {
            guard let slot = core.ingressSlot(id) else { continue }
            let now = monotonicNanos()
            guard inPlace({ $0.wantsToRead(slot, now: now) }) && !waitsForSplice(id, now: now) else {
                attention.insert(id)
                continue
            }
            if ingressFDs[id]?.armed == false { armIngress(id, true) }
            if inPlace({ $0.hasBufferedWork(slot) }) { readIngress(slot, budget: 4) }
            guard let slot = core.ingressSlot(id) else { continue }
            if inPlace({ $0.hasBufferedWork(slot) }) || ingressFDs[id]?.armed == false { attention.insert(id) }
        }
    }

    /// Watches ingress `id` for reading again, or stops watching it. Off means out of the epoll set, not
    /// interest 0: a pipe whose writer left reports EPOLLHUP whatever the interest, and would wake every wait.
    func armIngress(_ id: PipeID, _ on: Bool) {
        guard let held = ingressFDs[id], held.armed != on else { return }
        if on {
            epoll.add(held.fd.rawValue, interest: Epoll.readable, token: Token.ingress | UInt64(id.raw))
        } else {
            epoll.remove(held.fd.rawValue)
        }
        ingressFDs[id]?.armed = on
    }

    /// Switches EPOLLOUT of egress `id` on (a write found the pipe full) or off. Errors and hang-ups are
    /// reported either way.
    func armEgress(_ id: PipeID, _ on: Bool) {
        guard let held = egressFDs[id], held.armed != on else { return }
        epoll.modify(held.fd.rawValue, interest: on ? Epoll.writable : 0, token: Token.egress | UInt64(id.raw))
        egressFDs[id]?.armed = on
    }

    /// Looks at every ingress pipe once (after the layout changed): which have buffered work or are draining.
    func rescanIngress() {
        attention.removeAll()
        drainingIngress.removeAll()
        for slot in core.ingress.indices {
            let id = core.ingress[slot].id
            ingressFDs[id]?.waitsFor = nil  // egress slots may have moved
            if core.ingress[slot].draining { drainingIngress.insert(id) }
            if inPlace({ $0.hasBufferedWork(slot) }) || ingressFDs[id]?.armed == false { attention.insert(id) }
        }
    }

    /// inotify: opens wake probes of instances that are down; creations, removals and renames are checked at
    /// the next housekeeping.
    func watchChanged() {
        guard let changes = watch?.drain() else { return }
        let now = monotonicNanos()
        for name in changes.opened where name.hasSuffix(".out") {
            core.egressOpenedByReader(named: name, now: now)
            nextTimer = now
        }
        changedNames.formUnion(changes.changed)
        if changes.overflowed {
            logger.notice("the root's inotify queue overflowed; checking every pipe")
            checkEverything = true
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
        acknowledgeAll(now: now, everyPipe: true)
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
        rescanIngress()
    }

    /// Timers: consumers' progress (acknowledgements, stalls), probes, pipes deleted or replaced underneath,
    /// spool checkpoints, the status file.
    func housekeeping(now: UInt64) {
        acknowledgeAll(now: now)
        if now >= nextTimer || now >= nextSweep || core.epoch != sweptEpoch || !drainingIngress.isEmpty {
            core.tick(now: now)
            performActions()
            if now >= nextSweep {
                nextSweep = now + Self.sweepInterval
                for slot in core.ingress.indices where core.ingress[slot].pendingBytes == 0 {
                    core.shrinkIfIdle(slot)  // an idle pipe costs no memory
                }
            }
            nextTimer = core.nextWake(after: now) ?? .max
            sweptEpoch = core.epoch
        }
        let fullCheck = watch == nil ? options.checkInterval : max(options.checkInterval, Self.watchedCheckInterval)
        if checkEverything || now - lastCheck >= UInt64(fullCheck * 1e9) {
            lastCheck = now
            checkEverything = false
            changedNames = []
            checkPipes(now: now)
        } else if !changedNames.isEmpty {
            let names = changedNames
            changedNames = []
            checkPipes(now: now, only: names)
        }
        if core.spoolRevision != checkpointedSpools && now - lastCheckpoint >= 50_000_000 {
            lastCheckpoint = now
            checkpointSpools()
            checkpointedSpools = core.spoolRevision
        }
        tellPeers()
        writeStatus(force: false)
    }

    /// How often the core's timers are looked at when none is due and nothing changed (they cost O(pipes)).
    /// Every timer the core sets is either seen then (a probe's backoff: set with a change of epoch, or by a
    /// probe in the sweep itself) or by the shell on its own (a paused pipe is in `attention`), so this is a
    /// safety net, not a clock.
    static let sweepInterval: UInt64 = 1_000_000_000
    /// With inotify watching the root, every pipe's inode is still checked this often (seconds), in case an
    /// event was missed.
    static let watchedCheckInterval: Double = 30

    /// Tells the core how much the pipes of instances that await progress still hold (FIONREAD); instances
    /// with nothing queued and nothing unread are not asked, nor (unless `everyPipe`) a pipe asked less than
    /// `PipeOccupancy.progressInterval` ago, or one that surely holds nothing: FIONREAD waits for the pipe's
    /// mutex, which a reader holds while it copies (see `PipeOccupancy`).
    func acknowledgeAll(now: UInt64, everyPipe: Bool = false) {
        var index = 0
        while index < core.activeEgress.count {
            let slot = core.activeEgress[index]
            index += 1
            let id = core.egress[slot].id
            guard let held = egressFDs[id], everyPipe || held.occupancy.wantsProgress(now: now) else { continue }
            askEgress(slot, id: id, fd: held.fd, now: now)
        }
        core.settleActiveEgress()
        performActions()
    }

    /// Asks egress `slot`'s pipe what it holds, and tells the core (what was read: progress, acknowledgements).
    func askEgress(_ slot: Int, id: PipeID, fd: FileDescriptor, now: UInt64) {
        let unread = unreadBytes(fd)
        if egressFDs[id]?.occupancy.asked(unread: unread, now: now) == true { egressFDs[id]?.readAt = now }
        core.egressUnread(slot, unread: unread, now: now)
    }

    /// Writes every spool's watermark; frees what is delivered.
    func checkpointSpools() {
        for slot in core.ingress.indices where core.ingress[slot].spool >= 0 && !core.ingress[slot].draining {
            if let held = ingressFDs[core.ingress[slot].id], let pipe = core.spoolPipe(of: slot) { spoolFiles[pipe]?.source = held.inode }
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
    ///
    /// - Parameter only: the names to check (inotify saw them change); nil checks every pipe.
    func checkPipes(now: UInt64, only names: Set<String>? = nil) {
        var replaced: Set<String> = []
        for slot in core.ingress.indices where !core.ingress[slot].draining {
            let pipe = (id: core.ingress[slot].id, name: core.ingress[slot].name)
            if let names, !names.contains(pipe.name) { continue }
            guard let file = try? root.stat(pipe.name), file.kind == .fifo else {
                core.ingressUnavailable(pipe.id, missing: true, error: "missing")
                continue
            }
            guard let held = ingressFDs[pipe.id] else {
                openIngress(pipe.id, name: pipe.name, pipeSize: core.ingress[slot].spec.pipeSize)
                continue
            }
            if file.inode != held.inode || file.device != held.device {
                logger.warning("ingress pipe replaced underneath; following the new one", metadata: ["pipe": "\(pipe.name)"])
                replaced.insert(pipe.name)
            }
        }
        for slot in core.egress.indices {
            let id = core.egress[slot].id
            guard let held = egressFDs[id] else { continue }
            let name = core.egress[slot].name
            if let names, !names.contains(name) { continue }
            if let file = try? root.stat(name), file.inode == held.inode, file.device == held.device { continue }
            egressFailed(slot, reason: "its pipe was deleted or replaced underneath")
        }
        if !replaced.isEmpty {
            core.install(core.layout, replacedIngress: replaced, now: now, isReload: false)
            performActions()
            rescanIngress()
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
@inline(__always)
func unreadBytes(_ fd: FileDescriptor) -> Int { PMMSystem.unreadBytes(fd.rawValue) }

/// F_SETPIPE_SZ / F_GETPIPE_SZ: `_GNU_SOURCE`-only in Glibc, so not imported into Swift (SWIFT-NOTES §2).
let F_SETPIPE_SZ: Int32 = 1031
let F_GETPIPE_SZ: Int32 = 1032

/// The capacity of the pipe behind `fd`, in bytes (64 KiB when the kernel will not say).
func pipeCapacity(_ fd: FileDescriptor) -> Int {
    let size = fcntl(fd.rawValue, F_GETPIPE_SZ)
    return size > 0 ? Int(size) : 65_536
}
