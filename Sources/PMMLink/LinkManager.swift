import Glibc
public import Logging
import NIOCore
import NIOPosix
import NIOSSL
public import PMMWire
import Synchronization

/// The links of one node to every other node's router, for a synchronous poll-loop router.
///
/// One NIO event loop thread runs every connection (TCP, optionally mutual TLS). The router's thread and that
/// loop meet here: `send`, `acknowledge`, `announceHealth` and `updateRevision` put work in queues guarded by a
/// `Mutex` and wake the loop; the loop puts `LinkEvent`s in a queue and makes `wakeDescriptor` readable, which
/// the router polls, then drains with `events()`. Every method is thread-safe; none blocks on the network.
///
/// Responsibility for frames: the manager keeps none. `send` takes frames only while the peer's window of
/// unacknowledged bytes has room and says how many it took and their numbers; the router keeps every frame it
/// handed over until an `acknowledged` event covers it. When a link drops, pmm's router routes every frame
/// not acknowledged again (to the instances still up), so after a `connected` event it sends only new frames,
/// numbered after `LinkPeer.resumeAfter` (the highest the peer received; those it has not acknowledged are
/// still its to deliver). A router that keeps its frames across a drop instead drops what `resumeAfter` covers
/// and sends the rest again (`LinkOutbox` is that bookkeeping). Either way a slow or dead peer back-pressures
/// into the router's spool, never into memory here. On the receiving side the router acknowledges
/// (`acknowledge`) frames once done with them; frames a resend repeats are dropped here before they reach the
/// router.
///
/// One link per pair of nodes: the node whose name sorts first dials, the other accepts. A dialer that lost its
/// connection dials again with backoff (100 ms doubling to 5 s, with jitter); a connection silent for
/// `idleTimeout` is closed, so a cut cable is noticed on both sides.
public final class LinkManager: Sendable {
    public let configuration: LinkConfiguration
    /// Readable when `events()` has something; poll it for POLLIN. Owned by the manager (closed by `stop`).
    public let wakeDescriptor: Int32
    /// The port links are accepted on (the configured one, or the one the system chose for port 0).
    public let listeningPort: Int
    /// Chosen at random when the manager starts; peers restart their numbering of this node's frames with it.
    public let incarnation: UInt64

    let shared: LinkShared
    /// Received batches' buffers, reused (`recycle`).
    public let batchBuffers: BufferPool
    let group: MultiThreadedEventLoopGroup
    let engine: NIOLoopBound<LinkEngine>
    private let stopped = Mutex(false)

