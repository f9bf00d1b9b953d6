import DequeModule
import FanoutCore
import FanoutStore

/// What the scheduler must do after a state change, outside its lock.
struct Effects: Sendable {
    var changes = ChangeSet()
    var starts: [StartOrder] = []
    var cancellations: [AttemptHandle] = []
    var retries: [(id: TaskID, attempt: Int, delayMs: Int64)] = []
    var refills: [RefillOrder] = []
    /// Requests per minute to take from a bucket other daemons share.
    var requestGrants: [RequestGrantOrder] = []
    /// Tokens used (or 0: a look) to charge to a bucket other daemons share.
    var tokenCharges: [TokenChargeOrder] = []
    /// Dispatch again at this time: an agent is paused or rate-limited until then.
    var wakeAt: Milliseconds?
    /// Run once `changes` is committed.
    var afterCommit: [@Sendable () -> Void] = []
    /// Live attempts waiting for their children, to be resumed: the children ended and a slot is theirs.
    var resumes: [CheckedContinuation<Void, any Error>] = []
    /// Live attempts waiting for their children whose task ended meanwhile: they stop.
    var abandonedWaits: [CheckedContinuation<Void, any Error>] = []
}

/// A task the scheduler decided to start.
struct StartOrder: Sendable {
    var task: RunnableTask
    var attempt: Int
    var timeoutMs: Int64
    /// The task's own turn budget (0: none), which the runner is told.
    var maxTurns: Int
    /// Who submitted the task's batch.
    var creatorUID: UInt32
    /// The task waited for its children and its attempt is run again from the start
    /// (its runner stopped meanwhile, say across a restart); the children's results are in the store.
    var resumed = false
    /// Which run of the attempt this is (see `TaskSlot.run`).
    var run = 0
}

/// A window of pending tasks to read from the store.
struct RefillOrder: Sendable {
    var key: SourceKey
    /// The source that asked; a reply for an older source of the same key is stale.
    var generation: Int
    var cursor: QueueCursor?
    var limit: Int
}

/// How one attempt ended, as the executing Swift task saw it.
enum AttemptOutcome: Sendable {
    case succeeded(RunOutput)
    case failed(RunnerFailure)
    /// Interrupted by a cancel request, a deadline, or shutdown.
    case interrupted
}

/// A task that is running or waiting to retry. Pending tasks live in their
/// source's window or only in the store.
struct TaskSlot {
    var task: RunnableTask
    var state: TaskState
    /// What an interruption turns into: cancelled or expired. Nil: shutdown.
    var interruptAs: TaskState?
    var handle: AttemptHandle?
    /// Called once the task has left `running` and that is committed.
    var stopWaiters: [@Sendable () -> Void] = []
    /// Without `max_turns`, turn events are coalesced: when the last one went
    /// out, and whether turns were counted since.
    var lastTurnEventAt: Milliseconds?
    var turnEventPending = false
    /// While `waiting_children`: resumes the live attempt. Nil when no attempt is
    /// waiting (after a restart): the task then runs again with its children's results.
    var resumer: CheckedContinuation<Void, any Error>?
    /// Child tasks spawned by this task so far.
    var spawnedChildren = 0
    /// Counts the runs of the attempt (a resumed task may run it again): an outcome from an earlier run is stale.
    var run = 0
}

struct ActiveBatch {
    var record: BatchRecord
    /// Agents with a source for this batch.
    var agents: Set<String> = []
    /// Pending tasks cancelled one by one while still only in the store: a
    /// window read that races with that commit must not start them.
    var cancelledInStore: Set<TaskID> = []
    /// Set by cancel_batch (cancelled) or the deadline (expired).
    var closing: TaskState?
    var lastProgressAt: Milliseconds = 0
    var progressDirty = false
    var finishWaiters: [@Sendable () -> Void] = []

    var snapshot: BatchSnapshot {
        BatchSnapshot(id: record.id, state: record.state, counters: record.counters, progressUnits: record.progress.units,
                      startedAt: record.startedAt, finishedAt: record.finishedAt, closing: closing, usage: record.usage)
    }
}

/// An agent's limits as they stand.
struct AgentRuntime {
    let configuration: AgentConfiguration
    var running = 0
    /// Slots the connected workers offer, for worker-served agents; nil: the configuration's concurrency alone.
    var capacity: Int?
    var requests: RateLimit?
    var tokens: RateLimit?
    /// On a shared store, requests per minute are taken from a bucket every daemon shares, in
    /// small grants; this replaces `requests`.
    var sharedRequests: SharedRequestPermits?
    /// On a shared store, tokens per minute are charged to a bucket every daemon shares; this
    /// replaces `tokens`.
    var sharedTokens: SharedTokenBudget?
    /// A runner asked to wait (Retry-After) until then.
    var pausedUntil: Milliseconds = 0

    init(_ configuration: AgentConfiguration, now: Milliseconds) {
        self.configuration = configuration
        if configuration.requestsPerMinute > 0 { requests = RateLimit(perMinute: configuration.requestsPerMinute, now: now) }
        if configuration.tokensPerMinute > 0 { tokens = RateLimit(perMinute: configuration.tokensPerMinute, now: now) }
    }

    /// Whether a task may start now; if not only for lack of time, when it may.
    mutating func readiness(now: Milliseconds) -> (ready: Bool, retryAt: Milliseconds?) {
        guard running < min(configuration.concurrency, capacity ?? .max) else { return (false, nil) }
        var at: Milliseconds?
        if now < pausedUntil { at = pausedUntil }
        if var requests {
            if !requests.canTake(1, now: now) { at = max(at ?? 0, requests.availableAt(1)) }
            self.requests = requests
        }
        if let sharedTokens, !sharedTokens.left {
            at = max(at ?? 0, sharedTokens.retryAt.map { max($0, now + 1) } ?? .max)
        }
        if let sharedRequests, sharedRequests.permits < 1 {
            // Not ready until a grant comes; a refusal says when to ask again.
            at = max(at ?? 0, sharedRequests.retryAt.map { max($0, now + 1) } ?? .max)
        }
        if var tokens {
            // Token use is known afterwards: start while the bucket is above zero.
            if !tokens.canTake(0.001, now: now) { at = max(at ?? 0, tokens.availableAt(0.001)) }
            self.tokens = tokens
        }
        return (at == nil, at)
    }
}

