import PMMCore
import PMMRouterCore
import Testing

/// Under `shard`, a route with one available instance sends every key there without hashing; once others come
/// back, keys map by their hash again, exactly as the routing table says.
@Suite struct SoleInstanceTests {
    @Test func oneInstanceLeft_takesEveryKey_andTheOthersReturning_getTheirKeysBack() {
        let spec = LeaseRoutingTests.spec(registration: "optional")
        let layout = RouterLayout(spec: spec, revision: 1)
        var core = RouterCore(layout: layout, now: 0, seed: 1)
        _ = LeaseRoutingTests.performOpens(&core)
        let slot = { (instance: String) in core.egress.firstIndex { $0.spec.instance == instance }! }

        for instance in ["worker-1", "worker-2"] { core.egressFailed(slot(instance), unread: 0, reason: "gone", now: 1) }
        LeaseRoutingTests.feed(&core, 0..<200)
        #expect(LeaseRoutingTests.held(core) == ["worker-0": 200, "worker-1": 0, "worker-2": 0])

        for instance in ["worker-1", "worker-2"] { core.egressOpened(core.egress[slot(instance)].id, now: 2) }
        _ = core.takeActions()
        LeaseRoutingTests.feed(&core, 200..<500)
        // What the table itself says for those keys, with every instance healthy.
        let entry = layout.routes["jobs"]!.entry
        var expected = ["worker-0": 200, "worker-1": 0, "worker-2": 0]
        for sequence in 200..<500 {
            let (t, i) = entry.chooseByKey(hash: ShardHash.fnv1a64("k\(sequence)")) { _, _ in true }!
            expected[entry.targets[t].instances[i], default: 0] += 1
        }
        #expect(expected["worker-1"]! > 50 && expected["worker-2"]! > 50, "\(expected)")
        #expect(LeaseRoutingTests.held(core) == expected)
    }
}