    /// Starts listening and dialing.
    ///
    /// - Throws: `LinkError` when the listening address cannot be bound or a TLS file cannot be loaded.
    public init(configuration: LinkConfiguration, logger: Logger) throws(LinkError) {
        guard configuration.knownNodes.contains(configuration.node) else {
            throw .configuration("node \(configuration.node) is not one of the spec's nodes")
        }
        self.configuration = configuration
        self.incarnation = UInt64.random(in: 1...UInt64.max)
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw .configuration("pipe(2) failed: errno \(errno)") }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        wakeDescriptor = fds[0]
        let peers = configuration.knownNodes.subtracting([configuration.node])
        shared = LinkShared(
            peers: peers, windowBytes: configuration.windowBytes, revision: configuration.revision,
            wakeWrite: fds[1])
        var sslContexts: (server: NIOSSLContext, client: NIOSSLContext)?
        do throws(LinkError) {
            if let tls = configuration.tls { sslContexts = try LinkEngine.makeSSLContexts(tls) }
        } catch {
            close(fds[0])
            close(fds[1])
            throw error
        }
        let ssl = sslContexts
        let buffers = BufferPool(limit: configuration.windowBytes)
        batchBuffers = buffers
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let shared = self.shared
        let incarnation = self.incarnation
        let engine: NIOLoopBound<LinkEngine>
        do {
            engine = try loop.submit {
                NIOLoopBound(
                    LinkEngine(
                        configuration: configuration, logger: logger, shared: shared, loop: loop, ssl: ssl,
                        incarnation: incarnation, buffers: buffers), eventLoop: loop)
            }.wait()
        } catch {
            // Only a loop that is already shut down refuses work; say so rather than trap.
            try? group.syncShutdownGracefully()
            close(fds[0])
            close(fds[1])
            throw .listen(address: configuration.listen.description, reason: "the event loop refused to start the link engine: \(error)")
        }
        self.engine = engine
        do {
            listeningPort = try loop.flatSubmit { engine.value.listen() }.wait()
        } catch {
            try? group.syncShutdownGracefully()
            close(fds[0])
            close(fds[1])
            throw .listen(address: configuration.listen.description, reason: "\(error)")
        }
        loop.execute { engine.value.start() }
    }

    deinit {
        stop()
    }

    /// Gives the received batches among `events` their buffers back, for the next batches to reuse; call it once
    /// the frames were copied out (a buffer still shared elsewhere is never written again, only dropped).
    public func recycle(_ events: consuming [LinkEvent]) {
        // Batches read together share one buffer: it is given back once.
        var last: UnsafeRawPointer?
        while let event = events.popLast() {
            guard case .received(_, let received) = event else { continue }
            let base = received.frames.storage.withUnsafeBytes { $0.baseAddress }
            if base != last { batchBuffers.give(received.frames.storage) }
            last = base
        }
    }

    /// Takes what happened since the last call, oldest first, and clears `wakeDescriptor`.
    public func events() -> [LinkEvent] {
        // After stop the descriptor is closed, and its number may belong to someone else.
        if stopped.withLock({ $0 }) { return [] }
        var scratch = [UInt8](repeating: 0, count: 64)
        while read(wakeDescriptor, &scratch, scratch.count) > 0 {}
        return shared.update { state in
            state.wakePending = false
            let events = state.events
            state.events = []
            for case .connected(let peer, let info) in events where state.peers[peer]?.generation == info.generation {
                state.peers[peer]!.awaitingRouter = false
            }
            return events
        }
    }

    /// Hands frames for `peer` to its link, as many as its window has room for, in order.
    ///
    /// Takes nothing while the link is down, and nothing between a `connected` event and the `events()` call
    /// that returns it (so the router has dropped and renumbered its held frames first). A frame larger than the
    /// whole window goes alone when nothing else is in flight.
    ///
    /// - Returns: how many frames (from the first) were taken, and the sequence number of the first. The router
    ///   keeps them until `acknowledged` covers them.
    public func send(to peer: String, frames: ArraySlice<LinkFrame>) -> LinkSendResult {
        let batchBytes = configuration.batchBytes
        let (result, wake) = frames.withUnsafeBufferPointer { frames in
            shared.update { state -> (LinkSendResult, Bool) in
                guard state.peers[peer] != nil else { return (LinkSendResult(accepted: 0, firstSequence: 1), false) }
                return Self.take(&state.peers[peer]!, frames: frames, batchBytes: batchBytes)
            }
        }
        if wake { scheduleFlush(peer) }
        return result
    }

    /// The frame bytes `send` would take for `peer` now (its window's free room; a frame larger than the whole
    /// window still goes alone when nothing is in flight): 0 while the link is down, or up but not yet handed to
    /// the router. Lets a sender copy out only what will be taken.
    public func room(for peer: String) -> Int {
        shared.update { state in
            guard let p = state.peers[peer], p.up, !p.awaitingRouter else { return 0 }
            return max(0, p.sender.windowBytes - p.sender.unacknowledgedBytes)
        }
    }

    /// `send` for a whole array.
    public func send(to peer: String, frames: [LinkFrame]) -> LinkSendResult {
        send(to: peer, frames: frames[...])
    }

    private static let allocator = ByteBufferAllocator()

    /// `send` over frames the caller lends (a router's queue): no array per frame; the bytes are copied once,
    /// into the batches, before this returns.
    public func send(to peer: String, borrowing frames: UnsafeBufferPointer<BorrowedLinkFrame>) -> LinkSendResult {
        let batchBytes = configuration.batchBytes
        let (result, wake) = shared.update { state -> (LinkSendResult, Bool) in
            guard state.peers[peer] != nil else { return (LinkSendResult(accepted: 0, firstSequence: 1), false) }
            return Self.take(&state.peers[peer]!, frames: frames, batchBytes: batchBytes)
        }
        if wake { scheduleFlush(peer) }
        return result
    }

    private static func take<F: LinkFrameEncodable>(
        _ p: inout LinkShared.Peer, frames: UnsafeBufferPointer<F>, batchBytes: Int
    ) -> (LinkSendResult, Bool) {
        guard p.up, !p.awaitingRouter, !frames.isEmpty else {
            return (LinkSendResult(accepted: 0, firstSequence: p.sender.nextSequence), false)
        }
        let (count, bytes) = p.sender.fitting(frames.lazy.map { $0.byteCount })
        // (fitting stops at the first frame that does not fit: it never walks a long backlog.)
        guard count > 0 else { return (LinkSendResult(accepted: 0, firstSequence: p.sender.nextSequence), false) }
        let first = p.sender.take(count: count, bytes: bytes)
        var sequence = first
        var index = frames.startIndex
        var remaining = count
        while remaining > 0 {
            var n = 0
            var size = 0
            var end = index
            while n < remaining && (n == 0 || size + frames[end].byteCount <= batchBytes) {
                size += frames[end].byteCount
                frames.formIndex(after: &end)
                n += 1
            }
            let slice = UnsafeBufferPointer(rebasing: frames[index..<end])
            let encoded = LinkCodec.encodedBatchSize(firstSequence: sequence, frames: slice)
            var buffer = allocator.buffer(capacity: encoded)
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: encoded) { raw in
                LinkCodec.encodeBatch(firstSequence: sequence, frames: slice, into: raw)
            }
            p.pendingWrites.append(buffer)
            p.pendingBytes += encoded
            sequence += UInt64(n)
            remaining -= n
            index = end
        }
        let wake = !p.flushScheduled
        p.flushScheduled = true
        return (LinkSendResult(accepted: count, firstSequence: first), wake)
    }

    /// The router wrote (or spooled) every frame from `peer` up to `upTo` of `stream` (the `LinkReceived`'s).
    /// The peer learns it at once, or from the next Hello if the link is down.
    public func acknowledge(peer: String, stream: UInt64, upTo: UInt64) {
        let wake = shared.update { state -> Bool in
            guard state.peers[peer] != nil, state.peers[peer]!.receiver.incarnation == stream,
                let ack = state.peers[peer]!.receiver.acknowledge(upTo: upTo), state.peers[peer]!.up
            else { return false }
            state.peers[peer]!.pendingAck = ack
            let wake = !state.peers[peer]!.flushScheduled
            state.peers[peer]!.flushScheduled = true
            return wake
        }
        if wake { scheduleFlush(peer) }
    }

    /// This node's instances and whether each is available: told to every peer now and in every Hello.
    public func announceHealth(_ instances: [String: Bool]) {
        shared.update { $0.health = instances }
        onLoop { $0.broadcastHealth() }
    }

    /// The revision this node's router serves now: told to every peer now and in every Hello.
    public func updateRevision(_ revision: UInt64) {
        shared.update { $0.revision = revision }
        onLoop { $0.broadcastHealth() }
    }

    /// Every peer's link, sorted by name.
    public func status() -> [LinkStatus] {
        shared.update { state in
            state.peers.keys.sorted().map { name in
                let p = state.peers[name]!
                return LinkStatus(
                    peer: name, up: p.up, since: p.since, unacknowledgedFrames: p.sender.unacknowledgedFrames,
                    unacknowledgedBytes: p.sender.unacknowledgedBytes, peerRevision: p.peerRevision,
                    lastError: p.lastError)
            }
        }
    }

    /// Says goodbye to every peer, closes every connection and the listener, and ends the loop thread. Idempotent;
    /// must not be called on the link's own event loop.
    public func stop() {
        let first = stopped.withLock { stopped -> Bool in
            defer { stopped = true }
            return !stopped
        }
        guard first else { return }
        let engine = self.engine
        try? engine.eventLoop.flatSubmit { engine.value.stop() }.wait()
        try? group.syncShutdownGracefully()
        shared.update { state in
            close(state.wakeWrite)
            state.wakeWrite = -1
        }
        close(wakeDescriptor)
    }

    private func scheduleFlush(_ peer: String) {
        onLoop { $0.flush(peer) }
    }

    /// Runs `body` on the links' event loop, unless the manager was stopped (its loop is gone).
    private func onLoop(_ body: @escaping @Sendable (LinkEngine) -> Void) {
        stopped.withLock { stopped in
            guard !stopped else { return }
            let engine = self.engine
            engine.eventLoop.execute { body(engine.value) }
        }
    }
}

