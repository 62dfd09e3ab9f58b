import Foundation
import PMMCore
import PMMRouterCore
import PMMSpecYAML
import PMMWire
import SwiftProtobuf
import Testing

/// Several routers' cores from one spec, linked as `LinkManager` links them (numbered frames per direction,
/// cumulative acknowledgements, a Hello that says the highest frame received), with consumers that read in
/// pieces and die, and links that drop and come back. Deterministic: a seed drives every choice.
struct CrossNodeWorld {
    struct Node {
        var name: String
        var core: RouterCore
        /// The producer's ingress pipe (on nodes with a producer), then its spool file.
        var ingressPipe: [UInt8] = []
        var spoolFile: [UInt8] = []
        /// Open egress pipes: what the router wrote and the consumer has not read.
        var egressPipes: [PipeID: [UInt8]] = [:]
        /// Egress pipe names whose consumer is alive, and the bytes each read that are not yet a whole frame.
        var readers: [String: [UInt8]] = [:]
        var announced: [String: Bool] = [:]
    }

    /// One direction of a link.
    struct Wire {
        var up = true
        var frames: [(sequence: UInt64, target: String, bytes: [UInt8])] = []
        var acks: [UInt64] = []
        /// Sender side: the next number, and the highest acknowledgement heard.
        var nextSequence: UInt64 = 1
        var acknowledged: UInt64 = 0
        /// Receiver side (its link manager): the highest number received.
        var highestReceived: UInt64 = 0
    }

    var nodes: [Node]
    var wires: [String: Wire] = [:]
    var random: SplitMix
    var now: UInt64 = 0
    var produced: [UInt64: [UInt8]] = [:]
    var nextID: UInt64 = 1
    /// Frame id -> where it was read whole (node/instance), in order.
    var delivered: [UInt64: [String]] = [:]
    var deadLettered: [RouterAction] = []
    var violations: [String] = []
    let window = 40

    init(spec: MeshSpec, seed: UInt64, sabotage: Sabotage? = nil) {
        random = SplitMix(seed: seed)
        var options = RouterCoreOptions()
        options.sabotage = sabotage
        nodes = spec.nodes.map(\.name).sorted().map { name in
            let layout = RouterLayout(spec: spec, revision: 1, node: name)
            let core = RouterCore(layout: layout, options: options, now: 0, seed: seed) { SpoolLedger(pipe: $0, size: 0, mark: 0) }
            return Node(name: name, core: core)
        }
        for x in nodes.indices {
            for pipe in nodes[x].core.layout.egress where !pipe.isRemote { nodes[x].readers[pipe.name] = [] }
        }
        for x in nodes.indices { perform(x) }
        for x in nodes.indices { for y in nodes.indices where x != y { connect(x, y) } }
    }

    static func wire(_ x: Int, _ y: Int) -> String { "\(x)>\(y)" }

    func index(_ name: String) -> Int { nodes.firstIndex { $0.name == name }! }

    // MARK: Producing and consuming

    mutating func produce(on x: Int, key: String) {
        guard nodes[x].ingressPipe.count < 65_536, let pipe = nodes[x].core.layout.ingress.first else { return }
        var envelope = Envelope()
        envelope.dataType = pipe.dataType
        envelope.source = pipe.producer
        envelope.shardKey = Data(key.utf8)
        envelope.sequence = nextID
        envelope.payload = Data(repeating: 0x61, count: Int(random.next() % 200))
        let frame = try! envelope.framed()
        produced[nextID] = Array(key.utf8)
        nextID += 1
        nodes[x].ingressPipe += frame
    }

    /// Performs node `x`'s actions as its shell would.
    mutating func perform(_ x: Int) {
        for action in nodes[x].core.takeActions() {
            switch action {
            case .openIngress(let id, _, _): nodes[x].core.ingressOpened(id)
            case .openEgress(let id, let name, _):
                if nodes[x].readers[name] != nil {
                    nodes[x].egressPipes[id] = []
                    nodes[x].core.egressOpened(id, now: now)
                } else {
                    nodes[x].core.egressUnavailable(id, .noReader, now: now)
                }
            case .closeEgress(let id): nodes[x].egressPipes[id] = nil
            case .deadLetter: deadLettered.append(action)
            case .resetIngress(_, _, _, _, let error): violations.append("\(nodes[x].name): ingress reset: \(error)")
            default: break
            }
        }
    }

