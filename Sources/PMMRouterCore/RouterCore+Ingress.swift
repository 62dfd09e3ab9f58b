import PMMCore
import PMMWire

extension RouterCore {
    /// The shell opened ingress `id`.
    public mutating func ingressOpened(_ id: PipeID) {
        guard let slot = ingressSlots[id] else { return }
        ingress[slot].open = true
        ingress[slot].missing = false
    }

    /// The shell could not open ingress `id` (`missing`: the FIFO is not there).
    public mutating func ingressUnavailable(_ id: PipeID, missing: Bool, error: String) {
        guard let slot = ingressSlots[id] else { return }
        if missing && !ingress[slot].missing { notice(.ingressMissing(pipe: ingress[slot].name)) }
        ingress[slot].missing = missing
        ingress[slot].lastError = error
    }

    /// Whether the shell should read ingress `slot` now: open, not paused, its route not blocked, and memory and
    /// spool under their limits. While stopping, only pipes with half a frame read (and no spool) are read.
    public func wantsToRead(_ slot: Int, now: UInt64) -> Bool {
        // Through the array, not a `let` copy of the pipe (which retains and releases its buffers).
        if stopping { return ingress[slot].open && ingress[slot].pendingBytes > 0 && ingress[slot].spool < 0 }
        if ingress[slot].awaitingSpool { return false }
        guard ingress[slot].pausedUntil <= now, heldBytes < options.memoryLimit else { return false }
        let route = ingress[slot].route
        if route >= 0 && routeBlocked(route) { return false }
        let spool = ingress[slot].spool
        if spool >= 0, let unread = spools[spool]?.unread, unread == 0 {
            // More can only come from the pipe, into the spool; a drained spool without a pipe (adopted after a
            // restart) is read once more to finish or abandon its last frame.
            return (ingress[slot].open && spoolLive < options.spoolLimit) || (!ingress[slot].open && ingress[slot].draining && !ingress[slot].closed)
        }
        return ingress[slot].open || ingress[slot].backlog || (spool >= 0 && (spools[spool]?.unread ?? 0) > 0)
    }

    /// Whether ingress `slot` has work that needs no poll event: frames buffered unrouted, or spooled bytes to read
    /// back (the shell reads it without waiting for POLLIN).
    @inlinable
    public func hasBufferedWork(_ slot: Int) -> Bool {
        ingress[slot].backlog || (ingress[slot].spool >= 0 && (spools[ingress[slot].spool]?.unread ?? 0) > 0)
    }

    /// Earliest time a paused pipe may be read again, for the poll timeout.
    public func nextWake(after now: UInt64) -> UInt64? {
        var wake: UInt64?
        // By index, not `for pipe in`: a copy of each pipe per call would cost more than the check itself.
        for slot in ingress.indices where ingress[slot].pausedUntil > now { wake = min(wake ?? .max, ingress[slot].pausedUntil) }
        for slot in egress.indices where !egress[slot].open && !egress[slot].probing && egress[slot].nextProbe > now && !egress[slot].spec.isRemote {
            wake = min(wake ?? .max, egress[slot].nextProbe)
        }
        return wake
    }

    /// Calls `body` with the free space of ingress `slot`'s frame buffer (at most one read's worth); `body`
    /// returns what read(2) returned. Returns it. Bytes are not routed until `ingressRead`.
    public mutating func withReadSpace(_ slot: Int, _ body: (UnsafeMutableRawBufferPointer) -> Int) -> Int {
        let readSize = options.readSize
        ingress[slot].buffer.prepare(minimum: readSize)
        return ingress[slot].buffer.write { raw in
            let room = min(raw.count, readSize)
            let n = body(UnsafeMutableRawBufferPointer(rebasing: raw[0..<room]))
            return (min(max(0, n), room), n)
        }
    }

    /// `count` bytes were spliced from ingress `slot`'s pipe into its spool file.
    public mutating func spoolAppended(_ slot: Int, count: Int) {
        let spool = ingress[slot].spool
        _ = withSpool(spool) { $0.appended(count) }
    }

    /// `count` bytes arrived in ingress `slot`'s buffer (through `withReadSpace`; from the spool when it has
    /// one): routes every complete frame, as far as the rate allows.
    public mutating func ingressRead(_ slot: Int, count: Int, now: UInt64) {
        if count > 0 {
            if ingress[slot].spool >= 0 { _ = withSpool(ingress[slot].spool) { $0.readBack(count) } }
            ingress[slot].bytes += UInt64(count)
            parse(slot, now: now)
        } else if ingress[slot].backlog {
            parse(slot, now: now)
        }
        passSpoolBoundary(slot)
    }

    /// The spool's source changed for ingress `slot` (the shell moved to a new inode after spooling what the
    /// old one held).
    public mutating func spoolSourceChanged(_ slot: Int) {
        _ = withSpool(ingress[slot].spool) { $0.sourceChanged() }
    }

