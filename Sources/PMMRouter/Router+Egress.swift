import Logging
import Glibc
import PMMCore
import PMMSystem

extension Router {
    func flushAll() {
        for pipe in egress where pipe.fd >= 0 && pipe.queue.unwrittenBytes > 0 {
            flush(pipe)
        }
    }

    /// Writes as much of the queue as the pipe takes, in one write(2) when it all fits. A reader gone (EPIPE)
    /// marks the instance down and routes what it did not read whole elsewhere.
    func flush(_ pipe: EgressPipe) {
        while pipe.queue.unwrittenBytes > 0 {
            let n = pipe.queue.withUnwritten { write(pipe.fd, $0.baseAddress, $0.count) }
            if n > 0 {
                pipe.bytes += UInt64(n)
                pipe.frames += UInt64(pipe.queue.wrote(n) { tag in spools[Int(tag.spool)]?.complete(tag) })
                continue
            }
            let error = errno
            if n < 0 && (error == EAGAIN || error == EWOULDBLOCK) { return }
            if n < 0 && error == EINTR { continue }
            consumerGone(pipe, reason: error == EPIPE ? "the reader went away (EPIPE)" : String(cString: strerror(error)))
            return
        }
    }

    /// The consumer is gone: what it did not read whole (FIONREAD says how much of what was written is still
    /// in the pipe) goes to other instances; the instance is probed until a reader returns.
    func consumerGone(_ pipe: EgressPipe, reason: String) {
        let frames = detach(pipe)
        closeEgress(pipe, reason: reason)
        if !frames.isEmpty {
            logger.notice("re-routing frames the consumer did not read", metadata: ["pipe": "\(pipe.name)", "frames": "\(frames.count)"])
        }
        for frame in frames { reroute(frame) }
    }

    func closeEgress(_ pipe: EgressPipe, reason: String?) {
        if pipe.fd >= 0 { close(pipe.fd) }
        pipe.fd = -1
        if let reason {
            pipe.failures += 1
            pipe.lastError = reason
            logger.warning("consumer instance down", metadata: ["pipe": "\(pipe.name)", "reason": "\(reason)"])
        }
        if pipe.healthy { pipe.since = realtimeNanos() }
        pipe.healthy = false
        pipe.stalled = false
        pipe.backoff = 50_000_000
        pipe.nextProbe = monotonicNanos() + pipe.backoff
    }

    /// Tries to open an egress pipe; a reader present makes the instance healthy.
    func probe(_ pipe: EgressPipe, now: UInt64) {
        switch root.openFIFO(pipe.name, forWriting: true) {
        case .opened(let fd, let file):
            pipe.fd = fd
            pipe.inode = file.inode
            pipe.device = file.device
            pipe.healthy = true
            pipe.stalled = false
            pipe.since = realtimeNanos()
            pipe.lastProgress = now
            pipe.lastError = nil
            pipe.backoff = 50_000_000
            setPipeSize(fd, pipe.spec.pipeSize, name: pipe.name)
            logger.info("consumer instance healthy", metadata: ["pipe": "\(pipe.name)"])
            releaseParked(pipe.spec.dataType)
        case .noReader:
            pipe.lastError = "no reader"
            pipe.backoff = min(pipe.backoff * 2, 1_000_000_000)
            pipe.nextProbe = now + pipe.backoff
        case .missing:
            pipe.lastError = "missing"
            pipe.nextProbe = now + 1_000_000_000
        case .failed(let error):
            pipe.lastError = error.message
            pipe.nextProbe = now + 1_000_000_000
        }
    }

    /// Frames that waited for an instance of `dataType` go out now.
    func releaseParked(_ dataType: String) {
        guard let state = routes[dataType], !state.parked.isEmpty else { return }
        for frame in state.parked.takeNotReadWhole(unread: 0) { reroute(frame) }
    }

    /// Acknowledges what the reader consumed; a reader that consumes nothing for the stall timeout while its
    /// pipe holds data is stalled (its backlog goes elsewhere), and recovers once it has emptied its pipe.
    func checkProgress(_ pipe: EgressPipe, now: UInt64) {
        let unread = unreadBytes(pipe.fd)
        pipe.queue.acknowledge(unread: unread)
        let consumed = Int(pipe.bytes) - unread
        if consumed > pipe.lastAcknowledged || (unread == 0 && pipe.queue.unwrittenBytes == 0) {
            pipe.lastAcknowledged = consumed
            pipe.lastProgress = now
            if pipe.stalled && unread == 0 {
                pipe.stalled = false
                pipe.since = realtimeNanos()
                logger.info("consumer instance caught up; back in service", metadata: ["pipe": "\(pipe.name)"])
                releaseParked(pipe.spec.dataType)
            }
            return
        }
        guard !pipe.stalled, now - pipe.lastProgress > UInt64(options.stallTimeout * 1e9) else { return }
        pipe.stalled = true
        pipe.stalls += 1
        pipe.since = realtimeNanos()
        pipe.lastError = "stalled: read nothing for \(options.stallTimeout)s with \(unread) bytes unread"
        let backlog = pipe.queue.takeUnstarted()
        pipe.rerouted += UInt64(backlog.count)
        logger.warning(
            "consumer instance stalled; its backlog goes elsewhere until it catches up",
            metadata: ["pipe": "\(pipe.name)", "unreadBytes": "\(unread)", "backlog": "\(backlog.count)"])
        for frame in backlog { reroute(frame) }
    }
}
