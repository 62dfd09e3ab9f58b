import PMMWire

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

/// The frames of one egress pipe (or of a route waiting for an instance), as one contiguous byte buffer plus,
/// per frame, its start offset and metadata.
///
/// Three positions move forward through the buffer:
/// - `acknowledged`: bytes the consumer has read (learned from FIONREAD); frames ending before it are gone;
/// - `written`: bytes handed to the pipe with write(2), so a whole batch goes out in one call;
/// - the end: frames routed here and not yet written.
///
/// Frames between `acknowledged` and `written` are in the pipe: kept so that, if the consumer dies, the ones it
/// did not read whole can go to another instance. A frame's spool tag is completed only when the consumer has
/// read it whole (acknowledged), not when it was written: a frame in a dead consumer's pipe is re-routed with
/// its tag, so a router crash after that still finds it in the spool.
public struct FrameQueue: Sendable {
    public private(set) var bytes: [UInt8] = []
    private var starts: [Int] = []
    private var metas: [FrameMeta] = []
    /// Index of the first frame not yet acknowledged.
    private var head = 0
    /// Index of the first frame not completely written.
    private var firstUnwritten = 0
    public private(set) var written = 0
    public private(set) var acknowledged = 0

    public init() {}

    /// Frames not yet completely written.
    public var count: Int { starts.count - firstUnwritten }
    public var isEmpty: Bool { starts.count == head }
    /// Frames written but maybe not read.
    public var inPipe: Int { firstUnwritten - head }
    /// Bytes not yet written.
    public var unwrittenBytes: Int { bytes.count - written }
    /// Bytes the router holds for this queue: every frame not yet acknowledged.
    public var heldBytes: Int { head < starts.count ? bytes.count - starts[head] : 0 }
    /// Bytes of the queue's buffer in use: the frames it holds and, before them, the acknowledged ones a
    /// compaction has not freed yet. This, not `heldBytes`, is the memory the queue takes.
    public var footprint: Int { bytes.count }
    /// Bytes written and not yet known to be read.
    public var unacknowledgedBytes: Int { written - acknowledged }

    private func end(of index: Int) -> Int { index + 1 < starts.count ? starts[index + 1] : bytes.count }

    public mutating func append(_ frame: UnsafeRawBufferPointer, meta: FrameMeta) {
        starts.append(bytes.count)
        metas.append(meta)
        bytes.append(contentsOf: frame)
    }

