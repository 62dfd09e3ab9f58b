import Dispatch
import Foundation
import Glibc
import PMMCore
import PMMSystem
import PMMWire
public import SwiftProtobuf
import Synchronization

/// Sends typed messages into a service's ingress pipes: each wrapped in an envelope stamped with data type,
/// schema version, source, sequence and time, framed, and written to the shard its key hashes to.
///
/// - Frames never interleave with other writers' (replicas sharing the pipe, `pmm send`): see
///   `IngressFrameWriter` for the locking rule.
/// - A full pipe is the back-pressure: `send(_:shardKey:headers:) async` suspends its task (the blocking write
///   runs on the producer's own writer thread, never on a thread of Swift's cooperative pool); the synchronous
///   `send` blocks its caller.
/// - When the router goes away (EPIPE) or apply replaces the pipe, the producer waits for a reader and finishes
///   the frame; nothing is lost or duplicated on the producer's side.
/// - Sequence numbers follow the order in which sends are made; frames are written in that order.
///
/// The process's SIGPIPE disposition is left alone: the writer thread blocks SIGPIPE for itself.
///
/// Safe to share between tasks and threads. `finish(timeout:)` returns once every frame sent is out of the pipe,
/// taken by the router: call it before the process exits, since a FIFO's unread bytes die with its last
/// descriptor. `close()` (or releasing the producer) stops the writer thread the same way without waiting for it.
public final class Producer<Message: SwiftProtobuf.Message>: Sendable {
    public let dataType: String
    public let version: UInt32
    public let source: String
    let shards: Int
    private let writer: WriterThread

    init(dataType: String, version: UInt32, source: String, paths: [String]) {
        self.dataType = dataType
        self.version = version
        self.source = source
        self.shards = paths.count
        self.writer = WriterThread(paths: paths)
    }

    deinit { writer.close() }

    /// Sends `message` with `shardKey`; returns once the frame is in the pipe, with the sequence number it got.
    /// A full pipe suspends the task (not a thread of the pool). Cancelling the task does not take back a frame
    /// already handed to the writer.
    @discardableResult
    public func send(_ message: Message, shardKey: String, headers: [String: String] = [:]) async throws -> UInt64 {
        try await send(message, shardKey: Array(shardKey.utf8), headers: headers)
    }

    /// Sends `message` with `shardKey` (bytes); see `send(_:shardKey:headers:) async`.
    @discardableResult
    public func send(_ message: Message, shardKey: [UInt8], headers: [String: String] = [:]) async throws -> UInt64 {
        let payload: Data = try message.serializedBytes()
        try Task.checkCancellation()
        return try await withCheckedThrowingContinuation { continuation in
            writer.enqueue(job(payload: payload, shardKey: shardKey, headers: headers)) { continuation.resume(with: $0) }
        }
    }

    /// The blocking form of `send`: returns once the frame is in the pipe.
    @discardableResult
    public func sendBlocking(_ message: Message, shardKey: [UInt8], headers: [String: String] = [:]) throws -> UInt64 {
        let payload: Data = try message.serializedBytes()
        let done = DispatchSemaphore(value: 0)
        let outcome = Mutex<Result<UInt64, any Error>?>(nil)
        writer.enqueue(job(payload: payload, shardKey: shardKey, headers: headers)) { result in
            outcome.withLock { $0 = result }
            done.signal()
        }
        done.wait()
        return try outcome.withLock { $0! }.get()
    }

    /// Stops the writer thread after the frames already handed to it; later sends fail. The thread still holds
    /// the pipes until the router took those frames (at most 5 s), but the caller does not wait for it: a process
    /// about to exit calls `finish(timeout:)` instead.
    public func close() { writer.close() }

    /// Stops taking sends and returns once every frame already sent is written and the router has taken it out
    /// of the pipe (an at-least-once router has it in its spool then), so a process may exit, and the router
    /// restart, without losing it. While no router reads (killed, the next one coming), the producer holds the
    /// pipe so its frames wait for the next one. When `timeout` runs out first it closes the pipes anyway: it
    /// returns if a router still held each pipe that had bytes (its buffer full, behind a slow consumer: the
    /// bytes wait for it), and throws `PipeMeshError.notTaken` if none did (the bytes are gone, unless another
    /// writer holds the pipe).
    public func finish(timeout: Duration = .seconds(5)) async throws {
        let untaken = await withCheckedContinuation { continuation in
            writer.finish(timeout: Self.seconds(timeout)) { continuation.resume(returning: $0) }
        }
        try Self.check(untaken)
    }

    /// The synchronous form of `finish(timeout:)`: blocks the calling thread.
    public func finishBlocking(timeout: Duration = .seconds(5)) throws {
        let done = DispatchSemaphore(value: 0)
        let untaken = Mutex<[IngressFrameWriter.Untaken]>([])
        writer.finish(timeout: Self.seconds(timeout)) { left in
            untaken.withLock { $0 = left }
            done.signal()
        }
        done.wait()
        try Self.check(untaken.withLock { $0 })
    }

