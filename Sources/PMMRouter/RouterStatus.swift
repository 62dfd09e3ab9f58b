public import Foundation
import Glibc
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
        public var lastError: String?
    }

    public struct Egress: Codable, Sendable {
        public var name: String
        public var instance: String
        public var dataType: String
        public var healthy: Bool
        public var frames: UInt64
        public var bytes: UInt64
        public var queued: Int
        public var dropped: UInt64
        public var failures: UInt64
        public var rerouted: UInt64
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
    public var unroutable: UInt64
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
                    bytes: $0.bytes, resets: $0.resets, misaddressed: $0.misaddressed, lastError: $0.lastError)
            },
            egress: egress.map {
                RouterStatus.Egress(
                    name: $0.name, instance: $0.spec.instance, dataType: $0.spec.dataType, healthy: $0.healthy, frames: $0.frames,
                    bytes: $0.bytes, queued: $0.queue.count, dropped: $0.dropped, failures: $0.failures, rerouted: $0.rerouted,
                    lastError: $0.lastError)
            },
            waiting: routes.mapValues { $0.parked.count }.filter { $0.value > 0 }, unroutable: counters.unroutable,
            reloads: counters.reloads, failedReloads: counters.failedReloads, lastReloadError: counters.lastReloadError)
    }

    func writeStatus(force: Bool, stopping: Bool = false) {
        guard let path = options.statusPath else { return }
        let now = monotonicNanos()
        guard force || now - lastStatus >= UInt64(options.statusInterval * 1e9) else { return }
        lastStatus = now
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
