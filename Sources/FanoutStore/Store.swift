import FanoutCore

/// Where Fanout keeps batches, tasks, results and events.
///
/// The protocol speaks of the domain only (no SQL), so that SQLite and
/// PostgreSQL can both sit behind it. Its calls are async: a store's I/O runs
/// on the store's own threads (GRDB's queues, PostgreSQL's event loops), never
/// on the caller's. The writes of the commit loop go through `writer`, which
/// is synchronous: that loop has a thread of its own that blocks on them.
public protocol Store: Sendable {
    /// The synchronous writes: the commit loop's, and recovery at start.
    var writer: any StoreWriter { get }

    /// A batch sent in chunks: its row is created hidden (`staging`), each chunk's
    /// tasks are appended in their own transaction, and `publishStagedBatch` makes
    /// all of it visible at once. A staged batch that is discarded, or left behind
    /// by a crash, is deleted and never runs.
    func createStagedBatch(_ batch: NewBatch, now: Milliseconds) async throws -> BatchID
    func appendStagedTasks(_ tasks: [NewTask], to batch: BatchID, parentTaskID: TaskID?, now: Milliseconds) async throws
    func publishStagedBatch(_ batch: BatchID) async throws -> BatchRecord
    func discardStagedBatch(_ batch: BatchID) async throws

    func batch(_ id: BatchID) async throws -> BatchRecord?
    /// Batches newest first; `parentBatchID`: only child batches spawned by that batch's tasks.
    func batches(ownerID: String?, creatorUID: UInt32?, parentBatchID: BatchID?, limit: Int, beforeID: BatchID?) async throws -> [BatchRecord]
    func task(_ id: TaskID, includePayload: Bool) async throws -> TaskRecord?
    /// The batches one attempt of a task spawned, oldest first: the order its spawns were made.
    func childBatches(of parent: TaskID, attempt: Int) async throws -> [BatchRecord]
    /// Terminal tasks of a batch in id order, after `afterTaskID`: at most
    /// `limit` of them, and no more than fit in `maxBytes` counted by
    /// `TaskRecord.resultPageBytes`, but always at least one if there is one.
    /// Rows past the cut are not read, so paging reads each row once.
    func results(batchID: BatchID, afterTaskID: TaskID, limit: Int, maxBytes: Int) async throws -> [TaskRecord]
    func payload(of task: TaskID) async throws -> [UInt8]

    /// The next pending tasks of one batch for one agent, in (priority desc, id) order,
    /// after `cursor`. Payloads up to `inlinePayloadBytes` come along; larger ones are read at start.
    func pendingTasks(batchID: BatchID, agent: String, after cursor: QueueCursor?, limit: Int,
                      inlinePayloadBytes: Int) async throws -> [RunnableTask]

    /// True when `pendingTasks` claims what it returns for this daemon, because other daemons
    /// share the store: only tasks read through it may run here, never ones known otherwise
    /// (a batch just inserted), and tasks read but not kept must be released.
    var claimsPendingTasks: Bool { get }

    /// Gives back pending tasks `pendingTasks` returned that this daemon will not run.
    func releaseClaims(_ ids: [TaskID]) async throws

    /// How often the scheduler compares `oldPendingClaims` with what it holds; nil for a store
    /// that claims nothing.
    var claimCheckInterval: Duration? { get }

    /// This daemon's claims on pending tasks made longer ago than a claim's answer can take to
    /// arrive, at most `limit`: each should be in one of its scheduler's windows.
    func oldPendingClaims(limit: Int) async throws -> [PendingClaim]

    /// Gives back those of `claims` still as listed: the same claim, on a task still pending. A
    /// task claimed again since keeps its new claim.
    func releaseForgottenClaims(_ claims: [PendingClaim]) async throws

    /// Asks the daemon holding a live task to cancel it, when that is another daemon sharing the
    /// store; returns whether it asked (false: this daemon holds it, or nobody does).
    func requestCancelElsewhere(_ id: TaskID) async throws -> Bool

    /// Events every daemon sharing the store committed, after `after` and up to the newest
    /// committed one (never one still being written below it), oldest first, at most `limit`.
    func committedEvents(after: EventSequence, limit: Int) async throws -> [EventRecord]

