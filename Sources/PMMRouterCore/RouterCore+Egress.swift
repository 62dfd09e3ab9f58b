import PMMCore
import PMMWire

extension RouterCore {
    /// The shell opened egress `id` for writing: a reader is there, the instance is healthy.
    public mutating func egressOpened(_ id: PipeID, now: UInt64) {
        guard let slot = egressSlots[id] else { return }
        egress[slot].probing = false
        egress[slot].open = true
        egress[slot].stalled = false
        egress[slot].since = now
        egress[slot].lastProgress = now
        egress[slot].consumed = egress[slot].bytes
        egress[slot].progressPending = false
        egress[slot].lastError = nil
        egress[slot].backoff = options.probeBackoff.first
        epoch &+= 1
        notice(.consumerHealthy(pipe: egress[slot].name))
        releaseWaiting(routeSlots[egress[slot].spec.dataType] ?? -1, now: now)
    }

    /// The shell could not open egress `id`: probed again later.
    public mutating func egressUnavailable(_ id: PipeID, _ reason: EgressUnavailable, now: UInt64) {
        guard let slot = egressSlots[id] else { return }
        egress[slot].probing = false
        switch reason {
        case .noReader:
            egress[slot].lastError = "no reader"
            egress[slot].backoff = min(egress[slot].backoff * 2, options.probeBackoff.limit)
            egress[slot].nextProbe = now + egress[slot].backoff
        case .missing:
            egress[slot].lastError = "missing"
            egress[slot].nextProbe = now + options.probeBackoff.limit
        case .failed(let message):
            egress[slot].lastError = message
            egress[slot].nextProbe = now + options.probeBackoff.limit
        }
    }

    /// Whether egress `slot` has bytes to write.
    ///
    /// Inlinable, like the other small queries the shell asks on every pass: a call the compiler cannot see into
    /// made it copy the whole core (a retain and release of each of its arrays) to guarantee the value across it.
    @inlinable
    public func hasUnwritten(_ slot: Int) -> Bool { egress[slot].open && egress[slot].queue.unwrittenBytes > 0 }

    /// Calls `body` with egress `slot`'s unwritten bytes that fit `room` bytes as whole frames (one write(2) per
    /// batch). Writing no more than the pipe's free room means the kernel takes all of it, so a router that
    /// dies never leaves a frame cut in two in a consumer's pipe (the next router's frames would follow the
    /// torn head). Only a frame larger than the pipe goes in parts, when the pipe is empty.
    ///
    /// - Parameters:
    ///   - room: bytes the pipe is sure to take now (its capacity less what it holds, counted in pages).
    ///   - pipeEmpty: the pipe holds nothing.
    public func withUnwritten<R>(_ slot: Int, room: Int, pipeEmpty: Bool, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withUnwritten(slot, first: egress[slot].queue.writable(room: room, pipeEmpty: pipeEmpty), body)
    }

    /// Calls `body` with egress `slot`'s next whole frames, none of them started, as many as fit in `limit`
    /// bytes (none when the next frame is larger). With `limit` PIPE_BUF, the kernel takes such a write whole
    /// or not at all, whatever the pipe holds: the way to write when the shell's count of the pipe's room is too
    /// cautious to say.
    public func withNextFrames<R>(_ slot: Int, atMost limit: Int, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withUnwritten(slot, first: egress[slot].queue.nextFramesSize(atMost: limit), body)
    }

    /// Calls `body` with the first `count` unwritten bytes of egress `slot` (fewer if the segment being written
    /// ends first).
    private func withUnwritten<R>(_ slot: Int, first count: Int, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try egress[slot].queue.withUnwritten { try body(UnsafeRawBufferPointer(rebasing: $0[0..<min(count, $0.count)])) }
    }

    /// `count` bytes of egress `slot`'s queue were written to its pipe.
    public mutating func wrote(_ slot: Int, count: Int) {
        guard count > 0 else { return }
        egress[slot].flushBlocked = false
        if egress[slot].consumed == egress[slot].bytes { egress[slot].progressPending = true }
        egress[slot].bytes += UInt64(count)
        egress[slot].frames += UInt64(egress[slot].queue.wrote(count))
        if options.sabotage == .completeAtWrite {
            for meta in egress[slot].queue.heldMetas.prefix(egress[slot].queue.inPipe) { if let tag = meta.tag { complete(tag) } }
        }
    }

