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
    private let writer: IngressFrameWriter
    private let lock = NSLock()
    private var sequence: UInt64 = 0

    init(dataType: String, version: UInt32, source: String, paths: [String]) {
        self.dataType = dataType
        self.version = version
        self.source = source
        self.writer = IngressFrameWriter(paths: paths)
    }

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
            try writer.write(frame, shard: ShardHash.shard(forKey: shardKey, shards: writer.paths.count))
            return sequence
        }
    }
}
