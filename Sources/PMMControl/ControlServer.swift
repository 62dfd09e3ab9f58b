import Foundation
import Glibc
public import Logging
import PMMCore
public import PMMReconciler
import PMMRegistry
public import PMMSystem
import PMMWire
import SwiftProtobuf

/// `SO_PEERCRED` (Linux): the connecting process's pid, uid and gid, as the kernel knows them.
let SO_PEERCRED: Int32 = 17

/// The caller of a request, from SO_PEERCRED: who it is, not who it says it is.
public struct PeerCredentials: Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32
}

/// Settings of `pmm serve`.
public struct ControlOptions: Sendable {
    /// Seconds between self-heal rounds.
    public var interval: Double = 5
    /// Seconds between checks of leases (a process gone, a ttl passed, three heartbeats missed): how late a
    /// lease may end.
    public var leaseCheckInterval: Double = 0.25
    /// A connection that sends nothing for this long is closed.
    public var idleTimeout: Double = 30
    /// At most this many connections at once; more are closed at accept.
    public var maximumClients = 1024
    /// At most this many connections per uid (root exempt); more are closed at accept, so that one user cannot
    /// hold every slot of `maximumClients`.
    public var maximumClientsPerUID = 64
    /// The largest request accepted, in bytes.
    public var maximumRequest = 64 << 10
    /// Answers a connection may leave unread, in bytes; beyond this it is closed (a client that sends and never
    /// reads would otherwise grow the server without bound).
    public var maximumUnreadReplies = 1 << 20
    /// Requests per second per uid (a token bucket shared by that uid's connections); 0: no limit. Root is
    /// exempt: it may stop the server anyway, and the operator's own commands must never be refused.
    public var rateLimit: Double = 200
    /// Requests a uid may send at once before `rateLimit` applies (the bucket's size).
    public var rateBurst: Double = 400
    /// Per kind and uid, events caused by clients (refusals, rate limits, malformed requests, dropped
    /// connections) are logged one by one at most once per this many seconds; the rest are counted and summed
    /// up in one event when the window ends.
    public var eventWindow: Double = 10

    public init() {}
}

/// The control plane: the API on `<state-dir>/pmm.sock` and the self-heal loop.
///
/// One thread, one poll loop over the listening socket, its clients and the signal pipe. Every request is
/// answered in order on its connection; a malformed or oversized one closes that connection only. Callers
/// are identified with SO_PEERCRED; every refusal is an answer with a reason and an event in the registry.
public final class ControlServer {
    let reconciler: Reconciler
    let state: StateDirectory
    let options: ControlOptions
    let logger: Logger
    /// The spec file `SIGHUP` re-reads and applies, if any.
    let specPath: String?
    let rootOverride: String?
    let listener: Int32
    var clients: [Int32: Client] = [:]
    /// Open connections per uid, for `maximumClientsPerUID`.
    var connectionsByUID: [UInt32: Int] = [:]
    var lastHeal: UInt64 = 0
    var lastLeaseCheck: UInt64 = 0
    /// A descriptor kept in reserve so a connection can be refused when the process runs out of them.
    var spare: Int32 = open("/dev/null", O_RDONLY | O_CLOEXEC)
    public private(set) var counters = Counters()
    var limiter: RateLimiter
    var throttle: EventThrottle
    /// Something the router must load happened in this pass of the loop; it is told once, at the end of the pass.
    var routerSignalPending = false

    public struct Counters: Sendable {
        public var requests = 0
        public var refusals = 0
        public var malformed = 0
        public var repairs = 0
        /// Requests answered "rate limited" (also counted in `refusals`).
        public var rateLimited = 0
        /// Connections closed for leaving more than `maximumUnreadReplies` unread.
        public var unreadLimit = 0
        /// Connections closed at accept because their uid held `maximumClientsPerUID` already.
        public var perUIDLimit = 0
        /// Router signals and reloads saved by coalescing several in one pass of the loop.
        public var coalesced = 0
    }

    final class Client {
        let fd: Int32
        let peer: PeerCredentials
        var inbound: MessageBuffer
        var outbound: [UInt8] = []
        var lastActivity: UInt64
        /// Closed by `drop`: its descriptor is not this client's any more (it may already be another's), so it
        /// is never read, written or closed again.
        var dropped = false

        init(fd: Int32, peer: PeerCredentials, maximumRequest: Int, now: UInt64) {
            self.fd = fd
            self.peer = peer
            self.inbound = MessageBuffer(maximumSize: maximumRequest)
            self.lastActivity = now
        }
    }

