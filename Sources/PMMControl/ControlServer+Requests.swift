import Foundation
import Glibc
import PMMCore
import PMMReconciler
import PMMRegistry
import PMMSystem
import PMMWire
import Logging
import SwiftProtobuf

extension ControlServer {
    /// Answers one request. Pure decisions over the current revision and the registry; refusals carry reasons.
    func handle(_ request: Pmm_V1_Request, from peer: PeerCredentials, onChange: () -> Void) -> Pmm_V1_Response {
        var response = Pmm_V1_Response()
        response.id = request.id
        do {
            guard let (_, spec) = try reconciler.currentRevision() else {
                throw Refusal("nothing has been applied yet; run pmm apply -f mesh.yaml")
            }
            switch request.call {
            case .registerService(let call):
                response.registration = try register(call, peer: peer, spec: spec, onChange: onChange)
            case .deregisterService(let call):
                try deregister(call, peer: peer, spec: spec)
            case .getPipeName(let call):
                response.pipeName = try pipeName(call, peer: peer, spec: spec)
            case .setRoutingRule(let call):
                response.routingRule = try setRoutingRule(call, peer: peer, onChange: onChange)
            case .heartbeat(let call):
                try heartbeat(call, peer: peer)
            case nil:
                throw Refusal("the request names no call")
            }
            response.ok = true
        } catch let refusal as Refusal {
            response.ok = false
            response.error = refusal.reason
        } catch {
            response.ok = false
            response.error = "\(error)"
        }
        return response
    }

    struct Refusal: Error {
        var reason: String
        init(_ reason: String) { self.reason = reason }
    }

    /// The service `name`, which the caller must run as (root may speak for any service).
    func service(_ name: String, in spec: MeshSpec, for peer: PeerCredentials, action: String) throws -> Service {
        guard let service = spec.service(named: name) else {
            throw Refusal("service '\(name)' is not in the applied spec (services: \(spec.services.map(\.name).joined(separator: ", ")))")
        }
        guard peer.uid == 0 || peer.uid == service.uid else {
            throw Refusal("uid \(peer.uid) may not \(action) service '\(name)': it runs as uid \(service.uid)")
        }
        return service
    }

    func register(_ call: Pmm_V1_RegisterService, peer: PeerCredentials, spec: MeshSpec, onChange: () -> Void) throws -> Pmm_V1_Registration {
        let service = try service(call.serviceID, in: spec, for: peer, action: "register")
        if !call.dataType.isEmpty, !(service.produces + service.consumes).contains(where: { $0.dataType == call.dataType }) {
            throw Refusal("service '\(service.name)' neither produces nor consumes '\(call.dataType)'")
        }
        guard call.maxRate <= UInt64(Limits.maxRate.upperBound) else {
            throw Refusal("max_rate must be at most \(Limits.maxRate.upperBound)")
        }
        let registered = try reconciler.registry.instances()
        let live = Dictionary(
            registered.filter { $0.service == service.name && (kill($0.pid, 0) == 0 || errno == EPERM) }.map { ($0.instance, $0) },
            uniquingKeysWith: { a, _ in a })
        let instance: String
        if !call.instance.isEmpty {
            guard service.instanceNames.contains(call.instance) else {
                throw Refusal("'\(call.instance)' is not an instance of '\(service.name)' (\(service.instanceNames.joined(separator: ", ")))")
            }
            if let holder = live[call.instance], holder.pid != peer.pid {
                throw Refusal("\(call.instance) is registered by pid \(holder.pid), which is alive")
            }
            instance = call.instance
        } else if let mine = live.values.first(where: { $0.pid == peer.pid }) {
            instance = mine.instance
        } else if let free = service.instanceNames.first(where: { live[$0] == nil }) {
            instance = free
        } else {
            throw Refusal("all \(service.replicas) replicas of '\(service.name)' are registered by live processes; raise replicas in the spec")
        }
        let now = timestamp
        try reconciler.registry.register(
            InstanceRecord(
                instance: instance, service: service.name, pid: peer.pid, uid: peer.uid, registeredAt: now, lastHeartbeat: now,
                maxRate: Int(call.maxRate)))
        event("registered", "\(instance) by pid \(peer.pid) uid \(peer.uid)")
        if call.maxRate > 0 { onChange() }

        var registration = Pmm_V1_Registration()
        registration.serviceID = service.name
        registration.instance = instance
        for binding in service.produces where call.dataType.isEmpty || binding.dataType == call.dataType {
            guard let dataType = spec.dataType(named: binding.dataType) else { continue }
            registration.ingress.append(.with { list in
                list.dataType = dataType.name
                list.paths = (0..<dataType.shards).map {
                    Naming.path(root: spec.root, fileName: Naming.ingress(producer: service.name, dataType: dataType.name, shard: $0))
                }
            })
            registration.versions[dataType.name] = UInt32(binding.version ?? dataType.latestVersion ?? 0)
            registration.shards[dataType.name] = UInt32(dataType.shards)
        }
        for binding in service.consumes where call.dataType.isEmpty || binding.dataType == call.dataType {
            guard let dataType = spec.dataType(named: binding.dataType) else { continue }
            registration.egress.append(.with {
                $0.dataType = dataType.name
                $0.paths = [Naming.path(root: spec.root, fileName: Naming.egress(instance: instance, dataType: dataType.name))]
            })
            registration.versions[dataType.name] = UInt32(binding.version ?? dataType.latestVersion ?? 0)
        }
        return registration
    }

