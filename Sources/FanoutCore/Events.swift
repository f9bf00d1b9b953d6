public enum EventKind: String, Sendable, Hashable, CaseIterable, Codable {
    case batchProgress = "batch_progress"
    case batchCompleted = "batch_completed"
    case batchCancelled = "batch_cancelled"
    case batchFailed = "batch_failed"
    case taskStarted = "task_started"
    case taskTurn = "task_turn"
    case taskRetrying = "task_retrying"
    case taskCompleted = "task_completed"
    case taskFailed = "task_failed"
    case taskCancelled = "task_cancelled"
    case taskExpired = "task_expired"

    public var isBatchEvent: Bool {
        switch self {
        case .batchProgress, .batchCompleted, .batchCancelled, .batchFailed: true
        default: false
        }
    }
}

/// One progress event. `sequence` is 0 until the store assigns it on commit.
public struct EventRecord: Sendable, Hashable {
    public var sequence: EventSequence
    public var kind: EventKind
    public var timestamp: Milliseconds
    public var ownerID: String
    public var batchID: BatchID
    public var taskID: TaskID?
    public var customID: String?
    public var parentTaskID: TaskID?
    public var progress: Double?
    public var counters: BatchCounters?
    public var attempt: Int?
    public var turn: Int?
    public var retryDelayMs: Int64?
    public var failure: TaskFailure?
    /// The uid that created the event's batch: who may read the event besides an admin.
    public var creatorUID: UInt32?

    public init(
        sequence: EventSequence = 0, kind: EventKind, timestamp: Milliseconds, ownerID: String, batchID: BatchID,
        taskID: TaskID? = nil, customID: String? = nil, parentTaskID: TaskID? = nil, progress: Double? = nil,
        counters: BatchCounters? = nil, attempt: Int? = nil, turn: Int? = nil, retryDelayMs: Int64? = nil,
        failure: TaskFailure? = nil, creatorUID: UInt32? = nil
    ) {
        self.sequence = sequence
        self.kind = kind
        self.timestamp = timestamp
        self.ownerID = ownerID
        self.batchID = batchID
        self.taskID = taskID
        self.customID = customID
        self.parentTaskID = parentTaskID
        self.progress = progress
        self.counters = counters
        self.attempt = attempt
        self.turn = turn
        self.retryDelayMs = retryDelayMs
        self.failure = failure
        self.creatorUID = creatorUID
    }
}

/// Which events a subscriber wants.
public struct EventFilter: Sendable, Hashable {
    public var ownerID: String
    public var kinds: Set<EventKind>
    public var batchID: BatchID?
    /// Only events of batches this uid created (a non-admin peer); nil: any.
    public var creatorUID: UInt32?

    public init(ownerID: String, kinds: Set<EventKind> = [], batchID: BatchID? = nil, creatorUID: UInt32? = nil) {
        self.ownerID = ownerID
        self.kinds = kinds
        self.batchID = batchID
        self.creatorUID = creatorUID
    }

    /// No condition at all: every event matches.
    public var matchesEverything: Bool { ownerID.isEmpty && kinds.isEmpty && batchID == nil && creatorUID == nil }

    public func matches(_ event: EventRecord) -> Bool {
        (ownerID.isEmpty || event.ownerID == ownerID)
            && (kinds.isEmpty || kinds.contains(event.kind))
            && (batchID == nil || event.batchID == batchID)
            && (creatorUID == nil || event.creatorUID == creatorUID)
    }
}
