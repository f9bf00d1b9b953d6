import FanoutWire
import Synchronization

/// One worker session on one connection: registers the agents, runs each
/// assignment's handler, answers the daemon's requests, and heartbeats the
/// tasks it runs. It ends when the connection does, or once drained.
final class WorkerSession: Sendable {
    /// A task this session holds.
    private struct Entry {
        /// Which handler run holds the task: one still unwinding from an earlier assignment is stale.
        var generation: UInt64 = 0
        var handle: Task<Void, Never>?
        /// Waiting for its children: the daemon holds no lease on it, so no heartbeat.
        var waiting = false
        var spawnReply: CheckedContinuation<UInt64, any Error>?
        var childrenReply: CheckedContinuation<[ChildBatch], any Error>?
        /// Pages of a resumed task's children, until the last one.
        var collected: [ChildBatch] = []
        /// A resumed task with no handler here yet: it starts once its children's pages are in.
        var startWhenCollected: TaskInfo?
    }

    private struct State {
        var registered = false
        var generations: UInt64 = 0
        var tasks: [UInt64: Entry] = [:]
        var leaseMs: UInt64 = 30_000
        var draining = false
    }

    private let client: FanoutClient
    private let streamID: UInt32
    private let frames: FrameStream
    private let agents: [String: WorkerAgent]
    private let state = Mutex(State())
    /// Fired once draining and no handler runs.
    private let drained = Signal()

    private init(client: FanoutClient, streamID: UInt32, frames: FrameStream, agents: [String: WorkerAgent]) {
        self.client = client
        self.streamID = streamID
        self.frames = frames
        self.agents = agents
    }

