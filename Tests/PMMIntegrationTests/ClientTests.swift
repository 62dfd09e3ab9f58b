import Foundation
import Glibc
import PMMCore
import PMMRouter
import PMMWire
@testable import PipeMesh
import SwiftProtobuf
import Synchronization
import Testing

/// A mesh where four replicas of `api` share one ingress pipe of `blobs`, consumed by `sink`.
func sharedPipeMesh(sinkReplicas: Int = 1, delivery: String = "at-least-once") -> String {
    """
    apiVersion: pmm/v1
    kind: Mesh
    name: shared
    root: ROOT
    dataTypes:
      blobs:
        shards: 1
        qos: {delivery: \(delivery)}
    services:
      api:
        uid: 0
        replicas: 4
        produces: [{dataType: blobs}]
      sink:
        uid: 0
        replicas: \(sinkReplicas)
        consumes: [{dataType: blobs}]
    routes:
      blobs:
        targets: [{service: sink}]

    """
}

/// The sizes of the mixed-writer tests (issue 12): atomic, just under PIPE_BUF, a few pipe pages, above the
/// default pipe capacity. Each writer sends one size.
let mixedSizes = [100, 4_000, 12_000, 70_000]
let mixedCounts = [1_500, 400, 150, 40]

@Suite("Writers of every size share a pipe without tearing a frame", .serialized)
struct MixedWriterTests {
    @Test func fourPmmSendProcesses_mixedSizes_everyFrameWholeExactlyOnce() throws {
        let h = try MeshHarness(sharedPipeMesh())
        try h.startRouter()
        try h.startConsumer("sink-0", dataType: "blobs")
        try h.waitForHealthyConsumers()
        let letters = ["a", "b", "c", "d"]
        let writers = try mixedSizes.indices.map { w in
            try h.spawn(
                [
                    "send", h.stateArgument, "--service", "api", "--data-type", "blobs", "--shard-key", "k",
                    "--payload", String(repeating: letters[w], count: mixedSizes[w]), "--count", String(mixedCounts[w]),
                    "--start-sequence", String(w * 1_000_000 + 1),
                ], output: h.dir.path + "/send\(w).log")
        }
        for writer in writers { writer.waitUntilExit() }
        for (w, writer) in writers.enumerated() { #expect(writer.terminationStatus == 0, "writer \(w) failed") }
        try h.waitForReceived(mixedCounts.reduce(0, +), timeout: 60)

        let received = h.received("sink-0", dataType: "blobs")
        for w in mixedSizes.indices {
            let mine = received.filter { $0.sequence / 1_000_000 == UInt64(w) }
            let whole = mine.filter { $0.payload == String(repeating: letters[w], count: mixedSizes[w]) }
            #expect(whole.count == mine.count, "\(mixedSizes[w]) B: \(mine.count - whole.count) frames arrived torn")
            #expect(Set(mine.map(\.sequence)).count == mine.count, "\(mixedSizes[w]) B: duplicates")
            #expect(Set(mine.map(\.sequence)) == Set((1...mixedCounts[w]).map { UInt64(w * 1_000_000 + $0) }), "\(mixedSizes[w]) B: frames missing")
        }
        #expect(!h.routerLog().contains("reset"), "the router reset the ingress pipe: \(h.routerLog().suffix(2000))")
    }

    @Test func fourProducers_mixedSizes_everyFrameWholeExactlyOnce() async throws {
        // Off the global pool, which the synchronous tests of a full run hold for minutes (see ThreadExecutor).
        try await offThePool("four producers") { try await fourProducersScenario(on: $0) }
    }

    private func fourProducersScenario(on executor: ThreadExecutor) async throws {
        let h = try MeshHarness(sharedPipeMesh())
        try h.startRouter()
        let ingress = Naming.path(root: h.dir.root, fileName: Naming.ingress(producer: "api", dataType: "blobs", shard: 0))
        let egress = Naming.path(root: h.dir.root, fileName: Naming.egress(instance: "sink-0", dataType: "blobs"))
        let consumer = Consumer<Google_Protobuf_BytesValue>(dataType: "blobs", version: 0, path: egress)
        let total = mixedCounts.reduce(0, +)
        // Opened here, not in the task: the pipe has its reader even while the pool's threads are busy.
        let iterator = consumer.makeAsyncIterator()
        let reading = Task(executorPreference: executor) {
            var iterator = iterator
            var got: [(writer: Int, sequence: UInt64, whole: Bool)] = []
            while got.count < total, let received = try await iterator.next() {
                let w = Int(received.headers["writer"] ?? "") ?? -1
                let whole = w >= 0 && received.message.value == Data(repeating: UInt8(w + 1), count: mixedSizes[w])
                got.append((w, received.sequence, whole))
            }
            return got
        }
        try await h.waitForHealthyConsumers(count: 1)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for w in mixedSizes.indices {
                group.addTask {
                    let producer = Producer<Google_Protobuf_BytesValue>(dataType: "blobs", version: 0, source: "api", paths: [ingress])
                    let message = Google_Protobuf_BytesValue(Data(repeating: UInt8(w + 1), count: mixedSizes[w]))
                    for _ in 0..<mixedCounts[w] { try await producer.send(message, shardKey: "k", headers: ["writer": "\(w)"]) }
                }
            }
            try await group.waitForAll()
        }
        let got = try await value(of: reading, within: 120, timerOn: executor)
        #expect(consumer.statistics.skipped == 0, "skipped: \(String(describing: consumer.statistics.lastSkipped))")
        for w in mixedSizes.indices {
            let mine = got.filter { $0.writer == w }
            #expect(mine.allSatisfy { $0.whole }, "\(mixedSizes[w]) B: torn frames")
            #expect(mine.map(\.sequence).sorted() == (1...UInt64(mixedCounts[w])).map { $0 }, "\(mixedSizes[w]) B: not every frame exactly once")
        }
        #expect(!h.routerLog().contains("reset"), "the router reset the ingress pipe: \(h.routerLog().suffix(2000))")
    }
}

