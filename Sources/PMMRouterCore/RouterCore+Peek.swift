import PMMCore
import PMMWire

/// Peeking: a busy at-most-once ingress pipe is not read with read(2) but looked at with tee(2), which leaves its
/// bytes in the pipe. The core routes the frames it sees as after a read (each one still copied into its
/// queue, kept until its reader has read it), and returns a plan in the pipe's order: runs of frames that went
/// to one local consumer back to back, which the shell moves from the ingress pipe into that consumer's pipe
/// with splice(2) (page references, no copy), and bytes to drop from the ingress pipe because they are already
/// in a queue, dead-lettered or still buffered. A run is only moved while it is the next thing its queue must
/// write (`spliceable`); otherwise its frames are dropped from the ingress pipe and written from the queue, as
/// after a read.
extension RouterCore {
    /// One step of a peek's plan.
    public struct PeekStep: Equatable, Sendable {
        /// The egress slot whose pipe the bytes may move to, or nil: drop them from the ingress pipe.
        public var egress: Int?
        /// Bytes, from where the previous step ended.
        public var count: Int
        /// Where the run starts in that egress's queue, and the queue's `removals` when it was queued.
        public var queueStart: Int
        public var removals: Int

        public init(egress: Int?, count: Int, queueStart: Int = 0, removals: Int = 0) {
            self.egress = egress
            self.count = count
            self.queueStart = queueStart
            self.removals = removals
        }
    }

    /// What to do with the bytes of a peek, in the pipe's order: `steps` take `count - left` bytes from the
    /// pipe; the last `left` bytes stay there (whole frames parsing paused before, or the head of a frame), to
    /// be looked at again.
    public struct PeekPlan: Equatable, Sendable {
        public var steps: [PeekStep]
        public var left: Int
    }

    /// A frame routed during a peek, in the pipe's terms.
    struct PeekEntry {
        var egress: Int
        /// Where the frame starts in the pipe (negative: in bytes read before the peek).
        var pipeStart: Int
        var count: Int
        var queueStart: Int
        var removals: Int
    }

    /// Bytes left in the pipe are looked at again by the next peek; more than this stay in the buffer instead
    /// (as after a read), so a large frame arriving slowly is not copied out again and again.
    static let peekLeaveLimit = 64 << 10

    /// Whether ingress `slot` may be peeked: at-most-once (an at-least-once pipe goes through its spool), with
    /// no rate limit (a paused pipe would be looked at again for a few frames at a time), not being drained.
    public func canPeek(_ slot: Int) -> Bool {
        ingress[slot].spool < 0 && ingress[slot].bucket < 0 && !ingress[slot].draining && !stopping && !ingress[slot].backlog
    }

    /// The shell copied `count` bytes from the head of ingress `slot`'s pipe into its buffer (`withReadSpace`)
    /// without taking them from the pipe. Routes what they complete, as `ingressRead` does, and returns what
    /// to do with them in the pipe.
    public mutating func ingressPeeked(_ slot: Int, count: Int, now: UInt64) -> PeekPlan {
        routeLogged(slot, count: count, now: now, mayLeave: true)
    }

    /// The shell read `count` bytes of ingress `slot`'s spool back into its buffer, from where the spool's
    /// ledger said (`readOffset` before the call). Routes them, as `ingressRead` does, and returns the same plan
    /// as a peek, over those bytes of the spool file: its runs may move from the file into their consumers'
    /// pipes with splice(2) (page-cache references, no copy); its other steps need nothing (the file keeps its
    /// bytes), and nothing is left.
    public mutating func ingressReadBack(_ slot: Int, count: Int, now: UInt64) -> PeekPlan {
        routeLogged(slot, count: count, now: now, mayLeave: false)
    }

    /// Whether ingress `slot`'s spool may be read back for splices: an at-least-once pipe, the router not
    /// stopping.
    public func canSpliceBack(_ slot: Int) -> Bool {
        ingress[slot].spool >= 0 && !stopping && !ingress[slot].backlog
    }

