import Foundation
import Glibc
import PMMSystem
public import PMMWire
import PMMRouterCore
import SwiftProtobuf

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
public enum DeadLetterStore {
    /// One stored dead letter and the file it is in.
    public struct Entry: Sendable {
        public var file: String
        public var letter: Pmm_V1_DeadLetter
        /// The envelope, when the frame is one (not for `discarded` bytes).
        public var envelope: Envelope?
    }

    /// Every dead letter under `directory`, oldest first within each data type.
    public static func read(directory: String) -> [Entry] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return [] }
        var entries: [Entry] = []
        for name in names.sorted() where name.hasSuffix(".log") {
            let path = directory + "/" + name
            guard let data = FileManager.default.contents(atPath: path) else { continue }
            entries += parse(Array(data)).map { letter in
                Entry(file: path, letter: letter, envelope: envelope(of: letter))
            }
        }
        return entries
    }

    static func parse(_ bytes: [UInt8]) -> [Pmm_V1_DeadLetter] {
        var letters: [Pmm_V1_DeadLetter] = []
        var offset = 0
        bytes.withUnsafeBytes { raw in
            while offset < raw.count {
                guard case .value(let length, let size) = Varint.decode(raw, at: offset), Int(length) <= raw.count - offset - size else { break }
                let body = UnsafeRawBufferPointer(rebasing: raw[(offset + size)..<(offset + size + Int(length))])
                if let letter = try? Pmm_V1_DeadLetter(serializedBytes: Array(body)) { letters.append(letter) }
                offset += size + Int(length)
            }
        }
        return letters
    }

    static func envelope(of letter: Pmm_V1_DeadLetter) -> Envelope? {
        let frame = [UInt8](letter.frame)
        return frame.withUnsafeBytes { raw -> Envelope? in
            guard case .value(let length, let size) = Varint.decode(raw, at: 0), Int(length) == raw.count - size else { return nil }
            return try? Envelope(body: UnsafeRawBufferPointer(rebasing: raw[size...]))
        }
    }

    /// Rewrites `file` keeping only the letters `keep` accepts, under the lock the router appends with.
    /// Returns how many were removed.
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
        let letters = parse(bytes)
        let kept = letters.filter(keep)
        var out: [UInt8] = []
        for letter in kept { out += try letter.framed() }
        ftruncate(fd, 0)
        var written = 0
        while written < out.count {
            let n = out.withUnsafeBytes { pwrite(fd, $0.baseAddress! + written, $0.count - written, written) }
            guard n > 0 else { throw FIFOError(.systemCall, path: file, "cannot rewrite: \(String(cString: strerror(errno)))") }
            written += n
        }
        return letters.count - kept.count
    }
}