@Suite("A writer cut off mid-frame finishes the frame, never tears it")
struct WriterEPIPETests {
    /// A reader that takes nothing and goes away while a 300,000-byte frame is half written.
    func cutOff(replacingThePipe: Bool) throws -> [UInt8] {
        let dir = TemporaryDirectory("pmm-epipe")
        let path = dir.path + "/ingress"
        #expect(mkfifo(path, 0o600) == 0)
        signal(SIGPIPE, SIG_IGN)
        var reader = open(path, O_RDONLY | O_NONBLOCK)
        try #require(reader >= 0)
        let frame = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        let done = DispatchSemaphore(value: 0)
        let failure = Mutex<String?>(nil)
        let thread = Thread {
            let writer = IngressFrameWriter(paths: [path])
            do { try writer.write(frame, shard: 0) } catch { failure.withLock { $0 = "\(error)" } }
            done.signal()
        }
        thread.start()
        // The writer fills the pipe and blocks; then the reader goes away.
        try waitFor("a full pipe") {
            var held: Int32 = 0
            return ioctl(reader, UInt(FIONREAD), &held) == 0 && held >= 65_536
        }
        close(reader)
        usleep(100_000)
        if replacingThePipe {
            unlink(path)
            #expect(mkfifo(path, 0o600) == 0)
        }
        reader = open(path, O_RDONLY | O_NONBLOCK)
        try #require(reader >= 0)
        defer { close(reader) }
        var got: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        let deadline = Date().addingTimeInterval(10)
        while got.count < frame.count, Date() < deadline {
            let n = read(reader, &chunk, chunk.count)
            if n > 0 { got += chunk[0..<n] } else { usleep(1_000) }
        }
        #expect(done.wait(timeout: .now() + 5) == .success, "the writer did not finish")
        while case let n = read(reader, &chunk, chunk.count), n > 0 { got += chunk[0..<n] }  // a second copy, if any
        #expect(failure.withLock { $0 } == nil)
        #expect(got.count == frame.count, "the next reader got \(got.count) bytes for one frame of \(frame.count)")
        #expect(got == frame, "the next reader did not get the frame whole")
        return got
    }

