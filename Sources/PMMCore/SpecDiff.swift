/// Field-level differences between two specs, for `pmm diff`: routes, weights, QoS, versions, services.
///
/// Both specs are flattened into `path = value` lines (`routes.metrics.targets.collector.weight = 90`) with
/// every default filled in, so a change that only spells out a default is no change.
public struct SpecChange: Hashable, Sendable {
    public var path: String
    public var before: String?
    public var after: String?

    public init(path: String, before: String?, after: String?) {
        self.path = path
        self.before = before
        self.after = after
    }

    public var action: Action {
        switch (before, after) {
        case (nil, _?): .create
        case (_?, nil): .delete
        default: .update
        }
    }

    /// Differences from `base` to `new`, sorted by path.
    public static func between(_ base: MeshSpec?, _ new: MeshSpec) -> [SpecChange] {
        let before = base?.flattened() ?? [:]
        let after = new.flattened()
        return Set(before.keys).union(after.keys).sorted().compactMap { path in
            before[path] == after[path] ? nil : SpecChange(path: path, before: before[path], after: after[path])
        }
    }
}

extension MeshSpec {
    /// The spec as `path -> value` with defaults filled in. Lists keyed by a name are keyed by that name, so
    /// reordering them changes nothing.
    public func flattened() -> [String: String] {
        var out: [String: String] = [
            "name": name, "root": root, "routerGroup": String(routerGroup),
        ]
        if let adminUID { out["adminUid"] = String(adminUID) }
        for dataType in dataTypes {
            let base = "dataTypes.\(dataType.name)"
            out["\(base).shards"] = String(dataType.shards)
            out["\(base).compatibility"] = dataType.compatibility.rawValue
            for version in dataType.versions {
                out["\(base).versions.\(version.version)"] = "\(version.message) (\(version.schema))"
            }
            dataType.qos.flatten(into: &out, prefix: "\(base).qos")
        }
        for service in services {
            let base = "services.\(service.name)"
            out["\(base).uid"] = String(service.uid)
            out["\(base).gid"] = String(service.gid)
            out["\(base).replicas"] = String(service.replicas)
            // Only when not the default, so specs that never name it show no change.
            if service.registration != .optional { out["\(base).registration"] = service.registration.rawValue }
            for (list, bindings) in [("produces", service.produces), ("consumes", service.consumes)] {
                for binding in bindings {
                    let key = "\(base).\(list).\(binding.dataType)"
                    let version = binding.version ?? dataType(named: binding.dataType)?.latestVersion
                    out["\(key).version"] = version.map(String.init) ?? "unversioned"
                    if let capacity = binding.capacity { out["\(key).capacity"] = String(capacity) }
                    if let dataType = dataType(named: binding.dataType) {
                        let effective = dataType.qos.applying(binding.qos)
                        if effective != dataType.qos { effective.flatten(into: &out, prefix: "\(key).qos") }
                    }
                }
            }
        }
        for dataType in dataTypes {
            guard let route = effectiveRoute(for: dataType.name) else { continue }
            let base = "routes.\(dataType.name)"
            out["\(base).policy"] = route.policy.rawValue
            for target in route.targets {
                out["\(base).targets.\(target.service).weight"] = String(target.weight)
            }
        }
        return out
    }
}

extension QoS {
    func flatten(into out: inout [String: String], prefix: String) {
        out["\(prefix).delivery"] = delivery.rawValue
        out["\(prefix).maxRate"] = String(maxRate)
        out["\(prefix).burst"] = String(burst)
        out["\(prefix).buffer"] = String(buffer)
        out["\(prefix).overflow"] = overflow.rawValue
        out["\(prefix).pipeSize"] = Planner.sizeText(pipeSize)
    }
}
