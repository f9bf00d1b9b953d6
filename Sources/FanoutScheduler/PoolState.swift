import FanoutCore

/// The worker pool's bookkeeping, behind its lock: workers and their
/// slots, attempts waiting for a slot, and the leases of assigned tasks.
/// Nothing here awaits; what ends an attempt or grants it a slot is handed
/// back to be called outside the lock.
struct PoolState {
    typealias AttemptResult = Result<RunOutput, any Error>
    /// Hands an attempt its outcome: resumes the Swift task awaiting it, or ends an attempt run without one.
    typealias Outcome = @Sendable (AttemptResult) -> Void
    /// Hands a waiting attempt its slot, or nil when it stopped waiting.
    typealias Grant = @Sendable (WorkerPool.WorkerID?) -> Void

    struct Worker {
        var name: String
        var uid: UInt32
        /// Agent → slots.
        var slots: [String: Int]
        /// Agent → `max_turns`, for agents the worker declares.
        var maxTurns: [String: Int] = [:]
        var send: @Sendable (WorkerPool.Command) -> Void
        /// Agent → tasks running there now.
        var running: [String: Int] = [:]
        /// Takes no new tasks.
        var draining = false
        /// A lease of its ran out without a heartbeat: it gets no new task until it is heard from again,
        /// so a worker that stopped reading does not swallow task after task.
        var stalled = false

        var takesTasks: Bool { !draining && !stalled }

        func hasFreeSlot(for agent: String) -> Bool { takesTasks && (running[agent] ?? 0) < (slots[agent] ?? 0) }
    }

    /// Who a slot may be given to.
    struct SlotRequirement {
        /// Only a worker of this uid (agents declared by a worker run only their uid's tasks).
        var uid: UInt32?
        /// This worker while it is connected (a parent resuming where its handler waits).
        var worker: WorkerPool.WorkerID?
    }

    struct Lease {
        var worker: WorkerPool.WorkerID
        var agent: String
        /// The waiter the slot was taken for: which attempt of the task holds it.
        var waiter: Int
        var deadline: ContinuousClock.Instant
        /// Set once the task is sent: how the attempt learns its outcome.
        var outcome: Outcome?
        var reportTurn: (@Sendable () async -> Void)?
        var children: (any ChildTasks)?
        var sent = false
        var cancelling = false
    }

    struct Waiter {
        var id: Int
        var agent: String
        var taskID: TaskID
        var requirement: SlotRequirement
        var deadline: ContinuousClock.Instant
        var grant: Grant
    }

    /// Attempts given a slot by a change, to be resumed outside the lock.
    struct Wakeups {
        var workerID: WorkerPool.WorkerID = 0
        var granted: [(Grant, WorkerPool.WorkerID)] = []

        func resume() {
            for (grant, worker) in granted { grant(worker) }
        }
    }

    var workers: [WorkerPool.WorkerID: Worker] = [:]
    var leases: [TaskID: Lease] = [:]
    /// Attempts run without a Swift task that have a timeout, by when it passes.
    var attemptTimeouts: [ObjectIdentifier: (deadline: ContinuousClock.Instant, attempt: PoolAttempt)] = [:]
    /// Waiting attempts, oldest first.
    var waiters: [Waiter] = []
    var shuttingDown = false
    var sleeper: Task<Void, Never>?
    /// When the lease timer wakes next by itself.
    var sleepingUntil = ContinuousClock.now
    private var lastWorkerID: WorkerPool.WorkerID = 0
    private var lastWaiterID = 0

    mutating func nextWaiterID() -> Int {
        lastWaiterID += 1
        return lastWaiterID
    }

    mutating func addWorker(_ worker: Worker) -> Wakeups {
        lastWorkerID += 1
        workers[lastWorkerID] = worker
        var wakeups = grantWaiters()
        wakeups.workerID = lastWorkerID
        return wakeups
    }

    /// Removes a worker; returns the attempts it held that await an outcome, and waiters it lets through.
    mutating func removeWorker(_ id: WorkerPool.WorkerID) -> ([(Outcome, TaskID)], Wakeups) {
        workers[id] = nil
        var ended: [(Outcome, TaskID)] = []
        for (taskID, lease) in leases where lease.worker == id {
            leases[taskID] = nil
            if let outcome = lease.outcome { ended.append((outcome, taskID)) }
        }
        return (ended, unpinWaiters(from: id))
    }

    /// Waiters pinned to `worker` (parents resuming where their handler waits) may go to any
    /// worker now; returns those that get a slot at once.
    mutating func unpinWaiters(from worker: WorkerPool.WorkerID) -> Wakeups {
        for index in waiters.indices where waiters[index].requirement.worker == worker { waiters[index].requirement.worker = nil }
        return grantWaiters()
    }

    /// A slot for `taskID` now, or nil after queueing the waiter.
    mutating func takeSlot(agent: String, taskID: TaskID, requirement: SlotRequirement, deadline: ContinuousClock.Instant,
                           waiter: Int, grant: @escaping Grant) -> WorkerPool.WorkerID? {
        var requirement = requirement
        if let only = requirement.worker, workers[only] == nil { requirement.worker = nil }
        if let worker = freeWorker(for: agent, requirement) {
            assign(taskID, agent: agent, to: worker, deadline: deadline, waiter: waiter)
            return worker
        }
        waiters.append(Waiter(id: waiter, agent: agent, taskID: taskID, requirement: requirement, deadline: deadline,
                              grant: grant))
        return nil
    }

