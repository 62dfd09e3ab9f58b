public import PMMCore
import PMMWire

extension RouterCore {
    /// Installs a new layout (a reload): keeps what both layouts name, opens what is new, drains what is gone,
    /// and routes again every frame that waited or was queued for a pipe that went away.
    ///
    /// - Parameters:
    ///   - replacedIngress: ingress pipes both layouts name whose FIFO `apply` replaced (a new inode): the old
    ///     one is drained, the new one read.
    ///   - replacedEgress: egress pipes both layouts name that were replaced: what the old reader did not read
    ///     goes to the new layout's instances.
    ///   - openSpool: as for `init`.
    public mutating func install(
        _ new: RouterLayout, replacedIngress: Set<String> = [], replacedEgress: Set<String> = [], now: UInt64,
        openSpool: (String) -> SpoolLedger? = { _ in nil }, isReload: Bool = true
    ) {
        let initial = ingress.isEmpty && egress.isEmpty && routes.isEmpty && nextID == 0
        // Routes first: old route index -> new one, by data type.
        let routeNames = new.routes.keys.sorted()
        var newRouteSlots: [String: Int] = [:]
        for (index, name) in routeNames.enumerated() { newRouteSlots[name] = index }
        let routeMap: [Int32] = routes.map { Int32(newRouteSlots[$0.name] ?? -1) }

        // Frames that must be routed again, with the data type they were accepted for.
        var orphans: [(frame: DetachedFrame, dataType: String)] = []
        for r in routes.indices {
            let name = routes[r].name
            for frame in withWaiting(r, { $0.takeNotAcknowledged() }) { orphans.append((frame, name)) }
        }

        // Egress: kept pipes keep their queue and health; removed or replaced ones give their frames back.
        var oldEgress: [String: Int] = [:]
        for (slot, pipe) in egress.enumerated() { oldEgress[pipe.name] = slot }
        var nextEgress: [Egress] = []
        nextEgress.reserveCapacity(new.egress.count)
        var gone: [Int] = []
        for spec in new.egress {
            if let slot = oldEgress.removeValue(forKey: spec.name) {
                if !replacedEgress.contains(spec.name) {
                    var pipe = egress[slot]
                    pipe.spec = spec
                    pipe.queue.remapRoutes(routeMap)
                    nextEgress.append(pipe)
                    continue
                }
                gone.append(slot)
            }
            nextEgress.append(Egress(id: newID(), spec: spec, backoff: options.probeBackoff.first, since: now))
        }
        gone += oldEgress.values.sorted()
        for slot in gone {
            let frames = detach(slot)
            if options.sabotage == .forgetRerouteOnRemovedEgress {
                for frame in frames { if let tag = frame.meta.tag { complete(tag) } }
                if egress[slot].open && !egress[slot].spec.isRemote { actions.append(.closeEgress(egress[slot].id)) }
                continue
            }
            for frame in frames { orphans.append((frame, egress[slot].spec.dataType)) }
            if egress[slot].open && !egress[slot].spec.isRemote { actions.append(.closeEgress(egress[slot].id)) }
        }
        egress = nextEgress
        egressSlots = [:]
        for (slot, pipe) in egress.enumerated() { egressSlots[pipe.id] = slot }

        routes = routeNames.map { name in
            let spec = new.routes[name]!
            let allEgress = spec.egressIndex.flatMap { $0.filter { $0 >= 0 } }
            return Route(
                spec: spec, current: Array(repeating: 0, count: spec.entry.targets.count),
                allEgress: allEgress, readable: Self.readable(spec),
                fallbackCapacity: allEgress.map { egress[$0].spec.capacity }.filter { $0 > 0 }.min() ?? 1)
        }
        routeSlots = newRouteSlots

        // Ingress: kept pipes keep their buffer; removed ones drain; replaced ones drain the old inode.
        var oldIngress: [String: Int] = [:]
        for (slot, pipe) in ingress.enumerated() where !pipe.draining { oldIngress[pipe.name] = slot }
        var nextIngress: [Ingress] = []
        var draining: [Ingress] = ingress.filter(\.draining)
        for spec in new.ingress {
            var pipe: Ingress
            if let slot = oldIngress.removeValue(forKey: spec.name) {
                pipe = ingress[slot]
                pipe.spec = spec
                pipe.dataTypeBytes = Array(spec.dataType.utf8)
                pipe.producerBytes = Array(spec.producer.utf8)
                if replacedIngress.contains(spec.name) {
                    if pipe.spool >= 0 {
                        // The shell splices what the old inode holds into the spool, then opens the new one.
                        actions.append(.openIngress(pipe.id, name: spec.name, pipeSize: spec.pipeSize))
                    } else {
                        // The old descriptor and its partial frame go on as a draining twin.
                        var twin = Ingress(copying: pipe, id: newID())
                        twin.draining = true
                        twin.drainDeadline = now + options.drainGrace
                        twin.bucket = -1
                        draining.append(twin)
                        actions.append(.moveIngress(from: pipe.id, to: twin.id))
                        pipe.buffer.reset()
                        pipe.open = false
                        actions.append(.openIngress(pipe.id, name: spec.name, pipeSize: spec.pipeSize))
                    }
                }
            } else {
                pipe = Ingress(
                    id: newID(), spec: spec, buffer: FrameBuffer(maximumFrameSize: options.maximumFrameSize, readSize: options.readSize),
                    dataTypeBytes: Array(spec.dataType.utf8), producerBytes: Array(spec.producer.utf8), route: -1, bucket: -1, spool: -1)
                actions.append(.openIngress(pipe.id, name: spec.name, pipeSize: spec.pipeSize))
            }
            if options.sabotage == .staleRouteIndexAfterReload && pipe.route >= 0 {
                pipe.route = min(pipe.route, routeNames.count - 1)
            } else {
                pipe.route = newRouteSlots[spec.dataType] ?? -1
            }
            pipe.bucket = bucket(for: spec, now: now)
            if pipe.spool < 0 && spec.qos.delivery == .atLeastOnce {
                if draining.contains(where: { $0.name == spec.name && !$0.closed && ($0.spool >= 0 || $0.awaitingSpool) }) {
                    // The name came back while its old pipe still drains into the spool: one reader per spool,
                    // so this one waits (its producer is held back) until the old one is done.
                    pipe.awaitingSpool = true
                } else {
                    pipe.spool = attachSpool(spec.name, openSpool)
                }
            }
            nextIngress.append(pipe)
        }
        for slot in oldIngress.values.sorted() {
            var pipe = ingress[slot]
            pipe.draining = true
            pipe.drainDeadline = now + options.drainGrace
            pipe.bucket = -1
            if pipe.open || pipe.pendingBytes > 0 || (pipe.spool >= 0 && (spools[pipe.spool]?.unread ?? 0) > 0) {
                draining.append(pipe)
            }
        }
        for d in draining.indices {
            // A draining pipe still routes what it holds, by the new layout.
            draining[d].route = newRouteSlots[draining[d].spec.dataType] ?? -1
        }
        ingress = nextIngress + draining
        reindexIngress()
        let liveKeys = Set(nextIngress.filter { $0.spec.qos.maxRate > 0 }.map { $0.spec.producer + "|" + $0.spec.dataType })
        if liveKeys.count < buckets.count {
            // Buckets no pipe uses any more are forgotten (indices are rebuilt).
            let kept = buckets.filter { liveKeys.contains($0.key) }
            let map = Dictionary(uniqueKeysWithValues: kept.enumerated().map { ($1.key, $0) })
            buckets = kept
            for i in ingress.indices where ingress[i].bucket >= 0 {
                ingress[i].bucket = map[ingress[i].spec.producer + "|" + ingress[i].spec.dataType] ?? -1
            }
        }

        layout = new
        epoch &+= 1
        if !initial && isReload { counters.reloads += 1 }
        installPeers(new, now: now)
        for pipe in egress where !pipe.open && !pipe.probing && !pipe.spec.isRemote { requestProbe(egressSlots[pipe.id]!, now: now) }
        for p in peers.indices { linkHealth(p, revision: peers[p].revision, instances: peers[p].health, now: now) }
        for (frame, dataType) in orphans { reroute(frame, dataType: dataType, now: now) }
        reindexActiveEgress()
    }

