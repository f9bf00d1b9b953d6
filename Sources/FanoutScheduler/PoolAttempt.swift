import FanoutCore
import Synchronization

/// An attempt on a worker that runs without a Swift task of its own
/// (`WorkerPool.start`): the pool sends it, and `end` is called once, from
/// whichever thread learns how it went. A wait for the task's children is the
/// one part that needs a Swift task, and takes one then. Its timeout, when it
/// has one, is kept by the pool's lease timer, which cancels it then.
final class PoolAttempt: Sendable {
    private struct State {
        var cancelled = false
        /// Cancelled by its timeout, before anyone else cancelled it.
        var timedOut = false
        var ended = false
        /// Set while the task waits for its children: the rest of the attempt runs in it.
        var childrenWait: Task<Void, Never>?
    }

    /// How it ended: what the worker (or the pool) said, whether it was cancelled, and whether by its timeout.
    typealias End = @Sendable (Result<RunOutput, any Error>, _ cancelled: Bool, _ timedOut: Bool) -> Void

    let taskID: TaskID
    /// Its place in the pool's queue while it waits for a slot.
    let waiterID: Int
    /// From its start, slot and children included (as `withAttemptTimeout` for a task); nil: none.
    let timeout: Duration?
    private let pool: WorkerPool
    private let onEnd: End
    private let state = Mutex(State())

    init(taskID: TaskID, waiterID: Int, timeout: Duration?, pool: WorkerPool, onEnd: @escaping End) {
        self.taskID = taskID
        self.waiterID = waiterID
        self.timeout = timeout
        self.pool = pool
        self.onEnd = onEnd
    }

    var isCancelled: Bool { state.withLock { $0.cancelled } }

    /// Stops the attempt: it leaves the queue, its worker is told, or its wait for children ends.
    func cancel() {
        let (first, childrenWait) = state.withLock { state in
            defer { state.cancelled = true }
            return (!state.cancelled && !state.ended, state.childrenWait)
        }
        guard first else { return }
        if let childrenWait {
            childrenWait.cancel()
        } else {
            pool.cancel(self)
        }
    }

    /// Its timeout passed: it is cancelled, and ends as timed out once it stopped.
    func timeOut() {
        let first = state.withLock { state in
            guard !state.cancelled, !state.ended else { return false }
            state.timedOut = true
            return true
        }
        if first { cancel() }
    }

    /// The attempt ended; later calls are ignored.
    func end(_ result: Result<RunOutput, any Error>) {
        let (first, cancelled, timedOut) = state.withLock { state in
            defer { state.ended = true }
            return (!state.ended, state.cancelled, state.timedOut)
        }
        guard first else { return }
        if timeout != nil { pool.forgetTimeout(of: self) }
        // A result taken just before the timeout cancelled it stands: its worker was told so.
        if case .success = result { return onEnd(result, cancelled, false) }
        onEnd(result, cancelled, timedOut)
    }

    /// Runs the rest of the attempt, from the wait for its children, in a Swift task.
    func waitForChildren(_ rest: @escaping @Sendable () async throws -> RunOutput) {
        let task = Task {
            let result: Result<RunOutput, any Error>
            do { result = .success(try await rest()) } catch { result = .failure(error) }
            end(result)
        }
        let cancelNow = state.withLock { state in
            state.childrenWait = task
            return state.cancelled
        }
        if cancelNow { task.cancel() }
    }
}

/// What runs an attempt, kept to cancel it: its Swift task, or its place on a worker.
enum AttemptHandle: Sendable {
    case task(Task<Void, Never>)
    case worker(PoolAttempt)

    func cancel() {
        switch self {
        case .task(let task): task.cancel()
        case .worker(let attempt): attempt.cancel()
        }
    }
}
