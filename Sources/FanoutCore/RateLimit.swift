/// A token bucket for per-minute limits (requests or LLM tokens).
///
/// It holds up to one minute's allowance and refills continuously. A
/// request takes one token up front; token usage is only known afterwards,
/// so `consume` may take the level below zero, and the agent then waits
/// until the bucket has refilled past zero.
public struct RateLimit: Sendable, Hashable {
    public let perMinute: Int
    public private(set) var level: Double
    public private(set) var updatedAt: Milliseconds

    public init(perMinute: Int, now: Milliseconds) {
        self.perMinute = perMinute
        level = Double(perMinute)
        updatedAt = now
    }

    static let maxWaitMs: Milliseconds = 24 * 3_600_000

    private var perMillisecond: Double { Double(perMinute) / 60_000 }

    public mutating func refill(now: Milliseconds) {
        guard now > updatedAt else { return }
        level = min(Double(perMinute), level + Double(now - updatedAt) * perMillisecond)
        updatedAt = now
    }

    /// Whether `amount` can be taken now (the level is at least that).
    public mutating func canTake(_ amount: Double = 1, now: Milliseconds) -> Bool {
        refill(now: now)
        return level >= amount
    }

    public mutating func consume(_ amount: Double, now: Milliseconds) {
        refill(now: now)
        // Below a day's debt nothing changes: the wait is capped there anyway.
        level = max(level - amount, -Double(perMinute) * 24 * 60)
    }

    /// When `amount` will be available, if not now.
    public func availableAt(_ amount: Double = 1) -> Milliseconds {
        guard level < amount else { return updatedAt }
        // A runner may report any token count; a wait is capped (at a day) rather than overflow.
        let wait = min(((amount - level) / perMillisecond).rounded(.up), Double(Self.maxWaitMs))
        return updatedAt + Milliseconds(wait)
    }
}