/// The state the router's thread and the loop share, behind one mutex.
final class LinkShared: Sendable {
    struct Peer {
        var up = false
        var generation: UInt64 = 0
        /// Up, but the router has not yet drained the `connected` event: `send` takes nothing.
        var awaitingRouter = false
        var sender: SendLedger
        var receiver: ReceiveLedger
        /// Encoded Batch messages for the loop to write, oldest first.
        var pendingWrites: [ByteBuffer] = []
        var pendingBytes = 0
        /// An Ack for the loop to write.
        var pendingAck: UInt64?
        /// A flush is queued on the loop.
        var flushScheduled = false
        var since: ContinuousClock.Instant?
        var peerRevision: UInt64 = 0
        var lastError: String?
    }

    struct State {
        var peers: [String: Peer]
        var events: [LinkEvent] = []
        var wakePending = false
        /// An event was posted that needs the wake descriptor made readable, once the lock is released.
        var wakeNeeded = false
        var wakeWrite: Int32
        var health: [String: Bool] = [:]
        var revision: UInt64

        /// Queues an event; `update` makes the wake descriptor readable once it has released the lock.
        mutating func post(_ event: LinkEvent) {
            events.append(event)
            if !wakePending {
                wakePending = true
                wakeNeeded = true
            }
        }
    }

