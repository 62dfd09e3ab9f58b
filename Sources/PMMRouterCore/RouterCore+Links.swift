import PMMCore
import PMMWire

/// Routing across nodes (DESIGN.md, "Beyond one host").
///
/// Every router builds the same layout from the same revision; an instance placed on another node is a remote
/// egress here: routed to like any instance, but its frames go to that node's router over the link instead of
/// into a pipe. The core keeps the bookkeeping, the shell moves the bytes (`LinkManager` in PMMLink):
///
/// - Sending: the shell borrows a remote egress's unwritten frames (`withLinkFrames`), hands them to the link
///   and reports how many it took (`linkSent`). They stay in the egress queue, counted as in the pipe, until the
///   peer acknowledges them (`linkAcknowledged`): only then is an at-least-once frame done for its spool. A
///   link whose window is full leaves the queue full, and the type's overflow policy applies (`block` holds the
///   producers back, into the spool), so a slow or dead peer never grows memory.
/// - Health: a remote instance is available while its link is up and its router says it is
///   (`linkHealth`). A link that drops (`linkDisconnected`) takes every frame its instances had not
///   acknowledged back and routes it again, exactly as a local consumer's death does: nothing is lost,
///   duplicates are possible (at-least-once). An instance the peer reports down gives back what was not sent;
///   what was sent is the peer's to route.
/// - Receiving: a frame from a peer (`linkFrameReceived`) goes to the local instance it names when that
///   instance is available, else wherever the route sends it. It is acknowledged to the peer
///   (`linkAcknowledgements`) once done here: read whole by a consumer, dead-lettered, or dropped by policy, so
///   a receiving router that dies leaves the frame with the sender.
extension RouterCore {
    /// Another node's router, as this core sees it. Peers are never removed (a reload that drops a node retires
    /// it), so tags that name a peer's inbound ledger stay valid.
    public struct Peer: Sendable {
        public let name: String
        /// The link is up (both Hellos exchanged).
        public internal(set) var up = false
        /// The peer is a node of the installed layout.
        public internal(set) var inLayout = true
        /// What the peer last said about its instances: egress pipe name -> available.
        public internal(set) var health: [String: Bool] = [:]
        /// The revision the peer's router serves (0: not known).
        public internal(set) var revision: UInt64 = 0
        public internal(set) var since: UInt64 = 0
        /// Frames handed to the link and not yet acknowledged, as runs of one egress's frames, in order.
        var runs: [(egress: PipeID, count: Int)] = []
        var runsHead = 0
        /// The sequence number of the first frame of `runs[runsHead]`.
        var firstSequence: UInt64 = 1
        /// Egress slots of the instances on this node.
        var slots: [Int] = []
        var inbound = InboundLedger()
        public internal(set) var sentFrames: UInt64 = 0
        public internal(set) var acknowledgedFrames: UInt64 = 0
        public internal(set) var receivedFrames: UInt64 = 0
        /// Frames taken back from the link and routed again (a drop, an instance down).
        public internal(set) var rerouted: UInt64 = 0
        public internal(set) var lastError: String?

        /// Frames sent and not yet acknowledged.
        public var unacknowledged: Int { runs[runsHead...].reduce(0) { $0 + $1.count } }
    }

    /// The frames received from one peer that are not yet done here, by sequence number, for the cumulative
    /// acknowledgement.
    struct InboundLedger: Sendable {
        /// The peer's incarnation the numbering belongs to.
        var stream: UInt64 = 0
        /// Goes up with every new stream: tags of an earlier one complete nothing.
        var generation: UInt32 = 0
        /// Every frame before this sequence number is done.
        var base: UInt64 = 1
        /// For `base`, `base + 1`, …: done or not (`done[head...]`).
        var done: [Bool] = []
        var head = 0
        /// The acknowledgement last handed to the shell.
        var acknowledged: UInt64 = 0

        /// The next sequence number expected.
        var next: UInt64 { base + UInt64(done.count - head) }

        /// Starts tracking frame `sequence` of `stream`; nil for a frame already seen.
        mutating func track(stream: UInt64, sequence: UInt64, peer: Int) -> SpoolTag? {
            if stream != self.stream {
                self.stream = stream
                generation &+= 1
                base = sequence
                done.removeAll()
                head = 0
                acknowledged = sequence &- 1
            }
            guard sequence >= next else { return nil }
            // (A gap cannot happen: the link delivers in order. Were it to, the missing numbers count as done.)
            while next < sequence { done.append(true) }
            done.append(false)
            advance()
            return SpoolTag(spool: Int32(-2 - peer), sequence: sequence, stream: generation)
        }

