import Foundation
import Glibc
import PMMWire

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
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
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
        return record.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == record.count
    }
}
