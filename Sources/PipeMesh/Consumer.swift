public import Foundation
import Glibc
import PMMWire
public import SwiftProtobuf
import Synchronization

/// A message received from the mesh, with its envelope's metadata.
public struct Received<Message: SwiftProtobuf.Message>: Sendable {
    public var message: Message
    public var source: String
    public var sequence: UInt64
    public var shardKey: [UInt8]
    /// The schema version the producer wrote (0: unversioned). Under the type's compatibility mode the router
    /// sends a consumer every version its declared version can read; all are decoded as `Message`.
    public var schemaVersion: UInt32
    /// When the producer sent it.
    public var sentAt: Date
    public var headers: [String: String]
}

/// A frame the consumer read but could not hand to the app.
public struct SkippedFrame: Sendable, Equatable, CustomStringConvertible {
    public enum Reason: Sendable, Equatable {
        /// The payload does not decode as the consumer's message type (`schemaVersion` says which version it was).
        case undecodable(String)
        /// Bytes that are not a frame (the tail of a frame a previous reader took in part, or garbage) were
        /// skipped to the next frame.
        case notAFrame(bytes: Int, String)
    }

    public var reason: Reason
    /// The envelope's source, sequence and version, when the frame had an envelope.
    public var source: String = ""
    public var sequence: UInt64 = 0
    public var schemaVersion: UInt32 = 0

    public var description: String {
        switch reason {
        case .undecodable(let why): "\(source)#\(sequence) (schema version \(schemaVersion)) does not decode: \(why)"
        case .notAFrame(let bytes, let why): "skipped \(bytes) bytes that are not a frame (\(why))"
        }
    }
}

/// The messages routed to one instance, as an `AsyncSequence`.
///
/// - **Back-pressure, not loss.** A reader thread of its own reads the egress pipe (blocking reads; the router
///   is the writer) into a buffer of at most `bufferSize` messages. While the app has not taken them, the
///   reader stops reading: the pipe fills, the router sees the instance stalled and routes its traffic to the
///   other instances. Nothing is dropped in the client.
/// - **A bad frame is skipped, not the end.** A frame that does not decode as `Message`, or bytes that are not
///   a frame, are skipped, counted in `statistics`, and reported to `onSkip`; the sequence goes on.
/// - **Versions.** Every version the router sends (those the declared version can read under the type's
///   compatibility mode) is decoded as `Message`; `Received.schemaVersion` says which it was.
/// - It survives the router restarting or apply replacing the pipe: at end of file it opens the path again.
/// - Ending the iteration (leaving the loop, cancelling its task) stops the reader and closes the pipe, so the
///   router routes elsewhere; messages it had buffered and the app had not taken are then dropped.
///
/// One iteration at a time per consumer is the intended use; each `makeAsyncIterator()` opens the pipe anew.
public final class Consumer<Message: SwiftProtobuf.Message>: AsyncSequence, Sendable {
    public typealias Element = Received<Message>

    /// Counts of what the consumer did, over all its iterations.
    public struct Statistics: Sendable, Equatable {
        public var received = 0
        public var skipped = 0
        public var lastSkipped: SkippedFrame?
    }

    public let dataType: String
    /// The version this consumer declared (0: unversioned).
    public let version: UInt32
    public let path: String
    /// Messages buffered between the reader and the app, at most.
    public let bufferSize: Int
    let onSkip: (@Sendable (SkippedFrame) -> Void)?
    let counters = Mutex(Statistics())

    public init(dataType: String, version: UInt32, path: String, bufferSize: Int = 256, onSkip: (@Sendable (SkippedFrame) -> Void)? = nil) {
        self.dataType = dataType
        self.version = version
        self.path = path
        self.bufferSize = Swift.max(1, bufferSize)
        self.onSkip = onSkip
    }

    public var statistics: Statistics { counters.withLock { $0 } }

