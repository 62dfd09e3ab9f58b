import PMMCore
import PMMWire

extension RouterCore {
    /// Queues a frame for the instance its route's policy chooses among the targets that can read its schema
    /// version, makes it wait for a healthy instance, or dead-letters it.
    mutating func deliver(_ frame: UnsafeRawBufferPointer, key: UnsafeRawBufferPointer, meta: FrameMeta, now: UInt64) {
        if options.sabotage == .dropOneInAThousand {
            sabotageCount += 1
            if sabotageCount % 1000 == 0 {
                if let tag = meta.tag { complete(tag) }
                return
            }
        }
        let r = Int(meta.route)
        let version = Int(meta.version)
        var mask: [Bool]?
        if version > 0 && !routes[r].spec.versions.isEmpty {
            guard routes[r].spec.versions.contains(version) else {
                let spec = routes[r].spec
                deadLetter(
                    frame, dataType: spec.dataType, reason: .noReader, pipe: spec.dataType,
                    detail: "version \(version) of '\(spec.dataType)' is not declared (declared: \(spec.versions.sorted().map(String.init).joined(separator: ", ")))",
                    tag: meta.tag)
                return
            }
            if version < routes[r].readable.count, let readable = routes[r].readable[version] {
                guard readable.contains(true) else {
                    let name = routes[r].name
                    deadLetter(frame, dataType: name, reason: .noReader, pipe: name, detail: "no target of '\(name)' can read version \(version)", tag: meta.tag)
                    return
                }
                mask = readable
            }
        }
        guard let slot = choose(r, key: key, mask: mask) else {
            if routes[r].waiting.count >= routes[r].capacity && routes[r].spec.qos.overflow == .deadLetter {
                let name = routes[r].name
                deadLetter(frame, dataType: name, reason: .noHealthyInstance, pipe: name, tag: meta.tag)
            } else {
                withWaiting(r) { $0.append(frame, meta: meta) }
            }
            return
        }
        if egress[slot].isFull && !egress[slot].flushBlocked && egress[slot].queue.unwrittenBytes > 0 {
            // Frames the pipe can take are not held by the router: the shell writes before the queue counts as
            // full (parsing pauses after this frame).
            needsFlush = true
        } else if egress[slot].isFull {
            switch egress[slot].spec.qos.overflow {
            case .deadLetter:
                egress[slot].deadLettered += 1
                let pipe = egress[slot]
                deadLetter(
                    frame, dataType: pipe.spec.dataType, reason: .overflow, pipe: pipe.name, detail: "buffer of \(pipe.capacity) frames full", tag: meta.tag)
                return
            case .dropOldest:
                let dropped = withEgressQueue(slot) { queue -> FrameMeta? in
                    queue.append(frame, meta: meta)
                    return queue.dropOldestUnwritten()
                }
                if let dropped {
                    egress[slot].dropped += 1
                    counters.dropped += 1
                    if let tag = dropped.tag { complete(tag) }
                }
                return
            case .block:
                break  // reading stops while the queue is full (routeBlocked); this frame was already read
            }
        }
        logPeekedFrame(to: slot)
        withEgressQueue(slot) { $0.append(frame, meta: meta) }
    }

    /// Routes a frame taken back from a queue (its consumer died or stalled, or the layout changed), by the data
    /// type it was accepted for.
    mutating func reroute(_ frame: DetachedFrame, dataType: String? = nil, now: UInt64) {
        counters.rerouted += 1
        var meta = frame.meta
        if let dataType {
            guard let route = routeSlots[dataType] else {
                frame.bytes.withUnsafeBytes {
                    deadLetter($0, dataType: dataType, reason: .noRoute, pipe: dataType, detail: "no service consumes '\(dataType)' any more", tag: meta.tag)
                }
                return
            }
            meta.route = Int32(route)
        }
        frame.bytes.withUnsafeBytes { bytes in
            guard case .value(_, let prefix) = Varint.decode(bytes, at: 0),
                let fields = try? EnvelopeScanner.scan(UnsafeRawBufferPointer(rebasing: bytes[prefix...]))
            else {
                preconditionFailure("a queued frame is always a whole envelope")
            }
            let key = UnsafeRawBufferPointer(rebasing: bytes[(prefix + fields.shardKey.lowerBound)..<(prefix + fields.shardKey.upperBound)])
            deliver(bytes, key: key, meta: meta, now: now)
        }
    }

