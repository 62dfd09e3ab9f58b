public import Foundation
import Glibc
import PMMSystem
import PMMCore
import PMMRouterCore

/// What the router reports in `<state-dir>/router.json`: what it serves and its counters. Written atomically
/// (a temporary file renamed over the old one) after every reload and every second when anything in it changed;
/// when nothing did, the router renews the file's modification time instead (an idle mesh of thousands of
/// pipes is not re-encoded every second), and `read` takes the later of the two as `updatedAt`.
public struct RouterStatus: Codable, Sendable, Equatable {
    public struct Ingress: Codable, Sendable, Equatable {
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

    public struct Egress: Codable, Sendable, Equatable {
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

    /// A link to another node's router (a multi-node mesh).
    public struct Link: Codable, Sendable, Equatable {
        public var peer: String
        public var up: Bool
        /// Since when `up` is what it is.
        public var since: Date
        /// The revision the peer's router serves (0: not known yet): skew during a rollout shows here.
        public var peerRevision: UInt64
        public var sentFrames: UInt64
        public var acknowledgedFrames: UInt64
        public var receivedFrames: UInt64
        /// Frames sent and not yet acknowledged.
        public var unacknowledged: Int
        /// Frames taken back from the link and routed again (it dropped, or an instance there went down).
        public var rerouted: UInt64
        /// Frames per second sent, over the last status interval.
        public var rate: Double
        public var lastError: String?
    }

    public var pid: Int32
    public var revision: Int
    /// The node this router serves (a multi-node mesh).
    public var node: String?
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
    /// Bytes held in queues (routed and not yet read by a consumer, or waiting for one); `--memory-limit` bounds it.
    public var heldBytes: Int?
    /// Undelivered bytes in the at-least-once spools; `--spool-limit` bounds it.
    public var spooledBytes: Int64?
    /// Links to the other nodes' routers, by peer name (empty on one host).
    public var links: [Link]?
    /// Router workers (threads) whose shares this status merges; nil: one.
    public var workers: Int? = nil
    /// Bytes moved from busy ingress pipes straight into consumers' pipes with splice(2), without a copy
    /// through the router (nil: a router that does not report it).
    public var splicedBytes: UInt64? = nil
    /// Of `splicedBytes`, those moved from at-least-once spool files into consumers' pipes (page-cache
    /// references) rather than from ingress pipes.
    public var splicedFromSpoolBytes: UInt64? = nil

    /// Reads a status file, or nil.
    public static func read(from path: String) -> RouterStatus? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        guard var status = try? decoder.decode(RouterStatus.self, from: data) else { return nil }
        // The router renews the modification time when it confirms an unchanged status.
        var info = stat()
        if stat(path, &info) == 0 {
            let modified = Date(timeIntervalSince1970: Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9)
            if modified > status.updatedAt { status.updatedAt = modified }
        }
        return status
    }
}

extension Router {
    func wall(_ monotonic: UInt64) -> Date { Date(timeIntervalSince1970: Double(Int64(monotonic) + wallOffset) / 1e9) }