    /// The slots the workers that take tasks offer for `agent`.
    func offeredSlots(for agent: String) -> Int {
        workers.values.reduce(0) { $0 + ($1.takesTasks ? $1.slots[agent] ?? 0 : 0) }
    }

    /// Who declared `agent` (not in the configuration) and its `max_turns`: its first connected worker.
    func declaration(of agent: String) -> WorkerPool.AgentDeclaration? {
        workers.sorted { $0.key < $1.key }.first { $0.value.slots[agent] != nil }.map {
            WorkerPool.AgentDeclaration(uid: $0.value.uid, maxTurns: $0.value.maxTurns[agent] ?? 0)
        }
    }

    mutating func removeWaiter(_ id: Int) -> Grant? {
        guard let index = waiters.firstIndex(where: { $0.id == id }) else { return nil }
        return waiters.remove(at: index).grant
    }

    /// How a report from `worker` about `taskID` is received.
    func status(of taskID: TaskID, for worker: WorkerPool.WorkerID) -> WorkerPool.ReportStatus {
        guard let lease = leases[taskID] else { return .unknownTask }
        guard lease.worker == worker else { return .leaseLost }
        return lease.cancelling ? .cancelled : .accepted
    }

    /// Ends a lease and frees its slot for the next waiter.
    mutating func endLease(_ taskID: TaskID) -> (Outcome?, Wakeups) {
        guard let lease = leases.removeValue(forKey: taskID) else { return (nil, Wakeups()) }
        workers.modifyValue(forKey: lease.worker) { $0.running[lease.agent, default: 1] -= 1 }
        return (lease.outcome, grantWaiters())
    }

    var earliestDeadline: ContinuousClock.Instant? {
        let lease = leases.values.filter { $0.outcome != nil }.map(\.deadline).min()
        let timeout = attemptTimeouts.values.map(\.deadline).min()
        guard let lease, let timeout else { return lease ?? timeout }
        return min(lease, timeout)
    }

    /// Removes and returns the attempts whose timeout passed.
    mutating func expireTimeouts(now: ContinuousClock.Instant) -> [PoolAttempt] {
        let expired = attemptTimeouts.filter { $0.value.deadline <= now }
        for key in expired.keys { attemptTimeouts[key] = nil }
        return expired.values.map(\.attempt)
    }

    /// Ends the leases past their deadline; says whether each was being cancelled.
    mutating func expire(now: ContinuousClock.Instant)
        -> ([(Outcome?, TaskID, Bool)], Wakeups) {
        var expired: [(Outcome?, TaskID, Bool)] = []
        var wakeups = Wakeups()
        for (taskID, lease) in leases where lease.outcome != nil && lease.deadline <= now {
            // Marked before its slot is given back, so the slot does not go straight back to it.
            if !lease.cancelling { workers.modifyValue(forKey: lease.worker) { $0.stalled = true } }
            let (outcome, granted) = endLease(taskID)
            expired.append((outcome, taskID, lease.cancelling))
            wakeups.granted += granted.granted
        }
        return (expired, wakeups)
    }

    func workerInfos() -> [WorkerInfo] {
        workers.sorted { $0.key < $1.key }.map { id, worker in
            WorkerInfo(id: id, name: worker.name, uid: worker.uid, slots: worker.slots,
                       freeSlots: worker.slots.mapValues { $0 }.merging(worker.running) { slots, running in slots - running },
                       runningTasks: leases.filter { $0.value.worker == id }.map(\.key).sorted())
        }
    }

    // MARK: Private

    /// The worker with the most free slots for `agent` (spreading work) that `requirement` allows, if any
    /// has one; the oldest among equals.
    private func freeWorker(for agent: String, _ requirement: SlotRequirement) -> WorkerPool.WorkerID? {
        if let only = requirement.worker { return workers[only]?.hasFreeSlot(for: agent) == true ? only : nil }
        var best: (id: WorkerPool.WorkerID, free: Int)?
        for (id, worker) in workers where worker.hasFreeSlot(for: agent) && (requirement.uid.map { $0 == worker.uid } ?? true) {
            let free = (worker.slots[agent] ?? 0) - (worker.running[agent] ?? 0)
            if best == nil || free > best!.free || (free == best!.free && id < best!.id) { best = (id, free) }
        }
        return best?.id
    }

    private mutating func assign(_ taskID: TaskID, agent: String, to worker: WorkerPool.WorkerID, deadline: ContinuousClock.Instant,
                                 waiter: Int) {
        workers.modifyValue(forKey: worker) { $0.running[agent, default: 0] += 1 }
        leases[taskID] = Lease(worker: worker, agent: agent, waiter: waiter, deadline: deadline)
    }

    /// Gives free slots to waiting attempts, oldest first.
    private mutating func grantWaiters() -> Wakeups {
        var wakeups = Wakeups()
        var index = 0
        while index < waiters.count {
            let waiter = waiters[index]
            if let worker = freeWorker(for: waiter.agent, waiter.requirement) {

                waiters.remove(at: index)
                assign(waiter.taskID, agent: waiter.agent, to: worker, deadline: waiter.deadline, waiter: waiter.id)
                wakeups.granted.append((waiter.grant, worker))
            } else {
                index += 1
            }
        }
        return wakeups
    }
}