    /// Reached only through `update`, so that no posted event can miss its wake-up.
    private let state: Mutex<State>

    /// Runs `body` under the lock, then, outside it, makes the wake descriptor readable if `body` posted an
    /// event while none was waiting. Writing while holding the lock woke the router straight into the lock:
    /// it spun on the mutex until the loop's write(2) returned (a fifth of each router's samples, paced, in
    /// `pmm bench --link`). Only the loop posts, and `LinkManager.stop` closes the descriptor only after the
    /// loop has ended.
    func update<R: Sendable, E: Error>(_ body: (inout State) throws(E) -> R) throws(E) -> R {
        let (result, wake) = try state.withLock { (state) throws(E) -> (R, Int32) in
            let result = try body(&state)
            let wake = state.wakeNeeded ? state.wakeWrite : -1
            state.wakeNeeded = false
            return (result, wake)
        }
        if wake >= 0 {
            var one: UInt8 = 1
            _ = write(wake, &one, 1)
        }
        return result
    }

    init(peers: Set<String>, windowBytes: Int, revision: UInt64, wakeWrite: Int32) {
        var map: [String: Peer] = [:]
        for peer in peers {
            map[peer] = Peer(
                sender: SendLedger(windowBytes: windowBytes), receiver: ReceiveLedger(limitBytes: 2 * windowBytes))
        }
        state = Mutex(State(peers: map, wakeWrite: wakeWrite, revision: revision))
    }
}