    /// Whether route `r`'s ingress pipes must not be read now: an available consumer's queue is full (overflow
    /// `block`), or the frames waiting for a healthy instance fill the type's buffer.
    public func routeBlocked(_ r: Int) -> Bool {
        // Through the arrays, not `let` copies: a copy of a route or an egress retains and releases its queues.
        if routes[r].waiting.count >= routes[r].capacity && routes[r].spec.qos.overflow != .deadLetter { return true }
        for slot in routes[r].allEgress {
            if egress[slot].available && egress[slot].isFull && egress[slot].spec.qos.overflow == .block { return true }
        }
        return false
    }

    @inline(__always)
    func isAvailable(_ r: Int, _ target: Int, _ instance: Int, _ mask: [Bool]?) -> Bool {
        if let mask, !mask[target] { return false }
        let slot = routes[r].spec.egressIndex[target][instance]
        return slot >= 0 && egress[slot].available && egress[slot].spec.tier <= routes[r].allowedTier
    }

    /// Sets route `r`'s `allowedTier` for a choice now: the nearest tier with an instance available to `mask`
    /// (cached per `epoch` when there is no mask). Only for a `prefer-local` route (`choose` checks, so that
    /// other routes make no call per frame); any other keeps `Int.max`.
    mutating func narrowToNearest(_ r: Int, mask: [Bool]?) {
        if mask == nil && routes[r].tierEpoch == epoch { return }
        var nearest = Int.max
        let index = routes[r].spec.egressIndex
        for t in index.indices where mask?[t] ?? true {
            for slot in index[t] where slot >= 0 && egress[slot].available { nearest = min(nearest, egress[slot].spec.tier) }
        }
        routes[r].allowedTier = nearest
        routes[r].tierEpoch = mask == nil ? epoch : .max
    }

    func targetAvailable(_ r: Int, _ t: Int, _ mask: [Bool]?) -> Bool {
        for i in routes[r].spec.egressIndex[t].indices where isAvailable(r, t, i, mask) { return true }
        return false
    }

