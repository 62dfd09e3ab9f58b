import Foundation
import Glibc
import PMMSystem

/// `splice(2)`: moves bytes from a pipe into a file inside the kernel. `_GNU_SOURCE`-only, so declared by symbol.
@_silgen_name("splice")
private func c_splice(_ fdIn: Int32, _ offIn: UnsafeMutablePointer<Int64>?, _ fdOut: Int32, _ offOut: UnsafeMutablePointer<Int64>?, _ length: Int, _ flags: UInt32) -> Int

let SPLICE_F_MOVE: UInt32 = 1
let SPLICE_F_NONBLOCK: UInt32 = 2

/// The at-least-once spool of one ingress pipe: `<state-dir>/spool/<pipe>.spool`.
///
/// The router never reads an at-least-once ingress pipe into memory directly: `splice(2)` moves the bytes from
/// the pipe into the spool file in one system call, and the router reads them back from the file. So a frame
/// is on disk from the moment it leaves the pipe, with no window in between; a router killed with SIGKILL and
/// started again finds every frame that had not been written to an egress pipe.
///
/// `<pipe>.spool.mark` holds the watermark: every frame before it was written to an egress pipe. Frames after it
/// are delivered again on restart (duplicates are allowed and counted; losses are not). When everything is
/// delivered the file is truncated.
///
/// The spool survives the router's death, not the machine's: nothing is fsync'd per frame (see the README).
final class Spool {
    let path: String
    let markPath: String
    let fd: Int32
    /// The end of the file: where the next splice appends.
    private(set) var size: Int64
    /// The next byte to read back into the frame buffer.
    var readOffset: Int64
    /// Every frame before this offset was written to an egress pipe.
    private(set) var watermark: Int64
    private var markWritten: Int64 = -1

    /// Frames in flight, in spool order: (start offset, done).
    private var outstanding: [(start: Int64, end: Int64, done: Bool)] = []
    private var outstandingHead = 0
    /// The sequence number of `outstanding[outstandingHead]`.
    private var headSequence: UInt64 = 0

    init(directory: String, pipe: String) throws(FIFOError) {
        path = directory + "/" + pipe + ".spool"
        markPath = path + ".mark"
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw FIFOError(.systemCall, path: path, "cannot open the spool: \(String(cString: strerror(errno)))") }
        self.fd = fd
        var st = stat()
        fstat(fd, &st)
        size = Int64(st.st_size)
        let mark = (try? String(contentsOfFile: markPath, encoding: .utf8)).flatMap { Int64($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0
        watermark = min(max(0, mark), size)
        readOffset = watermark
        markWritten = watermark
    }

    deinit { close(fd) }

    /// Bytes spooled but not yet read back (frames to replay after a restart, or in progress).
    var unread: Int64 { size - readOffset }

    /// Moves up to `length` bytes from the pipe `pipeFD` into the spool. Returns what splice returned
    /// (bytes moved, 0 at EOF, -1 with errno).
    func splice(from pipeFD: Int32, length: Int) -> Int {
        var offset = size
        let n = c_splice(pipeFD, nil, fd, &offset, length, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
        if n > 0 { size += Int64(n) }
        return n
    }

    /// Reads spooled bytes from `readOffset` into `buffer` (at most `buffer.count`). Returns the count.
    func readBack(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let want = min(Int64(buffer.count), size - readOffset)
        guard want > 0 else { return 0 }
        let n = pread(fd, buffer.baseAddress, Int(want), Int(readOffset))
        if n > 0 { readOffset += Int64(n) }
        return max(0, n)
    }

    /// Starts tracking a frame at `start..<end`; returns its tag.
    func track(start: Int64, end: Int64, spool: Int32) -> SpoolTag {
        outstanding.append((start, end, false))
        return SpoolTag(spool: spool, sequence: headSequence + UInt64(outstanding.count - outstandingHead - 1))
    }

    /// Marks a frame written to an egress pipe (or dropped by policy, or dead-lettered).
    func complete(_ tag: SpoolTag) {
        let index = outstandingHead + Int(tag.sequence &- headSequence)
        guard index >= outstandingHead && index < outstanding.count else { return }
        outstanding[index].done = true
        advance()
    }

    private func advance() {
        while outstandingHead < outstanding.count && outstanding[outstandingHead].done {
            watermark = outstanding[outstandingHead].end
            outstandingHead += 1
            headSequence &+= 1
        }
        if outstandingHead > 4096 && outstandingHead * 2 > outstanding.count {
            outstanding.removeFirst(outstandingHead)
            outstandingHead = 0
        }
    }

    /// Skips bytes that are not frames (after an ingress reset): `start` up to the end of the spool is never
    /// read again, and counts as delivered once the frames before it are.
    func skip(from start: Int64) {
        outstanding.append((min(start, size), size, true))
        readOffset = size
        advance()
    }

    /// Writes the watermark file when it moved, and truncates the spool when everything is delivered.
    ///
    /// - Parameter pendingBytes: bytes read back but not yet a whole frame; while there are any, the spool
    ///   keeps them (truncating would leave the frame's start only in memory).
    func checkpoint(pendingBytes: Int) {
        if outstandingHead == outstanding.count && readOffset == size && size > 0 && pendingBytes == 0 {
            watermark = size
            // Truncate first: a crash in between leaves a mark past the end, which opening clamps to 0.
            ftruncate(fd, 0)
            size = 0
            readOffset = 0
            watermark = 0
            outstanding.removeAll(keepingCapacity: true)
            outstandingHead = 0
        }
        guard watermark != markWritten else { return }
        let temporary = markPath + ".tmp"
        if FileManager.default.createFile(atPath: temporary, contents: Data("\(watermark)\n".utf8)) {
            rename(temporary, markPath)
            markWritten = watermark
        }
    }
}
