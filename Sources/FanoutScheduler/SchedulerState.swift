import FanoutCore
import FanoutStore

/// What the scheduler must do after a state change, outside its lock.
struct Effects: Sendable {
    var changes = ChangeSet()
    var starts: [StartOrder] = []
    var cancellations: [Task<Void, Never>] = []
    var retries: [(id: TaskID, attempt: Int, delayMs: Int64)] = []
    /// Run once `changes` is committed.
    var afterCommit: [@Sendable () -> Void] = []
}

/// A task the scheduler decided to start.
struct StartOrder: Sendable {
    var task: RunnableTask
    var attempt: Int
    var timeoutMs: Int64
    var batchMaxTurns: Int
}

/// How one attempt ended, as the executing Swift task saw it.
enum AttemptOutcome: Sendable {
    case succeeded([UInt8])
    case failed(RunnerFailure)
    /// Interrupted by a cancel request or by shutdown.
    case interrupted
}

struct TaskSlot {
    var task: RunnableTask
    var state: TaskState
    var cancelRequested = false
    var handle: Task<Void, Never>?
    /// Called once the task has left `running` and that is committed.
    var stopWaiters: [@Sendable () -> Void] = []
}

struct ActiveBatch {
    var record: BatchRecord
    var openTasks: Set<TaskID>
    var cancelRequested = false
    var lastProgressAt: Milliseconds = 0
    var progressDirty = false
    var finishWaiters: [@Sendable () -> Void] = []

    var snapshot: BatchSnapshot {
        BatchSnapshot(id: record.id, state: record.state, counters: record.counters, progressUnits: record.progress.units,
                      startedAt: record.startedAt, finishedAt: record.finishedAt)
    }
}

/// The scheduler's decisions, as a state machine behind one lock. Nothing in
/// here awaits or does I/O; every method returns the effects to carry out.
struct SchedulerState {
    let configuration: SchedulerConfiguration
    let agents: [String: AgentConfiguration]
    var batches: [BatchID: ActiveBatch] = [:]
    var slots: [TaskID: TaskSlot] = [:]
    var queues: [String: ReadyQueue] = [:]
    var running = 0
    var runningByAgent: [String: Int] = [:]
    var pendingCount = 0
    var retryWaitCount = 0
    var stopping = false

