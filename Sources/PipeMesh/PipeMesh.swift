import Foundation
import Glibc
import PMMWire
public import SwiftProtobuf
import Synchronization

/// The client of a pmm mesh: talks to `pmm serve` on `<state-dir>/pmm.sock` (RegisterService,
/// DeregisterService, GetPipeName, SetRoutingRule) and opens producers and consumers on the pipes it names.
///
/// ```swift
/// let mesh = try PipeMesh(stateDirectory: "/var/lib/pmm")
/// let me = try mesh.register(service: "api")
/// let metrics = try me.producer(for: "metrics", of: Shop_Metrics_V2_Sample.self)
/// try await metrics.send(sample, shardKey: "host-7")
/// ```
///
/// Each call opens its own connection, so a `PipeMesh` may be shared between tasks.
public final class PipeMesh: Sendable {
    /// The control socket's path.
    public let socketPath: String

    /// - Parameter stateDirectory: pmm's state directory (default: `PMM_STATE_DIR`, else `/var/lib/pmm`).
    public init(stateDirectory: String? = nil) {
        let directory = stateDirectory ?? ProcessInfo.processInfo.environment["PMM_STATE_DIR"] ?? "/var/lib/pmm"
        socketPath = directory + "/pmm.sock"
    }

    /// Sends one request and returns the server's answer, throwing its refusal.
    func call(_ build: (inout Pmm_V1_Request) -> Void) throws(PipeMeshError) -> Pmm_V1_Response {
        let socket = try UnixSocket(connectingTo: socketPath)
        var request = Pmm_V1_Request()
        request.id = 1
        build(&request)
        do { try socket.send(request.framed()) } catch let error as PipeMeshError { throw error } catch {
            throw .protocolError("cannot encode the request: \(error)")
        }
        let body = try socket.receive()
        let response: Pmm_V1_Response
        do { response = try Pmm_V1_Response(serializedBytes: body) } catch {
            throw .protocolError("cannot decode the answer: \(error)")
        }
        guard response.ok else { throw .refused(response.error) }
        return response
    }

    /// Announces a running instance of `service` and takes a lease on it. Only the service's own uid (or root)
    /// may.
    ///
    /// The lease lives with a process (by default the calling one), for a time (`ttl`), or both; with
    /// `heartbeatInterval` it also needs a heartbeat at least every three intervals (`startHeartbeats`). A
    /// consumer service with `registration: required` is routed frames only while an instance holds a lease.
    ///
    /// - Parameters:
    ///   - dataType: restrict the answer to one data type.
    ///   - maxRate: narrow the service's rate (messages/s) for its data types.
    ///   - instance: the instance wanted (`api-1`); by default the first free replica.
    ///   - pid: the process the lease lives with (of the caller's uid; root may name any). Nil: the calling
    ///     process, unless `ttl` is given, in which case the lease lives with no process.
    ///   - ttl: seconds the lease lasts after the registration and after each heartbeat.
    ///   - heartbeatInterval: the heartbeat period promised; three missed and the lease expires.
    ///   - capacity: a consumer's expected volume (messages/s), which `least-loaded` weighs.
    public func register(
        service: String, dataType: String? = nil, maxRate: UInt64 = 0, instance: String? = nil, pid: Int32? = nil, ttl: Double? = nil,
        heartbeatInterval: Double? = nil, capacity: UInt64 = 0
    ) throws(PipeMeshError) -> Registration {
        let response = try call { request in
            request.registerService = .with {
                $0.serviceID = service
                $0.dataType = dataType ?? ""
                $0.maxRate = maxRate
                $0.instance = instance ?? ""
                $0.pid = pid ?? 0
                $0.ttlSeconds = ttl ?? 0
                $0.heartbeatSeconds = heartbeatInterval ?? 0
                $0.capacity = capacity
            }
        }
        return Registration(mesh: self, response.registration)
    }

    /// Ends leases of `service`: `instance`'s, or else those the calling process holds, or else the service's
    /// only registered instance's. The service's uid (or root) may end any of its instances' leases, whoever
    /// made them. The instance leaves routing at once.
    public func deregister(service: String, instance: String? = nil) throws(PipeMeshError) {
        _ = try call { request in
            request.deregisterService = .with {
                $0.serviceID = service
                $0.instance = instance ?? ""
            }
        }
    }

    /// The ingress pipe of the calling service (or, for root, of `service`) for a key: path and shard.
    public func pipeName(dataType: String, shardKey: [UInt8], service: String? = nil) throws(PipeMeshError) -> (path: String, shard: Int) {
        let response = try call { request in
            request.getPipeName = .with {
                $0.dataType = dataType
                $0.shardKey = Data(shardKey)
                $0.serviceID = service ?? ""
            }
        }
        return (response.pipeName.path, Int(response.pipeName.shard))
    }

    /// Sets a routing weight at run time (root or the mesh's admin uid only).
    public func setRoutingRule(dataType: String, service: String, weight: UInt32) throws(PipeMeshError) {
        _ = try call { request in
            request.setRoutingRule = .with {
                $0.dataType = dataType
                $0.serviceID = service
                $0.weight = weight
            }
        }
    }

    /// Renews `instance`'s lease (its ttl starts again).
    ///
    /// - Parameter interval: when given, the next heartbeat is promised within this many seconds: three
    ///   missed and the lease expires.
    /// - Throws: `.refused` when the lease has ended (register again).
    public func heartbeat(instance: String, interval: Double? = nil) throws(PipeMeshError) {
        _ = try call { request in
            request.heartbeat = .with {
                $0.instance = instance
                $0.intervalSeconds = interval ?? 0
            }
        }
    }
}

