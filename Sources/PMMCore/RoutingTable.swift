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
    }

    /// A target service and its instances, in index order.
    public struct Target: Hashable, Sendable {
        public var service: String
        public var weight: Int
        public var instances: [String]
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
        let hash = ShardHash.fnv1a64(key)
        let candidates = entry.targets.compactMap { target -> (Target, [String])? in
            let healthy = target.instances.filter(isHealthy)
            return healthy.isEmpty ? nil : (target, healthy)
        }
        let total = candidates.reduce(0) { $0 + $1.0.weight }
        guard total > 0 else { return nil }
        var point = Int(ShardHash.mix(hash ^ ShardHash.serviceSalt) % UInt64(total))
        for (target, healthy) in candidates {
            if point < target.weight {
                return healthy.max { a, b in
                    ShardHash.mix(hash ^ ShardHash.fnv1a64(a)) < ShardHash.mix(hash ^ ShardHash.fnv1a64(b))
                }
            }
            point -= target.weight
        }
        return nil
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
