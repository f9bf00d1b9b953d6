/// Exponential backoff with jitter between attempts.
public struct Backoff: Sendable, Hashable {
    public var baseMs: Int64
    public var maxMs: Int64

    public init(baseMs: Int64 = 500, maxMs: Int64 = 60_000) {
        self.baseMs = baseMs
        self.maxMs = maxMs
    }

    /// The delay before attempt `nextAttempt` (2 for the first retry).
    /// `jitter` in 0...1 picks a point in the upper half of the window, so
    /// retries of many tasks that failed together spread out.
    public func delay(beforeAttempt nextAttempt: Int, jitter: Double, retryAfterMs: Int64? = nil) -> Int64 {
        let exponent = max(0, min(nextAttempt - 2, 30))
        let (scaled, overflow) = max(0, baseMs).multipliedReportingOverflow(by: Int64(1) << Int64(exponent))
        let ceiling = overflow ? maxMs : min(maxMs, scaled)
        let jittered = Int64(Double(ceiling) * (0.5 + 0.5 * min(max(jitter, 0), 1)))
        return max(jittered, retryAfterMs ?? 0)
    }
}
