public import Foundation
import Glibc
import PMMWire
public import SwiftProtobuf

/// A message received from the mesh, with its envelope's metadata.
public struct Received<Message: SwiftProtobuf.Message>: Sendable {
    public var message: Message
    public var source: String
    public var sequence: UInt64
    public var shardKey: [UInt8]
    public var schemaVersion: UInt32
    /// When the producer sent it.
    public var sentAt: Date
    public var headers: [String: String]
}

/// The messages routed to one instance, as an `AsyncSequence`. Reads its egress pipe on a thread of its own
/// (blocking reads; the router is the writer) and survives the router restarting or apply replacing the pipe:
/// at end of file it opens the pipe at its path again.
///
/// A message whose schema version is not the one this consumer reads ends the sequence with
/// `PipeMeshError.versionMismatch` (the router only sends versions a consumer declared it can read).
public struct Consumer<Message: SwiftProtobuf.Message>: AsyncSequence, Sendable {
    public typealias Element = Received<Message>

    public let dataType: String
    public let version: UInt32
    public let path: String

    public func makeAsyncIterator() -> AsyncThrowingStream<Element, any Error>.Iterator {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: Element.self, bufferingPolicy: .bufferingOldest(1024))
        let reader = Reader(consumer: self, continuation: continuation)
        let thread = Thread { reader.run() }
        thread.start()
        continuation.onTermination = { _ in reader.stop() }
        return stream.makeAsyncIterator()
    }

    final class Reader: @unchecked Sendable {
        let consumer: Consumer
        let continuation: AsyncThrowingStream<Element, any Error>.Continuation
        private let lock = NSLock()
        private var stopped = false

        init(consumer: Consumer, continuation: AsyncThrowingStream<Element, any Error>.Continuation) {
            self.consumer = consumer
            self.continuation = continuation
        }

        func stop() { lock.withLock { stopped = true } }
        var isStopped: Bool { lock.withLock { stopped } }

        func run() {
            var buffer = FrameBuffer(maximumFrameSize: 4 << 20, readSize: 64 << 10)
            var fd: Int32 = -1
            defer { if fd >= 0 { close(fd) } }
            while !isStopped {
                if fd < 0 {
                    fd = open(consumer.path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW)
                    if fd < 0 {
                        continuation.finish(throwing: PipeMeshError.pipe(path: consumer.path, reason: String(cString: strerror(errno))))
                        return
                    }
                    buffer.reset()
                }
                var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
                _ = poll(&fds, 1, 200)
                buffer.prepare(minimum: 64 << 10)
                let n = buffer.write { raw in
                    let n = read(fd, raw.baseAddress, raw.count)
                    return (Swift.max(0, n), n)
                }
                if n == 0 {
                    if fds[0].revents & Int16(POLLHUP) != 0 {
                        // The router closed (it restarts, or the pipe was replaced): reopen at the path.
                        close(fd)
                        fd = -1
                    }
                    continue
                }
                if n < 0 { continue }
                do {
                    while let frame = try buffer.next() {
                        let envelope = try buffer.envelope(of: frame)
                        if consumer.version != 0 && envelope.schemaVersion != 0 && envelope.schemaVersion != consumer.version {
                            continuation.finish(
                                throwing: PipeMeshError.versionMismatch(dataType: consumer.dataType, expected: consumer.version, found: envelope.schemaVersion))
                            return
                        }
                        let message = try Message(serializedBytes: envelope.payload)
                        continuation.yield(
                            Received(
                                message: message, source: envelope.source, sequence: envelope.sequence, shardKey: Array(envelope.shardKey),
                                schemaVersion: envelope.schemaVersion, sentAt: Date(timeIntervalSince1970: Double(envelope.sentAtUnixNanos) / 1e9),
                                headers: envelope.headers))
                    }
                } catch {
                    continuation.finish(throwing: error)
                    return
                }
            }
            continuation.finish()
        }
    }
}
