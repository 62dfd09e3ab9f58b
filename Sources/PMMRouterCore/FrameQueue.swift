public import PMMWire

/// Marks a frame whose delivery an at-least-once spool tracks: which spool ledger, and the frame's place in it.
///
/// A negative `spool` names the inbound ledger of a link instead (`-2 - peer`), and `stream` which numbering of
/// that peer's frames the tag belongs to (a restarted peer numbers from 1 again).
public struct SpoolTag: Equatable, Sendable {
    public var spool: Int32
    public var sequence: UInt64
    public var stream: UInt32 = 0
}

/// What the router remembers of a queued frame besides its bytes: the route it was accepted on (a data type,
/// by index into the installed layout's routes), the schema version it was accepted as (0: any reader), and
/// the spool tag while it is not yet safely delivered.
public struct FrameMeta: Equatable, Sendable {
    public var route: Int32
    public var version: Int32
    public var tag: SpoolTag?
}

/// A frame taken out of a queue to be routed again.
public struct DetachedFrame: Sendable {
    public var bytes: [UInt8]
    public var meta: FrameMeta
}

/// The frames of one egress pipe (or of a route waiting for an instance): their bytes in segments, plus, per
/// frame, its start offset and metadata.
///
/// Offsets are the queue's own, counted from the first byte appended since it was last empty; frames follow
/// each other without gaps, and a frame never spans two segments. Three positions move forward:
/// - `acknowledged`: bytes the consumer has read (learned from FIONREAD); frames ending before it are gone;
/// - `written`: bytes handed to the pipe with write(2), a segment's worth of whole frames at most per call;
/// - the end: frames routed here and not yet written.
///
/// Frames between `acknowledged` and `written` are in the pipe: kept so that, if the consumer dies, the ones it
/// did not read whole can go to another instance. A frame's spool tag is completed only when the consumer has
/// read it whole (acknowledged), not when it was written: a frame in a dead consumer's pipe is re-routed with
/// its tag, so a router crash after that still finds it in the spool.
///
/// Why segments: a queue in one contiguous array grew by reallocation, and while it copied, the old buffer and
/// the new one (twice the size) were both resident: a router with a slow consumer reached about twice its
/// `--memory-limit` (108 MiB of RSS with a 32 MiB limit). It also had to move what it still held to the front
/// to free what was read. A segment is never grown, and one whose frames were all read is given back whole to
/// the pool, so nothing held is ever copied.
public struct FrameQueue: Sendable {
    /// Bytes per segment: frames go into the last segment while they fit. A frame larger than this has a
    /// segment of its own.
    static let segmentSize = 256 << 10
    /// Where queues give freed segments back and take new ones: a queue that streams cycles through the
    /// segments a pipe's worth of frames needs, and reuses them instead of faulting in fresh pages for each
    /// one. Shared by every queue of the process (an idle queue keeps none), at most 16 segments (4 MiB).
    public static let sharedPool = BufferPool(limit: 16 * segmentSize)

    /// Live segments are `segments[firstSegment...]`; `bases[i]` is the offset of `segments[i]`'s first byte.
    private var segments: [[UInt8]] = []
    private var bases: [Int] = []
    private var firstSegment = 0
    private let pool: BufferPool
    /// The offset after the last byte.
    private var end = 0
    private var starts: [Int] = []
    private var metas: [FrameMeta] = []
    /// Index of the first frame not yet acknowledged.
    private var head = 0
    /// Index of the first frame not completely written.
    private var firstUnwritten = 0
    public private(set) var written = 0
    public private(set) var acknowledged = 0
    /// Counts the changes that move frames not yet written (drops, frames taken back, the queue emptied and its
    /// offsets started again): an offset into the queue noted before is still good while this is unchanged.
    public private(set) var removals = 0

    public init(pool: BufferPool = FrameQueue.sharedPool) {
        self.pool = pool
    }

    /// Frames not yet completely written.
    public var count: Int { starts.count - firstUnwritten }
    public var isEmpty: Bool { starts.count == head }
    /// Frames written but maybe not read.
    public var inPipe: Int { firstUnwritten - head }
    /// Bytes not yet written.
    public var unwrittenBytes: Int { end - written }
    /// The offset the next frame appended will start at.
    public var endOffset: Int { end }
    /// Bytes the router holds for this queue: every frame not yet acknowledged.
    public var heldBytes: Int { head < starts.count ? end - starts[head] : 0 }
    /// Bytes of the queue's live segments in use: the frames it holds and, before them in the first segment,
    /// acknowledged ones not freed yet (less than a segment). This, not `heldBytes`, is the memory the queue
    /// takes.
    public var footprint: Int { firstSegment < segments.count ? end - bases[firstSegment] : 0 }
    /// Bytes written and not yet known to be read.
    public var unacknowledgedBytes: Int { written - acknowledged }

