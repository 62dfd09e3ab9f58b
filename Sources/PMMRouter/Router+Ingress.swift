import Logging
import Glibc
import PMMSystem
import PMMCore
import PMMWire

extension Router {
    /// Reads up to `budget` times from `pipe` and routes every complete frame. Returns true when a draining
    /// pipe is empty (at a frame boundary).
    ///
    /// At-least-once pipes are spliced into their spool first and read back from it, so a frame is on disk
    /// from the moment it leaves the pipe.
    @discardableResult
    func readIngress(_ pipe: IngressPipe, budget: Int) -> Bool {
        if pipe.backlog {
            pipe.backlog = false
            guard parseFrames(pipe) else { return false }
        }
        for _ in 0..<budget {
            pipe.buffer.prepare(minimum: options.readSize)
            let room = min(pipe.buffer.freeSpace, options.readSize)
            var n: Int
            if let spool = pipe.spool {
                n = 0
                if spool.unread == 0 {
                    n = pipe.fd >= 0 ? spool.splice(from: pipe.fd, length: room) : 0
                    if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                        return pipe.draining && pipe.buffer.pending == 0
                    }
                    if n < 0 && errno == EINVAL {
                        // splice refuses some files (a spool on an odd filesystem): read instead.
                        logger.error("splice into the spool failed; reading the pipe directly", metadata: ["pipe": "\(pipe.name)"])
                        pipe.spool = nil
                        continue
                    }
                }
                if spool.unread > 0 {
                    n = pipe.buffer.write { raw in
                        let count = spool.readBack(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<room]))
                        return (count, count)
                    }
                }
            } else {
                let fd = pipe.fd
                n = pipe.buffer.write { raw in
                    let n = read(fd, raw.baseAddress, room)
                    return (max(0, n), n)
                }
            }
            if n > 0 {
                pipe.bytes += UInt64(n)
                if !parseFrames(pipe) { return false }
                continue
            }
            if n == 0 {
                // Every writer has closed. A partial frame can never be completed now.
                if pipe.buffer.pending > 0 {
                    resetIngress(pipe, error: .malformedEnvelope("the writer closed in the middle of a frame"))
                }
                if pipe.draining { return true }
                // A fresh descriptor keeps the pipe open for the next producer without POLLHUP spinning;
                // opened before the old one closes, so the pipe never lacks a reader.
                openIngress(pipe)
                return false
            }
            let error = errno
            if error == EAGAIN || error == EWOULDBLOCK { return pipe.draining && pipe.buffer.pending == 0 }
            if error == EINTR { continue }
            pipe.lastError = String(cString: strerror(error))
            logger.error("read failed", metadata: ["pipe": "\(pipe.name)", "errno": "\(error)"])
            return pipe.draining
        }
        return false
    }

    /// Routes the complete frames in `pipe`'s buffer, as far as its producer's rate allows. Returns false when
    /// reading must stop (rate exhausted, or the pipe was reset).
    func parseFrames(_ pipe: IngressPipe) -> Bool {
        let limited = pipe.spec.qos.maxRate > 0
        if limited && buckets[pipe.bucketKey] == nil {
            buckets[pipe.bucketKey] = TokenBucket(rate: pipe.spec.qos.maxRate, burst: pipe.spec.qos.burst, now: monotonicNanos())
        }
        do {
            while true {
                if limited {
                    let now = monotonicNanos()
                    guard buckets[pipe.bucketKey]!.take(now: now) else {
                        // Over the rate: stop reading; the producer blocks in write(2) once the pipe fills.
                        pipe.pausedUntil = buckets[pipe.bucketKey]!.nextToken(now: now)
                        pipe.backlog = true
                        return false
                    }
                }
                guard let frame = try pipe.buffer.next() else {
                    if limited { buckets[pipe.bucketKey]!.refund() }
                    return true
                }
                var tag: SpoolTag?
                if let spool = pipe.spool {
                    let end = spool.readOffset - Int64(pipe.buffer.end - frame.range.upperBound)
                    let start = end - Int64(frame.size)
                    tag = spool.track(start: start, end: end, spool: pipe.spoolIndex)
                    if end <= pipe.replayUntil {
                        pipe.replayed += 1
                        counters.replayed += 1
                    }
                }
                route(frame, from: pipe, tag: tag)
            }
        } catch {
            resetIngress(pipe, error: error)
            return false
        }
    }

    /// Bytes that are not a frame: drop what the pipe holds, forget the partial frame, count and log, keep
    /// the discarded bytes as a dead letter. Other pipes are not affected.
    func resetIngress(_ pipe: IngressPipe, error: FrameError) {
        pipe.resets += 1
        pipe.lastError = error.description
        var discarded: [UInt8] = pipe.buffer.withBytes(pipe.buffer.start..<pipe.buffer.end) { Array($0.prefix(64 << 10)) }
        var discardedCount = pipe.buffer.pending
        if let spool = pipe.spool {
            spool.skip(from: spool.readOffset - Int64(pipe.buffer.pending))
        }
        pipe.buffer.reset()
        var scratch = [UInt8](repeating: 0, count: 64 << 10)
        while pipe.fd >= 0 {
            let n = read(pipe.fd, &scratch, scratch.count)
            if n <= 0 { break }
            discardedCount += n
            if discarded.count < 64 << 10 { discarded += scratch[0..<min(n, (64 << 10) - discarded.count)] }
        }
        logger.error(
            "ingress reset: bytes that are not a frame",
            metadata: [
                "pipe": "\(pipe.name)", "producer": "\(pipe.spec.producer)", "error": "\(error)",
                "discardedBytes": "\(discardedCount)", "resets": "\(pipe.resets)",
            ])
        discarded.withUnsafeBytes {
            deadLetter($0, dataType: pipe.spec.dataType, reason: .discarded, pipe: pipe.name, detail: "\(error); \(discardedCount) bytes")
        }
        if !pipe.draining { openIngress(pipe) }
    }

    func route(_ frame: Frame, from pipe: IngressPipe, tag: SpoolTag?) {
        let fields = frame.fields
        pipe.buffer.withBytes(frame.range) { bytes in
            let body = frame.bodyStart - frame.range.lowerBound
            if !fields.dataType.isEmpty {
                let name = UnsafeRawBufferPointer(rebasing: bytes[(body + fields.dataType.lowerBound)..<(body + fields.dataType.upperBound)])
                if !name.elementsEqual(pipe.dataTypeBytes) {
                    pipe.misaddressed += 1
                    deadLetter(
                        bytes, dataType: pipe.spec.dataType, reason: .misaddressed, pipe: pipe.name,
                        detail: "data_type '\(String(decoding: name, as: UTF8.self))' on a '\(pipe.spec.dataType)' pipe", tag: tag)
                    return
                }
            }
            pipe.frames += 1
            let key = UnsafeRawBufferPointer(rebasing: bytes[(body + fields.shardKey.lowerBound)..<(body + fields.shardKey.upperBound)])
            let version = fields.schemaVersion == 0 ? pipe.spec.version : Int(fields.schemaVersion)
            deliver(bytes, key: key, dataType: pipe.spec.dataType, version: version, tag: tag, from: pipe.name)
        }
    }

    /// Keeps an undeliverable frame in the dead-letter spool (or counts it dropped when there is none). An
    /// at-least-once frame is done once it is there.
    func deadLetter(
        _ frame: UnsafeRawBufferPointer, dataType: String, reason: DeadLetterReason, pipe: String, detail: String = "",
        tag: SpoolTag? = nil
    ) {
        counters.deadLetters[reason.rawValue, default: 0] += 1
        if let deadLetters {
            if !deadLetters.append(frame: frame, dataType: dataType, reason: reason, pipe: pipe, detail: detail) {
                logger.error("cannot write the dead-letter spool", metadata: ["dataType": "\(dataType)", "reason": "\(reason.rawValue)"])
            }
        } else {
            counters.dropped += 1
        }
        let count = counters.deadLetters[reason.rawValue] ?? 0
        if count & (count - 1) == 0 {  // 1, 2, 4, 8, …: logged without flooding
            logger.warning(
                "dead letter", metadata: ["reason": "\(reason.rawValue)", "dataType": "\(dataType)", "pipe": "\(pipe)", "detail": "\(detail)", "count": "\(count)"])
        }
        if let tag { spools[Int(tag.spool)]?.complete(tag) }
    }
}
