import FanoutCore

/// Executes one attempt of a task. Built-in runners (echo, exec, openai) and,
/// later, worker sessions implement it.
///
/// A runner returns the result bytes, or throws a `RunnerFailure` saying
/// whether the error is worth retrying. It must honour Swift task
/// cancellation: that is how a task is cancelled or timed out.
public protocol Runner: Sendable {
    func run(_ context: RunContext) async throws -> RunOutput

    /// What makes `task` impossible for this runner (an endpoint it does not
    /// serve, a payload it cannot send), or nil. Checked when the task is
    /// enqueued, so a batch with such a task is refused whole, before anything runs.
    func problem(with task: NewTask) -> String?
}

extension Runner {
    public func problem(with task: NewTask) -> String? { nil }
}

public struct RunContext: Sendable {
    public var taskID: TaskID
    public var batchID: BatchID
    public var customID: String
    public var agent: String
    public var attempt: Int
    public var maxTurns: Int
    public var payload: [UInt8]
    /// An OpenAI Batch line's endpoint (`/v1/chat/completions`, …), when the task came with one.
    public var url: String?
    /// The attempt's timeout, which the scheduler enforces; nil: none. A runner may bound its own waits by it.
    public var timeoutMs: Int64?
    /// The uid that submitted the task's batch: who may see its payload.
    public var creatorUID: UInt32 = 0
    /// The attempt waited for its children and runs again from the start (its
    /// earlier run stopped meanwhile, say across a restart of fanoutd): what the
    /// children produced is in `children`, and should not be spawned again.
    public var resumed = false
    /// Spawning and waiting for child tasks; nil where no scheduler runs the task.
    public var children: (any ChildTasks)?
    /// Reports that one more turn completed (drives `max_turns` progress).

    /// It returns once the daemon has room for more: a runner reporting
    /// faster than the store can record is slowed down, not buffered.
    public var reportTurn: @Sendable () async -> Void

    public init(taskID: TaskID, batchID: BatchID, customID: String, agent: String, attempt: Int, maxTurns: Int,
                payload: [UInt8], url: String? = nil, timeoutMs: Int64? = nil, creatorUID: UInt32 = 0,
                reportTurn: @escaping @Sendable () async -> Void) {
        self.url = url
        self.creatorUID = creatorUID
        self.timeoutMs = timeoutMs
        self.taskID = taskID
        self.batchID = batchID
        self.customID = customID
        self.agent = agent
        self.attempt = attempt
        self.maxTurns = maxTurns
        self.payload = payload
        self.reportTurn = reportTurn
    }
}

public struct RunOutput: Sendable {
    public var result: [UInt8]
    /// The provider's status, request id and token usage, when the runner has them. The usage
    /// is kept with the task, summed per batch and feeds the agent's tokens-per-minute limit.
    public var details: ResponseDetails

    public init(result: [UInt8], details: ResponseDetails = ResponseDetails()) {
        self.result = result
        self.details = details
    }

    /// A result with only a token count (runners that know no more).
    public init(result: [UInt8], tokensUsed: Int64) {
        self.init(result: result, details: ResponseDetails(usage: TokenUsage(totalTokens: tokensUsed)))
    }
}

/// A failed attempt, as the runner classified it.
public struct RunnerFailure: Error, Sendable, Hashable {
    public var failure: TaskFailure
    /// The provider asked to wait this long before trying again.
    public var retryAfterMs: Int64?
    /// The provider's answer, when there was one (an HTTP error body): kept as the
    /// task's result if this failure is final, so the user sees what it said.
    public var response: [UInt8]?
    public var details: ResponseDetails

    public init(_ message: String, code: String = "", retryable: Bool, retryAfterMs: Int64? = nil,
                response: [UInt8]? = nil, details: ResponseDetails = ResponseDetails()) {
        self.response = response
        self.details = details
        // Protocol strings cannot carry NUL (protobuf-c cuts them there); a runner's text may.
        failure = TaskFailure(message: message.replacingOccurrences(of: "\0", with: ""),
                              code: code.replacingOccurrences(of: "\0", with: ""), retryable: retryable)
        // A provider's (or worker's) number: at most a day, never negative, so deadlines stay in range.
        self.retryAfterMs = retryAfterMs.map { min(max($0, 0), Self.maxRetryAfterMs) }
    }

    /// The longest Retry-After honoured.
    public static let maxRetryAfterMs: Int64 = 24 * 3_600_000
}
