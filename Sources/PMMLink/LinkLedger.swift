/// The sending side of one link direction: sequence numbers and the window of unacknowledged bytes.
///
/// Frames are numbered 1, 2, 3, ... per peer; the numbering goes on across reconnects (a reconnect resumes
/// after what the peer says it acknowledged, `reconnected(resumeAfter:)`). The window counts the bytes of frames
/// sent and not yet acknowledged; a send takes frames only while they fit, so a slow or dead peer back-pressures
/// into the router's spool, never into memory here. Pure; not thread-safe (the manager guards it with its
/// mutex).
public struct SendLedger: Equatable, Sendable {
    /// The most unacknowledged frame bytes allowed.
    public let windowBytes: Int
    /// The number the next frame gets.
    public private(set) var nextSequence: UInt64 = 1
    /// One run per `take`.
    private var inFlight = InFlight()
    /// Everything up to here has been acknowledged.
    public var acknowledgedUpTo: UInt64 { inFlight.acknowledgedUpTo }
    /// Bytes sent and not acknowledged.
    public var unacknowledgedBytes: Int { inFlight.bytes }

    public init(windowBytes: Int) {
        precondition(windowBytes > 0, "a window needs room")
        self.windowBytes = windowBytes
    }

    public var unacknowledgedFrames: UInt64 { nextSequence - 1 - acknowledgedUpTo }

    /// How many of `sizes` (frame byte counts, in order) fit the window now. An empty window takes at least one
    /// frame, so a frame larger than the window still goes (alone).
    public func fitting(_ sizes: some Sequence<Int>) -> (count: Int, bytes: Int) {
        var count = 0
        var bytes = 0
        for size in sizes {
            if unacknowledgedBytes + bytes + size > windowBytes && unacknowledgedBytes + bytes > 0 { break }
            count += 1
            bytes += size
        }
        return (count, bytes)
    }

    /// Records `count` frames of `bytes` bytes as sent; returns the first one's sequence number.
    public mutating func take(count: Int, bytes: Int) -> UInt64 {
        let first = nextSequence
        guard count > 0 else { return first }
        nextSequence += UInt64(count)
        inFlight.record(last: nextSequence - 1, bytes: bytes)
        return first
    }

    /// The peer acknowledged every frame up to `upTo`. Returns false (and changes nothing) for an acknowledgement
    /// of frames never sent, which only a broken peer sends.
    @discardableResult
    public mutating func acknowledge(upTo: UInt64) -> Bool {
        guard upTo < nextSequence else { return false }
        inFlight.release(upTo: upTo)
        return true
    }

    /// A new connection: the peer acknowledged up to `resumeAfter` (clamped to what was sent). The window is
    /// empty again, and numbering resumes right after: the router sends again, from there, what it still holds.
    public mutating func reconnected(resumeAfter: UInt64) -> UInt64 {
        let resume = min(resumeAfter, nextSequence - 1)
        nextSequence = resume + 1
        inFlight = InFlight(acknowledgedUpTo: resume)
        return resume
    }

    public static func == (a: SendLedger, b: SendLedger) -> Bool {
        a.windowBytes == b.windowBytes && a.nextSequence == b.nextSequence && a.acknowledgedUpTo == b.acknowledgedUpTo
            && a.unacknowledgedBytes == b.unacknowledgedBytes
    }
}

/// The receiving side of one link direction: which frames arrived, which the router acknowledged.
///
/// Keyed by the sender's incarnation (random per link manager): a peer that restarted numbers from 1 again, and
/// what was remembered of its previous life is forgotten. Frames numbered at or below the highest received are
/// duplicates of a resend and dropped here (the router has them already). Pure; not thread-safe.
public struct ReceiveLedger: Equatable, Sendable {
    /// The most received and not yet acknowledged bytes a well-behaved peer can have sent (its window, with
    /// slack); more is a protocol violation.
    public let limitBytes: Int
    /// The sender's incarnation these numbers belong to (0: none yet).
    public private(set) var incarnation: UInt64 = 0
    public private(set) var highestReceived: UInt64 = 0
    /// One run per batch received.
    private var inFlight = InFlight()
    public var acknowledgedUpTo: UInt64 { inFlight.acknowledgedUpTo }
    public var unacknowledgedBytes: Int { inFlight.bytes }

