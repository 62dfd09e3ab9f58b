import Foundation
import PMMCore
import PMMRouterCore
import PMMSpecYAML
import PMMWire
import Testing

/// The core under leases (`registration: required`) and consumer capacities (`least-loaded`), step by step.
@Suite struct LeaseRoutingTests {
    static func spec(policy: String = "shard", registration: String = "required", capacity: String = "") -> MeshSpec {
        let yaml = """
            apiVersion: pmm/v1
            kind: Mesh
            name: leased
            root: /leased
            dataTypes:
              jobs:
                qos: {delivery: at-most-once, buffer: 100000}
            services:
              shop:
                uid: 0
                produces: [{dataType: jobs}]
              worker:
                uid: 0
                replicas: 3
                registration: \(registration)
                consumes: [{dataType: jobs\(capacity)}]
            routes:
              jobs:
                policy: \(policy)
                targets: [{service: worker}]

            """
        let result = SpecLoader.loadAndValidate(yaml: yaml, file: "leased.yaml")
        precondition(!result.diagnostics.hasErrors, "\(result.diagnostics.map(\.summary))")
        return result.spec!
    }

    static func leased(_ spec: MeshSpec, _ leases: [String: Int]) -> MeshSpec {
        var spec = spec
        spec.leases = leases.mapValues { InstanceLease(capacity: $0) }
        return spec
    }

    /// Opens every pipe the core asks for (every egress has a reader).
    static func performOpens(_ core: inout RouterCore) -> [RouterAction] {
        var other: [RouterAction] = []
        for action in core.takeActions() {
            switch action {
            case .openIngress(let id, _, _): core.ingressOpened(id)
            case .openEgress(let id, _, _): core.egressOpened(id, now: 0)
            default: other.append(action)
            }
        }
        _ = core.takeActions()
        return other
    }