    private func end(of index: Int) -> Int { index + 1 < starts.count ? starts[index + 1] : end }

    /// The live segment holding offset `offset` (at a boundary, the later one).
    private func segment(containing offset: Int) -> Int {
        var low = firstSegment
        var high = segments.count - 1
        while low < high {
            let middle = (low + high + 1) / 2
            if bases[middle] <= offset { low = middle } else { high = middle - 1 }
        }
        return low
    }

    /// Calls `body` with the bytes at `range`, which lie in one segment.
    private func withBytes<R>(_ range: Range<Int>, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        let index = segment(containing: range.lowerBound)
        let base = bases[index]
        return try segments[index].withUnsafeBytes { raw in
            try body(UnsafeRawBufferPointer(rebasing: raw[(range.lowerBound - base)..<(range.upperBound - base)]))
        }
    }

    public mutating func append(_ frame: UnsafeRawBufferPointer, meta: FrameMeta) {
        let size = frame.count
        let last = segments.count - 1
        // (No live segment is ever empty: one emptied by a drop is removed.)
        if firstSegment > last || segments[last].count + size > Self.segmentSize {
            bases.append(end)
            segments.append(newSegment(for: size))
        }
        starts.append(end)
        metas.append(meta)
        segments[segments.count - 1].append(contentsOf: frame)
        end += size
    }

    public mutating func append(_ frame: DetachedFrame) {
        frame.bytes.withUnsafeBytes { append($0, meta: frame.meta) }
    }

    private func newSegment(for size: Int) -> [UInt8] {
        guard size <= Self.segmentSize else {
            var segment: [UInt8] = []
            segment.reserveCapacity(size)
            return segment
        }
        return pool.take(reserving: Self.segmentSize)
    }

    /// Gives a freed segment to the pool (one of a frame larger than a segment is let go).
    private static func recycle(_ segment: inout [UInt8], to pool: BufferPool) {
        if segment.capacity >= segmentSize && segment.capacity <= 2 * segmentSize { pool.give(segment) }
        segment = []
    }

    /// Records that `n` more bytes were written; returns how many frames are now completely written.
    public mutating func wrote(_ n: Int) -> Int {
        precondition(n >= 0 && n <= unwrittenBytes, "wrote more than was queued")
        written += n
        var frames = 0
        while firstUnwritten < starts.count && end(of: firstUnwritten) <= written {
            firstUnwritten += 1
            frames += 1
        }
        return frames
    }

    /// Records that the pipe still holds `unread` bytes: everything written before that was read. Calls
    /// `completed` with the tag of every frame now read whole.
    public mutating func acknowledge(unread: Int, completed: (SpoolTag) -> Void) {
        acknowledged = max(acknowledged, written - min(max(0, unread), written))
        let before = head
        while head < firstUnwritten && end(of: head) <= acknowledged {
            if let tag = metas[head].tag { completed(tag) }
            metas[head].tag = nil
            head += 1
        }
        guard head != before else { return }
        if head == starts.count {
            empty()
            return
        }
        // Segments whose frames were all read are freed whole.
        let held = starts[head]
        while firstSegment < segments.count - 1 && bases[firstSegment + 1] <= held {
            Self.recycle(&segments[firstSegment], to: pool)
            firstSegment += 1
        }
        // The per-frame arrays drop what was read once it is at least half of them.
        if head >= 1024 && head * 2 >= starts.count {
            starts.removeFirst(head)
            metas.removeFirst(head)
            firstUnwritten -= head
            head = 0
        }
        if firstSegment >= 64 && firstSegment * 2 >= segments.count {
            segments.removeFirst(firstSegment)
            bases.removeFirst(firstSegment)
            firstSegment = 0
        }
    }

    /// Everything was read: offsets start again from 0, and the segments go back to the pool.
    private mutating func empty() {
        removals += 1
        for index in firstSegment..<segments.count { Self.recycle(&segments[index], to: pool) }
        segments.removeAll(keepingCapacity: true)
        bases.removeAll(keepingCapacity: true)
        firstSegment = 0
        starts.removeAll(keepingCapacity: true)
        metas.removeAll(keepingCapacity: true)
        head = 0
        firstUnwritten = 0
        end = 0
        written = 0
        acknowledged = 0
    }

