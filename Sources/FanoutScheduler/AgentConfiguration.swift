import FanoutCore

/// A named kind of work and how it may run.
public struct AgentConfiguration: Sendable, Hashable {
    public var name: String
    /// The built-in runner that executes it (`echo`, …).
    public var runner: String
    /// At most this many of its tasks run at once.
    public var concurrency: Int
    /// 0: progress counts finished tasks; otherwise each task reports up to this many turns.
    public var maxTurns: Int
    /// Default for tasks that do not set their own.
    public var maxAttempts: Int
    /// Per attempt; 0: none.
    public var timeoutMs: Int64
    /// Requests started per minute; 0: no limit.
    public var requestsPerMinute: Int
    /// LLM tokens per minute, as the runner reports them; 0: no limit.
    public var tokensPerMinute: Int
    /// How long one of its tasks may wait for its children before the rest are cancelled; 0: no limit.
    public var childrenTimeoutMs: Int64 = AgentConfiguration.defaultChildrenTimeoutMs

    public static let defaultChildrenTimeoutMs: Int64 = 3_600_000

    public init(name: String, runner: String, concurrency: Int = 16, maxTurns: Int = 0, maxAttempts: Int = 3,
                timeoutMs: Int64 = 0, requestsPerMinute: Int = 0, tokensPerMinute: Int = 0) {
        self.name = name
        self.runner = runner
        self.concurrency = concurrency
        self.maxTurns = maxTurns
        self.maxAttempts = maxAttempts
        self.timeoutMs = timeoutMs
        self.requestsPerMinute = requestsPerMinute
        self.tokensPerMinute = tokensPerMinute
    }
}

public struct SchedulerConfiguration: Sendable {
    /// At most this many tasks run at once across every agent.
    public var globalConcurrency: Int = 64
    public var agents: [AgentConfiguration]
    public var backoff = Backoff()
    /// Minimum time between two `batch_progress` events of one batch.
    public var progressIntervalMs: Int64 = 100
    /// Pending tasks read from the store at a time for one batch and agent;
    /// the scheduler's memory holds at most about this many per active batch.
    public var windowSize: Int = 512
    /// Payloads up to this size are read along with the window; larger ones when the task starts.
    public var inlinePayloadBytes: Int = 4_096
    /// Upper bound on the changes one group commit carries.
    public var maxChangesPerCommit: Int = 20_000
    /// How long shutdown waits for runners to stop after cancelling them.
    public var shutdownGraceMs: Int64 = 10_000
    /// Backoff between tries of a commit the store refused (disk full, I/O error); it is tried until it succeeds.
    public var storeRetry = Backoff(baseMs: 50, maxMs: 2_000)
    /// How much of the event log is kept for subscribers to replay.
    public var eventRetention = EventRetention()
    /// Child batches nest at most this deep under a top-level batch.
    public var maxSpawnDepth: Int = 8
    /// One task spawns at most this many child tasks, over all its spawns.
    public var maxChildrenPerTask: Int = 10_000
    /// On a store other daemons share: how often this one looks for work they enqueued or gave
    /// back, batches cancelled through them, and batches that ended there.
    public var sharedStorePollMs: Int64 = 1_000
    /// Active batches looked at per look, oldest first.
    public var sharedBatchesPerPoll: Int = 1_000

    public init(globalConcurrency: Int = 64, agents: [AgentConfiguration]) {
        self.globalConcurrency = globalConcurrency
        self.agents = agents
    }
}

/// How much of the event log the store keeps. Older events are removed by the
/// commit loop in small steps; a subscriber asking for removed events is told
/// so (`SubscriptionGap`) instead of silently missing them.
public struct EventRetention: Sendable, Hashable {
    /// Keep at most this many of the newest events; nil: no count limit.
    public var maxEvents: Int?
    /// Remove events older than this many milliseconds; nil: no age limit.
    public var maxAgeMs: Int64?
    /// The commit loop trims at most this often.
    public var trimIntervalMs: Int64
    /// Events deleted per step; each step is one short write transaction, and
    /// queued commits go first between steps.
    public var rowsPerStep: Int

    public static let defaultMaxEvents = 1_000_000
    public static let defaultMaxAgeMs: Int64 = 7 * 24 * 60 * 60 * 1_000

    public init(maxEvents: Int? = EventRetention.defaultMaxEvents, maxAgeMs: Int64? = EventRetention.defaultMaxAgeMs,
                trimIntervalMs: Int64 = 5_000, rowsPerStep: Int = 10_000) {
        self.maxEvents = maxEvents
        self.maxAgeMs = maxAgeMs
        self.trimIntervalMs = trimIntervalMs
        self.rowsPerStep = rowsPerStep
    }

    /// Keeps every event forever.
    public static let unlimited = EventRetention(maxEvents: nil, maxAgeMs: nil)

    var isLimited: Bool { maxEvents != nil || maxAgeMs != nil }
}
