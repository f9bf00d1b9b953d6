import FanoutCore
import FanoutStore
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// Runs the tasks Fanout accepted: admits batches, picks ready tasks within
/// the limits, runs them on their agents' runners, retries, cancels, and
/// records every change through group commit.
///
/// Decisions are made by `SchedulerState` behind one lock that is never held
/// across I/O or an `await`; runners run as Swift tasks.
public final class Scheduler: Service, Sendable {
    public let configuration: SchedulerConfiguration
    public let limits: EnqueueLimits
    public let store: any Store
    let runners: [String: any Runner]
    /// The configured agents by name (the first of a name wins), computed once: enqueues look them up per task.
    let agentsByName: [String: AgentConfiguration]
    /// Agents that are configured and have a runner.
    let configuredAgents: Set<String>
    /// Runs worker-served agents, configured or declared by workers.
    let workerPool: WorkerPool?
    /// Agents workers declare (not in the configuration), while one of them is connected.
    private let declaredAgents = Mutex<[String: DeclaredAgent]>([:])
    let logger: Logger
    let state: Mutex<SchedulerState>
    private let hub: EventHub
    let commits: CommitQueue
    /// On a store other daemons share: publishes every daemon's events, in the store's order.
    private let sharedEvents: SharedEventFeed?
    private let background = Mutex<[Task<Void, Never>]>([])
    /// Attempts launched and not yet finished; shutdown waits for them.
    private let inFlight = InFlightCount()
    /// The earliest pending wake-up timer, so limited agents do not arm one timer per decision.
    private let nextWake = Mutex<Milliseconds?>(nil)

