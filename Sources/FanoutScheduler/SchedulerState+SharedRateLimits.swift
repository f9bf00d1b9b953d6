import FanoutCore

/// Requests per minute granted to this daemon from a bucket every daemon on a
/// shared store draws from (decision 51): N daemons together stay under the
/// agent's `requests_per_minute`. A grant is at most the agent's free slots
/// and about a second's worth, so one daemon does not hoard what the others
/// could use now.
struct SharedRequestPermits {
    /// Granted and not yet used.
    var permits = 0
    /// A grant is being asked for.
    var asking = false
    /// The bucket was empty: ask again at this time.
    var retryAt: Milliseconds?
}

/// Tokens per minute on a shared store: every daemon charges the tokens its tasks used to one
/// bucket, and learns from each charge whether anything is left. As with one daemon, tasks
/// start while the bucket is above zero (token use is known afterwards).
struct SharedTokenBudget {
    /// The bucket was above zero at the last charge or look.
    var left = true
    /// A charge or look is on its way.
    var checking = false
    /// The bucket was empty: look again at this time.
    var retryAt: Milliseconds?
}

/// Tokens to charge to the shared bucket (0: only look at it).
struct TokenChargeOrder: Sendable {
    var agent: String
    var perMinute: Int
    var tokens: Int64
}

/// A grant to ask the store for.
struct RequestGrantOrder: Sendable {
    var agent: String
    var perMinute: Int
    var want: Int
}

extension AgentRuntime {
    /// On a shared store the per-minute limits move to buckets every daemon shares.
    mutating func shareRateLimits(_ shared: Bool) {
        guard shared else { return }
        if configuration.requestsPerMinute > 0 {
            requests = nil
            if sharedRequests == nil { sharedRequests = SharedRequestPermits() }
        }
        if configuration.tokensPerMinute > 0 {
            tokens = nil
            if sharedTokens == nil { sharedTokens = SharedTokenBudget() }
        }
    }

    /// Whether to look at the shared token bucket now: it was empty, and the wait is over.
    func sharedTokensCheckWanted(now: Milliseconds) -> Bool {
        guard let budget = sharedTokens, !budget.left, !budget.checking else { return false }
        return (budget.retryAt ?? now) <= now
    }

    /// How many requests to ask the shared bucket for now, if it is time to ask.
    func sharedRequestsWanted(now: Milliseconds) -> Int? {
        guard let shared = sharedRequests, shared.permits < 1, !shared.asking, (shared.retryAt ?? now) <= now else { return nil }
        let free = min(configuration.concurrency, capacity ?? .max) - running
        guard free > 0 else { return nil }
        // About a second's worth at most: what is granted and not used is lost to the others.
        return max(1, min(free, configuration.requestsPerMinute / 60))
    }
}

extension SchedulerState {
    /// The store answered a request for a grant (nil: it failed; ask again shortly).
    mutating func requestsGranted(_ agent: String, granted: Int?, retryAfterMs: Int64, now: Milliseconds, effects: inout Effects) {
        guard var shared = agents[agent]?.sharedRequests else { return }
        shared.asking = false
        shared.permits += granted ?? 0
        shared.retryAt = (granted ?? 0) > 0 ? nil : now + max(1, retryAfterMs)
        agents.modifyValue(forKey: agent) { $0.sharedRequests = shared }
        if let retryAt = shared.retryAt { effects.wakeAt = min(effects.wakeAt ?? retryAt, retryAt) }
        dispatch(now: now, effects: &effects)
    }

    /// The store charged tokens to (or looked at) the shared bucket: `retryAfterMs` is 0 when it is
    /// above zero, else how long until it is (nil: the call failed; look again shortly).
    mutating func tokensCharged(_ agent: String, retryAfterMs: Int64?, now: Milliseconds, effects: inout Effects) {
        guard var budget = agents[agent]?.sharedTokens else { return }
        budget.checking = false
        let wait = retryAfterMs ?? 500
        budget.left = retryAfterMs == 0
        budget.retryAt = budget.left ? nil : now + max(1, wait)
        agents.modifyValue(forKey: agent) { $0.sharedTokens = budget }
        if let retryAt = budget.retryAt { effects.wakeAt = min(effects.wakeAt ?? retryAt, retryAt) }
        dispatch(now: now, effects: &effects)
    }
}