    /// Reading back reached a cut (a change of source, or bytes an earlier reading skipped): a frame cut there
    /// will never be completed, so it is dead-lettered, and reading goes on where the cut says.
    mutating func passSpoolBoundary(_ slot: Int) {
        let index = ingress[slot].spool
        guard index >= 0, let ledger = spools[index], let cut = ledger.nextCut, ledger.readOffset >= cut.at, !ingress[slot].backlog else { return }
        if ingress[slot].pendingBytes > 0 {
            let pending = ingress[slot].debugPendingBytes
            ingress[slot].buffer.reset()
            ingress[slot].resets += 1
            ingress[slot].lastError = "a frame cut where its pipe was replaced or removed"
            deadLetter(
                pending, dataType: ingress[slot].spec.dataType, reason: .discarded, pipe: ingress[slot].name,
                detail: "a frame cut where its pipe was replaced or removed; \(pending.count) bytes")
        }
        _ = withSpool(index) { $0.passCut() }
    }

    /// A read of ingress `slot` found nothing (EAGAIN). A draining pipe that is empty at a frame boundary is
    /// closed; one whose writers left half a frame there is given the drain grace, then the partial frame is
    /// dead-lettered and the pipe closed (its writers get EPIPE).
    public mutating func ingressEmpty(_ slot: Int, now: UInt64) {
        let pipe = ingress[slot]
        guard pipe.draining, !pipe.backlog else { return }
        if pipe.pendingBytes > 0 {
            guard now >= pipe.drainDeadline, pipe.spool < 0 || (spools[pipe.spool]?.unread ?? 0) == 0 else { return }
            notice(.drainAbandoned(pipe: pipe.name, pendingBytes: pipe.pendingBytes))
            reset(slot, error: .malformedEnvelope("a removed pipe kept half a frame past the grace period"), now: now)
        }
        if pipe.spool >= 0, (spools[pipe.spool]?.unread ?? 0) > 0 { return }
        closeDrained(slot)
    }

    /// Every writer of ingress `slot` closed (read returned 0). A partial frame can never be completed now.
    public mutating func ingressEOF(_ slot: Int, now: UInt64) {
        if ingress[slot].pendingBytes > 0 && !ingress[slot].backlog {
            reset(slot, error: .malformedEnvelope("the writer closed in the middle of a frame"), now: now)
        }
        if ingress[slot].draining {
            if ingress[slot].pendingBytes == 0 && !ingress[slot].backlog { closeDrained(slot) }
            return
        }
        // A fresh descriptor keeps the pipe open for the next producer without POLLHUP spinning.
        actions.append(.openIngress(ingress[slot].id, name: ingress[slot].name, pipeSize: ingress[slot].spec.pipeSize))
    }

    mutating func closeDrained(_ slot: Int) {
        guard ingress[slot].open || ingress[slot].draining else { return }
        if ingress[slot].open { actions.append(.closeIngress(ingress[slot].id)) }
        notice(.ingressDrained(pipe: ingress[slot].name))
        ingress[slot].open = false
        ingress[slot].closed = true
    }

    /// Routes the complete frames in ingress `slot`'s buffer, as far as the producer's rate allows.
    mutating func parse(_ slot: Int, now: UInt64) {
        // The buffer is taken out while its frames are routed (they are read in place, without a copy).
        var buffer = FrameBuffer(maximumFrameSize: options.maximumFrameSize, readSize: 0)
        swap(&buffer, &ingress[slot].buffer)
        defer { swap(&buffer, &ingress[slot].buffer) }
        ingress[slot].backlog = false
        let bucket = ingress[slot].bucket
        do throws(FrameError) {
            while true {
                if bucket >= 0 {
                    guard buckets[bucket].tokens.take(now: now) else {
                        // Over the rate: stop reading; the producer blocks in write(2) once the pipe fills.
                        ingress[slot].pausedUntil = buckets[bucket].tokens.nextToken(now: now)
                        ingress[slot].backlog = true
                        return
                    }
                }
                guard let frame = try buffer.next() else {
                    if bucket >= 0 { buckets[bucket].tokens.refund() }
                    return
                }
                // Every producer names the data type (DESIGN.md, "On the pipes"). A frame without one is most
                // likely the tail of a frame whose head went with a router that died mid-read (an at-most-once
                // pipe): treating it as bytes that are not a frame resynchronises the pipe instead of
                // delivering debris.
                guard !frame.fields.dataType.isEmpty else { throw FrameError.malformedEnvelope("no data_type") }
                var tag: SpoolTag?
                let spool = ingress[slot].spool
                if spool >= 0, spools[spool] != nil {
                    // Scalars only: a copy of the ledger alive across the mutation below would copy its
                    // bookkeeping on every frame.
                    let end = spools[spool]!.readOffset - Int64(buffer.end - frame.range.upperBound)
                    let replayUntil = spools[spool]!.replayUntil
                    tag = withSpool(spool) { $0.track(end: end, spool: Int32(spool)) }
                    if end <= replayUntil {
                        ingress[slot].replayed += 1
                        counters.replayed += 1
                    }
                }
                ingress[slot].resetBackoff = 0
                notePeekedFrame(frame.range)
                buffer.withBytes(frame.range) { bytes in accept(bytes, frame: frame, slot: slot, tag: tag, now: now) }
                if needsFlush {
                    // A queue is at its buffer and its pipe may take more: the shell writes, then parsing goes on.
                    needsFlush = false
                    if buffer.pending > 0 {
                        ingress[slot].backlog = true
                        return
                    }
                }
                if heldBytes >= options.memoryLimit, buffer.pending > 0 {
                    // Memory is full: what is buffered waits (the pipe is not read until memory frees).
                    ingress[slot].backlog = true
                    return
                }
            }
        } catch {
            swap(&buffer, &ingress[slot].buffer)
            reset(slot, error: error, now: now)
            swap(&buffer, &ingress[slot].buffer)
        }
    }

