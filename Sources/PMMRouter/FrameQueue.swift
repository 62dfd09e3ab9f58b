/// Frames waiting to be written, as one contiguous byte buffer plus the offset where each frame starts, so a
/// whole batch goes out in one write(2) and the frames not yet written can be routed elsewhere.
struct FrameQueue {
    private(set) var bytes: [UInt8] = []
    /// Start offset of each queued frame, from `head`.
    private var starts: [Int] = []
    private var head = 0
    /// Bytes already written (from the start of `bytes`).
    private(set) var written = 0

    /// Frames not yet completely written.
    var count: Int { starts.count - head }
    var isEmpty: Bool { count == 0 }
    /// Bytes not yet written.
    var unwrittenBytes: Int { bytes.count - written }

    mutating func append(_ frame: UnsafeRawBufferPointer) {
        starts.append(bytes.count)
        bytes.append(contentsOf: frame)
    }

    /// Records that `n` more bytes were written, and drops the frames now fully written.
    mutating func consumed(_ n: Int) {
        written += n
        while head < starts.count {
            let end = head + 1 < starts.count ? starts[head + 1] : bytes.count
            if end <= written { head += 1 } else { break }
        }
        if head == starts.count {
            bytes.removeAll(keepingCapacity: bytes.capacity <= 4 << 20)
            starts.removeAll(keepingCapacity: true)
            head = 0
            written = 0
        } else if written >= 1 << 20 && written * 2 >= bytes.count {
            compact()
        }
    }

    /// Drops the oldest unwritten frame (overflow `drop-oldest`). Returns false when the oldest frame is
    /// already partly written (it must finish) and no later frame exists.
    mutating func dropOldestUnwritten() -> Bool {
        // The head frame may be partly written; drop the first frame that has not started.
        var index = head
        while index < starts.count && starts[index] < written { index += 1 }
        guard index < starts.count else { return false }
        let start = starts[index]
        let end = index + 1 < starts.count ? starts[index + 1] : bytes.count
        bytes.removeSubrange(start..<end)
        starts.remove(at: index)
        for i in index..<starts.count { starts[i] -= end - start }
        return true
    }

    /// Calls `body` with the unwritten bytes.
    func withUnwritten<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        bytes.withUnsafeBytes { raw in body(UnsafeRawBufferPointer(rebasing: raw[written...])) }
    }

    /// Removes and returns every frame not completely written (a partly written first frame is returned whole:
    /// its reader is gone, so the frame goes to another one).
    mutating func takeUnwritten() -> [[UInt8]] {
        var frames: [[UInt8]] = []
        for index in head..<starts.count {
            let end = index + 1 < starts.count ? starts[index + 1] : bytes.count
            frames.append(Array(bytes[starts[index]..<end]))
        }
        bytes.removeAll(keepingCapacity: false)
        starts.removeAll(keepingCapacity: false)
        head = 0
        written = 0
        return frames
    }

    private mutating func compact() {
        let shift = starts[head]
        bytes.removeSubrange(0..<shift)
        starts = starts[head...].map { $0 - shift }
        head = 0
        written -= shift
    }
}
