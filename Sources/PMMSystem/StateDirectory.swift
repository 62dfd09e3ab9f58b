import Foundation
import Glibc
import PMMCore
import SystemPackage

/// The state directory (`--state-dir`, `PMM_STATE_DIR`, default `/var/lib/pmm`): the registry, the apply lock,
/// and (for the data plane) the router's pid, status, socket and spool.
public struct StateDirectory: Sendable {
    public static let defaultPath = "/var/lib/pmm"

    public let path: String

    /// - Parameter path: absolute, or relative to the current directory.
    public init(path: String) {
        self.path = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }

    public var registryPath: String { path + "/registry.sqlite" }
    public var lockPath: String { path + "/apply.lock" }
    /// Held by the running router.
    public var routerLockPath: String { path + "/router.lock" }
    /// The running router's pid (text).
    public var routerPIDPath: String { path + "/router.pid" }
    /// The router's status JSON.
    public var routerStatusPath: String { path + "/router.json" }
    /// The at-least-once spools, one file per ingress pipe.
    public var spoolPath: String { path + "/spool" }
    /// The control API's Unix socket (`pmm serve`).
    public var socketPath: String { path + "/pmm.sock" }
    /// The dead-letter spool, one file per data type.
    public var deadLetterPath: String { path + "/deadletters" }

    /// The pid of the router running for this state directory, or nil: the pid `router.pid` names, only if that
    /// process holds `router.lock` now.
    ///
    /// `router.pid` alone proves nothing: a router killed with SIGKILL leaves it behind, and the kernel may give
    /// its pid to any other process. The router holds an exclusive flock on `router.lock` for its whole life
    /// (`RouterService`), and the kernel drops it when the router dies, so the lock's holder, read from
    /// `/proc/locks`, is the proof. Where `/proc/locks` cannot be read, no router is assumed.
    public var runningRouterPID: Int32? {
        guard let text = try? String(contentsOfFile: routerPIDPath, encoding: .utf8),
            let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0,
            LockFile.holders(of: routerLockPath)?.contains(pid) == true
        else { return nil }
        return pid
    }

    /// Sends `signal` to the router running for this state directory (see ``runningRouterPID``), and to no
    /// other process.
    ///
    /// - Returns: the router's pid, or nil when no router runs (nothing was sent).
    @discardableResult
    public func signalRouter(_ signal: Int32) -> Int32? {
        guard let pid = runningRouterPID, kill(pid, signal) == 0 else { return nil }
        return pid
    }

    /// Creates the directory (mode 0755: services must reach `pmm.sock` in it; the spool and dead letters
    /// below are 0700) and refuses a symlink or a directory others can write.
    public func prepare() throws(FIFOError) {
        switch Sys.lstat(path) {
        case .success(let st):
            if st.fileKind == .symlink {
                throw FIFOError(.symlink, path: path, "the state directory is a symbolic link; pmm never follows one")
            }
            guard st.fileKind == .directory else {
                throw FIFOError(.notADirectory, path: path, "\(st.fileKind.withArticle) stands where the state directory should be")
            }
            if st.permissions & 0o002 != 0 {
                throw FIFOError(
                    .unsafePermissions, path: path, "the state directory is writable by others",
                    hint: "chmod o-w \(path)")
            }
        case .failure(.noSuchFileOrDirectory):
            try PipeRoot.makeDirectories(path, mode: 0o755)
        case .failure(let errno):
            throw .syscall("lstat", path: path, errno)
        }
    }

    /// Whether the state directory exists (read-only commands do not create it).
    public var exists: Bool {
        (try? Sys.lstat(path).get())?.fileKind == .directory
    }
}
