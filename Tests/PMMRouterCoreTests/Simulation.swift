import Foundation
import Synchronization
import PMMCore
import PMMRouterCore
import PMMSpecYAML
import PMMWire

/// The knobs of one simulated mesh; a schedule moves between variants of it with applies.
struct SimMesh: Hashable {
    var ordersShards = 2
    var ordersReplicas = 2
    var ordersPolicy = "shard"
    var ordersBuffer = 64
    var ordersRate = 0
    var eventsPresent = true
    var eventsReplicas = 2
    var eventsOverflow = "block"
    var eventsBuffer = 32
    var eventsPolicy = "round-robin"
    /// `events` is at-most-once unless an apply made it at-least-once (and back): an operator's change of
    /// `qos.delivery` while frames are buffered, queued and in the pipe.
    var eventsDelivery = "at-most-once"
    var auditConsumed = true
    /// `registration` of `worker` (orders' consumer), and which of its instances hold a lease (index -> the
    /// capacity registered, 0 for none).
    var workerRegistration = "optional"
    var workerLeases: [Int: Int] = [0: 0, 1: 0, 2: 0]

    var yaml: String {
        """
        apiVersion: pmm/v1
        kind: Mesh
        name: sim
        root: /sim
        dataTypes:
          orders:
            shards: \(ordersShards)
            qos: {delivery: at-least-once, buffer: \(ordersBuffer), maxRate: \(ordersRate)}
        \(eventsPresent ? "  events:\n    qos: {delivery: \(eventsDelivery), buffer: \(eventsBuffer), overflow: \(eventsDelivery == "at-least-once" && eventsOverflow == "drop-oldest" ? "block" : eventsOverflow)}" : "")
          audit:
            qos: {delivery: at-least-once, overflow: dead-letter, buffer: 8}
        services:
          shop:
            uid: 0
            produces: [{dataType: orders}\(eventsPresent ? ", {dataType: events}" : ""), {dataType: audit}]
          worker:
            uid: 0
            replicas: \(ordersReplicas)
            registration: \(workerRegistration)
            consumes: [{dataType: orders}]
        \(eventsPresent ? "  tracker:\n    uid: 0\n    replicas: \(eventsReplicas)\n    consumes: [{dataType: events}]" : "")
        \(auditConsumed ? "  auditor:\n    uid: 0\n    consumes: [{dataType: audit}]" : "")
        routes:
          orders:
            policy: \(ordersPolicy)
            targets: [{service: worker}]
        \(eventsPresent ? "  events:\n    policy: \(eventsPolicy)\n    targets: [{service: tracker}]" : "")
        \(auditConsumed ? "  audit:\n    targets: [{service: auditor}]" : "")

        """
    }

    /// Loaded once per variant (a schedule returns to the same few).
    var spec: MeshSpec {
        if let spec = Self.cache.withLock({ $0[self] }) { return spec }
        let spec = load()
        Self.cache.withLock { $0[self] = spec }
        return spec
    }

    static let cache = Mutex<[SimMesh: MeshSpec]>([:])

    func load() -> MeshSpec {
        let result = SpecLoader.loadAndValidate(yaml: yaml, file: "sim.yaml")
        guard var spec = result.spec, !result.diagnostics.contains(where: { $0.severity == .error }) else {
            fatalError("simulated mesh does not load: \(result.diagnostics.map(\.summary))\n\(yaml)")
        }
        // The runtime overlay, as Reconciler.currentRevision fills it from the registry.
        spec.leases = Dictionary(uniqueKeysWithValues: workerLeases.map { ("worker-\($0.key)", InstanceLease(capacity: $0.value)) })
        return spec
    }
}

/// A small deterministic generator (PCG-style LCG): schedules are a pure function of the seed.
struct SimRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed &* 0x9e37_79b9_7f4a_7c15 &+ 1 }
    mutating func next() -> UInt64 {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(1, n))) }
    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
}