    /// Listens on `<state-dir>/pmm.sock` (replacing a stale socket file; refusing when another server answers).
    public init(
        reconciler: Reconciler, specPath: String?, rootOverride: String? = nil, options: ControlOptions = ControlOptions(), logger: Logger
    ) throws(FIFOError) {
        self.reconciler = reconciler
        self.state = reconciler.state
        self.specPath = specPath
        self.rootOverride = rootOverride
        self.options = options
        self.logger = logger
        limiter = RateLimiter(rate: options.rateLimit, burst: options.rateBurst)
        throttle = EventThrottle(seconds: options.eventWindow)
        listener = try Self.listen(at: reconciler.state.socketPath)
    }

    deinit {
        for fd in clients.keys { close(fd) }
        close(listener)
        unlink(state.socketPath)
    }

    static func listen(at path: String) throws(FIFOError) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw FIFOError(.systemCall, path: path, "socket failed") }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw FIFOError(.systemCall, path: path, "the socket path is too long", hint: "use a shorter --state-dir")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        func bindIt() -> Int32 {
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
        }
        if bindIt() != 0 {
            guard errno == EADDRINUSE else {
                let message = String(cString: strerror(errno))
                close(fd)
                throw FIFOError(.systemCall, path: path, "cannot bind: \(message)")
            }
            // A socket file is there: another live server, or one left by a server that died.
            let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            let alive = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(probe, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            } == 0
            close(probe)
            if alive {
                close(fd)
                throw FIFOError(.locked, path: path, "another pmm serve answers on this socket")
            }
            unlink(path)
            guard bindIt() == 0 else {
                close(fd)
                throw FIFOError(.systemCall, path: path, "cannot bind: \(String(cString: strerror(errno)))")
            }
        }
        // Services of other uids connect; who they are is checked per request (SO_PEERCRED).
        chmod(path, 0o666)
        guard Glibc.listen(fd, 128) == 0 else {
            close(fd)
            throw FIFOError(.systemCall, path: path, "cannot listen: \(String(cString: strerror(errno)))")
        }
        return fd
    }

    // MARK: The loop

    /// Serves until SIGTERM/SIGINT; SIGHUP re-reads the spec file and applies it.
    ///
    /// - Parameter onChange: called after anything the router must load (a new revision, a routing rule, a
    ///   repair), e.g. to send it SIGHUP; at most once per pass of the loop, however many changes the pass made.
    ///   Likewise several SIGHUPs that arrive within one pass cause one reload.
    public func run(signals: SignalPipe, onChange: () -> Void) {
        logger.info("serving the control API", metadata: ["socket": "\(state.socketPath)"])
        do { try ServiceManager.notifyReady() } catch { logger.warning("cannot tell the service manager pmm serve is ready: \(error)") }
        heal(onChange: noteChange)
        while true {
            if routerSignalPending {
                routerSignalPending = false
                onChange()
            }
            var fds = [pollfd(fd: signals.readFD, events: Int16(POLLIN), revents: 0), pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            let order = Array(clients.keys)
            for fd in order {
                let events = Int16(POLLIN) | (clients[fd]!.outbound.isEmpty ? 0 : Int16(POLLOUT))
                fds.append(pollfd(fd: fd, events: events, revents: 0))
            }
            _ = poll(&fds, nfds_t(fds.count), 200)
            if fds[0].revents != 0 {
                var reloaded = false
                for signal in signals.drain() {
                    switch signal {
                    case .reload where reloaded:
                        counters.coalesced += 1
                    case .reload:
                        reload(onChange: noteChange)
                        reloaded = true
                    case .stop:
                        logger.info("stopping the control API")
                        if routerSignalPending { onChange() }
                        return
                    }
                }
            }
            if fds[1].revents != 0 { acceptClients() }
            let now = monotonicNanos()
            for (slot, fd) in order.enumerated() {
                guard let client = clients[fd] else { continue }
                let revents = fds[slot + 2].revents
                if revents & Int16(POLLOUT) != 0 { flush(client) }
                if !client.dropped, revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 { read(client, now: now) }
            }
            for client in clients.values where now - client.lastActivity > UInt64(options.idleTimeout * 1e9) {
                logger.debug("closing an idle connection", metadata: ["pid": "\(client.peer.pid)"])
                drop(client)
            }
            for summary in throttle.expired(now: now) { event(summary.kind, summary.message) }
            if now - lastHeal >= UInt64(options.interval * 1e9) {
                limiter.prune(now: now)
                heal(onChange: noteChange)
            }
            // (heal checks leases too, after `now` was read: lastLeaseCheck may be later than now.)
            if now >= lastLeaseCheck + UInt64(options.leaseCheckInterval * 1e9) { endLeases(onChange: noteChange) }
        }
    }

    /// Marks that the router must load something; `run` tells it once, at the end of the pass.
    func noteChange() {
        if routerSignalPending { counters.coalesced += 1 }
        routerSignalPending = true
    }

    func acceptClients() {
        while true {
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else {
                if errno == EMFILE || errno == ENFILE { shedOneConnection() }
                return
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            guard clients.count < options.maximumClients else {
                logger.warning("too many connections; refusing one", metadata: ["limit": "\(options.maximumClients)"])
                close(fd)
                continue
            }
            var credentials = (pid: Int32(0), uid: UInt32(0), gid: UInt32(0))
            var length = socklen_t(MemoryLayout.size(ofValue: credentials))
            guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0 else {
                close(fd)
                continue
            }
            let peer = PeerCredentials(pid: credentials.pid, uid: credentials.uid, gid: credentials.gid)
            if peer.uid != 0, connectionsByUID[peer.uid, default: 0] >= options.maximumClientsPerUID {
                close(fd)
                counters.perUIDLimit += 1
                clientEvent(
                    "dropped", peer, "uid \(peer.uid) holds \(options.maximumClientsPerUID) connections already (the limit per uid); connection closed",
                    now: monotonicNanos())
                continue
            }
            connectionsByUID[peer.uid, default: 0] += 1
            clients[fd] = Client(fd: fd, peer: peer, maximumRequest: options.maximumRequest, now: monotonicNanos())
        }
    }

    /// Out of descriptors: the waiting connection would keep the listener readable and the loop spinning.
    /// Give back the spare descriptor, take the connection off the backlog and close it, take the spare again.
    func shedOneConnection() {
        if spare >= 0 { close(spare) }
        let fd = accept(listener, nil, nil)
        if fd >= 0 { close(fd) }
        spare = open("/dev/null", O_RDONLY | O_CLOEXEC)
        logger.warning("out of file descriptors; refused a connection", metadata: ["clients": "\(clients.count)"])
    }

    /// Reads what `client` sent and answers every whole request in it, in order. Stops as soon as the client
    /// is dropped (a failed send, too many unread answers): the rest of what it sent is not acted on.
    func read(_ client: Client, now: UInt64) {
        guard !client.dropped else { return }
        var chunk = [UInt8](repeating: 0, count: 16 << 10)
        let n = recv(client.fd, &chunk, chunk.count, 0)
        if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) { return drop(client) }
        guard n > 0 else { return }
        client.lastActivity = now
        client.inbound.append(chunk[0..<n])
        do {
            while !client.dropped, let body = try client.inbound.next() {
                guard let request = try? Pmm_V1_Request(serializedBytes: body) else {
                    counters.malformed += 1
                    clientEvent("malformed", client.peer, "a request that is not a pmm.v1.Request; connection closed", now: now)
                    return drop(client)
                }
                counters.requests += 1
                let response: Pmm_V1_Response
                if client.peer.uid != 0, let wait = limiter.take(uid: client.peer.uid, now: now) {
                    counters.refusals += 1
                    counters.rateLimited += 1
                    response = rateLimited(request, peer: client.peer, retryIn: wait)
                    clientEvent("rate-limited", client.peer, response.error, now: now)
                } else {
                    response = handle(request, from: client.peer, onChange: noteChange)
                    if !response.ok {
                        counters.refusals += 1
                        clientEvent("refused", client.peer, response.error, now: now)
                    }
                }
                client.outbound += (try? response.framed()) ?? []
                if client.outbound.count > options.maximumUnreadReplies {
                    counters.unreadLimit += 1
                    clientEvent(
                        "dropped", client.peer,
                        "\(client.outbound.count) bytes of answers unread (limit \(options.maximumUnreadReplies)); connection closed", now: now)
                    return drop(client)
                }
                flush(client)
            }
        } catch {
            counters.malformed += 1
            clientEvent("malformed", client.peer, "\(error); connection closed", now: now)
            drop(client)
        }
    }

    /// The answer to a request over its uid's rate: a refusal that says when to try again.
    func rateLimited(_ request: Pmm_V1_Request, peer: PeerCredentials, retryIn seconds: Double) -> Pmm_V1_Response {
        var response = Pmm_V1_Response()
        response.id = request.id
        response.ok = false
        let retry = seconds < 0.001 ? "0.001" : String(format: "%.3f", seconds)
        response.error =
            "rate limited: uid \(peer.uid) sent more than \(Self.number(options.rateLimit)) requests/s "
            + "(burst \(Self.number(options.rateBurst))); retry in \(retry) s"
        return response
    }

    static func number(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : String(value)
    }

    func flush(_ client: Client) {
        guard !client.dropped else { return }
        while !client.outbound.isEmpty {
            let n = client.outbound.withUnsafeBytes { send(client.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                client.outbound.removeFirst(n)
            } else {
                if n < 0 && (errno == EAGAIN || errno == EINTR) { return }
                return drop(client)
            }
        }
    }

    /// Closes a client's connection, once: a dropped client is never closed again (its descriptor number may
    /// belong to another connection or file by then).
    func drop(_ client: Client) {
        guard !client.dropped else { return }
        client.dropped = true
        client.outbound = []
        close(client.fd)
        if clients[client.fd] === client { clients[client.fd] = nil }
        let remaining = connectionsByUID[client.peer.uid, default: 1] - 1
        connectionsByUID[client.peer.uid] = remaining > 0 ? remaining : nil
    }

    func event(_ kind: String, _ message: String) {
        logger.notice("\(kind): \(message)")
        try? reconciler.registry.event(kind: kind, message: message, at: timestamp)
    }

    /// An event a client caused, through the throttle: one per kind and uid per `eventWindow` in full, the
    /// others summed up when the window ends.
    func clientEvent(_ kind: String, _ peer: PeerCredentials, _ message: String, now: UInt64) {
        let text = "pid \(peer.pid) uid \(peer.uid): \(message)"
        let admitted = throttle.admit(kind: kind, uid: peer.uid, message: text, now: now)
        if let closed = admitted.closed { event(closed.kind, closed.message) }
        if admitted.write { event(kind, text) }
    }

    var timestamp: String { ISO8601DateFormatter().string(from: Date()) }

    // MARK: Self-heal and reload

    /// Repairs drift and ends leases that have ended.
    func heal(onChange: () -> Void) {
        lastHeal = monotonicNanos()
        do {
            if let plan = try reconciler.repair(), !plan.isEmpty {
                counters.repairs += 1
                logger.notice(
                    "self-heal repaired drift",
                    metadata: ["changes": "\(plan.changes.map { "\($0.action.symbol) \($0.name)" }.joined(separator: ", "))"])
                onChange()
            }
        } catch {
            logger.error("self-heal failed", metadata: ["error": "\(error)"])
        }
        endLeases(onChange: onChange)
    }

    /// Removes the leases that have ended (process gone, ttl passed, three heartbeats missed), each with an
    /// event, and has the router reload at once when it routed by one of them.
    func endLeases(onChange: () -> Void) {
        lastLeaseCheck = monotonicNanos()
        do {
            let now = Date().timeIntervalSince1970
            let ended = try reconciler.registry.instances().compactMap { record in
                record.leaseEnd(now: now, processAlive: ProcessTable.isAlive(pid: record.pid, startTime: record.pidStartTime)).map { (record, $0) }
            }
            guard !ended.isEmpty else { return }
            let spec = try reconciler.currentRevision(runtime: false)?.spec
            var changed = false
            for (record, end) in ended {
                guard try reconciler.registry.deregister(instance: record.instance) else { continue }
                event(end.kind, "\(record.instance): \(end); it leaves routing")
                changed = changed || spec.map { affectsRouting(record, in: $0) } ?? true
            }
            if changed { onChange() }
        } catch {
            logger.error("cannot check leases", metadata: ["error": "\(error)"])
        }
    }

    /// SIGHUP: re-read the spec file and apply it; an invalid spec is refused and the current revision stays.
    func reload(onChange: () -> Void) {
        guard let specPath else {
            logger.info("SIGHUP: no spec file (-f) to re-read; repairing instead")
            return heal(onChange: onChange)
        }
        do {
            let loaded = LoadedSpec.load(try SpecFile.read(specPath), rootOverride: rootOverride, schemas: .optional)
            let report = try reconciler.apply(loaded, prune: false, dryRun: false, source: "serve (SIGHUP)")
            if let revision = report.revision {
                logger.notice("SIGHUP: applied the spec", metadata: ["revision": "\(revision.number)", "summary": "\(revision.summary)"])
            } else {
                logger.info("SIGHUP: the spec has not changed")
            }
            if report.routerNeedsReload { onChange() }
        } catch let error as PMMError {
            event("reload-refused", "SIGHUP: \(specPath): \(error); the current revision keeps serving")
        } catch {
            event("reload-refused", "SIGHUP: \(specPath): \(error); the current revision keeps serving")
        }
    }
}
