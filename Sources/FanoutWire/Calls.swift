public struct EnqueueBatchRequest: Sendable, Hashable {
    public var ownerID: String
    /// Default agent of the batch's tasks.
    public var agent: String
    public var metadata: [String: String]
    public var priority: Int32
    /// 0: no deadline.
    public var completionWindowMs: UInt64
    public var parentTaskID: UInt64
    public var tasks: [TaskSpec]
    /// True: `BatchChunk` messages follow on the same stream.
    public var more: Bool

    public init(ownerID: String, agent: String, metadata: [String: String] = [:], priority: Int32 = 0, completionWindowMs: UInt64 = 0, parentTaskID: UInt64 = 0, tasks: [TaskSpec], more: Bool = false) {
        self.ownerID = ownerID
        self.agent = agent
        self.metadata = metadata
        self.priority = priority
        self.completionWindowMs = completionWindowMs
        self.parentTaskID = parentTaskID
        self.tasks = tasks
        self.more = more
    }
}

public struct BatchChunk: Sendable, Hashable {
    public var tasks: [TaskSpec]
    public var more: Bool

    public init(tasks: [TaskSpec], more: Bool) {
        self.tasks = tasks
        self.more = more
    }
}

public struct EnqueueTaskRequest: Sendable, Hashable {
    public var ownerID: String
    public var task: TaskSpec

    public init(ownerID: String, task: TaskSpec) {
        self.ownerID = ownerID
        self.task = task
    }
}

public struct ListBatchesRequest: Sendable, Hashable {
    /// Empty: every owner the caller may see.
    public var ownerID: String
    /// 0: the server's default.
    public var limit: UInt32
    /// Paging: batches with a smaller id; 0: newest first.
    public var beforeID: UInt64
    /// Only the child batches spawned by this batch's tasks; 0: any batch.
    public var parentBatchID: UInt64

    public init(ownerID: String = "", limit: UInt32 = 0, beforeID: UInt64 = 0, parentBatchID: UInt64 = 0) {
        self.ownerID = ownerID
        self.limit = limit
        self.beforeID = beforeID
        self.parentBatchID = parentBatchID
    }
}

public struct BatchPage: Sendable, Hashable {
    public var batches: [BatchInfo]
    /// 0: no more.
    public var nextBeforeID: UInt64

    public init(batches: [BatchInfo], nextBeforeID: UInt64) {
        self.batches = batches
        self.nextBeforeID = nextBeforeID
    }
}

public struct GetTaskRequest: Sendable, Hashable {
    public var taskID: UInt64
    public var includePayload: Bool

    public init(taskID: UInt64, includePayload: Bool = false) {
        self.taskID = taskID
        self.includePayload = includePayload
    }
}

public struct GetResultsRequest: Sendable, Hashable {
    public var batchID: UInt64
    /// Results per page; 0: the server's default.
    public var pageSize: UInt32
    public var afterTaskID: UInt64
    /// Result bytes per page (a page always holds at least one result); 0: the server's default.
    public var pageBytes: UInt32

    public init(batchID: UInt64, pageSize: UInt32 = 0, afterTaskID: UInt64 = 0, pageBytes: UInt32 = 0) {
        self.batchID = batchID
        self.pageSize = pageSize
        self.afterTaskID = afterTaskID
        self.pageBytes = pageBytes
    }
}

public struct RetryFailedRequest: Sendable, Hashable {
    public var batchID: UInt64
    public var includeExpired: Bool
    public var includeCancelled: Bool

    public init(batchID: UInt64, includeExpired: Bool = false, includeCancelled: Bool = false) {
        self.batchID = batchID
        self.includeExpired = includeExpired
        self.includeCancelled = includeCancelled
    }
}

public struct RetryFailedResponse: Sendable, Hashable {
    public var batch: BatchInfo
    public var retried: UInt32

    public init(batch: BatchInfo, retried: UInt32) {
        self.batch = batch
        self.retried = retried
    }
}

public struct SubscribeRequest: Sendable, Hashable {
    public var ownerID: String
    /// Empty: every type.
    public var eventTypes: [EventType]
    /// 0: every batch of the owner.
    public var batchID: UInt64
    /// Replay stored events with a sequence number greater than this.
    public var since: UInt64
    /// False: end the stream after the replay.
    public var follow: Bool

    public init(ownerID: String, eventTypes: [EventType] = [], batchID: UInt64 = 0, since: UInt64 = 0, follow: Bool = true) {
        self.ownerID = ownerID
        self.eventTypes = eventTypes
        self.batchID = batchID
        self.since = since
        self.follow = follow
    }
}

public struct AgentInfo: Sendable, Hashable {
    public var name: String
    public var runner: String
    public var concurrency: UInt32
    public var maxTurns: UInt32
    public var maxAttempts: UInt32
    public var running: UInt32
    public var workers: UInt32

    public init(name: String, runner: String, concurrency: UInt32, maxTurns: UInt32, maxAttempts: UInt32, running: UInt32, workers: UInt32) {
        self.name = name
        self.runner = runner
        self.concurrency = concurrency
        self.maxTurns = maxTurns
        self.maxAttempts = maxAttempts
        self.running = running
        self.workers = workers
    }
}

public struct ServerInfo: Sendable, Hashable {
    public var serverVersion: String = ""
    public var protocolVersion: UInt32 = 0
    public var startedAtMs: Int64 = 0
    public var pendingTasks: UInt64 = 0
    public var runningTasks: UInt64 = 0
    public var retryWaitTasks: UInt64 = 0
    public var connections: UInt32 = 0
    public var workers: UInt32 = 0
    public var limits = Limits()
    public var agents: [AgentInfo] = []
    public var lastSequence: UInt64 = 0
    /// Every worker session, oldest first.
    public var workerList: [ConnectedWorker] = []

    public init() {}
}

/// A worker session as ServerInfo lists it.
public struct ConnectedWorker: Sendable, Hashable {
    public struct Slots: Sendable, Hashable {
        public var agent: String
        public var slots: UInt32
        public var freeSlots: UInt32

        public init(agent: String, slots: UInt32, freeSlots: UInt32) {
            self.agent = agent
            self.slots = slots
            self.freeSlots = freeSlots
        }
    }

    public var id: UInt64
    public var name: String
    public var uid: UInt32
    public var agents: [Slots]
    public var runningTaskIDs: [UInt64]

    public init(id: UInt64, name: String, uid: UInt32, agents: [Slots], runningTaskIDs: [UInt64]) {
        self.id = id
        self.name = name
        self.uid = uid
        self.agents = agents
        self.runningTaskIDs = runningTaskIDs
    }
}
