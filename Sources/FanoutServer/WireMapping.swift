import FanoutCore
import FanoutScheduler
import FanoutWire

// Conversions between the domain records and the protocol's value types.

extension TaskStatus {
    init(_ state: TaskState) {
        self = switch state {
        case .pending: .pending
        case .running: .running
        case .waitingChildren: .waitingChildren
        case .retryWait: .retryWait
        case .completed: .completed
        case .failed: .failed
        case .cancelled: .cancelled
        case .expired: .expired
        }
    }
}

extension BatchStatus {
    init(_ state: BatchState) {
        self = switch state {
        case .pending: .pending
        case .processing: .processing
        case .completed: .completed
        case .cancelled: .cancelled
        case .failed: .failed
        }
    }
}

extension EventType {
    init(_ kind: EventKind) {
        self = switch kind {
        case .batchProgress: .batchProgress
        case .batchCompleted: .batchCompleted
        case .batchCancelled: .batchCancelled
        case .batchFailed: .batchFailed
        case .taskStarted: .taskStarted
        case .taskTurn: .taskTurn
        case .taskRetrying: .taskRetrying
        case .taskCompleted: .taskCompleted
        case .taskFailed: .taskFailed
        case .taskCancelled: .taskCancelled
        case .taskExpired: .taskExpired
        }
    }
}

extension EventKind {
    init?(_ type: EventType) {
        switch type {
        case .unspecified: return nil
        case .batchProgress: self = .batchProgress
        case .batchCompleted: self = .batchCompleted
        case .batchCancelled: self = .batchCancelled
        case .batchFailed: self = .batchFailed
        case .taskStarted: self = .taskStarted
        case .taskTurn: self = .taskTurn
        case .taskRetrying: self = .taskRetrying
        case .taskCompleted: self = .taskCompleted
        case .taskFailed: self = .taskFailed
        case .taskCancelled: self = .taskCancelled
        case .taskExpired: self = .taskExpired
        }
    }
}

extension TaskError {
    init(_ failure: TaskFailure) {
        self.init(message: failure.message, code: failure.code, retryable: failure.retryable)
    }
}

extension FanoutWire.BatchCounts {
    init(_ counters: BatchCounters) {
        self.init()
        total = UInt32(clamping: counters.total)
        pending = UInt32(clamping: counters.pending)
        running = UInt32(clamping: counters.running)
        waitingChildren = UInt32(clamping: counters.waitingChildren)
        retryWait = UInt32(clamping: counters.retryWait)
        completed = UInt32(clamping: counters.completed)
        failed = UInt32(clamping: counters.failed)
        cancelled = UInt32(clamping: counters.cancelled)
        expired = UInt32(clamping: counters.expired)
    }
}

extension BatchInfo {
    init(_ record: BatchRecord) {
        self.init()
        id = UInt64(record.id)
        ownerID = record.ownerID
        agent = record.agent
        status = BatchStatus(record.state)
        counts = FanoutWire.BatchCounts(record.counters)
        progress = record.progress.percent
        metadata = record.metadata
        parentTaskID = UInt64(record.parentTaskID ?? 0)
        createdAtMs = record.createdAt
        startedAtMs = record.startedAt ?? 0
        finishedAtMs = record.finishedAt ?? 0
        deadlineAtMs = record.deadlineAt ?? 0
        creatorUID = record.creatorUID
        maxTurns = UInt32(clamping: record.progress.maxTurns)
        usage = FanoutWire.TokenUsage(record.usage)
    }
}

extension FanoutWire.TokenUsage {
    init(_ usage: FanoutCore.TokenUsage) {
        self.init(promptTokens: UInt64(clamping: usage.promptTokens), completionTokens: UInt64(clamping: usage.completionTokens),
                  totalTokens: UInt64(clamping: usage.totalTokens))
    }
}

extension TaskInfo {
    init(_ record: TaskRecord) {
        self.init()
        id = UInt64(record.id)
        batchID = UInt64(record.batchID)
        customID = record.customID
        ownerID = record.ownerID
        agent = record.agent
        status = TaskStatus(record.state)
        priority = record.priority
        attempt = UInt32(clamping: record.attempt)
        maxAttempts = UInt32(clamping: record.maxAttempts)
        timeoutMs = UInt64(clamping: record.timeoutMs)
        turnsCompleted = UInt32(clamping: record.turnsCompleted)
        maxTurns = UInt32(clamping: record.maxTurns)
        result = record.result ?? []
        error = record.failure.map(TaskError.init)
        parentTaskID = UInt64(record.parentTaskID ?? 0)
        createdAtMs = record.createdAt
        startedAtMs = record.startedAt ?? 0
        finishedAtMs = record.finishedAt ?? 0
        payload = record.payload ?? []
        url = record.url ?? ""
        statusCode = UInt32(clamping: record.details.statusCode ?? 0)
        requestID = record.details.requestID ?? ""
        usage = record.details.usage.map(FanoutWire.TokenUsage.init)
    }
}

extension TaskResult {
    init(_ record: TaskRecord) {
        self.init(taskID: UInt64(record.id), customID: record.customID, status: TaskStatus(record.state),
                  result: record.result ?? [], error: record.failure.map(TaskError.init),
                  attempt: UInt32(clamping: record.attempt), statusCode: UInt32(clamping: record.details.statusCode ?? 0),
                  requestID: record.details.requestID ?? "", usage: record.details.usage.map(FanoutWire.TokenUsage.init),
                  url: record.url ?? "")
    }
}

extension FanoutWire.Event {
    init(_ record: EventRecord) {
        self.init()
        sequence = UInt64(record.sequence)
        type = EventType(record.kind)
        timestampMs = record.timestamp
        ownerID = record.ownerID
        batchID = UInt64(record.batchID)
        taskID = UInt64(record.taskID ?? 0)
        customID = record.customID ?? ""
        parentTaskID = UInt64(record.parentTaskID ?? 0)
        progress = record.progress ?? 0
        counts = record.counters.map(FanoutWire.BatchCounts.init)
        attempt = UInt32(clamping: record.attempt ?? 0)
        turn = UInt32(clamping: record.turn ?? 0)
        retryDelayMs = UInt64(clamping: record.retryDelayMs ?? 0)
        error = record.failure.map(TaskError.init)
    }
}

extension NewTask {
    init(_ spec: TaskSpec, batchPriority: Int32) {
        self.init(customID: spec.customID, agent: spec.agent, payload: spec.payload,
                  priority: spec.priority != 0 ? spec.priority : batchPriority,
                  maxAttempts: Int(spec.maxAttempts), timeoutMs: Int64(clamping: spec.timeoutMs),
                  url: spec.url.isEmpty ? nil : spec.url)
    }
}

extension WireStatus {
    init(_ error: FanoutError) {
        let code: StatusCode = switch error.kind {
        case .invalidArgument: .invalidArgument
        case .notFound: .notFound
        case .alreadyExists: .alreadyExists
        case .permissionDenied: .permissionDenied
        case .resourceExhausted: .resourceExhausted
        case .failedPrecondition: .failedPrecondition
        case .unavailable: .unavailable
        case .internal: .internal
        }
        self.init(code: code, message: error.message)
    }

    /// Any error a call can throw, as the status the client sees.
    init(from error: any Error) {
        switch error {
        case let status as WireStatus: self = status
        case let fanout as FanoutError: self.init(fanout)
        case let wire as WireError: self.init(code: wire.statusCode, message: wire.description)
        default: self.init(code: .internal, message: "internal error: \(error)")
        }
    }
}
