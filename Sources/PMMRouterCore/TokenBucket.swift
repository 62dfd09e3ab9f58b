/// A token bucket: `rate` tokens per second, at most `burst` banked. One token per frame.
public struct TokenBucket: Sendable {
    private(set) var rate: Double
    private(set) var burst: Double
    private(set) var tokens: Double
    private var last: UInt64

    public init(rate: Int, burst: Int, now: UInt64) {
        self.rate = Double(rate)
        self.burst = Double(max(1, burst))
        self.tokens = self.burst
        self.last = now
    }

    private mutating func refill(_ now: UInt64) {
        guard now > last else { return }
        tokens = min(burst, tokens + Double(now - last) * rate / 1e9)
        last = now
    }

    /// Takes one token if there is one.
    public mutating func take(now: UInt64) -> Bool {
        if tokens < 1 { refill(now) }
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }

    /// Takes a new rate and depth (a reload, or a registration's `maxRate`), keeping the tokens banked up to
    /// the new depth.
    public mutating func retune(rate: Int, burst: Int, now: UInt64) {
        refill(now)
        self.rate = Double(rate)
        self.burst = Double(max(1, burst))
        tokens = min(tokens, self.burst)
    }

    /// Gives back a token taken for a frame that was not there after all.
    public mutating func refund() {
        tokens = min(burst, tokens + 1)
    }

    /// When the next token will be there (monotonic ns).
    public mutating func nextToken(now: UInt64) -> UInt64 {
        refill(now)
        if tokens >= 1 { return now }
        return now + UInt64((1 - tokens) / rate * 1e9) + 1
    }
}
