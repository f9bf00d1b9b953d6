import FanoutCore
import ServiceLifecycle
import Synchronization

/// Hands the tasks of worker-served agents to connected worker sessions.
///
/// To the scheduler it is a runner (`runner(for:)`): an attempt waits for a
/// free slot on a worker allowed to serve its agent, is sent there with a
/// lease, and ends with what the worker reports. The worker heartbeats the
/// tasks it holds; a lease that runs out, or a worker that goes away, ends
/// the attempt as a retryable failure (`worker_lost`), so the scheduler
/// counts the attempt and runs the task again. A cancelled attempt is
/// cancelled on its worker; its slot is free once the worker acknowledges,
/// or after `cancelGraceMs`. A report for a task the worker no longer holds
/// is refused, and never changes an outcome already decided.
///
/// The pool sends through each worker's `send`, which must not block (the
/// session buffers): a worker that stops reading slows only itself.
public final class WorkerPool: Service, Sendable {
    public struct Settings: Sendable {
        /// How long a task stays with its worker without a heartbeat.
        public var leaseMs: Int64 = 30_000
        /// How long a cancelled task's slot waits for the worker's acknowledgement.
        public var cancelGraceMs: Int64 = 5_000

        public init(leaseMs: Int64 = 30_000, cancelGraceMs: Int64 = 5_000) {
            self.leaseMs = leaseMs
            self.cancelGraceMs = cancelGraceMs
        }
    }

    /// What the pool asks of a worker.
    public enum Command: Sendable {
        /// Run this task. `resumed`: it waited for its children, which have ended; their results follow.
        case assign(RunContext, leaseMs: Int64, resumed: Bool)
        case cancel(TaskID)
    }

    /// An agent a worker declares (the configuration does not know it): the uid whose tasks it runs.
    public struct AgentDeclaration: Sendable, Hashable {
        public var uid: UInt32
        public var maxTurns: Int
    }

    /// A worker asked for its task to wait for its children.
    struct ChildrenWait: Error {
        var timeoutMs: Int64?
    }

    /// The answer to a worker's report about a task.
    public enum ReportStatus: Sendable, Hashable {
        case accepted
        /// The worker does not hold this task (never had it, or finished it already).
        case unknownTask
        /// The lease ran out, or the task was given to another worker: the report is ignored.
        case leaseLost
        /// The task was cancelled: the report is ignored.
        case cancelled
    }

    public typealias WorkerID = UInt64

    let settings: Settings
    /// Who may serve each agent; an agent not listed may be served by admins only.
    let allowedUIDs: [String: Set<UInt32>]
    private let state = Mutex(PoolState())
    /// The scheduler whose worker-served agents this pool runs: told the slots workers offer per agent.
    private let scheduler = Mutex<Scheduler?>(nil)
    /// Held while capacity is reported, so reports reach the scheduler in order.
    private let capacityReports = Mutex(())

    public init(settings: Settings = Settings(), allowedUIDs: [String: Set<UInt32>] = [:]) {
        self.settings = settings
        self.allowedUIDs = allowedUIDs
    }

    /// The runner the scheduler uses for `agent`.
    public func runner(for agent: String) -> any Runner { PoolRunner(pool: self, agent: agent) }

    /// Called by the scheduler this pool serves.
    func attach(_ scheduler: Scheduler) {
        self.scheduler.withLock { $0 = scheduler }
    }

    /// Tells the scheduler how many slots the workers offer for each of `agents`,
    /// and of agents workers declare. Reports are serialised and read the pool
    /// as it is then, so the last report of an agent is always current; the
    /// pool's lock is not held while the scheduler acts on one.
    private func reportCapacity(of agents: some Sequence<String>) {
        guard let scheduler = scheduler.withLock({ $0 }) else { return }
        capacityReports.withLock { _ in
            let reports = state.withLock { state in
                Set(agents).sorted().map { agent in
                    (agent, state.offeredSlots(for: agent), scheduler.agentsByName[agent] == nil ? state.declaration(of: agent) : nil)
                }
            }
            for (agent, slots, declaration) in reports {
                scheduler.setWorkerCapacity(agent: agent, slots: slots, declaration: declaration)
            }
        }
    }

