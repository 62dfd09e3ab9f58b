import Glibc
import PMMSystem
import PMMCore
import PMMWire

/// F_SETPIPE_SZ / F_GETPIPE_SZ: `_GNU_SOURCE`-only in Glibc, so not imported into Swift (SWIFT-NOTES §2).
let F_SETPIPE_SZ: Int32 = 1031
let F_GETPIPE_SZ: Int32 = 1032

/// One ingress pipe as the router holds it: the read descriptor, the frame buffer and counters.
final class IngressPipe {
    var spec: RouterLayout.Ingress
    var fd: Int32 = -1
    var inode: UInt64 = 0
    var device: UInt64 = 0
    var buffer: FrameBuffer
    /// Removed by a reload (or replaced by apply): read what is there, then close.
    var draining = false
    var dataTypeBytes: [UInt8]
    /// The at-least-once spool, for types with that delivery.
    var spool: Spool?
    var spoolIndex: Int32 = -1
    /// Frames ending at or before this spool offset were spooled by an earlier router: replayed.
    var replayUntil: Int64 = 0
    /// Over its rate: not read until then (monotonic ns).
    var pausedUntil: UInt64 = 0
    /// Complete frames may sit in the buffer unrouted (the rate ran dry): parse before reading more.
    var backlog = false
    var missing = false

    var frames: UInt64 = 0
    var bytes: UInt64 = 0
    var resets: UInt64 = 0
    var misaddressed: UInt64 = 0
    var replayed: UInt64 = 0
    var lastError: String?
    /// Frames per second over the last status interval.
    var rate: Double = 0
    var framesAtLastStatus: UInt64 = 0

    init(spec: RouterLayout.Ingress, maximumFrameSize: Int) {
        self.spec = spec
        self.buffer = FrameBuffer(maximumFrameSize: maximumFrameSize)
        self.dataTypeBytes = Array(spec.dataType.utf8)
    }

    var name: String { spec.name }
    /// The token bucket this pipe draws from: one per producing service and data type.
    var bucketKey: String { spec.producer + "|" + spec.dataType }
}

/// One egress pipe: the write descriptor (when a reader exists), frames waiting, health and counters.
final class EgressPipe {
    var spec: RouterLayout.Egress
    var fd: Int32 = -1
    var inode: UInt64 = 0
    var device: UInt64 = 0
    var queue = FrameQueue()
    var healthy = false
    /// Open, but its reader has not read for longer than the stall timeout: no new frames go to it.
    var stalled = false
    /// When to try opening again (monotonic ns).
    var nextProbe: UInt64 = 0
    var backoff: UInt64 = 50_000_000
    /// When the health last changed (wall clock, for status).
    var since = realtimeNanos()
    /// When the reader last made progress, or the pipe was last empty (monotonic ns).
    var lastProgress: UInt64 = 0
    var lastAcknowledged = 0
    var removed = false

    var frames: UInt64 = 0
    var bytes: UInt64 = 0
    var dropped: UInt64 = 0
    var deadLettered: UInt64 = 0
    var failures: UInt64 = 0
    var stalls: UInt64 = 0
    var rerouted: UInt64 = 0
    var lastError: String?
    /// Frames per second over the last status interval.
    var rate: Double = 0
    var framesAtLastStatus: UInt64 = 0

    init(spec: RouterLayout.Egress) {
        self.spec = spec
    }

    var name: String { spec.name }
    var capacity: Int { spec.qos.buffer }
    var isFull: Bool { queue.count >= capacity }
    /// May receive new frames.
    var available: Bool { healthy && !stalled }
}

/// Bytes the pipe behind `fd` holds unread (FIONREAD works on either end of a pipe).
func unreadBytes(_ fd: Int32) -> Int {
    var count: Int32 = 0
    return ioctl(fd, UInt(FIONREAD), &count) == 0 ? Int(count) : 0
}
