/// The bookkeeping of one at-least-once spool file, without the file: where the file ends, how far the router
/// has read it back, which frames read back are not yet delivered, and where the byte stream is cut.
///
/// The shell splices an ingress pipe into the file (`appended`), reads it back into the pipe's frame buffer
/// (`readBack`, at most `readable` bytes at a time), and writes `watermark` and `cuts` to the mark file at each
/// checkpoint. Every frame before the watermark was read whole by a consumer, dead-lettered, or dropped by
/// policy; a router that starts again replays from the watermark. Offsets only grow: the shell frees the disk
/// blocks before the watermark (a punched hole) instead of moving bytes, so a sustained backlog never needs
/// the file to become empty.
///
/// A replay must parse the bytes exactly as the first reading did, so the places where that reading could not
/// go on as one stream are kept as `cuts`, persisted with the watermark:
/// - bytes that were not a frame (an ingress reset): from the start of the bad bytes, everything spooled up to
///   then is skipped;
/// - a change of source (the pipe was replaced, or an earlier router spooled from another inode): a frame cut
///   there can never be completed and is dead-lettered.
public struct SpoolLedger: Sendable {
    /// Where reading back stops and resumes.
    public struct Cut: Equatable, Sendable {
        /// Reading back stops here; a partial frame in the buffer is abandoned.
        public var at: Int64
        /// ... and resumes here (after skipped bytes; equal to `at` for a change of source).
        public var resume: Int64
        /// Already acted on by this router (kept only to be persisted until the watermark passes it).
        public var passed = false

        public init(at: Int64, resume: Int64) {
            self.at = at
            self.resume = resume
        }
    }

    /// The ingress pipe this spool belongs to.
    public let pipe: String
    /// The end of the file.
    public private(set) var size: Int64
    /// The next byte to read back.
    public private(set) var readOffset: Int64
    /// Every frame before this offset is done.
    public private(set) var watermark: Int64
    /// Frames ending at or before this offset were spooled by an earlier router: replayed.
    public let replayUntil: Int64
    /// Cuts not yet behind the watermark, in order.
    public private(set) var cuts: [Cut] = []

    private var outstanding: [(end: Int64, done: Bool)] = []
    private var outstandingHead = 0
    /// The sequence number of `outstanding[outstandingHead]`.
    private var headSequence: UInt64 = 0

    /// - Parameters:
    ///   - pipe: the ingress pipe's name.
    ///   - size: the file's size now.
    ///   - mark: the watermark an earlier router wrote (clamped to the file).
    ///   - cuts: the cuts it wrote with it.
    public init(pipe: String, size: Int64, mark: Int64, cuts: [Cut] = []) {
        self.pipe = pipe
        self.size = max(0, size)
        watermark = min(max(0, mark), self.size)
        readOffset = watermark
        replayUntil = self.size
        let start = watermark
        let end = self.size
        self.cuts = cuts.filter { $0.resume > start || ($0.at == $0.resume && $0.at >= start) }.map { cut in
            var cut = cut
            cut.at = min(max(cut.at, start), end)
            cut.resume = min(max(cut.resume, cut.at), end)
            cut.passed = false
            return cut
        }.sorted { $0.at < $1.at }
    }

    /// Bytes spooled and not yet read back.
    public var unread: Int64 { size - readOffset }
    /// Bytes that may be read back now: up to the next cut.
    public var readable: Int64 { min(size, nextCut?.at ?? size) - readOffset }
    /// Bytes the spool holds that are not yet done: what a crash would replay.
    public var live: Int64 { size - watermark }
    /// Frames read back and not yet done.
    public var inFlight: Int { outstanding.count - outstandingHead }
    /// The next cut reading back must stop at.
    public var nextCut: Cut? { cuts.first { !$0.passed } }

    public mutating func appended(_ count: Int) { size += Int64(count) }
    public mutating func readBack(_ count: Int) {
        precondition(Int64(count) <= readable, "read back past a cut or the end")
        readOffset += Int64(count)
    }

