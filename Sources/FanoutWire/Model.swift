import Foundation

public enum TaskStatus: UInt32, Sendable, Hashable, CaseIterable {
    case unspecified = 0
    case pending = 1
    case running = 2
    case waitingChildren = 3
    case retryWait = 4
    case completed = 5
    case failed = 6
    case cancelled = 7
    case expired = 8
}

public enum BatchStatus: UInt32, Sendable, Hashable, CaseIterable {
    case unspecified = 0
    case pending = 1
    case processing = 2
    case completed = 3
    case cancelled = 4
    case failed = 5
}

public enum EventType: UInt32, Sendable, Hashable, CaseIterable {
    case unspecified = 0
    case batchProgress = 1
    case batchCompleted = 2
    case batchCancelled = 3
    case batchFailed = 4
    case taskStarted = 5
    case taskTurn = 6
    case taskRetrying = 7
    case taskCompleted = 8
    case taskFailed = 9
    case taskCancelled = 10
    case taskExpired = 11
}

/// One task as a client submits it.
public struct TaskSpec: Sendable, Hashable {
    public var customID: String
    /// Empty: the batch's agent.
    public var agent: String
    public var payload: [UInt8]
    /// Higher runs first; 0 with a batch priority set means the batch's.
    public var priority: Int32
    /// 0: the agent's default.
    public var maxAttempts: UInt32
    /// Per attempt; 0: the agent's default.
    public var timeoutMs: UInt64
    /// An OpenAI Batch line's endpoint (`/v1/chat/completions`, …); empty: the runner's default.
    public var url: String

    public init(customID: String, agent: String = "", payload: [UInt8], priority: Int32 = 0, maxAttempts: UInt32 = 0, timeoutMs: UInt64 = 0,
                url: String = "") {
        self.customID = customID
        self.agent = agent
        self.payload = payload
        self.priority = priority
        self.maxAttempts = maxAttempts
        self.timeoutMs = timeoutMs
        self.url = url
    }
}

/// LLM tokens, as a provider's `usage` reported them.
public struct TokenUsage: Sendable, Hashable {
    public var promptTokens: UInt64
    public var completionTokens: UInt64
    public var totalTokens: UInt64

    public init(promptTokens: UInt64 = 0, completionTokens: UInt64 = 0, totalTokens: UInt64 = 0) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.totalTokens = totalTokens
    }

    public var isZero: Bool { promptTokens == 0 && completionTokens == 0 && totalTokens == 0 }
}

public struct TaskError: Sendable, Hashable {
    public var message: String
    public var code: String
    public var retryable: Bool

    public init(message: String, code: String = "", retryable: Bool = false) {
        self.message = message
        self.code = code
        self.retryable = retryable
    }
}

/// A task as the daemon reports it.
public struct TaskInfo: Sendable, Hashable {
    public var id: UInt64 = 0
    public var batchID: UInt64 = 0
    public var customID: String = ""
    public var ownerID: String = ""
    public var agent: String = ""
    public var status: TaskStatus = .unspecified
    public var priority: Int32 = 0
    public var attempt: UInt32 = 0
    public var maxAttempts: UInt32 = 0
    public var timeoutMs: UInt64 = 0
    public var turnsCompleted: UInt32 = 0
    public var maxTurns: UInt32 = 0
    public var result: [UInt8] = []
    public var error: TaskError?
    public var parentTaskID: UInt64 = 0
    public var createdAtMs: Int64 = 0
    public var startedAtMs: Int64 = 0
    public var finishedAtMs: Int64 = 0
    /// Only when asked for.
    public var payload: [UInt8] = []
    public var url: String = ""
    /// The provider's HTTP status for `result`; 0: none (not an HTTP runner, or no answer).
    public var statusCode: UInt32 = 0
    /// The provider's `x-request-id`.
    public var requestID: String = ""
    public var usage: TokenUsage?

    public init() {}
}

public struct BatchCounts: Sendable, Hashable {
    public var total: UInt32 = 0
    public var pending: UInt32 = 0
    public var running: UInt32 = 0
    public var waitingChildren: UInt32 = 0
    public var retryWait: UInt32 = 0
    public var completed: UInt32 = 0
    public var failed: UInt32 = 0
    public var cancelled: UInt32 = 0
    public var expired: UInt32 = 0

    public init() {}

    /// Tasks in a terminal state.
    public var finished: UInt32 { completed + failed + cancelled + expired }
}

/// A batch as the daemon reports it.
public struct BatchInfo: Sendable, Hashable {
    public var id: UInt64 = 0
    public var ownerID: String = ""
    public var agent: String = ""
    public var status: BatchStatus = .unspecified
    public var counts = BatchCounts()
    /// 0–100.
    public var progress: Double = 0
    public var metadata: [String: String] = [:]
    public var parentTaskID: UInt64 = 0
    public var createdAtMs: Int64 = 0
    public var startedAtMs: Int64 = 0
    public var finishedAtMs: Int64 = 0
    /// 0: none.
    public var deadlineAtMs: Int64 = 0
    public var creatorUID: UInt32 = 0
    public var maxTurns: UInt32 = 0
    /// Summed over the batch's finished tasks.
    public var usage = TokenUsage()

    public init() {}
}

public struct TaskResult: Sendable, Hashable {
    public var taskID: UInt64
    public var customID: String
    public var status: TaskStatus
    public var result: [UInt8]
    public var error: TaskError?
    public var attempt: UInt32
    /// The provider's HTTP status for `result`; 0: none.
    public var statusCode: UInt32
    /// The provider's `x-request-id`.
    public var requestID: String
    public var usage: TokenUsage?
    public var url: String

    public init(taskID: UInt64, customID: String, status: TaskStatus, result: [UInt8] = [], error: TaskError? = nil, attempt: UInt32 = 0,
                statusCode: UInt32 = 0, requestID: String = "", usage: TokenUsage? = nil, url: String = "") {
        self.taskID = taskID
        self.customID = customID
        self.status = status
        self.result = result
        self.error = error
        self.attempt = attempt
        self.statusCode = statusCode
        self.requestID = requestID
        self.usage = usage
        self.url = url
    }
}

public struct Event: Sendable, Hashable {
    public var sequence: UInt64 = 0
    public var type: EventType = .unspecified
    public var timestampMs: Int64 = 0
    public var ownerID: String = ""
    public var batchID: UInt64 = 0
    public var taskID: UInt64 = 0
    public var customID: String = ""
    public var parentTaskID: UInt64 = 0
    public var progress: Double = 0
    public var counts: BatchCounts?
    public var attempt: UInt32 = 0
    public var turn: UInt32 = 0
    public var retryDelayMs: UInt64 = 0
    public var error: TaskError?

    public init() {}
}
