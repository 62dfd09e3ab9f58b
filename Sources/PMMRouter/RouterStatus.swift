public import Foundation
import Glibc
import PMMSystem
import PMMCore

/// What the router reports in `<state-dir>/router.json`: what it serves and its counters. Written atomically
/// (a temporary file renamed over the old one) every second and after every reload.
public struct RouterStatus: Codable, Sendable {
    public struct Ingress: Codable, Sendable {
        public var name: String
        public var producer: String
        public var dataType: String
        public var open: Bool
        public var frames: UInt64
        public var bytes: UInt64
        public var resets: UInt64
        public var misaddressed: UInt64
        /// Frames delivered again from the spool after a restart (possible duplicates).
        public var replayed: UInt64
        /// Spooled bytes not yet read back.
        public var spooledBytes: Int64
        /// Frames per second in, over the last status interval.
        public var rate: Double
        public var lastError: String?
    }

    public struct Egress: Codable, Sendable {
        public var name: String
        public var instance: String
        public var dataType: String
        /// A reader is there and reads: new frames go to it.
        public var healthy: Bool
        /// Open, but its reader stopped reading (no new frames until it catches up).
        public var stalled: Bool
        /// Since when `healthy`/`stalled` are what they are.
        public var since: Date
        public var frames: UInt64
        public var bytes: UInt64
        /// Frames routed here and not yet written.
        public var queued: Int
        /// Frames written and not yet read (kept until read, to re-route if the reader dies).
        public var inPipe: Int
        public var dropped: UInt64
        public var deadLettered: UInt64
        public var failures: UInt64
        public var stalls: UInt64
        public var rerouted: UInt64
        /// Frames per second out, over the last status interval.
        public var rate: Double
        public var lastError: String?
    }

    public var pid: Int32
    public var revision: Int
    public var root: String
    public var startedAt: Date
    public var updatedAt: Date
    public var stopping: Bool
    public var ingress: [Ingress]
    public var egress: [Egress]
    /// Frames waiting for a healthy instance, by data type.
    public var waiting: [String: Int]
    /// Dead letters by reason (`no-route`, `overflow`, …).
    public var deadLetters: [String: UInt64]
    /// Frames shed (drop-oldest, or undeliverable with no dead-letter spool).
    public var dropped: UInt64
    public var reloads: UInt64
    public var failedReloads: UInt64
    public var lastReloadError: String?

    /// Reads a status file, or nil.
    public static func read(from path: String) -> RouterStatus? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try? decoder.decode(RouterStatus.self, from: data)
    }
}

extension Router {
    var status: RouterStatus {
        RouterStatus(
            pid: getpid(), revision: layout.revision, root: layout.root, startedAt: startedAt, updatedAt: Date(),
            stopping: false,
            ingress: ingress.map {
                RouterStatus.Ingress(
                    name: $0.name, producer: $0.spec.producer, dataType: $0.spec.dataType, open: $0.fd >= 0, frames: $0.frames,
                    bytes: $0.bytes, resets: $0.resets, misaddressed: $0.misaddressed, replayed: $0.replayed,
                    spooledBytes: $0.spool?.unread ?? 0, rate: $0.rate, lastError: $0.lastError)
            },
            egress: egress.map {
                RouterStatus.Egress(
                    name: $0.name, instance: $0.spec.instance, dataType: $0.spec.dataType, healthy: $0.available,
                    stalled: $0.stalled, since: Date(timeIntervalSince1970: Double($0.since) / 1e9), frames: $0.frames,
                    bytes: $0.bytes, queued: $0.queue.count, inPipe: $0.queue.inPipe, dropped: $0.dropped,
                    deadLettered: $0.deadLettered, failures: $0.failures, stalls: $0.stalls, rerouted: $0.rerouted,
                    rate: $0.rate, lastError: $0.lastError)
            },
            waiting: routes.mapValues { $0.parked.count }.filter { $0.value > 0 }, deadLetters: counters.deadLetters,
            dropped: counters.dropped,
            reloads: counters.reloads, failedReloads: counters.failedReloads, lastReloadError: counters.lastReloadError)
    }

    func writeStatus(force: Bool, stopping: Bool = false) {
        guard let path = options.statusPath else { return }
        let now = monotonicNanos()
        guard force || now - lastStatus >= UInt64(options.statusInterval * 1e9) else { return }
        let elapsed = Double(now - lastStatus) / 1e9
        lastStatus = now
        if elapsed > 0.2 {
            for pipe in ingress {
                pipe.rate = Double(pipe.frames - pipe.framesAtLastStatus) / elapsed
                pipe.framesAtLastStatus = pipe.frames
            }
            for pipe in egress {
                pipe.rate = Double(pipe.frames - pipe.framesAtLastStatus) / elapsed
                pipe.framesAtLastStatus = pipe.frames
            }
        }
        var status = self.status
        status.stopping = stopping
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        guard let data = try? encoder.encode(status) else { return }
        let temporary = path + ".tmp"
        if FileManager.default.createFile(atPath: temporary, contents: data) {
            rename(temporary, path)
        }
    }
}