    public mutating func append(_ frame: DetachedFrame) {
        frame.bytes.withUnsafeBytes { append($0, meta: frame.meta) }
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
        while head < firstUnwritten && end(of: head) <= acknowledged {
            if let tag = metas[head].tag { completed(tag) }
            metas[head].tag = nil
            head += 1
        }
        if head == starts.count {
            bytes.removeAll(keepingCapacity: bytes.capacity <= 4 << 20)
            starts.removeAll(keepingCapacity: true)
            metas.removeAll(keepingCapacity: true)
            head = 0
            firstUnwritten = 0
            written = 0
            acknowledged = 0
        } else if head > 0 && starts[head] >= Self.compactionFloor && starts[head] >= 4 * (bytes.count - starts[head]) {
            // Moving the R bytes still held frees H >= 4R: at most a quarter of a copy per byte, amortized
            // (compacting whenever half was free made memmove a fifth of the router's time with 4 KB frames).
            // The freed bytes count against the memory limit until then (`footprint`).
            compact()
        }
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
    public func withUnwrittenFrames<R>(limit: Int, _ body: ([UnsafeRawBufferPointer]) throws -> R) rethrows -> R {
        try bytes.withUnsafeBytes { raw in
            var frames: [UnsafeRawBufferPointer] = []
            var total = 0
            var index = firstUnwritten
            while index < starts.count && (frames.isEmpty || total < limit) {
                let start = max(starts[index], written)
                let frame = UnsafeRawBufferPointer(rebasing: raw[start..<end(of: index)])
                frames.append(frame)
                total += frame.count
                index += 1
            }
            return try body(frames)
        }
    }

    /// The bytes of the first `frames` frames not yet written.
    public func unwrittenBytes(frames: Int) -> Int {
        let last = min(firstUnwritten + frames, starts.count)
        guard last > firstUnwritten else { return 0 }
        return end(of: last - 1) - written
    }

    /// Drops the oldest frame not yet started; returns its metadata, or nil when every unwritten frame has
    /// started.
    public mutating func dropOldestUnwritten() -> FrameMeta? {
        var index = firstUnwritten
        while index < starts.count && starts[index] < written { index += 1 }
        guard index < starts.count else { return nil }
        let start = starts[index]
        let length = end(of: index) - start
        let meta = metas[index]
        bytes.removeSubrange(start..<(start + length))
        starts.remove(at: index)
        metas.remove(at: index)
        for i in index..<starts.count { starts[i] -= length }
        return meta
    }

    /// Removes the frames not yet started and returns them (a stalled consumer's backlog); a frame partly
    /// written stays, so the stream on the pipe stays whole.
    public mutating func takeUnstarted() -> [DetachedFrame] {
        var index = firstUnwritten
        while index < starts.count && starts[index] < written { index += 1 }
        guard index < starts.count else { return [] }
        var frames: [DetachedFrame] = []
        for i in index..<starts.count {
            frames.append(DetachedFrame(bytes: Array(bytes[starts[i]..<end(of: i)]), meta: metas[i]))
        }
        bytes.removeSubrange(starts[index]...)
        starts.removeSubrange(index...)
        metas.removeSubrange(index...)
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

    /// Calls `body` with the unwritten bytes.
    public func withUnwritten<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try bytes.withUnsafeBytes { raw in try body(UnsafeRawBufferPointer(rebasing: raw[written...])) }
    }

    /// Empties the queue and returns the frames the reader did not read whole: those still unwritten, and
    /// those written that are not acknowledged. A frame the reader read in part is returned whole. Frames
    /// acknowledged whole complete their tags through `completed` (already done by `acknowledge`).
    public mutating func takeNotAcknowledged() -> [DetachedFrame] {
        var frames: [DetachedFrame] = []
        frames.reserveCapacity(starts.count - head)
        for index in head..<starts.count {
            frames.append(DetachedFrame(bytes: Array(bytes[starts[index]..<end(of: index)]), meta: metas[index]))
        }
        self = FrameQueue()
        return frames
    }

    /// Rewrites every frame's route index through `map` (old index -> new index), after a reload.
    public mutating func remapRoutes(_ map: [Int32]) {
        for i in metas.indices where metas[i].route >= 0 && Int(metas[i].route) < map.count {
            metas[i].route = map[Int(metas[i].route)]
        }
    }

    /// Checks that every frame held is exactly one length-prefixed frame (for checks and tests); returns the
    /// index of the first that is not.
    public func firstMalformedFrame() -> Int? {
        for index in head..<starts.count {
            let range = starts[index]..<end(of: index)
            let whole = bytes.withUnsafeBytes { raw -> Bool in
                let frame = UnsafeRawBufferPointer(rebasing: raw[range])
                guard case .value(let length, let prefix) = Varint.decode(frame, at: 0) else { return false }
                return prefix + Int(length) == frame.count
            }
            if !whole { return index }
        }
        return nil
    }

    /// The metadata of every frame held, oldest first (for checks and tests).
    public var heldMetas: ArraySlice<FrameMeta> { metas[head...] }

    /// The fewest acknowledged bytes worth a compaction (below it, the copy is not worth the call).
    static let compactionFloor = 64 << 10

    private mutating func compact() {
        let shift = starts[head]
        bytes.removeSubrange(0..<shift)
        starts = starts[head...].map { $0 - shift }
        metas = Array(metas[head...])
        firstUnwritten -= head
        head = 0
        written -= shift
        acknowledged -= shift
    }
}