/// One seeded schedule: a mesh, a router, producers and consumers, and a run of random events biased towards
/// the dangerous moments (applies while frames wait, deaths right after writes, crashes after checkpoints).
struct Simulation {
    let seed: UInt64
    var random: SimRandom
    var world: SimWorld
    var mesh: SimMesh
    var steps: [String] = []
    /// Draws the lease changes (registrations, deregistrations, expiries) from a stream of its own, so the
    /// schedule of every other event stays what it was for a seed; nil: leases never change (the regression
    /// seeds replay their original schedules).
    var leaseRandom: SimRandom?
    /// Draws the changes of `events`' delivery, likewise from a stream of its own; nil: never.
    var deliveryRandom: SimRandom?
    /// Memory and spool bounds small enough to be reached.
    static var options: RouterCoreOptions {
        var options = RouterCoreOptions()
        options.maximumFrameSize = 64 << 10
        options.readSize = 16 << 10
        options.memoryLimit = 96 << 10
        options.spoolLimit = 256 << 10
        options.stallTimeout = 2_000_000_000
        options.drainGrace = 3_000_000_000
        // Any run of frames a peek finds may be spliced (the sim's frames are small).
        options.minimumSplice = 1
        return options
    }

    init(seed: UInt64, sabotage: Sabotage? = nil, leases: Bool = true, peeks: Bool = true, deliveries: Bool = false) {
        self.seed = seed
        random = SimRandom(seed: seed)
        mesh = SimMesh()
        mesh.ordersShards = 1 + random.below(3)
        mesh.ordersReplicas = 1 + random.below(3)
        mesh.ordersPolicy = random.pick(["shard", "round-robin", "least-loaded", "weighted"])
        mesh.eventsOverflow = random.pick(["block", "drop-oldest", "dead-letter"])
        mesh.ordersRate = random.chance(20) ? 200 : 0
        if leases {
            var leaseRandom = SimRandom(seed: seed ^ 0x5ea5_e5ea_5e00)
            if leaseRandom.chance(50) {
                mesh.workerRegistration = "required"
                mesh.workerLeases = [:]
                for index in 0..<3 where leaseRandom.chance(60) { mesh.workerLeases[index] = leaseRandom.pick([0, 0, 50, 500]) }
            }
            self.leaseRandom = leaseRandom
        }
        if deliveries { deliveryRandom = SimRandom(seed: seed ^ 0xde1_1ce5_0000) }
        var options = Self.options
        options.sabotage = sabotage
        world = SimWorld(spec: mesh.spec, options: options)
        // Its own stream too, so the other events keep their schedule.
        if peeks {
            world.peekRandom = SimRandom(seed: seed ^ 0x7ee_5e11_ce00)
            world.spliceBackRandom = SimRandom(seed: seed ^ 0x5b1_ceba_c000)
        }
    }

    /// Runs `count` random steps, then lets everything settle; returns the violations found.
    mutating func run(steps count: Int) -> [String] {
        for _ in 0..<count {
            step()
            traceFrame()
            if !world.violations.isEmpty { return world.violations }
        }
        settle()
        return world.violations + world.accountingViolations()
    }

    mutating func note(_ text: String) { steps.append("\(world.now / 1_000_000)ms \(text)") }

    static let traced = ProcessInfo.processInfo.environment["PMM_SIM_TRACE"].flatMap { UInt64($0) }
    var lastPlace = ""

    /// With PMM_SIM_TRACE=id, prints where that frame is whenever that changes.
    mutating func traceFrame() {
        guard let id = Self.traced else { return }
        let place = world.whereIs(id)
        if place != lastPlace {
            print("TRACE \(id) after [\(steps.last ?? "")]: \(place)")
            lastPlace = place
        }
    }

    var ingressNames: [String] { world.core.layout.ingress.map(\.name) }
    var egressNames: [String] { world.core.layout.egress.map(\.name).sorted() }

