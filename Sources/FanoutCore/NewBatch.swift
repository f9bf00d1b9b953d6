/// A batch as a client asked for it, validated, before it has ids.
public struct NewBatch: Sendable {
    public var ownerID: String
    public var agent: String
    public var metadata: [String: String]
    public var parentTaskID: TaskID?
    /// The attempt of the parent task that spawned this batch (set with `parentTaskID`).
    public var parentAttempt: Int?
    public var deadlineAt: Milliseconds?
    /// The window the client asked for, kept to check it against the limit; `deadlineAt` is derived from it.
    public var completionWindowMs: Int64?
    public var creatorUID: UInt32
    public var maxTurns: Int
    public var tasks: [NewTask]

    public init(ownerID: String, agent: String, metadata: [String: String] = [:], parentTaskID: TaskID? = nil,
                deadlineAt: Milliseconds? = nil, completionWindowMs: Int64? = nil, creatorUID: UInt32 = 0, maxTurns: Int = 0, tasks: [NewTask]) {
        self.ownerID = ownerID
        self.agent = agent
        self.metadata = metadata
        self.parentTaskID = parentTaskID
        self.deadlineAt = deadlineAt
        self.completionWindowMs = completionWindowMs
        self.creatorUID = creatorUID
        self.maxTurns = maxTurns
        self.tasks = tasks
    }
}

public struct NewTask: Sendable {
    public var customID: String
    public var agent: String
    public var payload: [UInt8]
    public var priority: Int32
    public var maxAttempts: Int
    public var timeoutMs: Int64
    public var maxTurns: Int
    /// An OpenAI Batch line's endpoint, for runners that route by it; nil: none given.
    public var url: String?

    public init(customID: String, agent: String, payload: [UInt8], priority: Int32 = 0, maxAttempts: Int = 1, timeoutMs: Int64 = 0, maxTurns: Int = 0,
                url: String? = nil) {
        self.url = url
        self.customID = customID
        self.agent = agent
        self.payload = payload
        self.priority = priority
        self.maxAttempts = maxAttempts
        self.timeoutMs = timeoutMs
        self.maxTurns = maxTurns
    }
}
