import FanoutCore

/// One group commit: task row changes, batch snapshots and new events,
/// written together in one transaction.
public struct ChangeSet: Sendable, Equatable {
    public var tasks: [TaskChange] = []
    /// The latest state of each touched batch; later snapshots replace earlier ones.
    public var batches: [BatchID: BatchSnapshot] = [:]
    public var events: [EventRecord] = []

    public init() {}

    public var isEmpty: Bool { tasks.isEmpty && batches.isEmpty && events.isEmpty }

    /// Rows this group writes.
    public var count: Int { tasks.count + batches.count + events.count }

    public mutating func merge(_ other: ChangeSet) {
        tasks.append(contentsOf: other.tasks)
        batches.merge(other.batches) { _, new in new }
        events.append(contentsOf: other.events)
    }
}

public enum TaskChange: Sendable, Hashable {
    case started(TaskID, attempt: Int, at: Milliseconds)
    case turns(TaskID, turnsCompleted: Int)
    /// Back to `pending` or into `retry_wait`, keeping the attempt count.
    case requeued(TaskID, state: TaskState, failure: TaskFailure?)
    /// Back to `pending` at a graceful shutdown, the attempt it was on given back.
    case released(TaskID)
    /// A running task waits for its children (`waiting_children`), the attempt kept.
    case waiting(TaskID)
    /// A waiting task whose children ended runs again, on the same attempt.
    case resumed(TaskID)

    case finished(TaskID, state: TaskState, result: [UInt8]?, failure: TaskFailure?, turnsCompleted: Int, at: Milliseconds,
                  details: ResponseDetails = ResponseDetails())
}

extension TaskChange {
    /// The task it changes.
    public var taskID: TaskID {
        switch self {
        case .started(let id, _, _), .turns(let id, _), .requeued(let id, _, _), .released(let id), .waiting(let id),
             .resumed(let id), .finished(let id, _, _, _, _, _, _):
            id
        }
    }
}

/// The columns of a batch row the scheduler owns while the batch is active.
public struct BatchSnapshot: Sendable, Hashable {
    public var id: BatchID
    public var state: BatchState
    public var counters: BatchCounters
    public var progressUnits: Int
    public var startedAt: Milliseconds?
    public var finishedAt: Milliseconds?
    public var closing: TaskState?
    public var usage: TokenUsage

    public init(id: BatchID, state: BatchState, counters: BatchCounters, progressUnits: Int, startedAt: Milliseconds?,
                finishedAt: Milliseconds?, closing: TaskState? = nil, usage: TokenUsage = .zero) {
        self.usage = usage
        self.id = id
        self.state = state
        self.counters = counters
        self.progressUnits = progressUnits
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.closing = closing
    }
}
