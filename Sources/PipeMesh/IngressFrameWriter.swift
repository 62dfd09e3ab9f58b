import Glibc
import PMMSystem

/// Writes frames into a producer's ingress pipes, one per shard: the one place that knows how a producer
/// writes (used by `Producer` and by `pmm send`).
///
/// - One write(2) per frame: up to PIPE_BUF (4096 bytes) atomic when replicas share a pipe; a larger frame
///   under an `flock` on the pipe, so frames never interleave.
/// - Blocking writes: a full pipe blocks the caller (back-pressure).
/// - On EPIPE (the router went away, or apply replaced the pipe) it opens the pipe at its path again, which
///   waits for a reader, and only then closes the old descriptor: while a writer holds it the pipe keeps the
///   frames the old router had not taken.
///
/// Not thread-safe; the caller serializes.
public final class IngressFrameWriter {
    /// The ingress pipe of each shard, in shard order.
    public let paths: [String]
    /// Whether the first open of a shard waits for a reader, or fails at once with "no router is reading".
    let waitForFirstReader: Bool
    /// Called once each time the writer starts waiting for a reader (for a note to the user).
    let onWait: (String) -> Void
    private var fds: [Int32]

    public init(paths: [String], waitForFirstReader: Bool = true, onWait: @escaping (String) -> Void = { _ in }) {
        self.paths = paths
        self.waitForFirstReader = waitForFirstReader
        self.onWait = onWait
        self.fds = Array(repeating: -1, count: paths.count)
        signal(SIGPIPE, SIG_IGN)
    }

    deinit { for fd in fds where fd >= 0 { close(fd) } }

    /// Writes one whole frame into `shard`'s pipe.
    public func write(_ frame: [UInt8], shard: Int) throws(PipeMeshError) {
        while true {
            if fds[shard] < 0 { fds[shard] = try open(paths[shard], wait: waitForFirstReader) }
            let fd = fds[shard]
            let locked = frame.count > Int(PIPE_BUF)
            if locked { DescriptorLock.lock(fd) }
            let failure = writeAll(fd, frame)
            if locked { DescriptorLock.unlock(fd) }
            if failure == 0 { return }
            guard failure == EPIPE else { throw .pipe(path: paths[shard], reason: String(cString: strerror(failure))) }
            let replacement = try open(paths[shard], wait: true)
            close(fd)
            fds[shard] = replacement
        }
    }

    /// Writes all of `frame`; returns 0 or the errno.
    private func writeAll(_ fd: Int32, _ frame: [UInt8]) -> Int32 {
        var offset = 0
        while offset < frame.count {
            let n = frame.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                return errno
            }
            offset += n
        }
        return 0
    }

    /// Opens a FIFO for blocking writes, never following a symlink; while no router reads it, waits (polling
    /// every 50 ms) or fails.
    private func open(_ path: String, wait: Bool) throws(PipeMeshError) -> Int32 {
        var noted = false
        while true {
            let fd = Glibc.open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW)
            if fd >= 0 {
                var st = stat()
                guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFIFO else {
                    close(fd)
                    throw .pipe(path: path, reason: "not a FIFO")
                }
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
                return fd
            }
            guard errno == ENXIO || (errno == ENOENT && wait) else {
                throw .pipe(path: path, reason: errno == ENXIO ? "no router is reading it; start pmm router" : String(cString: strerror(errno)))
            }
            guard wait else { throw .pipe(path: path, reason: "no router is reading it; start pmm router") }
            if !noted {
                onWait(path)
                noted = true
            }
            usleep(50_000)
        }
    }
}