    /// - Parameters:
    ///   - runners: the runner for each agent, by agent name.
    ///   - workerPool: the pool whose workers run agents with runner `worker` and agents workers declare.
    public init(store: any Store, configuration: SchedulerConfiguration, runners: [String: any Runner],
                workerPool: WorkerPool? = nil,
                limits: EnqueueLimits = EnqueueLimits(), logger: Logger = Logger(label: "fanout.scheduler")) throws {
        self.store = store
        self.configuration = configuration
        self.runners = runners
        self.workerPool = workerPool
        agentsByName = Dictionary(configuration.agents.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        configuredAgents = Set(runners.keys).intersection(configuration.agents.map(\.name))
        self.limits = limits
        self.logger = logger
        var initial = SchedulerState(configuration: configuration, now: WallClock.now)
        initial.sharedStore = store.claimsPendingTasks
        state = Mutex(initial)
        hub = EventHub(lastSequence: try store.writer.lastEventSequence())
        let feed = store.claimsPendingTasks ? SharedEventFeed(store: store, hub: hub, logger: logger) : nil
        sharedEvents = feed
        var eventsWritten: (@Sendable () -> Void)?
        if let feed { eventsWritten = { feed.poke() } }
        commits = CommitQueue(store: store.writer, hub: hub, eventsWritten: eventsWritten, logger: logger,
                              retention: configuration.eventRetention,
                              maxQueuedChanges: configuration.maxChangesPerCommit, retryBackoff: configuration.storeRetry)
        commits.onBatchesEnded { [weak self] batches in
            self?.mutate { state, effects in state.batchesEndedInStore(batches, now: WallClock.now, effects: &effects) }
        }
        if let workerPool {
            // Worker-served agents run only as many tasks as connected workers have slots: none until one registers.
            state.withLock { state in
                state.agentsMayAppear = true
                for agent in configuration.agents where agent.runner == "worker" { state.agents[agent.name]?.capacity = 0 }
            }
            workerPool.attach(self)
        }
    }

    // MARK: Agents

    /// An agent a worker declared, and the uid whose tasks it runs.
    struct DeclaredAgent: Sendable {
        var configuration: AgentConfiguration
        var uid: UInt32
    }

    /// The agents a task may name now: configured ones, and those connected workers declare.
    var knownAgents: Set<String> {
        let declared = declaredAgents.withLock { $0.keys }
        return declared.isEmpty ? configuredAgents : configuredAgents.union(declared)
    }

    /// The agents connected workers declare, by name.
    public var declaredAgentConfigurations: [AgentConfiguration] {
        declaredAgents.withLock { $0.values.map(\.configuration) }.sorted { $0.name < $1.name }
    }

    /// An agent's configuration: from the configuration file, or as a worker declared it.
    func agent(named name: String) -> AgentConfiguration? {
        agentsByName[name] ?? declaredAgents.withLock { $0[name]?.configuration }
    }

    /// The slots connected workers offer for `agent` changed. `declaration` is set for
    /// an agent the configuration does not know: a worker declared it. With no slot
    /// left its tasks wait; new ones are refused once no worker declares it.
    func setWorkerCapacity(agent: String, slots: Int, declaration: WorkerPool.AgentDeclaration?) {
        var configuration = agentsByName[agent]
        if configuration == nil {
            let declared = AgentConfiguration(name: agent, runner: "worker", concurrency: Int(Int32.max),
                                              maxTurns: declaration?.maxTurns ?? 0, maxAttempts: 3)
            declaredAgents.withLock { agents in
                agents[agent] = declaration.map { DeclaredAgent(configuration: declared, uid: $0.uid) }
            }
            configuration = declared
        }
        guard let configuration else { return }
        mutate { state, effects in state.setCapacity(configuration, slots: slots, now: WallClock.now, effects: &effects) }
    }

    /// Whether tasks of `agent` submitted by a uid other than `uid` are pending, running or waiting.
    func hasUnfinishedTasks(agent: String, fromOtherThan uid: UInt32) -> Bool {
        state.withLock { state in
            state.sources.keys.contains { $0.agent == agent && state.batches[$0.batchID]?.record.creatorUID != uid }
                || state.slots.values.contains { $0.task.agent == agent && state.batches[$0.task.batchID]?.record.creatorUID != uid }
        }
    }

    /// Refuses tasks for an agent a worker declared unless they come from that worker's uid.
    func checkDeclaredAgents(_ tasks: [NewTask], creatorUID: UInt32, startingAt offset: Int) throws(FanoutError) {
        let declared = declaredAgents.withLock { $0 }
        guard !declared.isEmpty else { return }
        for (position, task) in tasks.enumerated() {
            guard let agent = declared[task.agent], agent.uid != creatorUID else { continue }
            throw .permissionDenied("task \(offset + position) (custom_id \"\(task.customID)\"): agent \"\(task.agent)\" is "
                + "declared by a worker of uid \(agent.uid) and runs only that uid's tasks")
        }
    }

    // MARK: Life cycle

    /// Recovers what the store holds and starts the commit loop and timers.
    public func start() throws {
        let recovered = try store.writer.recover(now: WallClock.now)
        if recovered.requeued > 0 || !recovered.activeBatches.isEmpty {
            logger.info("recovered work", metadata: [
                "batches": "\(recovered.activeBatches.count)",
                "pending": "\(recovered.activeBatches.reduce(0) { $0 + $1.counters.pending })",
                "requeued": "\(recovered.requeued)",
            ])
        }
        let commitLoop = Task { await commits.run() }
        if !recovered.interruptedFailures.isEmpty {
            logger.warning("tasks failed: a crash cut short their last attempt",
                           metadata: ["tasks": "\(recovered.interruptedFailures.count)"])
            var changes = ChangeSet()
            changes.events = recovered.interruptedFailures
            commits.submit(changes)
        }
        let ticker = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(max(10, self?.configuration.progressIntervalMs ?? 100)))
                guard let self else { return }
                self.mutate { state, effects in
                    let now = WallClock.now
                    state.expireOverdue(now: now, effects: &effects)
                    state.flushProgress(now: now, effects: &effects)
                }
            }
        }
        // While the store refuses commits nothing new starts; when it takes them again, work resumes.
        let health = Task { [weak self, commits] in
            for await healthy in commits.healthChanges {
                self?.mutate { state, effects in
                    state.storeHealthy = healthy
                    if healthy { state.dispatch(now: WallClock.now, effects: &effects) }
                }
            }
        }
        var background = [commitLoop, health, ticker]
        if let sharedEvents {
            background.append(Task { [sharedEvents, configuration] in
                await sharedEvents.run(pollMs: configuration.sharedStorePollMs, pageSize: configuration.sharedBatchesPerPoll)
            })
        }
        if store.claimsPendingTasks {
            background.append(Task { [weak self, configuration] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(max(10, configuration.sharedStorePollMs)))
                    await self?.followSharedStore()
                }
            })
        }
        if let interval = store.claimCheckInterval {
            background.append(Task { [weak self] in
                var check = ForgottenClaimCheck()
                while true {
                    do { try await Task.sleep(for: interval) } catch { return }
                    guard let self else { return }
                    await self.giveBackForgottenClaims(&check)
                }
            })
        }
        self.background.withLock { [background] in $0 = background }
        mutate { state, effects in
            let now = WallClock.now
            state.recovering = true
            // A shared store's tasks are claimed for the agents this daemon runs.
            let served = store.claimsPendingTasks ? state.servedAgents : nil
            for batch in recovered.activeBatches {
                state.admit(batch, agents: served ?? recovered.pendingAgents[batch.id] ?? [], now: now, effects: &effects)
            }
            state.recoverWaiting(recovered.waitingTasks, now: now, effects: &effects)
            state.dispatch(now: now, effects: &effects)
        }
    }

    /// As a service of the daemon's `ServiceGroup`: started before the group
    /// runs (recovery must finish before the server accepts anyone), it waits
    /// for graceful shutdown, which the group gives it after the server (listed
    /// after it) has stopped, and then shuts down.
    public func run() async throws {
        try? await gracefulShutdown()
        await shutdown()
    }

    /// Stops starting tasks, interrupts running ones (they run again after a
    /// restart), writes everything queued, and ends subscriptions.
    ///
    /// A runner that ignores cancellation is waited for `shutdownGraceMs` at
    /// most; its task then goes back to pending like the others, and whatever
    /// it returns later is dropped.
    public func shutdown() async {
        let handles = state.withLock { state -> [AttemptHandle] in
            state.stopping = true
            return state.slots.values.compactMap(\.handle)
        }
        for handle in handles { handle.cancel() }
        if !(await inFlight.waitUntilZero(timeout: .milliseconds(configuration.shutdownGraceMs))) {
            let abandoned = mutate { state, effects in state.releaseRunning(now: WallClock.now, effects: &effects) }
            logger.warning("runners ignored cancellation at shutdown; their tasks go back to pending and their late results are dropped",
                           metadata: ["tasks": "\(abandoned)"])
        }
        let tasks = background.withLock { $0 }
        for task in tasks.dropFirst() { task.cancel() }
        commits.close()
        await tasks.first?.value
        hub.finishAll()
    }

    // MARK: Calls

    /// Refuses new work while the store refuses commits: what is accepted must be recordable.
    func requireWritableStore() throws {
        if let failure = commits.storeFailure {
            throw FanoutError.unavailable("the store cannot be written since \(Self.describe(failure.since)) (\(failure.message)); "
                + "new work is refused until it recovers, which fanoutd notices by itself. Reads still work")
        }
    }

    private static func describe(_ milliseconds: Milliseconds) -> String {
        ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(milliseconds) / 1000))
    }

    /// The store refuses commits (nil when it is healthy).
    public var storeFailure: StoreFailure? { commits.storeFailure }

    /// Validates, stores and admits a batch; returns once it is committed.
    public func enqueue(_ request: NewBatch) async throws -> InsertedBatch {
        try await startEnqueue(request).value
    }

    /// Validates a batch now (throwing what is wrong with it) and hands its insert
    /// and admission to the commit thread, to be awaited later: a caller on a
    /// connection's read loop starts the work there, without a hop to a task first.
    public func startEnqueue(_ request: NewBatch) throws -> PendingResult<InsertedBatch> {
        try requireWritableStore()
        var batch = request
        applyAgentDefaults(&batch.tasks, batchAgent: batch.agent)
        try BatchValidation.validate(batch, limits: limits, knownAgents: knownAgents)
        try checkRunnersAccept(batch.tasks, startingAt: 0)
        try checkDeclaredAgents(batch.tasks, creatorUID: batch.creatorUID, startingAt: 0)
        batch.maxTurns = agent(named: batch.agent)?.maxTurns ?? batch.tasks.first.flatMap { agent(named: $0.agent)?.maxTurns } ?? 0
        let admitted = batch
        // Inserted and admitted on the commit thread: the first starts it decides are queued
        // there, and written next, with no thread hop in between.
        return commits.start { [self] in
            let inserted = try store.writer.insertBatch(admitted, now: WallClock.now)
            markAdmitting(inserted.batch.id)
            let agentsOfBatch = Set(admitted.tasks.map(\.agent))
            let seeds = firstWindows(of: admitted, inserted: inserted)
            mutate { state, effects in
                let now = WallClock.now
                state.admit(inserted.batch, agents: Array(agentsOfBatch), seeds: seeds, now: now, effects: &effects)
                state.dispatch(now: now, effects: &effects)
            }
            return inserted
        }
    }

    /// A batch that fits in one window per agent, as the store would list it: it starts from
    /// what was just inserted instead of reading it back (a read and two thread hops less
    /// between an enqueue and its first start). Nil for bigger batches.
    private func firstWindows(of batch: NewBatch, inserted: InsertedBatch) -> [String: [RunnableTask]]? {
        // A shared store's tasks run where they are claimed, which only its window read does.
        guard batch.tasks.count < configuration.windowSize, !store.claimsPendingTasks else { return nil }
        var windows: [String: [RunnableTask]] = [:]
        for (task, id) in zip(batch.tasks, inserted.taskIDs) {
            var runnable = RunnableTask(
                id: id, batchID: inserted.batch.id, ownerID: batch.ownerID, customID: task.customID, agent: task.agent,
                priority: task.priority, attempt: 0, maxAttempts: task.maxAttempts, timeoutMs: task.timeoutMs,
                turnsCompleted: 0, maxTurns: task.maxTurns, parentTaskID: batch.parentTaskID)
            runnable.payload = task.payload.count <= configuration.inlinePayloadBytes ? task.payload : nil
            runnable.url = task.url
            windows[task.agent, default: []].append(runnable)
        }
        // The store's order: highest priority first, then by id.
        for agent in windows.keys { windows[agent]!.sort { ($0.priority, -$0.id) > ($1.priority, -$1.id) } }
        return windows
    }

    /// Cancels a task and waits (up to `timeout`) until a running one has
    /// stopped, so the answer shows it cancelled; returns its committed state.
    public func cancelTask(_ id: TaskID, timeout: Duration = .seconds(10)) async throws -> TaskRecord {
        guard let task = try await store.task(id, includePayload: false) else {
            throw FanoutError.notFound("task \(id) does not exist")
        }
        if try await store.requestCancelElsewhere(id) {
            // Another daemon sharing the store holds it, and stops it when it next looks.
            try await waitUntilEnded(task: id, of: task, timeout: timeout)
            return try await store.task(id, includePayload: false) ?? task
        }
        let stopped = AsyncStream<Void>.makeStream()
        let active = mutate { state, effects in
            state.cancelTask(task, now: WallClock.now, onStopped: { stopped.continuation.finish() },
                             effects: &effects)
        }
        if active { await waitForSignal(stopped.stream, timeout: timeout) }
        return try await store.task(id, includePayload: false) ?? task
    }

    /// Runs a finished batch's failed tasks again (and, if asked, its expired
    /// and cancelled ones), keeping its completed results.
    public func retryFailed(_ id: BatchID, includeExpired: Bool, includeCancelled: Bool) async throws -> (BatchRecord, Int) {
        try requireWritableStore()
        var wanted: Set<TaskState> = [.failed]
        if includeExpired { wanted.insert(.expired) }
        if includeCancelled { wanted.insert(.cancelled) }
        let states = wanted
        // Marked before the reopening commits: a cancel arriving from then on waits for the admission.
        markAdmitting(id)
        let result: ReopenedBatch
        do {
            result = try await store.reopenTasks(batchID: id, states: states, now: WallClock.now)
        } catch {
            unmarkAdmitting(id)
            throw error
        }
        if result.reopened == 0 { unmarkAdmitting(id) }
        let (batch, reopened) = (result.batch, result.reopened)
        guard reopened > 0 else { return (batch, 0) }
        // The reopened rows' own agents: an agent no longer configured still gets a
        // source, and its tasks fail with no_runner instead of waiting forever.
        let agents = result.agents
        mutate { state, effects in
            let now = WallClock.now
            state.admit(batch, agents: agents, now: now, effects: &effects)
            effects.changes.events.append(state.batchEvent(.batchProgress, batch, now: now))
            state.dispatch(now: now, effects: &effects)
        }
        return (batch, reopened)
    }

    /// Cancels every unfinished task of a batch and waits (up to `timeout`)
    /// for the running ones to stop, so the answer shows the batch cancelled.
    public func cancelBatch(_ id: BatchID, timeout: Duration = .seconds(10)) async throws -> BatchRecord {
        let finished = AsyncStream<Void>.makeStream()
        // A batch committed but not admitted yet (an enqueue or a RetryFailed in flight) is
        // cancelled as soon as it is admitted, rather than the cancel being lost.
        let active = mutate { state, effects in
            state.cancelActiveOrAdmitting(id, now: WallClock.now, onFinished: { finished.continuation.finish() }, effects: &effects)
        }
        if active {
            await waitForSignal(finished.stream, timeout: timeout)
        } else if try await store.requestBatchClose(id, as: .cancelled), let batch = try await store.batch(id) {
            // Only other daemons sharing the store run it: they close it when they next look.
            try await waitUntilEnded(batch: id, ownerID: batch.ownerID, timeout: timeout)
        }
        guard let batch = try await store.batch(id) else {
            throw FanoutError.notFound("batch \(id) does not exist")
        }
        return batch
    }

    /// Waits until the task has ended, or `timeout` passed: for its terminal event, which on a
    /// shared store comes whichever daemon ended it.
    private func waitUntilEnded(task id: TaskID, of task: TaskRecord, timeout: Duration) async throws {
        let filter = EventFilter(ownerID: task.ownerID, kinds: [.taskCompleted, .taskFailed, .taskCancelled, .taskExpired],
                                 batchID: task.batchID)
        try await waitForEvent(filter, timeout: timeout, { $0.taskID == id }) {
            try await self.store.task(id, includePayload: false)?.state.isTerminal != false
        }
    }

    /// Waits until the batch has ended, or `timeout` passed (see `waitUntilEnded(task:)`).
    private func waitUntilEnded(batch id: BatchID, ownerID: String, timeout: Duration) async throws {
        let filter = EventFilter(ownerID: ownerID, kinds: [.batchCompleted, .batchFailed, .batchCancelled], batchID: id)
        try await waitForEvent(filter, timeout: timeout, { _ in true }) {
            try await self.store.batch(id)?.state.isTerminal != false
        }
    }

    /// Waits for a published event matching `filter` and `matches`, unless `alreadyDone` says
    /// (after the subscription started, so nothing is missed in between) it happened before.
    private func waitForEvent(_ filter: EventFilter, timeout: Duration, _ matches: @escaping @Sendable (EventRecord) -> Bool,
                              alreadyDone: () async throws -> Bool) async throws {
        let live = hub.subscribe(filter: filter, bufferSize: 10_000)
        if try await alreadyDone() { return }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await events in live.events {
                    live.backlog.taken(events.count)
                    if events.contains(where: matches) { return }
                }
            }
            group.addTask { try? await Task.sleep(for: timeout) }
            await group.next()
            group.cancelAll()
        }
    }

    // MARK: Children

    /// Enqueues `request` as children of a running attempt: the child batch
    /// belongs to the task's owner and creator, and the task is its parent.
    func spawnChildren(of parent: TaskID, attempt: Int, run: Int, _ request: NewBatch) async throws -> BatchRecord {
        let count = request.tasks.count
        let owner = try state.withLock { state throws(FanoutError) in
            try state.reserveSpawn(parent, attempt: attempt, run: run, count: count)
        }
        var batch = request
        batch.ownerID = owner.ownerID
        batch.creatorUID = owner.creatorUID
        batch.parentTaskID = parent
        batch.parentAttempt = attempt
        do {
            return try await enqueue(batch).batch
        } catch {
            state.withLock { $0.unreserveSpawn(parent, attempt: attempt, count: count) }
            throw error
        }
    }

    /// Suspends a running attempt until its task's children have ended (see `ChildTasks.wait`).
    func waitForChildren(of id: TaskID, attempt: Int, run: Int, timeoutMs: Int64?) async throws {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let answer = mutate { state, effects in
                    // Read under the lock: a cancel from now on finds the continuation stored.
                    state.wait(id, attempt: attempt, run: run, timeoutMs: timeoutMs, cancelled: Task.isCancelled, continuation: continuation,
                               now: WallClock.now, effects: &effects)
                }
                if let answer { continuation.resume(with: answer) }
            }
        } onCancel: {
            state.withLock { $0.abandonWait(id, attempt: attempt, run: run) }?.resume(throwing: CancellationError())
        }
        // The children's last changes were decided before this resumption: once they are written, their results can be read.
        await committed()
    }

    /// Returns once every change decided so far is written.
    func committed() async {
        await withCheckedContinuation { continuation in
            commits.submit(ChangeSet(), onCommit: { _ in continuation.resume() })
        }
    }

    /// Events after `since`, then live ones if `follow`.

    public func subscribe(_ filter: EventFilter, since: EventSequence, follow: Bool, bufferSize: Int) -> EventStream {
        EventStream(store: store, hub: hub, filter: filter, since: since, follow: follow, bufferSize: bufferSize)
    }

    public var statistics: SchedulerStatistics {
        state.withLock { state in
            SchedulerStatistics(pending: state.pendingCount, running: state.running, retryWait: state.retryWaitCount,
                                activeBatches: state.batches.count,
                                runningByAgent: state.agents.mapValues(\.running),
                                subscribers: hub.subscriberCount, queuedChanges: commits.queuedChanges,
                                tasksInMemory: state.slots.count + state.sources.values.reduce(0) { $0 + $1.window.count })
        }
    }

    /// Called before a batch is admitted (an enqueue's commit returned; a staged batch or a RetryFailed
    /// is about to commit): a cancel from now on waits for the admission, or for `unmarkAdmitting`.
    func markAdmitting(_ id: BatchID) {
        state.withLock { _ = $0.admitting.insert(id) }
    }

    /// The admission will not come (nothing was reopened): cancels parked for it answer now.
    func unmarkAdmitting(_ id: BatchID) {
        let waiters = state.withLock { state in
            state.admitting.remove(id)
            return state.cancelsAwaitingAdmission.removeValue(forKey: id) ?? []
        }
        for waiter in waiters { waiter() }
    }

    /// Waits until `signal` finishes, or `timeout` passes.
    private func waitForSignal(_ signal: AsyncStream<Void>, timeout: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { for await _ in signal {} }
            group.addTask { try? await Task.sleep(for: timeout) }
            await group.next()
            group.cancelAll()
        }
    }

    // MARK: Effects

    /// Runs a state transition under the lock, then carries out its effects.
    @discardableResult
    func mutate<T: Sendable>(_ body: (inout SchedulerState, inout Effects) -> T) -> T {
        let (value, effects) = state.withLock { state -> (T, Effects) in
            var effects = Effects()
            let value = body(&state, &effects)
            // Submitted under the lock so changes reach the commit queue in decision order.
            commits.submit(effects.changes, onCommit: Self.runAll(effects.afterCommit))
            // Counted before the lock is released, so shutdown cannot miss an attempt about to launch.
            if !effects.starts.isEmpty { inFlight.add(effects.starts.count) }
            return (value, effects)
        }
        for handle in effects.cancellations { handle.cancel() }
        for waiter in effects.resumes { waiter.resume() }
        for waiter in effects.abandonedWaits { waiter.resume(throwing: CancellationError()) }
        for order in effects.starts { launch(order) }
        for retry in effects.retries { scheduleRetry(retry.id, attempt: retry.attempt, afterMs: retry.delayMs) }
        for refill in effects.refills { load(refill) }
        for order in effects.requestGrants { askForRequests(order) }
        for order in effects.tokenCharges { chargeTokens(order) }
        if let wakeAt = effects.wakeAt { scheduleWake(at: wakeAt) }
        return value
    }

    /// Waiters are woken whether the changes committed or the daemon gave up on
    /// them at shutdown: they read the store next, which shows what is durable.
    private static func runAll(_ callbacks: [@Sendable () -> Void]) -> (@Sendable (Result<Void, any Error>) -> Void)? {
        guard !callbacks.isEmpty else { return nil }
        return { _ in
            for callback in callbacks { callback() }
        }
    }

    private func launch(_ order: StartOrder) {
        if let pool = workerPool(of: order.task.agent), let payload = order.task.payload, !order.resumed {
            return launch(order, on: pool, payload: payload)
        }
        let handle = Task {
            let outcome = await self.execute(order)
            self.attemptEnded(order, outcome)
        }
        let keep = state.withLock { $0.attach(.task(handle), to: order.task.id, attempt: order.attempt, run: order.run) }
        if !keep { handle.cancel() }
    }

    /// The pool serving `agent`: a configured agent whose runner is `worker`, or one a worker declares.
    private func workerPool(of agent: String) -> WorkerPool? {
        guard let runner = runners[agent] else { return workerPool }
        return (runner as? PoolRunner)?.pool
    }

    /// An attempt on workers, without a Swift task (docs/PERFORMANCE.md, worker path): sent from
    /// here, or from the thread that frees a slot, and finished on the thread that hears how it went.
    /// A resumed parent's attempt, and one whose payload is still in the store, take `execute`.
    private func launch(_ order: StartOrder, on pool: WorkerPool, payload: [UInt8]) {
        let timeout: Duration? = order.timeoutMs > 0 ? .milliseconds(order.timeoutMs) : nil
        let attempt = pool.makeAttempt(taskID: order.task.id, timeout: timeout) { [weak self] result, cancelled, timedOut in
            self?.attemptEnded(order, timedOut ? .failed(Self.timedOut(after: order.timeoutMs)) : Self.outcome(of: result, cancelled: cancelled))
        }
        let keep = state.withLock { $0.attach(.worker(attempt), to: order.task.id, attempt: order.attempt, run: order.run) }
        if !keep { attempt.cancel() }
        pool.start(attempt, agent: order.task.agent, context: makeContext(order, payload: payload))
    }

    private func attemptEnded(_ order: StartOrder, _ outcome: AttemptOutcome) {
        mutate { state, effects in
            state.finish(order.task.id, attempt: order.attempt, run: order.run, outcome: outcome,
                         jitter: Double.random(in: 0...1), now: WallClock.now, effects: &effects)
        }
        inFlight.remove(1)
    }

    /// Takes requests from a rate limit other daemons share, then dispatches with them.
    private func askForRequests(_ order: RequestGrantOrder) {
        let store = self.store
        callSharedRateLimit("taking requests from", agent: order.agent) {
            try await store.takeSharedRequests(agent: order.agent, perMinute: order.perMinute, want: order.want)
        } then: { grant, state, effects in
            state.requestsGranted(order.agent, granted: grant?.granted, retryAfterMs: grant?.retryAfterMs ?? 500,
                                  now: WallClock.now, effects: &effects)
        }
    }

    /// Charges tokens to (or looks at) a rate limit other daemons share.
    private func chargeTokens(_ order: TokenChargeOrder) {
        let store = self.store
        callSharedRateLimit("charging tokens to", agent: order.agent) {
            try await store.chargeSharedTokens(agent: order.agent, perMinute: order.perMinute, tokens: order.tokens)
        } then: { wait, state, effects in
            state.tokensCharged(order.agent, retryAfterMs: wait, now: WallClock.now, effects: &effects)
        }
    }

    /// Calls the store about a shared rate limit, then hands the answer (nil when the call failed:
    /// the state asks again shortly) to the state.
    private func callSharedRateLimit<Answer: Sendable>(
        _ doing: String, agent: String, _ call: @escaping @Sendable () async throws -> Answer,
        then apply: @escaping @Sendable (Answer?, inout SchedulerState, inout Effects) -> Void
    ) {
        Task {
            let answer: Answer?
            do {
                answer = try await call()
            } catch {
                logger.warning("\(doing) the shared rate limit failed; trying again shortly",
                               metadata: ["agent": "\(agent)", "error": "\(error)"])
                answer = nil
            }
            mutate { state, effects in apply(answer, &state, &effects) }
        }
    }

    /// Reads the next window of a source's pending tasks.
    private func load(_ order: RefillOrder) {
        let (store, inline) = (store, configuration.inlinePayloadBytes)
        Task {
            // Closing a huge batch reads page after page; each waits until the last one's changes are being written.
            await commits.waitForRoom()
            let tasks: [RunnableTask]
            do {
                tasks = try await store.pendingTasks(batchID: order.key.batchID, agent: order.key.agent, after: order.cursor,
                                                     limit: order.limit, inlinePayloadBytes: inline)
            } catch {
                logger.error("reading pending tasks failed; retrying", metadata: ["batch": "\(order.key.batchID)", "error": "\(error)"])
                try? await Task.sleep(for: .milliseconds(500))
                mutate { state, effects in state.refillFailed(order.key, generation: order.generation, effects: &effects) }
                return
            }
            let kept = mutate { state, effects in
                state.refilled(order.key, generation: order.generation, tasks: tasks, requested: order.limit, now: WallClock.now,
                               effects: &effects)
            }
            if !kept && store.claimsPendingTasks {
                // Claimed for a window that is gone: other daemons (or this one's next window) may run them.
                do {
                    try await store.releaseClaims(tasks.map(\.id))
                } catch {
                    logger.warning("releasing unused claims failed; they return when their lease expires",
                                   metadata: ["batch": "\(order.key.batchID)", "error": "\(error)"])
                }
            }
        }
    }

    /// Dispatches again when a paused or rate-limited agent becomes ready.
    private func scheduleWake(at time: Milliseconds) {
        let armed = nextWake.withLock { next -> Bool in
            if let next, next <= time, next > WallClock.now { return false }
            next = time
            return true
        }
        guard armed else { return }
        Task { [weak self] in
            try? await Task.sleep(for: .milliseconds(max(1, time - WallClock.now)))
            guard let self else { return }
            self.nextWake.withLock { if $0 == time { $0 = nil } }
            self.mutate { state, effects in state.dispatch(now: WallClock.now, effects: &effects) }
        }
    }

    private func execute(_ order: StartOrder) async -> AttemptOutcome {
        let task = order.task
        guard let runner = runners[task.agent] ?? workerPool?.runner(for: task.agent) else {

            return .failed(RunnerFailure("no runner for agent \"\(task.agent)\"", code: "no_runner", retryable: false))
        }
        do {
            var payload = task.payload ?? []
            if task.payload == nil {
                payload = try await store.payload(of: task.id)
            }
            if order.resumed { await committed() }
            let context = makeContext(order, payload: payload)
            let output = try await withAttemptTimeout(milliseconds: order.timeoutMs) { try await runner.run(context) }
            return .succeeded(output)
        } catch is AttemptTimedOut {
            return .failed(Self.timedOut(after: order.timeoutMs))
        } catch {
            return Self.outcome(of: .failure(error), cancelled: Task.isCancelled)
        }
    }

    private func makeContext(_ order: StartOrder, payload: [UInt8]) -> RunContext {
        let task = order.task
        var context = RunContext(
            taskID: task.id, batchID: task.batchID, customID: task.customID, agent: task.agent,
            attempt: order.attempt, maxTurns: order.maxTurns, payload: payload, url: task.url,
            timeoutMs: order.timeoutMs > 0 ? order.timeoutMs : nil,
            creatorUID: order.creatorUID,
            reportTurn: { [weak self] in
                guard let self else { return }
                self.mutate { state, effects in
                    state.turn(task.id, attempt: order.attempt, run: order.run, now: WallClock.now, effects: &effects)
                }
                // A runner reporting faster than commits land waits here instead of piling changes up,
                // and one reporting in a tight loop gives others the thread at each turn.
                if !(await self.commits.waitForRoom()) { await Task.yield() }
            })
        context.resumed = order.resumed
        context.children = AttemptChildren(scheduler: self, taskID: task.id, attempt: order.attempt, run: order.run)
        return context
    }

    static func timedOut(after milliseconds: Int64) -> RunnerFailure {
        RunnerFailure("attempt timed out after \(milliseconds) ms", code: "timeout", retryable: true)
    }

    /// How an attempt ended, from what its runner returned or threw: a failure of an attempt
    /// that was cancelled is its interruption.
    static func outcome(of result: Result<RunOutput, any Error>, cancelled: Bool) -> AttemptOutcome {
        switch result {
        case .success(let output):
            return .succeeded(output)
        case .failure(let failure as RunnerFailure):
            return cancelled ? .interrupted : .failed(failure)
        case .failure(let error):
            if cancelled { return .interrupted }
            return .failed(RunnerFailure(error is CancellationError
                                             ? "the runner stopped the attempt without being asked to (it threw a cancellation)"
                                             : "\(error)", code: "runner_error", retryable: false))
        }
    }

    private func scheduleRetry(_ id: TaskID, attempt: Int, afterMs delay: Int64) {
        Task { [weak self] in
            try? await Task.sleep(for: .milliseconds(delay))
            self?.mutate { state, effects in state.retryDue(id, attempt: attempt, now: WallClock.now, effects: &effects) }
        }
    }
}

