import Foundation
import Glibc
import PMMSystem
public import PMMWire
import SwiftProtobuf

/// Why a frame went to the dead-letter spool.
public enum DeadLetterReason: String, Sendable, CaseIterable, Codable {
    /// No route: nobody consumes the data type.
    case noRoute = "no-route"
    /// A frame of another data type arrived on this pipe.
    case misaddressed
    /// A consumer's buffer was full and its overflow policy is `dead-letter`.
    case overflow
    /// No healthy instance, and the frames waiting for one reached the type's buffer (overflow `dead-letter`).
    case noHealthyInstance = "no-healthy-instance"
    /// No declared consumer version can read the frame's schema version.
    case noReader = "no-reader-for-version"
    /// Bytes discarded when an ingress pipe was reset (not a frame; kept raw).
    case discarded
}

/// The dead-letter spool: `<state-dir>/deadletters/<data-type>.log`, one record per frame, each a varint length
/// and a `pmm.v1.DeadLetter` message (the frame, its reason, where and when). Appended with one write(2) per
/// record; `pmm deadletters list` and `replay` read it.
final class DeadLetterSpool {
    let directory: String
    private var fds: [String: Int32] = [:]
    private(set) var counts: [String: [DeadLetterReason: UInt64]] = [:]

    init(directory: String) {
        self.directory = directory
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    }

    deinit { for fd in fds.values { close(fd) } }

    /// Appends one dead letter. Returns false if it could not be written (logged by the caller).
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
        let fd: Int32
        if let open = fds[name] {
            fd = open
        } else {
            fd = Glibc.open(directory + "/" + name + ".log", O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
            guard fd >= 0 else { return false }
            fds[name] = fd
        }
        // `pmm deadletters replay` rewrites the file under the same lock.
        DescriptorLock.lock(fd)
        defer { DescriptorLock.unlock(fd) }
        return record.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == record.count
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
    /// Unreadable bytes are kept as they are: pmm does not delete what it could not read.
    /// Returns how many letters were removed.
    @discardableResult
    public static func rewrite(file: String, keep: (Pmm_V1_DeadLetter) -> Bool) throws -> Int {
        let fd = Glibc.open(file, O_RDWR | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw FIFOError(.systemCall, path: file, "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        DescriptorLock.lock(fd)
        defer { DescriptorLock.unlock(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        var offset = 0
        while true {
            let n = pread(fd, &chunk, chunk.count, offset)
            if n <= 0 { break }
            bytes += chunk[0..<n]
            offset += n
        }
        var out: [UInt8] = []
        var removed = 0
        for segment in segments(bytes) {
            if case .letter(_, let letter?) = segment, !keep(letter) {
                removed += 1
            } else {
                out += bytes[segment.range]
            }
        }
        guard removed > 0 else { return 0 }
        ftruncate(fd, 0)
        var written = 0
        while written < out.count {
            let n = out.withUnsafeBytes { pwrite(fd, $0.baseAddress! + written, $0.count - written, written) }
            guard n > 0 else { throw FIFOError(.systemCall, path: file, "cannot rewrite: \(String(cString: strerror(errno)))") }
            written += n
        }
        return removed
    }
}
