import Synchronization

/// Buffers for received batches, given back once the router took their frames, so that a busy link reuses
/// them instead of allocating one per batch.
///
/// Memory just allocated is faulted in page by page, and the allocator hands it back to the system when
/// enough of it is free at once: on the receiving node of `pmm bench --link` at 4 KB frames, with a buffer per
/// batch, those page faults took 8% of its core. A buffer is given back by `LinkManager.recycle` after the
/// router copied its frames into queues; the link's reader (`LinkMessageReader`) gathers the next bytes that
/// arrive in it. A buffer still shared
/// (someone kept the frames) is never written: `[UInt8]`'s copy-on-write gives the decoder a fresh one
/// instead, so reuse can make no frame wrong, only cheaper.
public final class BatchBuffers: Sendable {
    private struct Kept {
        var buffers: [[UInt8]] = []
        var bytes = 0
    }

    private let kept = Mutex(Kept())
    /// At most this many bytes of capacity are kept (about a link window's worth).
    public let limit: Int

    public init(limit: Int) {
        self.limit = limit
    }

    /// An empty buffer: one given back, with its capacity, if there is one.
    public func take() -> [UInt8] {
        var buffer = kept.withLock { kept -> [UInt8]? in
            guard let buffer = kept.buffers.popLast() else { return nil }
            kept.bytes -= buffer.capacity
            return buffer
        } ?? []
        buffer.removeAll(keepingCapacity: true)
        return buffer
    }

    /// Keeps a batch's buffer for a later batch, unless that would keep more than `limit` bytes.
    public func give(_ frames: LinkFrames) {
        let buffer = frames.storage
        kept.withLock { kept in
            guard kept.bytes + buffer.capacity <= limit else { return }
            kept.bytes += buffer.capacity
            kept.buffers.append(buffer)
        }
    }

    /// The bytes of capacity kept now.
    public var keptBytes: Int { kept.withLock { $0.bytes } }
}
