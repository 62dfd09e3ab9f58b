/// A weight set at run time (`SetRoutingRule`), over the spec's route. It holds until the next apply of a spec.
public struct RoutingRule: Hashable, Sendable {
    public var dataType: String
    public var service: String
    public var weight: Int
    /// The uid that set it.
    public var setBy: UInt32
    /// When, ISO 8601.
    public var at: String

    public init(dataType: String, service: String, weight: Int, setBy: UInt32, at: String) {
        self.dataType = dataType
        self.service = service
        self.weight = weight
        self.setBy = setBy
        self.at = at
    }
}

extension MeshSpec {
    /// Why `rule` cannot apply to this spec, or nil when it can.
    public func problem(with rule: RoutingRule) -> String? {
        guard dataType(named: rule.dataType) != nil else { return "data type '\(rule.dataType)' is not in the spec" }
        guard let service = service(named: rule.service) else { return "service '\(rule.service)' is not in the spec" }
        guard service.consumes.contains(where: { $0.dataType == rule.dataType }) else {
            return "service '\(rule.service)' does not consume '\(rule.dataType)'"
        }
        guard Limits.weight.contains(rule.weight) else {
            return "weight must be between \(Limits.weight.lowerBound) and \(Limits.weight.upperBound)"
        }
        var after = self
        after.apply(rule)
        if after.effectiveRoute(for: rule.dataType)?.targets.allSatisfy({ $0.weight == 0 }) ?? true {
            return "every weight of '\(rule.dataType)' would be zero, so nothing could be delivered"
        }
        return nil
    }

    /// This spec with `rules` applied in order (rules that do not apply are skipped).
    public func applying(_ rules: [RoutingRule]) -> MeshSpec {
        var spec = self
        for rule in rules where problem(with: rule) == nil { spec.apply(rule) }
        return spec
    }

    mutating func apply(_ rule: RoutingRule) {
        var route = effectiveRoute(for: rule.dataType) ?? Route(dataType: rule.dataType, targets: [])
        if let index = route.targets.firstIndex(where: { $0.service == rule.service }) {
            route.targets[index].weight = rule.weight
        } else {
            route.targets.append(RouteTarget(service: rule.service, weight: rule.weight))
        }
        routes.removeAll { $0.dataType == rule.dataType }
        routes.append(route)
        routes.sort { $0.dataType < $1.dataType }
    }

    /// The rules whose weight differs from this spec's (drift `pmm diff` reports).
    public func drift(of rules: [RoutingRule]) -> [RoutingRule] {
        rules.filter { rule in
            effectiveRoute(for: rule.dataType)?.targets.first { $0.service == rule.service }?.weight != rule.weight
        }
    }
}

extension MeshSpec {
    /// This spec with producers' rates narrowed to what their running instances asked for at registration
    /// (service name -> messages/s; only lower rates apply).
    public func narrowingRates(_ rates: [String: Int]) -> MeshSpec {
        var spec = self
        for index in spec.services.indices {
            guard let rate = rates[spec.services[index].name], rate > 0 else { continue }
            for b in spec.services[index].produces.indices {
                let binding = spec.services[index].produces[b]
                guard let dataType = dataType(named: binding.dataType) else { continue }
                let current = dataType.qos.applying(binding.qos).maxRate
                if current == 0 || rate < current {
                    spec.services[index].produces[b].qos.maxRate = rate
                }
            }
        }
        return spec
    }
}
