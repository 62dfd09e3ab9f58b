/// What the router knows of how much an egress pipe holds, so that each write is one the kernel takes whole,
/// without asking the kernel before every write.
///
/// **Whole writes.** A router that dies must never leave a frame cut in two in a consumer's pipe (the next
/// router's frames would follow the torn head), so it writes no more than the pipe surely takes. A pipe holds
/// `capacity / 4096` pages, and a write does not fill them byte for byte: Linux puts the write's remainder
/// (its length modulo 4096) into the last page only if it fits there, and otherwise starts new pages. So many
/// small writes each take a page of their own: 3000-byte writes fill a 64 KiB pipe at 48,000 bytes. Counting
/// bytes (what the pipe holds, rounded up to pages, plus one) let a write of several frames into such a pipe be
/// taken in part. The bound kept here counts pages instead: every write still in the pipe takes at most its
/// length in pages rounded up (plus one page for the write being read), and bytes this router did not write
/// (a previous router's, found at open) may each have a page of their own until they are read.
///
/// **Fewer asks.** Asking what a pipe holds (FIONREAD) takes the pipe's mutex, which the consumer holds while it
/// copies a read out (tens of microseconds for a 256 KiB read): at 4 KB frames, a profile of the router showed
/// 18% of its time spinning on that mutex in FIONREAD, asked once or twice per pass. Between asks an upper
/// bound is kept instead: what the pipe held when last asked, plus every byte written since (the reader only
/// takes bytes away). The pipe is asked again when the bound leaves no room for what is to be written, and for
/// the consumer's progress (acknowledgements, stalls) at most every `progressInterval` while it may hold
/// anything.
public struct PipeOccupancy: Sendable, Equatable {
    /// How often, at most, the pipe is asked only to learn the consumer's progress.
    public static let progressInterval: UInt64 = 500_000
    static let page = 4096

    /// The pipe's capacity in bytes (F_GETPIPE_SZ).
    public let capacity: Int
    /// An upper bound of the bytes the pipe holds; nil until it was first asked.
    public private(set) var bound: Int?
    /// When the pipe was last asked (monotonic nanoseconds).
    public private(set) var askedAt: UInt64 = 0
    /// Bytes this router wrote to the pipe.
    private var written = 0
    /// A write that may still be in the pipe: where it ended (in `written`'s terms), the pages it may take, and
    /// whether it was moved in with splice(2) (its buffers are the source pipe's, not packed pages).
    private struct Write: Sendable, Equatable {
        var end: Int
        var pages: Int
        var spliced: Bool
    }
    /// The writes that may still be in the pipe, oldest first (from `firstWrite`). One array, not three: the
    /// router reads the count through copies of its pipe's entry, each a retain and release per array.
    private var writes: [Write] = []
    private var firstWrite = 0
    /// The pages of `writes[(firstWrite + 1)...]`.
    private var laterPages = 0

    public init(capacity: Int) {
        self.capacity = capacity
    }

    /// The pages the pipe has.
    public var pages: Int { max(1, capacity / Self.page) }

    /// An upper bound of the pages the pipe's content takes, by the bound.
    public var pagesBound: Int {
        guard let bound else { return pages }
        let foreign = max(0, bound - written)
        var used = min(foreign, pages)
        let ours = min(bound, written)
        if ours > 0 && firstWrite < writes.count {
            // The oldest write still there may have been read in part: what is left of it may straddle a page.
            let left = writes[firstWrite].end - (written - ours)
            // Spliced buffers need not be full pages: what is left of them may take every slot they took.
            let oldest = writes[firstWrite].spliced ? writes[firstWrite].pages : (left + Self.page - 1) / Self.page + 1
            used += oldest + laterPages
        }
        return min(used, pages)
    }

    /// Bytes the pipe surely takes now, whole, by the bound (0 before the first ask).
    public var room: Int { bound == nil ? 0 : (pages - pagesBound) * Self.page }

    /// Whether the pipe must be asked before `bytes` are written: the bound does not leave room for them.
    public func mustAsk(toWrite bytes: Int) -> Bool { room < bytes }

    /// Whether the pipe should be asked now to learn what its consumer read: it may hold bytes, and it was not
    /// asked for `progressInterval`.
    public func wantsProgress(now: UInt64) -> Bool {
        guard let bound else { return true }
        return bound > 0 && now &- askedAt >= Self.progressInterval
    }

    /// The pipe was asked at `now` and holds `unread` bytes. Returns whether its reader read anything since the
    /// last ask (the first ask counts as progress).
    @discardableResult
    public mutating func asked(unread: Int, now: UInt64) -> Bool {
        let progressed = bound.map { max(0, unread) < $0 } ?? true
        bound = max(0, unread)
        askedAt = now
        forgetRead()
        return progressed
    }

    /// `count` bytes were written to the pipe, in one write, or moved into it with splice(2) taking at most
    /// `pages` slots (by default, a write's: its length in pages rounded up).
    public mutating func wrote(_ count: Int, pages: Int? = nil) {
        guard count > 0, let bound else { return }
        self.bound = bound + count
        written += count
        let spliced = pages != nil
        let pages = pages ?? (count + Self.page - 1) / Self.page
        if firstWrite < writes.count { laterPages += pages }
        writes.append(Write(end: written, pages: pages, spliced: spliced))
    }

    /// The most slots a run of `run` bytes moved with splice(2) takes, when it lies within a look of `look` bytes
    /// at a pipe's head that took at most `slots` of its buffers (tee(2) into a pipe of `slots` pages): one slot
    /// per source buffer the run spans. Each buffer holds at most a page, and the buffers wholly inside the run
    /// hold at most `run` bytes while falling short of full pages by at most what the whole look falls short of
    /// `slots` full pages. So `k` buffers spanned means `(k - 2) * page <= run + shortfall`. A busy producer's
    /// large writes fill whole pages: a 64 KiB run of a full look then takes 18 slots, not all 64.
    public static func slotsSpanned(run: Int, look: Int, slots: Int) -> Int {
        let shortfall = max(0, slots * page - look)
        return max(1, min(slots, (run + shortfall) / page + 2))
    }

    /// Drops the writes read whole (by the bound).
    private mutating func forgetRead() {
        guard let bound else { return }
        let read = written - min(bound, written)
        while firstWrite < writes.count && writes[firstWrite].end <= read {
            firstWrite += 1
            if firstWrite < writes.count { laterPages -= writes[firstWrite].pages }
        }
        if firstWrite == writes.count {
            writes.removeAll(keepingCapacity: true)
            firstWrite = 0
            laterPages = 0
        } else if firstWrite >= 64 && firstWrite * 2 >= writes.count {
            writes.removeFirst(firstWrite)
            firstWrite = 0
        }
    }
}
