// Messages of the worker session (docs/PROTOCOL.md §5.12).

public struct AgentRegistration: Sendable, Hashable {
    public var name: String
    public var concurrency: UInt32
    public var maxTurns: UInt32

    public init(name: String, concurrency: UInt32, maxTurns: UInt32 = 0) {
        self.name = name
        self.concurrency = concurrency
        self.maxTurns = maxTurns
    }
}

public struct WorkerRegister: Sendable, Hashable {
    public var workerName: String
    public var agents: [AgentRegistration]

    public init(workerName: String, agents: [AgentRegistration]) {
        self.workerName = workerName
        self.agents = agents
    }
}

public enum WorkerMessage: Sendable, Hashable {
    case turn(taskID: UInt64, turns: UInt32)
    case heartbeat(taskIDs: [UInt64])
    case spawn(taskID: UInt64, children: EnqueueBatchRequest)
    case result(taskID: UInt64, result: [UInt8], usage: TokenUsage?)
    case failure(taskID: UInt64, error: TaskError, retryAfterMs: UInt64)
    /// The task waits for its children (0: the agent's `children_timeout_ms`).
    case waitChildren(taskID: UInt64, timeoutMs: UInt64)
    /// The worker takes no new assignments.
    case drain
}

public enum ServerToWorker: Sendable, Hashable {
    /// `resumed`: the task waited for its children; `childrenDone` pages follow.
    case assignment(task: TaskInfo, leaseMs: UInt64, resumed: Bool = false)
    case cancel(taskID: UInt64)
    case childrenDone(taskID: UInt64, childBatchID: UInt64, results: [TaskResult], last: Bool)
    case ack(taskID: UInt64, status: WireStatus)
    case spawned(taskID: UInt64, childBatchID: UInt64, status: WireStatus)
}
