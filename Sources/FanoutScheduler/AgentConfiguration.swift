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

    public init(name: String, runner: String, concurrency: Int = 16, maxTurns: Int = 0, maxAttempts: Int = 3, timeoutMs: Int64 = 0) {
        self.name = name
        self.runner = runner
        self.concurrency = concurrency
        self.maxTurns = maxTurns
        self.maxAttempts = maxAttempts
        self.timeoutMs = timeoutMs
    }
}

public struct SchedulerConfiguration: Sendable {
    /// At most this many tasks run at once across every agent.
    public var globalConcurrency: Int = 64
    public var agents: [AgentConfiguration]
    public var backoff = Backoff()
    /// Minimum time between two `batch_progress` events of one batch.
    public var progressIntervalMs: Int64 = 100
    /// Upper bound on the changes one group commit carries.
    public var maxChangesPerCommit: Int = 20_000

    public init(globalConcurrency: Int = 64, agents: [AgentConfiguration]) {
        self.globalConcurrency = globalConcurrency
        self.agents = agents
    }
}