    /// Frames `first..<first+count` of `jobs` from `shop`, keys `k<sequence>`, read from the ingress pipe.
    static func feed(_ core: inout RouterCore, _ sequences: Range<Int>) {
        var bytes: [UInt8] = []
        for sequence in sequences {
            var envelope = Envelope()
            envelope.dataType = "jobs"
            envelope.source = "shop"
            envelope.sequence = UInt64(sequence)
            envelope.shardKey = Data("k\(sequence)".utf8)
            bytes += try! envelope.framed()
        }
        let slot = core.ingress.firstIndex { $0.name == "shop.jobs.s0.in" }!
        var offset = 0
        while offset < bytes.count || core.hasBufferedWork(slot) {
            let n = core.withReadSpace(slot) { raw in
                let count = min(raw.count, bytes.count - offset)
                bytes.withUnsafeBytes { raw.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<(offset + count)])) }
                return count
            }
            offset += n
            core.ingressRead(slot, count: n, now: 0)
        }
    }

    /// The sequence numbers queued (written or not) for each egress pipe, by instance.
    static func held(_ core: RouterCore) -> [String: Int] {
        Dictionary(uniqueKeysWithValues: core.egress.map { ($0.spec.instance, $0.queue.count + $0.queue.inPipe) })
    }

    @Test func layout_ofARequiredService_hasEgressOnlyForLeasedInstances() {
        let none = RouterLayout(spec: Self.spec(), revision: 1)
        #expect(none.egress.isEmpty, "no lease, no egress")
        #expect(none.routes["jobs"]?.entry.targets.first?.instances == ["worker-0", "worker-1", "worker-2"], "hashing still sees every replica")
        let one = RouterLayout(spec: Self.leased(Self.spec(), ["worker-1": 0]), revision: 2)
        #expect(one.egress.map(\.instance) == ["worker-1"])
        #expect(one.routes["jobs"]?.egressIndex == [[-1, 0, -1]])
        let optional = RouterLayout(spec: Self.spec(registration: "optional"), revision: 3)
        #expect(optional.egress.count == 3, "registration: optional routes every replica, leased or not")
    }

    @Test func layout_capacity_isTheLeasesElseTheBindings() {
        let spec = Self.leased(Self.spec(registration: "optional", capacity: ", capacity: 1000"), ["worker-0": 3000, "worker-2": 0])
        let layout = RouterLayout(spec: spec, revision: 1)
        #expect(layout.egress.map(\.capacity) == [3000, 1000, 1000])
        #expect(RouterLayout(spec: Self.spec(registration: "optional"), revision: 1).egress.map(\.capacity) == [0, 0, 0])
    }

    @Test func losingALease_reroutesWhatWasQueuedAndUnreadInItsPipe_gainingOne_routesToItAtOnce() {
        var core = RouterCore(layout: RouterLayout(spec: Self.leased(Self.spec(), ["worker-0": 0, "worker-1": 0]), revision: 1), now: 0, seed: 1)
        _ = Self.performOpens(&core)
        Self.feed(&core, 0..<300)
        let before = Self.held(core)
        #expect(before["worker-0"]! > 0 && before["worker-1"]! > 0 && before.count == 2, "\(before)")
        // worker-1's reader gets part of its frames into its pipe and reads none of them.
        let slot = core.egress.firstIndex { $0.spec.instance == "worker-1" }!
        let written = core.withUnwritten(slot, room: 4096, pipeEmpty: true) { $0.count }
        core.wrote(slot, count: written)
        #expect(core.egress[slot].queue.inPipe > 0)

        // Its lease ends: a reload without it.
        core.install(RouterLayout(spec: Self.leased(Self.spec(), ["worker-0": 0]), revision: 2), now: 1)
        let actions = core.takeActions()
        #expect(actions.contains { if case .closeEgress = $0 { true } else { false } }, "its pipe is closed")
        #expect(Self.held(core) == ["worker-0": 300], "every frame, queued or unread in the pipe, went to worker-0")

        // worker-2 takes a lease: it is opened and new keys reach it at once.
        core.install(RouterLayout(spec: Self.leased(Self.spec(), ["worker-0": 0, "worker-2": 0]), revision: 3), now: 2)
        _ = Self.performOpens(&core)
        Self.feed(&core, 300..<600)
        let after = Self.held(core)
        #expect(after.keys.sorted() == ["worker-0", "worker-2"])
        #expect(after["worker-2"]! > 50, "\(after)")
        #expect(after.values.reduce(0, +) == 600, "nothing lost")
    }

    @Test func leastLoaded_weighsEachInstancesCapacity() {
        // worker-0 registered 3,000 messages/s; the others take the binding's 1,000.
        let spec = Self.leased(Self.spec(policy: "least-loaded", registration: "optional", capacity: ", capacity: 1000"), ["worker-0": 3000])
        var core = RouterCore(layout: RouterLayout(spec: spec, revision: 1), now: 0, seed: 3)
        _ = Self.performOpens(&core)
        Self.feed(&core, 0..<5000)
        let held = Self.held(core)
        #expect(abs(held["worker-0"]! - 3000) <= 2 && abs(held["worker-1"]! - 1000) <= 2 && abs(held["worker-2"]! - 1000) <= 2, "\(held)")
    }

    @Test func leastLoaded_takesAnUndeclaredInstanceToBeAsSlowAsTheSlowestDeclared() {
        let spec = Self.leased(Self.spec(policy: "least-loaded", registration: "optional"), ["worker-0": 4000, "worker-1": 2000])
        var core = RouterCore(layout: RouterLayout(spec: spec, revision: 1), now: 0, seed: 3)
        _ = Self.performOpens(&core)
        Self.feed(&core, 0..<8000)
        let held = Self.held(core)
        #expect(abs(held["worker-0"]! - 4000) <= 2 && abs(held["worker-1"]! - 2000) <= 2 && abs(held["worker-2"]! - 2000) <= 2, "\(held)")
    }
}