    public init(limitBytes: Int) {
        self.limitBytes = limitBytes
    }

    /// What went wrong with a received batch.
    public enum Violation: Error, Equatable, Sendable, CustomStringConvertible {
        /// Frames after a gap: some were skipped.
        case gap(expected: UInt64, got: UInt64)
        /// More unacknowledged bytes than any window allows.
        case overrun(bytes: Int, limit: Int)
        case zeroSequence

        public var description: String {
            switch self {
            case .gap(let expected, let got):
                return "the peer sent frame \(got) when \(expected) was next: frames would be lost"
            case .overrun(let bytes, let limit):
                return "the peer has \(bytes) unacknowledged bytes in flight, over the limit of \(limit)"
            case .zeroSequence: return "the peer numbered a batch 0"
            }
        }
    }

    /// The peer's Hello names its incarnation; a new one resets the numbering.
    public mutating func peerIncarnation(_ value: UInt64) {
        guard value != incarnation else { return }
        self = ReceiveLedger(limitBytes: limitBytes)
        incarnation = value
    }

    /// A batch arrived; returns how many of its leading frames are duplicates (to drop) and records the rest.
    ///
    /// - Parameter sizes: the batch's frame byte counts, in order.
    public mutating func receive(firstSequence: UInt64, sizes: [Int]) throws(Violation) -> Int {
        guard firstSequence > 0 else { throw .zeroSequence }
        if firstSequence > highestReceived + 1 { throw .gap(expected: highestReceived + 1, got: firstSequence) }
        let duplicates = Int(min(UInt64(sizes.count), highestReceived + 1 - firstSequence))
        guard duplicates < sizes.count else { return duplicates }
        let bytes = sizes[duplicates...].reduce(0, +)
        if unacknowledgedBytes + bytes > limitBytes {
            throw .overrun(bytes: unacknowledgedBytes + bytes, limit: limitBytes)
        }
        highestReceived = firstSequence + UInt64(sizes.count) - 1
        inFlight.record(last: highestReceived, bytes: bytes)
        return duplicates
    }

    /// The router wrote every frame up to `upTo`; returns the new cumulative acknowledgement to send, or nil when
    /// it says nothing new. Clamped to what was received.
    public mutating func acknowledge(upTo: UInt64) -> UInt64? {
        let upTo = min(upTo, highestReceived)
        guard upTo > acknowledgedUpTo else { return nil }
        inFlight.release(upTo: upTo)
        return upTo
    }

    public static func == (a: ReceiveLedger, b: ReceiveLedger) -> Bool {
        a.incarnation == b.incarnation && a.highestReceived == b.highestReceived
            && a.acknowledgedUpTo == b.acknowledgedUpTo && a.unacknowledgedBytes == b.unacknowledgedBytes
    }
}

/// Bytes in flight on one link direction, by cumulative sequence number: runs of frames recorded as (the last
/// number, their bytes), released by an acknowledgement up to a number. An acknowledgement in the middle of a
/// run keeps the run (its bytes count until the whole run is acknowledged): conservative, never more than
/// the window. The sending and the receiving ledger both keep one.
struct InFlight: Sendable {
    private(set) var acknowledgedUpTo: UInt64
    private(set) var bytes = 0
    private var runs: [(last: UInt64, bytes: Int)] = []
    private var head = 0

    init(acknowledgedUpTo: UInt64 = 0) { self.acknowledgedUpTo = acknowledgedUpTo }

    mutating func record(last: UInt64, bytes: Int) {
        self.bytes += bytes
        runs.append((last, bytes))
    }

    /// Every frame up to `upTo` is acknowledged (nothing changes for an older acknowledgement).
    mutating func release(upTo: UInt64) {
        guard upTo > acknowledgedUpTo else { return }
        acknowledgedUpTo = upTo
        while head < runs.count && runs[head].last <= upTo {
            bytes -= runs[head].bytes
            head += 1
        }
        if head > 64 && head * 2 > runs.count {
            runs.removeFirst(head)
            head = 0
        }
    }
}
