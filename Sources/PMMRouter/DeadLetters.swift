import Foundation
import Glibc
import PMMSystem
public import PMMWire
import PMMRouterCore
import SwiftProtobuf

/// The dead-letter spool: `<state-dir>/deadletters/<data-type>.log`, one record per frame, each a varint length
/// and a `pmm.v1.DeadLetter` message (the frame, its reason, where and when). Appended with one write(2) per
/// record; `pmm deadletters list` and `replay` read it.
///
/// Every change to `<data-type>.log` happens under an exclusive `flock(2)` on its sidecar `<data-type>.lock`, a
/// file that is never renamed or removed: the router's appends here, and `pmm deadletters replay`'s rewrites,
/// which write a new file and rename it over the old one. So under the lock this appender checks that its
/// `O_APPEND` descriptor still refers to the file at the path, and reopens it if a rewrite replaced it; a letter
/// never goes to an unlinked inode.
///
/// With a cap (`maximumFileSize`), a file that an append would take past the cap first sheds its oldest letters,
/// down to about half the cap, by the same atomic rewrite; ``shed`` counts them.
///
/// Not thread-safe: one owner (the router's loop) calls it.
final class DeadLetterSpool {
    /// The default cap per data type file: 256 MiB.
    static let defaultMaximumFileSize = 256 << 20

    let directory: String
    /// The largest a data type's file may grow, in bytes; nil for no cap.
    let maximumFileSize: Int?
    private var files: [String: DeadLetterFile] = [:]
    private(set) var counts: [String: [DeadLetterReason: UInt64]] = [:]
    /// Letters removed, oldest first, to keep files under `maximumFileSize` (or larger than it by themselves).
    private(set) var shed: UInt64 = 0

    /// - Parameters:
    ///   - directory: the spool directory, created (mode 0700) if missing.
    ///   - maximumFileSize: the cap per data type file, in bytes, or nil for none.
    init(directory: String, maximumFileSize: Int? = DeadLetterSpool.defaultMaximumFileSize) {
        self.directory = directory
        self.maximumFileSize = maximumFileSize
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    }

    deinit { for file in files.values { file.close() } }

    /// Appends one dead letter. Returns false if it could not be written (logged by the caller), or was shed at
    /// once because it alone is larger than the cap.
    @discardableResult
    func append(frame: UnsafeRawBufferPointer, dataType: String, reason: DeadLetterReason, pipe: String, detail: String = "") -> Bool {
        var letter = Pmm_V1_DeadLetter()
        letter.reason = reason.rawValue
        letter.detail = detail
        letter.dataType = dataType
        letter.pipe = pipe
        letter.atUnixNanos = realtimeNanos()
        letter.frame = Data(frame)
        counts[dataType, default: [:]][reason, default: 0] += 1
        guard let record = try? letter.framed() else { return false }
        let name = dataType.isEmpty || dataType.contains("/") ? "_unknown" : dataType
        let file = files[name] ?? DeadLetterFile(path: directory + "/" + name + ".log")
        files[name] = file
        guard file.lock() else { return false }
        defer { file.unlock() }
        guard let size = file.openCurrent() else { return false }
        if let cap = maximumFileSize, size + record.count > cap {
            guard record.count <= cap else {
                shed += 1
                return false
            }
            // Keep the newest letters that fit in half the cap (and leave room for this one), atomically; then
            // append to the new file.
            let keep = min(cap / 2, cap - record.count)
            guard let removed = try? DeadLetterStore.shedOldest(file: file.path, keepingAtMost: keep) else { return false }
            shed += UInt64(removed)
            guard file.openCurrent() != nil else { return false }
        }
        return record.withUnsafeBytes { write(file.fd, $0.baseAddress, $0.count) } == record.count
    }
}

/// One data type's spool file as the appender holds it: the `O_APPEND` descriptor and the sidecar lock.
final class DeadLetterFile {
    let path: String
    let lockPath: String
    private(set) var fd: Int32 = -1
    private var lockFD: Int32 = -1