/// The scheduler's decisions, as a state machine behind one lock. Nothing in
/// here awaits or does I/O; every method returns the effects to carry out.
struct SchedulerState {
    let configuration: SchedulerConfiguration
    var agents: [String: AgentRuntime] = [:]
    /// Agent names in a fixed order; dispatch starts from a rotating point so
    /// agents at the same priority take turns.
    private var agentOrder: [String]
    private var agentRotation = 0
    var batches: [BatchID: ActiveBatch] = [:]
    var slots: [TaskID: TaskSlot] = [:]
    /// Each active batch's running and retry-waiting tasks. Kept apart from
    /// `ActiveBatch`, which is copied on every change: a set inside it would be
    /// copied with it, once per task.
    var openSlots: [BatchID: Set<TaskID>] = [:]
    var sources: [SourceKey: Source] = [:]
    var queues: [String: AgentQueue] = [:]
    var running = 0
    var pendingCount = 0
    var retryWaitCount = 0
    var stopping = false
    /// Batches committed (an enqueue, a RetryFailed) and about to be admitted.
    var admitting: Set<BatchID> = []
    /// Workers may declare agents the configuration does not know: tasks of an unknown agent wait for one.
    var agentsMayAppear = false
    /// Set while recovery admits what the store holds: a child batch may come before its waiting parent's slot.
    var recovering = false
    /// Other daemons share the store (it claims what it lists): tasks of a batch held here may run
    /// elsewhere, and requests per minute come from a bucket they share.
    var sharedStore = false {
        didSet { for name in agents.keys { agents[name]!.shareRateLimits(sharedStore) } }
    }
    /// Cancels of batches in `admitting`: admitting them closes them at once.
    var cancelsAwaitingAdmission: [BatchID: [@Sendable () -> Void]] = [:]
    /// False while the store refuses commits: nothing new starts, so results do not pile up in memory.
    var storeHealthy = true
    /// Running tasks whose coalesced turn event is still to be sent.
    var pendingTurnEvents: Set<TaskID> = []
    /// Numbers sources, so a window read answered after its source was replaced is recognised.
    private var sourceGenerations = 0
    /// The unfinished child batches of each task that spawned some.
    var childBatches: [TaskID: Set<BatchID>] = [:]
    /// Waiting tasks whose children all ended, per agent, in the order they did: they take the agent's next slots.
    var resumable: [String: Deque<TaskID>] = [:]
    /// When each waiting task's wait ends (`children_timeout_ms`) and its remaining children are cancelled.
    var waitDeadlines: [TaskID: Milliseconds] = [:]

    init(configuration: SchedulerConfiguration, now: Milliseconds) {
        self.configuration = configuration
        var agents: [String: AgentRuntime] = [:]
        for agent in configuration.agents where agents[agent.name] == nil {
            agents[agent.name] = AgentRuntime(agent, now: now)
        }
        self.agents = agents
        agentOrder = configuration.agents.map(\.name).reduce(into: []) { if !$0.contains($1) { $0.append($1) } }
    }

    /// Adds an agent that is not configured (a worker declared it), or changes the slots its workers offer.
    mutating func setCapacity(_ configuration: AgentConfiguration, slots: Int, now: Milliseconds, effects: inout Effects) {
        if agents[configuration.name] == nil {
            agents[configuration.name] = AgentRuntime(configuration, now: now)
            agents[configuration.name]!.shareRateLimits(sharedStore)
            agentOrder.append(configuration.name)
        }
        agents.modifyValue(forKey: configuration.name) { $0.capacity = slots }
        dispatch(now: now, effects: &effects)
    }

    // MARK: Admission

    /// Takes over an active batch whose pending tasks, for `agents`, are in the store.
    /// `seeds`: every pending task of the batch, per agent, in window order, when the caller
    /// has them (a small batch just inserted); they take the place of the first window reads.
    mutating func admit(_ batch: BatchRecord, agents taskAgents: [String], seeds: [String: [RunnableTask]]? = nil,
                        now: Milliseconds, effects: inout Effects) {
        admitBatch(batch, agents: taskAgents, now: now, effects: &effects)
        guard let seeds else { return }
        let orders = effects.refills
        effects.refills = []
        for order in orders {
            if order.key.batchID == batch.id, order.cursor == nil, let tasks = seeds[order.key.agent], tasks.count < order.limit {
                refilled(order.key, generation: order.generation, tasks: tasks, requested: order.limit, now: now, effects: &effects)
            } else {
                effects.refills.append(order)
            }
        }
    }

    /// `adopted`: a batch of a shared store enqueued through another daemon; its parent task, if
    /// any, runs wherever that daemon put it, not necessarily here.
    mutating func admitBatch(_ batch: BatchRecord, agents taskAgents: [String], adopted: Bool = false, now: Milliseconds,
                             effects: inout Effects) {
        var active = ActiveBatch(record: batch)
        for agent in Set(taskAgents) {
            let key = SourceKey(batchID: batch.id, agent: agent)
            sources[key] = makeSource(key, ownerID: batch.ownerID)
            active.agents.insert(agent)
            requestRefill(key, effects: &effects)
        }
        pendingCount += batch.counters.pending
        batches[batch.id] = active
        admitting.remove(batch.id)
        if let parent = batch.parentTaskID { childBatches[parent, default: []].insert(batch.id) }
        if let waiters = cancelsAwaitingAdmission.removeValue(forKey: batch.id) {
            batches.modifyValue(forKey: batch.id) { $0.finishWaiters.append(contentsOf: waiters) }
            closeBatch(batch.id, as: .cancelled, now: now, effects: &effects)
            return
        }
        if let closing = batch.closing {
            // It was being cancelled (or expired) when the daemon stopped: finish that first.
            closeBatch(batch.id, as: closing, now: now, effects: &effects)
            return
        }
        if !recovering, !adopted, let parent = batch.parentTaskID, !isSpawning(parent, attempt: batch.parentAttempt) {
            // The attempt that spawned these children ended (or is being cancelled) before they were admitted: they go too.
            closeBatch(batch.id, as: .cancelled, now: now, effects: &effects)
            return
        }
        // A recovered batch may have nothing left to run (the crash came after its last task).
        finishIfDone(batch.id, now: now, effects: &effects)
    }

