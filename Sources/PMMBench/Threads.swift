import Foundation
import Glibc
import Histogram
import PMMSystem
import PMMWire

let F_SETPIPE_SZ: Int32 = 1031

/// Every frame's arrival: which sequences came, how often, and their latency.
final class Tally: @unchecked Sendable {
    private let lock = NSLock()
    private var seen: [[UInt8]]
    private var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    private(set) var received = 0
    private(set) var duplicated = 0
    private(set) var lastArrival: Int64 = 0
    let expected: Int

    init(producers: Int, count: Int) {
        seen = Array(repeating: [UInt8](repeating: 0, count: count + 1), count: producers)
        expected = producers * count
    }

    /// Records a batch read at `now`: (producer, sequence, sentAt) per frame.
    func record(_ frames: [(Int, Int, Int64)], now: Int64) {
        lock.lock()
        defer { lock.unlock() }
        for (producer, sequence, sentAt) in frames {
            guard producer < seen.count, sequence < seen[producer].count else { continue }
            if seen[producer][sequence] != 0 { duplicated += 1 } else { received += 1 }
            seen[producer][sequence] = 1
            _ = histogram.record(UInt64(max(0, now - sentAt) / 1000))
        }
        lastArrival = now
    }

    func waitForAll(timeout: Double) {
        let deadline = Date().addingTimeInterval(timeout)
        var last = -1
        var lastChange = Date()
        while Date() < deadline {
            let count = lock.withLock { received }
            if count >= expected { return }
            if count != last {
                last = count
                lastChange = Date()
            } else if Date().timeIntervalSince(lastChange) > 3 {
                return  // nothing arrives any more: what is missing is lost
            }
            usleep(5_000)
        }
    }

    func result(path: String, seconds: Double, frameBytes: Int, router: (Double, Double?)?) -> BenchResult {
        lock.withLock {
            BenchResult(
                path: path, frames: received, seconds: seconds, messagesPerSecond: Double(received) / max(seconds, 1e-9),
                megabytesPerSecond: Double(received * frameBytes) / max(seconds, 1e-9) / 1e6,
                p50Microseconds: Double(histogram.valueAtPercentile(50)), p99Microseconds: Double(histogram.valueAtPercentile(99)),
                p999Microseconds: Double(histogram.valueAtPercentile(99.9)), maxMicroseconds: Double(histogram.max),
                lost: expected - received, duplicated: duplicated, routerCPUSeconds: router?.0, routerPeakRSSMiB: router?.1 ?? nil)
        }
    }
}

/// A producer: frames with sequence and send time, in 64 KiB writes (or paced at `rate`).
final class ProducerThread: @unchecked Sendable {
    let path: String
    let index: Int
    let config: BenchConfig
    /// The envelopes' data type (the ingress pipe's).
    let dataType: [UInt8]
    /// The CPU it runs on (nil: any).
    let cpu: Int?
    private let done = DispatchSemaphore(value: 0)

    init(path: String, index: Int, config: BenchConfig, dataType: String = "bench", cpu: Int? = nil) {
        self.path = path
        self.index = index
        self.config = config
        self.dataType = Array(dataType.utf8)
        self.cpu = cpu
    }

    /// Bytes of one frame (prefix included) for this workload, with a 7-byte sequence field (sizes vary by a
    /// few bytes; used only for MB/s).
    static func frameSize(_ config: BenchConfig) -> Int {
        let body = 7 + 10 + 4 + 9 + 9 + 2 + config.size
        return body + Varint.size(of: UInt64(body))
    }

    func start() {
        let thread = Thread { self.run() }
        thread.stackSize = 1 << 20
        thread.start()
    }

    func wait() { done.wait() }

