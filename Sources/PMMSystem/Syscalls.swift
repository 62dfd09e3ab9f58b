import Glibc
import PMMCore
import SystemPackage

/// `O_PATH` (Linux, every architecture pmm supports): a descriptor that names an inode without opening it.
/// Glibc declares it only under `_GNU_SOURCE`, which Swift's Glibc module does not define.
let O_PATH: Int32 = 0o10_000_000
/// `AT_EMPTY_PATH`: operate on the descriptor itself. `_GNU_SOURCE`-only, like `O_PATH`.
let AT_EMPTY_PATH: Int32 = 0x1000

/// `flock(2)`; Swift resolves `Glibc.flock` to `struct flock`, so the function is declared by its symbol.
@_silgen_name("flock")
private func c_flock(_ fd: Int32, _ operation: Int32) -> Int32

// Every system call pmm makes outside the data plane, wrapped once: each returns `Result<_, Errno>` and retries
// EINTR. Callers add context (the path, what to do) when they map the errno into a `FIFOError`.

@inline(__always)
private func valueOrErrno<I: FixedWidthInteger>(_ body: () -> I) -> Result<I, Errno> {
    while true {
        let value = body()
        if value != -1 { return .success(value) }
        let errno = Errno(rawValue: Glibc.errno)
        if errno != .interrupted { return .failure(errno) }
    }
}

enum Sys {
    /// The corresponding C function is `openat`.
    static func openat(_ dirfd: Int32, _ path: String, _ flags: Int32, _ mode: mode_t = 0) -> Result<Int32, Errno> {
        valueOrErrno { Glibc.openat(dirfd, path, flags, mode) }
    }

    /// The corresponding C function is `open`.
    static func open(_ path: String, _ flags: Int32, _ mode: mode_t = 0) -> Result<Int32, Errno> {
        valueOrErrno { Glibc.open(path, flags, mode) }
    }

    /// The corresponding C function is `close`. EINTR is not retried: on Linux the descriptor is closed anyway.
    static func close(_ fd: Int32) {
        _ = Glibc.close(fd)
    }

    /// The corresponding C function is `fstatat` (with `AT_SYMLINK_NOFOLLOW`: a symlink is reported, not followed).
    static func lstatat(_ dirfd: Int32, _ name: String) -> Result<stat, Errno> {
        var st = stat()
        return valueOrErrno { Glibc.fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) }.map { _ in st }
    }

    /// The corresponding C function is `lstat`.
    static func lstat(_ path: String) -> Result<stat, Errno> {
        var st = stat()
        return valueOrErrno { Glibc.lstat(path, &st) }.map { _ in st }
    }

    /// The corresponding C function is `fstat`.
    static func fstat(_ fd: Int32) -> Result<stat, Errno> {
        var st = stat()
        return valueOrErrno { Glibc.fstat(fd, &st) }.map { _ in st }
    }

    /// The corresponding C function is `mkfifoat`.
    static func mkfifoat(_ dirfd: Int32, _ name: String, _ mode: mode_t) -> Result<Void, Errno> {
        valueOrErrno { Glibc.mkfifoat(dirfd, name, mode) }.map { _ in () }
    }

    /// The corresponding C function is `mkdirat`.
    static func mkdirat(_ dirfd: Int32, _ name: String, _ mode: mode_t) -> Result<Void, Errno> {
        valueOrErrno { Glibc.mkdirat(dirfd, name, mode) }.map { _ in () }
    }

    /// The corresponding C function is `fchownat` with `AT_EMPTY_PATH`: changes the inode `fd` refers to
    /// (an `O_PATH` descriptor is enough).
    static func fchown(pathDescriptor fd: Int32, _ uid: uid_t, _ gid: gid_t) -> Result<Void, Errno> {
        valueOrErrno { Glibc.fchownat(fd, "", uid, gid, AT_EMPTY_PATH) }.map { _ in () }
    }

    /// chmod of the inode an `O_PATH` descriptor refers to, through `/proc/self/fd` (fchmod refuses `O_PATH`
    /// descriptors, and fchmodat cannot refuse to follow a symlink). The corresponding C function is `chmod`.
    static func fchmod(pathDescriptor fd: Int32, _ mode: mode_t) -> Result<Void, Errno> {
        valueOrErrno { Glibc.chmod("/proc/self/fd/\(fd)", mode) }.map { _ in () }
    }

    /// The corresponding C function is `fchmod`.
    static func fchmod(_ fd: Int32, _ mode: mode_t) -> Result<Void, Errno> {
        valueOrErrno { Glibc.fchmod(fd, mode) }.map { _ in () }
    }

    /// The corresponding C function is `linkat` (fails with EEXIST rather than replace).
    static func linkat(_ dirfd: Int32, _ from: String, _ to: String) -> Result<Void, Errno> {
        valueOrErrno { Glibc.linkat(dirfd, from, dirfd, to, 0) }.map { _ in () }
    }

    /// The corresponding C function is `renameat` (atomically replaces `to`).
    static func renameat(_ dirfd: Int32, _ from: String, _ to: String) -> Result<Void, Errno> {
        valueOrErrno { Glibc.renameat(dirfd, from, dirfd, to) }.map { _ in () }
    }

    /// The corresponding C function is `unlinkat`.
    static func unlinkat(_ dirfd: Int32, _ name: String) -> Result<Void, Errno> {
        valueOrErrno { Glibc.unlinkat(dirfd, name, 0) }.map { _ in () }
    }

    /// The corresponding C function is `flock`.
    static func flock(_ fd: Int32, _ operation: Int32) -> Result<Void, Errno> {
        valueOrErrno { c_flock(fd, operation) }.map { _ in () }
    }

    /// The corresponding C function is `dup` (with close-on-exec).
    static func dup(_ fd: Int32) -> Result<Int32, Errno> {
        valueOrErrno { Glibc.fcntl(fd, F_DUPFD_CLOEXEC, Int32(0)) }
    }

    /// The corresponding C function is `ftruncate`.
    static func ftruncate(_ fd: Int32, _ length: Int) -> Result<Void, Errno> {
        valueOrErrno { Glibc.ftruncate(fd, off_t(length)) }.map { _ in () }
    }

    /// Writes all of `bytes` (retrying short writes). The corresponding C function is `write`.
    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Result<Void, Errno> {
        var offset = 0
        while offset < bytes.count {
            let result = bytes.withUnsafeBytes { buffer in
                valueOrErrno { Glibc.write(fd, buffer.baseAddress! + offset, buffer.count - offset) }
            }
            switch result {
            case .success(let n): offset += n
            case .failure(let errno): return .failure(errno)
            }
        }
        return .success(())
    }

    /// Reads until EOF or `limit` bytes. The corresponding C function is `read`.
    static func readAll(_ fd: Int32, limit: Int) -> Result<[UInt8], Errno> {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while bytes.count < limit {
            let result = chunk.withUnsafeMutableBytes { buffer in
                valueOrErrno { Glibc.read(fd, buffer.baseAddress!, min(buffer.count, limit - bytes.count)) }
            }
            switch result {
            case .success(0): return .success(bytes)
            case .success(let n): bytes += chunk[0..<n]
            case .failure(let errno): return .failure(errno)
            }
        }
        return .success(bytes)
    }

    /// Entry names of the directory `fd` refers to (without `.` and `..`). Reads through a duplicate, so `fd`
    /// stays open and usable. The corresponding C functions are `fdopendir` and `readdir`.
    static func directoryEntries(_ fd: Int32) -> Result<[String], Errno> {
        let duplicate: Int32
        switch dup(fd) {
        case .success(let value): duplicate = value
        case .failure(let errno): return .failure(errno)
        }
        guard let dir = Glibc.fdopendir(duplicate) else {
            let errno = Errno(rawValue: Glibc.errno)
            close(duplicate)
            return .failure(errno)
        }
        defer { Glibc.closedir(dir) }
        Glibc.rewinddir(dir)
        var names: [String] = []
        while let entry = Glibc.readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return .success(names)
    }
}

