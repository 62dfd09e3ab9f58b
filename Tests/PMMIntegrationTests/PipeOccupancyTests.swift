import Foundation
import Glibc
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
                var unread: Int32 = 0
                _ = ioctl(fds[1], UInt(FIONREAD), &unread)
                occupancy.asked(unread: Int(unread), now: clock)
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
                var unread: Int32 = 0
                _ = ioctl(fds[1], UInt(FIONREAD), &unread)
                occupancy.asked(unread: Int(unread), now: clock)
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
}
