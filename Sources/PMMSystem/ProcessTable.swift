import Foundation
import Glibc

/// What /proc says about a process: whether it is still the process a lease was made for, and whose it is.
///
/// A pid alone is not an identity (the kernel recycles pids), so a lease records the process's start time
/// (`/proc/PID/stat`, field 22, clock ticks since boot) and a process counts as alive only while a process of
/// that pid with that start time exists.
public enum ProcessTable {
    /// The start time of process `pid` (clock ticks since boot), or nil when there is no such process.
    public static func startTime(of pid: Int32) -> UInt64? {
        guard pid > 0, let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return nil }
        // After "pid (comm)" come the fields from the third (state) on; the command may hold spaces and parentheses.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19 else { return nil }
        return UInt64(fields[19])
    }

    /// CPU seconds (user + system) process `pid` has used (`/proc/PID/stat`, fields 14 and 15), 0 when there is
    /// no such process.
    public static func cpuSeconds(of pid: Int32) -> Double {
        guard pid > 0, let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = text.lastIndex(of: ")") else {
            return 0
        }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// The real and effective uid of process `pid` (`/proc/PID/status`), or nil when there is no such process.
    public static func uids(of pid: Int32) -> (real: UInt32, effective: UInt32)? {
        guard pid > 0, let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("Uid:") {
            let values = line.dropFirst(4).split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { UInt32($0) }
            guard values.count >= 2 else { return nil }
            return (values[0], values[1])
        }
        return nil
    }

    /// Whether process `pid` still runs and, when `startTime` is not 0, is the one that started then.
    public static func isAlive(pid: Int32, startTime: UInt64) -> Bool {
        guard pid > 0 else { return false }
        if startTime == 0 { return kill(pid, 0) == 0 || errno == EPERM }
        return Self.startTime(of: pid) == startTime
    }
}