    /// Takes over a spool left by an earlier router for an ingress pipe the layout no longer names (a crash
    /// after an apply removed the pipe, before its spool was delivered): its frames are read back and routed
    /// by the data type its name carries, then it is forgotten. Returns false when the name is not an ingress
    /// pipe's or the spool holds nothing undelivered.
    @discardableResult
    public mutating func adoptSpool(_ ledger: SpoolLedger, now: UInt64) -> Bool {
        guard spoolSlots[ledger.pipe] == nil, ledger.live > 0,
            let parsed = Naming.parse(ledger.pipe), parsed.kind == .ingress
        else { return false }
        let spec = RouterLayout.Ingress(
            name: ledger.pipe, producer: parsed.owner, dataType: parsed.dataType, shard: parsed.shard ?? 0, pipeSize: nil,
            qos: QoS(delivery: .atLeastOnce), version: nil)
        var pipe = Ingress(
            id: newID(), spec: spec, buffer: FrameBuffer(maximumFrameSize: options.maximumFrameSize, readSize: options.readSize),
            dataTypeBytes: Array(spec.dataType.utf8), producerBytes: Array(spec.producer.utf8), route: routeSlots[spec.dataType] ?? -1,
            bucket: -1, spool: -1)
        pipe.spool = attachSpool(ledger.pipe) { _ in ledger }
        pipe.draining = true
        pipe.drainDeadline = now + options.drainGrace
        ingress.append(pipe)
        ingressSlots[pipe.id] = ingress.count - 1
        return true
    }