    /// The egress slot route `r`'s policy picks, or nil when no instance is available.
    mutating func choose(_ r: Int, key: UnsafeRawBufferPointer, mask: [Bool]?) -> Int? {
        if routes[r].spec.locality == .preferLocal { narrowToNearest(r, mask: mask) }
        if routes[r].spec.policy == .shard && key.count > 0 {
            // Before any copy of the route's entry (a retain and release of its arrays per frame).
            if mask == nil {
                if routes[r].soleEpoch != epoch { findSole(r) }
                if routes[r].sole >= 0 { return routes[r].sole }
            }
            let hash = ShardHash.fnv1a64(key)
            guard let (t, i) = routes[r].spec.entry.chooseByKey(hash: hash, isHealthy: { isAvailable(r, $0, $1, mask) }) else { return nil }
            return routes[r].spec.egressIndex[t][i]
        }
        let entry = routes[r].spec.entry
        switch routes[r].spec.policy {
        case .shard, .roundRobin:
            // Smooth weighted round-robin over services with an available instance, then rotate within one.
            var total = 0
            var best = -1
            for t in entry.targets.indices where targetAvailable(r, t, mask) {
                routes[r].current[t] += entry.targets[t].weight
                total += entry.targets[t].weight
                if best < 0 || routes[r].current[t] > routes[r].current[best] { best = t }
            }
            guard best >= 0 else { return nil }
            routes[r].current[best] -= total
            return rotate(r, target: best, mask: mask)
        case .weighted:
            var total = 0
            for t in entry.targets.indices where targetAvailable(r, t, mask) { total += entry.targets[t].weight }
            guard total > 0 else { return nil }
            var point = Int(random.next() % UInt64(total))
            for t in entry.targets.indices where targetAvailable(r, t, mask) {
                if point < entry.targets[t].weight { return rotate(r, target: t, mask: mask) }
                point -= entry.targets[t].weight
            }
            return nil
        case .leastLoaded:
            // Load: frames held (queued or unread in the pipe) per message/s the instance can take, so a
            // consumer that declared twice the capacity takes twice the backlog before it counts as busier.
            // The target's weight multiplies the capacity.
            var best = -1
            var bestLoad = Double.infinity
            routes[r].rotation &+= 1
            let rotation = routes[r].rotation
            var position = 0
            for t in entry.targets.indices {
                for i in entry.targets[t].instances.indices {
                    position += 1
                    let slot = routes[r].spec.egressIndex[t][i]
                    guard slot >= 0, isAvailable(r, t, i, mask) else { continue }
                    let declared = egress[slot].spec.capacity
                    let capacity = Double(declared > 0 ? declared : routes[r].fallbackCapacity) * Double(max(1, entry.targets[t].weight))
                    let load = Double(egress[slot].queue.count + egress[slot].queue.inPipe) / capacity
                    if load < bestLoad || (load == bestLoad && (position &+ rotation) % 2 == 0) {
                        best = slot
                        bestLoad = load
                    }
                }
            }
            return best >= 0 ? best : nil
        }
    }

    /// Sets route `r`'s `sole`: the one available instance of a target with a weight, when there is exactly one
    /// (the key hash would pick it for every key), else -1. Valid until availability changes (`epoch`).
    mutating func findSole(_ r: Int) {
        var sole = -1
        var count = 0
        let entry = routes[r].spec.entry
        for t in entry.targets.indices where entry.targets[t].weight > 0 {
            for i in routes[r].spec.egressIndex[t].indices where isAvailable(r, t, i, nil) {
                sole = routes[r].spec.egressIndex[t][i]
                count += 1
            }
        }
        routes[r].sole = count == 1 ? sole : -1
        routes[r].soleEpoch = epoch
    }

    /// The next available instance of target `t`, in turn.
    mutating func rotate(_ r: Int, target t: Int, mask: [Bool]?) -> Int? {
        let count = routes[r].spec.egressIndex[t].count
        for _ in 0..<count {
            routes[r].rotation &+= 1
            let i = Int(UInt(bitPattern: routes[r].rotation) % UInt(count))
            if isAvailable(r, t, i, mask) { return routes[r].spec.egressIndex[t][i] }
        }
        return nil
    }

    /// Frames that waited for an instance of route `r` go out now.
    mutating func releaseWaiting(_ r: Int, now: UInt64) {
        guard r >= 0, !routes[r].waiting.isEmpty else { return }
        for frame in withWaiting(r, { $0.takeNotAcknowledged() }) { reroute(frame, now: now) }
    }

    mutating func deadLetter(_ bytes: [UInt8], dataType: String, reason: DeadLetterReason, pipe: String, detail: String) {
        bytes.withUnsafeBytes { deadLetter($0, dataType: dataType, reason: reason, pipe: pipe, detail: detail) }
    }

    /// Keeps an undeliverable frame as a dead letter. An at-least-once frame is done once it is there.
    mutating func deadLetter(
        _ frame: UnsafeRawBufferPointer, dataType: String, reason: DeadLetterReason, pipe: String, detail: String = "", tag: SpoolTag? = nil
    ) {
        counters.deadLetters[reason, default: 0] += 1
        actions.append(.deadLetter(DeadLetterRecord(bytes: Array(frame), dataType: dataType, reason: reason, pipe: pipe, detail: detail)))
        if let tag { complete(tag) }
    }
}
