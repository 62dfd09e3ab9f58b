public import PMMRouter

extension GraphLive {
    /// The graph's live figures from a router's status: each instance's worst health over its egress pipes,
    /// rates per egress pipe and per producer and type.
    public init(status: RouterStatus) {
        var instances: [String: Health] = [:]
        var egress: [String: Double] = [:]
        for pipe in status.egress {
            let health: Health = pipe.healthy ? .healthy : pipe.stalled ? .stalled : .down
            instances[pipe.instance] = max(instances[pipe.instance] ?? .healthy, health)
            egress[pipe.instance + "." + pipe.dataType, default: 0] += pipe.rate
        }
        var ingress: [String: Double] = [:]
        for pipe in status.ingress { ingress[pipe.producer + "." + pipe.dataType, default: 0] += pipe.rate }
        self.init(instances: instances, egress: egress, ingress: ingress, waiting: status.waiting)
    }
}