    /// Rebuilds the identifier -> slot map after `ingress` changed shape.
    mutating func reindexIngress() {
        ingressSlots = [:]
        for (slot, pipe) in ingress.enumerated() { ingressSlots[pipe.id] = slot }
    }

    /// The token bucket of a producer's pipes of one type, created or re-tuned to the spec's rate.
    mutating func bucket(for spec: RouterLayout.Ingress, now: UInt64) -> Int {
        guard spec.qos.maxRate > 0 else { return -1 }
        let key = spec.producer + "|" + spec.dataType
        if let index = buckets.firstIndex(where: { $0.key == key }) {
            if buckets[index].rate != spec.qos.maxRate || buckets[index].burst != spec.qos.burst {
                buckets[index].tokens.retune(rate: spec.qos.maxRate, burst: spec.qos.burst, now: now)
                buckets[index].rate = spec.qos.maxRate
                buckets[index].burst = spec.qos.burst
            }
            return index
        }
        buckets.append(
            Bucket(key: key, rate: spec.qos.maxRate, burst: spec.qos.burst, tokens: TokenBucket(rate: spec.qos.maxRate, burst: spec.qos.burst, now: now)))
        return buckets.count - 1
    }

    /// The spool ledger of an at-least-once pipe: kept for the core's lifetime once opened.
    mutating func attachSpool(_ pipe: String, _ openSpool: (String) -> SpoolLedger?) -> Int {
        if let index = spoolSlots[pipe] { return index }
        guard let ledger = openSpool(pipe) else { return -1 }
        if ledger.unread > 0 { notice(.replaying(pipe: pipe, bytes: ledger.unread)) }
        spools.append(ledger)
        spoolRevision &+= 1
        spoolLive += ledger.live
        spoolSlots[pipe] = spools.count - 1
        return spools.count - 1
    }

    /// Per schema version, which targets of `route` can read it (nil where every target can).
    static func readable(_ route: RouterLayout.Route) -> [[Bool]?] {
        guard let highest = route.versions.max(), highest < 4096 else { return [] }
        var table: [[Bool]?] = Array(repeating: nil, count: highest + 1)
        for version in route.versions where version >= 0 {
            let mask = route.entry.targets.indices.map { route.target($0, reads: version) }
            table[version] = mask.allSatisfy { $0 } ? nil : mask
        }
        return table
    }
}

extension RouterCore.Ingress {
    init(
        id: PipeID, spec: RouterLayout.Ingress, buffer: FrameBuffer, dataTypeBytes: [UInt8], producerBytes: [UInt8], route: Int, bucket: Int,
        spool: Int
    ) {
        self.id = id
        self.spec = spec
        self.buffer = buffer
        self.dataTypeBytes = dataTypeBytes
        self.producerBytes = producerBytes
        self.route = route
        self.bucket = bucket
        self.spool = spool
    }

    /// A twin of `other` under a new identifier: the same buffer and counters.
    init(copying other: Self, id: PipeID) {
        self = other
        self.id = id
    }
}

extension RouterCore.Egress {
    init(id: PipeID, spec: RouterLayout.Egress, backoff: UInt64, since: UInt64) {
        self.id = id
        self.spec = spec
        self.backoff = backoff
        self.since = since
    }
}
