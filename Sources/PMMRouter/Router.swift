import Foundation
import Glibc
public import Logging
public import PMMCore
public import PMMSystem
import PMMWire

/// Settings of the data plane that are not in the spec.
public struct RouterOptions: Sendable {
    /// The largest frame accepted on an ingress pipe, length prefix included. Larger ones reset that pipe.
    public var maximumFrameSize: Int = 1 << 20
    /// Bytes read from one ingress pipe per read(2).
    public var readSize: Int = 256 << 10
    /// How long SIGTERM waits for queued frames to reach their consumers.
    public var drainTimeout: Double = 5
    /// Where to write the status JSON (pid, revision, counters), if anywhere.
    public var statusPath: String?
    public var statusInterval: Double = 1

    public init() {}
}

/// Why the router stopped.
public enum RouterExit: Sendable, Equatable {
    /// SIGTERM or SIGINT: drained and stopped. `undelivered` frames were still queued at the deadline.
    case stopped(undelivered: Int)
}

/// The data plane: reads frames from every ingress pipe and writes each to one consumer instance's egress pipe,
/// by data type, shard key and weights (DESIGN.md, "Routing").
///
/// One thread, one `poll(2)` loop: many frames per read(2), one write(2) per egress pipe per batch, no lock
/// and no task hop per frame. Frames are forwarded byte for byte as they arrived; only the routing fields
/// (data type, schema version, shard key) are located, never the payload.
///
/// Not thread-safe: `run` owns the object until it returns.
public final class Router {
    let options: RouterOptions
    let logger: Logger
    var layout: RouterLayout
    var root: PipeRoot
    var ingress: [IngressPipe] = []
    /// Ingress pipes removed or replaced by a reload, read until empty and then closed.
    var draining: [IngressPipe] = []
    var egress: [EgressPipe] = []
    var egressByName: [String: Int] = [:]
    var routes: [String: RouteState] = [:]
    var startedAt = Date()
    var lastStatus: UInt64 = 0
    var counters = Counters()
    var random = SplitMix(seed: UInt64(truncatingIfNeeded: realtimeNanos()))

    struct Counters {
        var unroutable: UInt64 = 0
        var reloads: UInt64 = 0
        var failedReloads: UInt64 = 0
        var lastReloadError: String?
    }

    /// Per data type: its route, frames waiting for a healthy instance, round-robin state.
    final class RouteState {
        var route: RouterLayout.Route
        var parked = FrameQueue()
        var current: [Int]
        var rotation = 0

        init(route: RouterLayout.Route) {
            self.route = route
            self.current = Array(repeating: 0, count: route.entry.targets.count)
        }

        var capacity: Int { route.qos.buffer }
    }

    /// - Parameters:
    ///   - layout: what to route, from the applied revision.
    public init(layout: RouterLayout, options: RouterOptions = RouterOptions(), logger: Logger) throws(FIFOError) {
        self.options = options
        self.logger = logger
        self.layout = layout
        guard let root = try PipeRoot.open(layout.root) else {
            throw FIFOError(.systemCall, path: layout.root, "the pipe root does not exist", hint: "run pmm apply first")
        }
        self.root = root
        install(layout)
    }

    // MARK: Layout

    /// Opens what `layout` names that is not open yet, starts draining what it no longer names, swaps routes.
    func install(_ new: RouterLayout) {
        var oldIngress = Dictionary(uniqueKeysWithValues: ingress.map { ($0.name, $0) })
        var next: [IngressPipe] = []
        for spec in new.ingress {
            if let pipe = oldIngress.removeValue(forKey: spec.name) {
                pipe.spec = spec
                if case .some(let file) = try? root.stat(spec.name), file.inode == pipe.inode, file.device == pipe.device {
                    next.append(pipe)
                    continue
                }
                // Replaced by apply (a new writer): drain the old inode, read the new one.
                startDraining(pipe)
            }
            let pipe = IngressPipe(spec: spec, maximumFrameSize: options.maximumFrameSize)
            openIngress(pipe)
            next.append(pipe)
        }
        for pipe in oldIngress.values { startDraining(pipe) }
        ingress = next

        var oldEgress = Dictionary(uniqueKeysWithValues: egress.map { ($0.name, $0) })
        var nextEgress: [EgressPipe] = []
        var orphaned: [[UInt8]] = []
        for spec in new.egress {
            if let pipe = oldEgress.removeValue(forKey: spec.name) {
                pipe.spec = spec
                if pipe.fd < 0 || ((try? root.stat(spec.name))?.map { $0.inode == pipe.inode && $0.device == pipe.device } ?? false) {
                    nextEgress.append(pipe)
                    continue
                }
                // Replaced by apply (a new reader): what is queued goes to the new pipe.
                let replacement = EgressPipe(spec: spec)
                replacement.queue = pipe.queue
                closeEgress(pipe, reason: nil)
                nextEgress.append(replacement)
                continue
            }
            nextEgress.append(EgressPipe(spec: spec))
        }
        for pipe in oldEgress.values {
            orphaned += pipe.queue.takeUnwritten()
            closeEgress(pipe, reason: nil)
        }
        egress = nextEgress
        egressByName = Dictionary(uniqueKeysWithValues: egress.enumerated().map { ($1.name, $0) })
        for pipe in egress where pipe.fd < 0 { probe(pipe, now: monotonicNanos(), force: true) }

        var parked: [[UInt8]] = []
        for state in routes.values { parked += state.parked.takeUnwritten() }
        routes = new.routes.mapValues { RouteState(route: $0) }
        layout = new
        for frame in orphaned + parked { reroute(frame) }
    }