    /// One pass of node `x`'s poll loop: read the ingress pipe (through the spool), write and read the egress
    /// pipes, timers.
    mutating func pass(_ x: Int) {
        perform(x)
        for slot in nodes[x].core.ingress.indices {
            for _ in 0..<8 {
                guard nodes[x].core.wantsToRead(slot, now: now) else { break }
                guard let ledger = nodes[x].core.spool(of: slot) else { break }
                if ledger.unread == 0 {
                    guard !nodes[x].ingressPipe.isEmpty || nodes[x].core.hasBufferedWork(slot) else { break }
                    let n = nodes[x].ingressPipe.count
                    nodes[x].spoolFile += nodes[x].ingressPipe
                    nodes[x].ingressPipe = []
                    nodes[x].core.spoolAppended(slot, count: n)
                }
                let ledger2 = nodes[x].core.spool(of: slot)!
                let file = nodes[x].spoolFile
                let offset = Int(ledger2.readOffset)
                let readable = Int(ledger2.readable)
                let n = nodes[x].core.withReadSpace(slot) { raw in
                    let count = min(raw.count, readable, 4096)
                    file.withUnsafeBytes { raw.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<(offset + count)])) }
                    return count
                }
                nodes[x].core.ingressRead(slot, count: n, now: now)
                perform(x)
                writeEgress(x)
                if n == 0 { break }
            }
        }
        writeEgress(x)
        consume(x)
        nodes[x].core.tick(now: now)
        perform(x)
    }

    mutating func writeEgress(_ x: Int) {
        for slot in nodes[x].core.egress.indices where nodes[x].core.hasUnwritten(slot) {
            let id = nodes[x].core.egress[slot].id
            guard let pipe = nodes[x].egressPipes[id] else { continue }
            let count = nodes[x].core.withUnwritten(slot, room: 65_536 - pipe.count, pipeEmpty: pipe.isEmpty) { bytes in
                nodes[x].egressPipes[id]! += bytes
                return bytes.count
            }
            if count > 0 { nodes[x].core.wrote(slot, count: count) } else { nodes[x].core.egressWouldBlock(slot) }
        }
    }

    /// Consumers read a random share of their pipes; the router learns what is left (FIONREAD).
    mutating func consume(_ x: Int) {
        for slot in nodes[x].core.egress.indices {
            let pipe = nodes[x].core.egress[slot]
            guard let bytes = nodes[x].egressPipes[pipe.id] else { continue }
            if nodes[x].readers[pipe.name] != nil, !bytes.isEmpty {
                let n = Int(random.next() % UInt64(bytes.count + 1))
                nodes[x].readers[pipe.name]! += bytes[0..<n]
                nodes[x].egressPipes[pipe.id]!.removeFirst(n)
                parseRead(x, pipe: pipe.name)
            }
            nodes[x].core.egressUnread(slot, unread: nodes[x].egressPipes[pipe.id]!.count, now: now)
        }
        perform(x)
    }

    mutating func parseRead(_ x: Int, pipe: String) {
        var buffer = nodes[x].readers[pipe]!
        while case .value(let length, let prefix) = buffer.withUnsafeBytes({ Varint.decode($0, at: 0) }), buffer.count >= prefix + Int(length) {
            let body = Array(buffer[prefix..<(prefix + Int(length))])
            buffer.removeFirst(prefix + Int(length))
            guard let envelope = try? Envelope(serializedBytes: body) else {
                violations.append("\(pipe): not an envelope")
                continue
            }
            delivered[envelope.sequence, default: []].append("\(nodes[x].name)/\(pipe)")
        }
        nodes[x].readers[pipe] = buffer
    }

    // MARK: Links

    /// Sends, delivers and acknowledges on every link, as far as the schedule allows.
    mutating func linkPass() {
        for x in nodes.indices {
            for y in nodes.indices where x != y { send(x, y) }
        }
        for x in nodes.indices {
            for y in nodes.indices where x != y { deliver(x, y, count: Int(random.next() % 60)) }
        }
        for y in nodes.indices {
            var acks: [(String, UInt64)] = []
            nodes[y].core.linkAcknowledgements { peer, _, upTo in acks.append((peer, upTo)) }
            for (peer, upTo) in acks {
                let x = index(peer)
                if wires[Self.wire(x, y)]!.up { wires[Self.wire(x, y)]!.acks.append(upTo) }
            }
        }
        for x in nodes.indices {
            for y in nodes.indices where x != y {
                let key = Self.wire(x, y)
                let acks = wires[key]!.acks
                wires[key]!.acks = []
                for upTo in acks {
                    nodes[x].core.linkAcknowledged(nodes[x].core.peerSlot(nodes[y].name)!, upTo: upTo)
                    wires[key]!.acknowledged = max(wires[key]!.acknowledged, upTo)
                }
            }
        }
        announceHealth()
        for x in nodes.indices { perform(x) }
    }

    mutating func send(_ x: Int, _ y: Int) {
        let key = Self.wire(x, y)
        guard wires[key]!.up else { return }
        let p = nodes[x].core.peerSlot(nodes[y].name)!
        let room = window - Int(wires[key]!.nextSequence - 1 - wires[key]!.acknowledged)
        guard room > 0 else { return }
        // As the router does: the frames lent by their queues, the link taking a prefix (here, by its window in
        // frames).
        let taken: [(slot: Int, bytes: [UInt8])] = nodes[x].core.withLinkFrames(p, limit: .max) { slots, frames in
            zip(slots, frames).prefix(room).map { ($0, Array($1)) }
        }
        guard !taken.isEmpty else { return }
        let first = wires[key]!.nextSequence
        for (slot, bytes) in taken {
            wires[key]!.frames.append((wires[key]!.nextSequence, nodes[x].core.egress[slot].name, bytes))
            wires[key]!.nextSequence += 1
        }
        nodes[x].core.linkSent(p, firstSequence: first, slots: taken.map(\.slot))
    }

    mutating func deliver(_ x: Int, _ y: Int, count: Int) {
        let key = Self.wire(x, y)
        let n = min(count, wires[key]!.frames.count)
        guard n > 0 else { return }
        let batch = wires[key]!.frames.prefix(n)
        wires[key]!.frames.removeFirst(n)
        let p = nodes[y].core.peerSlot(nodes[x].name)!
        for frame in batch {
            // The link manager drops what it already received (a resend); the router never sees it.
            guard frame.sequence > wires[key]!.highestReceived else { continue }
            wires[key]!.highestReceived = frame.sequence
            frame.bytes.withUnsafeBytes { raw in
                nodes[y].core.linkFrameReceived(p, stream: UInt64(x + 1), sequence: frame.sequence, target: frame.target, frame: raw, now: now)
            }
        }
        perform(y)
    }

    mutating func announceHealth() {
        for x in nodes.indices {
            let health = nodes[x].core.localHealth
            guard health != nodes[x].announced else { continue }
            nodes[x].announced = health
            for y in nodes.indices where y != x && wires[Self.wire(x, y)]!.up {
                nodes[y].core.linkHealth(nodes[y].core.peerSlot(nodes[x].name)!, revision: 1, instances: health, now: now)
            }
        }
    }

    /// The cable between `x` and `y` is cut: frames and acknowledgements on it are lost, both routers notice.
    mutating func cut(_ x: Int, _ y: Int) {
        for (a, b) in [(x, y), (y, x)] {
            let key = Self.wire(a, b)
            guard wires[key]?.up ?? true else { continue }
            wires[key]!.up = false
            wires[key]!.frames = []
            wires[key]!.acks = []
            nodes[a].core.linkDisconnected(nodes[a].core.peerSlot(nodes[b].name)!, reason: "cut", now: now)
            perform(a)
        }
    }

    /// The link between `x` and `y` comes up: each side's Hello says the highest frame it received.
    mutating func connect(_ x: Int, _ y: Int) {
        let key = Self.wire(x, y)
        var wire = wires[key] ?? Wire()
        guard wires[key] == nil || !wire.up else { return }
        wire.up = true
        wire.nextSequence = wire.highestReceived + 1
        wire.acknowledged = wire.highestReceived
        wires[key] = wire
        let health = nodes[y].core.localHealth
        nodes[x].core.linkConnected(nodes[x].core.peerSlot(nodes[y].name)!, resumeAfter: wire.highestReceived, revision: 1, health: health, now: now)
        perform(x)
    }

    mutating func killConsumer(_ x: Int, _ pipe: String) {
        guard nodes[x].readers.removeValue(forKey: pipe) != nil else { return }
        guard let slot = nodes[x].core.egress.firstIndex(where: { $0.name == pipe }) else { return }
        let id = nodes[x].core.egress[slot].id
        if let bytes = nodes[x].egressPipes[id] {
            nodes[x].core.egressFailed(slot, unread: bytes.count, reason: "killed", now: now)
            nodes[x].egressPipes[id] = nil
        }
        perform(x)
    }

    mutating func startConsumer(_ x: Int, _ pipe: String) {
        guard nodes[x].readers[pipe] == nil else { return }
        nodes[x].readers[pipe] = []
        nodes[x].core.egressOpenedByReader(named: pipe, now: now)
    }

    mutating func step() {
        now += 1_000_000
        for x in nodes.indices { pass(x) }
        linkPass()
    }

    /// Every frame produced was read whole somewhere, and every spool holds nothing undelivered.
    var lost: [UInt64] { produced.keys.filter { delivered[$0] == nil }.sorted() }
    var duplicated: Int { delivered.values.reduce(0) { $0 + $1.count - 1 } }
}

