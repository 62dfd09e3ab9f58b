public import SystemPackage

/// A failure of the operating-system layer, with the path, the cause and what to do.
public struct FIFOError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Code: String, Sendable, Equatable {
        /// The root (or the state directory) is a symbolic link; pmm never follows one.
        case symlink
        /// Something other than a directory stands where the root should be.
        case notADirectory
        /// The root can be written by users other than its owner, who could swap pipes.
        case unsafePermissions
        /// The root belongs to a user other than root or the one running pmm.
        case unsafeOwner
        /// A path changed between planning and execution (another inode, another type).
        case changedSinceObserved
        /// A file already exists where pmm wanted to create one.
        case exists
        /// The operation needs privileges this process lacks (chown as non-root, for instance).
        case permissionDenied
        /// Another process holds the lock.
        case locked
        /// Any other failing system call.
        case systemCall
    }

    public var code: Code
    public var path: String
    /// What went wrong, in one sentence (without the path, which `description` adds).
    public var message: String
    /// What to do about it.
    public var hint: String?
    /// The errno, when a system call failed.
    public var cause: Errno?

    public init(_ code: Code, path: String, _ message: String, hint: String? = nil, cause: Errno? = nil) {
        self.code = code
        self.path = path
        self.message = message
        self.hint = hint
        self.cause = cause
    }

    /// A failed system call: "mkfifoat failed: Permission denied (errno 13)".
    static func syscall(_ name: String, path: String, _ errno: Errno, hint: String? = nil) -> FIFOError {
        let code: Code = (errno == .permissionDenied || errno == .notPermitted) ? .permissionDenied : .systemCall
        let defaultHint =
            code == .permissionDenied
            ? "pmm needs root (or the pipes' owner) to create and re-own pipes; run it with sudo or use --root for a directory you own"
            : nil
        return FIFOError(
            code, path: path, "\(name) failed: \(errno) (errno \(errno.rawValue))", hint: hint ?? defaultHint,
            cause: errno)
    }

    public var description: String {
        var text = "\(path): \(message)"
        if let hint { text += "\n  hint: \(hint)" }
        return text
    }
}