    func startDraining(_ pipe: IngressPipe) {
        guard pipe.fd >= 0 else { return }
        pipe.draining = true
        draining.append(pipe)
    }

    func openIngress(_ pipe: IngressPipe) {
        switch root.openFIFO(pipe.name, forWriting: false) {
        case .opened(let fd, let file):
            if pipe.fd >= 0 { close(pipe.fd) }
            pipe.fd = fd
            pipe.inode = file.inode
            pipe.device = file.device
            setPipeSize(fd, pipe.spec.pipeSize, name: pipe.name)
        case .missing:
            pipe.lastError = "missing"
            logger.warning("ingress pipe is missing; run pmm apply", metadata: ["pipe": "\(pipe.name)"])
        case .noReader:
            break  // cannot happen for a read end
        case .failed(let error):
            pipe.lastError = error.message
            logger.error("cannot open ingress pipe", metadata: ["pipe": "\(pipe.name)", "error": "\(error)"])
        }
    }

    func setPipeSize(_ fd: Int32, _ size: Int?, name: String) {
        guard let size else { return }
        if fcntl(fd, F_SETPIPE_SZ, Int32(clamping: size)) < 0 {
            logger.warning(
                "cannot set the pipe size (F_SETPIPE_SZ); fs.pipe-max-size may be lower",
                metadata: ["pipe": "\(name)", "size": "\(size)", "errno": "\(errno)"])
        }
    }

    // MARK: The loop

    /// Runs until SIGTERM or SIGINT arrives on `signals`; SIGHUP calls `reload` and installs its layout.
    ///
    /// - Parameters:
    ///   - signals: the read end of a `SignalPipe`.
    ///   - reload: loads the newest applied revision; a throw leaves the current layout serving.
    public func run(signals: SignalPipe, reload: () throws -> RouterLayout) -> RouterExit {
        startedAt = Date()
        writeStatus(force: true)
        logger.info(
            "router serving", metadata: ["revision": "\(layout.revision)", "ingress": "\(ingress.count)", "egress": "\(egress.count)"])
        var fds: [pollfd] = []
        var owners: [Owner] = []
        while true {
            fds.removeAll(keepingCapacity: true)
            owners.removeAll(keepingCapacity: true)
            fds.append(pollfd(fd: signals.readFD, events: Int16(POLLIN), revents: 0))
            owners.append(.signal)
            let blocked = blockedRoutes()
            for (index, pipe) in ingress.enumerated() where pipe.fd >= 0 && !blocked.contains(pipe.spec.dataType) {
                fds.append(pollfd(fd: pipe.fd, events: Int16(POLLIN), revents: 0))
                owners.append(.ingress(index))
            }
            for (index, pipe) in egress.enumerated() where pipe.fd >= 0 && pipe.queue.unwrittenBytes > 0 {
                fds.append(pollfd(fd: pipe.fd, events: Int16(POLLOUT), revents: 0))
                owners.append(.egress(index))
            }
            let ready = poll(&fds, nfds_t(fds.count), 100)
            if ready < 0 && errno != EINTR {
                logger.critical("poll failed", metadata: ["errno": "\(errno)"])
            }
            for (slot, owner) in owners.enumerated() where fds[slot].revents != 0 {
                switch owner {
                case .signal:
                    for signal in signals.drain() {
                        switch signal {
                        case .reload:
                            do {
                                let new = try reload()
                                install(new)
                                counters.reloads += 1
                                logger.info("reloaded", metadata: ["revision": "\(new.revision)"])
                            } catch {
                                counters.failedReloads += 1
                                counters.lastReloadError = "\(error)"
                                logger.error(
                                    "reload failed; the current revision keeps serving",
                                    metadata: ["revision": "\(layout.revision)", "error": "\(error)"])
                            }
                            writeStatus(force: true)
                        case .stop:
                            return stop()
                        }
                    }
                case .ingress(let index):
                    readIngress(ingress[index], budget: 4)
                case .egress:
                    break  // flushed below
                }
            }
            // Removed or replaced pipes are read without waiting for POLLIN (an empty pipe with a writer never
            // becomes readable) and closed once empty at a frame boundary.
            draining.removeAll { pipe in
                guard readIngress(pipe, budget: 64) else { return false }
                close(pipe.fd)
                pipe.fd = -1
                logger.info("drained and closed a removed ingress pipe", metadata: ["pipe": "\(pipe.name)"])
                return true
            }
            flushAll()
            let now = monotonicNanos()
            for pipe in egress where pipe.fd < 0 && now >= pipe.nextProbe { probe(pipe, now: now, force: false) }
            writeStatus(force: false)
        }
    }

