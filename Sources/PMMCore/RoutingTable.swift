/// The routing decision of the `shard` policy, as a pure function of the spec and the set of healthy instances.
///
/// The data plane uses the same table; `pmm diff --base` uses it to tell how many keys a change moves.
public struct RoutingTable: Hashable, Sendable {
    /// One routed data type.
    public struct Entry: Hashable, Sendable {
        public var dataType: String
        public var policy: RoutingPolicy
        public var shards: Int
        /// Targets with a positive weight, in service-name order.
        public var targets: [Target]

        public init(dataType: String, policy: RoutingPolicy, shards: Int, targets: [Target]) {
            self.dataType = dataType
            self.policy = policy
            self.shards = shards
            self.targets = targets
        }

        /// Under policy `shard`: the (target, instance) indices that receive a key hashing to `hash`, or nil
        /// when no target has a healthy instance. Allocates nothing.
        ///
        /// - Parameter isHealthy: whether instance `i` of target `t` may receive traffic now.
        @inlinable
        public func chooseByKey(hash: UInt64, isHealthy: (_ target: Int, _ instance: Int) -> Bool) -> (target: Int, instance: Int)? {
            var total = 0
            for (t, target) in targets.enumerated() where Self.hasHealthy(t, target, isHealthy) {
                total += target.weight
            }
            guard total > 0 else { return nil }
            var point = Int(ShardHash.mix(hash ^ ShardHash.serviceSalt) % UInt64(total))
            for (t, target) in targets.enumerated() where Self.hasHealthy(t, target, isHealthy) {
                if point < target.weight {
                    var best = -1
                    var bestScore: UInt64 = 0
                    for i in 0..<target.instanceHashes.count where isHealthy(t, i) {
                        let score = ShardHash.mix(hash ^ target.instanceHashes[i])
                        if best < 0 || score > bestScore {
                            best = i
                            bestScore = score
                        }
                    }
                    return (t, best)
                }
                point -= target.weight
            }
            return nil
        }

        @inlinable
        static func hasHealthy(_ t: Int, _ target: Target, _ isHealthy: (Int, Int) -> Bool) -> Bool {
            for i in 0..<target.instances.count where isHealthy(t, i) { return true }
            return false
        }
    }

    /// A target service and its instances, in index order.
    public struct Target: Hashable, Sendable {
        public var service: String
        public var weight: Int
        public var instances: [String]
        /// `fnv1a64(instance)` for each instance: rendezvous hashing's per-instance salt.
        public var instanceHashes: [UInt64]

        public init(service: String, weight: Int, instances: [String]) {
            self.service = service
            self.weight = weight
            self.instances = instances
            self.instanceHashes = instances.map { ShardHash.fnv1a64($0) }
        }
    }

    public var entries: [String: Entry]

    /// Builds the table from a spec's effective routes (a consumed type with no route goes to all its consumers).
    public init(spec: MeshSpec) {
        var entries: [String: Entry] = [:]
        for dataType in spec.dataTypes {
            guard let route = spec.effectiveRoute(for: dataType.name) else { continue }
            let targets = route.targets
                .filter { $0.weight > 0 }
                .sorted { $0.service < $1.service }
                .compactMap { target -> Target? in
                    guard let service = spec.service(named: target.service) else { return nil }
                    return Target(service: service.name, weight: target.weight, instances: service.instanceNames)
                }
            entries[dataType.name] = Entry(
                dataType: dataType.name, policy: route.policy, shards: dataType.shards, targets: targets)
        }
        self.entries = entries
    }

    /// The instance that receives `key` of `dataType` under policy `shard`, or nil when nothing can.
    ///
    /// - Parameters:
    ///   - isHealthy: whether an instance may receive traffic now; unhealthy ones are skipped, and a service
    ///     with no healthy instance drops out of the weighted choice.
    public func instance(
        forKey key: some Sequence<UInt8>, dataType: String, isHealthy: (String) -> Bool = { _ in true }
    ) -> String? {
        guard let entry = entries[dataType] else { return nil }
        let chosen = entry.chooseByKey(hash: ShardHash.fnv1a64(key)) { t, i in isHealthy(entry.targets[t].instances[i]) }
        return chosen.map { entry.targets[$0.target].instances[$0.instance] }
    }
}

extension MeshSpec {
    /// The declared route for `dataType`, or, when none is declared but some service consumes it, the default
    /// route: policy `shard` to every consuming service with weight 1.
    public func effectiveRoute(for dataType: String) -> Route? {
        if let route = route(for: dataType) { return route }
        let consumers = services.filter { $0.consumes.contains { $0.dataType == dataType } }
        guard !consumers.isEmpty else { return nil }
        return Route(dataType: dataType, policy: .shard, targets: consumers.map { RouteTarget(service: $0.name) })
    }
}

/// How a spec change moves keys: the share of a fixed sample of keys whose shard or instance changes.
public struct KeyMovement: Hashable, Sendable {
    public var dataType: String
    /// Keys sampled.
    public var sampled: Int
    /// Keys written to a different ingress shard.
    public var shardMoved: Int
    /// Keys delivered to a different instance (policy `shard` in both specs).
    public var instanceMoved: Int

    /// Compares every data type routed in both specs over `sampleSize` synthetic keys (`key-0`, `key-1`, …).
    public static func compare(base: MeshSpec, new: MeshSpec, sampleSize: Int = 10_000) -> [KeyMovement] {
        let before = RoutingTable(spec: base)
        let after = RoutingTable(spec: new)
        var result: [KeyMovement] = []
        for dataType in new.dataTypes {
            guard let old = base.dataType(named: dataType.name) else { continue }
            let oldEntry = before.entries[dataType.name]
            let newEntry = after.entries[dataType.name]
            var movement = KeyMovement(dataType: dataType.name, sampled: sampleSize, shardMoved: 0, instanceMoved: 0)
            for i in 0..<sampleSize {
                let key = Array("key-\(i)".utf8)
                if ShardHash.shard(forKey: key, shards: old.shards) != ShardHash.shard(forKey: key, shards: dataType.shards) {
                    movement.shardMoved += 1
                }
                if oldEntry?.policy == .shard, newEntry?.policy == .shard,
                    before.instance(forKey: key, dataType: dataType.name)
                        != after.instance(forKey: key, dataType: dataType.name)
                {
                    movement.instanceMoved += 1
                }
            }
            if movement.shardMoved > 0 || movement.instanceMoved > 0 { result.append(movement) }
        }
        return result
    }
}
