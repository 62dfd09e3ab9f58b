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
        /// The schema version the producer declares (frames that carry none are taken to be this one).
        public var version: Int?

        public init(name: String, producer: String, dataType: String, shard: Int, pipeSize: Int?, qos: QoS, version: Int?) {
            self.name = name
            self.producer = producer
            self.dataType = dataType
            self.shard = shard
            self.pipeSize = pipeSize
            self.qos = qos
            self.version = version
        }
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
        /// The schema version the consumer reads.
        public var version: Int?
        /// The instance's expected volume (messages/s), which `least-loaded` weighs: what it registered with,
        /// else its binding's `capacity`; 0 when neither says.
        public var capacity: Int = 0
        /// The node the instance runs on when that is not this router's node: frames for it travel over the
        /// link to that node's router. Nil: a pipe of this node.
        public var node: String? = nil
        /// How near the instance is, for `locality: prefer-local`: 0 on this node, 1 in its zone, 2 elsewhere.
        public var tier: Int = 0

        /// The instance runs on another node (no pipe here; frames go over a link).
        public var isRemote: Bool { node != nil }
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
        /// The declared versions; empty for an unversioned type (every frame goes anywhere).
        public var versions: Set<Int>
        /// For each writer version, the reader versions that can read it (from the schema check recorded
        /// with the revision); nil when no check ran, and then only equal versions match.
        public var readers: [Int: Set<Int>]?
        /// The version each target service reads, by target index of `entry`.
        public var targetVersions: [Int?]
        /// Which instances the route prefers in a multi-node mesh.
        public var locality: Locality = .any

        /// Whether target `t` can read frames of `version`.
        public func target(_ t: Int, reads version: Int) -> Bool {
            guard !versions.isEmpty, let reader = targetVersions[t] else { return true }
            if reader == version { return true }
            return readers?[version]?.contains(reader) ?? false
        }
    }

    public var revision: Int
    public var root: String
    /// The node this router serves in a multi-node mesh (nil: one host).
    public var node: String?
    /// Every other node of a multi-node mesh: its name and where its router listens for links.
    public var peers: [MeshNode] = []
    /// Where this node's router accepts links (`host:port`), in a multi-node mesh.
    public var address: String?
    /// Mutual TLS for the links, with `${NODE}` resolved for this node; nil: plaintext.
    public var linkTLS: LinkTLS?
    public var ingress: [Ingress]
    public var egress: [Egress]
    /// Routes by data type name.
    public var routes: [String: Route]

    /// The ingress pipes that go through a spool (at-least-once). A spool left for any other name (its pipe was
    /// removed, or its type made at-most-once, before a crash or a restart) is read back and delivered by the
    /// next router, which adopts it.
    public var spooledIngress: Set<String> { Set(ingress.lazy.filter { $0.qos.delivery == .atLeastOnce }.map(\.name)) }

    /// - Parameters:
    ///   - readers: per data type, writer version -> reader versions that can read it (the checked
    ///     compatibility matrix); nil when no schema check ran.
    ///   - node: in a multi-node mesh, the node this router serves: it reads the ingress pipes of that node,
    ///     writes the egress pipes of the instances placed there, and knows every other node's instances as
    ///     remote egress (reached over links). A service without `placement` runs its replicas on every node,
    ///     and each node's router serves its own copies (they are local everywhere).
    public init(spec: MeshSpec, revision: Int, readers: [String: [Int: [Int]]]? = nil, node: String? = nil) {
        self.revision = revision
        self.root = spec.root
        self.node = node
        let here = node.flatMap { spec.node(named: $0) }
        self.peers = node == nil ? [] : spec.nodes.filter { $0.name != node }.sorted { $0.name < $1.name }
        self.address = here?.address
        self.linkTLS = node.flatMap { node in spec.linkTLS?.resolved(for: node) }
        var ingress: [Ingress] = []
        var egress: [Egress] = []
        let local = Set(spec.desiredPipes(node: node).map(\.name))
        for pipe in spec.desiredPipes() {
            guard let dataType = spec.dataType(named: pipe.dataType), let service = spec.service(named: pipe.service) else { continue }
            let bindings = pipe.kind == .ingress ? service.produces : service.consumes
            let binding = bindings.first { $0.dataType == pipe.dataType }
            let qos = dataType.qos.applying(binding?.qos ?? QoSOverride())
            let version = binding?.version ?? dataType.latestVersion
            switch pipe.kind {
            case .ingress:
                guard local.contains(pipe.name) else { continue }
                ingress.append(
                    Ingress(
                        name: pipe.name, producer: pipe.service, dataType: pipe.dataType, shard: pipe.shard ?? 0, pipeSize: pipe.pipeSize, qos: qos,
                        version: version))
            case .egress:
                let instance = pipe.instance ?? pipe.service
                // Under `registration: required` an instance without a lease has no egress here: the router
                // neither opens its pipe nor routes to it, and a reload that takes it away re-routes what it
                // had not read (as for any egress a layout removes).
                var remote: String?
                var tier = 0
                if node != nil && !local.contains(pipe.name) {
                    // Only placed instances are remote: an unplaced service's copies are local on every node.
                    // Leases live on the instance's own node: its router tells whether the instance is routed
                    // (the health it announces over the link).
                    guard let owner = service.node(of: instance) else { continue }
                    remote = owner
                    tier = here?.zone != nil && spec.node(named: owner)?.zone == here?.zone ? 1 : 2
                } else {
                    guard spec.isRouted(instance: instance, of: service) else { continue }
                }
                let registered = spec.leases[instance]?.capacity ?? 0
                egress.append(
                    Egress(
                        name: pipe.name, instance: instance, service: pipe.service, dataType: pipe.dataType,
                        pipeSize: pipe.pipeSize, qos: qos, version: version, capacity: registered > 0 ? registered : binding?.capacity ?? 0,
                        node: remote, tier: tier))
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
            let targetVersions = entry.targets.map { target in
                spec.service(named: target.service)?.consumes.first { $0.dataType == name }.map { $0.version ?? dataType.latestVersion } ?? nil
            }
            routes[name] = Route(
                dataType: name, policy: entry.policy, entry: entry, egressIndex: indices, qos: dataType.qos,
                versions: Set(dataType.versions.map(\.version)), readers: readers?[name].map { $0.mapValues(Set.init) },
                targetVersions: targetVersions, locality: node == nil ? .any : spec.route(for: name)?.locality ?? .any)
        }
        self.ingress = ingress
        self.egress = egress
        self.routes = routes
    }
}
