import CPMMLinux
import Glibc

/// An epoll(7) instance: descriptors registered once, a wait that returns only the ready ones, so a descriptor
/// that is idle costs nothing per wait (poll(2) scans every descriptor it is given, every call).
///
/// Level-triggered. Each registration carries a 64-bit token of the caller's choosing, returned with its events.
/// A descriptor closed while registered leaves the set by itself (the router never duplicates its descriptors).
/// Not thread-safe: one owner.
public final class Epoll {
    public let fd: Int32
    private var events: UnsafeMutablePointer<pmm_epoll_ready>
    private let capacity: Int

    /// What `wait` found ready.
    public struct Ready {
        public var token: UInt64
        public var events: UInt32
        public var readable: Bool { events & PMM_EPOLLIN != 0 }
        public var writable: Bool { events & PMM_EPOLLOUT != 0 }
        /// EPOLLERR or EPOLLHUP (reported whether asked for or not).
        public var failed: Bool { events & (PMM_EPOLLERR | PMM_EPOLLHUP) != 0 }
    }

    public static let readable = PMM_EPOLLIN
    public static let writable = PMM_EPOLLOUT

    /// - Parameter capacity: events returned per wait at most (more stay ready for the next wait).
    public init(capacity: Int = 1024) throws(FIFOError) {
        let fd = pmm_epoll_create()
        guard fd >= 0 else { throw FIFOError(.systemCall, path: "epoll_create1", String(cString: strerror(errno))) }
        self.fd = fd
        self.capacity = min(capacity, 1024)
        events = .allocate(capacity: min(capacity, 1024))
    }

    deinit {
        events.deallocate()
        close(fd)
    }

    /// Registers `descriptor` for `interest` (0: only errors and hang-ups), or changes its interest if it is
    /// registered already. Returns false when the kernel refuses it (a regular file, a closed descriptor).
    @discardableResult
    public func watch(_ descriptor: Int32, interest: UInt32, token: UInt64) -> Bool {
        if pmm_epoll_ctl(fd, PMM_EPOLL_CTL_MOD, descriptor, interest, token) == 0 { return true }
        guard errno == ENOENT else { return false }
        return pmm_epoll_ctl(fd, PMM_EPOLL_CTL_ADD, descriptor, interest, token) == 0
    }

    /// Adds `descriptor` (known not to be registered): one system call instead of two.
    @discardableResult
    public func add(_ descriptor: Int32, interest: UInt32, token: UInt64) -> Bool {
        if pmm_epoll_ctl(fd, PMM_EPOLL_CTL_ADD, descriptor, interest, token) == 0 { return true }
        return errno == EEXIST && watch(descriptor, interest: interest, token: token)
    }

    /// Changes the interest of a registered descriptor.
    @discardableResult
    public func modify(_ descriptor: Int32, interest: UInt32, token: UInt64) -> Bool {
        pmm_epoll_ctl(fd, PMM_EPOLL_CTL_MOD, descriptor, interest, token) == 0
    }

    /// Removes `descriptor` (before closing it, or to stop watching it).
    public func remove(_ descriptor: Int32) {
        _ = pmm_epoll_ctl(fd, PMM_EPOLL_CTL_DEL, descriptor, 0, 0)
    }

    /// Waits up to `timeout` ms (0: do not wait, -1: forever) and calls `body` for each ready descriptor.
    /// Returns how many were ready (0 on a timeout or EINTR, -1 with `errno` on another failure).
    @discardableResult
    public func wait(timeout: Int32, _ body: (Ready) -> Void) -> Int {
        let n = Int(pmm_epoll_wait(fd, events, Int32(capacity), timeout))
        if n < 0 { return errno == EINTR ? 0 : -1 }
        for i in 0..<n { body(Ready(token: events[i].token, events: events[i].events)) }
        return n
    }
}

/// Names the calling thread (what `top -H` and `/proc/<pid>/task/*/comm` show); Linux keeps 15 bytes.
public func nameThisThread(_ name: String) {
    _ = pmm_set_thread_name(String(name.utf8.prefix(15))!)
}

/// Keeps the calling thread on CPU `cpu` (and the threads it starts after). False if the kernel refused (no
/// such CPU, or one outside this process's cpuset).
@discardableResult
public func pinThisThread(toCPU cpu: Int) -> Bool {
    pmm_pin_thread(Int32(cpu)) == 0
}
