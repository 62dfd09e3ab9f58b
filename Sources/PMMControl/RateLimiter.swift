/// A token bucket per uid: each request takes a token; a bucket holds at most `burst` tokens and refills at
/// `rate` tokens per second. A uid that never came, or whose bucket is full again, has no entry.
///
/// Not thread-safe; the control server's loop owns it.
struct RateLimiter {
    /// Tokens per second (requests/s); 0 or less: no limit.
    let rate: Double
    /// The bucket's size (requests at once).
    let burst: Double
    var buckets: [UInt32: (tokens: Double, at: UInt64)] = [:]

    init(rate: Double, burst: Double) {
        self.rate = rate
        self.burst = max(1, burst)
    }

    var isLimiting: Bool { rate > 0 }

    /// Takes a token for `uid` at `now` (monotonic nanoseconds).
    ///
    /// - Returns: nil when the request may go on; otherwise the seconds until the next token.
    mutating func take(uid: UInt32, now: UInt64) -> Double? {
        guard isLimiting else { return nil }
        var bucket = refilled(buckets[uid] ?? (burst, now), now: now)
        defer { buckets[uid] = bucket }
        if bucket.tokens >= 1 {
            bucket.tokens -= 1
            return nil
        }
        return (1 - bucket.tokens) / rate
    }

    /// Forgets the buckets that are full again (they behave as if the uid never came).
    mutating func prune(now: UInt64) {
        buckets = buckets.filter { refilled($0.value, now: now).tokens < burst }
    }

    func refilled(_ bucket: (tokens: Double, at: UInt64), now: UInt64) -> (tokens: Double, at: UInt64) {
        let elapsed = Double(now &- bucket.at) / 1e9
        return (min(burst, bucket.tokens + max(0, elapsed) * rate), now)
    }
}