    enum Owner {
        case signal
        case ingress(Int)
        case egress(Int)
    }

    /// Data types whose ingress pipes must not be read now: a healthy consumer's queue is full (overflow
    /// `block`/`dead-letter`), or frames wait for a healthy instance and that wait is full.
    func blockedRoutes() -> Set<String> {
        var blocked: Set<String> = []
        for (name, state) in routes {
            if state.parked.count >= state.capacity {
                blocked.insert(name)
                continue
            }
            for indices in state.route.egressIndex {
                for index in indices where index >= 0 {
                    let pipe = egress[index]
                    if pipe.healthy && pipe.isFull && pipe.spec.qos.overflow != .dropOldest {
                        blocked.insert(name)
                    }
                }
            }
        }
        return blocked
    }

    // MARK: Ingress

    /// Reads up to `budget` times from `pipe` and routes every complete frame. Returns true when a draining
    /// pipe is empty.
    @discardableResult
    func readIngress(_ pipe: IngressPipe, budget: Int) -> Bool {
        for _ in 0..<budget {
            if pipe.buffer.freeSpace < options.readSize { pipe.buffer.compact() }
            let fd = pipe.fd
            let n = pipe.buffer.write { raw in
                let n = read(fd, raw.baseAddress, min(raw.count, options.readSize))
                return (max(0, n), n)
            }
            if n > 0 {
                pipe.bytes += UInt64(n)
                do {
                    while let frame = try pipe.buffer.next() {
                        route(frame, from: pipe)
                    }
                } catch {
                    resetIngress(pipe, error: error)
                    return false
                }
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

    /// Bytes that are not a frame: drop what the pipe holds, forget the partial frame, count and log. Other
    /// pipes are not affected.
    func resetIngress(_ pipe: IngressPipe, error: FrameError) {
        pipe.resets += 1
        pipe.lastError = error.description
        var discarded = pipe.buffer.pending
        pipe.buffer.reset()
        var scratch = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = read(pipe.fd, &scratch, scratch.count)
            if n <= 0 { break }
            discarded += n
        }
        logger.error(
            "ingress reset: bytes that are not a frame",
            metadata: [
                "pipe": "\(pipe.name)", "producer": "\(pipe.spec.producer)", "error": "\(error)",
                "discardedBytes": "\(discarded)", "resets": "\(pipe.resets)",
            ])
        if !pipe.draining { openIngress(pipe) }
    }

    // MARK: Routing

    func route(_ frame: Frame, from pipe: IngressPipe) {
        let fields = frame.fields
        pipe.buffer.withBytes(frame.range) { bytes in
            let body = frame.bodyStart - frame.range.lowerBound
            if !fields.dataType.isEmpty {
                let name = UnsafeRawBufferPointer(rebasing: bytes[(body + fields.dataType.lowerBound)..<(body + fields.dataType.upperBound)])
                if !name.elementsEqual(pipe.dataTypeBytes) {
                    pipe.misaddressed += 1
                    logger.warning(
                        "frame of another data type on this pipe; dropped",
                        metadata: ["pipe": "\(pipe.name)", "frameDataType": "\(String(decoding: name, as: UTF8.self))"])
                    return
                }
            }
            pipe.frames += 1
            let key = UnsafeRawBufferPointer(rebasing: bytes[(body + fields.shardKey.lowerBound)..<(body + fields.shardKey.upperBound)])
            deliver(bytes, key: key, dataType: pipe.spec.dataType)
        }
    }

    /// Routes a frame taken back from a queue (its consumer died, or the layout changed).
    func reroute(_ frame: [UInt8]) {
        frame.withUnsafeBytes { bytes in
            guard case .value(_, let prefix) = Varint.decode(bytes, at: 0),
                let fields = try? EnvelopeScanner.scan(UnsafeRawBufferPointer(rebasing: bytes[prefix...]))
            else { return }
            let dataType = String(decoding: bytes[(prefix + fields.dataType.lowerBound)..<(prefix + fields.dataType.upperBound)], as: UTF8.self)
            let key = UnsafeRawBufferPointer(rebasing: bytes[(prefix + fields.shardKey.lowerBound)..<(prefix + fields.shardKey.upperBound)])
            deliver(bytes, key: key, dataType: dataType)
        }
    }

    /// Queues `frame` for the instance the route chooses, or parks it until one is healthy.
    func deliver(_ frame: UnsafeRawBufferPointer, key: UnsafeRawBufferPointer, dataType: String) {
        guard let state = routes[dataType] else {
            counters.unroutable += 1
            logger.warning("no route for data type; frame dropped", metadata: ["dataType": "\(dataType)"])
            return
        }
        guard let index = choose(state, key: key) else {
            state.parked.append(frame)
            return
        }
        let pipe = egress[index]
        pipe.queue.append(frame)
        if pipe.queue.count > pipe.capacity && pipe.spec.qos.overflow == .dropOldest, pipe.queue.dropOldestUnwritten() {
            pipe.dropped += 1
        }
    }

    func isHealthy(_ state: RouteState, _ target: Int, _ instance: Int) -> Bool {
        let index = state.route.egressIndex[target][instance]
        return index >= 0 && egress[index].healthy
    }

    /// The egress index the route's policy picks, or nil when no instance is healthy.
    func choose(_ state: RouteState, key: UnsafeRawBufferPointer) -> Int? {
        let entry = state.route.entry
        switch state.route.policy {
        case .shard where key.count > 0:
            let hash = ShardHash.fnv1a64(key)
            guard let (t, i) = entry.chooseByKey(hash: hash, isHealthy: { isHealthy(state, $0, $1) }) else { return nil }
            return state.route.egressIndex[t][i]
        case .shard, .roundRobin:
            // Smooth weighted round-robin over services with a healthy instance, then rotate within one.
            var total = 0
            var best = -1
            for t in entry.targets.indices where (0..<entry.targets[t].instances.count).contains(where: { isHealthy(state, t, $0) }) {
                state.current[t] += entry.targets[t].weight
                total += entry.targets[t].weight
                if best < 0 || state.current[t] > state.current[best] { best = t }
            }
            guard best >= 0 else { return nil }
            state.current[best] -= total
            return rotate(state, target: best)
        case .weighted:
            var total = 0
            for t in entry.targets.indices where (0..<entry.targets[t].instances.count).contains(where: { isHealthy(state, t, $0) }) {
                total += entry.targets[t].weight
            }
            guard total > 0 else { return nil }
            var point = Int(random.next() % UInt64(total))
            for t in entry.targets.indices where (0..<entry.targets[t].instances.count).contains(where: { isHealthy(state, t, $0) }) {
                if point < entry.targets[t].weight { return rotate(state, target: t) }
                point -= entry.targets[t].weight
            }
            return nil
        case .leastLoaded:
            var best = -1
            var bestLoad = Int.max
            let count = state.route.egressIndex.reduce(0) { $0 + $1.count }
            guard count > 0 else { return nil }
            state.rotation &+= 1
            var position = 0
            for t in entry.targets.indices {
                for i in entry.targets[t].instances.indices {
                    let index = state.route.egressIndex[t][i]
                    position += 1
                    guard index >= 0, egress[index].healthy else { continue }
                    let load = egress[index].queue.count * 1000 / max(1, entry.targets[t].weight)
                    if load < bestLoad || (load == bestLoad && (position + state.rotation) % count == 0) {
                        best = index
                        bestLoad = load
                    }
                }
            }
            return best >= 0 ? best : nil
        }
    }

    /// The next healthy instance of target `t`, in turn.
    func rotate(_ state: RouteState, target t: Int) -> Int? {
        let instances = state.route.egressIndex[t]
        for _ in 0..<instances.count {
            state.rotation &+= 1
            let i = Int(UInt(bitPattern: state.rotation) % UInt(instances.count))
            if isHealthy(state, t, i) { return instances[i] }
        }
        return nil
    }

    // MARK: Egress

    func flushAll() {
        for pipe in egress where pipe.fd >= 0 && pipe.queue.unwrittenBytes > 0 {
            flush(pipe)
        }
    }

    /// Writes as much of the queue as the pipe takes. A reader gone (EPIPE) marks the instance unhealthy and
    /// routes its unwritten frames elsewhere.
    func flush(_ pipe: EgressPipe) {
        while pipe.queue.unwrittenBytes > 0 {
            let before = pipe.queue.count
            let n = pipe.queue.withUnwritten { write(pipe.fd, $0.baseAddress, $0.count) }
            if n > 0 {
                pipe.bytes += UInt64(n)
                pipe.queue.consumed(n)
                pipe.frames += UInt64(before - pipe.queue.count)
                continue
            }
            let error = errno
            if n < 0 && (error == EAGAIN || error == EWOULDBLOCK) { return }
            if n < 0 && error == EINTR { continue }
            closeEgress(pipe, reason: error == EPIPE ? "the reader went away (EPIPE)" : String(cString: strerror(error)))
            let frames = pipe.queue.takeUnwritten()
            pipe.rerouted += UInt64(frames.count)
            for frame in frames { reroute(frame) }
            return
        }
    }

    func closeEgress(_ pipe: EgressPipe, reason: String?) {
        if pipe.fd >= 0 { close(pipe.fd) }
        pipe.fd = -1
        if let reason {
            pipe.failures += 1
            pipe.lastError = reason
            logger.warning("consumer instance unhealthy", metadata: ["pipe": "\(pipe.name)", "reason": "\(reason)"])
        }
        if pipe.healthy { pipe.unhealthySince = monotonicNanos() }
        pipe.healthy = false
        pipe.backoff = 50_000_000
        pipe.nextProbe = monotonicNanos() + pipe.backoff
    }

    /// Tries to open an egress pipe; a reader present makes the instance healthy.
    func probe(_ pipe: EgressPipe, now: UInt64, force: Bool) {
        switch root.openFIFO(pipe.name, forWriting: true) {
        case .opened(let fd, let file):
            pipe.fd = fd
            pipe.inode = file.inode
            pipe.device = file.device
            pipe.healthy = true
            pipe.lastError = nil
            pipe.backoff = 50_000_000
            setPipeSize(fd, pipe.spec.pipeSize, name: pipe.name)
            logger.info("consumer instance healthy", metadata: ["pipe": "\(pipe.name)"])
            if let state = routes[pipe.spec.dataType], !state.parked.isEmpty {
                for frame in state.parked.takeUnwritten() { reroute(frame) }
            }
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

    // MARK: Stopping

    /// Stops reading, completes frames half read, writes what is queued until the drain timeout, closes.
    func stop() -> RouterExit {
        logger.info("stopping: draining queued frames", metadata: ["timeout": "\(options.drainTimeout)s"])
        let deadline = monotonicNanos() + UInt64(options.drainTimeout * 1e9)
        // Finish frames already half read, so the pipe is left at a frame boundary.
        for pipe in ingress + draining where pipe.fd >= 0 && pipe.buffer.pending > 0 {
            while pipe.buffer.pending > 0 && monotonicNanos() < deadline {
                var fds = [pollfd(fd: pipe.fd, events: Int16(POLLIN), revents: 0)]
                _ = poll(&fds, 1, 50)
                pipe.draining = true
                readIngress(pipe, budget: 1)
            }
        }
        while monotonicNanos() < deadline {
            flushAll()
            let now = monotonicNanos()
            for pipe in egress where pipe.fd < 0 && now >= pipe.nextProbe && !pipe.queue.isEmpty { probe(pipe, now: now, force: false) }
            let waiting = egress.reduce(0) { $0 + $1.queue.count } + routes.values.reduce(0) { $0 + $1.parked.count }
            if waiting == 0 { break }
            var fds = egress.filter { $0.fd >= 0 && $0.queue.unwrittenBytes > 0 }.map { pollfd(fd: $0.fd, events: Int16(POLLOUT), revents: 0) }
            _ = poll(&fds, nfds_t(fds.count), 20)
        }
        let undelivered = egress.reduce(0) { $0 + $1.queue.count } + routes.values.reduce(0) { $0 + $1.parked.count }
        if undelivered > 0 {
            logger.error("stopped with frames undelivered", metadata: ["frames": "\(undelivered)"])
        }
        writeStatus(force: true, stopping: true)
        for pipe in ingress + draining where pipe.fd >= 0 { close(pipe.fd) }
        for pipe in egress where pipe.fd >= 0 { close(pipe.fd) }
        logger.info("stopped")
        return .stopped(undelivered: undelivered)
    }
}

/// A small, fast PRNG for weighted choice (SplitMix64). Not for secrets.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        return ShardHash.mix(state &- 0x9e37_79b9_7f4a_7c15)
    }
}
