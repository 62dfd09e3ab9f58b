public import PMMCore
import PMMWire

/// Settings of the router core that are not in the spec.
public struct RouterCoreOptions: Sendable {
    /// The largest frame accepted on an ingress pipe, length prefix included. Larger ones reset that pipe.
    public var maximumFrameSize: Int = 1 << 20
    /// Bytes read from one ingress pipe per read(2).
    public var readSize: Int = 256 << 10
    /// A consumer that reads nothing for this long (ns) while its pipe holds data is stalled.
    public var stallTimeout: UInt64 = 5_000_000_000
    /// Bytes the router may hold in queues (frames routed and not yet read by their consumer, and frames
    /// waiting for a healthy instance). At the limit no ingress pipe is read: producers are held back.
    public var memoryLimit: Int = 256 << 20
    /// Bytes the at-least-once spools may hold that are not yet delivered, all pipes together. At the limit
    /// at-least-once pipes are not read (their producers are held back); the disk holds no more than this.
    public var spoolLimit: Int64 = 1 << 30
    /// A removed ingress pipe whose writers left half a frame is given this long (ns), then the partial frame
    /// is dead-lettered and the pipe closed.
    public var drainGrace: UInt64 = 5_000_000_000
    /// Probing a consumer instance that has no reader backs off from the first to the second (ns).
    public var probeBackoff: (first: UInt64, limit: UInt64) = (50_000_000, 1_000_000_000)
    /// A run of frames from a peeked ingress pipe to one consumer shorter than this is written from its queue
    /// rather than moved between the pipes with splice(2) (each splice is a system call of its own).
    public var minimumSplice: Int = 64 << 10
    /// Breaks the core on purpose, for the simulation's proof that it catches such breaks. Never set outside
    /// the tests.
    package var sabotage: Sabotage?

    public init() {}
}

/// Defects the simulation must catch (SIMULATION.md, "Prove the simulator can fail").
package enum Sabotage: String, Sendable, CaseIterable {
    /// One frame in a thousand is silently not queued.
    case dropOneInAThousand
    /// A consumer's death closes its pipe but does not route its unread frames elsewhere.
    case forgetRerouteOnEPIPE
    /// A reload keeps each ingress pipe's old route index.
    case staleRouteIndexAfterReload
    /// A frame counts as delivered (for the spool) when written, not when read.
    case completeAtWrite
    /// An egress a reload takes away (a lease ended, a replica removed) drops what its reader had not read.
    case forgetRerouteOnRemovedEgress
    /// A link that drops forgets the at-least-once frames its peer had not acknowledged.
    case forgetRerouteOnLinkDrop
    /// A peer's acknowledgements are ignored: frames sent over a link are never done.
    case ignoreLinkAcknowledgements
    /// A peeked run may move into its consumer's pipe even when frames queued before it are not written yet.
    case spliceOutOfTurn

    /// Breaks only a multi-node mesh can show (CrossNodeTests catches them, not the one-host simulation).
    package var needsLinks: Bool { self == .forgetRerouteOnLinkDrop || self == .ignoreLinkAcknowledgements }
}

/// The router's decisions as a state machine: no syscalls, no clock, no randomness of its own.
///
/// The shell (PMMRouter's `Router`) turns `poll(2)` results, reads, writes and timers into events, calls the
/// matching method, and performs the `actions` the core appends (open, close, dead-letter, notices). Bytes move
/// without copies: the shell reads an ingress pipe straight into the core's frame buffer (`withReadSpace`) and
/// writes an egress pipe straight from the core's queue (`withUnwritten`).
///
/// Rules:
/// - Pipes are named by `PipeID`, never reused: an event about a pipe a reload removed is ignored.
/// - Routes are resolved when a layout is installed: per frame, an index, not a String lookup.
/// - Every frame accepted from an ingress pipe is, at every moment, in exactly one place: an egress queue, a
///   route's waiting queue, or done (read whole by a consumer, dead-lettered, or dropped and counted). An
///   at-least-once frame is done for its spool only when read whole, dead-lettered, or dropped by policy.
/// - Memory: bytes in queues stay within `memoryLimit` plus one read; spools within `spoolLimit` plus one read.
///
/// The same inputs always give the same actions (`seed` feeds the weighted choice), which is what the
/// simulation relies on. Not thread-safe: one owner.
public struct RouterCore: Sendable {
    public let options: RouterCoreOptions
    public internal(set) var layout: RouterLayout
    public internal(set) var ingress: [Ingress] = []
    public internal(set) var egress: [Egress] = []
    public internal(set) var routes: [Route] = []
    public internal(set) var spools: [SpoolLedger?] = []
    public internal(set) var counters = Counters()
    /// The other nodes' routers (a multi-node mesh), in the order they were first installed.
    public internal(set) var peers: [Peer] = []
    /// Bytes the egress and waiting queues' segments take (`FrameQueue.footprint`): the frames they hold and
    /// acknowledged bytes whose segment is not freed yet. `memoryLimit` bounds this.
    public internal(set) var heldBytes = 0
    /// Bytes of every spool not yet done (what a crash would replay), kept in step with the ledgers.
    public internal(set) var spoolLive: Int64 = 0
    /// Goes up whenever a spool ledger changes: the shell checkpoints the spools only when it moved.
    public internal(set) var spoolRevision: UInt64 = 0
    /// Goes up whenever the layout or an instance's availability changes (for stickiness checks).
    public internal(set) var epoch: UInt64 = 0
    public internal(set) var stopping = false