    /// A write to egress `slot` found no room (EAGAIN, or not one whole frame fits): until it takes bytes again,
    /// a full queue applies its overflow policy.
    public mutating func egressWouldBlock(_ slot: Int) {
        egress[slot].flushBlocked = true
    }

    /// Egress `slot`'s pipe holds `unread` bytes (FIONREAD): what was written before that was read whole, and
    /// is done. A reader that reads nothing for the stall timeout while its pipe holds data is stalled (its
    /// backlog goes elsewhere); it recovers once it has emptied its pipe. The shell asks when it needs room or
    /// progress, not on a clock: the time counts from the last ask that found the reader had read, or its pipe
    /// empty.
    public mutating func egressUnread(_ slot: Int, unread: Int, now: UInt64) {
        guard egress[slot].open else { return }
        if egress[slot].progressPending {
            egress[slot].progressPending = false
            egress[slot].lastProgress = now
        }
        acknowledge(slot, unread: unread)
        let consumed = egress[slot].bytes - UInt64(min(max(0, unread), Int(clamping: egress[slot].bytes)))
        // A pipe that holds nothing is not held up by its reader, whatever waits to be written: the shell does
        // not ask an idle pipe, so the first ask after frames arrived must not find the reader late.
        if consumed > egress[slot].consumed || unread == 0 {
            if consumed > egress[slot].consumed { egress[slot].flushBlocked = false }
            egress[slot].consumed = consumed
            egress[slot].lastProgress = now
            if egress[slot].stalled && unread == 0 {
                egress[slot].stalled = false
                egress[slot].since = now
                epoch &+= 1
                notice(.consumerCaughtUp(pipe: egress[slot].name))
                releaseWaiting(routeSlots[egress[slot].spec.dataType] ?? -1, now: now)
            }
            return
        }
        guard !egress[slot].stalled, now - egress[slot].lastProgress > options.stallTimeout else { return }
        egress[slot].stalled = true
        egress[slot].stalls += 1
        egress[slot].since = now
        epoch &+= 1
        egress[slot].lastError = "stalled: read nothing for \(Double(options.stallTimeout) / 1e9)s with \(unread) bytes unread"
        let backlog = withEgressQueue(slot) { $0.takeUnstarted() }
        egress[slot].rerouted += UInt64(backlog.count)
        notice(.consumerStalled(pipe: egress[slot].name, unreadBytes: unread, backlog: backlog.count))
        for frame in backlog { reroute(frame, now: now) }
    }

    mutating func acknowledge(_ slot: Int, unread: Int) {
        var done: [SpoolTag] = []
        withEgressQueue(slot) { $0.acknowledge(unread: unread) { done.append($0) } }
        for tag in done { complete(tag) }
    }

    /// The consumer of egress `slot` is gone (EPIPE, POLLERR, its pipe deleted): `unread` is what its pipe
    /// still held (FIONREAD, before the shell closes it). What it did not read whole goes to other instances;
    /// the instance is probed until a reader returns.
    public mutating func egressFailed(_ slot: Int, unread: Int, reason: String, now: UInt64) {
        guard egress[slot].open else { return }
        acknowledge(slot, unread: unread)
        let frames = detach(slot)
        actions.append(.closeEgress(egress[slot].id))
        markDown(slot, reason: reason, now: now)
        if !frames.isEmpty { notice(.rerouting(pipe: egress[slot].name, frames: frames.count)) }
        if options.sabotage == .forgetRerouteOnEPIPE {
            for frame in frames { if let tag = frame.meta.tag { complete(tag) } }
            return
        }
        for frame in frames { reroute(frame, now: now) }
    }

    /// Takes every frame of egress `slot` its reader did not acknowledge.
    mutating func detach(_ slot: Int) -> [DetachedFrame] {
        let frames = withEgressQueue(slot) { $0.takeNotAcknowledged() }
        egress[slot].rerouted += UInt64(frames.count)
        return frames
    }