public struct SchedulerStatistics: Sendable, Hashable {
    public var pending: Int
    public var running: Int
    public var retryWait: Int
    public var activeBatches: Int
    public var runningByAgent: [String: Int]
    public var subscribers: Int
    /// Changes waiting for the commit loop (bounded by `maxChangesPerCommit` for producers that can wait).
    public var queuedChanges: Int
    /// Running, retry-waiting and windowed tasks the scheduler holds: bounded, whatever the batch sizes.
    public var tasksInMemory: Int
}

struct AttemptTimedOut: Error {}

/// Runs `body`, cancelling it and throwing `AttemptTimedOut` after `milliseconds` (0: no limit).
func withAttemptTimeout<T: Sendable>(milliseconds: Int64, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    guard milliseconds > 0 else { return try await body() }
    return try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: .milliseconds(milliseconds))
            throw AttemptTimedOut()
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}

/// A count with waiters for it to reach zero (shutdown waiting for attempts).
final class InFlightCount: Sendable {
    private struct State {
        var count = 0
        var waiters: [Int: CheckedContinuation<Bool, Never>] = [:]
        var nextWaiter = 0
        var timedOut: Set<Int> = []
    }

    private let state = Mutex(State())

    func add(_ n: Int) { state.withLock { $0.count += n } }

    func remove(_ n: Int) {
        let waiters = state.withLock { state -> [CheckedContinuation<Bool, Never>] in
            state.count -= n
            guard state.count == 0 else { return [] }
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume(returning: true) }
    }

    /// Whether the count reached zero within `timeout`.
    func waitUntilZero(timeout: Duration) async -> Bool {
        let id = state.withLock { state in
            defer { state.nextWaiter += 1 }
            return state.nextWaiter
        }
        let timer = Task {
            try? await Task.sleep(for: timeout)
            // Marked even when the waiter has not registered yet, so it cannot miss the timeout.
            let waiter = state.withLock { state in
                state.timedOut.insert(id)
                return state.waiters.removeValue(forKey: id)
            }
            waiter?.resume(returning: false)
        }
        defer { timer.cancel() }
        return await withCheckedContinuation { continuation in
            let answer = state.withLock { state -> Bool? in
                if state.count == 0 { return true }
                if state.timedOut.contains(id) { return false }
                state.waiters[id] = continuation
                return nil
            }
            if let answer { continuation.resume(returning: answer) }
        }
    }
}