    /// Bytes a queue for an instance on another node may hold beyond what the link carries (a quarter of the
    /// link's default window). Enough that the link never waits for the router to refill it (`pmm bench
    /// --link`, paired: 8, 2 and 1 MiB carried the same), and every byte more is latency under load and memory
    /// (4 KB frames across, unpaced: p50 9 ms at 8 MiB, 3.5 ms at 2; the sending router's peak RSS 6 MiB lower).
    public static let remoteBacklogBytes = 2 << 20

    /// What the shell must do, in order. The shell empties it with `takeActions()`.
    public internal(set) var actions: [RouterAction] = []
    /// Egress slots that may need the shell: frames to write, frames written and not yet read whole, or a
    /// stalled reader. Only these are written and asked for their progress, so an idle instance costs nothing
    /// per pass. A slot joins when a frame is queued to it and leaves at `settleActiveEgress()`.
    public internal(set) var activeEgress: [Int] = []

    var buckets: [Bucket] = []
    @usableFromInline var ingressSlots: [PipeID: Int] = [:]
    @usableFromInline var egressSlots: [PipeID: Int] = [:]
    var routeSlots: [String: Int] = [:]
    var spoolSlots: [String: Int] = [:]
    var peerSlots: [String: Int] = [:]
    var egressByName: [String: Int] = [:]
    var nextID: UInt32 = 0
    var random: SplitMix
    var sabotageCount = 0
    /// A queue reached its buffer while the pipe might still take frames: parsing pauses for the shell to write.
    var needsFlush = false
    /// The local instance the last frame from a link was written for, resolved: the frames of a batch mostly
    /// name one target, so they skip the lookups by name. Valid while `epoch` is.
    var linkTarget: LinkTarget?
    /// During `ingressPeeked`: where the peeked bytes start in the ingress buffer, the frame being routed, and
    /// where each frame that went to a local queue was in the pipe.
    var peekBase: Int?
    var peekFrame: Range<Int>?
    var peekLog: [PeekEntry] = []

    struct LinkTarget {
        var target: String
        var slot: Int
        var route: Int
        var dataType: [UInt8]
        var epoch: UInt64
    }

    public struct Counters: Sendable, Hashable {
        public var deadLetters: [DeadLetterReason: UInt64] = [:]
        /// Frames shed by `drop-oldest`.
        public var dropped: UInt64 = 0
        public var reloads: UInt64 = 0
        /// Frames routed again from the spool after a restart.
        public var replayed: UInt64 = 0
        /// Frames taken back from a queue and routed again.
        public var rerouted: UInt64 = 0
    }

    /// An ingress pipe as the core holds it.
    public struct Ingress: Sendable {
        public internal(set) var id: PipeID
        public internal(set) var spec: RouterLayout.Ingress
        var buffer: FrameBuffer
        var dataTypeBytes: [UInt8]
        var producerBytes: [UInt8]
        /// Index into `routes`, or -1 when no service consumes the type.
        var route: Int
        /// Index into `buckets`, or -1 when unlimited.
        var bucket: Int
        /// Index into `spools`, or -1 (at-most-once, or no spool directory).
        public internal(set) var spool: Int
        /// The shell holds an open descriptor.
        public internal(set) var open = false
        /// Removed or replaced by a reload: read what is there, then closed.
        public internal(set) var draining = false
        var drainDeadline: UInt64 = 0
        /// Over its rate or reset: not read until then (monotonic ns).
        public internal(set) var pausedUntil: UInt64 = 0
        /// Complete frames may sit in the buffer unrouted: parse before reading more.
        public internal(set) var backlog = false
        var resetBackoff: UInt64 = 0
        public internal(set) var missing = false
        /// Drained and closed: removed at the next tick.
        var closed = false
        /// At-least-once, and the spool of its name is still being drained by an earlier pipe of that name:
        /// not read until that one is done.
        public internal(set) var awaitingSpool = false