    mutating func markDown(_ slot: Int, reason: String, now: UInt64) {
        egress[slot].open = false
        egress[slot].failures += 1
        egress[slot].lastError = reason
        egress[slot].stalled = false
        egress[slot].progressPending = false
        egress[slot].since = now
        egress[slot].backoff = options.probeBackoff.first
        egress[slot].nextProbe = now + egress[slot].backoff
        epoch &+= 1
        notice(.consumerDown(pipe: egress[slot].name, reason: reason))
    }

    mutating func requestProbe(_ slot: Int, now: UInt64) {
        egress[slot].probing = true
        actions.append(.openEgress(egress[slot].id, name: egress[slot].name, pipeSize: egress[slot].spec.pipeSize))
    }

    /// Something opened the egress pipe `name` (the shell watches the root for opens): a reader may be back, so
    /// an instance that is down is probed at the next tick instead of at the end of its backoff.
    public mutating func egressOpenedByReader(named name: String, now: UInt64) {
        for slot in egress.indices where egress[slot].name == name && !egress[slot].open && !egress[slot].probing && !egress[slot].spec.isRemote {
            egress[slot].backoff = options.probeBackoff.first
            egress[slot].nextProbe = now
        }
    }

    /// Timers: probes of instances that are down, and closed pipes forgotten. The shell calls it once per loop pass, after the pass's I/O.
    public mutating func tick(now: UInt64) {
        for slot in egress.indices where !egress[slot].open && !egress[slot].probing && now >= egress[slot].nextProbe && !egress[slot].spec.isRemote {
            if stopping && egress[slot].queue.isEmpty { continue }
            requestProbe(slot, now: now)
        }
        if ingress.contains(where: \.closed) {
            ingress.removeAll { $0.closed }
            reindexIngress()
            for slot in ingress.indices where ingress[slot].awaitingSpool {
                // The oldest pipe of a name goes first: its bytes were written before the newer one's.
                let pipe = ingress[slot]
                guard let index = spoolSlots[pipe.name],
                    !ingress.contains(where: { $0.spool == index || ($0.name == pipe.name && $0.awaitingSpool && $0.id.raw < pipe.id.raw) })
                else { continue }
                ingress[slot].spool = index
                ingress[slot].awaitingSpool = false
                // What follows comes from this pipe, not the one that filled the spool so far: a replay must not
                // join the two. This reader passes that cut at once, keeping what its buffer holds: a frame it
                // read the head of before it had a spool (its type was at most once) goes on with the next bytes
                // the spool takes from this same pipe. Dead-lettering that head at the cut, as a reader that
                // reaches a cut does, made the rest of the frame garbage and reset the pipe: the 16 KiB read
                // after it went to the dead letters too.
                _ = withSpool(index) { ledger in
                    ledger.sourceChanged()
                    ledger.passCut()
                }
            }
        }
    }

    /// Gives back the memory of ingress `slot`'s buffer when it holds nothing (an idle pipe costs nothing).
    public mutating func shrinkIfIdle(_ slot: Int) {
        guard ingress[slot].pendingBytes == 0 else { return }
        ingress[slot].buffer.shrinkIfIdle()
    }

    /// Stops reading new frames: only half-read frames are completed; queued frames keep going out.
    public mutating func beginStop() { stopping = true }

    // MARK: Spools

    /// The name of ingress `slot`'s spool (its pipe's), if it has one.
    public func spoolPipe(of slot: Int) -> String? {
        let index = ingress[slot].spool
        return index >= 0 ? spools[index]?.pipe : nil
    }

    /// The spool ledger of ingress `slot`, if it has one. A copy: read what you need from it, do not keep it
    /// across a call that changes the core.
    public func spool(of slot: Int) -> SpoolLedger? {
        let index = ingress[slot].spool
        return index >= 0 ? spools[index] : nil
    }

    /// Whether spool `index` holds nothing undelivered and no partial frame: its file may be truncated.
    public func spoolEmptyable(_ index: Int) -> Bool {
        guard let ledger = spools[index] else { return false }
        let pending = ingress.reduce(0) { $0 + ($1.spool == index ? $1.pendingBytes : 0) }
        return ledger.isEmptyable(pending: pending)
    }

    /// The shell truncated spool `index`'s file to 0.
    public mutating func spoolTruncated(_ index: Int) {
        _ = withSpool(index) { $0.truncated() }
    }
}
