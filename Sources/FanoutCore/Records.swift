/// Why a task attempt failed, as the runner classified it.
public struct TaskFailure: Sendable, Hashable, Codable, Error {
    public var message: String
    public var code: String
    public var retryable: Bool

    public init(message: String, code: String = "", retryable: Bool = false) {
        self.message = message
        self.code = code
        self.retryable = retryable
    }
}

/// A task as stored.
public struct TaskRecord: Sendable, Hashable {
    public var id: TaskID
    public var batchID: BatchID
    public var customID: String
    public var ownerID: String
    public var agent: String
    public var state: TaskState
    public var priority: Int32
    public var attempt: Int
    public var maxAttempts: Int
    public var timeoutMs: Int64
    public var turnsCompleted: Int
    public var maxTurns: Int
    public var result: [UInt8]?
    public var failure: TaskFailure?
    public var parentTaskID: TaskID?
    public var createdAt: Milliseconds
    public var startedAt: Milliseconds?
    public var finishedAt: Milliseconds?
    public var payload: [UInt8]?
    public var url: String?
    /// Status, request id and usage of the provider's answer in `result`.
    public var details = ResponseDetails()

    public init(
        id: TaskID, batchID: BatchID, customID: String, ownerID: String, agent: String,
        state: TaskState, priority: Int32, attempt: Int, maxAttempts: Int, timeoutMs: Int64,
        turnsCompleted: Int, maxTurns: Int, result: [UInt8]? = nil, failure: TaskFailure? = nil,
        parentTaskID: TaskID? = nil, createdAt: Milliseconds, startedAt: Milliseconds? = nil,
        finishedAt: Milliseconds? = nil, payload: [UInt8]? = nil, url: String? = nil, details: ResponseDetails = ResponseDetails()
    ) {
        self.url = url
        self.details = details
        self.id = id
        self.batchID = batchID
        self.customID = customID
        self.ownerID = ownerID
        self.agent = agent
        self.state = state
        self.priority = priority
        self.attempt = attempt
        self.maxAttempts = maxAttempts
        self.timeoutMs = timeoutMs
        self.turnsCompleted = turnsCompleted
        self.maxTurns = maxTurns
        self.result = result
        self.failure = failure
        self.parentTaskID = parentTaskID
        self.createdAt = createdAt
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.payload = payload
    }
}

/// A batch as stored.
public struct BatchRecord: Sendable, Hashable {
    public var id: BatchID
    public var ownerID: String
    public var agent: String
    public var state: BatchState
    public var counters: BatchCounters
    public var progress: BatchProgress
    public var metadata: [String: String]
    public var parentTaskID: TaskID?
    public var createdAt: Milliseconds
    public var startedAt: Milliseconds?
    public var finishedAt: Milliseconds?
    public var deadlineAt: Milliseconds?
    public var creatorUID: UInt32
    /// Set when the batch is being ended early: cancelled (cancel_batch) or
    /// expired (deadline). Stored, so a restart finishes the job.
    public var closing: TaskState?
    /// Summed over the batch's finished tasks.
    public var usage: TokenUsage = .zero
    /// For a child batch: the attempt of its parent task that spawned it.
    public var parentAttempt: Int?

    public init(
        id: BatchID, ownerID: String, agent: String, state: BatchState, counters: BatchCounters,
        progress: BatchProgress, metadata: [String: String], parentTaskID: TaskID?, createdAt: Milliseconds,
        startedAt: Milliseconds? = nil, finishedAt: Milliseconds? = nil, deadlineAt: Milliseconds? = nil,
        creatorUID: UInt32, closing: TaskState? = nil, usage: TokenUsage = .zero
    ) {
        self.usage = usage
        self.id = id
        self.ownerID = ownerID
        self.agent = agent
        self.state = state
        self.counters = counters
        self.progress = progress
        self.metadata = metadata
        self.parentTaskID = parentTaskID
        self.createdAt = createdAt
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.deadlineAt = deadlineAt
        self.creatorUID = creatorUID
        self.closing = closing
    }
}