    /// Why `uid` may not serve `agent`, or nil. A configured agent is served by the
    /// uids its `worker_uids` list (admins always); an agent the configuration does
    /// not know is declared by its first worker, and only that uid may serve it.
    private func refusal(agent: String, uid: UInt32, isAdmin: Bool, in state: PoolState) -> FanoutError? {
        let configured = scheduler.withLock { $0 }?.agentsByName[agent]
        if let configured {
            guard configured.runner == "worker" else {
                return .failedPrecondition("agent \"\(agent)\" is run by fanoutd's \(configured.runner) runner, not by workers")
            }
            guard isAdmin || allowedUIDs[agent]?.contains(uid) == true else {
                return .permissionDenied("uid \(uid) may not serve agent \"\(agent)\"; its worker_uids do not list it")
            }
            return nil
        }
        if let owner = state.declaration(of: agent)?.uid, owner != uid {
            return .permissionDenied("agent \"\(agent)\" is declared by a worker of another user (uid \(owner)); pick another name")
        }
        // The name's slots serve one uid at a time: another user's tasks still waiting for it would hold them.
        if let scheduler = scheduler.withLock({ $0 }), scheduler.hasUnfinishedTasks(agent: agent, fromOtherThan: uid) {
            return .permissionDenied("agent \"\(agent)\" still has another user's tasks waiting for their own worker; pick another name")
        }
        return nil
    }

    // MARK: Sessions

    /// Adds a worker serving `agents` (name → concurrency). Refuses an agent
    /// this uid may not serve, naming it.
    /// Adds a worker serving `agents` (name → concurrency, and the `max_turns`
    /// of agents it declares). Refuses an agent this uid may not serve, naming it.
    public func register(name: String, uid: UInt32, isAdmin: Bool, agents: [String: Int], maxTurns: [String: Int] = [:],
                         send: @escaping @Sendable (Command) -> Void) throws(FanoutError) -> WorkerID {
        if let (agent, slots) = agents.first(where: { $0.value < 1 }) {
            throw .invalidArgument("agent \"\(agent)\": concurrency must be at least 1, not \(slots)")
        }
        let result = state.withLock { state -> Result<PoolState.Wakeups, FanoutError> in
            for agent in agents.keys.sorted() {
                if let refusal = refusal(agent: agent, uid: uid, isAdmin: isAdmin, in: state) { return .failure(refusal) }
            }
            return .success(state.addWorker(PoolState.Worker(name: name, uid: uid, slots: agents, maxTurns: maxTurns, send: send)))
        }
        let wakeups = try result.get()
        reportCapacity(of: agents.keys)
        wakeups.resume()
        return wakeups.workerID
    }

    /// The worker takes no new tasks; those it holds stay with it until it reports them.
    public func drain(_ worker: WorkerID) {
        let (agents, wakeups) = state.withLock { state in
            state.workers.modifyValue(forKey: worker) { $0.draining = true }
            // Parents that were to resume on it resume on any worker.
            return (state.workers[worker]?.slots.keys.map { $0 } ?? [], state.unpinWaiters(from: worker))
        }
        wakeups.resume()
        reportCapacity(of: agents)
    }

    /// The worker is gone: the attempts it held fail as `worker_lost` and run again.
    public func unregister(_ worker: WorkerID) {
        let (agents, (ended, wakeups)) = state.withLock { state in
            (state.workers[worker]?.slots.keys.map { $0 } ?? [], state.removeWorker(worker))
        }
        wakeups.resume()
        reportCapacity(of: agents)

        for (outcome, taskID) in ended {
            outcome(.failure(RunnerFailure("the worker running task \(taskID) disconnected", code: "worker_lost", retryable: true)))
        }
    }

    /// The worker sent something: one that had stalled (a lease ran out) takes tasks again.
    public func heard(from worker: WorkerID) {
        let (agents, wakeups) = state.withLock { state -> ([String], PoolState.Wakeups) in
            guard state.workers[worker]?.stalled == true else { return ([], PoolState.Wakeups()) }
            state.workers.modifyValue(forKey: worker) { $0.stalled = false }
            return (state.workers[worker]?.slots.keys.map { $0 } ?? [], state.unpinWaiters(from: worker))
        }
        wakeups.resume()
        if !agents.isEmpty { reportCapacity(of: agents) }
    }

