import Foundation
import PMMCore
import Testing

/// Where keys go, against values computed by an independent implementation of the published rules
/// (`scripts/routing-golden`, Python, written from ShardHash's documentation and not from this code). These
/// values are part of the wire contract: a change here moves keys between releases.
@Suite struct RoutingGoldenTests {
    struct Golden: Decodable {
        struct ShardCase: Decodable {
            var key: String
            var shards: Int
            var shard: Int
        }
        struct InstanceCase: Decodable {
            var key: String
            var healthy: [String]
            var instance: String?
        }
        struct HashCase: Decodable {
            var text: String
            var hash: String
        }
        var shards: [ShardCase]
        var instances: [InstanceCase]
        var fnv1a64: [HashCase]
    }

    static let golden: Golden = {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/routing-golden.json")
        let data = try! Data(contentsOf: path)
        return try! JSONDecoder().decode(Golden.self, from: data)
    }()

    @Test func fnv1a64_matchesTheIndependentValues() {
        for item in Self.golden.fnv1a64 {
            #expect(String(ShardHash.fnv1a64(item.text)) == item.hash, "fnv1a64(\(item.text))")
        }
    }

    @Test func shardOfAKey_matchesTheIndependentValues() {
        #expect(Self.golden.shards.count == 1_020)
        for item in Self.golden.shards {
            #expect(ShardHash.shard(forKey: Array(item.key.utf8), shards: item.shards) == item.shard, "\(item.key) over \(item.shards)")
        }
    }

    @Test func instanceOfAKey_underPolicyShard_matchesTheIndependentValues() {
        let targets = [
            RoutingTable.Target(service: "api", weight: 3, instances: ["api-0", "api-1", "api-2"]),
            RoutingTable.Target(service: "canary", weight: 1, instances: ["canary-0"]),
        ]
        let entry = RoutingTable.Entry(dataType: "orders", policy: .shard, shards: 1, targets: targets)
        #expect(Self.golden.instances.count == 816)
        for item in Self.golden.instances {
            let healthy = Set(item.healthy)
            let chosen = entry.chooseByKey(hash: ShardHash.fnv1a64(Array(item.key.utf8))) { healthy.contains(targets[$0].instances[$1]) }
            #expect(chosen.map { targets[$0.target].instances[$0.instance] } == item.instance, "\(item.key) with \(item.healthy)")
        }
    }
}