    /// Calls `onCommit` whenever a daemon sharing the store commits events, until the calling
    /// task is cancelled or the store's connection fails; returns at once on a store of one daemon.
    func listenForCommittedEvents(_ onCommit: @escaping @Sendable () -> Void) async throws

    /// Takes up to `want` requests from the per-minute bucket of `agent` that every daemon
    /// sharing the store draws from (`perMinute`, refilled continuously, holding at most a
    /// minute's worth). Returns how many it got and, when none, how long until the next one.
    func takeSharedRequests(agent: String, perMinute: Int, want: Int) async throws -> (granted: Int, retryAfterMs: Int64)

    /// Charges `tokens` (0: only looks) to the per-minute token bucket of `agent` that every daemon
    /// sharing the store draws from; returns 0 when the bucket is above zero afterwards, else how
    /// long until it is.
    func chargeSharedTokens(agent: String, perMinute: Int, tokens: Int64) async throws -> Int64

    /// Marks an active batch as closing (cancelled, expired) for the daemons sharing the store that
    /// run its tasks; returns whether it did (false: not active, or already closing).
    func requestBatchClose(_ id: BatchID, as state: TaskState) async throws -> Bool

    /// Tasks this daemon holds that a cancel sent to another daemon asks it to stop, at most `limit`.
    func cancelRequests(limit: Int) async throws -> [TaskID]

    /// The active batches of a store other daemons share, oldest first, at most `limit`, each
    /// with which of `agents` have tasks nobody claimed: what this daemon follows (adopts,
    /// closes, forgets) besides what it enqueued itself.
    func sharedActiveBatches(agents: [String], limit: Int) async throws -> [SharedBatch]

    /// Those of `ids` that have ended (completed, failed, cancelled): on a shared store, batches
    /// this daemon holds that another daemon ended.
    func endedBatches(among ids: [BatchID]) async throws -> [BatchRecord]

    /// Puts a finished batch's failed (and optionally expired, cancelled) tasks back to pending,
    /// keeping the completed results.
    func reopenTasks(batchID: BatchID, states: Set<TaskState>, now: Milliseconds) async throws -> ReopenedBatch

    /// Stored events with `sequence` in `(after, upTo]` that match `filter`, oldest first.
    func events(after: EventSequence, upTo: EventSequence?, filter: EventFilter, limit: Int) async throws -> [EventRecord]
    /// Like `events(after:upTo:filter:limit:)`, read in one snapshot together
    /// with the lowest sequence still stored, so a reader can tell whether
    /// retention removed events it had not read yet.
    func eventPage(after: EventSequence, upTo: EventSequence?, filter: EventFilter, limit: Int) async throws -> EventPage
    /// The newest sequence number ever assigned, also when retention has
    /// removed that event since; 0 before the first event.
    func lastEventSequence() async throws -> EventSequence
    /// The oldest event still stored; nil when none is.
    func firstEventSequence() async throws -> EventSequence?
}

/// The writes the commit loop makes, one at a time from its own thread, and
/// recovery before it starts. Synchronous on purpose: the loop is a dedicated
/// thread (ARCHITECTURE, decision 46), so blocking is what it is for, and a
/// commit costs no hop through the cooperative pool and back.
public protocol StoreWriter: Sendable {
    /// Inserts a batch and all its tasks in one transaction; returns once committed.
    func insertBatch(_ batch: NewBatch, now: Milliseconds) throws -> InsertedBatch

    /// Applies one group of changes in one transaction and returns the events
    /// with their sequence numbers assigned.
    func commit(_ changes: ChangeSet) throws -> [EventRecord]

    /// `commit`, also returning the batches that ended in it when the store, not the scheduler,
    /// decides that (several daemons share it, and each sees only its own tasks end).
    func commitReportingEnded(_ changes: ChangeSet) throws -> (events: [EventRecord], endedBatches: [BatchRecord])

    /// One bounded step of event retention, in its own short transaction.
    ///
    /// Deletes the oldest events that are beyond the newest `keepingLast`, or
    /// whose timestamp is before `olderThan`, but at most `limit` of them, and
    /// always from the oldest end, so the log stays a contiguous run of
    /// sequence numbers. Returns how many were deleted; fewer than `limit`
    /// means nothing more is due. `nil` turns a rule off.
    func trimEvents(keepingLast: Int?, olderThan: Milliseconds?, limit: Int) throws -> Int