    /// Records that the oldest `frames` frames written are read whole (a link's cumulative acknowledgement):
    /// calls `completed` with each one's tag.
    public mutating func acknowledge(frames: Int, completed: (SpoolTag) -> Void) {
        let last = min(head + frames, firstUnwritten) - 1
        guard last >= head else { return }
        acknowledge(unread: written - end(of: last), completed: completed)
    }

    /// Calls `body` with the whole frames not yet written, oldest first, up to about `limit` bytes (at least
    /// one when there is one), borrowed from the queue: valid only during the call.
    public func withUnwrittenFrames<R>(limit: Int, _ body: ([UnsafeRawBufferPointer]) -> R) -> R {
        var frames: [UnsafeRawBufferPointer] = []
        var total = 0
        var index = firstUnwritten
        // Each segment lends its bytes only inside its own closure: the segments are visited nested, and `body`
        // runs in the innermost, while every one of them is lent.
        func visit(_ segmentIndex: Int) -> R {
            guard index < starts.count && (frames.isEmpty || total < limit) && segmentIndex < segments.count else {
                return body(frames)
            }
            let base = bases[segmentIndex]
            let segmentEnd = base + segments[segmentIndex].count
            return segments[segmentIndex].withUnsafeBytes { raw in
                while index < starts.count && starts[index] < segmentEnd && (frames.isEmpty || total < limit) {
                    let start = max(starts[index], written)
                    let frame = UnsafeRawBufferPointer(rebasing: raw[(start - base)..<(end(of: index) - base)])
                    frames.append(frame)
                    total += frame.count
                    index += 1
                }
                return visit(segmentIndex + 1)
            }
        }
        guard index < starts.count else { return body([]) }
        return visit(segment(containing: max(starts[index], written)))
    }

    /// The bytes of the first `frames` frames not yet written.
    public func unwrittenBytes(frames: Int) -> Int {
        let last = min(firstUnwritten + frames, starts.count)
        guard last > firstUnwritten else { return 0 }
        return end(of: last - 1) - written
    }

    /// The index of the first frame not yet started (nothing of it written), or nil.
    private var firstUnstarted: Int? {
        var index = firstUnwritten
        while index < starts.count && starts[index] < written { index += 1 }
        return index < starts.count ? index : nil
    }

    /// Drops the oldest frame not yet started; returns its metadata, or nil when every unwritten frame has
    /// started.
    public mutating func dropOldestUnwritten() -> FrameMeta? {
        guard let index = firstUnstarted else { return nil }
        removals += 1
        let start = starts[index]
        let length = end(of: index) - start
        let meta = metas[index]
        let segmentIndex = segment(containing: start)
        let local = start - bases[segmentIndex]
        segments[segmentIndex].removeSubrange(local..<(local + length))
        starts.remove(at: index)
        metas.remove(at: index)
        for i in index..<starts.count { starts[i] -= length }
        for i in (segmentIndex + 1)..<segments.count { bases[i] -= length }
        end -= length
        if segments[segmentIndex].isEmpty { removeSegment(segmentIndex) }
        return meta
    }

    /// Removes an empty live segment (its neighbours' offsets already meet).
    private mutating func removeSegment(_ index: Int) {
        Self.recycle(&segments[index], to: pool)
        segments.remove(at: index)
        bases.remove(at: index)
        if firstSegment == segments.count && head == starts.count { empty() }
    }

    /// Removes the frames not yet started and returns them (a stalled consumer's backlog); a frame partly
    /// written stays, so the stream on the pipe stays whole.
    public mutating func takeUnstarted() -> [DetachedFrame] {
        guard let index = firstUnstarted else { return [] }
        removals += 1
        var frames: [DetachedFrame] = []
        frames.reserveCapacity(starts.count - index)
        for i in index..<starts.count {
            frames.append(DetachedFrame(bytes: withBytes(starts[i]..<end(of: i)) { Array($0) }, meta: metas[i]))
        }
        let cut = starts[index]
        let segmentIndex = segment(containing: cut)
        for i in (segmentIndex + 1)..<segments.count { Self.recycle(&segments[i], to: pool) }
        segments.removeSubrange((segmentIndex + 1)...)
        bases.removeSubrange((segmentIndex + 1)...)
        segments[segmentIndex].removeSubrange((cut - bases[segmentIndex])...)
        starts.removeSubrange(index...)
        metas.removeSubrange(index...)
        end = cut
        if segments[segmentIndex].isEmpty { removeSegment(segmentIndex) }
        return frames
    }