@Suite("Routing across nodes, in the core")
struct CrossNodeTests {
    static func spec(locality: String = "any", sinkPlacement: String = "{b: 2, c: 2}") -> MeshSpec {
        let yaml = """
            apiVersion: pmm/v1
            kind: Mesh
            name: wide
            root: /wide
            nodes:
              a: {address: 10.0.0.1:7400, labels: {zone: west}}
              b: {address: 10.0.0.2:7400, labels: {zone: west}}
              c: {address: 10.0.0.3:7400, labels: {zone: east}}
            dataTypes:
              metrics:
                qos: {delivery: at-least-once, buffer: 64, overflow: block}
            services:
              gen:
                uid: 0
                placement: {a: 1}
                produces: [{dataType: metrics}]
              sink:
                uid: 0
                placement: \(sinkPlacement)
                consumes: [{dataType: metrics}]
            routes:
              metrics:
                policy: shard
                locality: \(locality)
                targets: [{service: sink}]

            """
        let result = SpecLoader.loadAndValidate(yaml: yaml, file: "wide.yaml")
        precondition(!result.diagnostics.hasErrors, "\(result.diagnostics.map(\.summary))")
        return result.spec!
    }

    @Test func layout_knowsRemoteInstancesAsRemoteEgress_andReadsOnlyItsOwnIngress() {
        let spec = Self.spec()
        let a = RouterLayout(spec: spec, revision: 1, node: "a")
        #expect(a.ingress.map(\.name) == ["gen.metrics.s0.in"])
        #expect(a.egress.allSatisfy { $0.isRemote })
        #expect(a.egress.map(\.node) == ["b", "b", "c", "c"])
        #expect(a.egress.map(\.tier) == [1, 1, 2, 2], "b shares a's zone")
        #expect(a.peers.map(\.name) == ["b", "c"])
        let b = RouterLayout(spec: spec, revision: 1, node: "b")
        #expect(b.ingress.isEmpty, "no producer placed on b")
        #expect(b.egress.filter { !$0.isRemote }.map(\.instance) == ["sink-b-0", "sink-b-1"])
        // The same table everywhere: the route's instances are in the same order on every node.
        #expect(a.routes["metrics"]!.entry == b.routes["metrics"]!.entry)
    }

