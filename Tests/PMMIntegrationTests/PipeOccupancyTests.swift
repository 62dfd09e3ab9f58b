import Foundation
import Glibc
@testable import PMMRouter
import PMMRouterCore
import Synchronization
import Testing

/// `PipeOccupancy` against the kernel's own pipes: a writer that writes only what the bound says the pipe
/// surely takes, and asks (FIONREAD) only when the bound says so, must never see a write taken in part, while
/// a reader on another thread reads at its own pace (pausing, so that the pipe fills). Frames of every size,
/// many of them writes whose remainder does not fit the last page (each of those takes a page of its own), in
/// small pipes that fill at once.
@Suite struct PipeOccupancyTests {
    static let F_SETPIPE_SZ: Int32 = 1031

    /// Asks the pipe written through `fd` what it holds (FIONREAD), as the router does.
    static func ask(_ fd: Int32, _ occupancy: inout PipeOccupancy, now: UInt64) {
        var unread: Int32 = 0
        _ = ioctl(fd, UInt(FIONREAD), &unread)
        occupancy.asked(unread: Int(unread), now: now)
    }

    /// One pipe, one writer (this thread), one reader; returns (writes, bytes written, asks, partial writes).
    static func run(seed: UInt64, pipeSize: Int32, bytes total: Int, foreign: Int) throws -> (writes: Int, bytes: Int, asks: Int, partial: Int) {
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        _ = fcntl(fds[1], Self.F_SETPIPE_SZ, pipeSize)
        let capacity = Int(fcntl(fds[1], 1032))
        try #require(fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK) == 0)
        // Bytes already in the pipe when the writer comes (a previous router's), written one by one.
        for _ in 0..<foreign { var byte: UInt8 = 7; try #require(write(fds[1], &byte, 1) == 1) }

        let done = Atomic<Bool>(false)
        let readFD = fds[0]
        let reader = Thread {
            var random = SplitMix(seed: seed &+ 1)
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            while !done.load(ordering: .relaxed) {
                let roll = random.next() % 100
                if roll < 10 { usleep(UInt32(random.next() % 2000)) }  // a pause: the pipe fills
                let want = roll < 50 ? Int(random.next() % 64) + 1 : Int(random.next() % UInt64(buffer.count)) + 1
                var ready = pollfd(fd: readFD, events: Int16(POLLIN), revents: 0)
                guard poll(&ready, 1, 10) > 0 else { continue }
                _ = buffer.withUnsafeMutableBytes { read(readFD, $0.baseAddress, want) }
            }
        }
        reader.start()
        defer { done.store(true, ordering: .relaxed) }

        var random = SplitMix(seed: seed)
        var occupancy = PipeOccupancy(capacity: capacity)
        var pending: [Int] = []  // frame sizes, oldest first
        var writes = 0, written = 0, asks = 0, partial = 0
        let chunk = [UInt8](repeating: 0x5a, count: capacity)
        var clock: UInt64 = 0
        while written < total {
            while pending.count < 16 {
                let roll = random.next() % 10
                let size = roll < 5 ? 3000 + Int(random.next() % 1000) : roll < 8 ? Int(random.next() % 200) + 1 : Int(random.next() % 9000) + 1
                pending.append(min(size, capacity / 2))
            }
            let queued = pending.reduce(0, +)
            clock += 1000
            if occupancy.mustAsk(toWrite: queued) {
                Self.ask(fds[1], &occupancy, now: clock)
                asks += 1
            }
            // Whole frames that fit the room; mostly one to three per write, as a router writes paced traffic.
            let most = random.next() % 10 < 7 ? Int(random.next() % 3) + 1 : pending.count
            var count = 0, frames = 0
            while frames < most && count + pending[frames] <= occupancy.room {
                count += pending[frames]
                frames += 1
            }
            if frames == 0 {
                usleep(50)
                Self.ask(fds[1], &occupancy, now: clock)
                asks += 1
                continue
            }
            let n = chunk.withUnsafeBytes { write(fds[1], $0.baseAddress, count) }
            try #require(n > 0, "write of \(count) bytes with room \(occupancy.room) failed: errno \(errno)")
            if n != count { partial += 1 }
            occupancy.wrote(n)
            writes += 1
            written += n
            pending.removeFirst(frames)
            // The bound is an upper bound of what the pipe holds.
            var unread: Int32 = 0
            _ = ioctl(fds[1], UInt(FIONREAD), &unread)
            #expect(Int(unread) <= occupancy.bound ?? .max, "the pipe holds \(unread) bytes, more than the bound \(occupancy.bound ?? -1)")
        }
        return (writes, written, asks, partial)
    }

    @Test(arguments: [(UInt64(1), Int32(65_536), 0), (2, 65_536, 0), (3, 16_384, 0), (4, 1 << 20, 0), (5, 65_536, 300)])
    func writesWithinTheBound_areNeverTakenInPart(seed: UInt64, pipeSize: Int32, foreign: Int) throws {
        let result = try Self.run(seed: seed, pipeSize: pipeSize, bytes: 8 << 20, foreign: foreign)
        #expect(result.partial == 0, "\(result.partial) of \(result.writes) writes were taken in part")
        #expect(result.bytes >= 8 << 20)
        print("FIGURES pipe occupancy, seed \(seed), pipe \(pipeSize) B: \(result.writes) writes, \(result.asks) asks")
    }

    /// `slotsSpanned` against every run of random buffer layouts: buffers of 1 to 4096 bytes (mostly full pages,
    /// as a busy producer's large writes leave them, or mostly part-full, as small writes do), at most 64 of them
    /// in a look, and runs starting anywhere in it. The bound is never below the buffers a run spans, and for a
    /// look of 64 full pages it is within two of them.
    @Test func slotsSpanned_boundsTheBuffersOfEveryRun() {
        var random = SplitMix(seed: 21)
        var checked = 0
        for layout in 0..<2_000 {
            let slots = 64
            let full = layout % 2 == 0
            let count = full && random.next() % 2 == 0 ? slots : Int(random.next() % UInt64(slots)) + 1
            let lengths = (0..<count).map { _ in full && random.next() % 8 != 0 ? 4096 : Int(random.next() % 4096) + 1 }
            var ends: [Int] = []
            for length in lengths { ends.append((ends.last ?? 0) + length) }
            let look = ends.last!
            for _ in 0..<20 {
                let start = Int(random.next() % UInt64(look))
                let run = Int(random.next() % UInt64(look - start)) + 1
                // Buffers holding any of bytes start..<start + run.
                let first = ends.firstIndex { $0 > start }!
                let last = ends.firstIndex { $0 >= start + run }!
                let spanned = last - first + 1
                let bound = PipeOccupancy.slotsSpanned(run: run, look: look, slots: slots)
                #expect(bound >= spanned, "layout \(layout): a run of \(run) at \(start) spans \(spanned) buffers, bound \(bound)")
                if look == slots * 4096 { #expect(bound <= spanned + 2, "a look of full pages") }
                checked += 1
            }
        }
        #expect(checked == 40_000)
    }

    /// Runs moved with splice(2) from a source pipe looked at through a `PeekPipe`, as the router moves peeked
    /// runs: each takes one slot per source buffer it spans, at most `PipeOccupancy.slotsSpanned` of them, so a
    /// splice with that many pages free by the bound is taken whole. The source is written in sizes that leave
    /// most of its buffers part-full (2049 to 2200 bytes: one buffer each), the worst case for that count, and a
    /// run starts anywhere in the look (what came before it taken, as the router drops or moves it). Returns
    /// (splices, partial splices, asks).
    static func runSplices(seed: UInt64, pipeSize: Int32, bytes total: Int) throws -> (splices: Int, partial: Int, asks: Int) {
        var source: [Int32] = [0, 0]
        var destination: [Int32] = [0, 0]
        try #require(pipe(&source) == 0 && pipe(&destination) == 0)
        defer { for fd in source + destination { close(fd) } }
        _ = fcntl(source[1], Self.F_SETPIPE_SZ, Int32(1 << 20))
        _ = fcntl(destination[1], Self.F_SETPIPE_SZ, pipeSize)
        let capacity = Int(fcntl(destination[1], 1032))
        try #require(fcntl(destination[1], F_SETFL, fcntl(destination[1], F_GETFL) | O_NONBLOCK) == 0)
        let peek = try #require(PeekPipe(capacity: 256 << 10))

        let done = Atomic<Bool>(false)
        let finished = Atomic<Int>(0)
        let (sourceWrite, destinationRead) = (source[1], destination[0])
        let writer = Thread {
            defer { finished.add(1, ordering: .relaxed) }
            var random = SplitMix(seed: seed &+ 2)
            let chunk = [UInt8](repeating: 0x33, count: 4096)
            while !done.load(ordering: .relaxed) {
                let size = random.next() % 10 < 8 ? 2049 + Int(random.next() % 152) : Int(random.next() % 4096) + 1
                if chunk.withUnsafeBytes({ write(sourceWrite, $0.baseAddress, size) }) <= 0 { break }
            }
        }
        let reader = Thread {
            defer { finished.add(1, ordering: .relaxed) }
            var random = SplitMix(seed: seed &+ 1)
            var buffer = [UInt8](repeating: 0, count: 1 << 18)
            while !done.load(ordering: .relaxed) {
                if random.next() % 100 < 20 { usleep(UInt32(random.next() % 3000)) }
                var ready = pollfd(fd: destinationRead, events: Int16(POLLIN), revents: 0)
                guard poll(&ready, 1, 10) > 0 else { continue }
                _ = buffer.withUnsafeMutableBytes { read(destinationRead, $0.baseAddress, Int(random.next() % UInt64($0.count)) + 1) }
            }
        }
        writer.start()
        reader.start()
        defer {
            // Both threads stop before the descriptors close (a write to a reused number would hit another file).
            done.store(true, ordering: .relaxed)
            while finished.load(ordering: .relaxed) < 2 {
                _ = dropFromPipe(source[0], count: 1 << 20)
                usleep(1000)
            }
        }

        var random = SplitMix(seed: seed)
        var occupancy = PipeOccupancy(capacity: capacity)
        var look = [UInt8](repeating: 0, count: 256 << 10)
        var consumed = 0, splices = 0, partial = 0, asks = 0
        var clock: UInt64 = 0
        while consumed < total {
            let n = look.withUnsafeMutableBytes { peek.look(at: source[0], into: $0) }
            if n <= 0 {
                usleep(100)
                continue
            }
            // A run anywhere in the look, of any length: frames for one consumer, back to back, after bytes
            // the router took otherwise.
            let skip = random.next() % 2 == 0 ? 0 : Int(random.next() % UInt64(n))
            let run = Int(random.next() % UInt64(n - skip)) + 1
            let pages = PipeOccupancy.slotsSpanned(run: run, look: n, slots: peek.slots)
            clock += 1000
            if occupancy.mustAsk(toWrite: pages * 4096) {
                Self.ask(destination[1], &occupancy, now: clock)
                asks += 1
            }
            guard occupancy.room >= pages * 4096 else {
                // No room by the bound: wait for the reader, and look again.
                usleep(100)
                Self.ask(destination[1], &occupancy, now: clock)
                asks += 1
                continue
            }
            try #require(dropFromPipe(source[0], count: skip) == skip)
            consumed += skip
            let spliced = c_splice(source[0], nil, destination[1], nil, run, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            try #require(spliced > 0, "splice of \(run) bytes with room \(occupancy.room) failed: errno \(errno)")
            if spliced != run {
                partial += 1
                try #require(dropFromPipe(source[0], count: run - spliced) == run - spliced)
            }
            occupancy.wrote(spliced, pages: pages)
            splices += 1
            consumed += run
            var unread: Int32 = 0
            _ = ioctl(destination[1], UInt(FIONREAD), &unread)
            #expect(Int(unread) <= occupancy.bound ?? .max, "the pipe holds \(unread) bytes, more than the bound \(occupancy.bound ?? -1)")
        }
        return (splices, partial, asks)
    }

    @Test(arguments: [(UInt64(11), Int32(1 << 20)), (12, 512 << 10), (13, 256 << 10)])
    func splicesWithinTheBound_areNeverTakenInPart(seed: UInt64, pipeSize: Int32) throws {
        let result = try Self.runSplices(seed: seed, pipeSize: pipeSize, bytes: 16 << 20)
        #expect(result.partial == 0, "\(result.partial) of \(result.splices) splices were taken in part")
        #expect(result.splices > 0)
        print("FIGURES splices against the bound, seed \(seed), pipe \(pipeSize) B: \(result.splices) splices, \(result.asks) asks")
    }
}
