import Synchronization

/// Byte buffers given back once their bytes are no longer needed, for the next user to fill instead of
/// allocating: a router's queue segments (`FrameQueue`), a link's received batches (`LinkMessageReader`).
///
/// Memory just allocated is faulted in page by page, and the allocator hands it back to the system when enough
/// of it is free at once, so a busy path that allocated a buffer per batch paid page faults on every one: at
/// 4 KB frames, 8% of the receiving node's core under the link's batch decoding, and 8% of a one-host router's
/// time appending to fresh queue segments. A pool keeps what was given back, up to `limit` bytes of capacity;
/// it is shared by threads (a router's workers), behind a lock taken once per buffer, not per frame.
///
/// A buffer given back while still shared (someone kept the frames in it) is never written: `[UInt8]`'s
/// copy-on-write gives the next user a fresh one instead, so reuse can make nothing wrong, only cheaper.
public final class BufferPool: Sendable {
    private struct Kept {
        var buffers: [[UInt8]] = []
        var bytes = 0
        var misses = 0
    }

    private let kept = Mutex(Kept())
    /// At most this many bytes of capacity are kept.
    public let limit: Int

    public init(limit: Int) {
        self.limit = limit
    }

    /// An empty buffer: one given back, with its capacity, if there is one; else a new one with `capacity`
    /// reserved.
    public func take(reserving capacity: Int = 0) -> [UInt8] {
        // Bound straight from the lock's result: a second reference would make `removeAll` copy the buffer.
        if var buffer = kept.withLock({ kept -> [UInt8]? in
            guard let buffer = kept.buffers.popLast() else {
                kept.misses += 1
                return nil
            }
            kept.bytes -= buffer.capacity
            return buffer
        }) {
            buffer.removeAll(keepingCapacity: true)
            return buffer
        }
        var fresh: [UInt8] = []
        fresh.reserveCapacity(capacity)
        return fresh
    }

    /// Keeps `buffer` for a later `take`, unless that would keep more than `limit` bytes.
    public func give(_ buffer: [UInt8]) {
        guard buffer.capacity > 0 else { return }
        kept.withLock { kept in
            guard kept.bytes + buffer.capacity <= limit else { return }
            kept.bytes += buffer.capacity
            kept.buffers.append(buffer)
        }
    }

    /// The bytes of capacity kept now.
    public var keptBytes: Int { kept.withLock { $0.bytes } }
    /// How many takes found nothing kept (and allocated).
    public var misses: Int { kept.withLock { $0.misses } }
}