    public func makeAsyncIterator() -> Iterator {
        let channel = Channel(capacity: bufferSize)
        let reader = Reader(consumer: self, channel: channel)
        let thread = Thread { reader.run() }
        thread.name = "pmm-consumer"
        thread.start()
        return Iterator(channel: channel)
    }

    public struct Iterator: AsyncIteratorProtocol, Sendable {
        let owner: Owner

        init(channel: Channel) { owner = Owner(channel: channel) }

        public mutating func next() async throws -> Element? {
            try await owner.channel.next()
        }

        /// Stops the reader when the iterator goes away (the loop ended).
        final class Owner: Sendable {
            let channel: Channel
            init(channel: Channel) { self.channel = channel }
            deinit { channel.stop() }
        }
    }

    func skipped(_ frame: SkippedFrame) {
        counters.withLock {
            $0.skipped += 1
            $0.lastSkipped = frame
        }
        onSkip?(frame)
    }

    /// The bounded hand-over between the reader thread and the app. The reader waits on `wake` (an eventfd)
    /// while the buffer is full; the app's task waits on a continuation while it is empty.
    final class Channel: Sendable {
        private struct State: ~Copyable {
            var buffer: [Element] = []
            var head = 0
            var waiter: CheckedContinuation<Element?, any Error>?
            var end: Result<Void, any Error>?
            var stopped = false
            var readerWaitsForRoom = false
        }

        let capacity: Int
        /// A pipe whose read end is readable when the reader should look again (room, or stop).
        let wake: (read: Int32, write: Int32)
        private let state = Mutex(State())

        init(capacity: Int) {
            self.capacity = capacity
            var fds: [Int32] = [-1, -1]
            precondition(pipe(&fds) == 0, "pipe failed: \(String(cString: strerror(errno)))")
            for fd in fds {
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            }
            wake = (fds[0], fds[1])
        }

        deinit {
            close(wake.read)
            close(wake.write)
        }

        var isStopped: Bool { state.withLock { $0.stopped } }

        /// Whether the buffer has room; if not, the reader will be woken when it has.
        func hasRoom() -> Bool {
            state.withLock { state in
                let room = state.buffer.count - state.head < capacity
                state.readerWaitsForRoom = !room
                return room
            }
        }

        /// The reader's hand-over (the buffer may go one over when the reader found room and the app took none).
        func put(_ element: Element) {
            let waiter = state.withLock { state -> CheckedContinuation<Element?, any Error>? in
                if let waiter = state.waiter {
                    state.waiter = nil
                    return waiter
                }
                state.buffer.append(element)
                return nil
            }
            waiter?.resume(returning: element)
        }

        /// The reader is done: the app gets what is buffered, then the end (or the error).
        func finish(_ end: Result<Void, any Error>) {
            let waiter = state.withLock { state -> CheckedContinuation<Element?, any Error>? in
                state.end = end
                defer { state.waiter = nil }
                return state.waiter
            }
            switch end {
            case .success: waiter?.resume(returning: nil)
            case .failure(let error): waiter?.resume(throwing: error)
            }
        }

