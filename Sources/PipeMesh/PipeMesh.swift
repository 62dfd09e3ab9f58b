import Foundation
import Glibc
import PMMWire
public import SwiftProtobuf

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

    /// Announces a running instance of `service`. Only the service's own uid (or root) may.
    ///
    /// - Parameters:
    ///   - dataType: restrict the answer to one data type.
    ///   - maxRate: narrow the service's rate (messages/s) for its data types.
    ///   - instance: the instance wanted (`api-1`); by default the first free replica.
    public func register(service: String, dataType: String? = nil, maxRate: UInt64 = 0, instance: String? = nil) throws(PipeMeshError) -> Registration {
        let response = try call { request in
            request.registerService = .with {
                $0.serviceID = service
                $0.dataType = dataType ?? ""
                $0.maxRate = maxRate
                $0.instance = instance ?? ""
            }
        }
        return Registration(mesh: self, response.registration)
    }

    /// Withdraws registrations of `service`: `instance`, or every one the calling process made.
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

    /// Tells the server `instance` is alive.
    public func heartbeat(instance: String) throws(PipeMeshError) {
        _ = try call { request in request.heartbeat = .with { $0.instance = instance } }
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

    init(mesh: PipeMesh, _ message: Pmm_V1_Registration) {
        self.mesh = mesh
        service = message.serviceID
        instance = message.instance
        ingress = Dictionary(uniqueKeysWithValues: message.ingress.map { ($0.dataType, $0.paths) })
        egress = Dictionary(uniqueKeysWithValues: message.egress.compactMap { list in list.paths.first.map { (list.dataType, $0) } })
        versions = message.versions
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
    /// cancelled (or the process exits).
    public func startHeartbeats(every interval: Double = 5) -> Heartbeats {
        let heartbeats = Heartbeats()
        let (mesh, instance) = (self.mesh, self.instance)
        let thread = Thread {
            while !heartbeats.isCancelled {
                try? mesh.heartbeat(instance: instance)
                Thread.sleep(forTimeInterval: interval)
            }
        }
        thread.start()
        return heartbeats
    }
}

/// Stops the heartbeats of a registration.
public final class Heartbeats: @unchecked Sendable {
    private let lock = NSLock()
    private var cancelled = false

    public var isCancelled: Bool { lock.withLock { cancelled } }

    public func cancel() { lock.withLock { cancelled = true } }
}
