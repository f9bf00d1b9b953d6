import FanoutCore
import FanoutScheduler
import FanoutWire
import NIOCore
import Synchronization

/// Serves one worker session stream: registers the worker with the pool,
/// sends it assignments and cancels, and hands its reports to the pool,
/// answering each result or failure with an acknowledgement. When the
/// stream ends, however it ends, the worker leaves the pool and the tasks
/// it held run again elsewhere.
///
/// The worker's messages are handled by the connection's read loop, on the
/// event loop that read them, and the pool's commands are written by the
/// thread that sends them (`WorkerOutbound`): a task goes out and its result
/// comes back without waking a session task (docs/PERFORMANCE.md, worker path).
/// The session's own task writes only what must wait for the store (a resumed
/// task's children's results), and ends the session.
final class WorkerSessionServer: Sendable {
    private struct Lifecycle {
        var ended = false
        /// Messages being handled now: the session ends after them.
        var handling = 0
        var endWaiter: CheckedContinuation<Void, Never>?
    }

    let pool: WorkerPool
    let service: FanoutService
    let worker: WorkerPool.WorkerID
    let streamID: UInt32
    /// What the read loop waits on while the channel is full: a worker that sends
    /// faster than it reads is slowed down by the channel's backpressure.
    let writer: FrameWriter
    let outbound: WorkerOutbound
    private let lifecycle = Mutex(Lifecycle())

    private init(pool: WorkerPool, service: FanoutService, worker: WorkerPool.WorkerID, streamID: UInt32, writer: FrameWriter,
                 outbound: WorkerOutbound) {
        self.pool = pool
        self.service = service
        self.worker = worker
        self.streamID = streamID
        self.writer = writer
        self.outbound = outbound
    }

    /// Registers the worker, or says why not (the stream then ends with it).
    static func open(_ register: WorkerRegister, pool: WorkerPool, service: FanoutService, peer: PeerCredentials,
                     streamID: UInt32, writer: FrameWriter, channel: any Channel) -> Result<WorkerSessionServer, WireStatus> {
        guard !register.agents.isEmpty else {
            return .failure(WireStatus(code: .invalidArgument, message: "a worker registers at least one agent"))
        }
        var agents: [String: Int] = [:]
        var maxTurns: [String: Int] = [:]
        for agent in register.agents {
            guard agents[agent.name] == nil else {
                return .failure(WireStatus(code: .invalidArgument, message: "agent \"\(agent.name.prefix(100))\" is registered twice"))
            }
            if let problem = BatchValidation.agentNameProblem(agent.name) {
                return .failure(WireStatus(code: .invalidArgument, message: problem))
            }
            agents[agent.name] = Int(agent.concurrency)
            maxTurns[agent.name] = Int(agent.maxTurns)
        }
        let outbound = WorkerOutbound(channel: channel, streamID: streamID, maxFrameBytes: service.configuration.maxFrameBytes)
        // Set once registered; until then what the pool sends is held back, unencoded.
        let registered = Mutex<WorkerPool.WorkerID?>(nil)
        do {
            let worker = try pool.register(name: register.workerName, uid: peer.uid, isAdmin: peer.isAdmin, agents: agents,
                                           maxTurns: maxTurns, send: { [pool] command in
                guard let problem = outbound.send(command), let worker = registered.withLock({ $0 }) else { return }
                // Not from here: failing the attempt starts the next task, whose send would fail the same way
                // and recurse once per task.
                channel.eventLoop.execute { failUnsendable(command, problem, pool: pool, worker: worker) }
            })
            registered.withLock { $0 = worker }
            // Written here, on the read loop, before any answer to the worker's next messages.
            for (command, problem) in outbound.acknowledgeRegistration() {
                failUnsendable(command, problem, pool: pool, worker: worker)
            }
            return .success(WorkerSessionServer(pool: pool, service: service, worker: worker, streamID: streamID,
                                                writer: writer, outbound: outbound))
        } catch {
            outbound.close()
            return .failure(WireStatus(error))
        }
    }

    /// An assignment too large for the worker's frames: this attempt cannot reach it, nor would the next.
    private static func failUnsendable(_ command: WorkerPool.Command, _ problem: WireError, pool: WorkerPool,
                                       worker: WorkerPool.WorkerID) {
        guard case .assign(let context, _, _) = command else { return }
        _ = pool.fail(worker, taskID: context.taskID, failure: RunnerFailure(
            "the task cannot be sent to its worker: \(problem)", code: "assignment_unsendable", retryable: false))
    }