    /// How many unwritten bytes can go into a pipe with `room` bytes free without leaving a frame cut in two
    /// there: whole frames only. A frame already partly written is finished first; a frame larger than the
    /// room goes out in parts only when `pipeEmpty` (a frame larger than the pipe cannot go otherwise).
    public func writable(room: Int, pipeEmpty: Bool) -> Int {
        guard room > 0, firstUnwritten < starts.count else { return 0 }
        var index = firstUnwritten
        var total = 0
        if starts[index] < written {
            // Finish the frame in progress.
            total = min(end(of: index) - written, room)
            if total < end(of: index) - written { return total }
            index += 1
        }
        while index < starts.count {
            let size = end(of: index) - starts[index]
            guard total + size <= room else { break }
            total += size
            index += 1
        }
        if total == 0 && pipeEmpty { return room }
        return total
    }

    /// The bytes of the next whole frames to write, none of them started, as many as fit in `limit` bytes and
    /// lie in one segment (0 when the next frame has started or is larger).
    public func nextFramesSize(atMost limit: Int) -> Int {
        guard firstUnwritten < starts.count, starts[firstUnwritten] == written else { return 0 }
        let segmentEnd: Int = {
            let index = segment(containing: written)
            return bases[index] + segments[index].count
        }()
        var index = firstUnwritten
        while index < starts.count && end(of: index) <= min(written + limit, segmentEnd) { index += 1 }
        return index == firstUnwritten ? 0 : end(of: index - 1) - written
    }

    /// Calls `body` with the unwritten bytes of the segment being written: whole frames (and the rest of a
    /// frame in progress), at most a segment's worth. What follows is in the next segment, for the next call.
    public func withUnwritten<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        guard written < end else { return try body(UnsafeRawBufferPointer(start: nil, count: 0)) }
        let index = segment(containing: written)
        let base = bases[index]
        return try segments[index].withUnsafeBytes { raw in try body(UnsafeRawBufferPointer(rebasing: raw[(written - base)...])) }
    }

    /// Empties the queue and returns the frames the reader did not read whole: those still unwritten, and
    /// those written that are not acknowledged. A frame the reader read in part is returned whole. Frames
    /// acknowledged whole complete their tags through `completed` (already done by `acknowledge`).
    public mutating func takeNotAcknowledged() -> [DetachedFrame] {
        var frames: [DetachedFrame] = []
        frames.reserveCapacity(starts.count - head)
        for index in head..<starts.count {
            frames.append(DetachedFrame(bytes: withBytes(starts[index]..<end(of: index)) { Array($0) }, meta: metas[index]))
        }
        for index in firstSegment..<segments.count { Self.recycle(&segments[index], to: pool) }
        let removals = self.removals
        self = FrameQueue(pool: pool)
        self.removals = removals + 1
        return frames
    }

    /// Rewrites every frame's route index through `map` (old index -> new index), after a reload.
    public mutating func remapRoutes(_ map: [Int32]) {
        for i in metas.indices where metas[i].route >= 0 && Int(metas[i].route) < map.count {
            metas[i].route = map[Int(metas[i].route)]
        }
    }

    /// Checks that every frame held is exactly one length-prefixed frame (for checks and tests); returns the
    /// position among the frames held of the first that is not.
    public func firstMalformedFrame() -> Int? {
        for index in head..<starts.count {
            let whole = withBytes(starts[index]..<end(of: index)) { frame -> Bool in
                guard case .value(let length, let prefix) = Varint.decode(frame, at: 0) else { return false }
                return prefix + Int(length) == frame.count
            }
            if !whole { return index - head }
        }
        return nil
    }

    /// The bytes of every frame held, oldest first, in one array (a copy: for checks and tests).
    public var heldFrameBytes: [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(heldBytes)
        for index in head..<starts.count { withBytes(starts[index]..<end(of: index)) { bytes.append(contentsOf: $0) } }
        return bytes
    }

    /// Live segments (for tests).
    var segmentCount: Int { segments.count - firstSegment }

    /// The metadata of every frame held, oldest first (for checks and tests).
    public var heldMetas: ArraySlice<FrameMeta> { metas[head...] }
}