    @Test func framesCross_toTheInstanceTheKeyMapsTo_andAreDoneWhenThePeerAcknowledges() {
        var world = CrossNodeWorld(spec: Self.spec(), seed: 1)
        for i in 0..<400 { world.produce(on: 0, key: "k\(i % 37)") }
        for _ in 0..<200 { world.step() }
        #expect(world.lost.isEmpty)
        #expect(world.duplicated == 0)
        #expect(world.violations.isEmpty)
        // A key always reached the same instance (nothing failed).
        var instanceOfKey: [[UInt8]: Set<String>] = [:]
        for (id, places) in world.delivered { instanceOfKey[world.produced[id]!, default: []].formUnion(places) }
        #expect(instanceOfKey.values.allSatisfy { $0.count == 1 })
        #expect(Set(instanceOfKey.values.flatMap { $0 }.map { $0.prefix(1) }) == ["b", "c"], "both nodes get keys")
        // Acknowledged over the link: the producer's spool has nothing undelivered.
        #expect(world.nodes[0].core.spoolLive == 0)
        #expect(world.nodes[0].core.peers.allSatisfy { $0.unacknowledged == 0 })
    }

    @Test func aCutLink_movesItsKeysToTheOtherNode_andBackWhenItReturns() {
        var world = CrossNodeWorld(spec: Self.spec(), seed: 2)
        for _ in 0..<5 { world.step() }
        world.cut(0, 1)
        #expect(world.nodes[0].core.egress.filter { $0.spec.node == "b" }.allSatisfy { !$0.available })
        for i in 0..<300 { world.produce(on: 0, key: "k\(i % 41)") }
        for _ in 0..<150 { world.step() }
        let whileCut = Set(world.delivered.values.flatMap { $0 })
        #expect(whileCut.allSatisfy { $0.hasPrefix("c/") }, "with a-b cut every key goes to c: \(whileCut)")
        world.connect(0, 1)
        world.connect(1, 0)
        for _ in 0..<5 { world.step() }
        let before = world.delivered
        for i in 0..<300 { world.produce(on: 0, key: "k\(i % 41)") }
        for _ in 0..<150 { world.step() }
        let after = Set(world.delivered.filter { before[$0.key] == nil }.values.flatMap { $0 })
        #expect(after.contains { $0.hasPrefix("b/") }, "b's keys came back: \(after)")
        #expect(world.lost.isEmpty)
        #expect(world.nodes[0].core.spoolLive == 0)
    }