    @Test func samePipe_theRestFollowsThePartAlreadyIn() throws { _ = try cutOff(replacingThePipe: false) }

    @Test func replacedPipe_theWholeFrameGoesIntoTheNewOne() throws { _ = try cutOff(replacingThePipe: true) }
}

@Suite("A PipeMesh consumer skips what it cannot read and reads every version it is sent")
struct ConsumerReadingTests {
    func frame(version: UInt32, sequence: UInt64, payload: [UInt8]) throws -> [UInt8] {
        var envelope = Envelope()
        envelope.dataType = "blobs"
        envelope.source = "api"
        envelope.schemaVersion = version
        envelope.sequence = sequence
        envelope.payload = Data(payload)
        return try envelope.framed()
    }

    @Test func tornTailAndUndecodablePayload_areSkippedAndCounted_theRestArrives() async throws {
        try await offThePool("consumer test") { executor in
            let dir = TemporaryDirectory("pmm-consumer")
            let path = dir.path + "/egress"
            #expect(mkfifo(path, 0o600) == 0)
            let skips = Mutex<[SkippedFrame]>([])
            let consumer = Consumer<Google_Protobuf_BytesValue>(dataType: "blobs", version: 2, path: path) { skip in skips.withLock { $0.append(skip) } }
            let good = try Google_Protobuf_BytesValue(Data("hello".utf8)).serializedBytes() as [UInt8]
            let iterator = consumer.makeAsyncIterator()  // opened here: the pool's threads may be busy for seconds
            let reading = Task(executorPreference: executor) {
                var iterator = iterator
                var got: [(UInt64, UInt32)] = []
                while got.count < 3, let received = try await iterator.next() {
                    #expect(received.message.value == Data("hello".utf8))
                    got.append((received.sequence, received.schemaVersion))
                }
                return got
            }
            var writer: Int32 = -1
            try await waitForAsync("the consumer's open", timeout: 60) {
                writer = open(path, O_WRONLY | O_NONBLOCK)
                return writer >= 0
            }
            defer { close(writer) }
            let earlier = try frame(version: 2, sequence: 0, payload: Array(repeating: 9, count: 300))
            var bytes = Array(earlier.suffix(200))  // what a previous reader left of a frame it read in part
            bytes += try frame(version: 1, sequence: 1, payload: good)  // v1 under backward compatibility
            bytes += try frame(version: 2, sequence: 2, payload: [0x0A, 0x05, 0x01])  // truncated: does not decode
            bytes += try frame(version: 2, sequence: 3, payload: good)
            bytes += try frame(version: 2, sequence: 4, payload: good)
            #expect(write(writer, bytes, bytes.count) == bytes.count)
            let got = try await value(of: reading, within: 10, timerOn: executor)
            #expect(got.map(\.0) == [1, 3, 4])
            #expect(got.map(\.1) == [1, 2, 2])
            #expect(consumer.statistics.received == 3)
            #expect(consumer.statistics.skipped == 2)
            let reasons = skips.withLock { $0 }.map(\.reason)
            #expect(reasons.count == 2)
            if case .notAFrame = reasons.first {} else { Issue.record("first skip: \(reasons)") }
            if case .undecodable = reasons.last {} else { Issue.record("second skip: \(reasons)") }
        }
    }

