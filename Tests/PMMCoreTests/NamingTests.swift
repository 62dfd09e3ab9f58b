import PMMCore
import Testing

@Suite struct NamingTests {
    @Test(arguments: ["a", "api", "collector-canary", "a1", "x-", "m" + String(repeating: "a", count: 62)])
    func isValidName_whenNameMatchesContract_isTrue(_ name: String) {
        #expect(Naming.isValidName(name))
    }

    @Test(arguments: ["", "Api", "1a", "-a", "a.b", "../x", "a/b", "a_b", "a b", "é", "a\u{0}", String(repeating: "a", count: 64)])
    func isValidName_whenNameBreaksContract_isFalse(_ name: String) {
        #expect(!Naming.isValidName(name))
    }

    @Test func pipeNames_followTheContract() {
        #expect(Naming.instance(service: "collector", index: 2) == "collector-2")
        #expect(Naming.ingress(producer: "api", dataType: "metrics", shard: 3) == "api.metrics.s3.in")
        #expect(Naming.egress(instance: "collector-0", dataType: "metrics") == "collector-0.metrics.out")
    }

    @Test func parse_roundTripsPipeNames() throws {
        let ingress = try #require(Naming.parse("api.metrics.s3.in"))
        #expect(ingress.kind == .ingress && ingress.owner == "api" && ingress.dataType == "metrics" && ingress.shard == 3)
        let egress = try #require(Naming.parse("collector-0.metrics.out"))
        #expect(egress.kind == .egress && egress.owner == "collector-0" && egress.shard == nil)
        #expect(Naming.parse("notes.txt") == nil)
        #expect(Naming.parse("api.metrics.sx.in") == nil)
    }

    @Test(arguments: [
        ("relative/path", "absolute"), ("/", "'/'"), ("/run/pmm/", "end with"), ("/run//pmm", "'//'"),
        ("/run/pmm/../etc", "'..'"), ("/run/./pmm", "'.'"), ("/etc", "system directory"), ("/proc/1", "'/proc'"),
        ("/dev/shm/pmm", "'/dev'"), ("/tmp", "system directory"),
    ])
    func rootProblem_whenRootIsUnsafe_explains(_ root: String, _ fragment: String) throws {
        let problem = try #require(Naming.rootProblem(root))
        #expect(problem.contains(fragment), "\(problem)")
    }

    @Test(arguments: ["/run/pmm/shop", "/var/lib/pmm/pipes", "/tmp/pmm-test-1/pipes", "/srv/mesh"])
    func rootProblem_whenRootIsSafe_isNil(_ root: String) {
        #expect(Naming.rootProblem(root) == nil)
    }
}

@Suite struct ShardHashTests {
    @Test func fnv1a64_matchesReferenceVectors() {
        #expect(ShardHash.fnv1a64("") == 0xcbf2_9ce4_8422_2325)
        #expect(ShardHash.fnv1a64("a") == 0xaf63_dc4c_8601_ec8c)
        #expect(ShardHash.fnv1a64("foobar") == 0x8594_4171_f739_67e8)
    }

    /// Golden values: these are part of the wire contract and must never change between releases.
    @Test func shard_isPinnedForever() {
        let pinned = (0..<8).map { ShardHash.shard(forKey: Array("user-\($0)".utf8), shards: 16) }
        #expect(pinned == Self.pinnedShards, "the shard hash changed: that breaks every deployed producer")
        #expect(ShardHash.jump(0, buckets: 1) == 0)
    }
    static let pinnedShards = [11, 12, 7, 5, 1, 3, 3, 8]

    @Test func jump_whenBucketsGrow_movesKeysOnlyToTheNewBucket() {
        for buckets in 1..<40 {
            for key in 0..<500 {
                let hash = ShardHash.fnv1a64("key-\(key)")
                let before = ShardHash.jump(hash, buckets: buckets)
                let after = ShardHash.jump(hash, buckets: buckets + 1)
                #expect(before < buckets && after <= buckets)
                if before != after { #expect(after == buckets) }
            }
        }
    }

    @Test func shard_spreadsKeysEvenly() {
        var counts = [Int](repeating: 0, count: 8)
        for i in 0..<80_000 { counts[ShardHash.shard(forKey: Array("k\(i)".utf8), shards: 8)] += 1 }
        #expect(counts.allSatisfy { abs($0 - 10_000) < 600 }, "\(counts)")
    }
}

@Suite struct SHA256Tests {
    @Test(arguments: [
        ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        (
            "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        ),
    ])
    func hex_matchesFIPSVectors(_ input: String, _ expected: String) {
        #expect(SHA256.hex(input) == expected)
    }

    @Test func hex_whenInputSpansManyBlocks_matchesReference() {
        #expect(SHA256.hex(String(repeating: "a", count: 1000)) == "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3")
    }
}

@Suite struct SuggestionTests {
    @Test func closest_findsTypos() {
        #expect(Suggestion.closest(to: "colector", in: ["api", "collector", "collector-canary"]) == "collector")
        #expect(Suggestion.closest(to: "replica", in: ["uid", "gid", "replicas"]) == "replicas")
        #expect(Suggestion.closest(to: "zzzzzz", in: ["uid", "gid"]) == nil)
    }
}