    var status: RouterStatus {
        var deadLetters: [String: UInt64] = [:]
        for (reason, count) in core.counters.deadLetters { deadLetters[reason.rawValue] = count }
        return RouterStatus(
            pid: getpid(), revision: core.layout.revision, node: core.layout.node, root: core.layout.root, startedAt: startedAt, updatedAt: Date(),
            stopping: false,
            ingress: core.ingress.filter { !$0.draining }.map {
                RouterStatus.Ingress(
                    name: $0.name, producer: $0.spec.producer, dataType: $0.spec.dataType, open: ingressFDs[$0.id] != nil, frames: $0.frames,
                    bytes: $0.bytes, resets: $0.resets, misaddressed: $0.misaddressed, replayed: $0.replayed,
                    spooledBytes: $0.spool >= 0 ? (core.spools[$0.spool]?.unread ?? 0) : 0, rate: rates[$0.id]?.rate ?? 0,
                    lastError: $0.lastError)
            },
            egress: core.egress.map {
                RouterStatus.Egress(
                    name: $0.name, instance: $0.spec.instance, dataType: $0.spec.dataType, healthy: $0.available,
                    stalled: $0.stalled, since: wall($0.since), frames: $0.frames,
                    bytes: $0.bytes, queued: $0.queue.count, inPipe: $0.queue.inPipe, dropped: $0.dropped,
                    deadLettered: $0.deadLettered, failures: $0.failures, stalls: $0.stalls, rerouted: $0.rerouted,
                    rate: rates[$0.id]?.rate ?? 0, lastError: $0.lastError)
            },
            waiting: core.waitingByType, deadLetters: deadLetters,
            dropped: core.counters.dropped + shellCounters.dropped,
            reloads: core.counters.reloads, failedReloads: shellCounters.failedReloads, lastReloadError: shellCounters.lastReloadError,
            heldBytes: core.heldBytes, spooledBytes: core.spoolLive,
            links: core.peers.filter(\.inLayout).map {
                RouterStatus.Link(
                    peer: $0.name, up: $0.up, since: wall($0.since), peerRevision: $0.revision, sentFrames: $0.sentFrames,
                    acknowledgedFrames: $0.acknowledgedFrames, receivedFrames: $0.receivedFrames, unacknowledged: $0.unacknowledged,
                    rerouted: $0.rerouted, rate: linkRates[$0.name]?.rate ?? 0, lastError: $0.lastError)
            }, splicedBytes: shellCounters.splicedBytes, splicedFromSpoolBytes: shellCounters.splicedFromSpoolBytes)
    }

    /// Writes the status file every `statusInterval` (or now, with `force`); a worker of a group publishes its
    /// status to the group's board instead, and worker 0 writes the board's merge.
    func writeStatus(force: Bool, stopping: Bool = false) {
        guard options.statusPath != nil || seat != nil else { return }
        let now = monotonicNanos()
        guard force || now - lastStatus >= UInt64(options.statusInterval * 1e9) else { return }
        let elapsed = Double(now - lastStatus) / 1e9
        lastStatus = now
        let signature = statusSignature
        // Nothing changed (and the rates written were already 0): the file stays, its time is renewed. The
        // rates' baseline stays too: the frame counts did not move since they were written.
        let unchanged = !force && signature == writtenStatus.signature && !writtenStatus.hadRates
        if let seat {
            seat.board.heartbeat(worker: seat.index, now: now)
            if !unchanged {
                if elapsed > 0.2 { refreshRates(elapsed: elapsed) }
                var status = self.status
                status.stopping = stopping
                seat.board.publish(status, worker: seat.index)
                writtenStatus = (signature, hasRates)
            }
            if seat.index == 0 { writeMergedStatus(force: force) }
            return
        }
        guard let path = options.statusPath else { return }
        if unchanged && utimensat(AT_FDCWD, path, nil, 0) == 0 { return }
        if elapsed > 0.2 { refreshRates(elapsed: elapsed) }
        var status = self.status
        status.stopping = stopping
        guard writeStatusFile(status, to: path) else { return }
        writtenStatus = (signature, hasRates)
    }

    /// Worker 0 of a group: writes every worker's status merged, when one published since the last write.
    func writeMergedStatus(force: Bool) {
        guard let seat, let path = options.statusPath else { return }
        let version = seat.board.version
        if version == mergedVersion && !force {
            // Renewed only while every worker turns its loop: a worker that hangs leaves the file to go stale,
            // which `pmm status` and `pmm top` show.
            let interval = UInt64(max(options.statusInterval, 0.1) * 1e9)
            let now = monotonicNanos()
            if now < 3 * interval || seat.board.everyWorkerSeen(since: now - 3 * interval) { _ = utimensat(AT_FDCWD, path, nil, 0) }
            return
        }
        guard let merged = seat.board.merged(), writeStatusFile(merged, to: path) else { return }
        mergedVersion = version
    }

