/// What a sending router holds for one peer until it is acknowledged: the responsibility split of the link.
///
/// The `LinkManager` keeps no frames. The router keeps each frame from the moment it hands it to `send` until
/// an `acknowledged` event covers it, and sends again, after every `connected` event, what it still holds. This
/// type is that bookkeeping in memory (the router puts its spool behind the same rules): frames in order, the
/// sequence number of the first, and how many of them went out on the current connection. Pure; not
/// thread-safe.
public struct LinkOutbox: Sendable {
    /// Held frames, oldest first: `frames[head...]`.
    private var frames: [LinkFrame] = []
    private var head = 0
    /// The sequence number of the oldest held frame (meaningful once it was sent).
    public private(set) var firstSequence: UInt64 = 1
    /// How many held frames (from the oldest) were sent on the current connection.
    public private(set) var sentCount = 0

    public init() {}

    /// Frames held (sent or not).
    public var count: Int { frames.count - head }
    public var isEmpty: Bool { count == 0 }

    /// Frames not yet sent on the current connection, oldest first.
    public var unsent: ArraySlice<LinkFrame> { frames[(head + sentCount)...] }

    public mutating func append(_ frame: LinkFrame) {
        frames.append(frame)
    }

    public mutating func append(contentsOf more: some Sequence<LinkFrame>) {
        frames.append(contentsOf: more)
    }

    /// `send` took `result.accepted` frames of `unsent`, numbered from `result.firstSequence`.
    public mutating func sent(_ result: LinkSendResult) {
        guard result.accepted > 0 else { return }
        if sentCount == 0 {
            firstSequence = result.firstSequence
        } else {
            // The manager numbers consecutively within a connection; anything else is a broken contract.
            assert(result.firstSequence == firstSequence + UInt64(sentCount), "the link renumbered frames")
        }
        sentCount += result.accepted
    }

    /// An `acknowledged` event: frames up to `upTo` reached the peer's pipes or spool and are dropped.
    public mutating func acknowledged(upTo: UInt64) {
        guard sentCount > 0, upTo >= firstSequence else { return }
        let drop = Int(min(UInt64(sentCount), upTo - firstSequence + 1))
        head += drop
        sentCount -= drop
        firstSequence += UInt64(drop)
        compact()
    }

    /// (A `disconnected` event changes nothing here: the frames sent keep their numbers until the next
    /// `connected` says how far the peer got, and `send` takes nothing while the link is down.)
    ///
    /// A `connected` event: frames the peer acknowledged before the connection broke (up to `resumeAfter`) are
    /// dropped; everything else is unsent again, to be numbered from `resumeAfter + 1`.
    public mutating func connected(resumeAfter: UInt64) {
        if sentCount > 0 && resumeAfter >= firstSequence {
            let drop = Int(min(UInt64(sentCount), resumeAfter - firstSequence + 1))
            head += drop
            compact()
        }
        firstSequence = resumeAfter + 1
        sentCount = 0
    }

    private mutating func compact() {
        if head > 1024 && head * 2 > frames.count {
            frames.removeFirst(head)
            head = 0
        }
    }
}