    mutating func step() {
        let roll = random.below(100)
        switch roll {
        case 0..<30:
            let pipes = ingressNames
            guard !pipes.isEmpty else { return }
            let pipe = random.pick(pipes)
            let count = 1 + random.below(12)
            for _ in 0..<count {
                let size = random.chance(5) ? 8_000 + random.below(30_000) : random.below(600)
                let key: [UInt8] = random.chance(10) ? [] : Array("k\(random.below(9))".utf8)
                world.produce(pipe: pipe, key: key, payloadSize: size)
            }
            note("produce \(count) on \(pipe)")
        case 30..<50:
            world.routerPass()
            note("router pass")
        case 50..<66:
            let names = egressNames
            guard !names.isEmpty else { return }
            let name = random.pick(names)
            world.consume(name, limit: random.chance(30) ? 1 + random.below(300) : 1 << 20)
            note("consume \(name)")
        case 66..<72:
            world.now += UInt64(1 + random.below(400)) * 1_000_000
            note("clock")
        case 72..<75:
            world.now += UInt64(1 + random.below(3_000)) * 1_000_000
            note("clock long")
        case 75..<79:
            let names = egressNames
            guard !names.isEmpty else { return }
            let name = random.pick(names)
            if world.consumers[name]?.alive == true {
                world.killConsumer(name)
                note("kill \(name)")
            } else {
                // A process restart takes longer than the router takes to see POLLERR and close its end (which
                // ends the old pipe and its half-read frame). Restarting inside that window is the race noted
                // in the README: the new reader would see the old one's torn tail.
                if world.fifos[name]?.writers ?? 0 > 0 { world.routerPass() }
                world.startConsumer(name)
                note("start \(name)")
            }
        case 79..<82:
            let names = egressNames
            guard !names.isEmpty else { return }
            let name = random.pick(names)
            world.consumers[name]?.paused.toggle()
            note("pause/resume \(name)")
        case 82..<86:
            mutateMesh()
        case 86..<88:
            world.checkpoint()
            if random.chance(50) {
                world.crash()
                note("checkpoint, crash")
            } else {
                note("checkpoint")
            }
        case 88..<90:
            world.crash()
            note("crash")
        case 90..<92:
            let pipes = ingressNames
            guard !pipes.isEmpty else { return }
            let pipe = random.pick(pipes)
            let oversized = random.chance(50)
            world.garbage(pipe: pipe, oversized: oversized, seed: random.next())
            note("garbage on \(pipe)\(oversized ? " (oversized length)" : "")")
        default:
            world.checkpoint()
            world.routerPass()
            note("checkpoint + pass")
        }
    }

    mutating func mutateMesh() {
        var next = mesh
        switch random.below(7) {
        case 0: next.ordersShards = 1 + random.below(3)
        case 1: next.ordersReplicas = 1 + random.below(3)
        case 2: next.eventsPresent.toggle()
        case 3: next.eventsReplicas = 1 + random.below(3)
        case 4: next.ordersRate = random.pick([0, 0, 150, 400])
        case 5: next.eventsOverflow = random.pick(["block", "drop-oldest", "dead-letter"])
        default: next.auditConsumed.toggle()
        }
        if var leaseRandom, leaseRandom.chance(60) {
            // A lease starts or ends (registration, deregistration, expiry), or the spec switches registration.
            if leaseRandom.chance(80) {
                let index = leaseRandom.below(3)
                next.workerLeases[index] = next.workerLeases[index] == nil ? leaseRandom.pick([0, 0, 50, 500]) : nil
            } else {
                next.workerRegistration = next.workerRegistration == "required" ? "optional" : "required"
            }
            self.leaseRandom = leaseRandom
        }
        if var deliveryRandom {
            if deliveryRandom.chance(15) { next.eventsDelivery = next.eventsDelivery == "at-most-once" ? "at-least-once" : "at-most-once" }
            self.deliveryRandom = deliveryRandom
        }
        guard next != mesh else { return }
        let delivery = next.eventsDelivery != mesh.eventsDelivery ? " (events \(next.eventsDelivery))" : ""
        mesh = next
        world.apply(mesh.spec)
        note("apply revision \(world.revision)\(delivery) \(mesh)")
    }

    /// Everything comes back and drains: consumers alive and reading, the clock moving, the router passing.
    mutating func settle() {
        if mesh.workerRegistration == "required" && mesh.workerLeases.count < 3 {
            // With no lease, orders wait for one (held, not lost): every instance registers before the drain.
            mesh.workerLeases = [0: 0, 1: 0, 2: 0]
            world.apply(mesh.spec)
            note("apply revision \(world.revision) (every worker leased)")
        }
        world.routerPass()
        for name in egressNames {
            if world.consumers[name]?.alive != true { world.startConsumer(name) }
            world.consumers[name]?.paused = false
        }
        for _ in 0..<600 {
            world.now += 20_000_000
            world.routerPass()
            traceFrame()
            for name in egressNames { world.consume(name, limit: 1 << 20) }
            traceFrame()
            if world.core.heldFrames == 0 && world.core.ingress.allSatisfy({ $0.pendingBytes == 0 }) && world.fifosEmpty
                && world.core.spools.allSatisfy({ ($0?.unread ?? 0) == 0 })
            {
                break
            }
        }
    }
}