    init(configuration: SchedulerConfiguration) {
        self.configuration = configuration
        agents = Dictionary(configuration.agents.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
    }

    // MARK: Admission

    mutating func admit(_ batch: BatchRecord, tasks: [RunnableTask], now: Milliseconds, effects: inout Effects) {
        var active = ActiveBatch(record: batch, openTasks: Set(minimumCapacity: tasks.count))
        for task in tasks {
            active.openTasks.insert(task.id)
            slots[task.id] = TaskSlot(task: task, state: .pending)
            queues[task.agent, default: ReadyQueue()].append(task.id, priority: task.priority)
        }
        pendingCount += tasks.count
        batches[batch.id] = active
        // A recovered batch may have nothing left to run (the crash came after its last task).
        finishIfDone(batch.id, now: now, effects: &effects)
    }

    // MARK: Dispatch

    mutating func dispatch(now: Milliseconds, effects: inout Effects) {
        guard !stopping else { return }
        while running < configuration.globalConcurrency, let (agent, id) = nextReady() {
            queues[agent]!.removeFirst()
            guard var slot = slots[id], slot.state == .pending, var batch = batches[slot.task.batchID] else { continue }
            slot.state = .running
            slot.task.attempt += 1
            slots[id] = slot
            pendingCount -= 1
            running += 1
            runningByAgent[agent, default: 0] += 1

            batch.record.counters.move(from: .pending, to: .running)
            if batch.record.state == .pending {
                batch.record.state = .processing
                batch.record.startedAt = now
            }
            batches[batch.record.id] = batch
            effects.changes.tasks.append(.started(id, attempt: slot.task.attempt, at: now))
            effects.changes.batches[batch.record.id] = batch.snapshot
            effects.changes.events.append(taskEvent(.taskStarted, slot.task, now: now))
            let timeout = slot.task.timeoutMs > 0 ? slot.task.timeoutMs : (agents[agent]?.timeoutMs ?? 0)
            effects.starts.append(StartOrder(task: slot.task, attempt: slot.task.attempt, timeoutMs: timeout,
                                             batchMaxTurns: batch.record.progress.maxTurns))
        }
    }

    /// The best ready task among agents with a free slot: highest priority,
    /// then lowest id (enqueued first). Stale heads are dropped on the way.
    private mutating func nextReady() -> (agent: String, id: TaskID)? {
        var best: (agent: String, id: TaskID, priority: Int32)?
        for agent in Array(queues.keys) {
            guard let limit = agents[agent]?.concurrency, runningByAgent[agent, default: 0] < limit else { continue }
            while let head = queues[agent]?.first, slots[head.id]?.state != .pending {
                queues[agent]!.removeFirst()
            }
            guard let head = queues[agent]?.first else {
                queues[agent] = nil
                continue
            }
            if best == nil || head.priority > best!.priority || (head.priority == best!.priority && head.id < best!.id) {
                best = (agent, head.id, head.priority)
            }
        }
        return best.map { ($0.agent, $0.id) }
    }

    // MARK: Running tasks

    /// Records the Swift task running an attempt. Returns false when it must
    /// be cancelled at once (cancel requested, or the scheduler is stopping).
    mutating func attach(_ handle: Task<Void, Never>, to id: TaskID, attempt: Int) -> Bool {
        guard var slot = slots[id], slot.state == .running, slot.task.attempt == attempt else { return false }
        slot.handle = handle
        slots[id] = slot
        return !slot.cancelRequested && !stopping
    }

    mutating func turn(_ id: TaskID, attempt: Int, now: Milliseconds, effects: inout Effects) {
        guard var slot = slots[id], slot.state == .running, slot.task.attempt == attempt,
              var batch = batches[slot.task.batchID] else { return }
        let before = slot.task.turnsCompleted
        slot.task.turnsCompleted += 1
        slots[id] = slot
        var event = taskEvent(.taskTurn, slot.task, now: now)
        event.turn = slot.task.turnsCompleted
        effects.changes.tasks.append(.turns(id, turnsCompleted: slot.task.turnsCompleted))
        effects.changes.events.append(event)
        if batch.record.progress.recordTurn(turnsBefore: before) {
            batches[batch.record.id] = batch
            effects.changes.batches[batch.record.id] = batch.snapshot
            noteProgress(batch.record.id, now: now, effects: &effects)
        } else {
            batches[batch.record.id] = batch
        }
    }

    mutating func finish(_ id: TaskID, attempt: Int, outcome: AttemptOutcome, jitter: Double, now: Milliseconds, effects: inout Effects) {
        guard var slot = slots[id], slot.state == .running, slot.task.attempt == attempt else { return }
        let agent = slot.task.agent
        running -= 1
        runningByAgent[agent, default: 1] -= 1
        slot.handle = nil

        switch outcome {
        case .succeeded(let result):
            close(&slot, as: .completed, result: result, failure: nil, now: now, effects: &effects)
        case .interrupted where slot.cancelRequested:
            close(&slot, as: .cancelled, result: nil, failure: nil, now: now, effects: &effects)
        case .interrupted:
            // Shutdown: the task runs again when the daemon comes back; its attempt stays counted.
            requeue(&slot, as: .pending, failure: nil, effects: &effects)
        case .failed(let failure) where slot.cancelRequested:
            close(&slot, as: .cancelled, result: nil, failure: failure.failure, now: now, effects: &effects)
        case .failed(let failure):
            if failure.failure.retryable, slot.task.attempt < slot.task.maxAttempts, !stopping {
                let delay = configuration.backoff.delay(beforeAttempt: slot.task.attempt + 1, jitter: jitter,
                                                        retryAfterMs: failure.retryAfterMs)
                requeue(&slot, as: .retryWait, failure: failure.failure, effects: &effects)
                var event = taskEvent(.taskRetrying, slot.task, now: now)
                event.retryDelayMs = delay
                event.failure = failure.failure
                effects.changes.events.append(event)
                effects.retries.append((id, slot.task.attempt, delay))
            } else {
                close(&slot, as: .failed, result: nil, failure: failure.failure, now: now, effects: &effects)
            }
        }
        dispatch(now: now, effects: &effects)
    }

    /// A task in retry_wait whose backoff has passed becomes ready again.
    mutating func retryDue(_ id: TaskID, attempt: Int, now: Milliseconds, effects: inout Effects) {
        guard var slot = slots[id], slot.state == .retryWait, slot.task.attempt == attempt,
              var batch = batches[slot.task.batchID] else { return }
        slot.state = .pending
        slots[id] = slot
        retryWaitCount -= 1
        pendingCount += 1
        batch.record.counters.move(from: .retryWait, to: .pending)
        batches[batch.record.id] = batch
        queues[slot.task.agent, default: ReadyQueue()].append(id, priority: slot.task.priority)
        effects.changes.tasks.append(.requeued(id, state: .pending, failure: nil))
        effects.changes.batches[batch.record.id] = batch.snapshot
        dispatch(now: now, effects: &effects)
    }

    private mutating func requeue(_ slot: inout TaskSlot, as state: TaskState, failure: TaskFailure?, effects: inout Effects) {
        guard var batch = batches[slot.task.batchID] else { return }
        batch.record.counters.move(from: slot.state, to: state)
        if state == .pending {
            pendingCount += 1
            queues[slot.task.agent, default: ReadyQueue()].append(slot.task.id, priority: slot.task.priority)
        } else {
            retryWaitCount += 1
        }
        slot.state = state
        effects.afterCommit.append(contentsOf: slot.stopWaiters)
        slot.stopWaiters = []
        slots[slot.task.id] = slot
        batches[batch.record.id] = batch
        effects.changes.tasks.append(.requeued(slot.task.id, state: state, failure: failure))
        effects.changes.batches[batch.record.id] = batch.snapshot
    }

    /// Moves a task to a terminal state and settles its batch.
    private mutating func close(_ slot: inout TaskSlot, as state: TaskState, result: [UInt8]?, failure: TaskFailure?,
                                now: Milliseconds, effects: inout Effects) {
        guard var batch = batches[slot.task.batchID] else { return }
        switch slot.state {
        case .pending: pendingCount -= 1
        case .retryWait: retryWaitCount -= 1
        default: break
        }
        batch.record.counters.move(from: slot.state, to: state)
        batch.record.progress.recordTerminal(turnsCompleted: slot.task.turnsCompleted)
        batch.openTasks.remove(slot.task.id)
        batches[batch.record.id] = batch
        slots[slot.task.id] = nil
        effects.afterCommit.append(contentsOf: slot.stopWaiters)

        effects.changes.tasks.append(.finished(slot.task.id, state: state, result: result, failure: failure,
                                               turnsCompleted: slot.task.turnsCompleted, at: now))
        effects.changes.batches[batch.record.id] = batch.snapshot
        let kind: EventKind = switch state {
        case .completed: .taskCompleted
        case .cancelled: .taskCancelled
        case .expired: .taskExpired
        default: .taskFailed
        }
        var event = taskEvent(kind, slot.task, now: now)
        event.failure = failure
        effects.changes.events.append(event)
        if !finishIfDone(batch.record.id, now: now, effects: &effects) {
            noteProgress(batch.record.id, now: now, effects: &effects)
        }
    }

    // MARK: Cancellation

    /// Cancels one task. Returns false if it is not active here (unknown or
    /// already terminal). `onStopped` runs once a running task has stopped.
    @discardableResult
    mutating func cancelTask(_ id: TaskID, now: Milliseconds, onStopped: (@Sendable () -> Void)? = nil,
                             effects: inout Effects) -> Bool {
        guard var slot = slots[id] else { return false }
        switch slot.state {
        case .pending, .retryWait:
            close(&slot, as: .cancelled, result: nil, failure: nil, now: now, effects: &effects)
            dispatch(now: now, effects: &effects)
            if let onStopped { effects.afterCommit.append(onStopped) }
        case .running, .waitingChildren:
            slot.cancelRequested = true
            if let handle = slot.handle { effects.cancellations.append(handle) }
            if let onStopped { slot.stopWaiters.append(onStopped) }
            slots[id] = slot
        default:
            break
        }
        return true
    }

    /// Cancels every open task of a batch; `batch_cancelled` follows when the
    /// running ones have stopped. Returns false if the batch is not active.
    mutating func cancelBatch(_ id: BatchID, now: Milliseconds, onFinished: @escaping @Sendable () -> Void, effects: inout Effects) -> Bool {
        guard var batch = batches[id] else { return false }
        batch.cancelRequested = true
        batch.finishWaiters.append(onFinished)
        batches[id] = batch
        for taskID in batch.openTasks.sorted() {
            cancelTask(taskID, now: now, effects: &effects)
        }
        return true
    }

    // MARK: Batches and progress

    /// Finishes the batch if every task is terminal. Returns whether it did.
    @discardableResult
    private mutating func finishIfDone(_ id: BatchID, now: Milliseconds, effects: inout Effects) -> Bool {
        guard var batch = batches[id], batch.record.counters.isFinished else { return false }
        batch.record.state = batch.cancelRequested ? .cancelled : .completed
        batch.record.finishedAt = now
        if batch.record.startedAt == nil { batch.record.startedAt = now }
        batches[id] = nil
        effects.changes.batches[id] = batch.snapshot
        // Always one progress event at 100 %, then exactly one terminal event.
        effects.changes.events.append(batchEvent(.batchProgress, batch.record, now: now))
        effects.changes.events.append(batchEvent(batch.cancelRequested ? .batchCancelled : .batchCompleted, batch.record, now: now))
        effects.afterCommit.append(contentsOf: batch.finishWaiters)
        return true
    }

    private mutating func noteProgress(_ id: BatchID, now: Milliseconds, effects: inout Effects) {
        guard var batch = batches[id] else { return }
        if now - batch.lastProgressAt >= configuration.progressIntervalMs {
            batch.lastProgressAt = now
            batch.progressDirty = false
            effects.changes.events.append(batchEvent(.batchProgress, batch.record, now: now))
        } else {
            batch.progressDirty = true
        }
        batches[id] = batch
    }

    /// Emits the coalesced progress events that are due.
    mutating func flushProgress(now: Milliseconds, effects: inout Effects) {
        for (id, batch) in batches where batch.progressDirty && now - batch.lastProgressAt >= configuration.progressIntervalMs {
            noteProgress(id, now: now, effects: &effects)
        }
    }

    func taskEvent(_ kind: EventKind, _ task: RunnableTask, now: Milliseconds) -> EventRecord {
        EventRecord(kind: kind, timestamp: now, ownerID: task.ownerID, batchID: task.batchID, taskID: task.id,
                    customID: task.customID, parentTaskID: task.parentTaskID, attempt: task.attempt)
    }

    func batchEvent(_ kind: EventKind, _ batch: BatchRecord, now: Milliseconds) -> EventRecord {
        EventRecord(kind: kind, timestamp: now, ownerID: batch.ownerID, batchID: batch.id, parentTaskID: batch.parentTaskID,
                    progress: batch.progress.percent, counters: batch.counters)
    }
}