        mutating func complete(_ tag: SpoolTag) {
            guard tag.stream == generation, tag.sequence >= base, tag.sequence < next else { return }
            done[head + Int(tag.sequence - base)] = true
            advance()
        }

        private mutating func advance() {
            while head < done.count && done[head] {
                head += 1
                base += 1
            }
            if head == done.count {
                done.removeAll(keepingCapacity: true)
                head = 0
            } else if head > 4096 && head * 2 > done.count {
                done.removeFirst(head)
                head = 0
            }
        }
    }

    /// Frames received from some peer that are not done here yet (written to a pipe but not yet read whole,
    /// or still queued): the peer waits for their acknowledgement before its window takes more.
    public var awaitsLinkCompletions: Bool {
        peers.contains { $0.inbound.done.count > $0.inbound.head }
    }

    /// The peer named `name`, if the layout has that node.
    public func peerSlot(_ name: String) -> Int? { peerSlots[name] }

    /// Peers by the layout's nodes (kept across reloads by name; new ones appended), and each one's egress slots.
    mutating func installPeers(_ layout: RouterLayout, now: UInt64) {
        let names = Set(layout.peers.map(\.name))
        for index in peers.indices { peers[index].inLayout = names.contains(peers[index].name); peers[index].slots = [] }
        for node in layout.peers where peerSlots[node.name] == nil {
            peers.append(Peer(name: node.name, since: now))
            peerSlots[node.name] = peers.count - 1
        }
        for slot in egress.indices {
            guard let node = egress[slot].spec.node, let p = peerSlots[node] else { continue }
            peers[p].slots.append(slot)
        }
        egressByName = [:]
        for (slot, pipe) in egress.enumerated() { egressByName[pipe.name] = slot }
    }

    /// The link to peer `p` came up: `resumeAfter` is how far the peer acknowledged this node's frames (what
    /// follows is numbered from there); `health` its instances.
    public mutating func linkConnected(_ p: Int, resumeAfter: UInt64, revision: UInt64, health: [String: Bool], now: UInt64) {
        if peers[p].up || peers[p].runsHead < peers[p].runs.count {
            // A new connection without a word about the old one: what the old one carried is taken back first.
            linkDisconnected(p, reason: "reconnected", now: now)
        }
        peers[p].up = true
        peers[p].since = now
        peers[p].lastError = nil
        peers[p].firstSequence = resumeAfter + 1
        linkHealth(p, revision: revision, instances: health, now: now)
    }

    /// The link to peer `p` went down: its instances are unavailable, and every frame they had not acknowledged
    /// is routed again (to instances that are up, or it waits for one).
    public mutating func linkDisconnected(_ p: Int, reason: String, now: UInt64) {
        let wasUp = peers[p].up
        peers[p].up = false
        peers[p].lastError = reason
        if wasUp { peers[p].since = now }
        peers[p].runs.removeAll()
        peers[p].runsHead = 0
        // Every instance of the node down first, then their frames taken back: none is routed to a sibling on
        // the same dead link on the way.
        for slot in peers[p].slots where egress[slot].open {
            markRemote(slot, available: false, reason: "the link to \(peers[p].name) is down: \(reason)", now: now)
        }
        var frames: [DetachedFrame] = []
        for slot in peers[p].slots { frames += detach(slot) }
        peers[p].rerouted += UInt64(frames.count)
        if !frames.isEmpty { notice(.rerouting(pipe: "link to \(peers[p].name)", frames: frames.count)) }
        if options.sabotage == .forgetRerouteOnLinkDrop {
            for frame in frames { if let tag = frame.meta.tag { complete(tag) } }
            return
        }
        for frame in frames { reroute(frame, now: now) }
    }