    func run() {
        defer { done.signal() }
        if let cpu { pinThisThread(toCPU: cpu) }
        let fd = open(path, O_WRONLY)
        guard fd >= 0 else { return }
        defer { close(fd) }
        _ = fcntl(fd, F_SETPIPE_SZ, Int32(1 << 20))
        let payload = [UInt8](repeating: 0x61, count: config.size)
        let source = Array("p\(index)".utf8)
        // Built once: a field made per frame would cost the producer an allocation the earlier runs did not pay.
        let typeField = [0x0a, UInt8(dataType.count)] + dataType
        var batch: [UInt8] = []
        batch.reserveCapacity(config.batchBytes + 1024)
        var body: [UInt8] = []
        body.reserveCapacity(config.size + 64)
        let started = realtimeNanos()
        let perTick = config.rate > 0 ? max(1, Int(config.rate / 1000)) : Int.max
        var sequence = 1
        while sequence <= config.count {
            if config.rate > 0 {
                // Paced: the frames due by now, one write per tick of 1 ms.
                let due = started + Int64(Double(sequence - 1) / config.rate * 1e9)
                let now = realtimeNanos()
                if due > now { usleep(UInt32(min(1000, (due - now) / 1000))) ; continue }
            }
            batch.removeAll(keepingCapacity: true)
            var inBatch = 0
            let batchBytes = config.writes == .batch ? config.batchBytes : 1
            while sequence <= config.count && batch.count < batchBytes && inBatch < perTick {
                body.removeAll(keepingCapacity: true)
                body += typeField  // data_type
                let key = sequence % 1024
                body += [0x1a, 0x04, UInt8(key & 0xff), UInt8(key >> 8), UInt8(index & 0xff), 0x6b]  // shard_key
                body += [0x22, UInt8(source.count)] + source  // source
                body.append(0x28)
                Varint.encode(UInt64(sequence), into: &body)  // sequence
                body.append(0x30)
                Varint.encode(UInt64(realtimeNanos()), into: &body)  // sent_at_unix_nanos
                body.append(0x3a)
                Varint.encode(UInt64(payload.count), into: &body)
                body += payload
                Varint.encode(UInt64(body.count), into: &batch)
                batch += body
                sequence += 1
                inBatch += 1
            }
            let locked = config.writes == .lockedFrame
            if locked { DescriptorLock.lock(fd) }
            defer { if locked { DescriptorLock.unlock(fd) } }
            var offset = 0
            while offset < batch.count {
                let n = batch.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
                if n <= 0 {
                    if errno == EINTR { continue }
                    return
                }
                offset += n
            }
        }
    }
}

/// A consumer: reads its pipe in 256 KiB reads, parses every frame's source, sequence and send time.
final class ConsumerThread: @unchecked Sendable {
    let path: String
    let tally: Tally
    let expected: Int
    /// The CPU it runs on (nil: any).
    let cpu: Int?
    private let lock = NSLock()
    private var stopped = false

    init(path: String, tally: Tally, expected: Int, cpu: Int? = nil) {
        self.path = path
        self.tally = tally
        self.expected = expected
        self.cpu = cpu
    }

    func start() {
        let thread = Thread {
            if let cpu = self.cpu { pinThisThread(toCPU: cpu) }
            self.run()
        }
        thread.start()
    }

    func stop() { lock.withLock { stopped = true } }
    var isStopped: Bool { lock.withLock { stopped } }

