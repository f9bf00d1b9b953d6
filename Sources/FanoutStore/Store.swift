import FanoutCore

/// Where Fanout keeps batches, tasks, results and events.
///
/// The protocol speaks of the domain only (no SQL), so a PostgreSQL
/// implementation can sit behind it later. Every method is synchronous and
/// thread-safe; callers run them off the event loops.
public protocol Store: Sendable {
    /// Inserts a batch and all its tasks in one transaction; returns once committed.
    func insertBatch(_ batch: NewBatch, now: Milliseconds) throws -> InsertedBatch

    /// Applies one group of changes in one transaction and returns the events
    /// with their sequence numbers assigned.
    func commit(_ changes: ChangeSet) throws -> [EventRecord]

    /// Makes the stored state consistent after a stop or a crash and returns
    /// what the scheduler must pick up again.
    func recover(now: Milliseconds) throws -> RecoveredState

    func batch(_ id: BatchID) throws -> BatchRecord?
    func batches(ownerID: String?, creatorUID: UInt32?, limit: Int, beforeID: BatchID?) throws -> [BatchRecord]
    func task(_ id: TaskID, includePayload: Bool) throws -> TaskRecord?
    /// Terminal tasks of a batch in id order, after `afterTaskID`.
    func results(batchID: BatchID, afterTaskID: TaskID, limit: Int) throws -> [TaskRecord]
    func payload(of task: TaskID) throws -> [UInt8]

    /// Stored events with `sequence` in `(after, upTo]` that match `filter`, oldest first.
    func events(after: EventSequence, upTo: EventSequence?, filter: EventFilter, limit: Int) throws -> [EventRecord]
    func lastEventSequence() throws -> EventSequence
}

public struct InsertedBatch: Sendable {
    public var batch: BatchRecord
    /// The new tasks' ids, in the order the batch listed them.
    public var taskIDs: [TaskID]

    public init(batch: BatchRecord, taskIDs: [TaskID]) {
        self.batch = batch
        self.taskIDs = taskIDs
    }
}

/// What recovery hands back to the scheduler.
public struct RecoveredState: Sendable {
    /// Batches not yet terminal, with counters recomputed from their task rows.
    public var activeBatches: [BatchRecord]
    /// Their tasks that still have to run, in id order.
    public var runnableTasks: [RunnableTask]
    /// Tasks found `running` and put back to `pending`.
    public var requeued: Int
}

/// What the scheduler keeps in memory about a task waiting to run: no payload.
public struct RunnableTask: Sendable, Hashable {
    public var id: TaskID
    public var batchID: BatchID
    public var ownerID: String
    public var customID: String
    public var agent: String
    public var priority: Int32
    public var attempt: Int
    public var maxAttempts: Int
    public var timeoutMs: Int64
    public var turnsCompleted: Int
    public var maxTurns: Int
    public var parentTaskID: TaskID?

    public init(id: TaskID, batchID: BatchID, ownerID: String, customID: String, agent: String, priority: Int32,
                attempt: Int, maxAttempts: Int, timeoutMs: Int64, turnsCompleted: Int, maxTurns: Int, parentTaskID: TaskID?) {
        self.id = id
        self.batchID = batchID
        self.ownerID = ownerID
        self.customID = customID
        self.agent = agent
        self.priority = priority
        self.attempt = attempt
        self.maxAttempts = maxAttempts
        self.timeoutMs = timeoutMs
        self.turnsCompleted = turnsCompleted
        self.maxTurns = maxTurns
        self.parentTaskID = parentTaskID
    }
}
