/// When to dial a peer again after a failed or lost connection: exponential, capped, with jitter.
///
/// The n-th consecutive failure waits `initial × 2ⁿ` capped at `maximum`, then a random part of it is taken
/// away (up to `jitter`, a fraction) so that nodes restarted together do not dial in lockstep. A connection that
/// completes its Hello resets the schedule. Pure: the random number comes in as a parameter.
public struct Backoff: Equatable, Sendable {
    public var initial: Duration
    public var maximum: Duration
    /// The fraction of each delay that may be taken away at random, in 0...1.
    public var jitter: Double
    /// Failures since the last success.
    public private(set) var attempts = 0

    public init(initial: Duration = .milliseconds(100), maximum: Duration = .seconds(5), jitter: Double = 0.2) {
        precondition(initial > .zero && maximum >= initial, "a backoff needs 0 < initial <= maximum")
        precondition((0...1).contains(jitter), "jitter is a fraction")
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
    }

    /// The delay before the next attempt, counting one more failure.
    ///
    /// - Parameter random: a number in 0..<1 (`Double.random(in: 0..<1)` in production; fixed in tests).
    public mutating func nextDelay(random: Double) -> Duration {
        var delay = initial
        var n = 0
        while n < attempts && delay < maximum {
            delay *= 2
            n += 1
        }
        if delay > maximum { delay = maximum }
        attempts += 1
        return delay * (1 - jitter * min(max(random, 0), 1))
    }

    /// A connection came up: the next failure starts from `initial` again.
    public mutating func reset() {
        attempts = 0
    }
}
