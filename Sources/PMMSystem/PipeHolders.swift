import Foundation
import Glibc

/// A process that holds a pipe open, as /proc tells.
public struct PipeHolder: Sendable, Hashable, Codable {
    public var pid: Int32
    public var uid: UInt32
    /// The process's name (`/proc/<pid>/comm`).
    public var command: String
    public var reads: Bool
    public var writes: Bool

    public init(pid: Int32, uid: UInt32, command: String, reads: Bool, writes: Bool) {
        self.pid = pid
        self.uid = uid
        self.command = command
        self.reads = reads
        self.writes = writes
    }
}

/// Who holds the pipes of a root open, read from /proc: every process's `fd/` links and `fdinfo/` flags.
///
/// Sees only the processes this user may inspect (everything, as root). One pass over /proc per call.
public enum PipeHolders {
    /// Holders by file name, for every entry of `root` that some process holds open.
    public static func scan(root: String) -> [String: [PipeHolder]] {
        var result: [String: [PipeHolder]] = [:]
        let prefix = root.hasSuffix("/") ? root : root + "/"
        guard let pids = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [:] }
        for entry in pids {
            guard let pid = Int32(entry) else { continue }
            let fdDirectory = "/proc/\(pid)/fd"
            guard let fds = try? FileManager.default.contentsOfDirectory(atPath: fdDirectory) else { continue }
            var perPipe: [String: (reads: Bool, writes: Bool)] = [:]
            for fd in fds {
                guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: fdDirectory + "/" + fd),
                    target.hasPrefix(prefix)
                else { continue }
                let name = String(target.dropFirst(prefix.count))
                guard !name.contains("/") else { continue }
                let mode = accessMode(pid: pid, fd: fd)
                var current = perPipe[name] ?? (false, false)
                current.reads = current.reads || mode != O_WRONLY
                current.writes = current.writes || mode != O_RDONLY
                perPipe[name] = current
            }
            guard !perPipe.isEmpty else { continue }
            let uid = effectiveUID(pid: pid) ?? UInt32.max
            let command = ((try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) ?? "?").trimmingCharacters(in: .whitespacesAndNewlines)
            for (name, mode) in perPipe {
                result[name, default: []].append(PipeHolder(pid: pid, uid: uid, command: command, reads: mode.reads, writes: mode.writes))
            }
        }
        return result.mapValues { $0.sorted { $0.pid < $1.pid } }
    }

    /// `O_RDONLY`, `O_WRONLY` or `O_RDWR`, from the `flags:` line of /proc/<pid>/fdinfo/<fd> (octal).
    static func accessMode(pid: Int32, fd: String) -> Int32 {
        guard let info = try? String(contentsOfFile: "/proc/\(pid)/fdinfo/\(fd)", encoding: .utf8),
            let line = info.split(separator: "\n").first(where: { $0.hasPrefix("flags:") }),
            let flags = Int32(line.dropFirst("flags:".count).trimmingCharacters(in: .whitespaces), radix: 8)
        else { return O_RDWR }
        return flags & O_ACCMODE
    }

    /// The effective uid, from the `Uid:` line of /proc/<pid>/status (real, effective, saved, fs).
    static func effectiveUID(pid: Int32) -> UInt32? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Uid:") })
        else { return nil }
        let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
        return fields.count > 2 ? UInt32(fields[2]) : nil
    }
}
