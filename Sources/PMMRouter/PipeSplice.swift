import Glibc
import SystemPackage

/// `splice(2)`: moves bytes from a pipe into a file or another pipe inside the kernel (page references between
/// pipes, no copy). `_GNU_SOURCE`-only, so declared by symbol, as is `tee(2)`.
@_silgen_name("splice")
func c_splice(_ fdIn: Int32, _ offIn: UnsafeMutablePointer<Int64>?, _ fdOut: Int32, _ offOut: UnsafeMutablePointer<Int64>?, _ length: Int, _ flags: UInt32) -> Int

/// `tee(2)`: links up to `length` bytes at the head of one pipe into another without taking them.
@_silgen_name("tee")
func c_tee(_ fdIn: Int32, _ fdOut: Int32, _ length: Int, _ flags: UInt32) -> Int

let SPLICE_F_MOVE: UInt32 = 1
let SPLICE_F_NONBLOCK: UInt32 = 2

/// A private pipe through which the router looks at an ingress pipe's head without taking it: `tee(2)` links
/// the head's pages into it, and a read(2) copies them out. It holds `slots` pages at most, so one look covers
/// at most `slots` of the ingress pipe's buffers: a run of those bytes moved on with splice(2) takes at most
/// that many slots in the pipe it goes to, and a pipe with that many free takes it whole.
final class PeekPipe {
    private let readEnd: Int32
    private let writeEnd: Int32
    /// Bytes one look may cover (the pipe's capacity).
    let capacity: Int
    /// The most pipe buffers one look covers.
    var slots: Int { capacity / 4096 }

    /// A pipe of `capacity` bytes, or nil when none can be made that large (or /dev/null cannot be opened).
    init?(capacity: Int) {
        var ends: [Int32] = [-1, -1]
        guard devNull >= 0, pipe(&ends) == 0 else { return nil }
        readEnd = ends[0]
        writeEnd = ends[1]
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        _ = fcntl(readEnd, F_SETFL, O_NONBLOCK)
        let set = fcntl(writeEnd, F_SETPIPE_SZ, Int32(clamping: capacity))
        guard set >= capacity else {
            close(readEnd)
            close(writeEnd)
            return nil
        }
        self.capacity = Int(set)
    }

    deinit {
        close(readEnd)
        close(writeEnd)
    }

    /// Copies up to `space.count` bytes from the head of pipe `source` into `space`, leaving them in `source`.
    /// Returns the count, 0 when `source` is empty and has no writer, or -1 with errno (EAGAIN: empty).
    func look(at source: Int32, into space: UnsafeMutableRawBufferPointer) -> Int {
        let linked = c_tee(source, writeEnd, min(space.count, capacity), SPLICE_F_NONBLOCK)
        guard linked > 0 else { return linked }
        var copied = 0
        while copied < linked {
            let n = read(readEnd, space.baseAddress! + copied, linked - copied)
            if n > 0 {
                copied += n
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                // The pipe is private and holds exactly what tee linked: this does not happen.
                preconditionFailure("the peek pipe held \(copied) of \(linked) bytes (errno \(errno))")
            }
        }
        return linked
    }
}

/// Takes `count` bytes from the head of pipe `source` without copying them (splice(2) into /dev/null; read(2)
/// into a scratch buffer if that is refused). Returns how many it took: fewer only when the pipe held fewer.
func dropFromPipe(_ source: Int32, count: Int) -> Int {
    var taken = 0
    var scratch: [UInt8] = []
    while taken < count {
        var n: Int
        if scratch.isEmpty {
            n = c_splice(source, nil, devNull, nil, count - taken, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if n < 0 && errno != EINTR && errno != EAGAIN {
                scratch = [UInt8](repeating: 0, count: 64 << 10)
                continue
            }
        } else {
            n = scratch.withUnsafeMutableBytes { read(source, $0.baseAddress, min($0.count, count - taken)) }
        }
        if n > 0 {
            taken += n
        } else if n < 0 && errno == EINTR {
            continue
        } else {
            break
        }
    }
    return taken
}

/// /dev/null, open for writing for the life of the process.
let devNull: Int32 = open("/dev/null", O_WRONLY | O_CLOEXEC)