    /// Starts tracking the frame that ends at `end`; returns its tag.
    mutating func track(end: Int64, spool: Int32) -> SpoolTag {
        outstanding.append((end, false))
        return SpoolTag(spool: spool, sequence: headSequence + UInt64(outstanding.count - outstandingHead - 1))
    }

    /// Marks a frame done. Completing a tag twice, or one from before a reset of the ledger, does nothing.
    mutating func complete(_ tag: SpoolTag) {
        let offset = tag.sequence &- headSequence
        guard offset < UInt64(outstanding.count - outstandingHead) else { return }
        outstanding[outstandingHead + Int(offset)].done = true
        advance()
    }

    /// What follows is spooled from another source (a new inode): a frame cut at the current end is abandoned
    /// when read back up to here.
    public mutating func sourceChanged() {
        if let last = cuts.last, !last.passed, last.at == size { return }
        cuts.append(Cut(at: size, resume: size))
    }

    /// Reading back reached the next cut: it is passed (the caller dead-letters the partial frame it cut).
    mutating func passCut() {
        guard let index = cuts.firstIndex(where: { !$0.passed }), cuts[index].at <= readOffset else { return }
        cuts[index].passed = true
        readOffset = max(readOffset, cuts[index].resume)
        outstanding.append((readOffset, true))
        advance()
    }

    /// The bytes from `start` (where the bad bytes begin; everything before was parsed into frames) up to the
    /// next cut or the end are not frames (an ingress reset): never read back, done once the frames before them
    /// are. Recorded as a cut so that a replay skips the same bytes.
    mutating func skip(from start: Int64) {
        let end = min(size, nextCut?.at ?? size)
        var cut = Cut(at: min(start, readOffset), resume: end)
        cut.passed = true
        let index = cuts.firstIndex { $0.at > cut.at } ?? cuts.count
        cuts.insert(cut, at: index)
        readOffset = end
        outstanding.append((end, true))
        advance()
    }

    private mutating func advance() {
        while outstandingHead < outstanding.count && outstanding[outstandingHead].done {
            watermark = max(watermark, outstanding[outstandingHead].end)
            outstandingHead += 1
            headSequence &+= 1
        }
        if outstandingHead == outstanding.count {
            outstanding.removeAll(keepingCapacity: true)
            outstandingHead = 0
        } else if outstandingHead > 4096 && outstandingHead * 2 > outstanding.count {
            outstanding.removeFirst(outstandingHead)
            outstandingHead = 0
        }
        // Called for every frame done: an empty `cuts` (the usual case) is not touched, since removing from
        // an empty array still goes through its copy-on-write path (3% of the router's time at 128 B).
        if !cuts.isEmpty {
            let mark = watermark
            cuts.removeAll { $0.passed && $0.resume <= mark }
        }
    }

    /// Everything spooled is done, and `pending` bytes of a frame not yet whole are in memory: when 0 the
    /// file may be emptied.
    public func isEmptyable(pending: Int) -> Bool {
        outstandingHead == outstanding.count && readOffset == size && pending == 0 && watermark == size && nextCut == nil
    }

    /// The file was emptied (truncated to 0).
    public mutating func truncated() {
        precondition(outstandingHead == outstanding.count && readOffset == size, "truncating a spool that holds frames")
        size = 0
        readOffset = 0
        watermark = 0
        cuts = []
    }

    /// The cuts as the mark file keeps them: `at:resume` each.
    public var persistedCuts: [String] { cuts.map { "\($0.at):\($0.resume)" } }

    /// Parses what `persistedCuts` wrote; unreadable items are ignored.
    public static func cuts(from fields: some Sequence<Substring>) -> [Cut] {
        fields.compactMap { field in
            let parts = field.split(separator: ":")
            if parts.count == 1, let at = Int64(parts[0]) { return Cut(at: at, resume: at) }
            guard parts.count == 2, let at = Int64(parts[0]), let resume = Int64(parts[1]) else { return nil }
            return Cut(at: at, resume: resume)
        }
    }
}
