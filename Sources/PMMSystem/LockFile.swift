import Foundation
import Glibc
import SystemPackage

/// A lock held for a process's lifetime: `flock(2)` on a file in the state directory. `apply.lock` keeps applies
/// to one at a time; `router.lock` keeps one router per state directory.
///
/// The kernel drops an flock when its holder dies, so a lock left by a killed process is taken over at once;
/// the file's text (pid, time, command) only serves to say who holds it, and who held it before.
public final class LockFile {
    public let path: String
    let fd: Int32
    /// The previous holder's line, when the lock was taken over from a process that is gone.
    public let tookOverFrom: String?

    private init(path: String, fd: Int32, tookOverFrom: String?) {
        self.path = path
        self.fd = fd
        self.tookOverFrom = tookOverFrom
    }

    deinit {
        _ = Sys.ftruncate(fd, 0)
        Sys.close(fd)  // releases the flock
    }

    /// Takes the lock, or throws `.locked` naming the holder.
    ///
    /// - Parameter owner: what to record as the holder (for example `pmm apply -f mesh.yaml`).
    public static func acquire(at path: String, owner: String, now: String) throws(FIFOError) -> LockFile {
        let fd: Int32
        switch Sys.open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600) {
        case .success(let value): fd = value
        case .failure(let errno): throw .syscall("open", path: path, errno)
        }
        let previous = (try? Sys.readAll(fd, limit: 4096).get()).map { String(decoding: $0, as: UTF8.self) }?
            .trimmingCharacters(in: .whitespacesAndNewlines)
        switch Sys.flock(fd, LOCK_EX | LOCK_NB) {
        case .success: break
        case .failure(.wouldBlock):
            Sys.close(fd)
            throw FIFOError(
                .locked, path: path, "held by another process: \(previous?.isEmpty == false ? previous! : "unknown holder")",
                hint: "wait for it to finish; the lock is released when that process exits")
        case .failure(let errno):
            Sys.close(fd)
            throw .syscall("flock", path: path, errno)
        }
        _ = Sys.ftruncate(fd, 0)
        _ = Glibc.lseek(fd, 0, SEEK_SET)
        _ = Sys.writeAll(fd, Array("pid \(getpid()) since \(now): \(owner)\n".utf8))
        return LockFile(path: path, fd: fd, tookOverFrom: previous?.isEmpty == false ? previous : nil)
    }

    /// The processes holding an exclusive `flock(2)` on the file at `path` now, from `/proc/locks`; nil when
    /// `/proc/locks` or the file cannot be read.
    ///
    /// The kernel writes this table, so it cannot be stale: a process that died no longer holds its lock, whatever
    /// files it left behind. Each line names the lock's kind, mode, holder pid and `major:minor:inode` (major and
    /// minor in hex); waiters (`->`) hold nothing and are skipped. Pids are as seen from this process's pid namespace.
    public static func holders(of path: String) -> [Int32]? {
        guard case .success(let file) = Sys.lstat(path), let table = try? String(contentsOfFile: "/proc/locks", encoding: .utf8)
        else { return nil }
        // glibc's dev_t encoding (gnu_dev_major and gnu_dev_minor, which are macros Swift does not import).
        let device = UInt64(file.st_dev)
        let major = ((device >> 8) & 0xfff) | ((device >> 32) & ~0xfff)
        let minor = (device & 0xff) | ((device >> 12) & ~0xff)
        var pids: [Int32] = []
        for line in table.split(separator: "\n") {
            // "1: FLOCK  ADVISORY  WRITE 8795 fe:00:16220228 0 EOF"
            let fields = line.split(separator: " ")
            guard fields.count >= 6, fields[1] == "FLOCK", fields[3] == "WRITE", let pid = Int32(fields[4]) else { continue }
            let id = fields[5].split(separator: ":")
            if id.count == 3, UInt64(id[0], radix: 16) == major, UInt64(id[1], radix: 16) == minor, UInt64(id[2]) == UInt64(file.st_ino) {
                pids.append(pid)
            }
        }
        return pids
    }
}