    init(path: String) {
        self.path = path
        lockPath = DeadLetterStore.lockPath(for: path)
    }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        if lockFD >= 0 { Glibc.close(lockFD) }
        fd = -1
        lockFD = -1
    }

    /// Takes the sidecar lock, (re)opening the lock file if it is not the one at its path (removed by hand).
    func lock() -> Bool {
        for _ in 0..<3 {
            if lockFD < 0 {
                lockFD = DeadLetterStore.openLock(lockPath)
                guard lockFD >= 0 else { return false }
            }
            DescriptorLock.lock(lockFD)
            if DeadLetterStore.isSameFile(lockFD, path: lockPath) { return true }
            DescriptorLock.unlock(lockFD)
            Glibc.close(lockFD)
            lockFD = -1
        }
        return false
    }

    func unlock() {
        DescriptorLock.unlock(lockFD)
    }

    /// Makes `fd` the file now at `path` (reopening it after a rewrite replaced it), under the lock; returns its size.
    func openCurrent() -> Int? {
        if fd >= 0 {
            var held = stat()
            if DeadLetterStore.isSameFile(fd, path: path), fstat(fd, &held) == 0 { return Int(held.st_size) }
            Glibc.close(fd)
            fd = -1
        }
        fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        var info = stat()
        guard fd >= 0, fstat(fd, &info) == 0 else { return nil }
        return Int(info.st_size)
    }
}

/// Reading and rewriting the dead-letter spool, for `pmm deadletters`.
///
/// A spool file is a sequence of records, each a varint length and a `pmm.v1.DeadLetter`. A file can hold bytes
/// that are not such a record (a write torn by a full disk or a crash, a damaged disk, an edit by hand): those are
/// reported as ``Corruption``s, by file and byte offset, and skipped; the letters before and after them are read.
public enum DeadLetterStore {
    /// One stored dead letter and the file it is in.
    public struct Entry: Sendable {
        public var file: String
        public var letter: Pmm_V1_DeadLetter
        /// The envelope, when the frame is one (not for `discarded` bytes).
        public var envelope: Envelope?
    }

    /// A stretch of a spool file that holds no readable dead letter.
    public struct Corruption: Sendable, Equatable, CustomStringConvertible {
        /// The spool file.
        public var file: String
        /// Where the unreadable bytes start, in bytes from the start of the file.
        public var offset: Int
        /// How many bytes were skipped: up to the next readable letter, or to the end of the file.
        public var length: Int
        /// What is wrong with the bytes at `offset`.
        public var problem: String

        public var description: String {
            "\(file): byte \(offset): \(problem); \(length) byte\(length == 1 ? "" : "s") skipped"
        }
    }

    /// What a spool directory holds.
    public struct Contents: Sendable {
        /// The readable dead letters, oldest first within each data type.
        public var entries: [Entry]
        /// The unreadable stretches, in file and offset order.
        public var corruptions: [Corruption]
    }

