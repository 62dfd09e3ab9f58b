/// What the data plane needs from a spec, resolved: every pipe it opens and, per data type, where frames go.
/// Pure; built once per revision and swapped in on reload.
public struct RouterLayout: Hashable, Sendable {
    /// An ingress pipe the router reads.
    public struct Ingress: Hashable, Sendable {
        public var name: String
        public var producer: String
        public var dataType: String
        public var shard: Int
        public var pipeSize: Int?
        /// The producer's QoS for this type (rate limits apply per producing service).
        public var qos: QoS
    }

    /// An egress pipe the router writes: one per consumer instance and data type.
    public struct Egress: Hashable, Sendable {
        public var name: String
        public var instance: String
        public var service: String
        public var dataType: String
        public var pipeSize: Int?
        /// The consumer's QoS (buffer and overflow apply per consumer instance).
        public var qos: QoS
    }

    /// Where one data type's frames go.
    public struct Route: Hashable, Sendable {
        public var dataType: String
        public var policy: RoutingPolicy
        /// The shard-policy table entry (targets with weight > 0, in name order).
        public var entry: RoutingTable.Entry
        /// For each target and instance of `entry`, the index into `egress`.
        public var egressIndex: [[Int]]
        /// The type's QoS (for frames that wait because no instance is healthy).
        public var qos: QoS
    }

    public var revision: Int
    public var root: String
    public var ingress: [Ingress]
    public var egress: [Egress]
    /// Routes by data type name.
    public var routes: [String: Route]

    public init(spec: MeshSpec, revision: Int) {
        self.revision = revision
        self.root = spec.root
        var ingress: [Ingress] = []
        var egress: [Egress] = []
        for pipe in spec.desiredPipes() {
            guard let dataType = spec.dataType(named: pipe.dataType), let service = spec.service(named: pipe.service) else { continue }
            let bindings = pipe.kind == .ingress ? service.produces : service.consumes
            let override = bindings.first { $0.dataType == pipe.dataType }?.qos ?? QoSOverride()
            let qos = dataType.qos.applying(override)
            switch pipe.kind {
            case .ingress:
                ingress.append(
                    Ingress(name: pipe.name, producer: pipe.service, dataType: pipe.dataType, shard: pipe.shard ?? 0, pipeSize: pipe.pipeSize, qos: qos))
            case .egress:
                egress.append(
                    Egress(
                        name: pipe.name, instance: pipe.instance ?? pipe.service, service: pipe.service, dataType: pipe.dataType,
                        pipeSize: pipe.pipeSize, qos: qos))
            }
        }
        let egressByName = Dictionary(uniqueKeysWithValues: egress.enumerated().map { ($1.name, $0) })
        var routes: [String: Route] = [:]
        let table = RoutingTable(spec: spec)
        for (name, entry) in table.entries {
            guard let dataType = spec.dataType(named: name) else { continue }
            let indices = entry.targets.map { target in
                target.instances.map { egressByName[Naming.egress(instance: $0, dataType: name)] ?? -1 }
            }
            routes[name] = Route(dataType: name, policy: entry.policy, entry: entry, egressIndex: indices, qos: dataType.qos)
        }
        self.ingress = ingress
        self.egress = egress
        self.routes = routes
    }
}