    /// What the whole router holds: this router's status, or, for a worker of a group, every worker's merged
    /// (the others' as they last published).
    var routerWideStatus: RouterStatus {
        guard let seat else { return status }
        return seat.board.merged(replacing: seat.index, with: status) ?? status
    }

    var hasRates: Bool { rates.values.contains { $0.rate != 0 } || linkRates.values.contains { $0.rate != 0 } }

    /// Frames per second of every pipe and link since the last status.
    func refreshRates(elapsed: Double) {
        var next: [PipeID: (frames: UInt64, rate: Double)] = [:]
        next.reserveCapacity(core.ingress.count + core.egress.count)
        for slot in core.ingress.indices {
            let (id, frames) = (core.ingress[slot].id, core.ingress[slot].frames)
            next[id] = (frames, Double(frames &- (rates[id]?.frames ?? frames)) / elapsed)
        }
        for slot in core.egress.indices {
            let (id, frames) = (core.egress[slot].id, core.egress[slot].frames)
            next[id] = (frames, Double(frames &- (rates[id]?.frames ?? frames)) / elapsed)
        }
        rates = next
        var links: [String: (frames: UInt64, rate: Double)] = [:]
        for peer in core.peers {
            let last = linkRates[peer.name]?.frames ?? peer.sentFrames
            links[peer.name] = (peer.sentFrames, Double(peer.sentFrames &- last) / elapsed)
        }
        linkRates = links
    }

    /// A hash of everything the status file shows but the time and the rates: equal signatures, nothing to
    /// rewrite. O(pipes), without allocating.
    var statusSignature: Int {
        var hasher = Hasher()
        hasher.combine(core.layout.revision)
        hasher.combine(core.epoch)
        hasher.combine(core.heldBytes)
        hasher.combine(shellCounters.splicedBytes)
        hasher.combine(shellCounters.splicedFromSpoolBytes)
        hasher.combine(core.spoolLive)
        hasher.combine(core.counters)
        hasher.combine(shellCounters.dropped)
        hasher.combine(shellCounters.failedReloads)
        hasher.combine(shellCounters.lastReloadError)
        hasher.combine(ingressFDs.count)
        for slot in core.ingress.indices {
            hasher.combine(core.ingress[slot].frames)
            hasher.combine(core.ingress[slot].resets)
            hasher.combine(core.ingress[slot].misaddressed)
            hasher.combine(core.ingress[slot].replayed)
            hasher.combine(core.ingress[slot].lastError)
            hasher.combine(core.ingress[slot].spool >= 0 ? core.spools[core.ingress[slot].spool]?.unread ?? 0 : 0)
        }
        for slot in core.egress.indices {
            hasher.combine(core.egress[slot].frames)
            hasher.combine(core.egress[slot].available)
            hasher.combine(core.egress[slot].stalled)
            hasher.combine(core.egress[slot].since)
            hasher.combine(core.egress[slot].queue.count)
            hasher.combine(core.egress[slot].queue.inPipe)
            hasher.combine(core.egress[slot].dropped)
            hasher.combine(core.egress[slot].deadLettered)
            hasher.combine(core.egress[slot].failures)
            hasher.combine(core.egress[slot].rerouted)
            hasher.combine(core.egress[slot].lastError)
        }
        for peer in core.peers {
            hasher.combine(peer.up)
            hasher.combine(peer.since)
            hasher.combine(peer.revision)
            hasher.combine(peer.sentFrames)
            hasher.combine(peer.acknowledgedFrames)
            hasher.combine(peer.receivedFrames)
            hasher.combine(peer.unacknowledged)
            hasher.combine(peer.rerouted)
            hasher.combine(peer.lastError)
        }
        return hasher.finalize()
    }
}