    func run() {
        let fd = open(path, O_RDONLY | O_NONBLOCK)
        guard fd >= 0 else { return }
        defer { close(fd) }
        _ = fcntl(fd, F_SETPIPE_SZ, Int32(1 << 20))
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var start = 0
        var end = 0
        var frames: [(Int, Int, Int64)] = []
        while !isStopped {
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, 1, 50)
            if start > 0 {
                buffer.withUnsafeMutableBytes { raw in
                    raw.baseAddress!.copyMemory(from: raw.baseAddress! + start, byteCount: end - start)
                }
                end -= start
                start = 0
            }
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + end, $0.count - end) }
            guard n > 0 else { continue }
            end += n
            let now = realtimeNanos()
            frames.removeAll(keepingCapacity: true)
            buffer.withUnsafeBytes { raw in
                while true {
                    let window = UnsafeRawBufferPointer(rebasing: raw[start..<end])
                    guard case .value(let length, let prefix) = Varint.decode(window, at: 0), prefix + Int(length) <= window.count else { break }
                    let body = UnsafeRawBufferPointer(rebasing: window[prefix..<(prefix + Int(length))])
                    frames.append(Self.parse(body))
                    start += prefix + Int(length)
                }
            }
            tally.record(frames, now: now)
        }
    }

    /// (producer index from the source "pN", sequence, sent_at).
    static func parse(_ body: UnsafeRawBufferPointer) -> (Int, Int, Int64) {
        var producer = 0
        var sequence = 0
        var sentAt: Int64 = 0
        var i = 0
        while i < body.count {
            guard case .value(let tag, let size) = Varint.decode(body, at: i) else { break }
            i += size
            switch tag & 7 {
            case 0:
                guard case .value(let value, let n) = Varint.decode(body, at: i) else { return (producer, sequence, sentAt) }
                i += n
                if tag >> 3 == 5 { sequence = Int(value) } else if tag >> 3 == 6 { sentAt = Int64(bitPattern: value) }
            case 2:
                guard case .value(let length, let n) = Varint.decode(body, at: i) else { return (producer, sequence, sentAt) }
                i += n
                if tag >> 3 == 4 {
                    var value = 0
                    for byte in body[(i + 1)..<(i + Int(length))] { value = value * 10 + Int(byte - 48) }
                    producer = value
                }
                i += Int(length)
            case 1: i += 8
            case 5: i += 4
            default: return (producer, sequence, sentAt)
            }
        }
        return (producer, sequence, sentAt)
    }
}

/// The hop's floor: a minimal relay between the same kind of FIFOs, with no routing. One poll loop, 256 KiB
/// reads, and per read one write per egress of the whole frames it completed (ingress `i` goes to egress
/// `i % egress.count`, so frames stay whole and in order). What the router adds is measured against this.
///
/// It runs as a thread of the bench (`RelayThread`) or in a process of its own (`pmm bench-relay`, the way the
/// router runs): a thread's wake-ups switch between threads of one address space, a process's do not.
public enum Relay {
    /// Relays until every producer has closed its pipe and everything read was written.
    ///
    /// - Parameter opened: called once the ingress pipes are open (producers may open theirs then).
    /// - Returns: the CPU seconds of the calling thread.
    public static func run(ingress: [String], egress: [String], opened: () -> Void) -> Double {
        let inputs = ingress.map { open($0, O_RDONLY | O_NONBLOCK) }
        for fd in inputs { _ = fcntl(fd, F_SETPIPE_SZ, Int32(1 << 20)) }
        opened()
        let outputs = egress.map { open($0, O_WRONLY) }
        for fd in outputs { _ = fcntl(fd, F_SETPIPE_SZ, Int32(1 << 20)) }
        defer { for fd in inputs + outputs { close(fd) } }
        var buffers = inputs.map { _ in [UInt8](repeating: 0, count: 1 << 20) }
        var ends = inputs.map { _ in 0 }
        var producing = inputs.count
        var fds = inputs.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        loop: while producing > 0 {
            _ = poll(&fds, nfds_t(fds.count), 100)
            for i in fds.indices where fds[i].fd >= 0 && fds[i].revents != 0 {
                let end = ends[i]
                let n = buffers[i].withUnsafeMutableBytes { read(inputs[i], $0.baseAddress! + end, min(256 << 10, $0.count - end)) }
                if n == 0 {  // every writer closed: this producer is done
                    fds[i].fd = -1
                    producing -= 1
                    continue
                }
                guard n > 0 else { continue }
                ends[i] += n
                // Whole frames only: the varint lengths tell where the last complete one ends.
                var whole = 0
                buffers[i].withUnsafeBytes { raw in
                    let window = UnsafeRawBufferPointer(rebasing: raw[0..<ends[i]])
                    while case .value(let length, let prefix) = Varint.decode(window, at: whole), whole + prefix + Int(length) <= window.count {
                        whole += prefix + Int(length)
                    }
                }
                guard whole > 0 else { continue }
                let out = outputs[i % outputs.count]
                var offset = 0
                while offset < whole {
                    let written = buffers[i].withUnsafeBytes { write(out, $0.baseAddress! + offset, whole - offset) }
                    if written < 0 {
                        if errno == EINTR { continue }
                        break loop
                    }
                    offset += written
                }
                let rest = ends[i] - whole
                if rest > 0 {
                    buffers[i].withUnsafeMutableBytes { raw in raw.baseAddress!.copyMemory(from: raw.baseAddress! + whole, byteCount: rest) }
                }
                ends[i] = rest
            }
        }
        var usage = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &usage)
        return Double(usage.tv_sec) + Double(usage.tv_nsec) / 1e9
    }
}