        func stop() {
            let waiter = state.withLock { state -> CheckedContinuation<Element?, any Error>? in
                state.stopped = true
                state.buffer.removeAll()
                state.head = 0
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(returning: nil)
            signalReader()
        }

        func signalReader() {
            var one: UInt8 = 1
            _ = Glibc.write(wake.write, &one, 1)
        }

        private enum Answer {
            case element(Element, wakeReader: Bool)
            case end(Result<Void, any Error>)
            case wait
        }

        func next() async throws -> Element? {
            try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Element?, any Error>) in
                    let answer = state.withLock { state -> Answer in
                        if state.head < state.buffer.count {
                            let element = state.buffer[state.head]
                            state.head += 1
                            if state.head == state.buffer.count {
                                state.buffer.removeAll(keepingCapacity: true)
                                state.head = 0
                            }
                            let wake = state.readerWaitsForRoom
                            state.readerWaitsForRoom = false
                            return .element(element, wakeReader: wake)
                        }
                        if state.stopped { return .end(.success(())) }
                        if let end = state.end { return .end(end) }
                        state.waiter = continuation
                        return .wait
                    }
                    switch answer {
                    case .element(let element, let wakeReader):
                        if wakeReader { signalReader() }
                        continuation.resume(returning: element)
                    case .end(.success): continuation.resume(returning: nil)
                    case .end(.failure(let error)): continuation.resume(throwing: error)
                    case .wait:
                        // The reader may be waiting for room that exists now (it checks before it sleeps).
                        break
                    }
                }
            } onCancel: {
                stop()
            }
        }
    }

    /// Reads the egress pipe on its own thread and hands whole, decoded messages to the channel.
    final class Reader: Sendable {
        let consumer: Consumer
        let channel: Channel

        init(consumer: Consumer, channel: Channel) {
            self.consumer = consumer
            self.channel = channel
        }

        func run() {
            var buffer = FrameBuffer(maximumFrameSize: 4 << 20, readSize: 64 << 10)
            let dataType = Array(consumer.dataType.utf8)
            var fd: Int32 = -1
            defer { if fd >= 0 { close(fd) } }
            while !channel.isStopped {
                if fd < 0 {
                    fd = open(consumer.path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW)
                    if fd < 0 {
                        return channel.finish(.failure(PipeMeshError.pipe(path: consumer.path, reason: String(cString: strerror(errno)))))
                    }
                    buffer.reset()
                }
                // Hand over what is buffered first; read more only when the app has room for it.
                deliver(&buffer, dataType: dataType)
                let room = channel.hasRoom()
                var fds = [
                    pollfd(fd: channel.wake.read, events: Int16(POLLIN), revents: 0),
                    pollfd(fd: room ? fd : -1, events: Int16(POLLIN), revents: 0),
                ]
                _ = poll(&fds, 2, 1000)
                if fds[0].revents != 0 {
                    var drained = [UInt8](repeating: 0, count: 64)
                    _ = Glibc.read(channel.wake.read, &drained, drained.count)
                }
                guard room, fds[1].revents != 0 else { continue }
                buffer.prepare(minimum: 64 << 10)
                let n = buffer.write { raw in
                    let n = read(fd, raw.baseAddress, raw.count)
                    return (Swift.max(0, n), n)
                }
                if n == 0 && fds[1].revents & Int16(POLLHUP) != 0 {
                    // The router closed (it restarts, or the pipe was replaced): reopen at the path. Bytes of a
                    // frame cut short are gone with the writer; the next reader resynchronizes.
                    close(fd)
                    fd = -1
                }
            }
            channel.finish(.success(()))
        }

        /// Decodes whole frames while the channel has room.
        func deliver(_ buffer: inout FrameBuffer, dataType: [UInt8]) {
            while channel.hasRoom() {
                let frame: Frame?
                do {
                    frame = try buffer.next()
                } catch {
                    let skipped = buffer.resynchronize(dataType: dataType)
                    consumer.skipped(SkippedFrame(reason: .notAFrame(bytes: skipped, "\(error)")))
                    continue
                }
                guard let frame else { return }
                let envelope: Envelope
                do { envelope = try buffer.envelope(of: frame) } catch {
                    consumer.skipped(SkippedFrame(reason: .notAFrame(bytes: frame.size, "\(error)")))
                    continue
                }
                do {
                    let message = try Message(serializedBytes: envelope.payload)
                    consumer.counters.withLock { $0.received += 1 }
                    channel.put(
                        Received(
                            message: message, source: envelope.source, sequence: envelope.sequence, shardKey: Array(envelope.shardKey),
                            schemaVersion: envelope.schemaVersion, sentAt: Date(timeIntervalSince1970: Double(envelope.sentAtUnixNanos) / 1e9),
                            headers: envelope.headers))
                } catch {
                    consumer.skipped(
                        SkippedFrame(
                            reason: .undecodable("\(error)"), source: envelope.source, sequence: envelope.sequence, schemaVersion: envelope.schemaVersion))
                }
            }
        }
    }
}