    @Test func preferLocal_keepsFramesOnTheNode_thenTheZone_thenAnywhere() {
        // sink on a, b (a's zone) and c (another zone).
        var world = CrossNodeWorld(spec: Self.spec(locality: "prefer-local", sinkPlacement: "{a: 1, b: 1, c: 1}"), seed: 3)
        for i in 0..<100 { world.produce(on: 0, key: "k\(i)") }
        for _ in 0..<80 { world.step() }
        #expect(Set(world.delivered.values.flatMap { $0 }) == ["a/sink-a-0.metrics.out"])
        world.killConsumer(0, "sink-a-0.metrics.out")
        for _ in 0..<5 { world.step() }
        var before = world.delivered
        for i in 0..<100 { world.produce(on: 0, key: "k\(i)") }
        for _ in 0..<80 { world.step() }
        #expect(Set(world.delivered.filter { before[$0.key] == nil }.values.flatMap { $0 }) == ["b/sink-b-0.metrics.out"], "same zone next")
        world.cut(0, 1)
        for _ in 0..<5 { world.step() }
        before = world.delivered
        for i in 0..<100 { world.produce(on: 0, key: "k\(i)") }
        for _ in 0..<80 { world.step() }
        #expect(Set(world.delivered.filter { before[$0.key] == nil }.values.flatMap { $0 }) == ["c/sink-c-0.metrics.out"], "then anywhere")
        #expect(world.lost.isEmpty)
    }

