import Foundation
import Glibc
import PMMCore
import PMMSystem
import PMMWire
public import SwiftProtobuf

/// Sends typed messages into a service's ingress pipes: each wrapped in an envelope stamped with data type,
/// schema version, source, sequence and time, framed, and written with one write(2) to the shard its key
/// hashes to.
///
/// Safe between replicas: a frame up to PIPE_BUF (4096 bytes) is written atomically; a larger one under an
/// `flock` on the pipe, so frames never interleave. When the router goes away (EPIPE) or apply replaces the
/// pipe, the producer waits for a reader and writes the frame again, keeping the old descriptor open until
/// then so the pipe keeps what it held. A full pipe blocks `send`: that is the back-pressure.
public final class Producer<Message: SwiftProtobuf.Message>: @unchecked Sendable {
    public let dataType: String
    public let version: UInt32
    public let source: String
    let paths: [String]
    private let lock = NSLock()
    private var fds: [Int32]
    private var sequence: UInt64 = 0

    init(dataType: String, version: UInt32, source: String, paths: [String]) {
        self.dataType = dataType
        self.version = version
        self.source = source
        self.paths = paths
        self.fds = Array(repeating: -1, count: paths.count)
        signal(SIGPIPE, SIG_IGN)
    }

    deinit { for fd in fds where fd >= 0 { close(fd) } }

    /// Sends `message` with `shardKey`; returns the sequence number it got.
    @discardableResult
    public func send(_ message: Message, shardKey: String, headers: [String: String] = [:]) async throws -> UInt64 {
        try send(message, shardKey: Array(shardKey.utf8), headers: headers)
    }

    /// The blocking form of `send`.
    @discardableResult
    public func send(_ message: Message, shardKey: [UInt8], headers: [String: String] = [:]) throws -> UInt64 {
        let payload: Data = try message.serializedBytes()
        return try lock.withLock { () throws -> UInt64 in
            sequence += 1
            var envelope = Envelope()
            envelope.dataType = dataType
            envelope.schemaVersion = version
            envelope.shardKey = Data(shardKey)
            envelope.source = source
            envelope.sequence = sequence
            envelope.sentAtUnixNanos = realtimeNanos()
            envelope.payload = payload
            envelope.headers = headers
            let frame = try envelope.framed()
            let shard = ShardHash.shard(forKey: shardKey, shards: paths.count)
            try write(frame, shard: shard)
            return sequence
        }
    }

    private func write(_ frame: [UInt8], shard: Int) throws(PipeMeshError) {
        while true {
            if fds[shard] < 0 { fds[shard] = try openWaiting(paths[shard]) }
            let fd = fds[shard]
            let locked = frame.count > Int(PIPE_BUF)
            if locked { DescriptorLock.lock(fd) }
            var offset = 0
            var failure: Int32 = 0
            while offset < frame.count {
                let n = frame.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = errno
                    break
                }
                offset += n
            }
            if locked { DescriptorLock.unlock(fd) }
            if failure == 0 { return }
            guard failure == EPIPE else { throw .pipe(path: paths[shard], reason: String(cString: strerror(failure))) }
            // No reader (the router restarts, or apply replaced the pipe): open the pipe now at the path, which
            // waits for a reader, and only then let go of the old descriptor.
            let replacement = try openWaiting(paths[shard])
            close(fd)
            fds[shard] = replacement
        }
    }

    /// Opens a pipe for writing, waiting (polling every 50 ms) while no router reads it.
    private func openWaiting(_ path: String) throws(PipeMeshError) -> Int32 {
        while true {
            let fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW)
            if fd >= 0 {
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
                return fd
            }
            guard errno == ENXIO || errno == ENOENT else { throw .pipe(path: path, reason: String(cString: strerror(errno))) }
            usleep(50_000)
        }
    }
}
