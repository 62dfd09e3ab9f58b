
/// Names one pipe for as long as the router core holds it. Identifiers are never reused within a core, so an
/// event about a pipe that a reload removed is recognised and ignored instead of reaching another pipe.
public struct PipeID: Hashable, Sendable, CustomStringConvertible {
    public let raw: UInt32
    public var description: String { "#\(raw)" }
    /// For the shell, which carries identifiers through epoll tokens; only the core makes new ones.
    package init(raw: UInt32) { self.raw = raw }
}

/// Why a frame went to the dead-letter spool.
public enum DeadLetterReason: String, Sendable, CaseIterable, Codable {
    /// No route: nobody consumes the data type.
    case noRoute = "no-route"
    /// A frame of another data type, or from another producer, arrived on this pipe.
    case misaddressed
    /// A consumer's buffer was full and its overflow policy is `dead-letter`.
    case overflow
    /// No healthy instance, and the frames waiting for one reached the type's buffer (overflow `dead-letter`).
    case noHealthyInstance = "no-healthy-instance"
    /// No declared consumer version can read the frame's schema version.
    case noReader = "no-reader-for-version"
    /// Bytes discarded when an ingress pipe was reset (not a frame; kept raw).
    case discarded
}

/// One frame (or, for `discarded`, raw bytes) the router cannot deliver.
public struct DeadLetterRecord: Sendable {
    public var bytes: [UInt8]
    public var dataType: String
    public var reason: DeadLetterReason
    /// The pipe it arrived on or was meant for.
    public var pipe: String
    public var detail: String

    public init(bytes: [UInt8], dataType: String, reason: DeadLetterReason, pipe: String, detail: String) {
        self.bytes = bytes
        self.dataType = dataType
        self.reason = reason
        self.pipe = pipe
        self.detail = detail
    }
}

/// Something the shell should tell the operator (log), with what it needs to say it.
public enum RouterNotice: Sendable, Equatable {
    case consumerHealthy(pipe: String)
    case consumerDown(pipe: String, reason: String)
    case consumerStalled(pipe: String, unreadBytes: Int, backlog: Int)
    case consumerCaughtUp(pipe: String)
    case rerouting(pipe: String, frames: Int)
    case ingressMissing(pipe: String)
    case ingressDrained(pipe: String)
    case replaying(pipe: String, bytes: Int64)
    /// A removed pipe kept half a frame past the grace period: the partial frame was dead-lettered.
    case drainAbandoned(pipe: String, pendingBytes: Int)
}

/// What the router core asks its shell to do. The shell performs each in order and reports the outcome as an
/// event (`ingressOpened`, `egressOpened`, `egressUnavailable`, …).
public enum RouterAction: Sendable {
    /// Open the read end of an ingress FIFO (non-blocking), then report `ingressOpened` or
    /// `ingressUnavailable`. Sent again when a pipe was replaced: the shell then closes the old descriptor
    /// after the core has drained it (`closeIngress` names the old descriptor's identifier).
    case openIngress(PipeID, name: String, pipeSize: Int?)
    /// The pipe was replaced (a new inode): the descriptor held for the first identifier now belongs to the
    /// second (a draining twin that reads the old inode to its end); an `openIngress` of the first follows.
    case moveIngress(from: PipeID, to: PipeID)
    /// Close an ingress descriptor: its pipe was removed and is drained.
    case closeIngress(PipeID)
    /// Bytes that are not a frame arrived: the pipe's buffered bytes are in `pending`, and `spooled` is the range
    /// of its spool file that will never be read back (everything spooled after them). Read and throw away what
    /// the pipe holds now, and keep all of it as one `discarded` dead letter (the shell may keep only a prefix
    /// and the count).
    case resetIngress(PipeID, pending: [UInt8], spooled: Range<Int64>?, dataType: String, error: String)
    /// Try to open an egress FIFO for writing (non-blocking; no reader means the instance is down), then
    /// report `egressOpened` or `egressUnavailable`.
    case openEgress(PipeID, name: String, pipeSize: Int?)
    /// Close an egress descriptor (its consumer is gone, or the layout removed or replaced the pipe).
    case closeEgress(PipeID)
    /// Keep a frame the router cannot deliver.
    case deadLetter(DeadLetterRecord)
    case notice(RouterNotice)
}

/// Why an egress pipe could not be opened.
public enum EgressUnavailable: Sendable, Equatable {
    /// The FIFO is there but nobody reads it (ENXIO): probe again with backoff.
    case noReader
    /// The FIFO is not there: probe again in a second.
    case missing
    case failed(String)
}