/// The executable and arguments that run `executable` with `arguments` on CPU `cpu` (taskset, from util-linux,
/// which every Debian has); unchanged for nil.
func pinned(_ executable: String, _ arguments: [String], cpu: Int?) -> (String, [String]) {
    guard let cpu else { return (executable, arguments) }
    return ("/usr/bin/taskset", ["--cpu-list", "\(cpu)", executable] + arguments)
}

/// `Relay` on a thread of the bench process.
final class RelayThread: @unchecked Sendable {
    let ingress: [String]
    let egress: [String]
    private let done = DispatchSemaphore(value: 0)
    private let opened = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var cpu: Double = 0
    /// The CPU it runs on (nil: any).
    let processor: Int?

    init(ingress: [String], egress: [String], cpu: Int? = nil) {
        self.ingress = ingress
        self.egress = egress
        self.processor = cpu
    }

    /// Starts the relay and returns once its ingress pipes are open (so producers can open theirs).
    func start() {
        let thread = Thread {
            if let processor = self.processor { pinThisThread(toCPU: processor) }
            let seconds = Relay.run(ingress: self.ingress, egress: self.egress) { self.opened.signal() }
            self.lock.withLock { self.cpu = seconds }
            self.done.signal()
        }
        thread.stackSize = 1 << 20
        thread.start()
        opened.wait()
    }

    /// Waits until every producer closed and everything read was written; the relay's CPU seconds.
    func wait() -> Double {
        done.wait()
        return lock.withLock { cpu }
    }
}

/// `Relay` in a process of its own (`pmm bench-relay`), as the router runs: it prints `ready` once its ingress
/// pipes are open and its CPU seconds when done.
final class RelayProcess {
    let process = Process()
    let output = Pipe()

    /// Starts the relay and returns once its ingress pipes are open.
    init(executable: String, ingress: [String], egress: [String], cpu: Int? = nil) throws {
        let (path, arguments) = pinned(
            executable, ["bench-relay"] + ingress.flatMap { ["--ingress", $0] } + egress.flatMap { ["--egress", $0] }, cpu: cpu)
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        process.standardOutput = output
        try process.run()
        guard readLine() == "ready" else {
            process.waitUntilExit()
            throw BenchError("the relay process (\(executable) bench-relay) did not start (exit \(process.terminationStatus))")
        }
    }

    /// Waits until it relayed everything and exited; its CPU seconds.
    func wait() throws -> Double {
        let line = readLine()
        process.waitUntilExit()
        guard process.terminationStatus == 0, let line, line.hasPrefix("cpu "), let cpu = Double(line.dropFirst(4)) else {
            throw BenchError("the relay process failed (exit \(process.terminationStatus))")
        }
        return cpu
    }

    /// One line of its output, without the newline; nil at the end.
    private func readLine() -> String? {
        var bytes: [UInt8] = []
        var byte: UInt8 = 0
        while read(output.fileHandleForReading.fileDescriptor, &byte, 1) == 1 {
            if byte == UInt8(ascii: "\n") { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(byte)
        }
        return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
    }
}