    @Test func cancellingTheTask_endsTheIteration_andClosesThePipe() async throws {
        try await offThePool("consumer test") { executor in
            let dir = TemporaryDirectory("pmm-consumer")
            let path = dir.path + "/egress"
            #expect(mkfifo(path, 0o600) == 0)
            let consumer = Consumer<Google_Protobuf_BytesValue>(dataType: "blobs", version: 0, path: path)
            let iterator = consumer.makeAsyncIterator()
            let reading = Task(executorPreference: executor) {
                var iterator = iterator
                var count = 0
                while try await iterator.next() != nil { count += 1 }
                return count
            }
            var writer: Int32 = -1
            try await waitForAsync("the consumer's open", timeout: 60) {
                writer = open(path, O_WRONLY | O_NONBLOCK)
                return writer >= 0
            }
            close(writer)
            reading.cancel()
            #expect(try await value(of: reading, within: 10, timerOn: executor) == 0)
            // No reader any more: the router would see the instance gone and route elsewhere.
            try await waitForAsync("the pipe closed", timeout: 5) {
                let fd = open(path, O_WRONLY | O_NONBLOCK)
                if fd >= 0 { close(fd) }
                return fd < 0 && errno == ENXIO
            }
        }
    }

    @Test func aFullBuffer_stopsReading_thePipeHoldsTheRest() async throws {
        try await offThePool("consumer test") { executor in
            let dir = TemporaryDirectory("pmm-consumer")
            let path = dir.path + "/egress"
            #expect(mkfifo(path, 0o600) == 0)
            let consumer = Consumer<Google_Protobuf_BytesValue>(dataType: "blobs", version: 0, path: path, bufferSize: 8)
            var iterator = consumer.makeAsyncIterator()
            var writer: Int32 = -1
            try await waitForAsync("the consumer's open", timeout: 60) {
                writer = open(path, O_WRONLY | O_NONBLOCK)
                return writer >= 0
            }
            defer { close(writer) }
            let payload = try Google_Protobuf_BytesValue(Data(repeating: 7, count: 1_000)).serializedBytes() as [UInt8]
            var written = 0
            var sequence: UInt64 = 0
            // Write until the pipe is full: the consumer takes a buffer's worth and one read, then stops.
            while true {
                sequence += 1
                let bytes = try frame(version: 0, sequence: sequence, payload: payload)
                let n = write(writer, bytes, bytes.count)
                if n < 0 {
                    #expect(errno == EAGAIN)
                    sequence -= 1
                    usleep(300_000)
                    // Still full after a pause: the consumer is not reading.
                    if write(writer, bytes, bytes.count) < 0 { break }
                    sequence += 1
                }
                written += 1
                if written > 10_000 { break }
            }
            #expect(written < 1_000, "the consumer kept reading past its buffer (\(written) frames taken)")
            var seen: [UInt64] = []
            while seen.count < Int(sequence), let next = try await iterator.next() { seen.append(next.sequence) }
            #expect(seen == Array(1...sequence), "every frame arrives, in order, once the app reads")
            #expect(consumer.statistics.skipped == 0)
        }
    }
}

@Suite("A PipeMesh consumer slower than its share loses nothing; its traffic moves to the others", .serialized)
struct SlowConsumerTests {
    @Test func slowPipeMeshConsumer_losesNothing_routerReroutesToTheOther() async throws {
        // The slow app's pace and the waits' deadlines are timed: their tasks run on a thread of their own, not
        // on the global pool, which the synchronous tests of a full run can hold for minutes (in CI the app read
        // 107 messages in 400 s that way, and the wait timed out).
        try await offThePool("slow app") { try await slowConsumerScenario(on: $0) }
    }