    /// Extends the leases of the tasks the worker says it holds.
    public func heartbeat(_ worker: WorkerID, taskIDs: [TaskID]) {
        let deadline = ContinuousClock.now + .milliseconds(settings.leaseMs)
        state.withLock { state in
            for id in taskIDs where state.leases[id]?.worker == worker && state.leases[id]?.cancelling == false {
                state.leases.modifyValue(forKey: id) { $0.deadline = deadline }
            }
        }
    }

    /// `turns` more turns of a task; the reporting waits while the daemon records them.
    public func turn(_ worker: WorkerID, taskID: TaskID, turns: Int) async -> ReportStatus {
        let (status, report) = state.withLock { state -> (ReportStatus, (@Sendable () async -> Void)?) in
            let status = state.status(of: taskID, for: worker)
            return (status, status == .accepted ? state.leases[taskID]?.reportTurn : nil)
        }
        if let report {
            for _ in 0..<max(0, min(turns, 100_000)) { await report() }
        }
        return status
    }

    public func complete(_ worker: WorkerID, taskID: TaskID, output: RunOutput) -> ReportStatus {
        finish(worker, taskID: taskID, with: .success(output))
    }

    public func fail(_ worker: WorkerID, taskID: TaskID, failure: RunnerFailure) -> ReportStatus {
        finish(worker, taskID: taskID, with: .failure(failure))
    }

    /// The worker's task waits for its children: its slot on the worker is free, and
    /// it comes back (to this worker while it is connected) when they have ended.
    public func waitForChildren(_ worker: WorkerID, taskID: TaskID, timeoutMs: Int64?) -> ReportStatus {
        finish(worker, taskID: taskID, with: .failure(ChildrenWait(timeoutMs: timeoutMs)))
    }

    /// Spawns children of a task the worker holds; the status says why not when it does not.
    public func spawn(_ worker: WorkerID, taskID: TaskID, children: NewBatch) async throws -> (ReportStatus, BatchRecord?) {
        let (status, spawner) = state.withLock { state in
            let status = state.status(of: taskID, for: worker)
            return (status, status == .accepted ? state.leases[taskID]?.children : nil)
        }
        guard let spawner else { return (status == .accepted ? .unknownTask : status, nil) }
        return (.accepted, try await spawner.spawn(children))
    }

    /// The worker stopped a cancelled task: its slot is free.
    public func cancelAcknowledged(_ worker: WorkerID, taskID: TaskID) {
        let (outcome, wakeups) = state.withLock { state in
            guard state.leases[taskID]?.worker == worker, state.leases[taskID]?.cancelling == true else {
                return (nil as PoolState.Outcome?, PoolState.Wakeups())
            }
            return state.endLease(taskID)
        }
        outcome?(.failure(CancellationError()))
        wakeups.resume()
    }

    /// Every worker: its agents, free slots and the tasks it runs.
    public var workers: [WorkerInfo] { state.withLock { $0.workerInfos() } }

    private func finish(_ worker: WorkerID, taskID: TaskID, with result: AttemptResult) -> ReportStatus {
        let (status, outcome, wakeups) = state.withLock { state -> (ReportStatus, PoolState.Outcome?, PoolState.Wakeups) in
            let status = state.status(of: taskID, for: worker)
            guard status == .accepted else { return (status, nil, PoolState.Wakeups()) }
            let (outcome, wakeups) = state.endLease(taskID)
            return (status, outcome, wakeups)
        }
        outcome?(result)
        wakeups.resume()
        return status
    }

    // MARK: Attempts

    typealias AttemptResult = Result<RunOutput, any Error>

    /// One attempt on workers: wait for a slot, send, wait for the outcome. When
    /// the worker has the task wait for its children, the slot is freed until they
    /// ended, and the task goes back with their results: to the same worker while
    /// it is connected (its handler waits there), otherwise to any.
    func run(agent: String, context: RunContext) async throws -> RunOutput {
        try await run(agent: agent, context: context, resumed: context.resumed, requirement: slotRequirement(agent: agent, context: context))
    }

