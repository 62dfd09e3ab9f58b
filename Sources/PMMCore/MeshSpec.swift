/// The parsed, defaulted model of a `mesh.yaml` document (`apiVersion: pmm/v1`, `kind: Mesh`).
///
/// Every default from DESIGN.md is already filled in, so consumers never look for absent values.
/// Collections are kept sorted by name so that equal specs compare equal and plans are deterministic.
public struct MeshSpec: Hashable, Sendable {
    public static let apiVersion = "pmm/v1"
    public static let kind = "Mesh"

    public var apiVersion: String
    public var kind: String
    /// The mesh's name, `[a-z][a-z0-9-]*`.
    public var name: String
    /// The absolute directory holding this mesh's pipes.
    public var root: String
    /// The gid the router reads ingress pipes and writes egress pipes as; the group of every pipe.
    public var routerGroup: UInt32
    /// A uid besides root that may change routing rules at run time (`SetRoutingRule`), if any.
    public var adminUID: UInt32?
    public var dataTypes: [DataType]
    public var services: [Service]
    public var routes: [Route]
    /// The hosts of a multi-node mesh, by name (empty: one host).
    public var nodes: [MeshNode]
    /// Mutual TLS between the nodes' routers; nil: plaintext links.
    public var linkTLS: LinkTLS?
    /// Run time, not in the file: the instances that hold a lease now (`RegisterService`), by instance name.
    /// `Reconciler.currentRevision` fills it from the registry; a spec as written holds none. An instance of
    /// a service with `registration: required` is routed only while it is here.
    public var leases: [String: InstanceLease] = [:]

    public init(
        apiVersion: String = MeshSpec.apiVersion,
        kind: String = MeshSpec.kind,
        name: String,
        root: String,
        routerGroup: UInt32 = 0,
        adminUID: UInt32? = nil,
        dataTypes: [DataType] = [],
        services: [Service] = [],
        routes: [Route] = [],
        nodes: [MeshNode] = [],
        linkTLS: LinkTLS? = nil
    ) {
        self.apiVersion = apiVersion
        self.kind = kind
        self.name = name
        self.root = root
        self.routerGroup = routerGroup
        self.adminUID = adminUID
        self.dataTypes = dataTypes.sorted { $0.name < $1.name }
        self.services = services.sorted { $0.name < $1.name }
        self.routes = routes.sorted { $0.dataType < $1.dataType }
        self.nodes = nodes.sorted { $0.name < $1.name }
        self.linkTLS = linkTLS
    }

    public func node(named name: String) -> MeshNode? { nodes.first { $0.name == name } }

    public func dataType(named name: String) -> DataType? { dataTypes.first { $0.name == name } }
    public func service(named name: String) -> Service? { services.first { $0.name == name } }
    public func route(for dataType: String) -> Route? { routes.first { $0.dataType == dataType } }

    /// Whether `instance` of `service` may receive frames now: always under `registration: optional`, only
    /// while it holds a lease under `required`.
    public func isRouted(instance: String, of service: Service) -> Bool {
        service.registration == .optional || leases[instance] != nil
    }
}

/// What the router needs to know of an instance's lease.
public struct InstanceLease: Hashable, Sendable {
    /// The expected volume (messages/s) it registered with, which `least-loaded` weighs; 0 when it gave none.
    public var capacity: Int

    public init(capacity: Int = 0) {
        self.capacity = capacity
    }
}

/// Whether a consumer service's instances must hold a lease to receive frames.
public enum RegistrationPolicy: String, Hashable, Sendable, CaseIterable {
    /// Every replica is routed, registered or not (the default).
    case optional
    /// Only instances holding a lease (`RegisterService`) are routed.
    case required
}

/// A kind of message that flows through the mesh.
public struct DataType: Hashable, Sendable {
    public var name: String
    /// How many ingress pipes each producer has for this type; a shard key picks one (see `ShardHash`).
    public var shards: Int
    public var compatibility: Compatibility
    /// Declared schema versions, in the order the file lists them.
    public var versions: [SchemaVersion]
    /// Defaults for every producer and consumer of this type.
    public var qos: QoS

    public init(
        name: String, shards: Int = 1, compatibility: Compatibility = .backward, versions: [SchemaVersion] = [],
        qos: QoS = QoS()
    ) {
        self.name = name
        self.shards = shards
        self.compatibility = compatibility
        self.versions = versions
        self.qos = qos
    }