    func deregister(_ call: Pmm_V1_DeregisterService, peer: PeerCredentials, spec: MeshSpec) throws {
        let service = try service(call.serviceID, in: spec, for: peer, action: "deregister")
        let mine = try reconciler.registry.instances().filter { record in
            record.service == service.name
                && (call.instance.isEmpty ? (record.pid == peer.pid || peer.uid == 0) : record.instance == call.instance)
        }
        guard !mine.isEmpty else {
            throw Refusal(call.instance.isEmpty ? "pid \(peer.pid) has no registration of '\(service.name)'" : "\(call.instance) is not registered")
        }
        for record in mine {
            try reconciler.registry.deregister(instance: record.instance)
            event("deregistered", "\(record.instance) by pid \(peer.pid) uid \(peer.uid)")
        }
    }

    func pipeName(_ call: Pmm_V1_GetPipeName, peer: PeerCredentials, spec: MeshSpec) throws -> Pmm_V1_PipeName {
        let producer: Service
        if !call.serviceID.isEmpty {
            producer = try service(call.serviceID, in: spec, for: peer, action: "ask pipe names for")
        } else {
            let mine = spec.services.filter { $0.uid == peer.uid && $0.produces.contains { $0.dataType == call.dataType } }
            guard mine.count == 1 else {
                throw Refusal(
                    mine.isEmpty
                        ? "uid \(peer.uid) runs no service that produces '\(call.dataType)'"
                        : "uid \(peer.uid) runs several producers of '\(call.dataType)' (\(mine.map(\.name).joined(separator: ", "))); name one")
            }
            producer = mine[0]
        }
        guard let dataType = spec.dataType(named: call.dataType), producer.produces.contains(where: { $0.dataType == call.dataType }) else {
            throw Refusal("service '\(producer.name)' does not produce '\(call.dataType)'")
        }
        let shard = ShardHash.shard(forKey: call.shardKey, shards: dataType.shards)
        return .with {
            $0.path = Naming.path(root: spec.root, fileName: Naming.ingress(producer: producer.name, dataType: dataType.name, shard: shard))
            $0.shard = UInt32(shard)
        }
    }

    func setRoutingRule(_ call: Pmm_V1_SetRoutingRule, peer: PeerCredentials, onChange: () -> Void) throws -> Pmm_V1_RoutingRule {
        guard let (_, applied) = try reconciler.currentRevision(runtime: false) else { throw Refusal("nothing has been applied yet") }
        guard peer.uid == 0 || peer.uid == applied.adminUID else {
            throw Refusal("uid \(peer.uid) may not set routing rules: only root\(applied.adminUID.map { " or the mesh's adminUid \($0)" } ?? "") may")
        }
        let rule = RoutingRule(dataType: call.dataType, service: call.serviceID, weight: Int(call.weight), setBy: peer.uid, at: timestamp)
        // Checked against the spec with the other runtime rules applied, so no combination zeroes a route.
        let current = applied.applying(try reconciler.registry.routingRules())
        if let problem = current.problem(with: rule) { throw Refusal(problem) }
        try reconciler.registry.setRoutingRule(rule)
        logger.notice("routing rule set", metadata: ["dataType": "\(rule.dataType)", "service": "\(rule.service)", "weight": "\(rule.weight)", "uid": "\(peer.uid)"])
        onChange()
        return .with {
            $0.dataType = rule.dataType
            $0.serviceID = rule.service
            $0.weight = UInt32(rule.weight)
        }
    }

    func heartbeat(_ call: Pmm_V1_Heartbeat, peer: PeerCredentials) throws {
        guard let record = try reconciler.registry.instances().first(where: { $0.instance == call.instance }) else {
            throw Refusal("\(call.instance) is not registered")
        }
        guard peer.uid == 0 || peer.uid == record.uid else { throw Refusal("uid \(peer.uid) may not heartbeat \(call.instance)") }
        try reconciler.registry.heartbeat(instance: call.instance, at: timestamp)
    }
}