    /// Peer `p` told the availability of its instances (by egress pipe name), and the revision it serves.
    public mutating func linkHealth(_ p: Int, revision: UInt64, instances: [String: Bool], now: UInt64) {
        peers[p].revision = revision
        peers[p].health = instances
        // Every change first, then what the instances that went down had not sent is routed again, so none of it
        // goes to another instance this same message takes down.
        var changed: [Int] = []
        for slot in peers[p].slots {
            let available = peers[p].up && instances[egress[slot].name] == true
            guard available != egress[slot].open else { continue }
            markRemote(slot, available: available, reason: "down on \(peers[p].name)", now: now)
            changed.append(slot)
        }
        for slot in changed where !egress[slot].open { rerouteUnsent(slot, now: now) }
        // Frames that waited for an instance go out once, to the instances that came up.
        for slot in changed where egress[slot].open { releaseWaiting(routeSlots[egress[slot].spec.dataType] ?? -1, now: now) }
    }

    /// A remote instance became available or not. The caller routes again, once every change of its batch is
    /// made, what one that is not had not sent (`rerouteUnsent`); what it sent is the peer's to deliver or route
    /// (it acknowledges it when done).
    mutating func markRemote(_ slot: Int, available: Bool, reason: String, now: UInt64) {
        egress[slot].open = available
        egress[slot].since = now
        epoch &+= 1
        if available {
            egress[slot].lastError = nil
            notice(.consumerHealthy(pipe: egress[slot].name))
            return
        }
        egress[slot].failures += 1
        egress[slot].lastError = reason
        notice(.consumerDown(pipe: egress[slot].name, reason: reason))
    }

    /// Routes again the frames of egress `slot` not yet sent.
    mutating func rerouteUnsent(_ slot: Int, now: UInt64) {
        let backlog = withEgressQueue(slot) { $0.takeUnstarted() }
        egress[slot].rerouted += UInt64(backlog.count)
        for frame in backlog { reroute(frame, now: now) }
    }

    /// The egress slots of peer `p`'s instances.
    public func linkSlots(_ p: Int) -> [Int] { peers[p].slots }

    /// Calls `body` with the frames waiting to go to peer `p`, up to about `limit` bytes: for each, its egress
    /// slot and its bytes, borrowed from the queues (valid only during the call; nothing is copied). Oldest
    /// first per instance; nothing while the link is down.
    public func withLinkFrames<R>(_ p: Int, limit: Int, _ body: (_ slots: [Int], _ frames: [UnsafeRawBufferPointer]) -> R) -> R {
        let ready = peers[p].up ? peers[p].slots.filter { egress[$0].open && egress[$0].queue.unwrittenBytes > 0 } : []
        var owners: [Int] = []
        var frames: [UnsafeRawBufferPointer] = []
        // Each queue lends its bytes only inside its own closure: the queues are visited nested, and `body`
        // runs in the innermost, while every one of them is lent.
        func visit(_ i: Int, _ remaining: Int) -> R {
            guard i < ready.count, remaining > 0 else { return body(owners, frames) }
            return egress[ready[i]].queue.withUnwrittenFrames(limit: remaining) { lent in
                owners.append(contentsOf: repeatElement(ready[i], count: lent.count))
                frames.append(contentsOf: lent)
                return visit(i + 1, remaining - lent.reduce(0) { $0 + $1.count })
            }
        }
        return visit(0, limit)
    }

    /// The link to peer `p` took frames numbered from `firstSequence`: the first of those `withLinkFrames` gave,
    /// named by their egress slots, in that order.
    public mutating func linkSent(_ p: Int, firstSequence: UInt64, slots: some Collection<Int>) {
        guard !slots.isEmpty else { return }
        if peers[p].runsHead == peers[p].runs.count { peers[p].firstSequence = firstSequence }
        var index = slots.startIndex
        while index != slots.endIndex {
            // Frames come grouped by instance: one run per group.
            let slot = slots[index]
            var count = 0
            while index != slots.endIndex && slots[index] == slot {
                count += 1
                slots.formIndex(after: &index)
            }
            wrote(slot, count: egress[slot].queue.unwrittenBytes(frames: count))
            peers[p].runs.append((egress[slot].id, count))
            peers[p].sentFrames += UInt64(count)
        }
    }