    /// The newest declared version, or nil for an unversioned type.
    public var latestVersion: Int? { versions.map(\.version).max() }
}

/// How versions of a data type may differ.
public enum Compatibility: String, Hashable, Sendable, CaseIterable {
    case none, backward, forward, full
}

/// One schema version of a data type.
public struct SchemaVersion: Hashable, Sendable {
    public var version: Int
    /// The `.proto` file, relative to the spec file.
    public var schema: String
    /// The fully qualified message name, e.g. `shop.metrics.v1.Sample`.
    public var message: String

    public init(version: Int, schema: String, message: String) {
        self.version = version
        self.schema = schema
        self.message = message
    }
}

/// Delivery guarantee for a data type.
public enum Delivery: String, Hashable, Sendable, CaseIterable {
    case atMostOnce = "at-most-once"
    case atLeastOnce = "at-least-once"
}

/// What the router does when a consumer instance's buffer is full.
public enum Overflow: String, Hashable, Sendable, CaseIterable {
    case block
    case dropOldest = "drop-oldest"
    case deadLetter = "dead-letter"
}

/// Quality of service for a data type, fully defaulted.
public struct QoS: Hashable, Sendable {
    public var delivery: Delivery
    /// Messages per second per producing service; 0 means unlimited.
    public var maxRate: Int
    /// Token-bucket depth; defaults to one second's worth (`maxRate`).
    public var burst: Int
    /// Messages the router holds per consumer instance.
    public var buffer: Int
    public var overflow: Overflow
    /// Bytes for F_SETPIPE_SZ, or nil for the kernel's default.
    public var pipeSize: Int?

    public init(
        delivery: Delivery = .atLeastOnce, maxRate: Int = 0, burst: Int? = nil, buffer: Int = 10_000,
        overflow: Overflow = .block, pipeSize: Int? = nil
    ) {
        self.delivery = delivery
        self.maxRate = maxRate
        self.burst = burst ?? maxRate
        self.buffer = buffer
        self.overflow = overflow
        self.pipeSize = pipeSize
    }

    /// This QoS narrowed by a producer's or consumer's overrides.
    public func applying(_ override: QoSOverride) -> QoS {
        var result = self
        if let value = override.delivery { result.delivery = value }
        if let value = override.maxRate {
            result.maxRate = value
            if override.burst == nil, burst == 0 || burst > value { result.burst = value }
        }
        if let value = override.burst { result.burst = value }
        if let value = override.buffer { result.buffer = value }
        if let value = override.overflow { result.overflow = value }
        if let value = override.pipeSize { result.pipeSize = value }
        return result
    }
}

/// QoS keys a producer or consumer sets for itself; absent keys inherit the data type's.
public struct QoSOverride: Hashable, Sendable {
    public var delivery: Delivery?
    public var maxRate: Int?
    public var burst: Int?
    public var buffer: Int?
    public var overflow: Overflow?
    public var pipeSize: Int?

    public init(
        delivery: Delivery? = nil, maxRate: Int? = nil, burst: Int? = nil, buffer: Int? = nil,
        overflow: Overflow? = nil, pipeSize: Int? = nil
    ) {
        self.delivery = delivery
        self.maxRate = maxRate
        self.burst = burst
        self.buffer = buffer
        self.overflow = overflow
        self.pipeSize = pipeSize
    }
}

/// A service: a program run as `replicas` instances under one uid.
public struct Service: Hashable, Sendable {
    public var name: String
    public var uid: UInt32
    public var gid: UInt32
    public var replicas: Int
    public var produces: [Binding]
    public var consumes: [Binding]
    /// `required`: only instances holding a lease receive frames.
    public var registration: RegistrationPolicy
    /// Instances per node, in a mesh with `nodes:` (empty on one host). The loader fills it in for a service
    /// that names none: `replicas` instances on every node.
    public var placement: [String: Int]

    public init(
        name: String, uid: UInt32, gid: UInt32? = nil, replicas: Int = 1, produces: [Binding] = [],
        consumes: [Binding] = [], registration: RegistrationPolicy = .optional, placement: [String: Int] = [:]
    ) {
        self.name = name
        self.uid = uid
        self.gid = gid ?? uid
        self.replicas = replicas
        self.produces = produces
        self.consumes = consumes
        self.registration = registration
        self.placement = placement
    }