    /// Runs until the session ends: writes what was queued, then takes the worker out of the pool.
    func serve() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [self] in
                do {
                    for await command in outbound.queuedCommands {
                        guard !isEnded else { break }
                        try await outbound.writeQueued { try await write(command) }
                    }
                } catch {
                    // The connection is gone, or the session ends: it ends with it.
                    end()
                }
            }
            await withTaskCancellationHandler { await waitForEnd() } onCancel: { end() }
            group.cancelAll()
        }
        pool.unregister(worker)
        outbound.close()
    }

    private var isEnded: Bool { lifecycle.withLock { $0.ended } }

    /// Ends the session once the messages being handled are: later ones are ignored.
    func end() {
        let waiter = lifecycle.withLock { state -> CheckedContinuation<Void, Never>? in
            state.ended = true
            guard state.handling == 0 else { return nil }
            defer { state.endWaiter = nil }
            return state.endWaiter
        }
        waiter?.resume()
    }

    private func waitForEnd() async {
        await withCheckedContinuation { continuation in
            let now = lifecycle.withLock { state -> Bool in
                if state.ended && state.handling == 0 { return true }
                state.endWaiter = continuation
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// Handles one of the worker's messages, in the order they were read.
    func handle(_ message: WorkerMessage) async {
        let open = lifecycle.withLock { state -> Bool in
            guard !state.ended else { return false }
            state.handling += 1
            return true
        }
        guard open else { return }
        await handleOpen(message)
        let waiter = lifecycle.withLock { state -> CheckedContinuation<Void, Never>? in
            state.handling -= 1
            guard state.ended, state.handling == 0 else { return nil }
            defer { state.endWaiter = nil }
            return state.endWaiter
        }
        waiter?.resume()
    }

    /// Writes a queued command: a resumed assignment with its children's results.
    private func write(_ command: WorkerPool.Command) async throws {
        do {
            try await outbound.write(Self.message(for: command))
        } catch let problem as WireError {
            return Self.failUnsendable(command, problem, pool: pool, worker: worker)
        }
        guard case .assign(let context, _, resumed: true) = command else { return }
        do {
            try await sendChildren(of: context)
        } catch let error as WireError {
            throw error
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            // The children's results could not be read: the attempt fails (and may run
            // again), rather than the session silently stopping its assignments.
            _ = pool.fail(worker, taskID: context.taskID, failure: RunnerFailure(
                "reading the children's results failed: \(error)", code: "children_unreadable", retryable: true))
            try await outbound.write(.cancel(taskID: UInt64(context.taskID)))
        }
    }

    private func handleOpen(_ message: WorkerMessage) async {
        pool.heard(from: worker)
        switch message {
        case .heartbeat(let taskIDs):
            pool.heartbeat(worker, taskIDs: taskIDs.map { TaskID(clamping: $0) })
        case .turn(let taskID, let turns):
            let status = await pool.turn(worker, taskID: TaskID(clamping: taskID), turns: Int(turns))
            if status != .accepted { await reply(.ack(taskID: taskID, status: Self.status(status, taskID))) }
        case .result(let taskID, let result, let usage):
            let details = ResponseDetails(usage: usage.map {
                FanoutCore.TokenUsage(promptTokens: Int64(clamping: $0.promptTokens), completionTokens: Int64(clamping: $0.completionTokens),
                                      totalTokens: Int64(clamping: $0.totalTokens == 0 ? $0.promptTokens + $0.completionTokens : $0.totalTokens))
            })
            let status = pool.complete(worker, taskID: TaskID(clamping: taskID), output: RunOutput(result: result, details: details))
            // Any answer about a cancelled task acknowledges the cancel: its slot is free.
            if status == .cancelled { pool.cancelAcknowledged(worker, taskID: TaskID(clamping: taskID)) }
            await reply(.ack(taskID: taskID, status: Self.status(status, taskID)))
        case .failure(let taskID, let error, let retryAfterMs):
            let failure = RunnerFailure(error.message, code: error.code, retryable: error.retryable,
                                        retryAfterMs: retryAfterMs == 0 ? nil : Int64(clamping: retryAfterMs))
            let status = pool.fail(worker, taskID: TaskID(clamping: taskID), failure: failure)
            if status == .cancelled { pool.cancelAcknowledged(worker, taskID: TaskID(clamping: taskID)) }
            await reply(.ack(taskID: taskID, status: Self.status(status, taskID)))
        case .spawn(let taskID, let children):
            // Checked and stored off the event loop: up to `max_children_per_task` tasks in one frame.
            await reply(await Task { await spawn(taskID, children) }.value)
        case .waitChildren(let taskID, let timeoutMs):
            let status = pool.waitForChildren(worker, taskID: TaskID(clamping: taskID),
                                              timeoutMs: timeoutMs == 0 ? nil : Int64(clamping: timeoutMs))
            // Accepted: the answer is the resumed assignment, once the children have ended.
            if status != .accepted { await reply(.ack(taskID: taskID, status: Self.status(status, taskID))) }
        case .drain:
            pool.drain(worker)
        }
    }

    private func spawn(_ taskID: UInt64, _ request: EnqueueBatchRequest) async -> ServerToWorker {
        // Owner, creator and parent are the spawning task's: the pool sets them.
        let children = FanoutService.newBatch(request, tasks: request.tasks, creatorUID: 0)
        do {
            let (status, batch) = try await pool.spawn(worker, taskID: TaskID(clamping: taskID), children: children)
            guard let batch else { return .spawned(taskID: taskID, childBatchID: 0, status: Self.status(status, taskID)) }
            return .spawned(taskID: taskID, childBatchID: UInt64(batch.id), status: .ok)
        } catch {
            let status = (error as? FanoutError).map(WireStatus.init) ?? WireStatus(code: .internal, message: "\(error)")
            return .spawned(taskID: taskID, childBatchID: 0, status: status)
        }
    }

    /// A resumed task's children's results: every child batch, oldest first, in pages that fit a frame.
    private func sendChildren(of context: RunContext) async throws {
        let taskID = UInt64(context.taskID)
        // Each page is held back until the next is read, so the last one goes out marked as such.
        var held: (batch: UInt64, results: [TaskResult])?
        for batch in try await context.children?.batches() ?? [] {
            var after: UInt64 = 0
            while true {
                let page = try await service.resultsPage(batchID: UInt64(batch.id), afterTaskID: after, pageSize: 1_000)
                guard let last = page.last else { break }
                if let previous = held {
                    try await outbound.write(.childrenDone(taskID: taskID, childBatchID: previous.batch, results: previous.results, last: false))
                }
                held = (UInt64(batch.id), page)
                after = last.taskID
            }
        }
        let final = held ?? (batch: 0, results: [])
        try await outbound.write(.childrenDone(taskID: taskID, childBatchID: final.batch, results: final.results, last: true))
    }

    /// A result's or failure's acknowledgement: OK, or why it was not taken.
    static func status(_ status: WorkerPool.ReportStatus, _ taskID: UInt64) -> WireStatus {
        switch status {
        case .accepted: .ok
        case .unknownTask: WireStatus(code: .notFound, message: "this worker does not hold task \(taskID)")
        case .leaseLost: WireStatus(code: .failedPrecondition,
                                    message: "task \(taskID)'s lease was lost (no heartbeat in time); another attempt runs it")
        case .cancelled: WireStatus(code: .cancelled, message: "task \(taskID) was cancelled; its outcome is kept as cancelled")
        }
    }

    static func message(for command: WorkerPool.Command) -> ServerToWorker {
        switch command {
        case .assign(let context, let leaseMs, let resumed):
            var task = TaskInfo()
            task.id = UInt64(context.taskID)
            task.batchID = UInt64(context.batchID)
            task.customID = context.customID
            task.agent = context.agent
            task.status = .running
            task.attempt = UInt32(clamping: context.attempt)
            task.maxTurns = UInt32(clamping: context.maxTurns)
            task.timeoutMs = UInt64(clamping: context.timeoutMs ?? 0)
            task.payload = context.payload
            task.url = context.url ?? ""
            task.parentTaskID = 0
            return .assignment(task: task, leaseMs: UInt64(clamping: leaseMs), resumed: resumed)
        case .cancel(let taskID):
            return .cancel(taskID: UInt64(taskID))
        }
    }

    /// An answer to one of the worker's messages. A connection already gone is no reason to stop:
    /// what the worker sent before it went (a last result) is still recorded.
    private func reply(_ message: ServerToWorker) async {
        outbound.reply(message)
        await outbound.waitForRoom(writer)
    }
}
