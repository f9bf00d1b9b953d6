import FanoutWire
import Synchronization

/// What a worker's handler gets for one task: the task and its payload, and
/// ways to report turns and to spawn children.
///
/// Cancellation is Swift task cancellation: when the task is cancelled (by a
/// client, a deadline, or its parent's cancellation), the handler's Swift task
/// is cancelled; it should stop and throw.
public final class WorkerTaskContext: Sendable {
    /// The task as the daemon assigned it (its payload included).
    public let task: TaskInfo
    private let session: WorkerSession
    /// Child batches of this task that had ended when it was assigned again.
    private let earlierChildren: [ChildBatch]
    private let spawns = Mutex(0)

    init(task: TaskInfo, session: WorkerSession, earlierChildren: [ChildBatch]) {
        self.task = task
        self.session = session
        self.earlierChildren = earlierChildren
    }

    public var payload: [UInt8] { task.payload }
    /// 1 for the first attempt; a task re-run after a failure or a lost worker has a higher one.
    public var attempt: Int { Int(task.attempt) }
    public var taskID: UInt64 { task.id }

    /// Reports that `turns` more turns completed; with the agent's `max_turns`, this is what moves progress.
    public func reportTurn(_ turns: UInt32 = 1) async throws {
        try await session.send(.turn(taskID: task.id, turns: turns))
    }

    /// Enqueues `tasks` as a child batch of this task (on `agent`, or each task's
    /// own), suspends until every one of them has ended, and returns their
    /// results. While it waits the task holds no slot, on this worker or in the
    /// daemon. `timeout` bounds the wait (nil: the agent's `children_timeout_ms`):
    /// children unfinished by then are cancelled, and their results say so.
    ///
    /// A handler run again for a task whose worker went away while it waited
    /// (or after fanoutd restarted) does not spawn again: its k-th `spawn`
    /// returns the results of the task's k-th child batch. Handlers that spawn
    /// in a fixed order get the results they would have had.
    public func spawn(_ tasks: [TaskSpec], agent: String = "", metadata: [String: String] = [:],
                      timeout: Duration? = nil) async throws -> ChildBatch {
        let index = spawns.withLock { count in
            defer { count += 1 }
            return count
        }
        if index < earlierChildren.count { return earlierChildren[index] }
        let request = EnqueueBatchRequest(ownerID: "", agent: agent, metadata: metadata, tasks: tasks)
        let batchID = try await session.spawn(task.id, request)
        let timeoutMs = try timeout.map { try FanoutClient.milliseconds($0) } ?? 0
        let children = try await session.waitForChildren(task.id, timeoutMs: timeoutMs)
        return children.first { $0.batchID == batchID } ?? ChildBatch(batchID: batchID, results: [])
    }
}
