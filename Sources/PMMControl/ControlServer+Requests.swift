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
                try deregister(call, peer: peer, spec: spec, onChange: onChange)
            case .getPipeName(let call):
                response.pipeName = try pipeName(call, peer: peer, spec: spec)
            case .setRoutingRule(let call):
                response.routingRule = try setRoutingRule(call, peer: peer, onChange: onChange)
            case .heartbeat(let call):
                try heartbeat(call, peer: peer, spec: spec)
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

    /// Longest ttl and heartbeat interval a lease may ask for, in seconds.
    static let longestTTL: Double = 366 * 24 * 3600
    static let longestHeartbeat: Double = 3600

    func register(_ call: Pmm_V1_RegisterService, peer: PeerCredentials, spec: MeshSpec, onChange: () -> Void) throws -> Pmm_V1_Registration {
        let service = try service(call.serviceID, in: spec, for: peer, action: "register")
        if !call.dataType.isEmpty, !(service.produces + service.consumes).contains(where: { $0.dataType == call.dataType }) {
            throw Refusal("service '\(service.name)' neither produces nor consumes '\(call.dataType)'")
        }
        guard call.maxRate <= UInt64(Limits.maxRate.upperBound) else {
            throw Refusal("max_rate must be at most \(Limits.maxRate.upperBound)")
        }
        if call.capacity > 0 {
            guard !service.consumes.isEmpty else {
                throw Refusal("capacity applies to consumers; '\(service.name)' consumes nothing (a producer's volume is max_rate)")
            }
            guard call.capacity <= UInt64(Limits.capacity.upperBound) else {
                throw Refusal("capacity must be at most \(Limits.capacity.upperBound) messages/s")
            }
        }
        guard call.ttlSeconds == 0 || (call.ttlSeconds >= 0.1 && call.ttlSeconds <= Self.longestTTL) else {
            throw Refusal("ttl_seconds must be 0 (none) or between 0.1 and \(Int(Self.longestTTL)) seconds, found \(call.ttlSeconds)")
        }
        guard call.heartbeatSeconds == 0 || (call.heartbeatSeconds >= 0.05 && call.heartbeatSeconds <= Self.longestHeartbeat) else {
            throw Refusal("heartbeat_seconds must be 0 (none) or between 0.05 and \(Int(Self.longestHeartbeat)) seconds, found \(call.heartbeatSeconds)")
        }
        // The process the lease lives with: the one named (of the caller's uid; root may name any), none for a
        // lease for a fixed time, else the caller itself.
        let leasePID: Int32
        if call.pid != 0 {
            guard call.pid > 0, let owner = ProcessTable.uids(of: call.pid) else { throw Refusal("there is no process \(call.pid)") }
            guard peer.uid == 0 || owner.real == peer.uid || owner.effective == peer.uid else {
                throw Refusal("process \(call.pid) runs as uid \(owner.real), not uid \(peer.uid): a lease may name only a process of the caller's uid (root may name any)")
            }
            leasePID = call.pid
        } else {
            leasePID = call.ttlSeconds > 0 ? 0 : peer.pid
        }
        let startTime = leasePID > 0 ? ProcessTable.startTime(of: leasePID) ?? 0 : 0
        let now = Date().timeIntervalSince1970
        var live: [String: InstanceRecord] = [:]
        for record in try reconciler.registry.instances() where record.service == service.name && isLive(record, now: now) {
            live[record.instance] = record
        }
        // The same holder renews its lease: the same process, or, for a lease without one, the same uid.
        func isMine(_ record: InstanceRecord) -> Bool {
            leasePID != 0 ? record.pid == leasePID : (record.pid == 0 && record.uid == peer.uid)
        }
        let instance: String
        if !call.instance.isEmpty {
            guard service.instanceNames.contains(call.instance) else {
                throw Refusal("'\(call.instance)' is not an instance of '\(service.name)' (\(service.instanceNames.joined(separator: ", ")))")
            }
            if let holder = live[call.instance], !isMine(holder) {
                throw Refusal("\(call.instance) holds a lease of \(Self.describeHolder(holder)); its uid may end it with pmm deregister --service \(service.name) --instance \(call.instance)")
            }
            instance = call.instance
        } else if leasePID != 0, let mine = live.values.sorted(by: { $0.instance < $1.instance }).first(where: { $0.pid == leasePID }) {
            instance = mine.instance
        } else if let free = service.instanceNames.first(where: { live[$0] == nil }) {
            instance = free
        } else {
            throw Refusal("all \(service.replicas) replicas of '\(service.name)' hold leases; raise replicas in the spec or end one with pmm deregister")
        }
        let stamp = timestamp
        let record = InstanceRecord(
            instance: instance, service: service.name, pid: leasePID, uid: peer.uid, registeredAt: stamp, lastHeartbeat: stamp,
            maxRate: Int(call.maxRate), ttlSeconds: call.ttlSeconds, heartbeatSeconds: call.heartbeatSeconds, renewedAt: now,
            capacity: Int(call.capacity), pidStartTime: startTime)
        try reconciler.registry.register(record)
        event("registered", "\(instance) by pid \(peer.pid) uid \(peer.uid); lease: \(Self.describeLease(record))")
        if affectsRouting(record, in: spec) || live[instance].map({ affectsRouting($0, in: spec) }) == true { onChange() }

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
        registration.leasePid = record.pid
        registration.ttlSeconds = record.ttlSeconds
        registration.heartbeatSeconds = record.heartbeatSeconds
        return registration
    }

    /// Whether `record`'s lease still holds at `now` (seconds since 1970).
    func isLive(_ record: InstanceRecord, now: Double) -> Bool {
        record.leaseEnd(now: now, processAlive: ProcessTable.isAlive(pid: record.pid, startTime: record.pidStartTime)) == nil
    }

    /// Whether the router must reload when `record`'s lease starts or ends: it routes by it (a consumer with
    /// `registration: required`), or by the rate or capacity it asked for.
    func affectsRouting(_ record: InstanceRecord, in spec: MeshSpec) -> Bool {
        record.maxRate > 0 || record.capacity > 0 || spec.service(named: record.service)?.registration == .required
    }

    /// `pid 4711`, `uid 1002 (no process)`.
    static func describeHolder(_ record: InstanceRecord) -> String {
        record.pid != 0 ? "pid \(record.pid), which is alive" : "uid \(record.uid) (\(describeLease(record)))"
    }

    /// `pid 4711`, `ttl 60s`, `pid 4711, heartbeats every 5s`.
    static func describeLease(_ record: InstanceRecord) -> String {
        var parts: [String] = []
        if record.pid != 0 { parts.append("pid \(record.pid)") }
        if record.ttlSeconds > 0 { parts.append("ttl \(InstanceRecord.LeaseEnd.seconds(record.ttlSeconds))") }
        if record.heartbeatSeconds > 0 { parts.append("heartbeats every \(InstanceRecord.LeaseEnd.seconds(record.heartbeatSeconds))") }
        return parts.joined(separator: ", ")
    }

    /// Ends leases of the service: the instance named, else those the calling process holds, else the
    /// service's only registered instance. The service's uid (or root) may end any of its instances' leases,
    /// whoever made them.
    func deregister(_ call: Pmm_V1_DeregisterService, peer: PeerCredentials, spec: MeshSpec, onChange: () -> Void) throws {
        let service = try service(call.serviceID, in: spec, for: peer, action: "deregister")
        let records = try reconciler.registry.instances().filter { $0.service == service.name }
        let chosen: [InstanceRecord]
        if !call.instance.isEmpty {
            chosen = records.filter { $0.instance == call.instance }
            guard !chosen.isEmpty else {
                throw Refusal("\(call.instance) holds no lease\(records.isEmpty ? "" : " (leases of '\(service.name)': \(records.map(\.instance).joined(separator: ", ")))")")
            }
        } else if case let mine = records.filter({ $0.pid == peer.pid }), !mine.isEmpty {
            chosen = mine
        } else if records.count == 1 {
            chosen = records
        } else if records.isEmpty {
            throw Refusal("no instance of '\(service.name)' holds a lease")
        } else {
            throw Refusal("\(records.count) instances of '\(service.name)' hold leases (\(records.map(\.instance).joined(separator: ", "))); name one with --instance")
        }
        var changed = false
        for record in chosen {
            guard try reconciler.registry.deregister(instance: record.instance) else { continue }
            event("deregistered", "\(record.instance) by pid \(peer.pid) uid \(peer.uid): its lease ended")
            changed = changed || affectsRouting(record, in: spec)
        }
        if changed { onChange() }
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

    /// Renews a lease; a positive interval is the heartbeat period promised from now on.
    func heartbeat(_ call: Pmm_V1_Heartbeat, peer: PeerCredentials, spec: MeshSpec) throws {
        guard let record = try reconciler.registry.instances().first(where: { $0.instance == call.instance }) else {
            throw Refusal("\(call.instance) holds no lease (it ended or was never made); register again")
        }
        let serviceUID = spec.service(named: record.service)?.uid
        guard peer.uid == 0 || peer.uid == record.uid || peer.uid == serviceUID else {
            throw Refusal("uid \(peer.uid) may not heartbeat \(call.instance)")
        }
        guard call.intervalSeconds == 0 || (call.intervalSeconds >= 0.05 && call.intervalSeconds <= Self.longestHeartbeat) else {
            throw Refusal("interval_seconds must be 0 (keep the promise made) or between 0.05 and \(Int(Self.longestHeartbeat)) seconds")
        }
        guard isLive(record, now: Date().timeIntervalSince1970) else {
            throw Refusal("\(call.instance)'s lease has ended; register again")
        }
        try reconciler.registry.heartbeat(
            instance: call.instance, at: timestamp, renewedAt: Date().timeIntervalSince1970,
            interval: call.intervalSeconds > 0 ? call.intervalSeconds : nil)
    }
}