    /// A link slower than the producer (here: one that takes nothing): the frames for the peer's instances stop
    /// at a bounded backlog and the producer's pipe is no longer read, whatever the type's `buffer` in frames.
    /// Without the bound the queue held everything up to the router's memory limit, and its buffer (which
    /// compacts only once four times what it holds is dead) grew to several times that: 2.1 GB of RSS with
    /// a 256 MiB limit in `pmm bench --link --size 4000`.
    @Test func aLinkThatTakesNothing_holdsTheProducerBack_atABoundedBacklog() throws {
        let spec = Self.spec(sinkPlacement: "{b: 1}")
        var big = spec
        big.dataTypes[0].qos.buffer = 1_000_000
        let layout = RouterLayout(spec: big, revision: 1, node: "a")
        var core = RouterCore(layout: layout, now: 0, seed: 1)
        for action in core.takeActions() { if case .openIngress(let id, _, _) = action { core.ingressOpened(id) } }
        let b = try #require(core.peerSlot("b"))
        core.linkConnected(b, resumeAfter: 0, revision: 1, health: ["sink-b-0.metrics.out": true], now: 0)
        let slot = try #require(core.egress.firstIndex { $0.name == "sink-b-0.metrics.out" })
        // (Values, not the core, go into the expectations: a failed one would describe the whole core.)
        let available = core.egress[slot].available
        #expect(available)
        var envelope = Envelope()
        envelope.dataType = "metrics"
        envelope.source = "gen"
        envelope.payload = Data(repeating: 0x61, count: 4000)
        let frame = try envelope.framed()
        let ingress = try #require(core.ingress.firstIndex { $0.name == "gen.metrics.s0.in" })
        var fed = 0
        // 64 MiB offered, in reads the core asks for, until it stops asking (the route is blocked).
        while fed < 64 << 20 && core.wantsToRead(ingress, now: 0) {
            let n = core.withReadSpace(ingress) { raw in
                var n = 0
                while n + frame.count <= raw.count {
                    frame.withUnsafeBytes { raw.baseAddress!.advanced(by: n).copyMemory(from: $0.baseAddress!, byteCount: frame.count) }
                    n += frame.count
                }
                return n
            }
            guard n > 0 else { break }
            fed += n
            core.ingressRead(ingress, count: n, now: 0)
            // What the shell does each pass: the link's window has no room for these frames.
            if core.egress[slot].queue.unwrittenBytes > 0 { core.egressWouldBlock(slot) }
        }
        let backlog = core.egress[slot].queue.unwrittenBytes
        let limit = RouterCore.remoteBacklogBytes
        let slack = core.options.readSize
        let blocked = core.routeBlocked(0)
        #expect(fed < 64 << 20, "the producer was never held back: \(fed >> 20) MiB taken")
        #expect(backlog >= limit, "held back before the bound: \(backlog) bytes")
        #expect(backlog <= limit + slack, "\(backlog) bytes queued for the peer")
        #expect(blocked)
    }

    /// Random schedules: frames produced on a, consumers on b and c reading in pieces and dying, links cut and
    /// restored, in any order. Whatever happens, once everything is healed every frame was read whole at
    /// least once, and the producer's spool is empty (every frame acknowledged back over the link).
    @Test(arguments: 0..<40) func randomCutsAndDeaths_loseNothing(seed: UInt64) {
        let world = Self.randomSchedule(seed: seed)
        #expect(world.violations.isEmpty)
        #expect(world.lost.isEmpty, "lost \(world.lost.count) of \(world.produced.count)")
        #expect(world.nodes[0].core.spoolLive == 0, "the producer's spool still holds \(world.nodes[0].core.spoolLive) bytes")
        #expect(world.deadLettered.isEmpty)
    }

    /// The schedules above catch a core that breaks the links' rules.
    @Test(arguments: Sabotage.allCases.filter(\.needsLinks)) func sabotagedCore_isCaught(_ sabotage: Sabotage) {
        let caught = (0..<40).first { seed in
            let world = Self.randomSchedule(seed: UInt64(seed), sabotage: sabotage)
            return !world.lost.isEmpty || world.nodes[0].core.spoolLive > 0
        }
        #expect(caught != nil, "40 schedules did not notice \(sabotage)")
    }

    static func randomSchedule(seed: UInt64, sabotage: Sabotage? = nil) -> CrossNodeWorld {
        var world = CrossNodeWorld(spec: Self.spec(), seed: seed &+ 100, sabotage: sabotage)
        var random = SplitMix(seed: seed)
        let consumers = world.nodes.indices.flatMap { x in world.nodes[x].readers.keys.sorted().map { (x, $0) } }
        for _ in 0..<400 {
            switch random.next() % 20 {
            case 0: world.cut(0, 1 + Int(random.next() % 2))
            case 1: world.cut(1, 2)
            case 2, 3:
                let y = 1 + Int(random.next() % 2)
                world.connect(0, y)
                world.connect(y, 0)
            case 4:
                let (x, pipe) = consumers[Int(random.next() % UInt64(consumers.count))]
                world.killConsumer(x, pipe)
            case 5, 6:
                let (x, pipe) = consumers[Int(random.next() % UInt64(consumers.count))]
                world.startConsumer(x, pipe)
            default:
                for _ in 0..<Int(random.next() % 12) { world.produce(on: 0, key: "k\(random.next() % 97)") }
            }
            world.step()
        }
        // Heal everything.
        for x in world.nodes.indices { for y in world.nodes.indices where x != y { world.connect(x, y) } }
        for (x, pipe) in consumers { world.startConsumer(x, pipe) }
        for _ in 0..<3000 where !world.lost.isEmpty || world.nodes[0].core.spoolLive > 0 {
            world.now += 100_000_000
            world.step()
        }
        return world
    }
}
