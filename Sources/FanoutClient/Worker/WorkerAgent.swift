import FanoutWire

/// An agent a `FanoutWorker` runs: its name, how many of its tasks run at once
/// on this worker, and the handler that runs one.
///
/// An agent the daemon's configuration declares with runner `worker` must
/// allow this worker's uid (`worker_uids`). Any other name is declared by the
/// worker itself for as long as it is connected, and runs only tasks submitted
/// by the worker's own uid.
public struct WorkerAgent: Sendable {
    public var name: String
    public var concurrency: Int
    /// For an agent the worker declares: the turns a task reports at most (0: progress counts finished tasks).
    public var maxTurns: Int
    public var handler: @Sendable (WorkerTaskContext) async throws -> WorkerOutput

    public init(_ name: String, concurrency: Int = 1, maxTurns: Int = 0,
                handler: @escaping @Sendable (WorkerTaskContext) async throws -> WorkerOutput) {
        self.name = name
        self.concurrency = concurrency
        self.maxTurns = maxTurns
        self.handler = handler
    }
}

/// What a handler returns: the task's result bytes and, for LLM work, the tokens it used.
public struct WorkerOutput: Sendable, Hashable, ExpressibleByStringLiteral {
    public var result: [UInt8]
    public var usage: TokenUsage?

    public init(_ result: [UInt8], usage: TokenUsage? = nil) {
        self.result = result
        self.usage = usage
    }

    public init(_ text: String, usage: TokenUsage? = nil) {
        self.init(Array(text.utf8), usage: usage)
    }

    public init(stringLiteral text: String) {
        self.init(text)
    }
}

/// Thrown by a handler to fail its task with a code, and to say whether another attempt may succeed.
/// Any other error fails the task without a retry.
public struct WorkerTaskError: Error, Sendable, Hashable {
    public var message: String
    public var code: String
    public var retryable: Bool
    /// Ask the daemon to pause the agent this long before the next attempt (a provider's Retry-After).
    public var retryAfter: Duration?

    public init(_ message: String, code: String = "", retryable: Bool = false, retryAfter: Duration? = nil) {
        self.message = message
        self.code = code
        self.retryable = retryable
        self.retryAfter = retryAfter
    }
}

/// The results of one child batch a task spawned.
public struct ChildBatch: Sendable, Hashable {
    public var batchID: UInt64
    /// Every child task that ended, in task id order: completed ones with their
    /// result, the others (failed, cancelled, expired) with their error.
    public var results: [TaskResult]

    public init(batchID: UInt64, results: [TaskResult]) {
        self.batchID = batchID
        self.results = results
    }
}
