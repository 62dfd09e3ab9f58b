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
}