    mutating func makeSource(_ key: SourceKey, ownerID: String) -> Source {
        sourceGenerations += 1
        return Source(key: key, ownerID: ownerID, generation: sourceGenerations)
    }

    /// A window read from the store arrived. Returns false when it came too late and was
    /// dropped (a store that claims what it reads must then release it).
    @discardableResult
    mutating func refilled(_ key: SourceKey, generation: Int, tasks: [RunnableTask], requested limit: Int, now: Milliseconds,
                           effects: inout Effects) -> Bool {
        // A read of a source dropped since (its batch finished, then RetryFailed admitted it again) is stale.
        guard var source = sources[key], source.generation == generation, let batch = batches[key.batchID] else { return false }
        source.refilling = false
        // On a shared store a claim may return a task the window holds already: another daemon gave
        // the claim back while this one's lease had lapsed. It must not run twice.
        let windowed = sharedStore ? Set(source.window.map(\.id)) : []
        for task in tasks where slots[task.id] == nil && !batch.cancelledInStore.contains(task.id) && !windowed.contains(task.id) {
            source.window.append(task)
        }
        if let last = tasks.last { source.cursor = last.cursor }
        if tasks.count < limit { source.exhausted = true }
        sources[key] = source
        if let closing = batch.closing {
            drain(key, as: closing, now: now, effects: &effects)
            return true
        }
        if agents[key.agent] == nil && !agentsMayAppear {
            // Tasks of an agent this daemon no longer runs (a retried batch, a changed
            // configuration) fail rather than wait forever.
            drain(key, as: .failed, failure: TaskFailure(message: "agent \"\(key.agent)\" is not configured on this daemon",
                                                        code: "no_runner"), now: now, effects: &effects)
            return true
        }
        // With workers, an agent no runner serves now may be declared by a worker that connects
        // later: its tasks wait, listed but not dispatched, until then (or the batch's deadline).
        // A page whose tasks were all filtered out (cancelled meanwhile) leaves the
        // window empty: read on, or the source would wait for a refill nobody asks for.
        if sources[key]!.window.count < max(1, windowSize / 4) { requestRefill(key, effects: &effects) }
        relist(key)
        dispatch(now: now, effects: &effects)
        return true
    }

    /// A window read failed: let the next dispatch ask again.
    mutating func refillFailed(_ key: SourceKey, generation: Int, effects: inout Effects) {
        guard sources[key]?.generation == generation else { return }
        sources.modifyValue(forKey: key) { $0.refilling = false }
        requestRefill(key, effects: &effects)
    }

    mutating func requestRefill(_ key: SourceKey, effects: inout Effects) {
        guard var source = sources[key], !source.refilling, !source.exhausted else { return }
        source.refilling = true
        sources[key] = source
        // A closing batch's tasks are only read (claimed) to be closed: bigger pages, fewer round trips.
        let limit = batches[key.batchID]?.closing == nil ? max(1, windowSize) : max(1, configuration.windowSize) * 8
        effects.refills.append(RefillOrder(key: key, generation: source.generation, cursor: source.cursor, limit: limit))
    }

    /// Puts a source in the lane of its head's priority, or takes it out when
    /// its window is empty; drops it when nothing is left to read.
    private mutating func relist(_ key: SourceKey) {
        guard var source = sources[key] else { return }
        let wanted = source.window.first?.priority
        if source.listedAt != wanted {
            if let listed = source.listedAt { queues.modifyValue(forKey: key.agent) { $0.remove(key, owner: source.ownerID, priority: listed) } }
            if let wanted { queues[key.agent, default: AgentQueue()].add(key, owner: source.ownerID, priority: wanted) }
            source.listedAt = wanted
        }
        if source.window.isEmpty && source.exhausted && !source.refilling {
            sources[key] = nil
            batches.modifyValue(forKey: key.batchID) { $0.agents.remove(key.agent) }
        } else {
            sources[key] = source
        }
    }

    /// Pending tasks read at a time per batch and agent. On a shared store a read claims them for
    /// this daemon, so it takes about what it can start soon (twice its concurrency), leaving the
    /// rest to the others: a small batch spreads, and a daemon that dies strands little.
    var windowSize: Int {
        guard sharedStore else { return configuration.windowSize }
        return min(configuration.windowSize, max(16, configuration.globalConcurrency * 2))
    }

    // MARK: Dispatch