    /// Tasks of an agent a worker declared reach only workers of the uid that submitted them.
    private func slotRequirement(agent: String, context: RunContext) -> PoolState.SlotRequirement {
        PoolState.SlotRequirement(uid: scheduler.withLock { $0 }?.agentsByName[agent] == nil ? context.creatorUID : nil)
    }

    /// `run`, from a point in the attempt: the task was sent `resumed`, or waits for its children on `waiting`.
    private func run(agent: String, context: RunContext, resumed: Bool, requirement: PoolState.SlotRequirement,
                     waiting: (ChildrenWait, on: WorkerID)? = nil) async throws -> RunOutput {
        var requirement = requirement
        var resumed = resumed
        var waiting = waiting
        while true {
            if let (wait, worker) = waiting {
                do {
                    guard let children = context.children else { throw CancellationError() }
                    try await children.wait(timeoutMs: wait.timeoutMs)
                } catch {
                    stopWaitingHandler(on: worker, taskID: context.taskID)
                    throw error
                }
                requirement.worker = worker
                resumed = true
                waiting = nil
            }
            let worker: WorkerID
            do {
                worker = try await acquireSlot(agent: agent, taskID: context.taskID, requirement: requirement)
            } catch {
                stopWaitingHandler(on: requirement.worker, taskID: context.taskID)
                throw error
            }
            // Resumed elsewhere (its worker drained): the handler still waiting there will not be resumed.
            if let pinned = requirement.worker, pinned != worker { stopWaitingHandler(on: pinned, taskID: context.taskID) }
            do {
                return try await runOnce(on: worker, context: context, resumed: resumed)
            } catch let wait as ChildrenWait {
                waiting = (wait, worker)
            } catch {
                // Cancelled before the resumed assignment went out: the handler waiting on its worker stops.
                if resumed { stopWaitingHandler(on: requirement.worker, taskID: context.taskID) }
                throw error
            }
        }
    }

    /// Tells a worker whose handler waits for a task's children that it will not be resumed there.
    private func stopWaitingHandler(on worker: WorkerID?, taskID: TaskID) {
        guard let worker else { return }
        state.withLock { $0.workers[worker]?.send }?(.cancel(taskID))
    }