    private func slowConsumerScenario(on executor: ThreadExecutor) async throws {
        let h = try MeshHarness(sharedPipeMesh(sinkReplicas: 2))
        try h.startRouter(["--stall-timeout", "0.5"])
        try h.startConsumer("sink-1", dataType: "blobs")
        let egress = Naming.path(root: h.dir.root, fileName: Naming.egress(instance: "sink-0", dataType: "blobs"))
        let consumer = Consumer<Google_Protobuf_BytesValue>(dataType: "blobs", version: 0, path: egress, bufferSize: 16)
        let iterator = consumer.makeAsyncIterator()  // the pipe has its reader from here on
        let taken = Mutex<[UInt64]>([])
        let slowlyReading = Task(executorPreference: executor) {
            var iterator = iterator
            while let received = try await iterator.next() {
                taken.withLock { $0.append(received.sequence) }
                // A slow app: at most 100 messages/s, far below its share.
                try await Task.sleep(nanoseconds: 10_000_000)
            }
        }
        defer { slowlyReading.cancel() }
        try await h.waitForHealthyConsumers(count: 2)
        let total = 4_000
        try await h.sendAsync("--service", "api", "--data-type", "blobs", "--keys", "400", "--payload", String(repeating: "x", count: 1_000), "--count", String(total))
        try await waitForAsync("the stall and the re-route", timeout: 60) {
            (h.status?.egress.first { $0.instance == "sink-0" }?.stalls ?? 0) > 0
        }
        // Done when the fast consumer and the slow app together hold every frame.
        try await waitForAsync("every frame received (fast \(h.received("sink-1", dataType: "blobs").count), slow app \(taken.withLock { $0.count }))", timeout: 180) {
            h.received("sink-1", dataType: "blobs").count + taken.withLock { $0.count } >= total
        }
        usleep(300_000)  // a duplicate, if any, has time to show
        slowlyReading.cancel()
        let slowSequences = taken.withLock { $0 }
        let fastSequences = h.received("sink-1", dataType: "blobs").map(\.sequence)
        let all = fastSequences + slowSequences
        #expect(consumer.statistics.skipped == 0)
        #expect(consumer.statistics.received == slowSequences.count, "the app did not see every message the consumer read")
        #expect(Set(all) == Set((1...UInt64(total)).map { $0 }), "lost: \(total - Set(all).count)")
        #expect(all.count == total, "duplicates: \(all.count - Set(all).count)")
        #expect(slowSequences.count < total / 2, "the slow consumer kept its whole share (\(slowSequences.count))")
    }
}

extension MeshHarness {
    /// Waits until the router reports `count` egress pipes healthy (consumers of any kind, in or out of process),
    /// without holding a thread of the pool (an in-process consumer's task needs one).
    func waitForHealthyConsumers(count: Int) async throws {
        try await waitForAsync("\(count) healthy consumers (egress: \(status?.egress.map { "\($0.instance) \($0.healthy)" } ?? []))", timeout: 60) {
            (self.status?.egress.filter(\.healthy).count ?? 0) >= count
        }
    }

    /// `pmm send` with arguments, to completion, without holding a thread of the pool.
    func sendAsync(_ arguments: String...) async throws {
        let process = try spawn(["send", stateArgument] + arguments, output: dir.path + "/send.log")
        try await waitForAsync("pmm send", timeout: 120) { !process.isRunning }
        #expect(process.terminationStatus == 0, "send failed: \((try? String(contentsOfFile: dir.path + "/send.log.err", encoding: .utf8)) ?? "")")
    }
}

/// Polls an async-free condition from an async context.
func waitForAsync(_ what: @autoclosure () -> String, timeout: Double, _ condition: () -> Bool) async throws {
    let deadline = Date().addingTimeInterval(timeout)
    while !condition() {
        guard Date() < deadline else {
            Issue.record("timed out after \(timeout)s waiting for \(what())")
            throw CancellationError()
        }
        try await Task.sleep(nanoseconds: 20_000_000)
    }
}