    /// Opens the session; `run` reads the daemon's answer to the registration.
    static func open(on client: FanoutClient, name: String, agents: [WorkerAgent]) async throws -> WorkerSession {
        let register = WorkerRegister(workerName: name, agents: agents.map {
            AgentRegistration(name: $0.name, concurrency: UInt32(clamping: $0.concurrency), maxTurns: UInt32(clamping: $0.maxTurns))
        })
        let (id, frames) = try await client.connection.open(.workerSession(register))
        let byName = Dictionary(agents.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        return WorkerSession(client: client, streamID: id, frames: frames, agents: byName)
    }

    /// Whether the daemon accepted the registration.
    var isRegistered: Bool { state.withLock { $0.registered } }

    /// Serves assignments until the connection ends (an error) or the session has drained (returns).
    func run() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await self.heartbeat() }
            group.addTask {
                do {
                    for try await frame in self.frames {
                        switch frame.kind {
                        case .message(.toWorker(.ack(taskID: 0, let status))) where !self.isRegistered:
                            // The first message answers the registration.
                            guard status.code == .ok else { throw FanoutClientError(status) }
                            self.state.withLock { $0.registered = true }
                        case .message(.toWorker(let message)): self.receive(message)
                        case .end(let status): throw FanoutClientError(status)
                        default: continue
                        }
                    }
                    throw FanoutClientError.connectionLost()
                } catch {
                    if self.state.withLock({ $0.draining && $0.tasks.values.allSatisfy(\.waiting) }) { return }
                    throw error
                }
            }
            group.addTask { await self.drained.wait() }
            // Whichever ends first ends the session: drained, or the connection lost.
            defer { group.cancelAll() }
            try await group.next()
        }
        stopAll(FanoutClientError.connectionLost())
    }

    // MARK: Draining

    /// Takes no new tasks; the session ends once no handler runs (waiting ones are handed back).
    func drain() async {
        let first = state.withLock { state in
            defer { state.draining = true }
            return !state.draining
        }
        if first { try? await send(.drain) }
        resumeDrainedIfIdle()
    }

    private func resumeDrainedIfIdle() {
        if state.withLock({ $0.draining && $0.tasks.values.allSatisfy(\.waiting) }) { drained.fire() }
    }

    /// Handlers still running when the session ends stop; the daemon runs their tasks again.
    private func stopAll(_ error: any Error) {
        let entries = state.withLock { state in
            defer { state.tasks = [:] }
            return state.tasks.values
        }
        for entry in entries {
            entry.handle?.cancel()
            entry.spawnReply?.resume(throwing: error)
            entry.childrenReply?.resume(throwing: error)
        }
    }

    // MARK: From the daemon

    private func receive(_ message: ServerToWorker) {
        switch message {
        case .assignment(let task, let leaseMs, let resumed):
            state.withLock { $0.leaseMs = max(300, leaseMs) }
            if resumed {
                // Its children's results follow; a handler waiting here gets them, or a new one starts with them.
                // Either way the task holds a lease again from now: it is heartbeated.
                state.withLock { state in
                    if state.tasks[task.id]?.childrenReply == nil { state.tasks[task.id, default: Entry()].startWhenCollected = task }
                    state.tasks[task.id]?.collected = []
                    state.tasks[task.id]?.waiting = false
                }
            } else {
                start(task, earlierChildren: [])
            }
        case .childrenDone(let taskID, let batchID, let results, let last):
            collect(taskID, batchID: batchID, results: results, last: last)
        case .cancel(let taskID):
            let entry = state.withLock { $0.tasks[taskID] }
            entry?.handle?.cancel()
        case .spawned(let taskID, let batchID, let status):
            let reply = state.withLock { state in
                defer { state.tasks[taskID]?.spawnReply = nil }
                return state.tasks[taskID]?.spawnReply
            }
            if status.code == .ok { reply?.resume(returning: batchID) } else { reply?.resume(throwing: FanoutClientError(status)) }
        case .ack(let taskID, let status):
            // A refused wait is answered here; refused results and turns need nothing more.
            guard status.code != .ok else { return }
            let reply = state.withLock { state in
                defer { state.tasks[taskID]?.childrenReply = nil }
                return state.tasks[taskID]?.childrenReply
            }
            reply?.resume(throwing: FanoutClientError(status))
        }
    }

    private func collect(_ taskID: UInt64, batchID: UInt64, results: [TaskResult], last: Bool) {
        enum Next { case none, resume(CheckedContinuation<[ChildBatch], any Error>, [ChildBatch]), start(TaskInfo, [ChildBatch]) }
        let next = state.withLock { state -> Next in
            guard var entry = state.tasks[taskID] else { return .none }
            if batchID != 0 {
                if entry.collected.last?.batchID == batchID {
                    entry.collected[entry.collected.count - 1].results += results
                } else {
                    entry.collected.append(ChildBatch(batchID: batchID, results: results))
                }
            }
            defer { state.tasks[taskID] = entry }
            guard last else { return .none }
            let children = entry.collected
            entry.collected = []
            if let reply = entry.childrenReply {
                entry.childrenReply = nil
                entry.waiting = false
                return .resume(reply, children)
            }
            if let task = entry.startWhenCollected {
                entry.startWhenCollected = nil
                return .start(task, children)
            }
            return .none
        }
        switch next {
        case .none: break
        case .resume(let reply, let children): reply.resume(returning: children)
        case .start(let task, let children): start(task, earlierChildren: children)
        }
    }

    // MARK: Handlers

    private func start(_ task: TaskInfo, earlierChildren: [ChildBatch]) {
        guard let agent = agents[task.agent] else {
            Task { try? await send(.failure(taskID: task.id, error: TaskError(message: "this worker does not run agent \"\(task.agent)\"",
                                                                              code: "no_handler"), retryAfterMs: 0)) }
            return
        }
        let context = WorkerTaskContext(task: task, session: self, earlierChildren: earlierChildren)
        let generation = state.withLock { state in
            state.generations += 1
            state.tasks[task.id] = Entry(generation: state.generations)
            return state.generations
        }
        let handle = Task {
            let outcome: WorkerMessage
            do {
                let output = try await agent.handler(context)
                outcome = .result(taskID: task.id, result: output.result, usage: output.usage)
            } catch let failure as WorkerTaskError {
                let retryAfter = try? failure.retryAfter.map { try FanoutClient.milliseconds($0) }
                outcome = .failure(taskID: task.id, error: TaskError(message: failure.message, code: failure.code,
                                                                   retryable: failure.retryable),
                                   retryAfterMs: retryAfter ?? 0)
            } catch {
                outcome = Task.isCancelled
                    ? .failure(taskID: task.id, error: TaskError(message: "cancelled", code: "cancelled"), retryAfterMs: 0)
                    : .failure(taskID: task.id, error: TaskError(message: "\(error)", code: "handler_error"), retryAfterMs: 0)
            }
            // A handler outlived by a newer assignment of its task must not report for that one.
            let current = state.withLock { state -> Bool in
                guard state.tasks[task.id]?.generation == generation else { return false }
                state.tasks[task.id] = nil
                return true
            }
            if current { try? await send(outcome) }
            resumeDrainedIfIdle()
        }
        state.withLock { state in
            // In place: `tasks[id]?.handle = handle` would heap-allocate its accessor's frame, for every task.
            if let index = state.tasks.index(forKey: task.id), state.tasks.values[index].generation == generation {
                state.tasks.values[index].handle = handle
            }
        }
    }

    /// Sends WorkerSpawn and waits for the child batch's id.
    func spawn(_ taskID: UInt64, _ request: EnqueueBatchRequest) async throws -> UInt64 {
        try await withCheckedThrowingContinuation { continuation in
            if let refusal = state.withLock({ state -> FanoutClientError? in
                if let problem = Self.oneCallAtATime(state.tasks[taskID], taskID) { return problem }
                state.tasks[taskID]?.spawnReply = continuation
                return nil
            }) {
                return continuation.resume(throwing: refusal)
            }
            Task {
                do { try await send(.spawn(taskID: taskID, children: request)) } catch {
                    let reply = state.withLock { state in
                        defer { state.tasks[taskID]?.spawnReply = nil }
                        return state.tasks[taskID]?.spawnReply
                    }
                    reply?.resume(throwing: error)
                }
            }
        }
    }

    /// Sends WorkerWaitChildren and waits for the resumed assignment's children.
    func waitForChildren(_ taskID: UInt64, timeoutMs: UInt64) async throws -> [ChildBatch] {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let refusal = state.withLock { state -> (any Error)? in
                    if Task.isCancelled { return CancellationError() }
                    if let problem = Self.oneCallAtATime(state.tasks[taskID], taskID) { return problem }
                    state.tasks[taskID]?.childrenReply = continuation
                    state.tasks[taskID]?.waiting = true
                    return nil
                }
                if let refusal { return continuation.resume(throwing: refusal) }
                resumeDrainedIfIdle()
                Task { try? await send(.waitChildren(taskID: taskID, timeoutMs: timeoutMs)) }
            }
        } onCancel: {
            let reply = state.withLock { state in
                defer { state.tasks[taskID]?.childrenReply = nil }
                return state.tasks[taskID]?.childrenReply
            }
            reply?.resume(throwing: CancellationError())
        }
    }

    /// Why a task may not spawn or wait now: its session ended, or it already awaits an answer
    /// (one spawn or wait at a time per task: the daemon answers a task's requests in order).
    private static func oneCallAtATime(_ entry: Entry?, _ taskID: UInt64) -> FanoutClientError? {
        guard let entry else { return FanoutClientError.connectionLost("task \(taskID) is no longer held by this worker session") }
        guard entry.spawnReply == nil && entry.childrenReply == nil else {
            return FanoutClientError(code: .failedPrecondition,
                                     message: "task \(taskID) already waits for a spawn or its children; spawn one batch at a time")
        }
        return nil
    }

    func send(_ message: WorkerMessage) async throws {
        try await client.connection.send(Frame(streamID: streamID, kind: .message(.worker(message))))
    }

    /// Extends the leases of the tasks the handlers run, three times per lease.
    private func heartbeat() async throws {
        while true {
            let (interval, running) = state.withLock { state in
                (state.leaseMs / 3, state.tasks.filter { !$0.value.waiting }.map(\.key).sorted())
            }
            try await Task.sleep(for: .milliseconds(interval))
            if !running.isEmpty { try await send(.heartbeat(taskIDs: running)) }
        }
    }
}