        public internal(set) var frames: UInt64 = 0
        public internal(set) var bytes: UInt64 = 0
        public internal(set) var resets: UInt64 = 0
        public internal(set) var misaddressed: UInt64 = 0
        public internal(set) var replayed: UInt64 = 0
        public internal(set) var lastError: String?

        public var name: String { spec.name }
        /// Bytes read from the pipe that are not yet a whole frame (or not yet routed).
        public var pendingBytes: Int { buffer.pending }
        /// A copy of the bytes read and not yet routed (for checks and tests).
        public var debugPendingBytes: [UInt8] { buffer.withBytes(buffer.start..<buffer.end) { Array($0) } }
        /// Bytes the frame buffer holds in memory.
        public var bufferCapacity: Int { buffer.storage.count }
    }

    /// An egress pipe: one consumer instance of one data type.
    public struct Egress: Sendable {
        public let id: PipeID
        public internal(set) var spec: RouterLayout.Egress
        public internal(set) var queue = FrameQueue()
        /// The shell holds a descriptor: a reader was there when it opened.
        public internal(set) var open = false
        /// Open, but its reader has not read for longer than the stall timeout: no new frames go to it.
        public internal(set) var stalled = false
        /// A probe (open) was asked for and not answered yet.
        var probing = false
        var nextProbe: UInt64 = 0
        var backoff: UInt64
        /// When availability last changed (monotonic ns).
        public internal(set) var since: UInt64
        var lastProgress: UInt64 = 0
        /// Bytes the reader had consumed at the last progress check.
        var consumed: UInt64 = 0
        /// The last write found the pipe full: a full queue now means the consumer is behind.
        var flushBlocked = false
        /// In `activeEgress`.
        var listed = false
        /// Bytes were written to a pipe its reader had emptied: the stall clock starts at the next progress
        /// check, not at the last one (an idle instance is not checked while it is idle).
        var progressPending = false

        public internal(set) var frames: UInt64 = 0
        public internal(set) var bytes: UInt64 = 0
        public internal(set) var dropped: UInt64 = 0
        public internal(set) var deadLettered: UInt64 = 0
        public internal(set) var failures: UInt64 = 0
        public internal(set) var stalls: UInt64 = 0
        public internal(set) var rerouted: UInt64 = 0
        public internal(set) var lastError: String?

        public var name: String { spec.name }
        public var capacity: Int { spec.qos.buffer }
        /// `buffer` frames not yet written; for an instance on another node, also `remoteBacklogBytes` not yet
        /// handed to the link (a slow or dead peer holds the producers back, or its overflow policy applies,
        /// instead of the queue taking everything up to the memory limit).
        public var isFull: Bool {
            queue.count >= capacity || (spec.isRemote && queue.unwrittenBytes >= RouterCore.remoteBacklogBytes)
        }
        /// May receive new frames.
        public var available: Bool { open && !stalled }
    }

    /// One data type's route, resolved against `egress`.
    public struct Route: Sendable {
        public let spec: RouterLayout.Route
        /// Frames waiting for a healthy instance.
        public internal(set) var waiting = FrameQueue()
        var current: [Int]
        var rotation = 0
        /// Egress slots of every instance of every target, flattened (for blocked checks).
        var allEgress: [Int]
        /// Per schema version, which targets can read it; nil (or out of range) where every target can.
        var readable: [[Bool]?]
        /// The capacity `least-loaded` assumes for an instance that declared none: the smallest declared by
        /// the route's instances (an unknown consumer is taken to be as slow as the slowest known), else 1.
        var fallbackCapacity = 1
        /// `locality: prefer-local`: the nearest tier (0 this node, 1 its zone, 2 anywhere) with an available
        /// instance; instances farther away are not chosen. `Int.max` for `any`.
        var allowedTier = Int.max
        /// The `epoch` `allowedTier` was computed at (`.max`: not cached).
        var tierEpoch: UInt64 = .max
        /// Under `shard`, the egress slot of the one instance a key can map to when only one is available
        /// (every key maps to it: no hash needed), else -1; computed at `soleEpoch`.
        var sole = -1
        var soleEpoch: UInt64 = .max
        var name: String { spec.dataType }
        var capacity: Int { spec.qos.buffer }
    }

    struct Bucket: Sendable {
        var key: String
        var rate: Int
        var burst: Int
        var tokens: TokenBucket
    }