    private static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    private static func check(_ untaken: [IngressFrameWriter.Untaken]) throws(PipeMeshError) {
        if let lost = untaken.first(where: { !$0.routerReading }) { throw .notTaken(path: lost.path, bytes: lost.bytes) }
    }

    private func job(payload: Data, shardKey: [UInt8], headers: [String: String]) -> WriterThread.Job {
        var envelope = Envelope()
        envelope.dataType = dataType
        envelope.schemaVersion = version
        envelope.shardKey = Data(shardKey)
        envelope.source = source
        envelope.payload = payload
        envelope.headers = headers
        return WriterThread.Job(envelope: envelope, shard: ShardHash.shard(forKey: shardKey, shards: shards))
    }
}

/// The thread that owns a producer's pipes: takes jobs in order, stamps each with the next sequence number
/// and the time, and writes it (blocking while the pipe is full). Once closed and its queue written, it waits
/// (`IngressFrameWriter.finish`) for the router to take what is in its pipes before it closes them.
final class WriterThread: Sendable {
    struct Job: Sendable {
        var envelope: Envelope
        var shard: Int
    }

    typealias Completion = @Sendable (Result<UInt64, any Error>) -> Void

    typealias Finished = @Sendable ([IngressFrameWriter.Untaken]) -> Void

    private struct State: ~Copyable {
        var queue: [(Job, Completion)] = []
        var head = 0
        var closed = false
        var running = false
        /// How long the thread waits for the router to take what is in its pipes once closed.
        var finishTimeout = WriterThread.defaultFinishTimeout
        /// Waiting in `finish`, told what the thread's last wait left in the pipes.
        var finished: [Finished] = []
        /// What the thread's last wait left in the pipes, once it has ended.
        var ended: [IngressFrameWriter.Untaken]?
    }

    /// `close()` without `finish`: the thread still waits this long for the router before it closes the pipes.
    static let defaultFinishTimeout = 5.0

    private let paths: [String]
    private let state = Mutex(State())
    private let work = DispatchSemaphore(value: 0)

    init(paths: [String]) { self.paths = paths }

    func enqueue(_ job: Job, completion: @escaping Completion) {
        let start = state.withLock { state -> Bool? in
            guard !state.closed else { return nil }
            state.queue.append((job, completion))
            defer { state.running = true }
            return !state.running
        }
        guard let start else { return completion(.failure(PipeMeshError.closed)) }
        if start {
            let thread = Thread { [self] in run() }
            thread.name = "pmm-producer"
            thread.start()
        }
        work.signal()
    }

    func close() {
        state.withLock { $0.closed = true }
        work.signal()
    }

    /// Closes, and calls `finished` once the queue is written and the router took what is in the pipes (or
    /// `timeout` ran out), with what was left; at once if nothing was ever sent.
    func finish(timeout: Double, finished: @escaping Finished) {
        let now = state.withLock { state -> [IngressFrameWriter.Untaken]? in
            state.closed = true
            if let ended = state.ended { return ended }
            guard state.running else { return [] }
            state.finishTimeout = timeout
            state.finished.append(finished)
            return nil
        }
        if let now { return finished(now) }
        work.signal()
    }

    private func run() {
        // A write to a pipe whose router went away fails with EPIPE instead of killing the process: SIGPIPE is
        // blocked in this thread only (a signal a write raises goes to the writing thread), so the app's own
        // disposition of SIGPIPE is left as it was.
        var pipeSignal = sigset_t()
        sigemptyset(&pipeSignal)
        sigaddset(&pipeSignal, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &pipeSignal, nil)
        let writer = IngressFrameWriter(paths: paths)
        var sequence: UInt64 = 0
        while true {
            work.wait()
            while let (job, completion) = next() {
                sequence += 1
                var envelope = job.envelope
                envelope.sequence = sequence
                envelope.sentAtUnixNanos = realtimeNanos()
                do {
                    try writer.write(try envelope.framed(), shard: job.shard)
                    completion(.success(sequence))
                } catch {
                    completion(.failure(error))
                }
            }
            guard let timeout = state.withLock({ $0.closed && $0.head == $0.queue.count ? $0.finishTimeout : nil }) else { continue }
            let untaken = writer.finish(timeout: timeout)
            let waiting = state.withLock { state in
                state.ended = untaken
                defer { state.finished = [] }
                return state.finished
            }
            for finished in waiting { finished(untaken) }
            return
        }
    }

    private func next() -> (Job, Completion)? {
        state.withLock { state in
            guard state.head < state.queue.count else {
                state.queue.removeAll(keepingCapacity: true)
                state.head = 0
                return nil
            }
            defer { state.head += 1 }
            return state.queue[state.head]
        }
    }
}