    /// Peer `p` acknowledged every frame up to `upTo`: they reached its consumers (or its dead letters), and
    /// are done here.
    public mutating func linkAcknowledged(_ p: Int, upTo: UInt64) {
        if options.sabotage == .ignoreLinkAcknowledgements { return }
        var done: [SpoolTag] = []
        while peers[p].runsHead < peers[p].runs.count && peers[p].firstSequence <= upTo {
            let run = peers[p].runs[peers[p].runsHead]
            let count = Int(min(UInt64(run.count), upTo - peers[p].firstSequence + 1))
            if let slot = egressSlots[run.egress] {
                withEgressQueue(slot) { $0.acknowledge(frames: count) { done.append($0) } }
            }
            peers[p].firstSequence += UInt64(count)
            peers[p].acknowledgedFrames += UInt64(count)
            if count == run.count {
                peers[p].runsHead += 1
            } else {
                peers[p].runs[peers[p].runsHead].count -= count
            }
        }
        if peers[p].runsHead == peers[p].runs.count {
            peers[p].runs.removeAll(keepingCapacity: true)
            peers[p].runsHead = 0
        }
        for tag in done { complete(tag) }
    }

    /// A frame from peer `p` (number `sequence` of its `stream`) for the egress pipe `target`: queued for that
    /// instance when it is here and available, else routed by its data type like any frame. Acknowledged to
    /// the peer once done here.
    public mutating func linkFrameReceived(
        _ p: Int, stream: UInt64, sequence: UInt64, target: String, frame: UnsafeRawBufferPointer, now: UInt64
    ) {
        guard let tag = peers[p].inbound.track(stream: stream, sequence: sequence, peer: p) else { return }
        peers[p].receivedFrames += 1
        guard case .value(let length, let prefix) = Varint.decode(frame, at: 0), prefix + Int(length) == frame.count,
            let fields = try? EnvelopeScanner.scan(UnsafeRawBufferPointer(rebasing: frame[prefix...])), !fields.dataType.isEmpty
        else {
            deadLetter(frame, dataType: "", reason: .discarded, pipe: "link from \(peers[p].name)", detail: "not a frame, for \(target)", tag: tag)
            return
        }
        let dataTypeBytes = UnsafeRawBufferPointer(rebasing: frame[(prefix + fields.dataType.lowerBound)..<(prefix + fields.dataType.upperBound)])
        // The target of the frame before, still available and of this frame's type: no lookup by name.
        if let cached = linkTarget, cached.epoch == epoch, cached.target == target, dataTypeBytes.bytesEqual(cached.dataType),
            egress[cached.slot].available
        {
            let meta = FrameMeta(route: Int32(cached.route), version: Int32(clamping: fields.schemaVersion), tag: tag)
            withEgressQueue(cached.slot) { $0.append(frame, meta: meta) }
            return
        }
        let dataType = String(decoding: dataTypeBytes, as: UTF8.self)
        guard let route = routeSlots[dataType] else {
            deadLetter(
                frame, dataType: dataType, reason: .noRoute, pipe: "link from \(peers[p].name)", detail: "no service consumes '\(dataType)' here",
                tag: tag)
            return
        }
        let meta = FrameMeta(route: Int32(route), version: Int32(clamping: fields.schemaVersion), tag: tag)
        if let slot = egressByName[target], !egress[slot].spec.isRemote, egress[slot].available, egress[slot].spec.dataType == dataType {
            linkTarget = LinkTarget(target: target, slot: slot, route: route, dataType: Array(dataTypeBytes), epoch: epoch)
            withEgressQueue(slot) { $0.append(frame, meta: meta) }
            return
        }
        let key = UnsafeRawBufferPointer(rebasing: frame[(prefix + fields.shardKey.lowerBound)..<(prefix + fields.shardKey.upperBound)])
        counters.rerouted += 1
        deliver(frame, key: key, meta: meta, now: now)
    }

    /// Calls `body(peer, stream, upTo)` for every peer whose frames are done further than last said.
    public mutating func linkAcknowledgements(_ body: (String, UInt64, UInt64) -> Void) {
        for p in peers.indices {
            let upTo = peers[p].inbound.base &- 1
            guard peers[p].inbound.stream != 0, upTo > peers[p].inbound.acknowledged else { continue }
            peers[p].inbound.acknowledged = upTo
            body(peers[p].name, peers[p].inbound.stream, upTo)
        }
    }

    /// This node's instances and whether each is available now (egress pipe name -> available), for the peers.
    public var localHealth: [String: Bool] {
        var health: [String: Bool] = [:]
        for pipe in egress where !pipe.spec.isRemote { health[pipe.name] = pipe.available }
        return health
    }
}