extension stat {
    /// The file type, from `st_mode & S_IFMT` (`S_ISFIFO` and friends are macros Swift does not import).
    var fileKind: FileKind {
        switch st_mode & S_IFMT {
        case S_IFIFO: .fifo
        case S_IFREG: .regular
        case S_IFDIR: .directory
        case S_IFLNK: .symlink
        case S_IFSOCK: .socket
        case S_IFCHR: .characterDevice
        case S_IFBLK: .blockDevice
        default: .unknown
        }
    }

    /// Permission bits, `st_mode & 0o7777`.
    var permissions: UInt32 { UInt32(st_mode) & 0o7777 }
}

/// Advisory whole-file locks on a descriptor (`flock(2)`), for writers that share a pipe.
public enum DescriptorLock {
    /// Blocks until `fd`'s file is locked exclusively.
    public static func lock(_ fd: Int32) {
        _ = Sys.flock(fd, LOCK_EX)
    }

    public static func unlock(_ fd: Int32) {
        _ = Sys.flock(fd, LOCK_UN)
    }
}

/// Signal handling a daemon can rely on, whatever its parent did.
public enum ProcessSignals {
    /// Unblocks every signal in the calling thread (threads created later inherit the mask).
    ///
    /// A process inherits its parent's blocked-signal mask across fork and exec; test runners and some
    /// supervisors block SIGTERM or SIGHUP, which would leave the router deaf to reload and stop. Call this
    /// first thing in `main`.
    public static func unblockAll() {
        var set = sigset_t()
        sigemptyset(&set)
        pthread_sigmask(SIG_SETMASK, &set, nil)
    }
}

/// Raises this process's soft limit on open descriptors to its hard limit (a router of a big mesh holds one per
/// pipe, past the usual soft limit of 1,024). Returns the soft limit now in force.
@discardableResult
public func raiseDescriptorLimit() -> Int {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
    if limit.rlim_cur < limit.rlim_max {
        var raised = limit
        raised.rlim_cur = limit.rlim_max
        if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { return Int(clamping: raised.rlim_cur) }
    }
    return Int(clamping: limit.rlim_cur)
}

/// Bytes the pipe behind `fd` holds unread (FIONREAD works on either end of a pipe); 0 when it cannot tell.
@inline(__always)
public func unreadBytes(_ fd: Int32) -> Int {
    var count: Int32 = 0
    return ioctl(fd, UInt(FIONREAD), &count) == 0 ? Int(count) : 0
}