    mutating func dispatch(now: Milliseconds, effects: inout Effects) {
        guard !stopping, storeHealthy else { return }
        while running < configuration.globalConcurrency, let agent = nextAgent(now: now, effects: &effects) {
            if let waiting = resumable.modifyValue(forKey: agent, { $0.popFirst() }) ?? nil {
                if resumable[agent]?.isEmpty == true { resumable[agent] = nil }
                resume(waiting, now: now, effects: &effects)
                continue
            }
            // Popped in place: a copy of the source would copy its whole window for every task.
            guard let key = queues.modifyValue(forKey: agent, { $0.next() }) ?? nil,
                  var task = sources.modifyValue(forKey: key, { $0.window.popFirst() }) ?? nil else {
                // A listed source always has a window; repair rather than spin. The agent's other
                // sources are listed again: dropped with the lane, their windows would never run,
                // and on a shared store their claims would be renewed for ever.
                queues[agent] = nil
                for other in sources.keys where other.agent == agent {
                    sources.modifyValue(forKey: other) { $0.listedAt = nil }
                    relist(other)
                }
                continue
            }
            // Below a quarter, and at least when empty: a window under 4 would otherwise never be refilled.
            if sources[key]!.window.count < max(1, windowSize / 4) { requestRefill(key, effects: &effects) }
            relist(key)
            start(&task, now: now, effects: &effects)
        }
    }

    /// The agent to start a task for: among agents with ready work and room
    /// under their limits, the one whose best work has the highest priority,
    /// taking turns on ties. Notes when a limited agent will be ready.
    private mutating func nextAgent(now: Milliseconds, effects: inout Effects) -> String? {
        var best: (agent: String, priority: Int32)?
        for offset in agentOrder.indices {
            let agent = agentOrder[(agentRotation + offset) % agentOrder.count]
            // A resumed parent goes first: it holds its children's work, and its batch cannot end without it.
            let resuming = resumable[agent]?.isEmpty == false
            guard let priority = resuming ? Int32.max : queues[agent]?.topPriority,
                  let (ready, retryAt) = agents.modifyValue(forKey: agent, { runtime in
                      if let want = runtime.sharedRequestsWanted(now: now) {
                          // Until the answer comes (it dispatches), nothing to wake for.
                          runtime.sharedRequests?.asking = true
                          runtime.sharedRequests?.retryAt = nil
                          effects.requestGrants.append(RequestGrantOrder(agent: agent, perMinute: runtime.configuration.requestsPerMinute,
                                                                         want: want))
                      }
                      if runtime.sharedTokensCheckWanted(now: now) {
                          runtime.sharedTokens?.checking = true
                          runtime.sharedTokens?.retryAt = nil
                          effects.tokenCharges.append(TokenChargeOrder(agent: agent, perMinute: runtime.configuration.tokensPerMinute,
                                                                       tokens: 0))
                      }
                      return runtime.readiness(now: now)
                  }) else { continue }
            if let retryAt, retryAt < .max { effects.wakeAt = min(effects.wakeAt ?? retryAt, retryAt) }
            guard ready else { continue }
            if best == nil || priority > best!.priority { best = (agent, priority) }
        }
        if best != nil { agentRotation = (agentRotation + 1) % max(1, agentOrder.count) }
        return best?.agent
    }

    private mutating func start(_ task: inout RunnableTask, now: Milliseconds, effects: inout Effects) {
        // Changed where they lie: a copy of the batch or the agent, written back, costs more than the rest of a start.
        guard let (snapshot, creatorUID) = batches.modifyValue(forKey: task.batchID, { batch in
            batch.record.counters.move(from: .pending, to: .running)
            if batch.record.state == .pending {
                batch.record.state = .processing
                batch.record.startedAt = now
            }
            return (batch.snapshot, batch.record.creatorUID)
        }) else { return }
        task.attempt += 1
        let agentTimeout = agents.modifyValue(forKey: task.agent) { (agent: inout AgentRuntime) -> Int64 in
            agent.running += 1
            agent.requests?.consume(1, now: now)
            agent.sharedRequests?.permits -= 1
            return agent.configuration.timeoutMs
        } ?? 0
        running += 1
        pendingCount -= 1
        var stored = task
        stored.payload = nil
        slots[task.id] = TaskSlot(task: stored, state: .running)
        openSlots[task.batchID, default: []].insert(task.id)
        effects.changes.tasks.append(.started(task.id, attempt: task.attempt, at: now))
        effects.changes.batches[task.batchID] = snapshot
        effects.changes.events.append(taskEvent(.taskStarted, task, now: now))
        effects.starts.append(StartOrder(task: task, attempt: task.attempt,
                                         timeoutMs: task.timeoutMs > 0 ? task.timeoutMs : agentTimeout,
                                         maxTurns: task.maxTurns, creatorUID: creatorUID))
    }

    // MARK: Running tasks

    /// Records what runs an attempt. Returns false when it must
    /// be cancelled at once (cancel requested, or the scheduler is stopping).
    mutating func attach(_ handle: AttemptHandle, to id: TaskID, attempt: Int, run: Int) -> Bool {
        guard var slot = slots[id], slot.state == .running, slot.task.attempt == attempt, slot.run == run else { return false }
        slot.handle = handle
        slots[id] = slot
        return slot.interruptAs == nil && !stopping
    }

    /// A runner reported a turn. With `max_turns`, at most that many count,
    /// each with its event (progress moves every turn); further ones are
    /// ignored. Without it, the count goes on and its events are coalesced like
    /// progress events, so a runner reporting a billion turns costs O(1).
    mutating func turn(_ id: TaskID, attempt: Int, run: Int = 0, now: Milliseconds, effects: inout Effects) {
        guard var slot = slots[id], slot.state == .running, slot.task.attempt == attempt, slot.run == run,
              var batch = batches[slot.task.batchID] else { return }
        let budget = slot.task.maxTurns
        if budget > 0 && slot.task.turnsCompleted >= budget { return }
        let before = slot.task.turnsCompleted
        slot.task.turnsCompleted += 1
        if budget == 0, let last = slot.lastTurnEventAt, now - last < configuration.progressIntervalMs {
            slot.turnEventPending = true
            pendingTurnEvents.insert(id)
        } else {
            emitTurn(&slot, now: now, effects: &effects)
        }
        slots[id] = slot
        // Every counted turn moves progress (the batch may count turns its task's agent does not cap).
        let moved = batch.record.progress.recordTurn(turnsBefore: before)
        batches[batch.record.id] = batch
        if moved {
            effects.changes.batches[batch.record.id] = batch.snapshot
            noteProgress(batch.record.id, now: now, effects: &effects)
        }
    }