    /// Every readable dead letter under `directory`, and every unreadable stretch, by file and offset.
    public static func load(directory: String) -> Contents {
        var contents = Contents(entries: [], corruptions: [])
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return contents }
        for name in names.sorted() where name.hasSuffix(".log") {
            let path = directory + "/" + name
            guard let data = FileManager.default.contents(atPath: path) else { continue }
            for segment in segments(Array(data)) {
                switch segment {
                case .letter(_, let letter?):
                    contents.entries.append(Entry(file: path, letter: letter, envelope: envelope(of: letter)))
                case .letter(_, nil):
                    break
                case .corrupt(let range, let problem):
                    contents.corruptions.append(Corruption(file: path, offset: range.lowerBound, length: range.count, problem: problem))
                }
            }
        }
        return contents
    }

    /// Every readable dead letter under `directory`, oldest first within each data type.
    public static func read(directory: String) -> [Entry] {
        load(directory: directory).entries
    }

    /// A stretch of a spool file: one record, or bytes that are not one.
    enum Segment {
        /// A record; its letter when decoded.
        case letter(Range<Int>, Pmm_V1_DeadLetter?)
        /// Bytes that hold no readable record, and why.
        case corrupt(Range<Int>, problem: String)

        var range: Range<Int> {
            switch self {
            case .letter(let range, _), .corrupt(let range, _): range
            }
        }
    }

    /// Splits a spool file into records and unreadable stretches.
    ///
    /// After an unreadable record, the next record is looked for byte by byte: a place where a length prefix
    /// fits in the file and is followed by a `DeadLetter` with a known reason and a time. Lengths are compared
    /// as `UInt64` against what is left, so no length, however large, can overflow an offset.
    ///
    /// - Parameter decode: decode every record (for reading); without it, a record whose length fits is taken
    ///   on trust (for cutting a file at a record boundary).
    static func segments(_ bytes: [UInt8], decode: Bool = true) -> [Segment] {
        bytes.withUnsafeBytes { segments($0, decode: decode) }
    }

    static func segments(_ raw: UnsafeRawBufferPointer, decode: Bool) -> [Segment] {
        var segments: [Segment] = []
        var offset = 0
        while offset < raw.count {
            switch record(at: offset, in: raw, decode: decode) {
            case .success(let (end, letter)):
                segments.append(.letter(offset..<end, letter))
                offset = end
            case .failure(let failure):
                var next = offset + 1
                while next < raw.count && !isPlausibleRecord(at: next, in: raw) { next += 1 }
                segments.append(.corrupt(offset..<next, problem: failure.problem))
                offset = next
            }
        }
        return segments
    }

    struct Unreadable: Error {
        var problem: String
    }

    /// The record at `offset`: where it ends and, when decoding, its letter.
    static func record(
        at offset: Int, in raw: UnsafeRawBufferPointer, decode: Bool
    ) -> Result<(end: Int, letter: Pmm_V1_DeadLetter?), Unreadable> {
        switch Varint.decode(raw, at: offset) {
        case .incomplete:
            return .failure(Unreadable(problem: "the file ends inside a record's length prefix"))
        case .malformed:
            return .failure(Unreadable(problem: "a record's length prefix is not a varint"))
        case .value(let length, let size):
            let available = raw.count - offset - size
            guard length <= UInt64(available) else {
                return .failure(Unreadable(problem: "a record claims \(length) bytes, but \(available) follow its length prefix"))
            }
            let end = offset + size + Int(length)
            guard decode else { return .success((end, nil)) }
            let body = Array(UnsafeRawBufferPointer(rebasing: raw[(offset + size)..<end]))
            guard let letter = try? Pmm_V1_DeadLetter(serializedBytes: body), !letter.reason.isEmpty else {
                return .failure(Unreadable(problem: "a record of \(length) bytes is not a dead letter"))
            }
            return .success((end, letter))
        }
    }

    /// Whether a readable record (a known reason and a time) starts at `offset`: where reading resumes after
    /// unreadable bytes. A `DeadLetter` always starts with its reason (field 1, tag 0x0a), which rules out most
    /// places without decoding.
    static func isPlausibleRecord(at offset: Int, in raw: UnsafeRawBufferPointer) -> Bool {
        guard case .value(let length, let size) = Varint.decode(raw, at: offset), length >= 2,
            length <= UInt64(raw.count - offset - size), raw[offset + size] == 0x0a,
            case .success((_, let letter?)) = record(at: offset, in: raw, decode: true)
        else { return false }
        return DeadLetterReason(rawValue: letter.reason) != nil && letter.atUnixNanos > 0
    }

    static func envelope(of letter: Pmm_V1_DeadLetter) -> Envelope? {
        let frame = [UInt8](letter.frame)
        return frame.withUnsafeBytes { raw -> Envelope? in
            // Compared as UInt64: a `discarded` frame holds arbitrary bytes, whose "length" may not fit an Int.
            guard case .value(let length, let size) = Varint.decode(raw, at: 0), length == UInt64(raw.count - size) else { return nil }
            return try? Envelope(body: UnsafeRawBufferPointer(rebasing: raw[size...]))
        }
    }

    /// Rewrites `file` keeping only the letters `keep` accepts, under the lock the router appends with.
    ///
    /// The kept records (and any unreadable bytes: pmm does not delete what it could not read) are written to a
    /// new file next to it, which is fsync'd and renamed over `file`: a crash at any point leaves either the
    /// old file or the new one, never a part of either.
    ///
    /// - Returns: how many letters were removed.
    /// - Throws: `FIFOError` when the file cannot be read or the new one cannot be written (`file` is then as it was).
    @discardableResult
    public static func rewrite(file: String, keep: (Pmm_V1_DeadLetter) -> Bool) throws -> Int {
        try withLock(file) {
            let source = Glibc.open(file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard source >= 0 else { throw systemError("cannot open", file) }
            defer { close(source) }
            let bytes = try readAll(source, file)
            var kept: [Range<Int>] = []
            var removed = 0
            for segment in segments(bytes) {
                if case .letter(_, let letter?) = segment, !keep(letter) {
                    removed += 1
                } else {
                    kept.append(segment.range)
                }
            }
            guard removed > 0 else { return 0 }
            try replace(file, from: source, ranges: kept)
            return removed
        }
    }

    /// Removes the oldest letters of `file` so that at most `limit` bytes stay, keeping the newest records whole,
    /// atomically (as ``rewrite(file:keep:)``). The caller holds the lock.
    ///
    /// Record boundaries are found by reading length prefixes only, in large chunks, so the router does not hold
    /// the whole file in memory; only after unreadable bytes is the rest of the file read to find records again.
    ///
    /// - Returns: how many letters were removed.
    static func shedOldest(file: String, keepingAtMost limit: Int) throws -> Int {
        let source = Glibc.open(file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard source >= 0 else { throw systemError("cannot open", file) }
        defer { close(source) }
        var info = stat()
        guard fstat(source, &info) == 0 else { throw systemError("cannot stat", file) }
        let size = Int(info.st_size)
        guard size > limit else { return 0 }
        // Where each record (or unreadable stretch) starts, and whether it is a letter.
        var starts: [(offset: Int, isLetter: Bool)] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        var chunkStart = 0
        var chunkCount = 0
        var offset = 0
        scan: while offset < size {
            if offset < chunkStart || offset + min(Varint.maximumSize, size - offset) > chunkStart + chunkCount {
                let n = chunk.withUnsafeMutableBytes { pread(source, $0.baseAddress, $0.count, off_t(offset)) }
                guard n > 0 else { throw systemError("cannot read", file) }
                chunkStart = offset
                chunkCount = n
            }
            let decoded = chunk.withUnsafeBytes {
                Varint.decode(UnsafeRawBufferPointer(rebasing: $0[0..<chunkCount]), at: offset - chunkStart)
            }
            switch decoded {
            case .value(let length, let prefix) where length <= UInt64(size - offset - prefix):
                starts.append((offset, true))
                offset += prefix + Int(length)
            default:
                // Unreadable bytes: read the rest and find the records after them as `pmm deadletters list` does.
                var rest = [UInt8](repeating: 0, count: size - offset)
                var filled = 0
                while filled < rest.count {
                    let n = rest.withUnsafeMutableBytes {
                        pread(source, $0.baseAddress! + filled, $0.count - filled, off_t(offset + filled))
                    }
                    guard n > 0 else { throw systemError("cannot read", file) }
                    filled += n
                }
                for segment in segments(rest, decode: false) {
                    if case .letter = segment { starts.append((offset + segment.range.lowerBound, true)) } else {
                        starts.append((offset + segment.range.lowerBound, false))
                    }
                }
                break scan
            }
        }
        let cut = starts.first { size - $0.offset <= limit }?.offset ?? size
        let removed = starts.count { $0.offset < cut && $0.isLetter }
        try replace(file, from: source, ranges: [cut..<size])
        return removed
    }

    /// The sidecar lock file of a spool file: `metrics.log` -> `metrics.lock`. It is never renamed or removed,
    /// so every process that locks it locks the same inode.
    static func lockPath(for file: String) -> String {
        (file.hasSuffix(".log") ? String(file.dropLast(4)) : file) + ".lock"
    }

    /// The temporary file a rewrite of `file` writes before renaming it over `file`: a hidden name that does not
    /// end in `.log`, so readers skip it; a leftover from a crash is removed by the next rewrite.
    static func temporaryPath(for file: String) -> String {
        let slash = file.lastIndex(of: "/").map { file.index(after: $0) } ?? file.startIndex
        return file[..<slash] + "." + file[slash...] + ".new"
    }

    /// Opens (creating) a lock file; -1 on failure.
    ///
    /// A lock file root creates (`pmm deadletters replay` run with sudo) is given to the spool directory's owner,
    /// the user the router runs as, who must be able to open it too.
    static func openLock(_ path: String) -> Int32 {
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        var lock = stat()
        var directory = stat()
        if fd >= 0, geteuid() == 0, fstat(fd, &lock) == 0, stat(parent(of: path), &directory) == 0,
            lock.st_uid != directory.st_uid || lock.st_gid != directory.st_gid
        {
            _ = fchown(fd, directory.st_uid, directory.st_gid)
        }
        return fd
    }

    /// The directory part of `path` ("." for a bare name).
    static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// Whether `fd` refers to the file now at `path` (same device and inode).
    static func isSameFile(_ fd: Int32, path: String) -> Bool {
        var held = stat()
        var current = stat()
        return fstat(fd, &held) == 0 && lstat(path, &current) == 0
            && held.st_dev == current.st_dev && held.st_ino == current.st_ino
    }

    /// Runs `body` holding the sidecar lock of `file`.
    static func withLock<T>(_ file: String, _ body: () throws -> T) throws -> T {
        let path = lockPath(for: file)
        for _ in 0..<3 {
            let fd = openLock(path)
            guard fd >= 0 else { throw systemError("cannot open the lock file", path) }
            defer { close(fd) }
            DescriptorLock.lock(fd)
            defer { DescriptorLock.unlock(fd) }
            if isSameFile(fd, path: path) { return try body() }
        }
        throw FIFOError(.locked, path: path, "the lock file keeps being replaced")
    }

    /// Writes `ranges` of `source` to a new file next to `file`, fsyncs it, renames it over `file` and fsyncs the
    /// directory. On failure `file` is untouched.
    static func replace(_ file: String, from source: Int32, ranges: [Range<Int>]) throws {
        let temporary = temporaryPath(for: file)
        // Under the lock, a file at the temporary name is a crashed rewrite's leftover, perhaps another user's.
        unlink(temporary)
        let out = Glibc.open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard out >= 0 else { throw systemError("cannot create", temporary) }
        var closed = false
        defer { if !closed { close(out) } }
        // The new file keeps the old one's owner and mode: a router running as a user must still open it after
        // root rewrote it. (Not permitted, and not needed, when not root: the owner is the caller then.)
        var original = stat()
        if fstat(source, &original) == 0 {
            if geteuid() == 0 { _ = fchown(out, original.st_uid, original.st_gid) }
            _ = fchmod(out, original.st_mode & 0o7777)
        }
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        for range in ranges {
            var offset = range.lowerBound
            while offset < range.upperBound {
                let n = chunk.withUnsafeMutableBytes {
                    pread(source, $0.baseAddress, min($0.count, range.upperBound - offset), off_t(offset))
                }
                guard n > 0 else {
                    let error = systemError(n == 0 ? "shrank while being rewritten" : "cannot read", file)
                    unlink(temporary)
                    throw error
                }
                var written = 0
                while written < n {
                    let w = chunk.withUnsafeBytes { write(out, $0.baseAddress! + written, n - written) }
                    guard w > 0 else {
                        let error = systemError("cannot write", temporary)
                        unlink(temporary)
                        throw error
                    }
                    written += w
                }
                offset += n
            }
        }
        guard fsync(out) == 0 else {
            let error = systemError("cannot fsync", temporary)
            unlink(temporary)
            throw error
        }
        closed = true
        close(out)
        guard rename(temporary, file) == 0 else {
            let error = systemError("cannot rename over \(file)", temporary)
            unlink(temporary)
            throw error
        }
        // The rename itself reaches the disk with the directory.
        let dirFD = Glibc.open(parent(of: file), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFD >= 0 {
            _ = fsync(dirFD)
            close(dirFD)
        }
    }

    static func readAll(_ fd: Int32, _ path: String) throws -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        var offset = 0
        while true {
            let n = pread(fd, &chunk, chunk.count, off_t(offset))
            if n == 0 { return bytes }
            guard n > 0 else { throw systemError("cannot read", path) }
            bytes += chunk[0..<n]
            offset += n
        }
    }

    static func systemError(_ what: String, _ path: String) -> FIFOError {
        FIFOError(.systemCall, path: path, "\(what): \(String(cString: strerror(errno)))")
    }
}