/// What `register` answers: the instance's name and the pipes it writes and reads.
public struct Registration: Sendable {
    public let mesh: PipeMesh
    public let service: String
    public let instance: String
    /// Ingress pipe paths by data type, in shard order.
    public let ingress: [String: [String]]
    /// The egress pipe path by data type.
    public let egress: [String: String]
    /// The schema version the spec declares per data type (0: unversioned).
    public let versions: [String: UInt32]
    /// The process the lease lives with (0: none).
    public let leasePID: Int32
    /// Seconds the lease lasts after each renewal (0: no time limit).
    public let ttl: Double

    init(mesh: PipeMesh, _ message: Pmm_V1_Registration) {
        self.mesh = mesh
        service = message.serviceID
        instance = message.instance
        ingress = Dictionary(uniqueKeysWithValues: message.ingress.map { ($0.dataType, $0.paths) })
        egress = Dictionary(uniqueKeysWithValues: message.egress.compactMap { list in list.paths.first.map { (list.dataType, $0) } })
        versions = message.versions
        leasePID = message.leasePid
        ttl = message.ttlSeconds
    }

    /// A producer of `dataType` messages of type `Message`.
    public func producer<Message: SwiftProtobuf.Message>(for dataType: String, of: Message.Type = Message.self) throws(PipeMeshError) -> Producer<Message> {
        guard let paths = ingress[dataType], !paths.isEmpty else { throw .notRegistered(dataType: dataType) }
        return Producer(dataType: dataType, version: versions[dataType] ?? 0, source: service, paths: paths)
    }

    /// The messages routed to this instance, decoded as `Message` (every version the router sends it; see
    /// `Consumer`).
    ///
    /// - Parameters:
    ///   - bufferSize: messages read ahead of the app, at most; past that the pipe fills and the router routes
    ///     elsewhere.
    ///   - onSkip: called (on the reader thread) for each frame that could not be handed over.
    public func consumer<Message: SwiftProtobuf.Message>(
        for dataType: String, of: Message.Type = Message.self, bufferSize: Int = 256, onSkip: (@Sendable (SkippedFrame) -> Void)? = nil
    ) throws(PipeMeshError) -> Consumer<Message> {
        guard let path = egress[dataType] else { throw .notRegistered(dataType: dataType) }
        return Consumer(dataType: dataType, version: versions[dataType] ?? 0, path: path, bufferSize: bufferSize, onSkip: onSkip)
    }

    /// Sends a heartbeat every `interval` seconds on a background thread until the returned handle is
    /// cancelled (or the process exits). Each heartbeat promises the next: once they stop, the lease expires
    /// after three intervals. A refused heartbeat (the lease has ended) is kept in `lastError`, and the
    /// beats go on (an instance that registers again under the same name is kept alive again).
    public func startHeartbeats(every interval: Double = 5) -> Heartbeats {
        let heartbeats = Heartbeats()
        let (mesh, instance) = (self.mesh, self.instance)
        Thread { _ = Self.beat(mesh, instance, every: interval, until: heartbeats, stopWhenRefused: false) }.start()
        return heartbeats
    }

    /// Sends a heartbeat every `interval` seconds until the task is cancelled; each promises the next, so the
    /// lease expires three intervals after they stop.
    ///
    /// The beats come from a thread of their own, not from the task: a cooperative pool kept busy by other
    /// work cannot make the lease miss them.
    ///
    /// - Throws: `CancellationError` when cancelled; `.refused` when the lease has ended (register again).
    ///   A server that does not answer is tried again at the next beat.
    public func sendHeartbeats(every interval: Double = 5) async throws {
        let heartbeats = Heartbeats()
        let (mesh, instance) = (self.mesh, self.instance)
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                Thread {
                    if let refusal = Self.beat(mesh, instance, every: interval, until: heartbeats, stopWhenRefused: true) {
                        continuation.resume(throwing: refusal)
                    } else {
                        continuation.resume(throwing: CancellationError())
                    }
                }.start()
            }
        } onCancel: {
            heartbeats.cancel()
        }
    }

    /// The heartbeat loop: until `heartbeats` is cancelled, or (when `stopWhenRefused`) the server refuses
    /// one, which it returns.
    static func beat(
        _ mesh: PipeMesh, _ instance: String, every interval: Double, until heartbeats: Heartbeats, stopWhenRefused: Bool
    ) -> PipeMeshError? {
        while !heartbeats.isCancelled {
            do throws(PipeMeshError) {
                try mesh.heartbeat(instance: instance, interval: interval)
                heartbeats.record(nil)
            } catch {
                heartbeats.record(error)
                if stopWhenRefused, case .refused = error { return error }
            }
            heartbeats.sleep(interval)
        }
        return nil
    }
}

/// The heartbeats `startHeartbeats` sends on its thread: cancel them, or read how the last one went.
/// Thread-safe.
public final class Heartbeats: Sendable {
    private struct State {
        var cancelled = false
        var lastError: PipeMeshError?
    }

    private let state = Mutex(State())
    /// Wakes the sleeping thread at once on `cancel()`.
    private let wake = DispatchSemaphore(value: 0)

    public var isCancelled: Bool { state.withLock { $0.cancelled } }

    /// Why the last heartbeat failed (nil when it was answered); `.refused` means the lease has ended.
    public var lastError: PipeMeshError? { state.withLock { $0.lastError } }

    /// Stops the heartbeats: none is sent after this returns, except one already on its way.
    public func cancel() {
        state.withLock { $0.cancelled = true }
        wake.signal()
    }

    func record(_ error: PipeMeshError?) { state.withLock { $0.lastError = error } }

    func sleep(_ seconds: Double) { _ = wake.wait(timeout: .now() + seconds) }
}
