import FanoutCore
import FanoutStore

/// What a running task can do with subagents: spawn child batches, wait for
/// them, and read what they produced. A runner gets it in `RunContext.children`.
public protocol ChildTasks: Sendable {
    /// Enqueues `batch` as children of the running task (its owner, creator and
    /// parent are the task's); returns the child batch once it is committed.
    func spawn(_ batch: NewBatch) async throws -> BatchRecord

    /// Waits until every child batch of the task has ended. Meanwhile the task is
    /// `waiting_children` and holds no concurrency slot; it has one again when
    /// this returns. `timeoutMs` (nil: the agent's `children_timeout_ms`) bounds
    /// the wait: when it passes, the children still unfinished are cancelled.
    func wait(timeoutMs: Int64?) async throws

    /// The task's child batches, oldest (first spawned) first.
    func batches() async throws -> [BatchRecord]

    /// A page of a child batch's ended tasks, in id order, after `afterTaskID`.
    func results(of batch: BatchID, afterTaskID: TaskID, limit: Int) async throws -> [TaskRecord]
}

/// `ChildTasks` for one attempt run by the scheduler.
struct AttemptChildren: ChildTasks {
    let scheduler: Scheduler
    let taskID: TaskID
    let attempt: Int
    /// The run of the attempt (a resumed task runs it again): an earlier run can no longer act for the task.
    let run: Int

    func spawn(_ batch: NewBatch) async throws -> BatchRecord {
        try await scheduler.spawnChildren(of: taskID, attempt: attempt, run: run, batch)
    }

    func wait(timeoutMs: Int64?) async throws {
        try await scheduler.waitForChildren(of: taskID, attempt: attempt, run: run, timeoutMs: timeoutMs)
    }

    func batches() async throws -> [BatchRecord] {
        try await scheduler.store.childBatches(of: taskID, attempt: attempt)
    }

    func results(of batch: BatchID, afterTaskID: TaskID, limit: Int) async throws -> [TaskRecord] {
        try await scheduler.store.results(batchID: batch, afterTaskID: afterTaskID, limit: limit)
    }
}