    /// The instance names: `collector-0`, `collector-1`, …; with a placement `collector-edge-a-0`, … per node,
    /// in node-name order, so changing one node's count never renames another's.
    public var instanceNames: [String] {
        guard !placement.isEmpty else { return (0..<max(0, replicas)).map { Naming.instance(service: name, index: $0) } }
        return placement.keys.sorted().flatMap { instances(on: $0) }
    }

    /// The instances placed on `node` (every instance when the service has no placement).
    public func instances(on node: String) -> [String] {
        guard !placement.isEmpty else { return instanceNames }
        return (0..<max(0, placement[node] ?? 0)).map { Naming.instance(service: name, node: node, index: $0) }
    }

    /// The node `instance` runs on, or nil on one host (or for a name that is not one of its instances).
    public func node(of instance: String) -> String? {
        placement.keys.sorted().first { instances(on: $0).contains(instance) }
    }

    /// Whether the service has instances on `node` (nil, or a service without placement: yes).
    public func runs(on node: String?) -> Bool {
        guard let node, !placement.isEmpty else { return true }
        return (placement[node] ?? 0) > 0
    }
}

/// A service's declaration that it produces or consumes a data type.
public struct Binding: Hashable, Sendable {
    public var dataType: String
    /// The schema version written or read; nil means the type's newest.
    public var version: Int?
    public var qos: QoSOverride
    /// A consumer's expected volume (messages/s) per instance, which `least-loaded` weighs; nil when not
    /// declared. Producers have none (their volume is `qos.maxRate`).
    public var capacity: Int?

    public init(dataType: String, version: Int? = nil, qos: QoSOverride = QoSOverride(), capacity: Int? = nil) {
        self.dataType = dataType
        self.version = version
        self.qos = qos
        self.capacity = capacity
    }
}

/// How messages of one data type choose their consumer.
public enum RoutingPolicy: String, Hashable, Sendable, CaseIterable {
    case shard
    case weighted
    case roundRobin = "round-robin"
    case leastLoaded = "least-loaded"
}

/// The routing of one data type: a policy and weighted target services.
public struct Route: Hashable, Sendable {
    public var dataType: String
    public var policy: RoutingPolicy
    public var targets: [RouteTarget]
    /// Across nodes: any healthy instance, or local ones first.
    public var locality: Locality

    public init(dataType: String, policy: RoutingPolicy = .shard, targets: [RouteTarget], locality: Locality = .any) {
        self.dataType = dataType
        self.policy = policy
        self.targets = targets
        self.locality = locality
    }
}

/// Which instances a route prefers in a multi-node mesh.
public enum Locality: String, Hashable, Sendable, CaseIterable {
    /// Every healthy instance, wherever it runs (the default).
    case any
    /// Healthy instances on the producing node first, then in the same `zone`, then anywhere.
    case preferLocal = "prefer-local"
}

/// A host of a multi-node mesh: it runs its own router and applies its own share of the pipes.
public struct MeshNode: Hashable, Sendable {
    public var name: String
    /// `host:port` where this node's router accepts links from the other routers.
    public var address: String
    /// Free-form labels; `zone` is what `locality: prefer-local` reads.
    public var labels: [String: String]

    public init(name: String, address: String, labels: [String: String] = [:]) {
        self.name = name
        self.address = address
        self.labels = labels
    }

    public var zone: String? { labels["zone"] }

    /// The host and port of `address`, or nil when it is not `host:port` (IPv6 as `[addr]:port`).
    public var hostAndPort: (host: String, port: Int)? {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]), (1...65_535).contains(port)
        else { return nil }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, !host.contains(where: { $0 == "/" || $0 == " " }) else { return nil }
        return (host, port)
    }
}

/// Mutual TLS between routers: the paths may use `${NODE}`, the name of the node reading the spec.
public struct LinkTLS: Hashable, Sendable {
    public var ca: String
    public var cert: String
    public var key: String

    public init(ca: String, cert: String, key: String) {
        self.ca = ca
        self.cert = cert
        self.key = key
    }

    /// The paths as node `node` reads them.
    public func resolved(for node: String) -> LinkTLS {
        LinkTLS(ca: Self.replacingNode(ca, node), cert: Self.replacingNode(cert, node), key: Self.replacingNode(key, node))
    }

    static func replacingNode(_ path: String, _ node: String) -> String {
        path.replacing("${NODE}", with: node)
    }
}

/// A consuming service a route sends to, with its relative weight.
public struct RouteTarget: Hashable, Sendable {
    public var service: String
    public var weight: Int

    public init(service: String, weight: Int = 1) {
        self.service = service
        self.weight = weight
    }
}
