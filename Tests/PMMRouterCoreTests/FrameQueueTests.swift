@testable import PMMRouterCore
import PMMWire
import Testing

/// `FrameQueue` against a model (its frames as plain arrays with their offsets), through seeded random
/// operations as a router makes them: append, write what a pipe takes, a reader that reads some of it (a local
/// pipe) or acknowledgements of whole frames (a link), overflow drops, a stalled reader's backlog taken, a dead
/// reader's frames taken back. After every operation the queue must hold exactly the model's frames, write
/// exactly the model's next bytes, and take no more memory (`footprint`) than what it holds plus one segment:
/// the bound a router's `--memory-limit` relies on.
@Suite struct FrameQueueTests {
    static let segment = 256 << 10

    /// A pipe frame (varint length, then `size` bytes of body) numbered `n`.
    static func frame(_ n: Int, size: Int) -> [UInt8] {
        var out: [UInt8] = []
        Varint.encode(UInt64(size), into: &out)
        for i in 0..<size { out.append(UInt8(truncatingIfNeeded: n &* 31 &+ i)) }
        return out
    }

    struct Model {
        /// Frames not read whole, oldest first, each with its offset (offsets count from the first frame ever).
        var frames: [(start: Int, bytes: [UInt8])] = []
        var end = 0
        var written = 0
        var read = 0
        var heldBytes: [UInt8] { frames.flatMap(\.bytes) }
        var firstUnstarted: Int? { frames.firstIndex { $0.start >= written } }

        func bytes(_ range: Range<Int>) -> [UInt8] {
            var out: [UInt8] = []
            for frame in frames where frame.start < range.upperBound && frame.start + frame.bytes.count > range.lowerBound {
                let from = max(range.lowerBound, frame.start) - frame.start
                let to = min(range.upperBound, frame.start + frame.bytes.count) - frame.start
                out += frame.bytes[from..<to]
            }
            return out
        }

        mutating func dropRead() {
            while let first = frames.first, first.start + first.bytes.count <= read { frames.removeFirst() }
        }

        mutating func remove(from index: Int, count: Int) {
            let length = frames[index..<(index + count)].reduce(0) { $0 + $1.bytes.count }
            frames.removeSubrange(index..<(index + count))
            for i in index..<frames.count { frames[i].start -= length }
            end -= length
        }
    }

    @Test(arguments: 1...8)
    func randomOperations_matchTheModel_andTheFootprintStaysWithinASegmentOfWhatIsHeld(seed: Int) {
        var random = SimRandom(seed: UInt64(seed))
        let link = seed % 2 == 0  // even seeds: a link's queue (whole frames acknowledged); odd: a local pipe's
        var queue = FrameQueue()
        var model = Model()
        var next = 0
        var largest = 0
        var splitWrites = 0
        for step in 0..<2_500 {
            let context = "seed \(seed) step \(step)"
            switch random.below(100) {
            case 0..<45:
                // Mostly small frames, some of 4 KB, a few larger than a segment.
                let size = random.chance(2) ? Self.segment + random.below(Self.segment) : random.chance(30) ? 4000 : 1 + random.below(200)
                let frame = Self.frame(next, size: size)
                next += 1
                frame.withUnsafeBytes { queue.append($0, meta: FrameMeta(route: 0, version: 0, tag: nil)) }
                model.frames.append((model.end, frame))
                model.end += frame.count
            case 45..<70 where link:
                // The link takes whole frames, up to its window's room, lent by the queue.
                let frames = queue.withUnwrittenFrames(limit: 1 + random.below(1 << 20)) { $0.map { Array($0) } }
                let expected = model.frames.filter { $0.start >= model.written }.prefix(frames.count).map(\.bytes)
                #expect(frames == Array(expected), "\(context): the frames lent")
                let count = frames.reduce(0) { $0 + $1.count }
                #expect(queue.wrote(count) == frames.count, "\(context)")
                model.written += count
            case 45..<70:
                // Write what a pipe with some room takes.
                let unread = model.written - model.read
                let room = max(0, (1 << 20) - unread)
                let count = queue.writable(room: room, pipeEmpty: unread == 0)
                let unwritten = queue.unwrittenBytes
                let bytes = queue.withUnwritten { Array($0[0..<min(count, $0.count)]) }
                #expect(bytes == model.bytes(model.written..<(model.written + bytes.count)), "\(context): the bytes written")
                if bytes.count < min(count, unwritten) { splitWrites += 1 }
                _ = queue.wrote(bytes.count)
                model.written += bytes.count
            case 70..<90:
                if link {
                    // The peer acknowledges some of the oldest frames written.
                    let whole = model.frames.prefix { $0.start + $0.bytes.count <= model.written }.count
                    let frames = random.below(6)
                    queue.acknowledge(frames: frames) { _ in }
                    let acknowledged = min(frames, whole)
                    if acknowledged > 0 { model.read = model.frames[acknowledged - 1].start + model.frames[acknowledged - 1].bytes.count }
                } else {
                    // The reader reads some of what the pipe holds.
                    model.read += random.below(model.written - model.read + 1)
                    queue.acknowledge(unread: model.written - model.read) { _ in }
                }
                model.dropRead()
            case 90..<94:
                let dropped = queue.dropOldestUnwritten()
                #expect((dropped != nil) == (model.firstUnstarted != nil), "\(context): drop")
                if let index = model.firstUnstarted { model.remove(from: index, count: 1) }
            case 94..<98:
                let taken = queue.takeUnstarted()
                if let index = model.firstUnstarted {
                    #expect(taken.map(\.bytes) == model.frames[index...].map(\.bytes), "\(context): backlog")
                    model.remove(from: index, count: model.frames.count - index)
                } else {
                    #expect(taken.isEmpty, "\(context): no backlog")
                }
            default:
                guard random.chance(20) else { break }
                // The reader died: every frame not read whole comes back, whole.
                let taken = queue.takeNotAcknowledged()
                #expect(taken.map(\.bytes) == model.frames.map(\.bytes), "\(context): taken back")
                model = Model()
            }
            let held = model.heldBytes
            #expect(queue.heldFrameBytes == held, "\(context): held bytes")
            #expect(queue.heldBytes == held.count, "\(context)")
            #expect(queue.unwrittenBytes == model.end - model.written, "\(context)")
            #expect(queue.isEmpty == model.frames.isEmpty, "\(context)")
            #expect(queue.firstMalformedFrame() == nil, "\(context)")
            // A segment holds frames up to 256 KiB; one frame larger has its own.
            let bound = queue.heldBytes + Self.segment
            #expect(queue.footprint <= bound, "\(context): footprint \(queue.footprint), holding \(queue.heldBytes)")
            if queue.footprint > bound || queue.heldFrameBytes != held { return }
            largest = max(largest, queue.heldBytes)
        }
        // The schedule reached the cases that matter: several segments held, and writes cut at a segment's end.
        #expect(largest > 2 * Self.segment, "seed \(seed): held at most \(largest) bytes")
        #expect(link || splitWrites > 0, "seed \(seed): no write stopped at a segment's end")
    }