    /// - Parameters:
    ///   - layout: what to route.
    ///   - now: the monotonic clock (ns).
    ///   - seed: seeds the weighted random choice.
    ///   - openSpool: gives an at-least-once ingress pipe its spool ledger (from the file an earlier router
    ///     left), or nil when spooling is off or the file cannot be opened (the pipe is then at-most-once).
    public init(
        layout: RouterLayout, options: RouterCoreOptions = RouterCoreOptions(), now: UInt64, seed: UInt64,
        openSpool: (String) -> SpoolLedger? = { _ in nil }
    ) {
        self.options = options
        self.layout = layout
        self.random = SplitMix(seed: seed)
        install(layout, now: now, openSpool: openSpool)
    }

    /// Hands the pending actions to the shell.
    public mutating func takeActions() -> [RouterAction] {
        guard !actions.isEmpty else { return [] }
        defer { actions.removeAll(keepingCapacity: true) }
        return actions
    }

    @inlinable
    public func ingressSlot(_ id: PipeID) -> Int? { ingressSlots[id] }
    @inlinable
    public func egressSlot(_ id: PipeID) -> Int? { egressSlots[id] }

    mutating func newID() -> PipeID {
        nextID += 1
        return PipeID(raw: nextID)
    }

    /// Frames routed and not yet written anywhere (queued for an instance or waiting for one).
    public var waitingFrames: Int {
        egress.reduce(0) { $0 + $1.queue.count } + routes.reduce(0) { $0 + $1.waiting.count }
    }

    /// Frames held in any queue, written or not (what a consumer has not read whole yet).
    public var heldFrames: Int {
        egress.reduce(0) { $0 + $1.queue.count + $1.queue.inPipe } + routes.reduce(0) { $0 + $1.waiting.count }
    }

    /// Live bytes of every spool.
    public var spooledBytes: Int64 { spools.reduce(0) { $0 + ($1?.live ?? 0) } }

    /// Frames waiting for an instance, by data type (non-zero only).
    public var waitingByType: [String: Int] {
        var result: [String: Int] = [:]
        for route in routes where route.waiting.count > 0 { result[route.name] = route.waiting.count }
        return result
    }

    // MARK: Queue mutations that keep `heldBytes` exact

    mutating func withEgressQueue<R>(_ slot: Int, _ body: (inout FrameQueue) -> R) -> R {
        let before = egress[slot].queue.footprint
        let result = body(&egress[slot].queue)
        heldBytes += egress[slot].queue.footprint - before
        if !egress[slot].listed && egress[slot].queue.count > 0 {
            egress[slot].listed = true
            activeEgress.append(slot)
        }
        return result
    }

    /// Whether egress `slot` has anything the shell must still do or watch.
    func awaitsShell(_ slot: Int) -> Bool {
        egress[slot].queue.count > 0 || egress[slot].queue.inPipe > 0 || egress[slot].stalled || egress[slot].progressPending
    }

    /// Drops from `activeEgress` the instances with nothing queued, nothing unread in their pipe, and no stall.
    /// The shell calls it after the pass's progress checks.
    public mutating func settleActiveEgress() {
        var kept = 0
        for index in activeEgress.indices {
            let slot = activeEgress[index]
            if awaitsShell(slot) {
                activeEgress[kept] = slot
                kept += 1
            } else {
                egress[slot].listed = false
            }
        }
        activeEgress.removeLast(activeEgress.count - kept)
    }

    /// Rebuilds `activeEgress` after `egress` changed shape (slots moved).
    mutating func reindexActiveEgress() {
        activeEgress.removeAll(keepingCapacity: true)
        for slot in egress.indices {
            egress[slot].listed = awaitsShell(slot)
            if egress[slot].listed { activeEgress.append(slot) }
        }
    }

    mutating func withWaiting<R>(_ route: Int, _ body: (inout FrameQueue) -> R) -> R {
        let before = routes[route].waiting.footprint
        let result = body(&routes[route].waiting)
        heldBytes += routes[route].waiting.footprint - before
        return result
    }

    mutating func complete(_ tag: SpoolTag) {
        if tag.spool < 0 {
            // A frame that came over a link: done here, so the peer may forget it.
            let p = Int(-2 - tag.spool)
            if p >= 0 && p < peers.count { peers[p].inbound.complete(tag) }
            return
        }
        withSpool(Int(tag.spool)) { $0.complete(tag) }
    }

    mutating func withSpool<R>(_ index: Int, _ body: (inout SpoolLedger) -> R) -> R? {
        guard index >= 0 && index < spools.count, spools[index] != nil else { return nil }
        let before = spools[index]!.live
        spoolRevision &+= 1
        let result = body(&spools[index]!)
        spoolLive += spools[index]!.live - before
        return result
    }

    mutating func notice(_ notice: RouterNotice) { actions.append(.notice(notice)) }
}

/// A small, fast PRNG for weighted choice (SplitMix64). Not for secrets.
public struct SplitMix: Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        return ShardHash.mix(state &- 0x9e37_79b9_7f4a_7c15)
    }
}