    /// Makes the stored state consistent after a stop or a crash and returns
    /// what the scheduler must pick up again.
    func recover(now: Milliseconds) throws -> RecoveredState

    /// The newest sequence number ever assigned (see `Store.lastEventSequence`).
    func lastEventSequence() throws -> EventSequence
}

extension StoreWriter {
    /// A store of one daemon: the scheduler's snapshots say when a batch ends.
    public func commitReportingEnded(_ changes: ChangeSet) throws -> (events: [EventRecord], endedBatches: [BatchRecord]) {
        (try commit(changes), [])
    }
}

extension Store {
    /// A store of one daemon: reading a pending task claims nothing.
    public var claimsPendingTasks: Bool { false }

    public func releaseClaims(_ ids: [TaskID]) async throws {}

    public var claimCheckInterval: Duration? { nil }

    public func oldPendingClaims(limit: Int) async throws -> [PendingClaim] { [] }

    public func releaseForgottenClaims(_ claims: [PendingClaim]) async throws {}

    public func sharedActiveBatches(agents: [String], limit: Int) async throws -> [SharedBatch] { [] }

    public func endedBatches(among ids: [BatchID]) async throws -> [BatchRecord] {
        var ended: [BatchRecord] = []
        for id in ids {
            if let batch = try await batch(id), batch.state.isTerminal { ended.append(batch) }
        }
        return ended
    }

    public func requestCancelElsewhere(_ id: TaskID) async throws -> Bool { false }

    public func cancelRequests(limit: Int) async throws -> [TaskID] { [] }

    public func requestBatchClose(_ id: BatchID, as state: TaskState) async throws -> Bool { false }

    public func chargeSharedTokens(agent: String, perMinute: Int, tokens: Int64) async throws -> Int64 { 0 }

    /// A store of one daemon keeps its rate limits in the scheduler: everything asked is granted.
    public func takeSharedRequests(agent: String, perMinute: Int, want: Int) async throws -> (granted: Int, retryAfterMs: Int64) {
        (want, 0)
    }

    public func committedEvents(after: EventSequence, limit: Int) async throws -> [EventRecord] {
        try await events(after: after, upTo: nil, filter: EventFilter(ownerID: ""), limit: limit)
    }

    public func listenForCommittedEvents(_ onCommit: @escaping @Sendable () -> Void) async throws {}

    public func batches(ownerID: String?, creatorUID: UInt32?, limit: Int, beforeID: BatchID?) async throws -> [BatchRecord] {
        try await batches(ownerID: ownerID, creatorUID: creatorUID, parentBatchID: nil, limit: limit, beforeID: beforeID)
    }

    /// Terminal tasks of a batch in id order, after `afterTaskID`, cut by count only.
    public func results(batchID: BatchID, afterTaskID: TaskID, limit: Int) async throws -> [TaskRecord] {
        try await results(batchID: batchID, afterTaskID: afterTaskID, limit: limit, maxBytes: .max)
    }
}

/// A page of stored events and what the log held when it was read.
public struct EventPage: Sendable, Hashable {
    public var events: [EventRecord]
    /// The lowest sequence a reader could still get when the page was read:
    /// the oldest stored event, or the next sequence to be assigned when the
    /// log is empty. Events before it were removed by retention (or never existed).
    public var firstAvailable: EventSequence

    public init(events: [EventRecord], firstAvailable: EventSequence) {
        self.events = events
        self.firstAvailable = firstAvailable
    }
}

public struct InsertedBatch: Sendable {
    public var batch: BatchRecord
    /// The new tasks' ids, in the order the batch listed them.
    public var taskIDs: [TaskID]
    /// The tasks as written (with their agents' defaults), in the same order.
    public var tasks: [NewTask]

    public init(batch: BatchRecord, taskIDs: [TaskID], tasks: [NewTask]) {
        self.batch = batch
        self.taskIDs = taskIDs
        self.tasks = tasks
    }