    /// One whole frame from ingress `slot`: checks where it came from, then routes it.
    mutating func accept(_ bytes: UnsafeRawBufferPointer, frame: Frame, slot: Int, tag: SpoolTag?, now: UInt64) {
        let fields = frame.fields
        let body = frame.bodyStart - frame.range.lowerBound
        let name = UnsafeRawBufferPointer(rebasing: bytes[(body + fields.dataType.lowerBound)..<(body + fields.dataType.upperBound)])
        if !name.bytesEqual(ingress[slot].dataTypeBytes) {
            misaddressed(bytes, slot: slot, tag: tag) { "data_type '\(String(decoding: name, as: UTF8.self))' on a '\($0.dataType)' pipe" }
            return
        }
        let source = UnsafeRawBufferPointer(rebasing: bytes[(body + fields.source.lowerBound)..<(body + fields.source.upperBound)])
        if !source.isEmpty && !source.bytesEqual(ingress[slot].producerBytes) {
            // Only the pipe's producer can write it (its mode says so): a frame naming another source lies.
            misaddressed(bytes, slot: slot, tag: tag) { "source '\(String(decoding: source, as: UTF8.self))' on a pipe of producer '\($0.producer)'" }
            return
        }
        ingress[slot].frames += 1
        let route = ingress[slot].route
        guard route >= 0 else {
            let spec = ingress[slot].spec
            deadLetter(bytes, dataType: spec.dataType, reason: .noRoute, pipe: spec.name, detail: "no service consumes '\(spec.dataType)'", tag: tag)
            return
        }
        let key = UnsafeRawBufferPointer(rebasing: bytes[(body + fields.shardKey.lowerBound)..<(body + fields.shardKey.upperBound)])
        let version = fields.schemaVersion == 0 ? Int32(clamping: ingress[slot].spec.version ?? 0) : Int32(clamping: fields.schemaVersion)
        deliver(bytes, key: key, meta: FrameMeta(route: Int32(route), version: version, tag: tag), now: now)
    }

    /// A frame that does not belong on ingress `slot`: a `misaddressed` dead letter, counted on the pipe.
    mutating func misaddressed(_ bytes: UnsafeRawBufferPointer, slot: Int, tag: SpoolTag?, detail: (RouterLayout.Ingress) -> String) {
        ingress[slot].misaddressed += 1
        let spec = ingress[slot].spec
        deadLetter(bytes, dataType: spec.dataType, reason: .misaddressed, pipe: spec.name, detail: detail(spec), tag: tag)
    }

    /// Bytes that are not a frame: the buffer is dropped (kept as a dead letter, with what the pipe holds),
    /// spooled bytes are skipped, and the pipe pauses (doubling, up to a second, while resets repeat), so a
    /// stream of garbage cannot spin the router.
    mutating func reset(_ slot: Int, error: FrameError, now: UInt64) {
        ingress[slot].resets += 1
        ingress[slot].lastError = error.description
        let pending = ingress[slot].debugPendingBytes
        ingress[slot].buffer.reset()
        ingress[slot].backlog = false
        var spooled: Range<Int64>?
        if ingress[slot].spool >= 0, let ledger = spools[ingress[slot].spool] {
            if ledger.readable > 0 { spooled = ledger.readOffset..<(ledger.readOffset + ledger.readable) }
            let start = ledger.readOffset - Int64(pending.count)
            _ = withSpool(ingress[slot].spool) { $0.skip(from: start) }
        }
        counters.deadLetters[.discarded, default: 0] += 1
        actions.append(
            .resetIngress(ingress[slot].id, pending: pending, spooled: spooled, dataType: ingress[slot].spec.dataType, error: error.description))
        let backoff = ingress[slot].resetBackoff
        ingress[slot].resetBackoff = backoff == 0 ? 10_000_000 : min(backoff * 2, 1_000_000_000)
        ingress[slot].pausedUntil = now + ingress[slot].resetBackoff
    }
}
