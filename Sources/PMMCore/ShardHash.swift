/// The stable hashes that decide where a key goes. Part of the wire contract: every process and every release
/// of pmm must compute the same values, so these functions never change.
///
/// - Shard of a key: `jump(fnv1a64(key), shards)` — FNV-1a 64-bit over the key's bytes, then Lamping and
///   Veach's jump consistent hash (arXiv:1406.2294), so growing a type from n to n+1 shards moves only 1/(n+1)
///   of the keys.
/// - Instance of a key (policy `shard`): a service is picked by weight from `mix(h ^ serviceSalt) % totalWeight`
///   over the targets in name order, then an instance by rendezvous (highest random weight) hashing,
///   `argmax mix(h ^ fnv1a64(instance))` over healthy instances, so losing an instance moves only its keys.
public enum ShardHash {
    /// FNV-1a, 64-bit (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
    @inlinable
    public static func fnv1a64(_ bytes: some Sequence<UInt8>) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return hash
    }

    /// FNV-1a 64 of a string's UTF-8 bytes.
    public static func fnv1a64(_ string: String) -> UInt64 {
        fnv1a64(string.utf8)
    }

    /// Jump consistent hash: maps `key` to a bucket in `0..<buckets`.
    public static func jump(_ key: UInt64, buckets: Int) -> Int {
        precondition(buckets > 0, "jump hash needs at least one bucket")
        var key = key
        var b: Int64 = -1
        var j: Int64 = 0
        while j < Int64(buckets) {
            b = j
            key = key &* 2_862_933_555_777_941_757 &+ 1
            j = Int64(Double(b + 1) * (Double(Int64(1) << 31) / Double((key >> 33) + 1)))
        }
        return Int(b)
    }

    /// The shard index (`0..<shards`) that a shard key is written to.
    public static func shard(forKey key: some Sequence<UInt8>, shards: Int) -> Int {
        jump(fnv1a64(key), buckets: shards)
    }

    /// SplitMix64's finalizer: a fast, well-mixed bijection on 64-bit values.
    public static func mix(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9e37_79b9_7f4a_7c15
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    /// Salt mixed into the key hash before choosing a service, so service choice and instance choice are independent.
    public static let serviceSalt: UInt64 = 0x7365_7276_6963_6521  // "service!"
}