    private mutating func emitTurn(_ slot: inout TaskSlot, now: Milliseconds, effects: inout Effects) {
        slot.lastTurnEventAt = now
        slot.turnEventPending = false
        pendingTurnEvents.remove(slot.task.id)
        var event = taskEvent(.taskTurn, slot.task, now: now)
        event.turn = slot.task.turnsCompleted
        effects.changes.tasks.append(.turns(slot.task.id, turnsCompleted: slot.task.turnsCompleted))
        effects.changes.events.append(event)
    }

    /// `jitter` (0…1, the backoff's random share) is evaluated only when the task waits to retry:
    /// a random number from the system costs a system call, which most finished tasks need not pay.
    mutating func finish(_ id: TaskID, attempt: Int, run: Int = 0, outcome: AttemptOutcome, jitter: @autoclosure () -> Double,
                         now: Milliseconds, effects: inout Effects) {
        guard slots[id]?.run == run else { return }
        if slots[id]?.state == .waitingChildren, slots[id]?.task.attempt == attempt {

            // The runner stopped while its task waits (shutdown, its timeout): the wait stands, and
            // the task runs again from the start with its children's results when they end.
            slots.modifyValue(forKey: id) { $0.handle = nil }
            return
        }
        guard var slot = slots[id], slot.state == .running, slot.task.attempt == attempt else { return }
        let agent = slot.task.agent
        running -= 1
        agents.modifyValue(forKey: agent) { $0.running -= 1 }
        slot.handle = nil

        switch outcome {
        case .succeeded(let output):
            if let tokens = output.details.usage?.totalTokens, tokens > 0 {
                agents.modifyValue(forKey: agent) { $0.tokens?.consume(Double(tokens), now: now) }
                if let runtime = agents[agent], runtime.sharedTokens != nil {
                    effects.tokenCharges.append(TokenChargeOrder(agent: agent, perMinute: runtime.configuration.tokensPerMinute, tokens: tokens))
                }
            }
            close(&slot, as: .completed, result: output.result, failure: nil, details: output.details, now: now, effects: &effects)
        case .interrupted:
            if let state = slot.interruptAs {
                close(&slot, as: state, result: nil, failure: nil, now: now, effects: &effects)
            } else if !stopping {
                // Nobody asked it to stop: the runner gave up by itself (a stray CancellationError).
                close(&slot, as: .failed, result: nil, failure: TaskFailure(
                    message: "the runner stopped the attempt without being asked to (it threw a cancellation)",
                    code: "runner_error", retryable: false), now: now, effects: &effects)
            } else {
                // Graceful shutdown: the task runs again when the daemon comes back, and the
                // attempt it was on is given back (a crash instead counts it, see recovery).
                requeue(&slot, failure: nil, releasing: true, now: now, effects: &effects)
            }
        case .failed(let failure):
            if let retryAfter = failure.retryAfterMs, retryAfter > 0 {
                // The provider asked the whole agent to slow down, not just this task.
                let pausedUntil = max(agents[agent]?.pausedUntil ?? 0, now + retryAfter)
                agents.modifyValue(forKey: agent) { $0.pausedUntil = pausedUntil }
                effects.wakeAt = min(effects.wakeAt ?? now + retryAfter, now + retryAfter)
            }
            if let state = slot.interruptAs {
                close(&slot, as: state, result: nil, failure: failure.failure, now: now, effects: &effects)
            } else if failure.failure.retryable, slot.task.attempt < slot.task.maxAttempts, stopping {
                // No backoff timer can fire during shutdown: it waits as pending, and runs after a restart.
                requeue(&slot, failure: failure.failure, now: now, effects: &effects)
            } else if failure.failure.retryable, slot.task.attempt < slot.task.maxAttempts {
                let delay = configuration.backoff.delay(beforeAttempt: slot.task.attempt + 1, jitter: jitter(),
                                                        retryAfterMs: failure.retryAfterMs)
                waitToRetry(&slot, failure: failure.failure, delayMs: delay, now: now, effects: &effects)
            } else {
                close(&slot, as: .failed, result: failure.response, failure: failure.failure, details: failure.details,
                      now: now, effects: &effects)
            }
        }
        dispatch(now: now, effects: &effects)
    }

    private mutating func waitToRetry(_ slot: inout TaskSlot, failure: TaskFailure, delayMs: Int64, now: Milliseconds, effects: inout Effects) {
        guard var batch = batches[slot.task.batchID] else { return }
        // The next attempt starts afresh: the children of this one are not its own.
        cancelChildren(of: slot.task.id, now: now, effects: &effects)
        slot.spawnedChildren = 0
        batch.record.counters.move(from: .running, to: .retryWait)
        batches[batch.record.id] = batch
        retryWaitCount += 1
        slot.state = .retryWait
        effects.afterCommit.append(contentsOf: slot.stopWaiters)
        slot.stopWaiters = []
        slots[slot.task.id] = slot
        effects.changes.tasks.append(.requeued(slot.task.id, state: .retryWait, failure: failure))
        effects.changes.batches[batch.record.id] = batch.snapshot
        var event = taskEvent(.taskRetrying, slot.task, now: now)
        event.retryDelayMs = delayMs
        event.failure = failure
        effects.changes.events.append(event)
        effects.retries.append((slot.task.id, slot.task.attempt, delayMs))
    }

    /// A task in retry_wait whose backoff has passed becomes ready again.
    mutating func retryDue(_ id: TaskID, attempt: Int, now: Milliseconds, effects: inout Effects) {
        guard var slot = slots[id], slot.state == .retryWait, slot.task.attempt == attempt else { return }
        requeue(&slot, failure: nil, now: now, effects: &effects)
        dispatch(now: now, effects: &effects)
    }