    /// `batch` as a store just inserted it, under `id`, with its tasks' ids in order.
    public init(_ batch: NewBatch, id: BatchID, taskIDs: [TaskID], now: Milliseconds) {
        var record = BatchRecord(
            id: id, ownerID: batch.ownerID, agent: batch.agent, state: .pending,
            counters: BatchCounters(pending: batch.tasks.count),
            progress: BatchProgress(totalTasks: batch.tasks.count, maxTurns: batch.maxTurns),
            metadata: batch.metadata, parentTaskID: batch.parentTaskID, createdAt: now,
            deadlineAt: batch.deadlineAt, creatorUID: batch.creatorUID)
        record.parentAttempt = batch.parentAttempt
        self.init(batch: record, taskIDs: taskIDs, tasks: batch.tasks)
    }

    /// The task at `index` as it was enqueued: pending, no attempt yet.
    public func taskRecord(at index: Int) -> TaskRecord {
        let task = tasks[index]
        return TaskRecord(id: taskIDs[index], batchID: batch.id, customID: task.customID, ownerID: batch.ownerID,
                          agent: task.agent, state: .pending, priority: task.priority, attempt: 0,
                          maxAttempts: task.maxAttempts, timeoutMs: task.timeoutMs, turnsCompleted: 0,
                          maxTurns: task.maxTurns, parentTaskID: batch.parentTaskID, createdAt: batch.createdAt,
                          url: task.url)
    }
}

/// What recovery hands back to the scheduler.
public struct RecoveredState: Sendable {
    /// Batches not yet terminal, with counters recomputed from their task rows.
    public var activeBatches: [BatchRecord]
    /// The agents each of them still has pending tasks for. Tasks themselves stay
    /// in the store; the scheduler reads them in windows.
    public var pendingAgents: [BatchID: [String]]
    /// Tasks found `running` or `retry_wait` and put back to `pending`.
    public var requeued: Int
    /// `task_failed` events, not yet stored, for tasks a crash cut short on their last attempt.
    public var interruptedFailures: [EventRecord] = []
    /// Tasks of active batches that wait for their children (no payload).
    public var waitingTasks: [RunnableTask] = []

    public init(activeBatches: [BatchRecord], pendingAgents: [BatchID: [String]], requeued: Int,
                interruptedFailures: [EventRecord] = [], waitingTasks: [RunnableTask] = []) {
        self.activeBatches = activeBatches
        self.pendingAgents = pendingAgents
        self.requeued = requeued
        self.interruptedFailures = interruptedFailures
        self.waitingTasks = waitingTasks
    }
}

public struct ReopenedBatch: Sendable {
    /// The batch as it is now.
    public var batch: BatchRecord
    /// How many tasks were put back to pending.
    public var reopened: Int
    /// The agents those tasks belong to.
    public var agents: [String]

    public init(batch: BatchRecord, reopened: Int, agents: [String]) {
        self.batch = batch
        self.reopened = reopened
        self.agents = agents
    }
}

/// A position in a batch's pending tasks, in (priority desc, id) order.
public struct QueueCursor: Sendable, Hashable {
    public var priority: Int32
    public var id: TaskID

    public init(priority: Int32, id: TaskID) {
        self.priority = priority
        self.id = id
    }
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
    /// Read along with the task when small; nil means read it from the store when it starts.
    public var payload: [UInt8]?
    /// An OpenAI Batch line's endpoint, for runners that route by it.
    public var url: String?

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

    public var cursor: QueueCursor { QueueCursor(priority: priority, id: id) }
}

/// One claim of this daemon on a pending task of a shared store: the task, and when the claim was
/// made (the store's clock), which tells this claim from a later one on the same task.
public struct PendingClaim: Sendable, Hashable {
    public var taskID: TaskID
    public var claimedAt: Milliseconds

    public init(taskID: TaskID, claimedAt: Milliseconds) {
        self.taskID = taskID
        self.claimedAt = claimedAt
    }
}

/// An active batch of a shared store, and the agents of its tasks nobody claimed.
public struct SharedBatch: Sendable, Hashable {
    public var record: BatchRecord
    /// Agents (of those asked about) with pending tasks no daemon holds: enqueued elsewhere, or
    /// given back by a daemon that stopped or died.
    public var unclaimedAgents: [String]

    public init(record: BatchRecord, unclaimedAgents: [String]) {
        self.record = record
        self.unclaimedAgents = unclaimedAgents
    }
}