    /// A queue that streams (frames appended, written, read, freed segment by segment, several segments in the
    /// pipe at once, as with a 1 MiB pipe) takes its segments from the pool segments were given back to: once
    /// warm, it allocates none. Fresh memory is faulted in page by page, and the allocator gives freed segments
    /// back to the system: at 4 KB frames, those page faults took 8% of a router's time in `append`.
    @Test func aStreamingQueue_reusesTheSegmentsItFreed() {
        let pool = BufferPool(limit: 8 * Self.segment)
        var queue = FrameQueue(pool: pool)
        var next = 0
        var missesWhenWarm = 0
        for round in 0..<20 {
            if round == 2 { missesWhenWarm = pool.misses }
            // More than a 1 MiB pipe's worth of 4 KB frames written, some read on the way, then the rest.
            for index in 0..<300 {
                Self.frame(next, size: 4000).withUnsafeBytes { queue.append($0, meta: FrameMeta(route: 0, version: 0, tag: nil)) }
                next += 1
                _ = queue.wrote(queue.unwrittenBytes)
                if index == 99 || index == 199 { queue.acknowledge(unread: 600_000) { _ in } }
            }
            #expect(queue.segmentCount >= 4, "round \(round): \(queue.segmentCount) segments live")
            queue.acknowledge(unread: 0) { _ in }
            #expect(queue.isEmpty)
        }
        #expect(pool.misses == missesWhenWarm, "a warm queue allocated \(pool.misses - missesWhenWarm) segments")
        #expect(pool.keptBytes > 0 && pool.keptBytes <= pool.limit)
        // What it kept is a pool's, bounded: a pool with no room keeps nothing, and the queue still works.
        var unpooled = FrameQueue(pool: BufferPool(limit: 0))
        Self.frame(0, size: 4000).withUnsafeBytes { unpooled.append($0, meta: FrameMeta(route: 0, version: 0, tag: nil)) }
        #expect(unpooled.heldFrameBytes == Self.frame(0, size: 4000))
    }

    /// What a router writes when its count of the pipe's room is too cautious: the next whole frames, none
    /// started, up to PIPE_BUF bytes (a write the kernel takes whole or refuses).
    @Test func nextFramesSize_takesWholeUnstartedFramesUpToTheLimit() {
        var queue = FrameQueue(pool: BufferPool(limit: 0))
        let sizes = [100, 2000, 3000, 5000, 10]
        let frames = sizes.enumerated().map { Self.frame($0.offset, size: $0.element) }
        for frame in frames { frame.withUnsafeBytes { queue.append($0, meta: FrameMeta(route: 0, version: 0, tag: nil)) } }
        #expect(queue.nextFramesSize(atMost: 4096) == frames[0].count + frames[1].count)
        #expect(queue.nextFramesSize(atMost: 50) == 0, "the next frame is larger than the limit")
        _ = queue.wrote(frames[0].count + frames[1].count)
        #expect(queue.nextFramesSize(atMost: 4096) == frames[2].count)
        _ = queue.wrote(10)
        #expect(queue.nextFramesSize(atMost: 4096) == 0, "the next frame has started")
        _ = queue.wrote(frames[2].count - 10)
        #expect(queue.nextFramesSize(atMost: 4096) == 0, "a 5000-byte frame does not fit PIPE_BUF")
        _ = queue.wrote(frames[3].count)
        #expect(queue.nextFramesSize(atMost: 4096) == frames[4].count)
    }
}
