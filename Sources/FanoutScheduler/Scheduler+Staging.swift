import FanoutCore
import FanoutStore

/// A batch being received in chunks. Its tasks go to the store as they come
/// (so a million-task batch never sits whole in memory) but stay invisible
/// and never run until `publishStagedBatch`; a discarded or crashed staging
/// leaves nothing behind.
public struct StagedBatch: Sendable {
    public let id: BatchID
    let maxTurns: Int
    let parentTaskID: TaskID?
    let batchAgent: String
    let creatorUID: UInt32
    /// Custom ids so far: uniqueness holds across chunks.
    var seen: Set<String> = []
    var count = 0
    var agents: Set<String> = []

    /// Counts checked tasks in and returns them as the chunk to write.
    mutating func add(_ tasks: [NewTask]) -> StagedChunk {
        count += tasks.count
        agents.formUnion(tasks.map(\.agent))
        return StagedChunk(batchID: id, parentTaskID: parentTaskID, tasks: tasks)
    }
}

/// A validated chunk of a staged batch, ready to be written.
public struct StagedChunk: Sendable {
    let batchID: BatchID
    let parentTaskID: TaskID?
    let tasks: [NewTask]
}

extension Scheduler {

    /// Why one task would be refused at enqueue (limits, unknown agent, its runner's rules), or nil.
    /// Uniqueness within a batch is the caller's to check. Lets a front end drop a bad line
    /// from a batch, with its reason, instead of refusing the whole batch.
    public func problem(with task: NewTask) -> String? {
        var tasks = [task]
        applyAgentDefaults(&tasks, batchAgent: task.agent)
        var seen = Set<String>()
        do {
            try BatchValidation.validateTasks(tasks, startingAt: 0, seen: &seen, limits: limits, knownAgents: knownAgents)
        } catch {
            return error.message
        }
        return runners[task.agent]?.problem(with: tasks[0])
    }

    /// Asks each task's runner whether it can run it; `offset` numbers the tasks within their batch.
    func checkRunnersAccept(_ tasks: [NewTask], startingAt offset: Int) throws(FanoutError) {
        for (position, task) in tasks.enumerated() {
            guard let problem = runners[task.agent]?.problem(with: task) else { continue }
            throw .invalidArgument("task \(offset + position) (custom_id \"\(task.customID)\"): \(problem)")
        }
    }

    /// Gives tasks their batch's agent when they name none, and their agent's defaults.
    func applyAgentDefaults(_ tasks: inout [NewTask], batchAgent: String) {
        for index in tasks.indices {
            if tasks[index].agent.isEmpty { tasks[index].agent = batchAgent }
            guard let agent = agent(named: tasks[index].agent) else { continue }
            if tasks[index].maxAttempts <= 0 { tasks[index].maxAttempts = agent.maxAttempts }
            tasks[index].maxTurns = agent.maxTurns
        }
    }

    /// Validates the batch header and its first chunk, and starts storing it.
    public func beginStagedBatch(_ header: NewBatch, firstTasks: [NewTask]) async throws -> StagedBatch {
        try requireWritableStore()
        try BatchValidation.validateHeader(header, limits: limits)
        var seen = Set<String>()
        let tasks = try checkedChunk(firstTasks, batchAgent: header.agent, creatorUID: header.creatorUID, startingAt: 0,
                                     seen: &seen)
        var row = header
        row.tasks = []
        let firstAgent = tasks.first?.agent ?? header.agent
        row.maxTurns = agent(named: header.agent.isEmpty ? firstAgent : header.agent)?.maxTurns ?? 0
        let stagedRow = row
        let id = try await store.createStagedBatch(stagedRow, now: WallClock.now)
        var staged = StagedBatch(id: id, maxTurns: row.maxTurns, parentTaskID: header.parentTaskID, batchAgent: header.agent,
                                 creatorUID: header.creatorUID, seen: seen)
        do {
            try await storeStagedChunk(staged.add(tasks))
        } catch {
            await discardStagedBatch(staged)
            throw error
        }
        return staged
    }

    /// Validates and stores one more chunk.
    public func appendToStagedBatch(_ staged: inout StagedBatch, _ chunk: [NewTask]) async throws {
        try await storeStagedChunk(prepareStagedChunk(&staged, chunk))
    }

    /// Validates one more chunk and counts it into `staged`; `storeStagedChunk` then writes it.
    /// Apart, a caller can check the next chunk while this one is being written.
    public func prepareStagedChunk(_ staged: inout StagedBatch, _ chunk: [NewTask]) throws -> StagedChunk {
        let tasks = try checkedChunk(chunk, batchAgent: staged.batchAgent, creatorUID: staged.creatorUID,
                                     startingAt: staged.count, seen: &staged.seen)
        return staged.add(tasks)
    }

    /// A chunk with its agents' defaults, refused with its first problem; `offset` numbers its
    /// tasks within the batch, `seen` holds the batch's custom ids so far.
    private func checkedChunk(_ chunk: [NewTask], batchAgent: String, creatorUID: UInt32, startingAt offset: Int,
                              seen: inout Set<String>) throws -> [NewTask] {
        var tasks = chunk
        applyAgentDefaults(&tasks, batchAgent: batchAgent)
        try BatchValidation.validateTasks(tasks, startingAt: offset, seen: &seen, limits: limits, knownAgents: knownAgents)
        try checkRunnersAccept(tasks, startingAt: offset)
        try checkDeclaredAgents(tasks, creatorUID: creatorUID, startingAt: offset)
        return tasks
    }

    /// Writes a prepared chunk (still invisible until the batch is published).
    public func storeStagedChunk(_ chunk: StagedChunk) async throws {
        guard !chunk.tasks.isEmpty else { return }
        try await store.appendStagedTasks(chunk.tasks, to: chunk.batchID, parentTaskID: chunk.parentTaskID, now: WallClock.now)
    }


    /// Makes the whole batch visible and runnable, atomically; returns once committed.
    public func publishStagedBatch(_ staged: StagedBatch) async throws -> BatchRecord {
        guard staged.count > 0 else {
            await discardStagedBatch(staged)
            throw FanoutError.invalidArgument("a batch needs at least one task")
        }
        let id = staged.id
        // Marked before the publishing commit: a cancel arriving from then on waits for the admission.
        markAdmitting(id)
        let batch: BatchRecord
        do {
            batch = try await store.publishStagedBatch(id)
        } catch {
            unmarkAdmitting(id)
            throw error
        }
        let agents = Array(staged.agents)
        mutate { state, effects in
            let now = WallClock.now
            state.admit(batch, agents: agents, now: now, effects: &effects)
            state.dispatch(now: now, effects: &effects)
        }
        return batch
    }

    /// Drops a staged batch and its stored tasks, also when the caller was cancelled (a client that
    /// hung up mid-batch): GRDB's async writes refuse to start in a cancelled task, so the delete
    /// runs in a task of its own, awaited.
    public func discardStagedBatch(_ staged: StagedBatch) async {
        let (id, store) = (staged.id, store)
        await Task { try? await store.discardStagedBatch(id) }.value
    }
}
