import Glibc
import PMMSystem

/// Writes frames into a producer's ingress pipes, one per shard: the one place that knows how a producer
/// writes (used by `Producer` and by `pmm send`).
///
/// **The rule that keeps frames whole**: every frame, whatever its size, is written under an exclusive
/// `flock` on the pipe, held until the last byte is in. The kernel makes a write of up to PIPE_BUF (4,096
/// bytes) atomic only against other writes: a larger frame that meets a full pipe is written in pieces, and a
/// small frame of another writer that took no lock would land between two pieces. So small writers lock too.
/// Every writer of pmm's pipes (this type, hence `Producer` and `pmm send`) follows the rule; a hand-written
/// producer sharing a pipe with others must follow it as well (DESIGN.md, "On the pipes"). The cost is two
/// `flock` calls per frame (`pmm bench --writer frame` measures it).
///
/// - Blocking writes: a full pipe blocks the caller (back-pressure).
/// - On EPIPE (the router went away, or apply replaced the pipe) it opens the pipe at its path again, which
///   waits for a reader, and only then closes the old descriptor: while a writer holds it the pipe keeps the
///   frames the old router had not taken. A frame cut short by EPIPE is finished, not written again: when the
///   path still names the same pipe, the rest of the frame follows the part already in it (under the lock it
///   never released), so the next router reads one whole frame; when apply replaced the pipe, the part went
///   with the old pipe and the whole frame goes into the new one.
///
/// **SIGPIPE**: a write to a pipe whose reader went away raises SIGPIPE, which kills a process by default. The
/// caller must ignore it (`pmm send` does) or block it in the writing thread (`Producer`'s writer thread does,
/// so a service using the library keeps its own SIGPIPE disposition); the write then fails with EPIPE, which
/// this type handles.
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
    }

    deinit { for fd in fds where fd >= 0 { close(fd) } }

    /// A pipe that still held bytes when `finish(timeout:)` gave up.
    public struct Untaken: Sendable, Equatable {
        public var path: String
        public var bytes: Int
        /// Whether a router still held the pipe open (its buffer full: the bytes wait for it). When none did,
        /// the bytes went when this writer closed, unless another writer holds the pipe.
        public var routerReading: Bool
    }

    /// Waits until the router has taken every byte out of this writer's pipes (at most `timeout` seconds in
    /// all), then closes them. Returns the pipes that still held bytes at the deadline, and whether a router
    /// held each then; empty when everything was taken.
    ///
    /// A FIFO's unread bytes live only while some descriptor holds it. A producer that closes (or exits) while
    /// its last frames wait in the pipe and no router reads it (the router killed, the next one not up yet)
    /// throws them away; one that closes while a router has not read them yet leaves them to that router's
    /// fate. Held open here, they wait for the router, or for the next one. An empty pipe means the router has
    /// them: an at-least-once router moves what it reads into its spool first. Other writers' frames in the
    /// same pipe count too, so under their steady traffic this waits for a moment the router has caught up.
    public func finish(timeout: Double) -> [Untaken] {
        let deadline = monotonicNanos() &+ UInt64(max(0, timeout) * 1e9)
        var untaken: [Untaken] = []
        for shard in fds.indices where fds[shard] >= 0 {
            var unread = unreadBytes(fds[shard])
            while unread > 0, monotonicNanos() < deadline {
                usleep(1_000)
                unread = unreadBytes(fds[shard])
            }
            if unread > 0 { untaken.append(Untaken(path: paths[shard], bytes: unread, routerReading: Self.hasReader(fds[shard]))) }
            close(fds[shard])
            fds[shard] = -1
        }
        return untaken
    }

    /// Writes one whole frame into `shard`'s pipe.
    public func write(_ frame: [UInt8], shard: Int) throws(PipeMeshError) {
        if fds[shard] < 0 { fds[shard] = try open(paths[shard], wait: waitForFirstReader) }
        var fd = fds[shard]
        DescriptorLock.lock(fd)
        defer { DescriptorLock.unlock(fd) }
        var offset = 0
        while true {
            let failure = writeAll(fd, frame, from: &offset)
            if failure == 0 { return }
            guard failure == EPIPE else { throw .pipe(path: paths[shard], reason: String(cString: strerror(failure))) }
            // No reader. Opening the path again waits for one and tells whether it is still this pipe.
            let replacement = try open(paths[shard], wait: true)
            if Self.samePipe(fd, replacement) {
                // The part already written waits in this pipe for the new reader: go on from `offset` on the
                // descriptor that holds the lock.
                close(replacement)
                continue
            }
            // Apply replaced the pipe: what was written went with the old one; the whole frame goes into the new.
            DescriptorLock.unlock(fd)
            close(fd)
            fd = replacement
            fds[shard] = fd
            DescriptorLock.lock(fd)
            offset = 0
        }
    }

    /// Whether the pipe behind write descriptor `fd` has a reader (without one, poll(2) reports POLLERR).
    static func hasReader(_ fd: Int32) -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        return poll(&entry, 1, 0) >= 0 && entry.revents & Int16(POLLERR) == 0
    }

    /// Whether two descriptors are the same pipe (not a pipe apply put at the path meanwhile).
    static func samePipe(_ a: Int32, _ b: Int32) -> Bool {
        var sa = stat()
        var sb = stat()
        guard fstat(a, &sa) == 0, fstat(b, &sb) == 0 else { return false }
        return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino
    }

    /// Writes `frame` from `offset` on, advancing it; returns 0 or the errno.
    private func writeAll(_ fd: Int32, _ frame: [UInt8], from offset: inout Int) -> Int32 {
        while offset < frame.count {
            let start = offset
            let n = frame.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + start, $0.count - start) }
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