    /// Back to pending, at the front of its source's window.
    private mutating func requeue(_ slot: inout TaskSlot, failure: TaskFailure?, releasing: Bool = false, now: Milliseconds,
                                  effects: inout Effects) {
        guard var batch = batches[slot.task.batchID] else { return }
        if slot.turnEventPending {
            // No clock here: the count is kept with the task; its event is simply not sent.
            effects.changes.tasks.append(.turns(slot.task.id, turnsCompleted: slot.task.turnsCompleted))
            pendingTurnEvents.remove(slot.task.id)
        }
        batch.record.counters.move(from: slot.state, to: .pending)
        if slot.state == .retryWait { retryWaitCount -= 1 }
        pendingCount += 1
        openSlots.modifyValue(forKey: batch.record.id) { $0.remove(slot.task.id) }
        batches[batch.record.id] = batch
        slots[slot.task.id] = nil
        effects.afterCommit.append(contentsOf: slot.stopWaiters)
        if releasing {
            slot.task.attempt -= 1
            effects.changes.tasks.append(.released(slot.task.id))
        } else {
            effects.changes.tasks.append(.requeued(slot.task.id, state: .pending, failure: failure))
            cancelChildren(of: slot.task.id, now: now, effects: &effects)
        }
        effects.changes.batches[batch.record.id] = batch.snapshot

        let key = SourceKey(batchID: slot.task.batchID, agent: slot.task.agent)
        if sources[key] == nil {
            // Its source was used up and dropped; a retried task brings it back. Everything pending was
            // read already: the cursor stands past every task, so `cancelTask` never takes a stale
            // `pending` row of a task that already ran for one still waiting in the store.
            var source = makeSource(key, ownerID: slot.task.ownerID)
            source.exhausted = true
            source.cursor = QueueCursor(priority: .min, id: .max)
            sources[key] = source
            batches.modifyValue(forKey: batch.record.id) { $0.agents.insert(key.agent) }
        }
        sources.modifyValue(forKey: key) { $0.window.prepend(slot.task) }
        relist(key)
    }

    /// Moves a running or retry-waiting task to a terminal state and settles its batch.
    mutating func close(_ slot: inout TaskSlot, as state: TaskState, result: [UInt8]?, failure: TaskFailure?,
                                details: ResponseDetails = ResponseDetails(), now: Milliseconds, effects: inout Effects) {
        let batchID = slot.task.batchID
        guard batches.index(forKey: batchID) != nil else { return }
        // The last count of coalesced turns goes out before the task's terminal event.
        if slot.turnEventPending { emitTurn(&slot, now: now, effects: &effects) }
        if slot.state == .retryWait { retryWaitCount -= 1 }
        if let resumer = slot.resumer { effects.abandonedWaits.append(resumer) }
        waitDeadlines[slot.task.id] = nil
        let from = slot.state, turns = slot.task.turnsCompleted
        effects.changes.batches[batchID] = batches.modifyValue(forKey: batchID) { batch in
            batch.record.counters.move(from: from, to: state)
            batch.record.progress.recordTerminal(turnsCompleted: turns)
            if let usage = details.usage { batch.record.usage = batch.record.usage + usage }
            return batch.snapshot
        }
        openSlots.modifyValue(forKey: batchID) { $0.remove(slot.task.id) }
        slots[slot.task.id] = nil
        effects.afterCommit.append(contentsOf: slot.stopWaiters)
        effects.changes.tasks.append(.finished(slot.task.id, state: state, result: result, failure: failure,
                                               turnsCompleted: slot.task.turnsCompleted, at: now, details: details))
        var event = taskEvent(Self.eventKind(for: state), slot.task, now: now)
        event.failure = failure
        effects.changes.events.append(event)
        if !finishIfDone(batchID, now: now, effects: &effects) {
            noteProgress(batchID, now: now, effects: &effects)
        }
        // A task that ended leaves no children behind.
        cancelChildren(of: slot.task.id, now: now, effects: &effects)
    }

    static func eventKind(for state: TaskState) -> EventKind {
        switch state {
        case .completed: .taskCompleted
        case .cancelled: .taskCancelled
        case .expired: .taskExpired
        default: .taskFailed
        }
    }

    /// At the end of shutdown: tasks whose runners did not stop go back to
    /// pending, attempts given back, and their late results find no slot.
    /// Returns how many.
    mutating func releaseRunning(now: Milliseconds, effects: inout Effects) -> Int {
        let stuck = slots.values.filter { $0.state == .running }.map(\.task.id)
        for id in stuck {
            guard var slot = slots[id] else { continue }
            running -= 1
            agents.modifyValue(forKey: slot.task.agent) { $0.running -= 1 }
            if let state = slot.interruptAs {
                // A cancel (or a deadline) was asked for: it stands, the runner's silence notwithstanding.
                close(&slot, as: state, result: nil, failure: nil, now: now, effects: &effects)
            } else {
                requeue(&slot, failure: nil, releasing: true, now: now, effects: &effects)
            }
        }
        return stuck.count
    }

    // MARK: Cancellation and deadlines