    private func runOnce(on worker: WorkerID, context: RunContext, resumed: Bool) async throws -> RunOutput {
        let result: AttemptResult = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                send(context, on: worker, resumed: resumed) { continuation.resume(returning: $0) }
            }
        } onCancel: {
            requestCancel(context.taskID)
        }
        return try result.get()
    }

    /// Sends the task to the worker whose slot it was given; `outcome` is told how the attempt ends.
    private func send(_ context: RunContext, on worker: WorkerID, resumed: Bool, outcome: @escaping PoolState.Outcome) {
        let taskID = context.taskID
        enum Next { case send(@Sendable (Command) -> Void), lost, cancelled(PoolState.Wakeups) }
        let next = state.withLock { state -> Next in
            guard let lease = state.leases[taskID], let send = state.workers[worker]?.send else { return .lost }
            if lease.cancelling {
                // Cancelled before it was sent: the worker never hears of it.
                return .cancelled(state.endLease(taskID).1)
            }
            state.leases.modifyValue(forKey: taskID) { lease in
                lease.outcome = outcome
                lease.reportTurn = context.reportTurn
                lease.children = context.children
                // The lease runs from the moment the worker is sent the task.
                lease.deadline = ContinuousClock.now + .milliseconds(settings.leaseMs)
            }
            return .send(send)
        }
        switch next {
        case .cancelled(let wakeups):
            outcome(.failure(CancellationError()))
            wakeups.resume()
        case .lost:
            // The worker went away between the slot and the send.
            outcome(.failure(RunnerFailure("the worker went away before task \(taskID) reached it", code: "worker_lost", retryable: true)))
        case .send(let send):
            send(.assign(context, leaseMs: settings.leaseMs, resumed: resumed))
            // Marked sent only now: a cancel requested meanwhile found it unsent and left its sending
            // to this thread, so the cancel cannot reach the worker before the assignment.
            let cancelledMeanwhile = state.withLock { state in
                state.leases.modifyValue(forKey: taskID) { lease in
                    lease.sent = true
                    return lease.cancelling
                } ?? false
            }
            if cancelledMeanwhile { send(.cancel(taskID)) }
            kickSweeper(for: ContinuousClock.now + .milliseconds(settings.leaseMs))
        }
    }

    /// Waits until a worker allowed to serve `agent` has a free slot, and takes it for `taskID`.
    private func acquireSlot(agent: String, taskID: TaskID, requirement: PoolState.SlotRequirement) async throws -> WorkerID {
        let waiterID = state.withLock { $0.nextWaiterID() }
        let worker: WorkerID? = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                enum Taken { case slot(WorkerID), waiting, cancelled }
                let taken = state.withLock { state -> Taken in
                    // Checked under the lock: a cancel from now on finds the waiter queued.
                    if Task.isCancelled { return .cancelled }
                    return state.takeSlot(agent: agent, taskID: taskID, requirement: requirement,
                                          deadline: ContinuousClock.now + .milliseconds(settings.leaseMs),
                                          waiter: waiterID, grant: { continuation.resume(returning: $0) }).map(Taken.slot) ?? .waiting
                }
                switch taken {
                case .slot(let worker): continuation.resume(returning: worker)
                case .cancelled: continuation.resume(returning: nil)
                case .waiting: break
                }
            }
        } onCancel: {
            state.withLock { $0.removeWaiter(waiterID) }?(nil)
        }
        guard let worker else { throw CancellationError() }
        return worker
    }

    // MARK: Attempts without a Swift task

    /// Starts `attempt` without a Swift task of its own (docs/PERFORMANCE.md, worker path): it
    /// is sent from this thread if a slot is free, otherwise from the thread that frees one,
    /// and ends on the thread that hears how it went. Only a wait for the task's children
    /// takes a Swift task, then.
    func start(_ attempt: PoolAttempt, agent: String, context: RunContext) {
        if let timeout = attempt.timeout {
            let deadline = ContinuousClock.now + timeout
            state.withLock { $0.attemptTimeouts[ObjectIdentifier(attempt)] = (deadline, attempt) }
            kickSweeper(for: deadline)
        }
        let requirement = slotRequirement(agent: agent, context: context)
        enum Taken { case slot(WorkerID), queued, cancelled }
        let taken = state.withLock { state -> Taken in
            // Checked under the lock: a cancel from now on finds the waiter queued, or the lease.
            guard !attempt.isCancelled else { return .cancelled }
            return state.takeSlot(agent: agent, taskID: context.taskID, requirement: requirement,
                                  deadline: ContinuousClock.now + .milliseconds(settings.leaseMs),
                                  waiter: attempt.waiterID, grant: { [self] worker in
                guard let worker else { return attempt.end(.failure(CancellationError())) }
                send(attempt, context: context, agent: agent, on: worker, requirement: requirement)
            }).map(Taken.slot) ?? .queued
        }
        switch taken {
        case .slot(let worker): send(attempt, context: context, agent: agent, on: worker, requirement: requirement)
        case .cancelled: attempt.end(.failure(CancellationError()))
        case .queued: break
        }
    }

    private func send(_ attempt: PoolAttempt, context: RunContext, agent: String, on worker: WorkerID,
                      requirement: PoolState.SlotRequirement) {
        send(context, on: worker, resumed: false) { [self] result in
            guard case .failure(let wait as ChildrenWait) = result else { return attempt.end(result) }
            attempt.waitForChildren {
                try await self.run(agent: agent, context: context, resumed: false, requirement: requirement, waiting: (wait, worker))
            }
        }
    }

    /// An attempt to `start`; `onEnd` is called once, with how it ended.
    func makeAttempt(taskID: TaskID, timeout: Duration?, onEnd: @escaping PoolAttempt.End) -> PoolAttempt {
        PoolAttempt(taskID: taskID, waiterID: state.withLock { $0.nextWaiterID() }, timeout: timeout, pool: self, onEnd: onEnd)
    }

    /// The attempt ended: its timeout no longer matters.
    func forgetTimeout(of attempt: PoolAttempt) {
        state.withLock { $0.attemptTimeouts[ObjectIdentifier(attempt)] = nil }
    }

    /// Cancels an attempt started with `start`: it stops waiting for a slot, or its worker is told.
    func cancel(_ attempt: PoolAttempt) {
        if state.withLock({ $0.removeWaiter(attempt.waiterID) }) != nil {
            attempt.end(.failure(CancellationError()))
        } else {
            requestCancel(attempt.taskID, waiter: attempt.waiterID)
        }
    }

    /// Cancels the attempt on `taskID`'s lease; with `waiter`, only if the lease is that attempt's (a late
    /// cancel must not reach the task's next attempt).
    private func requestCancel(_ taskID: TaskID, waiter: Int? = nil) {
        let send = state.withLock { state -> (@Sendable (Command) -> Void)? in
            guard let lease = state.leases[taskID], !lease.cancelling, waiter.map({ $0 == lease.waiter }) ?? true else { return nil }
            state.leases.modifyValue(forKey: taskID) { lease in
                lease.cancelling = true
                lease.deadline = ContinuousClock.now + .milliseconds(settings.cancelGraceMs)
            }
            // Not sent yet: `send` sees the flag, and either never sends the task or sends the cancel after it.
            return lease.sent ? state.workers[lease.worker]?.send : nil
        }
        send?(.cancel(taskID))
        kickSweeper(for: ContinuousClock.now + .milliseconds(settings.cancelGraceMs))
    }

    // MARK: Lease timer

    /// Ends leases whose deadline passed: lost without heartbeats, or cancelled without acknowledgement.
    public func run() async throws {
        await withGracefulShutdownHandler {
            while !Task.isCancelled && !isShuttingDown {
                // One step under the lock: a deadline added from now on finds the new one and wakes it if earlier.
                let sleeper = state.withLock { state in
                    let deadline = state.earliestDeadline ?? ContinuousClock.now + .seconds(60)
                    let sleeper = Task { _ = try? await Task.sleep(until: deadline, clock: .continuous) }
                    state.sleeper = sleeper
                    state.sleepingUntil = deadline
                    return sleeper
                }
                await withTaskCancellationHandler { await sleeper.value } onCancel: { sleeper.cancel() }
                expireLeases()
            }
        } onGracefulShutdown: {
            self.state.withLock { state in
                state.shuttingDown = true
                state.sleeper?.cancel()
            }
        }
    }

    private var isShuttingDown: Bool { state.withLock { $0.shuttingDown } }

    /// Wakes the lease timer if `deadline` comes before the one it sleeps until.
    /// Most do not (every lease runs as long), so an assignment rarely costs a wake-up.
    private func kickSweeper(for deadline: ContinuousClock.Instant) {
        let sleeper = state.withLock { state -> Task<Void, Never>? in
            guard deadline < state.sleepingUntil else { return nil }
            state.sleepingUntil = deadline
            return state.sleeper
        }
        sleeper?.cancel()
    }

    private func expireLeases() {
        let now = ContinuousClock.now
        let (expired, wakeups, stalledAgents, timedOut) = state.withLock { state in
            let before = Set(state.workers.filter { $0.value.stalled }.map(\.key))
            let (expired, wakeups) = state.expire(now: now)
            let agents = state.workers.filter { $0.value.stalled && !before.contains($0.key) }.flatMap(\.value.slots.keys)
            return (expired, wakeups, agents, state.expireTimeouts(now: now))
        }
        for attempt in timedOut { attempt.timeOut() }
        if !stalledAgents.isEmpty { reportCapacity(of: stalledAgents) }
        for (outcome, taskID, wasCancelling) in expired {
            outcome?(wasCancelling ? .failure(CancellationError()) : .failure(RunnerFailure(
                "the worker holding task \(taskID) sent no heartbeat within \(settings.leaseMs) ms", code: "lease_expired", retryable: true)))
        }
        wakeups.resume()
    }
}

/// A worker as ServerInfo and `fanout workers` show it.
public struct WorkerInfo: Sendable, Hashable {
    public var id: WorkerPool.WorkerID
    public var name: String
    public var uid: UInt32
    /// Agent → slots it serves.
    public var slots: [String: Int]
    /// Agent → slots free now.
    public var freeSlots: [String: Int]
    public var runningTasks: [TaskID]
}

/// The runner of one worker-served agent.
struct PoolRunner: Runner {
    let pool: WorkerPool
    let agent: String

    func run(_ context: RunContext) async throws -> RunOutput {
        try await pool.run(agent: agent, context: context)
    }
}