    /// Routes `count` bytes just placed in ingress `slot`'s buffer, logging where each frame went, and plans
    /// them in their source's order. `mayLeave`: frames the parse stopped before may be left in the source, to be
    /// looked at again (a pipe; a spool's ledger has counted them read, so they stay in the buffer).
    mutating func routeLogged(_ slot: Int, count: Int, now: UInt64, mayLeave: Bool) -> PeekPlan {
        let base = ingress[slot].buffer.end - count
        let resets = ingress[slot].resets
        peekLog.removeAll(keepingCapacity: true)
        peekBase = base
        ingressRead(slot, count: count, now: now)
        peekBase = nil
        peekFrame = nil
        let reset = ingress[slot].resets != resets
        // What is still buffered, and how much of the pipe's part the core took (routed, or dropped by a reset).
        let pending = reset ? 0 : ingress[slot].buffer.pending
        let consumed = reset ? count : max(0, ingress[slot].buffer.start - base)
        var left = 0
        if mayLeave && pending > 0 && consumed > 0 && pending < Self.peekLeaveLimit {
            // All in the pipe (something before them was taken): they stay there.
            left = pending
            ingress[slot].buffer.discard(pending)
            ingress[slot].backlog = false
            ingress[slot].bytes -= UInt64(pending)
        }
        var steps: [PeekStep] = []
        var cursor = 0
        func drop(_ n: Int) {
            guard n > 0 else { return }
            if let last = steps.indices.last, steps[last].egress == nil {
                steps[last].count += n
            } else {
                steps.append(PeekStep(egress: nil, count: n))
            }
        }
        var index = 0
        while index < peekLog.count {
            var run = peekLog[index]
            index += 1
            guard run.pipeStart >= cursor, run.pipeStart + run.count <= consumed else { continue }
            while index < peekLog.count, peekLog[index].egress == run.egress, peekLog[index].pipeStart == run.pipeStart + run.count,
                peekLog[index].queueStart == run.queueStart + run.count, peekLog[index].removals == run.removals,
                peekLog[index].pipeStart + peekLog[index].count <= consumed
            {
                run.count += peekLog[index].count
                index += 1
            }
            drop(run.pipeStart - cursor)
            if run.count >= options.minimumSplice {
                steps.append(PeekStep(egress: run.egress, count: run.count, queueStart: run.queueStart, removals: run.removals))
            } else {
                drop(run.count)
            }
            cursor = run.pipeStart + run.count
        }
        drop(count - left - cursor)
        return PeekPlan(steps: steps, left: left)
    }

    /// Whether `step`'s frames may move from the ingress pipe into their egress pipe now: the egress is open,
    /// and they are the next bytes its queue must write (nothing was written, dropped or taken back in between).
    public func spliceable(_ step: PeekStep) -> Bool {
        guard let slot = step.egress, egress[slot].open, !egress[slot].spec.isRemote else { return false }
        if options.sabotage == .spliceOutOfTurn { return egress[slot].queue.unwrittenBytes >= step.count }
        // Through the array, not a `let` copy of the queue (which retains and releases its buffers).
        return egress[slot].queue.written == step.queueStart && egress[slot].queue.removals == step.removals
            && egress[slot].queue.unwrittenBytes >= step.count
    }

    /// Notes the frame being routed during a peek (called by `parse`).
    @inline(__always)
    mutating func notePeekedFrame(_ range: Range<Int>) {
        if peekBase != nil { peekFrame = range }
    }

    /// A frame is about to be appended to egress `slot`'s queue: during a peek, logs where it was in the pipe.
    @inline(__always)
    mutating func logPeekedFrame(to slot: Int) {
        guard let base = peekBase, let range = peekFrame, !egress[slot].spec.isRemote else { return }
        peekFrame = nil
        peekLog.append(
            PeekEntry(
                egress: slot, pipeStart: range.lowerBound - base, count: range.count, queueStart: egress[slot].queue.endOffset,
                removals: egress[slot].queue.removals))
    }
}
