import Glibc
import Logging
import PMMCore
import PMMRouterCore
import PMMSystem
import SystemPackage

extension Router {
    // MARK: Ingress

    /// Reads ingress `slot` up to `budget` times, as long as the core wants it read, and hands every read to
    /// the core. At-least-once pipes are spliced into their spool first and read back from it.
    func readIngress(_ slot: Int, budget: Int) {
        let id = core.ingress[slot].id
        for _ in 0..<budget {
            let now = monotonicNanos()
            guard core.ingressSlot(id) == slot, inPlace({ $0.wantsToRead(slot, now: now) }) else { return }
            if waitsForSplice(id, now: now) {
                spoolWhileWaiting(slot, id: id)
                return
            }
            if core.ingress[slot].backlog {
                flushAll()  // a queue at its buffer may have paused parsing until its pipe takes what it can
                core.ingressRead(slot, count: 0, now: now)
                performActions()
                continue
            }
            let held = ingressFDs[id]
            var n: Int
            var emptied = false
            // Scalars from the ledger, never a copy held across a core call (it would copy its bookkeeping).
            if let file = inPlace({ $0.spoolPipe(of: slot) }).flatMap({ spoolFiles[$0] }) {
                if inPlace({ $0.spool(of: slot)!.unread }) == 0 {
                    guard let held else {
                        core.ingressEmpty(slot, now: now)
                        performActions()
                        return
                    }
                    // What moved is read back below.
                    let moved = spoolIn(slot, file: file, from: held.fd, length: options.readSize)
                    if moved == 0 {
                        core.ingressEOF(slot, now: now)
                        performActions()
                        return
                    } else if moved < 0 {
                        let error = errno
                        if error == EINTR { continue }
                        if error == EAGAIN || error == EWOULDBLOCK {
                            core.ingressEmpty(slot, now: now)
                        } else {
                            logger.error(
                                "cannot splice into the spool; the producer is held back", metadata: ["pipe": "\(file.pipe)", "errno": "\(error)"])
                        }
                        performActions()
                        return
                    }
                }
                let offset = inPlace({ $0.spool(of: slot)!.readOffset })
                let available = Int(clamping: inPlace({ $0.spool(of: slot)!.readable }))
                guard available > 0 else {
                    // At a cut in the spool (bytes skipped, or a change of source): the core passes it.
                    core.ingressRead(slot, count: 0, now: now)
                    performActions()
                    continue
                }
                n = core.withReadSpace(slot) { raw in
                    file.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<min(raw.count, available)]), at: offset)
                }
                if n == 0 {
                    logger.error("the spool is shorter than its ledger; was it truncated?", metadata: ["pipe": "\(file.pipe)"])
                    return
                }
                if n > 0 && options.splice != .never && inPlace({ $0.canSpliceBack(slot) }) {
                    if spliceBack(slot, id: id, file: file, from: offset, count: n, now: now) { continue }
                    return
                }
            } else {
                guard let held else { return }
                if wantsToPeek(slot, held), let peekPipe {
                    if peekIngress(slot, id: id, fd: held.fd.rawValue, through: peekPipe, now: now) { continue }
                    return
                }
                var asked = 0
                n = core.withReadSpace(slot) { raw in
                    asked = raw.count
                    return read(held.fd.rawValue, raw.baseAddress, raw.count)
                }
                if options.splice != .never { ingressFDs[id]?.readFound(n, busyAt: core.options.minimumSplice) }
                if n == 0 {
                    core.ingressEOF(slot, now: now)
                    performActions()
                    return
                }
                // A pipe returns less than asked only when that emptied it: the next read would find nothing
                // (EAGAIN). Level-triggered epoll reports what arrives after this, so that read is skipped. A
                // draining pipe reads on to EAGAIN, which is when the core closes it.
                emptied = n > 0 && n < asked && !core.ingress[slot].draining
            }
            if n > 0 {
                core.ingressRead(slot, count: n, now: now)
                performActions()
                if emptied { return }
                continue
            }
            let error = errno
            if error == EINTR { continue }
            if error == EAGAIN || error == EWOULDBLOCK {
                core.ingressEmpty(slot, now: now)
                performActions()
                return
            }
            core.ingressUnavailable(id, missing: false, error: String(cString: strerror(error)))
            logger.error("read failed", metadata: ["pipe": "\(core.ingress[slot].name)", "errno": "\(error)"])
            return
        }
    }

    /// Whether to peek ingress `slot` rather than read it: an at-most-once pipe, busy (`auto`: its last read or
    /// peek found a run's worth of bytes) or any (`always`).
    func wantsToPeek(_ slot: Int, _ held: Held) -> Bool {
        switch options.splice {
        case .never: return false
        case .auto: return held.busy && held.peekPause == 0 && inPlace({ $0.canPeek(slot) })
        case .always: return held.peekPause == 0 && inPlace({ $0.canPeek(slot) })
        }
    }

    /// Looks at the head of ingress `slot`'s pipe without taking it (tee(2) through `pipe`), lets the core
    /// route the frames it completes, then empties the pipe's head in the core's order: a run of frames that
    /// went to one consumer back to back moves into that consumer's pipe with splice(2), when it is the next
    /// thing its queue must write and the pipe surely takes it whole; every other byte is dropped from the
    /// ingress pipe (splice into /dev/null), its frames already in their queues (written from there), dead-
    /// lettered, or buffered. The frames moved stay in their queue too, as written: if the consumer dies
    /// before reading them, they go to another instance, as after a write.
    ///
    /// Against a read and a write, this saves the write's copy of every byte moved (about a quarter of the
    /// router's time with 4 KB frames), and a router killed between the look and the splice loses nothing:
    /// the bytes are still in the ingress pipe. Returns whether to go on reading.
    func peekIngress(_ slot: Int, id: PipeID, fd: Int32, through pipe: PeekPipe, now: UInt64) -> Bool {
        let n = core.withReadSpace(slot) { raw in pipe.look(at: fd, into: raw) }
        if n == 0 {
            core.ingressEOF(slot, now: now)
            performActions()
            return false
        }
        if n < 0 {
            let error = errno
            if error == EINTR { return true }
            if error == EAGAIN || error == EWOULDBLOCK {
                ingressFDs[id]?.busy = false
                core.ingressEmpty(slot, now: now)
                performActions()
                return false
            }
            // tee(2) refused the pipe: read it instead from now on.
            logger.warning("cannot peek an ingress pipe; reading it instead", metadata: ["pipe": "\(core.ingress[slot].name)", "errno": "\(error)"])
            ingressFDs[id]?.peekPause = .max
            return true
        }
        let plan = core.ingressPeeked(slot, count: n, now: now)
        var moved = 0
        var refused: [Int] = []
        // Whether a run could have moved, if not now: a long enough run to a pipe large enough for one.
        var couldMove = false
        for step in plan.steps {
            var done = 0
            if let egress = step.egress, !refused.contains(egress) {
                let pages = PipeOccupancy.slotsSpanned(run: step.count, look: n, slots: pipe.slots)
                let spliced = spliceRun(step, pages: pages) { destination in
                    c_splice(fd, nil, destination, nil, step.count, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
                }
                if let spliced {
                    done = spliced
                    couldMove = true
                }
                moved += done
                if done < step.count { refused.append(egress) }  // its later runs would pass frames still queued
            }
            if done < step.count && dropFromPipe(fd, count: step.count - done) < step.count - done {
                // The pipe holds what was looked at until the router takes it: only an error gets here.
                logger.error("cannot take peeked bytes from an ingress pipe", metadata: ["pipe": "\(core.ingress[slot].name)", "errno": "\(errno)"])
                break
            }
        }
        shellCounters.splicedBytes += UInt64(moved)
        ingressFDs[id]?.busy = n >= core.options.minimumSplice
        if options.splice == .auto && !couldMove && n >= core.options.minimumSplice {
            // A look of a run's worth with no run long enough (frames spread over consumers), or only to pipes
            // too small for one: for a while, peeking only adds system calls. (A shorter look says nothing about
            // runs: pausing after one turned 1.0 of 3.4 GB at 4 KB into plain reads.) A run refused because its
            // queue holds older frames or its pipe is full keeps the pipe peeked: going back to reading then left
            // a backlog in the queues that kept every later run from moving, 0.70× the relay's throughput at 4 KB
            // against 0.88×.
            ingressFDs[id]?.peekPause = Self.readsAfterIdlePeek
        }
        performActions()
        return !waitForQueue(id, plan: plan, refused: refused, now: now)
    }

    /// After the runs of `plan` moved, or not (`refused`: the egress slots whose runs stopped moving): when the
    /// plan went to one consumer and some of it could not move, its frames wait in the queue for the pipe to
    /// take them. Reading on now would route the next ones behind them, to be written from the queue too, and so
    /// on while the consumer is the slower side: at 4 KB, 2.2 of 3.4 GB looked at went that way, and 24% of all
    /// bytes moved with splice. So ingress `id` waits until the queue is written out (`waitsForSplice`): its
    /// next frames stay in the pipe (or the spool) meanwhile, and the read after that moves them with splice.
    /// Only for a plan to one consumer: one spread over several must not wait for the slowest of them; and not
    /// for a pipe being drained (an apply removed it), which is read every pass until it is empty. Returns
    /// whether the pipe now waits.
    func waitForQueue(_ id: PipeID, plan: RouterCore.PeekPlan, refused: [Int], now: UInt64) -> Bool {
        guard let egress = refused.first, let slot = core.ingressSlot(id), !core.ingress[slot].draining,
            plan.steps.allSatisfy({ $0.egress == nil || $0.egress == egress }),
            inPlace({ $0.egress[egress].queue.unwrittenBytes }) > 0
        else { return false }
        ingressFDs[id]?.waitsFor = (egress, now)
        return true
    }

    /// While ingress `slot`'s read-back waits for a queue, its pipe still moves into its spool (at-least-once),
    /// so that its producer is not held back: the spool, not the pipe, holds the backlog. One splice, within the
    /// spool limit. Returns whether there may be more to move (the pipe is readable and the spool has room).
    @discardableResult
    func spoolWhileWaiting(_ slot: Int, id: PipeID) -> Bool {
        guard core.ingress[slot].open, core.spoolLive < options.spoolLimit, let held = ingressFDs[id],
            let file = inPlace({ $0.spoolPipe(of: slot) }).flatMap({ spoolFiles[$0] })
        else { return false }
        // Nothing moved: empty, or the writer left, which the read after the wait sees.
        return spoolIn(slot, file: file, from: held.fd, length: options.readSize) > 0
    }

    /// Moves up to `length` bytes from pipe `source` to the end of ingress `slot`'s spool `file` (splice(2)), and
    /// tells the core. Returns what splice returned (bytes moved; 0: no writer; -1 with errno).
    func spoolIn(_ slot: Int, file: SpoolFile, from source: FileDescriptor, length: Int) -> Int {
        let moved = file.splice(from: source, at: inPlace({ $0.spool(of: slot)!.size }), length: length)
        if moved > 0 { core.spoolAppended(slot, count: moved) }
        return moved
    }

    /// Whether ingress `id` waits for an egress queue to be written out before its next look (see
    /// `peekIngress`): until the queue is written, the pipe closes, or `spliceWait` passed (a consumer that
    /// stopped reading: its queue fills to its buffer as it would without the wait, and back-pressure takes
    /// over).
    func waitsForSplice(_ id: PipeID, now: UInt64) -> Bool {
        guard let (slot, since) = ingressFDs[id]?.waitsFor else { return false }
        if slot < core.egress.count && core.egress[slot].open && inPlace({ $0.egress[slot].queue.unwrittenBytes }) > 0
            && now &- since < Self.spliceWait
        {
            return true
        }
        ingressFDs[id]?.waitsFor = nil
        return false
    }

    /// The longest an ingress pipe waits for one egress queue to be written out.
    static let spliceWait: UInt64 = 2_000_000

    /// After a peek in which no run could move, this many reads come before the next peek.
    static let readsAfterIdlePeek = 16

    /// Routes `count` bytes read back from ingress `slot`'s spool at `offset` (`ingressReadBack`), then moves
    /// each run the plan allows from the spool file into its consumer's pipe with splice(2): the pipe gets
    /// references to the file's pages instead of a copy. Safe because the spool only frees (punches, truncates)
    /// bytes its consumers have read whole, whole pages at a time. The frames stay in their queues, as written.
    /// Returns whether to go on reading (`waitForQueue`).
    func spliceBack(_ slot: Int, id: PipeID, file: SpoolFile, from offset: Int64, count: Int, now: UInt64) -> Bool {
        let plan = core.ingressReadBack(slot, count: count, now: now)
        var at = offset
        var moved = 0
        var refused: [Int] = []
        for step in plan.steps {
            if let egress = step.egress, !refused.contains(egress) {
                // A file's pages go into a pipe one buffer each: exactly the pages the run spans.
                let pages = (Int(at % 4096) + step.count + 4095) / 4096
                let done = spliceRun(step, pages: pages) { file.splice(at: at, into: $0, length: step.count) } ?? 0
                moved += done
                if done < step.count { refused.append(egress) }
            }
            at += Int64(step.count)
        }
        shellCounters.splicedBytes += UInt64(moved)
        shellCounters.splicedFromSpoolBytes += UInt64(moved)
        performActions()
        return !waitForQueue(id, plan: plan, refused: refused, now: now)
    }

    /// Moves `step`'s run into its egress pipe with `move` (a splice into the pipe it is given), if it is the
    /// next thing its queue must write and the pipe surely takes it whole: the run takes at most `pages` slots
    /// there, so the pipe must have that many pages free by the count kept since it was last asked. Returns
    /// the bytes moved (what it did not move is written from the queue), or nil when the pipe is too small ever
    /// to take such a run.
    func spliceRun(_ step: RouterCore.PeekStep, pages: Int, _ move: (Int32) -> Int) -> Int? {
        guard let slot = step.egress, inPlace({ $0.spliceable(step) }) else { return 0 }
        let id = core.egress[slot].id
        // The count is read and changed in place, as in `flush`.
        guard let fd = egressFDs[id]?.fd, let capacity = egressFDs[id]?.occupancy.pages else { return 0 }
        guard pages <= capacity else { return nil }
        if egressFDs[id]?.occupancy.mustAsk(toWrite: pages * 4096) == true {
            askEgress(slot, id: id, fd: fd, now: monotonicNanos())
            guard egressFDs[id] != nil, inPlace({ $0.spliceable(step) }) else { return 0 }
        }
        guard (egressFDs[id]?.occupancy.room ?? 0) >= pages * 4096 else { return 0 }
        let n = move(fd.rawValue)
        // Refused (EAGAIN, or EPIPE: the reader left, which the next write from the queue reports).
        guard n > 0 else { return 0 }
        egressFDs[id]?.occupancy.wrote(n, pages: pages)
        core.wrote(slot, count: n)
        if n < step.count {
            logger.warning(
                "a splice moved part of a run; the rest is written from the queue",
                metadata: ["pipe": "\(core.egress[slot].name)", "moved": "\(n)", "run": "\(step.count)"])
        }
        return n
    }

    func openIngress(_ id: PipeID, name: String, pipeSize: Int?) {
        switch root.openFIFO(name, forWriting: false) {
        case .opened(let raw, let file):
            let fd = FileDescriptor(rawValue: raw)
            setPipeSize(fd, pipeSize, name: name)
            // Opened before the old descriptor closes, so the pipe never lacks a reader. An at-least-once
            // pipe first moves what the old inode holds into its spool.
            if let old = ingressFDs[id] {
                if let slot = core.ingressSlot(id), let ledger = core.spool(of: slot), let spool = spoolFiles[ledger.pipe] {
                    while spoolIn(slot, file: spool, from: old.fd, length: 1 << 20) > 0 {}
                    // A frame the old inode's writer left cut can never be completed from the new one.
                    if old.inode != file.inode || old.device != file.device {
                        core.spoolSourceChanged(slot)
                        spool.source = file.inode
                        // At once, not at the next checkpoint: a crash in between must still find the cut.
                        if let ledger = core.spool(of: slot) { spool.writeMark(ledger, force: true) }
                    }
                }
                try? old.fd.close()
            }
            ingressFDs[id] = Held(fd: fd, inode: file.inode, device: file.device, armed: true)
            epoll.add(raw, interest: Epoll.readable, token: Token.ingress | UInt64(id.raw))
            if let slot = core.ingressSlot(id), let ledger = core.spool(of: slot) { spoolFiles[ledger.pipe]?.source = file.inode }
            core.ingressOpened(id)
        case .missing:
            core.ingressUnavailable(id, missing: true, error: "missing")
        case .noReader:
            break  // cannot happen for a read end
        case .failed(let error):
            core.ingressUnavailable(id, missing: false, error: error.message)
            logger.error("cannot open ingress pipe", metadata: ["pipe": "\(name)", "error": "\(error)"])
        }
    }

    /// Throws away what an ingress pipe holds after bytes that are not a frame, and keeps it as a dead letter.
    /// At most 1 MiB is read per reset: a producer that keeps writing garbage cannot hold the loop (the core
    /// pauses the pipe between resets).
    func resetIngress(_ id: PipeID, pending: [UInt8], spooled: Range<Int64>?, dataType: String, error: String) {
        var discarded = Array(pending.prefix(64 << 10))
        var discardedCount = pending.count
        if let spooled, let slot = core.ingressSlot(id), let ledger = core.spool(of: slot), let file = spoolFiles[ledger.pipe] {
            // Spooled after the bad bytes: never read back, kept with them.
            discardedCount += spooled.count
            let want = min(spooled.count, (64 << 10) - discarded.count)
            if want > 0 {
                var bytes = [UInt8](repeating: 0, count: want)
                let n = bytes.withUnsafeMutableBytes { file.read(into: $0, at: spooled.lowerBound) }
                discarded += bytes.prefix(max(0, n))
            }
        }
        if let held = ingressFDs[id] {
            var scratch = [UInt8](repeating: 0, count: 64 << 10)
            while discardedCount < 1 << 20 {
                let n = read(held.fd.rawValue, &scratch, scratch.count)
                if n <= 0 { break }
                discardedCount += n
                if discarded.count < 64 << 10 { discarded += scratch[0..<min(n, (64 << 10) - discarded.count)] }
            }
        }
        let slot = core.ingressSlot(id)
        if let slot, let ledger = core.spool(of: slot) {
            // At once: a router that starts again must skip the same bytes.
            spoolFiles[ledger.pipe]?.writeMark(ledger, force: true)
        }
        let name = slot.map { core.ingress[$0].name } ?? "\(id)"
        let producer = slot.map { core.ingress[$0].spec.producer } ?? ""
        let resets = slot.map { core.ingress[$0].resets } ?? 0
        logger.error(
            "ingress reset: bytes that are not a frame",
            metadata: [
                "pipe": "\(name)", "producer": "\(producer)", "error": "\(error)", "discardedBytes": "\(discardedCount)", "resets": "\(resets)",
            ])
        keepDeadLetter(DeadLetterRecord(bytes: discarded, dataType: dataType, reason: .discarded, pipe: name, detail: "\(error); \(discardedCount) bytes"))
    }

    // MARK: Egress

    /// Writes every egress pipe that has frames to write (only instances in the core's `activeEgress`). Every
    /// pipe that waits for room is flushed here again, so `roomPoll` starts afresh: what an earlier flush set
    /// for a pipe that has room by now must not keep the loop's timeout short.
    func flushAll() {
        roomPoll = nil
        var index = 0
        while index < core.activeEgress.count {
            let slot = core.activeEgress[index]
            index += 1
            if core.hasUnwritten(slot) { flush(slot) }
        }
    }

    /// Writes as much of egress `slot`'s queue as the pipe surely takes, as whole frames, in one write(2).
    ///
    /// The pipe is asked what it holds (FIONREAD) only when the bound kept since the last ask does not leave
    /// room for everything queued; the core then also learns the consumer's progress. When not one whole frame
    /// fits by that count, whole frames go PIPE_BUF bytes at a time: the kernel takes such a write whole or
    /// refuses it (EAGAIN), and a refusal means the pipe is full, which EPOLLOUT reports the end of.
    func flush(_ slot: Int) {
        let id = core.egress[slot].id
        guard let fd = egressFDs[id]?.fd, let readAtStart = egressFDs[id]?.readAt else { return }
        egressFDs[id]?.flushedEnd = core.egress[slot].queue.endOffset
        defer { if !core.hasUnwritten(slot) { armEgress(id, false) } }
        // The pipe's count is read and changed in place in `egressFDs`: a copy of it held across `wrote` would
        // make its arrays copy themselves on every write.
        // Set once not one whole frame fits by the count: from then on, PIPE_BUF at a time until EAGAIN.
        var countFull = false
        let send = { (bytes: UnsafeRawBufferPointer) -> Int in bytes.isEmpty ? 0 : write(fd.rawValue, bytes.baseAddress, bytes.count) }
        while core.hasUnwritten(slot) {
            if !countFull && egressFDs[id]?.occupancy.mustAsk(toWrite: inPlace({ $0.egress[slot].queue.unwrittenBytes })) == true {
                askEgress(slot, id: id, fd: fd, now: monotonicNanos())
                guard egressFDs[id] != nil, core.hasUnwritten(slot) else { break }
            }
            let room = egressFDs[id]?.occupancy.room ?? 0
            let empty = egressFDs[id]?.occupancy.bound == 0
            var n = countFull ? 0 : inPlace { $0.withUnwritten(slot, room: room, pipeEmpty: empty, send) }
            if n == 0 {
                countFull = true
                n = inPlace { $0.withNextFrames(slot, atMost: Self.atomicPipeWrite, send) }
            }
            if n > 0 {
                egressFDs[id]?.occupancy.wrote(n)
                core.wrote(slot, count: n)
                continue
            }
            let error = errno
            if n == 0 {
                // A frame larger than PIPE_BUF waits for room by the count. The kernel, with pages still free,
                // reports the pipe writable, so EPOLLOUT (level-triggered) would wake every pass: it is kept on
                // only while the reader reads, to write again as soon as it made room; a reader that stopped is
                // looked at by the loop's timeout instead (`roomPoll`).
                core.egressWouldBlock(slot)
                let now = monotonicNanos()
                let sinceRead = now &- (egressFDs[id]?.readAt ?? readAtStart)
                let reading = sinceRead < Self.readingWindow
                armEgress(id, reading)
                if !reading { roomPoll = min(roomPoll ?? .max, sinceRead < 200_000_000 ? 1_000_000 : 50_000_000) }
                return
            }
            if error == EAGAIN || error == EWOULDBLOCK {
                // The pipe is full: EPOLLOUT says when the reader freed a page.
                core.egressWouldBlock(slot)
                armEgress(id, true)
                return
            }
            if error == EINTR { continue }
            egressFailed(slot, reason: error == EPIPE ? "the reader went away (EPIPE)" : String(cString: strerror(error)))
            return
        }
    }

    /// Bytes a pipe takes whole or not at all (PIPE_BUF on Linux).
    static let atomicPipeWrite = 4096
    /// A reader that read within this is reading: a pipe it must make room in is retried at every pass.
    static let readingWindow: UInt64 = 1_000_000

    /// The consumer of egress `slot` is gone: the core learns what its pipe still held and re-routes.
    func egressFailed(_ slot: Int, reason: String) {
        let id = core.egress[slot].id
        let unread = egressFDs[id].map { unreadBytes($0.fd) } ?? 0
        core.egressFailed(slot, unread: unread, reason: reason, now: monotonicNanos())
        performActions()
    }

    func openEgress(_ id: PipeID, name: String, pipeSize: Int?) {
        let now = monotonicNanos()
        switch root.openFIFO(name, forWriting: true) {
        case .opened(let raw, let file):
            let fd = FileDescriptor(rawValue: raw)
            if let old = egressFDs[id] { try? old.fd.close() }
            setPipeSize(fd, pipeSize, name: name)
            egressFDs[id] = Held(
                fd: fd, inode: file.inode, device: file.device, armed: false, occupancy: PipeOccupancy(capacity: pipeCapacity(fd)), readAt: now)
            // Interest 0: only an error or hang-up (the reader went away) is reported until a write blocks.
            epoll.add(raw, interest: 0, token: Token.egress | UInt64(id.raw))
            core.egressOpened(id, now: now)
        case .noReader:
            core.egressUnavailable(id, .noReader, now: now)
        case .missing:
            core.egressUnavailable(id, .missing, now: now)
        case .failed(let error):
            core.egressUnavailable(id, .failed(error.message), now: now)
        }
    }

    // MARK: Actions

    /// Performs what the core asked for, and whatever that leads to, until nothing is left.
    func performActions() {
        while true {
            let actions = core.takeActions()
            guard !actions.isEmpty else { return }
            for action in actions { perform(action) }
        }
    }

    func perform(_ action: RouterAction) {
        switch action {
        case .openIngress(let id, let name, let pipeSize):
            openIngress(id, name: name, pipeSize: pipeSize)
        case .moveIngress(let from, let to):
            guard let held = ingressFDs.removeValue(forKey: from) else { return }
            ingressFDs[to] = held
            if held.armed { epoll.modify(held.fd.rawValue, interest: Epoll.readable, token: Token.ingress | UInt64(to.raw)) }
        case .closeIngress(let id):
            if let held = ingressFDs.removeValue(forKey: id) { try? held.fd.close() }
        case .resetIngress(let id, let pending, let spooled, let dataType, let error):
            resetIngress(id, pending: pending, spooled: spooled, dataType: dataType, error: error)
        case .openEgress(let id, let name, let pipeSize):
            openEgress(id, name: name, pipeSize: pipeSize)
        case .closeEgress(let id):
            if let held = egressFDs.removeValue(forKey: id) { try? held.fd.close() }
        case .deadLetter(let record):
            keepDeadLetter(record)
        case .notice(let notice):
            log(notice)
        }
    }

    /// Keeps a dead letter in the spool (or counts it dropped when there is none), logging 1, 2, 4, 8, … of each
    /// reason so a flood does not flood the log.
    func keepDeadLetter(_ record: DeadLetterRecord) {
        if let deadLetters {
            let stored = record.bytes.withUnsafeBytes {
                deadLetters.append(frame: $0, dataType: record.dataType, reason: record.reason, pipe: record.pipe, detail: record.detail)
            }
            if !stored {
                logger.error("cannot write the dead-letter spool", metadata: ["dataType": "\(record.dataType)", "reason": "\(record.reason.rawValue)"])
            }
        } else {
            shellCounters.dropped += 1
        }
        let count = core.counters.deadLetters[record.reason] ?? 0
        if count & (count &- 1) == 0 {
            logger.warning(
                "dead letter",
                metadata: [
                    "reason": "\(record.reason.rawValue)", "dataType": "\(record.dataType)", "pipe": "\(record.pipe)", "detail": "\(record.detail)",
                    "count": "\(count)",
                ])
        }
    }

    func log(_ notice: RouterNotice) {
        switch notice {
        case .consumerHealthy(let pipe):
            logger.info("consumer instance healthy", metadata: ["pipe": "\(pipe)"])
        case .consumerDown(let pipe, let reason):
            logger.warning("consumer instance down", metadata: ["pipe": "\(pipe)", "reason": "\(reason)"])
        case .consumerStalled(let pipe, let unread, let backlog):
            logger.warning(
                "consumer instance stalled; its backlog goes elsewhere until it catches up",
                metadata: ["pipe": "\(pipe)", "unreadBytes": "\(unread)", "backlog": "\(backlog)"])
        case .consumerCaughtUp(let pipe):
            logger.info("consumer instance caught up; back in service", metadata: ["pipe": "\(pipe)"])
        case .rerouting(let pipe, let frames):
            logger.notice("re-routing frames the consumer did not read", metadata: ["pipe": "\(pipe)", "frames": "\(frames)"])
        case .ingressMissing(let pipe):
            logger.warning("ingress pipe is missing; run pmm apply", metadata: ["pipe": "\(pipe)"])
        case .ingressDrained(let pipe):
            logger.info("drained and closed a removed ingress pipe", metadata: ["pipe": "\(pipe)"])
        case .replaying(let pipe, let bytes):
            logger.notice("replaying frames spooled by an earlier router", metadata: ["pipe": "\(pipe)", "bytes": "\(bytes)"])
        case .drainAbandoned(let pipe, let pending):
            logger.error(
                "a removed ingress pipe kept half a frame past the grace period; dead-lettered it", metadata: ["pipe": "\(pipe)", "bytes": "\(pending)"])
        }
    }

    func setPipeSize(_ fd: FileDescriptor, _ size: Int?, name: String) {
        guard let size else { return }
        if fcntl(fd.rawValue, F_SETPIPE_SZ, Int32(clamping: size)) < 0 {
            logger.warning(
                "cannot set the pipe size (F_SETPIPE_SZ); fs.pipe-max-size may be lower",
                metadata: ["pipe": "\(name)", "size": "\(size)", "errno": "\(errno)"])
        }
    }
}
