/// Marks a frame whose delivery the at-least-once spool tracks: which spool, and the frame's place in it.
struct SpoolTag: Equatable {
    var spool: Int32
    var sequence: UInt64
}

/// A frame taken out of a queue to be routed again, with its spool tag if it still has one.
struct DetachedFrame {
    var bytes: [UInt8]
    var tag: SpoolTag?
}

/// The frames of one egress pipe, as one contiguous byte buffer plus, per frame, its start offset and spool tag.
///
/// Three positions move forward through the buffer:
/// - `acknowledged`: bytes the consumer has read (learned from FIONREAD); frames ending before it are gone;
/// - `written`: bytes handed to the pipe with write(2), so a whole batch goes out in one call;
/// - the end: frames routed here and not yet written.
///
/// Frames between `acknowledged` and `written` are in the pipe: kept so that, if the consumer dies, the ones it
/// did not read whole can go to another instance.
struct FrameQueue {
    private(set) var bytes: [UInt8] = []
    private var starts: [Int] = []
    private var tags: [SpoolTag?] = []
    /// Index of the first frame not yet acknowledged.
    private var head = 0
    /// Index of the first frame not completely written.
    private var firstUnwritten = 0
    private(set) var written = 0
    private(set) var acknowledged = 0

    /// Frames not yet completely written.
    var count: Int { starts.count - firstUnwritten }
    var isEmpty: Bool { starts.count == head }
    /// Frames written but maybe not read.
    var inPipe: Int { firstUnwritten - head }
    /// Bytes not yet written.
    var unwrittenBytes: Int { bytes.count - written }

    private func end(of index: Int) -> Int { index + 1 < starts.count ? starts[index + 1] : bytes.count }

    mutating func append(_ frame: UnsafeRawBufferPointer, tag: SpoolTag?) {
        starts.append(bytes.count)
        tags.append(tag)
        bytes.append(contentsOf: frame)
    }

    /// Records that `n` more bytes were written; returns the tags of frames now completely written.
    mutating func wrote(_ n: Int, completed: (SpoolTag) -> Void) -> Int {
        written += n
        var frames = 0
        while firstUnwritten < starts.count && end(of: firstUnwritten) <= written {
            if let tag = tags[firstUnwritten] { completed(tag) }
            tags[firstUnwritten] = nil
            firstUnwritten += 1
            frames += 1
        }
        return frames
    }

    /// Records that the pipe still holds `unread` bytes: everything written before that was read.
    mutating func acknowledge(unread: Int) {
        acknowledged = max(acknowledged, written - max(0, unread))
        while head < firstUnwritten && end(of: head) <= acknowledged { head += 1 }
        if head == starts.count {
            bytes.removeAll(keepingCapacity: bytes.capacity <= 4 << 20)
            starts.removeAll(keepingCapacity: true)
            tags.removeAll(keepingCapacity: true)
            head = 0
            firstUnwritten = 0
            written = 0
            acknowledged = 0
        } else if head > 0 && starts[head] >= 1 << 20 && starts[head] >= 4 * (bytes.count - starts[head]) {
            // Moving the R bytes still held frees H >= 4R: at most a quarter of a copy per byte, amortized
            // (compacting whenever half was free made memmove a fifth of the router's time with 4 KB frames).
            compact()
        }
    }

    /// Drops the oldest frame not yet started; returns its tag (dropped frames are done for the spool), or
    /// nil when every unwritten frame has started.
    mutating func dropOldestUnwritten() -> (dropped: Bool, tag: SpoolTag?) {
        var index = firstUnwritten
        while index < starts.count && starts[index] < written { index += 1 }
        guard index < starts.count else { return (false, nil) }
        let start = starts[index]
        let length = end(of: index) - start
        let tag = tags[index]
        bytes.removeSubrange(start..<(start + length))
        starts.remove(at: index)
        tags.remove(at: index)
        for i in index..<starts.count { starts[i] -= length }
        return (true, tag)
    }

    /// Removes the frames not yet started and returns them (a stalled consumer's backlog); a frame partly
    /// written stays, so the stream on the pipe stays whole.
    mutating func takeUnstarted() -> [DetachedFrame] {
        var index = firstUnwritten
        while index < starts.count && starts[index] < written { index += 1 }
        guard index < starts.count else { return [] }
        var frames: [DetachedFrame] = []
        for i in index..<starts.count {
            frames.append(DetachedFrame(bytes: Array(bytes[starts[i]..<end(of: i)]), tag: tags[i]))
        }
        bytes.removeSubrange(starts[index]...)
        starts.removeSubrange(index...)
        tags.removeSubrange(index...)
        return frames
    }

    /// Calls `body` with the unwritten bytes.
    func withUnwritten<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        bytes.withUnsafeBytes { raw in body(UnsafeRawBufferPointer(rebasing: raw[written...])) }
    }

    /// Empties the queue and returns the frames the reader did not read whole: those still unwritten, and
    /// those written of which more than `unread` bytes remain (the pipe's unread tail). A frame the reader
    /// read in part is returned whole.
    mutating func takeNotReadWhole(unread: Int) -> [DetachedFrame] {
        let readUpTo = written - max(0, min(unread, written))
        var frames: [DetachedFrame] = []
        for index in head..<starts.count where end(of: index) > readUpTo {
            frames.append(DetachedFrame(bytes: Array(bytes[starts[index]..<end(of: index)]), tag: tags[index]))
        }
        self = FrameQueue()
        return frames
    }

    private mutating func compact() {
        let shift = starts[head]
        bytes.removeSubrange(0..<shift)
        starts = starts[head...].map { $0 - shift }
        tags = Array(tags[head...])
        firstUnwritten -= head
        head = 0
        written -= shift
        acknowledged -= shift
    }
}
