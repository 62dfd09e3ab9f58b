import Glibc
public import PMMCore
import SystemPackage

/// A mesh's pipe root, held open as a directory descriptor: every operation is relative to that descriptor and
/// never follows a symbolic link, so nothing can redirect pmm outside the root after it was checked.
///
/// Not thread-safe; one apply uses it at a time (the apply lock sees to that). Close it with `close()`.
public final class PipeRoot {
    /// The root's path, for messages.
    public let path: String
    /// The directory descriptor (`O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC`), owned by this object.
    let fd: Int32

    /// Prefix of the temporary names a FIFO has between `mkfifoat` and its rename into place.
    public static let temporaryPrefix = ".pmm-tmp-"

    private init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    deinit { Sys.close(fd) }

    /// Opens an existing root, checking that it is a real directory that only its owner can write, owned by root
    /// or by the user running pmm. Returns nil when nothing exists at `path`.
    ///
    /// - Throws: `FIFOError` when `path` is a symlink, not a directory, or unsafe.
    public static func open(_ path: String) throws(FIFOError) -> PipeRoot? {
        let fd: Int32
        switch Sys.open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) {
        case .success(let value): fd = value
        case .failure(.noSuchFileOrDirectory): return nil
        case .failure(let errno) where errno == .tooManySymbolicLinkLevels || errno == .notDirectory:
            let kind = (try? Sys.lstat(path).get())?.fileKind ?? .unknown
            if kind == .symlink {
                throw FIFOError(
                    .symlink, path: path, "the pipe root is a symbolic link; pmm never follows one",
                    hint: "point 'root' (or --root) at the real directory")
            }
            throw FIFOError(
                .notADirectory, path: path, "\(kind.withArticle) stands where the pipe root should be",
                hint: "choose another root, or move that file away")
        case .failure(let errno):
            throw .syscall("open", path: path, errno)
        }
        let root = PipeRoot(path: path, fd: fd)
        try root.checkSafety()
        return root
    }

    /// Opens the root, creating it (and missing parents, mode 0755) when absent.
    public static func openOrCreate(_ path: String) throws(FIFOError) -> PipeRoot {
        if let root = try open(path) { return root }
        try makeDirectories(path, mode: 0o755)
        guard let root = try open(path) else {
            throw FIFOError(.changedSinceObserved, path: path, "the root vanished right after it was created")
        }
        return root
    }

    /// `mkdir -p` of an absolute path, refusing to follow a symlink in the last component.
    public static func makeDirectories(_ path: String, mode: UInt32) throws(FIFOError) {
        precondition(path.hasPrefix("/"), "makeDirectories takes an absolute path")
        var current = ""
        for component in path.split(separator: "/") {
            current += "/" + component
            switch Sys.lstat(current) {
            case .success(let st):
                if st.fileKind == .directory { continue }
                if st.fileKind == .symlink, current != path {
                    // An intermediate link (such as /var/run -> /run) is the administrator's choice.
                    continue
                }
                throw FIFOError(
                    st.fileKind == .symlink ? .symlink : .notADirectory, path: current,
                    "\(st.fileKind.withArticle) stands where a directory should be")
            case .failure(.noSuchFileOrDirectory):
                switch Sys.mkdirat(AT_FDCWD, current, mode_t(mode)) {
                case .success, .failure(.fileExists): continue
                case .failure(let errno): throw .syscall("mkdir", path: current, errno)
                }
            case .failure(let errno):
                throw .syscall("lstat", path: current, errno)
            }
        }
    }

    /// Refuses a root that others can write or that a third user owns.
    func checkSafety() throws(FIFOError) {
        let st: stat
        switch Sys.fstat(fd) {
        case .success(let value): st = value
        case .failure(let errno): throw .syscall("fstat", path: path, errno)
        }
        if st.permissions & 0o022 != 0 {
            throw FIFOError(
                .unsafePermissions, path: path,
                "the pipe root is writable by group or others (mode \(Planner.octal(st.permissions))), who could swap pipes",
                hint: "chmod go-w \(path)")
        }
        let euid = geteuid()
        if st.st_uid != 0 && st.st_uid != euid {
            throw FIFOError(
                .unsafeOwner, path: path,
                "the pipe root belongs to uid \(st.st_uid), neither root nor the user running pmm (uid \(euid))",
                hint: "chown root \(path), or choose a root of your own")
        }
    }

    // MARK: Observing

    /// Every entry of the root, by name, as `lstat` sees it (symlinks reported as symlinks). pmm's own
    /// temporary files are left out.
    public func scan() throws(FIFOError) -> [String: ObservedFile] {
        let names: [String]
        switch Sys.directoryEntries(fd) {
        case .success(let value): names = value
        case .failure(let errno): throw .syscall("readdir", path: path, errno)
        }
        var files: [String: ObservedFile] = [:]
        for name in names where !name.hasPrefix(Self.temporaryPrefix) {
            switch Sys.lstatat(fd, name) {
            case .success(let st): files[name] = Self.observed(name, st)
            case .failure(.noSuchFileOrDirectory): continue  // removed while we looked
            case .failure(let errno): throw .syscall("fstatat", path: child(name), errno)
            }
        }
        return files
    }

    /// One entry, or nil when absent.
    public func stat(_ name: String) throws(FIFOError) -> ObservedFile? {
        switch Sys.lstatat(fd, name) {
        case .success(let st): return Self.observed(name, st)
        case .failure(.noSuchFileOrDirectory): return nil
        case .failure(let errno): throw .syscall("fstatat", path: child(name), errno)
        }
    }

    static func observed(_ name: String, _ st: Glibc.stat) -> ObservedFile {
        ObservedFile(
            name: name, kind: st.fileKind, uid: st.st_uid, gid: st.st_gid, mode: st.permissions,
            device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }

    func child(_ name: String) -> String { Naming.path(root: path, fileName: name) }

    // MARK: Opening pipes (the data plane)

    /// The outcome of opening a pipe for the data plane.
    public enum OpenResult: Sendable {
        /// Open, non-blocking, close-on-exec; the caller owns `fd`.
        case opened(fd: Int32, file: ObservedFile)
        /// A write end with nobody reading (ENXIO): the consumer is not running.
        case noReader
        /// Nothing at that name.
        case missing
        /// Something that is not a FIFO, or a failing call.
        case failed(FIFOError)
    }

    /// Opens the FIFO `name` non-blocking for reading or writing, never following a symlink, and checks that
    /// what was opened is a FIFO.
    public func openFIFO(_ name: String, forWriting: Bool) -> OpenResult {
        let flags = (forWriting ? O_WRONLY : O_RDONLY) | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC
        let fd: Int32
        switch Sys.openat(self.fd, name, flags) {
        case .success(let value): fd = value
        case .failure(.noSuchAddressOrDevice): return .noReader
        case .failure(.noSuchFileOrDirectory): return .missing
        case .failure(let errno) where errno == .tooManySymbolicLinkLevels:
            return .failed(FIFOError(.symlink, path: child(name), "a symbolic link stands where a pipe should be; not followed"))
        case .failure(let errno): return .failed(.syscall("open", path: child(name), errno))
        }
        switch Sys.fstat(fd) {
        case .success(let st) where st.fileKind == .fifo:
            return .opened(fd: fd, file: Self.observed(name, st))
        case .success(let st):
            Sys.close(fd)
            return .failed(FIFOError(.changedSinceObserved, path: child(name), "\(st.fileKind.withArticle) stands where a pipe should be"))
        case .failure(let errno):
            Sys.close(fd)
            return .failed(.syscall("fstat", path: child(name), errno))
        }
    }

    // MARK: Changing

    /// A FIFO made under a temporary name with its final owner and mode, not yet linked into place.
    ///
    /// Its device and inode are those the pipe will have at `name` (a link or a rename keeps the inode), so a
    /// caller can record what it is about to link before it does (see `Reconciler`'s intents). Link it with
    /// `link(_:)` or `rename(_:over:)`, or give it up with `discard(_:)`.
    public struct PreparedFIFO: Sendable {
        /// The name it is for.
        public let name: String
        /// Its temporary name in the root.
        public let temporary: String
        /// The new FIFO as it will be seen at `name`.
        public let file: ObservedFile
    }

    /// Makes a FIFO for `name` under a temporary name with mode 0000, re-owns and re-modes it through a
    /// descriptor, and returns it unlinked from `name`.
    public func prepareFIFO(_ name: String, uid: UInt32, gid: UInt32, mode: UInt32) throws(FIFOError) -> PreparedFIFO {
        try makeTemporaryFIFO(for: name, uid: uid, gid: gid, mode: mode)
    }

    /// Links a prepared FIFO to its free name (`linkat`; fails with `.exists` if anything is there) and removes
    /// the temporary name, whatever happens.
    @discardableResult
    public func link(_ prepared: PreparedFIFO) throws(FIFOError) -> ObservedFile {
        defer { discard(prepared) }
        switch Sys.linkat(fd, prepared.temporary, prepared.name) {
        case .success: break
        case .failure(.fileExists):
            throw FIFOError(.exists, path: child(prepared.name), "a file appeared here after planning; nothing was changed")
        case .failure(let errno): throw .syscall("linkat", path: child(prepared.name), errno)
        }
        guard let created = try stat(prepared.name) else {
            throw FIFOError(.changedSinceObserved, path: child(prepared.name), "the new FIFO vanished right after creation")
        }
        return created
    }

    /// Moves a prepared FIFO over the FIFO at its name, which must still be the inode `expected` (`renameat`:
    /// the name is never absent). The temporary name is removed if the rename does not happen.
    @discardableResult
    public func rename(_ prepared: PreparedFIFO, over expected: ObservedFile) throws(FIFOError) -> ObservedFile {
        do throws(FIFOError) {
            try verify(prepared.name, expected: expected)
        } catch {
            discard(prepared)
            throw error
        }
        switch Sys.renameat(fd, prepared.temporary, prepared.name) {
        case .success: break
        case .failure(let errno):
            discard(prepared)
            throw .syscall("renameat", path: child(prepared.name), errno)
        }
        guard let replaced = try stat(prepared.name) else {
            throw FIFOError(.changedSinceObserved, path: child(prepared.name), "the new FIFO vanished right after creation")
        }
        return replaced
    }

    /// Removes a prepared FIFO's temporary name (a no-op once it was renamed into place).
    public func discard(_ prepared: PreparedFIFO) {
        _ = Sys.unlinkat(fd, prepared.temporary)
    }

    /// Creates a FIFO at `name` with the given owner and mode. Fails with `.exists` if anything is there.
    ///
    /// The FIFO is made under a temporary name with mode 0000, re-owned and re-moded through a descriptor, and
    /// only then linked into place, so the pipe is never visible with the wrong owner or mode.
    @discardableResult
    public func createFIFO(_ name: String, uid: UInt32, gid: UInt32, mode: UInt32) throws(FIFOError) -> ObservedFile {
        try link(try prepareFIFO(name, uid: uid, gid: gid, mode: mode))
    }

    /// Replaces the FIFO at `name`, which must still be the inode `expected`, with a new one (a new inode):
    /// descriptors open on the old pipe no longer reach the new one. Atomic: the name is never absent.
    @discardableResult
    public func replaceFIFO(_ name: String, expected: ObservedFile, uid: UInt32, gid: UInt32, mode: UInt32)
        throws(FIFOError) -> ObservedFile
    {
        try verify(name, expected: expected)
        return try rename(try prepareFIFO(name, uid: uid, gid: gid, mode: mode), over: expected)
    }

    /// Changes the mode of the FIFO at `name`, which must still be the inode `expected`, through an `O_PATH`
    /// descriptor (never through a path a symlink could redirect).
    @discardableResult
    public func setMode(_ name: String, expected: ObservedFile, mode: UInt32) throws(FIFOError) -> ObservedFile {
        let pathFD: Int32
        switch Sys.openat(fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC) {
        case .success(let value): pathFD = value
        case .failure(let errno): throw .syscall("openat", path: child(name), errno)
        }
        defer { Sys.close(pathFD) }
        let st: Glibc.stat
        switch Sys.fstat(pathFD) {
        case .success(let value): st = value
        case .failure(let errno): throw .syscall("fstat", path: child(name), errno)
        }
        try check(Self.observed(name, st), against: expected)
        if case .failure(let errno) = Sys.fchmod(pathDescriptor: pathFD, mode_t(mode)) {
            throw .syscall("chmod", path: child(name), errno)
        }
        guard let changed = try stat(name) else {
            throw FIFOError(.changedSinceObserved, path: child(name), "the FIFO vanished during chmod")
        }
        return changed
    }

    /// Removes the FIFO at `name` if it is still the inode `expected`.
    public func removeFIFO(_ name: String, expected: ObservedFile) throws(FIFOError) {
        try verify(name, expected: expected)
        switch Sys.unlinkat(fd, name) {
        case .success, .failure(.noSuchFileOrDirectory): return
        case .failure(let errno): throw .syscall("unlinkat", path: child(name), errno)
        }
    }

    /// Removes temporary FIFOs an interrupted apply left behind. Returns their names.
    @discardableResult
    public func removeLeftovers() throws(FIFOError) -> [String] {
        guard case .success(let names) = Sys.directoryEntries(fd) else { return [] }
        var removed: [String] = []
        for name in names where name.hasPrefix(Self.temporaryPrefix) {
            if case .success(let st) = Sys.lstatat(fd, name), st.fileKind == .fifo, case .success = Sys.unlinkat(fd, name) {
                removed.append(name)
            }
        }
        return removed
    }

    func verify(_ name: String, expected: ObservedFile) throws(FIFOError) {
        guard let current = try stat(name) else {
            throw FIFOError(.changedSinceObserved, path: child(name), "the pipe vanished after planning; nothing was changed")
        }
        try check(current, against: expected)
    }

    func check(_ current: ObservedFile, against expected: ObservedFile) throws(FIFOError) {
        guard current.kind == .fifo, current.inode == expected.inode, current.device == expected.device else {
            throw FIFOError(
                .changedSinceObserved, path: child(current.name),
                "\(current.kind.withArticle) (inode \(current.inode)) replaced the planned FIFO (inode \(expected.inode)); nothing was changed",
                hint: "run the command again to plan from the current state")
        }
    }

    func makeTemporaryFIFO(for name: String, uid: UInt32, gid: UInt32, mode: UInt32) throws(FIFOError) -> PreparedFIFO {
        let temporary = "\(Self.temporaryPrefix)\(getpid())-\(name)"
        _ = Sys.unlinkat(fd, temporary)
        if case .failure(let errno) = Sys.mkfifoat(fd, temporary, 0) {
            throw .syscall("mkfifoat", path: child(temporary), errno)
        }
        var ok = false
        defer { if !ok { _ = Sys.unlinkat(fd, temporary) } }
        let pathFD: Int32
        switch Sys.openat(fd, temporary, O_PATH | O_NOFOLLOW | O_CLOEXEC) {
        case .success(let value): pathFD = value
        case .failure(let errno): throw .syscall("openat", path: child(temporary), errno)
        }
        defer { Sys.close(pathFD) }
        let st = try? Sys.fstat(pathFD).get()
        if st?.st_uid != uid || st?.st_gid != gid {
            if case .failure(let errno) = Sys.fchown(pathDescriptor: pathFD, uid, gid) {
                throw .syscall(
                    "fchownat", path: child(name), errno,
                    hint: errno == .notPermitted
                        ? "giving a pipe to uid \(uid) needs root; run pmm as root, or set the services' uids to your own for a local trial"
                        : nil)
            }
        }
        if case .failure(let errno) = Sys.fchmod(pathDescriptor: pathFD, mode_t(mode)) {
            throw .syscall("chmod", path: child(name), errno)
        }
        let made: Glibc.stat
        switch Sys.fstat(pathFD) {
        case .success(let value): made = value
        case .failure(let errno): throw .syscall("fstat", path: child(temporary), errno)
        }
        ok = true
        return PreparedFIFO(name: name, temporary: temporary, file: Self.observed(name, made))
    }
}
