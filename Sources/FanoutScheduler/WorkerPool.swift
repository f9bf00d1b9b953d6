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
        case assign(RunContext, leaseMs: Int64)
        case cancel(TaskID)
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

    public init(settings: Settings = Settings(), allowedUIDs: [String: Set<UInt32>] = [:]) {
        self.settings = settings
        self.allowedUIDs = allowedUIDs
    }

    /// The runner the scheduler uses for `agent`.
    public func runner(for agent: String) -> any Runner { PoolRunner(pool: self, agent: agent) }

    // MARK: Sessions

    /// Adds a worker serving `agents` (name → concurrency). Refuses an agent
    /// this uid may not serve, naming it.
    public func register(name: String, uid: UInt32, isAdmin: Bool, agents: [String: Int],
                         send: @escaping @Sendable (Command) -> Void) throws(FanoutError) -> WorkerID {
        for agent in agents.keys.sorted() where !(isAdmin || allowedUIDs[agent]?.contains(uid) == true) {
            throw .permissionDenied("uid \(uid) may not serve agent \"\(agent)\"; its worker_uids do not list it")
        }
        if let (agent, slots) = agents.first(where: { $0.value < 1 }) {
            throw .invalidArgument("agent \"\(agent)\": concurrency must be at least 1, not \(slots)")
        }
        let wakeups = state.withLock { state in
            state.addWorker(PoolState.Worker(name: name, uid: uid, slots: agents, send: send))
        }
        wakeups.resume()
        return wakeups.workerID
    }

    /// The worker is gone: the attempts it held fail as `worker_lost` and run again.
    public func unregister(_ worker: WorkerID) {
        let ended = state.withLock { $0.removeWorker(worker) }
        for (continuation, taskID) in ended {
            continuation.resume(returning: .failure(RunnerFailure(
                "the worker running task \(taskID) disconnected", code: "worker_lost", retryable: true)))
        }
    }

    /// Extends the leases of the tasks the worker says it holds.
    public func heartbeat(_ worker: WorkerID, taskIDs: [TaskID]) {
        let deadline = ContinuousClock.now + .milliseconds(settings.leaseMs)
        state.withLock { state in
            for id in taskIDs where state.leases[id]?.worker == worker && state.leases[id]?.cancelling == false {
                state.leases[id]?.deadline = deadline
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

    /// The worker stopped a cancelled task: its slot is free.
    public func cancelAcknowledged(_ worker: WorkerID, taskID: TaskID) {
        let (continuation, wakeups) = state.withLock { state in
            guard state.leases[taskID]?.worker == worker, state.leases[taskID]?.cancelling == true else {
                return (nil as CheckedContinuation<AttemptResult, Never>?, PoolState.Wakeups())
            }
            return state.endLease(taskID)
        }
        continuation?.resume(returning: .failure(CancellationError()))
        wakeups.resume()
    }

    /// Every worker: its agents, free slots and the tasks it runs.
    public var workers: [WorkerInfo] { state.withLock { $0.workerInfos() } }

    private func finish(_ worker: WorkerID, taskID: TaskID, with result: AttemptResult) -> ReportStatus {
        let (status, continuation, wakeups) = state.withLock { state -> (ReportStatus, CheckedContinuation<AttemptResult, Never>?, PoolState.Wakeups) in
            let status = state.status(of: taskID, for: worker)
            guard status == .accepted else { return (status, nil, PoolState.Wakeups()) }
            let (continuation, wakeups) = state.endLease(taskID)
            return (status, continuation, wakeups)
        }
        continuation?.resume(returning: result)
        wakeups.resume()
        return status
    }

    // MARK: Attempts

    typealias AttemptResult = Result<RunOutput, any Error>

    /// One attempt on a worker: wait for a slot, send, wait for the outcome.
    func run(agent: String, context: RunContext) async throws -> RunOutput {
        let taskID = context.taskID
        let worker = try await acquireSlot(agent: agent, taskID: taskID)
        let result: AttemptResult = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                enum Next { case send(@Sendable (Command) -> Void), lost, cancelled(PoolState.Wakeups) }
                let next = state.withLock { state -> Next in
                    guard let lease = state.leases[taskID], let send = state.workers[worker]?.send else { return .lost }
                    if lease.cancelling {
                        // Cancelled before it was sent: the worker never hears of it.
                        return .cancelled(state.endLease(taskID).1)
                    }
                    state.leases[taskID]?.continuation = continuation
                    state.leases[taskID]?.reportTurn = context.reportTurn
                    state.leases[taskID]?.sent = true
                    // The lease runs from the moment the worker is sent the task.
                    state.leases[taskID]?.deadline = ContinuousClock.now + .milliseconds(settings.leaseMs)
                    return .send(send)
                }
                switch next {
                case .cancelled(let wakeups):
                    continuation.resume(returning: .failure(CancellationError()))
                    wakeups.resume()
                    return
                case .lost:
                    // The worker went away between the slot and the send.
                    continuation.resume(returning: .failure(RunnerFailure("the worker went away before task \(taskID) reached it",
                                                                          code: "worker_lost", retryable: true)))
                case .send(let send):
                    send(.assign(context, leaseMs: settings.leaseMs))
                    kickSweeper()
                }
            }
        } onCancel: {
            requestCancel(taskID)
        }
        return try result.get()
    }

    /// Waits until a worker allowed to serve `agent` has a free slot, and takes it for `taskID`.
    private func acquireSlot(agent: String, taskID: TaskID) async throws -> WorkerID {
        let waiterID = state.withLock { $0.nextWaiterID() }
        let worker: WorkerID? = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let taken = state.withLock { state in
                    state.takeSlot(agent: agent, taskID: taskID, deadline: ContinuousClock.now + .milliseconds(settings.leaseMs),
                                   waiter: waiterID, continuation: continuation)
                }
                if let taken { continuation.resume(returning: taken) }
            }
        } onCancel: {
            let continuation = state.withLock { $0.removeWaiter(waiterID) }
            continuation?.resume(returning: nil)
        }
        guard let worker else { throw CancellationError() }
        return worker
    }

    private func requestCancel(_ taskID: TaskID) {
        let send = state.withLock { state -> (@Sendable (Command) -> Void)? in
            guard let lease = state.leases[taskID], !lease.cancelling else { return nil }
            state.leases[taskID]?.cancelling = true
            state.leases[taskID]?.deadline = ContinuousClock.now + .milliseconds(settings.cancelGraceMs)
            // Not sent yet: `run` sees the flag and never sends it.
            return lease.sent ? state.workers[lease.worker]?.send : nil
        }
        send?(.cancel(taskID))
        kickSweeper()
    }

    // MARK: Lease timer

    /// Ends leases whose deadline passed: lost without heartbeats, or cancelled without acknowledgement.
    public func run() async throws {
        await withGracefulShutdownHandler {
            while !Task.isCancelled && !isShuttingDown {
                let deadline = state.withLock { $0.earliestDeadline } ?? ContinuousClock.now + .seconds(60)
                let sleeper = Task { _ = try? await Task.sleep(until: deadline, clock: .continuous) }
                state.withLock { $0.sleeper = sleeper }
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

    private func kickSweeper() {
        state.withLock { $0.sleeper }?.cancel()
    }

    private func expireLeases() {
        let now = ContinuousClock.now
        let (expired, wakeups) = state.withLock { $0.expire(now: now) }
        for (continuation, taskID, wasCancelling) in expired {
            continuation?.resume(returning: wasCancelling ? .failure(CancellationError()) : .failure(RunnerFailure(
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