/// The value of `task`, cancelling it (and failing) if it takes longer than `seconds`. The timer runs on
/// `timerOn` when given (a test off the pool: its timer must not fire late, after a starved pool lets it run).
func value<T: Sendable>(of task: Task<T, any Error>, within seconds: Double, timerOn executor: ThreadExecutor? = nil) async throws -> T {
    let timer = Task(executorPreference: executor) {
        try await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
        Issue.record("timed out after \(seconds)s")
        task.cancel()
    }
    defer { timer.cancel() }
    return try await task.value
}

@Suite("A producer that finishes holds its pipe until a router took its frames", .serialized)
struct ProducerFinishTests {
    /// The producer sends while the router reads nothing (stopped), finishes, and the router is killed: its
    /// frames wait in the pipe, which the finishing producer still holds, and the next router takes them;
    /// `finish` returns then. Had the producer closed, the pipe would have died with the router's end.
    @Test func finish_outlivesARouterKilledBeforeItRead_theNextRouterTakesEverything() async throws {
        try await offThePool("finishing producer") { try await finishScenario(on: $0) }
    }

    private func finishScenario(on executor: ThreadExecutor) async throws {
        let h = try MeshHarness(sharedPipeMesh())
        try h.startRouter()
        try h.startConsumer("sink-0", dataType: "blobs")
        try await h.waitForHealthyConsumers(count: 1)
        let ingress = Naming.path(root: h.dir.root, fileName: Naming.ingress(producer: "api", dataType: "blobs", shard: 0))
        let producer = Producer<Google_Protobuf_BytesValue>(dataType: "blobs", version: 0, source: "api", paths: [ingress])
        h.stopRouter()
        let count = 300  // about 40 KB: the pipe takes them all
        for _ in 0..<count { try await producer.send(Google_Protobuf_BytesValue(Data(repeating: 7, count: 100)), shardKey: "k") }
        let finishing = Task(executorPreference: executor) { try await producer.finish(timeout: .seconds(30)) }
        try await Task.sleep(nanoseconds: 300_000_000)
        h.signalRouter(SIGKILL)
        h.router?.waitUntilExit()
        try h.startRouter()
        try await value(of: finishing, within: 30, timerOn: executor)
        try await waitForAsync("every frame", timeout: 20) { Set(h.received("sink-0", dataType: "blobs").map(\.sequence)).count >= count }
        #expect(Set(h.received("sink-0", dataType: "blobs").map(\.sequence)) == Set(1...UInt64(count)))
    }

    /// `finish` (here its blocking form) at its timeout: returns when a router still holds the pipe (stopped
    /// here, as one whose buffer is full: the bytes wait for it), and throws, naming the pipe, when none does.
    @Test func finish_atItsTimeout_returnsWhileARouterHoldsThePipe_throwsNotTakenWhenNoneDoes() throws {
        let h = try MeshHarness(sharedPipeMesh())
        try h.startRouter()
        let ingress = Naming.path(root: h.dir.root, fileName: Naming.ingress(producer: "api", dataType: "blobs", shard: 0))
        let message = Google_Protobuf_BytesValue(Data(repeating: 7, count: 100))
        h.stopRouter()
        let waiting = Producer<Google_Protobuf_BytesValue>(dataType: "blobs", version: 0, source: "api", paths: [ingress])
        _ = try waiting.sendBlocking(message, shardKey: Array("k".utf8))
        try waiting.finishBlocking(timeout: .milliseconds(300))

        let orphaned = Producer<Google_Protobuf_BytesValue>(dataType: "blobs", version: 0, source: "api", paths: [ingress])
        _ = try orphaned.sendBlocking(message, shardKey: Array("k".utf8))
        h.signalRouter(SIGKILL)
        h.router?.waitUntilExit()
        do {
            try orphaned.finishBlocking(timeout: .milliseconds(300))
            Issue.record("finish returned with bytes in a pipe no router reads")
        } catch PipeMeshError.notTaken(let path, let bytes) {
            #expect(path == ingress && bytes > 0, "\(path): \(bytes)")
        }
    }
}
