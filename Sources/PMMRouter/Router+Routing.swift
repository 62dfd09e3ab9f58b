import PMMSystem
import Logging
import PMMCore
import PMMWire

extension Router {
    /// Routes a frame taken back from a queue (its consumer died or stalled, or the layout changed).
    func reroute(_ frame: DetachedFrame) {
        frame.bytes.withUnsafeBytes { bytes in
            guard case .value(_, let prefix) = Varint.decode(bytes, at: 0),
                let fields = try? EnvelopeScanner.scan(UnsafeRawBufferPointer(rebasing: bytes[prefix...]))
            else { return }
            let dataType = String(decoding: bytes[(prefix + fields.dataType.lowerBound)..<(prefix + fields.dataType.upperBound)], as: UTF8.self)
            let key = UnsafeRawBufferPointer(rebasing: bytes[(prefix + fields.shardKey.lowerBound)..<(prefix + fields.shardKey.upperBound)])
            // A frame without a version was accepted under its producer's; routed again, any target reads it.
            let version = fields.schemaVersion == 0 ? nil : Int(fields.schemaVersion)
            deliver(bytes, key: key, dataType: dataType, version: version, tag: frame.tag, from: "(re-routed)")
        }
    }

    /// Queues `frame` for the instance the route chooses among the targets that can read its schema version,
    /// parks it until one is healthy, or dead-letters it.
    func deliver(
        _ frame: UnsafeRawBufferPointer, key: UnsafeRawBufferPointer, dataType: String, version: Int?, tag: SpoolTag?, from pipe: String
    ) {
        guard let state = routes[dataType] else {
            deadLetter(frame, dataType: dataType, reason: .noRoute, pipe: pipe, detail: "no service consumes '\(dataType)'", tag: tag)
            return
        }
        state.eligible = nil
        if let version, !state.route.versions.isEmpty {
            guard state.route.versions.contains(version) else {
                deadLetter(
                    frame, dataType: dataType, reason: .noReader, pipe: pipe,
                    detail: "version \(version) of '\(dataType)' is not declared (declared: \(state.route.versions.sorted().map(String.init).joined(separator: ", ")))",
                    tag: tag)
                return
            }
            let eligible = state.route.entry.targets.indices.map { state.route.target($0, reads: version) }
            guard eligible.contains(true) else {
                deadLetter(frame, dataType: dataType, reason: .noReader, pipe: pipe, detail: "no target of '\(dataType)' can read version \(version)", tag: tag)
                return
            }
            if eligible.contains(false) { state.eligible = eligible }
        }
        defer { state.eligible = nil }
        guard let index = choose(state, key: key) else {
            if state.parked.count >= state.capacity && state.route.qos.overflow == .deadLetter {
                deadLetter(frame, dataType: dataType, reason: .noHealthyInstance, pipe: pipe, tag: tag)
            } else {
                state.parked.append(frame, tag: tag)
            }
            return
        }
        let target = egress[index]
        // Frames the pipe can take are not held by the router: write before counting the queue full.
        if target.isFull && target.fd >= 0 { flush(target) }
        if target.isFull {
            switch target.spec.qos.overflow {
            case .deadLetter:
                target.deadLettered += 1
                deadLetter(frame, dataType: dataType, reason: .overflow, pipe: target.name, detail: "buffer of \(target.capacity) frames full", tag: tag)
                return
            case .dropOldest:
                target.queue.append(frame, tag: tag)
                let (dropped, droppedTag) = target.queue.dropOldestUnwritten()
                if dropped {
                    target.dropped += 1
                    counters.dropped += 1
                    if let droppedTag { spools[Int(droppedTag.spool)]?.complete(droppedTag) }
                }
                return
            case .block:
                break  // reading stops while the queue is full (blockedRoutes); this frame was already read
            }
        }
        target.queue.append(frame, tag: tag)
    }

    /// Data types whose ingress pipes must not be read now: an available consumer's queue is full (overflow
    /// `block`), or frames wait for a healthy instance and that wait is full.
    func blockedRoutes() -> Set<String> {
        var blocked: Set<String> = []
        for (name, state) in routes {
            if state.parked.count >= state.capacity && state.route.qos.overflow != .deadLetter {
                blocked.insert(name)
                continue
            }
            for indices in state.route.egressIndex {
                for index in indices where index >= 0 {
                    let pipe = egress[index]
                    if pipe.available && pipe.isFull && pipe.spec.qos.overflow == .block {
                        blocked.insert(name)
                    }
                }
            }
        }
        return blocked
    }

    func isAvailable(_ state: RouteState, _ target: Int, _ instance: Int) -> Bool {
        if let eligible = state.eligible, !eligible[target] { return false }
        let index = state.route.egressIndex[target][instance]
        return index >= 0 && egress[index].available
    }

    func targetAvailable(_ state: RouteState, _ t: Int) -> Bool {
        for i in state.route.egressIndex[t].indices where isAvailable(state, t, i) { return true }
        return false
    }

    /// The egress index the route's policy picks, or nil when no instance is available.
    func choose(_ state: RouteState, key: UnsafeRawBufferPointer) -> Int? {
        let entry = state.route.entry
        switch state.route.policy {
        case .shard where key.count > 0:
            let hash = ShardHash.fnv1a64(key)
            guard let (t, i) = entry.chooseByKey(hash: hash, isHealthy: { isAvailable(state, $0, $1) }) else { return nil }
            return state.route.egressIndex[t][i]
        case .shard, .roundRobin:
            // Smooth weighted round-robin over services with an available instance, then rotate within one.
            var total = 0
            var best = -1
            for t in entry.targets.indices where targetAvailable(state, t) {
                state.current[t] += entry.targets[t].weight
                total += entry.targets[t].weight
                if best < 0 || state.current[t] > state.current[best] { best = t }
            }
            guard best >= 0 else { return nil }
            state.current[best] -= total
            return rotate(state, target: best)
        case .weighted:
            var total = 0
            for t in entry.targets.indices where targetAvailable(state, t) { total += entry.targets[t].weight }
            guard total > 0 else { return nil }
            var point = Int(random.next() % UInt64(total))
            for t in entry.targets.indices where targetAvailable(state, t) {
                if point < entry.targets[t].weight { return rotate(state, target: t) }
                point -= entry.targets[t].weight
            }
            return nil
        case .leastLoaded:
            var best = -1
            var bestLoad = Int.max
            state.rotation &+= 1
            var position = 0
            for t in entry.targets.indices {
                for i in entry.targets[t].instances.indices {
                    position += 1
                    let index = state.route.egressIndex[t][i]
                    guard index >= 0, isAvailable(state, t, i) else { continue }
                    let load = (egress[index].queue.count + egress[index].queue.inPipe) * 1000 / max(1, entry.targets[t].weight)
                    if load < bestLoad || (load == bestLoad && (position &+ state.rotation) % 2 == 0) {
                        best = index
                        bestLoad = load
                    }
                }
            }
            return best >= 0 ? best : nil
        }
    }

    /// The next available instance of target `t`, in turn.
    func rotate(_ state: RouteState, target t: Int) -> Int? {
        let instances = state.route.egressIndex[t]
        for _ in 0..<instances.count {
            state.rotation &+= 1
            let i = Int(UInt(bitPattern: state.rotation) % UInt(instances.count))
            if isAvailable(state, t, i) { return instances[i] }
        }
        return nil
    }
}