    /// Cancels one task of an active batch; `task` is its stored row. Returns
    /// false if there is nothing to do here. `onStopped` runs once it stopped.
    /// On a shared store, a pending task outside every window is one nobody claimed (a claimed one
    /// is another daemon's, asked through the store): the cursor says nothing about it.
    @discardableResult
    mutating func cancelTask(_ task: TaskRecord, now: Milliseconds, onStopped: (@Sendable () -> Void)? = nil,
                             effects: inout Effects) -> Bool {
        guard var batch = batches[task.batchID] else { return false }
        if var slot = slots[task.id] {
            switch slot.state {
            case .retryWait, .waitingChildren:
                // A waiting task holds no slot: it ends now, and its runner (if one waits) is stopped.
                if let handle = slot.handle { effects.cancellations.append(handle) }
                close(&slot, as: .cancelled, result: nil, failure: nil, now: now, effects: &effects)
                if let onStopped { effects.afterCommit.append(onStopped) }
            default:
                slot.interruptAs = .cancelled
                if let handle = slot.handle { effects.cancellations.append(handle) }
                if let onStopped { slot.stopWaiters.append(onStopped) }
                slots[task.id] = slot
                cancelChildren(of: task.id, now: now, effects: &effects)
            }
            return true
        }
        guard !task.state.isTerminal, !batch.cancelledInStore.contains(task.id) else { return false }
        // Pending: in a window (whatever its row still says: a retried task's row may
        // lag behind), or not yet read from the store (a pending row after the source's
        // cursor). Anything else was read and has already run.
        let key = SourceKey(batchID: task.batchID, agent: task.agent)
        guard var source = sources[key] else { return false }
        var runnable = RunnableTask(id: task.id, batchID: task.batchID, ownerID: task.ownerID, customID: task.customID,
                                    agent: task.agent, priority: task.priority, attempt: task.attempt,
                                    maxAttempts: task.maxAttempts, timeoutMs: task.timeoutMs,
                                    turnsCompleted: task.turnsCompleted, maxTurns: task.maxTurns,
                                    parentTaskID: task.parentTaskID)
        if let index = source.window.firstIndex(where: { $0.id == task.id }) {
            runnable = source.window.remove(at: index)
            sources[key] = source
            relist(key)
        } else if task.state == .pending, sharedStore || source.cursor.map({ runnable.isAfter($0) }) ?? true {
            batch.cancelledInStore.insert(task.id)
        } else {
            return false
        }
        pendingCount -= 1
        batch.record.counters.move(from: .pending, to: .cancelled)
        batch.record.progress.recordTerminal(turnsCompleted: runnable.turnsCompleted)
        batches[batch.record.id] = batch
        effects.changes.tasks.append(.finished(task.id, state: .cancelled, result: nil, failure: nil,
                                               turnsCompleted: runnable.turnsCompleted, at: now))
        effects.changes.batches[batch.record.id] = batch.snapshot
        effects.changes.events.append(taskEvent(.taskCancelled, runnable, now: now))
        if !finishIfDone(batch.record.id, now: now, effects: &effects) {
            noteProgress(batch.record.id, now: now, effects: &effects)
        }
        if let onStopped { effects.afterCommit.append(onStopped) }
        return true
    }

    /// Cancels every unfinished task of a batch; `batch_cancelled` follows when
    /// the running ones have stopped. Returns false if the batch is not active.
    mutating func cancelBatch(_ id: BatchID, now: Milliseconds, onFinished: @escaping @Sendable () -> Void, effects: inout Effects) -> Bool {
        guard batches[id] != nil else { return false }
        batches.modifyValue(forKey: id) { $0.finishWaiters.append(onFinished) }
        closeBatch(id, as: .cancelled, now: now, effects: &effects)
        return true
    }

    /// Cancels an active batch now, or one committed and about to be admitted
    /// as soon as it is. Returns false if the batch is neither (finished, or unknown).
    mutating func cancelActiveOrAdmitting(_ id: BatchID, now: Milliseconds, onFinished: @escaping @Sendable () -> Void,
                                          effects: inout Effects) -> Bool {
        if cancelBatch(id, now: now, onFinished: onFinished, effects: &effects) { return true }
        guard admitting.contains(id) else { return false }
        cancelsAwaitingAdmission[id, default: []].append(onFinished)
        return true
    }

    /// Expires the unfinished tasks of batches whose deadline has passed.
    mutating func expireOverdue(now: Milliseconds, effects: inout Effects) {
        let overdue = batches.values.filter { batch in
            batch.closing == nil && (batch.record.deadlineAt.map { $0 <= now } ?? false)
        }.map(\.record.id)
        for id in overdue { closeBatch(id, as: .expired, now: now, effects: &effects) }
        for (id, deadline) in waitDeadlines where deadline <= now {
            // The wait is over: the children still running are cancelled, and the parent resumes with what finished.
            waitDeadlines[id] = nil
            cancelChildren(of: id, now: now, effects: &effects)
        }
    }


    /// Ends a batch early: every task not yet running becomes `state` (each
    /// with its event, read from the store page by page), running ones are
    /// interrupted and become `state` when they stop.
    mutating func closeBatch(_ id: BatchID, as state: TaskState, now: Milliseconds, effects: inout Effects) {
        guard var batch = batches[id], batch.closing == nil else { return }
        batch.closing = state
        batches[id] = batch
        // Recorded with the first changes, so a restart mid-way goes on closing it.
        effects.changes.batches[id] = batch.snapshot
        for slotID in (openSlots[id] ?? []).sorted() {
            guard var slot = slots[slotID] else { continue }
            if slot.state == .retryWait || slot.state == .waitingChildren {
                if let handle = slot.handle { effects.cancellations.append(handle) }
                close(&slot, as: state, result: nil, failure: nil, now: now, effects: &effects)
            } else {
                slot.interruptAs = state
                if let handle = slot.handle { effects.cancellations.append(handle) }
                slots[slotID] = slot
                cancelChildren(of: slotID, now: now, effects: &effects)
            }
        }
        for agent in batch.agents.sorted() {
            drain(SourceKey(batchID: id, agent: agent), as: state, now: now, effects: &effects)
        }
        finishIfDone(id, now: now, effects: &effects)
    }