extension SimWorld {
    /// Where frame `id` is now (for tracing a failing seed with PMM_SIM_TRACE=id).
    func whereIs(_ id: UInt64) -> String {
        var places: [String] = []
        for fifo in Set(fifos.values.map { ObjectIdentifier($0) }).compactMap({ key in fifos.values.first { ObjectIdentifier($0) == key } })
        where Self.frameIDs(in: fifo.bytes).contains(id) {
            places.append("fifo \(fifo.name)#\(fifo.inode)")
        }
        for fifo in ingressFDs.values where Self.frameIDs(in: fifo.bytes).contains(id) { places.append("held fifo \(fifo.name)#\(fifo.inode)") }
        for fifo in egressFDs.values where Self.frameIDs(in: fifo.bytes).contains(id) { places.append("egress fifo \(fifo.name)#\(fifo.inode)") }
        for pipe in core.ingress where Self.frameIDs(in: pipe.debugPendingBytes).contains(id) { places.append("buffer of \(pipe.name)") }
        for pipe in core.egress where Self.frameIDs(in: pipe.queue.heldFrameBytes).contains(id) {
            places.append("queue of \(pipe.name) (written \(pipe.queue.written), acked \(pipe.queue.acknowledged))")
        }
        for route in core.routes where Self.frameIDs(in: route.waiting.heldFrameBytes).contains(id) { places.append("waiting") }
        for (name, file) in spoolFiles where Self.frameIDs(in: file.bytes).contains(id) { places.append("spool \(name) mark \(file.mark)") }
        for (name, consumer) in consumers where Self.frameIDs(in: consumer.partial).contains(id) { places.append("partial of \(name)") }
        // A marker cut in two: the head in a spool's end or a pipe's buffer, the rest in the pipe.
        for fifo in ingressFDs.values {
            let head = Array(fifo.bytes.prefix(64))
            if let file = spoolFiles[fifo.name], Self.frameIDs(in: Array(file.bytes.suffix(64)) + head).contains(id) {
                places.append("straddles spool \(fifo.name) | fifo #\(fifo.inode)")
            }
            for pipe in core.ingress where pipe.name == fifo.name && Self.frameIDs(in: Array(pipe.debugPendingBytes.suffix(64)) + head).contains(id) {
                places.append("straddles buffer of \(pipe.name) | fifo #\(fifo.inode)")
            }
        }
        if let names = delivered[id] { places.append("delivered to \(names)") }
        places.append("fate \(sent[id].map { "\($0.fate)" } ?? "unsent")")
        return places.joined(separator: "; ")
    }

    var stateSummary: String {
        var lines: [String] = ["now \(now / 1_000_000)ms held \(core.heldBytes) spoolLive \(core.spoolLive) waiting \(core.waitingByType)"]
        for (slot, pipe) in core.ingress.enumerated() {
            let ledger = core.spool(of: slot)
            lines.append(
                "in \(pipe.name) \(pipe.id) open \(pipe.open) draining \(pipe.draining) wants \(core.wantsToRead(slot, now: now)) paused \(pipe.pausedUntil / 1_000_000)ms backlog \(pipe.backlog) pending \(pipe.pendingBytes) spool \(ledger.map { "size \($0.size) read \($0.readOffset) mark \($0.watermark) inflight \($0.inFlight)" } ?? "-") fifo \(ingressFDs[pipe.id].map { "\($0.bytes.count)B w\($0.writers)" } ?? "none")")
        }
        for pipe in core.egress {
            lines.append("out \(pipe.name) open \(pipe.open) stalled \(pipe.stalled) queued \(pipe.queue.count) inPipe \(pipe.queue.inPipe) fifo \(egressFDs[pipe.id].map { "\($0.bytes.count)B r\($0.readers)" } ?? "none")")
        }
        return lines.joined(separator: "\n")
    }

    /// No pipe holds bytes, counting the removed ones the router still drains (unlinked, held open).
    var fifosEmpty: Bool { fifos.values.allSatisfy { $0.bytes.isEmpty } && ingressFDs.values.allSatisfy { $0.bytes.isEmpty } }
}