    /// Closes what a closing batch's source holds in its window, and asks for
    /// the next page until the store has no pending task left for it.
    private mutating func drain(_ key: SourceKey, as state: TaskState, failure: TaskFailure? = nil, now: Milliseconds,
                                effects: inout Effects) {
        guard var source = sources[key], var batch = batches[key.batchID] else { return }
        if let listed = source.listedAt {
            queues.modifyValue(forKey: key.agent) { $0.remove(key, owner: source.ownerID, priority: listed) }
            source.listedAt = nil
        }
        for task in source.window {
            pendingCount -= 1
            batch.record.counters.move(from: .pending, to: state)
            batch.record.progress.recordTerminal(turnsCompleted: task.turnsCompleted)
            effects.changes.tasks.append(.finished(task.id, state: state, result: nil, failure: failure,
                                                   turnsCompleted: task.turnsCompleted, at: now))
            var event = taskEvent(Self.eventKind(for: state), task, now: now)
            event.failure = failure
            effects.changes.events.append(event)
        }
        if !source.window.isEmpty { effects.changes.batches[batch.record.id] = batch.snapshot }
        source.window = []
        batches[key.batchID] = batch
        if source.exhausted && !source.refilling {
            sources[key] = nil
            batches.modifyValue(forKey: key.batchID) { $0.agents.remove(key.agent) }
            finishIfDone(key.batchID, now: now, effects: &effects)
        } else {
            sources[key] = source
            requestRefill(key, effects: &effects)
        }
    }

    // MARK: Batches and progress

    /// Finishes the batch if every task is terminal. Returns whether it did.
    @discardableResult
    private mutating func finishIfDone(_ id: BatchID, now: Milliseconds, effects: inout Effects) -> Bool {
        // Looked at in place first: most tasks that end do not end their batch.
        guard batches.modifyValue(forKey: id, { $0.record.counters.isFinished }) == true, var batch = batches[id] else { return false }
        let (state, kind): (BatchState, EventKind) = switch batch.closing {
        case .cancelled?: (.cancelled, .batchCancelled)
        case .expired?: (.failed, .batchFailed)
        default: (.completed, .batchCompleted)
        }
        batch.record.state = state
        batch.record.finishedAt = now
        if batch.record.startedAt == nil { batch.record.startedAt = now }
        forget(batch)
        childFinished(batch.record, now: now, effects: &effects)
        effects.changes.batches[id] = batch.snapshot
        // Always one progress event at 100 %, then exactly one terminal event.
        effects.changes.events.append(batchEvent(.batchProgress, batch.record, now: now))
        effects.changes.events.append(batchEvent(kind, batch.record, now: now))
        effects.afterCommit.append(contentsOf: batch.finishWaiters)
        return true
    }

    /// Batches a shared store ended: the commit of whichever daemon ran their last task did,
    /// and wrote their terminal events. A batch this daemon still holds (it ran some of its
    /// tasks, not the last) goes here too, without events of its own.
    mutating func batchesEndedInStore(_ records: [BatchRecord], now: Milliseconds, effects: inout Effects) {
        for record in records {
            guard let batch = batches[record.id] else { continue }
            pendingCount -= batch.record.counters.pending
            forget(batch)
            childFinished(record, now: now, effects: &effects)
            effects.afterCommit.append(contentsOf: batch.finishWaiters)
        }
    }

    /// Drops an ended batch and its sources.
    private mutating func forget(_ batch: ActiveBatch) {
        let id = batch.record.id
        for agent in batch.agents {
            let key = SourceKey(batchID: id, agent: agent)
            if let source = sources[key], let listed = source.listedAt {
                queues.modifyValue(forKey: agent) { $0.remove(key, owner: source.ownerID, priority: listed) }
            }
            sources[key] = nil
        }
        batches[id] = nil
        openSlots[id] = nil
    }

    private mutating func noteProgress(_ id: BatchID, now: Milliseconds, effects: inout Effects) {
        let interval = configuration.progressIntervalMs
        let due = batches.modifyValue(forKey: id) { batch -> BatchRecord? in
            if batch.record.progress.units >= batch.record.progress.maxUnits {
                // 100 % before the last task ended (its last turn came first): the one event at 100 %
                // goes out with the batch's terminal event (`finishIfDone`), not twice.
                batch.progressDirty = false
                return nil
            }
            guard now - batch.lastProgressAt >= interval else {
                batch.progressDirty = true
                return nil
            }
            batch.lastProgressAt = now
            batch.progressDirty = false
            return batch.record
        }
        if let record = due ?? nil { effects.changes.events.append(batchEvent(.batchProgress, record, now: now)) }
    }

    /// Emits the coalesced progress and turn events that are due.
    mutating func flushProgress(now: Milliseconds, effects: inout Effects) {
        for id in pendingTurnEvents {
            guard var slot = slots[id], slot.turnEventPending else {
                pendingTurnEvents.remove(id)
                continue
            }
            if now - (slot.lastTurnEventAt ?? now) >= configuration.progressIntervalMs {
                emitTurn(&slot, now: now, effects: &effects)
                slots[id] = slot
            }
        }
        for (id, batch) in batches where batch.progressDirty && now - batch.lastProgressAt >= configuration.progressIntervalMs {
            noteProgress(id, now: now, effects: &effects)
        }
    }

    func taskEvent(_ kind: EventKind, _ task: RunnableTask, now: Milliseconds) -> EventRecord {
        EventRecord(kind: kind, timestamp: now, ownerID: task.ownerID, batchID: task.batchID, taskID: task.id,
                    customID: task.customID, parentTaskID: task.parentTaskID, attempt: task.attempt,
                    creatorUID: batches[task.batchID]?.record.creatorUID)
    }

    func batchEvent(_ kind: EventKind, _ batch: BatchRecord, now: Milliseconds) -> EventRecord {
        EventRecord(kind: kind, timestamp: now, ownerID: batch.ownerID, batchID: batch.id, parentTaskID: batch.parentTaskID,
                    progress: batch.progress.percent, counters: batch.counters, creatorUID: batch.creatorUID)
    }
}

extension RunnableTask {
    /// Whether the task comes after `cursor` in (priority desc, id) order.
    func isAfter(_ cursor: QueueCursor) -> Bool {
        priority < cursor.priority || (priority == cursor.priority && id > cursor.id)
    }
}
