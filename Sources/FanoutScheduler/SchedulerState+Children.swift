import DequeModule
import FanoutCore
import FanoutStore

/// Who a spawning task's children belong to.
struct SpawnParent: Sendable {
    var ownerID: String
    var creatorUID: UInt32
}

/// Subagents: a running task spawns child batches, waits for them without
/// holding a slot, and resumes when the last one ends. Ending a task (or a
/// batch) ends its whole subtree.
extension SchedulerState {

    /// Checks that a running attempt may spawn `count` more children and counts them.
    mutating func reserveSpawn(_ id: TaskID, attempt: Int, run: Int, count: Int) throws(FanoutError) -> SpawnParent {
        guard var slot = slots[id], slot.task.attempt == attempt, slot.run == run, slot.state == .running, slot.interruptAs == nil,
              let batch = batches[slot.task.batchID] else {
            throw .failedPrecondition("task \(id) is not running attempt \(attempt); only a running task spawns children")
        }
        let depth = depth(of: batch.record) + 1
        guard depth <= configuration.maxSpawnDepth else {
            throw .resourceExhausted("task \(id) runs in a batch at depth \(depth - 1); child batches nest at most "
                + "\(configuration.maxSpawnDepth) deep (max_spawn_depth)")
        }
        guard slot.spawnedChildren + count <= configuration.maxChildrenPerTask else {
            throw .resourceExhausted("task \(id) has spawned \(slot.spawnedChildren) children; \(count) more would pass "
                + "the limit of \(configuration.maxChildrenPerTask) per task (max_children_per_task)")
        }
        slot.spawnedChildren += count
        slots[id] = slot
        return SpawnParent(ownerID: batch.record.ownerID, creatorUID: batch.record.creatorUID)
    }

    /// Whether `attempt` of task `id` still runs and may have children: not ended, not being cancelled.
    func isSpawning(_ id: TaskID, attempt: Int?) -> Bool {
        guard let slot = slots[id], slot.interruptAs == nil, slot.state == .running || slot.state == .waitingChildren else {
            return false
        }
        return attempt.map { $0 == slot.task.attempt } ?? true
    }

    /// Gives back a reservation whose spawn was refused.
    mutating func unreserveSpawn(_ id: TaskID, attempt: Int, count: Int) {
        guard slots[id]?.task.attempt == attempt else { return }
        slots.modifyValue(forKey: id) { $0.spawnedChildren -= count }
    }

    /// 0 for a client's batch; one more than its parent's batch for a child batch.
    func depth(of batch: BatchRecord) -> Int {
        var depth = 0
        var parent = batch.parentTaskID
        while let id = parent, depth <= configuration.maxSpawnDepth,
              let parentBatch = slots[id].flatMap({ batches[$0.task.batchID] }) {
            depth += 1
            parent = parentBatch.record.parentTaskID
        }
        return depth
    }

    /// The attempt waits for its task's children. Returns the answer at once (no
    /// unfinished children: go on; not running: an error), or nil when it waits:
    /// its slot is freed and `continuation` is resumed once the children ended
    /// and a slot is the task's again.
    mutating func wait(_ id: TaskID, attempt: Int, run: Int, timeoutMs: Int64?, cancelled: Bool,
                       continuation: CheckedContinuation<Void, any Error>, now: Milliseconds,
                       effects: inout Effects) -> Result<Void, any Error>? {
        guard var slot = slots[id], slot.task.attempt == attempt, slot.run == run, slot.state == .running,
              var batch = batches[slot.task.batchID] else {
            return .failure(FanoutError.failedPrecondition("task \(id) is not running attempt \(attempt)"))
        }
        if cancelled || slot.interruptAs != nil { return .failure(CancellationError()) }
        guard childBatches[id]?.isEmpty == false else { return .success(()) }
        running -= 1
        agents.modifyValue(forKey: slot.task.agent) { $0.running -= 1 }
        slot.state = .waitingChildren
        slot.resumer = continuation
        slots[id] = slot
        batch.record.counters.move(from: .running, to: .waitingChildren)
        batches[batch.record.id] = batch
        let limit = timeoutMs.flatMap { $0 > 0 ? $0 : nil } ?? agents[slot.task.agent]?.configuration.childrenTimeoutMs ?? 0
        if limit > 0 { waitDeadlines[id] = now + limit }
        effects.changes.tasks.append(.waiting(id))
        effects.changes.batches[batch.record.id] = batch.snapshot
        dispatch(now: now, effects: &effects)
        return nil
    }

    /// A waiting attempt's Swift task was cancelled: it no longer waits. The task
    /// still does, and runs again from the start when its children end.
    mutating func abandonWait(_ id: TaskID, attempt: Int, run: Int) -> CheckedContinuation<Void, any Error>? {
        guard slots[id]?.task.attempt == attempt, slots[id]?.run == run, let resumer = slots[id]?.resumer else { return nil }
        slots.modifyValue(forKey: id) { $0.resumer = nil }
        return resumer
    }

    /// A waiting task whose children ended takes a slot of its agent again.
    mutating func resume(_ id: TaskID, now: Milliseconds, effects: inout Effects) {
        guard var slot = slots[id], slot.state == .waitingChildren, var batch = batches[slot.task.batchID] else { return }
        running += 1
        agents.modifyValue(forKey: slot.task.agent) { $0.running += 1 }
        slot.state = .running
        waitDeadlines[id] = nil
        batch.record.counters.move(from: .waitingChildren, to: .running)
        batches[batch.record.id] = batch
        effects.changes.tasks.append(.resumed(id))
        effects.changes.batches[batch.record.id] = batch.snapshot
        if let resumer = slot.resumer {
            slot.resumer = nil
            effects.resumes.append(resumer)
        } else {
            // Nobody waits any more (a restart, a runner that stopped): the attempt runs again, its children's results at hand.
            slot.run += 1
            let agentTimeout = agents[slot.task.agent]?.configuration.timeoutMs ?? 0
            effects.starts.append(StartOrder(task: slot.task, attempt: slot.task.attempt,
                                             timeoutMs: slot.task.timeoutMs > 0 ? slot.task.timeoutMs : agentTimeout,
                                             maxTurns: slot.task.maxTurns, creatorUID: batch.record.creatorUID,
                                             resumed: true, run: slot.run))
        }
        slots[id] = slot
    }

    /// Cancels a task's unfinished child batches, and through them their own subtrees.
    mutating func cancelChildren(of id: TaskID, now: Milliseconds, effects: inout Effects) {
        guard let children = childBatches[id] else { return }
        for child in children.sorted() { closeBatch(child, as: .cancelled, now: now, effects: &effects) }
    }

    /// A batch ended: if it was a child batch and its parent's last, a waiting parent resumes.
    mutating func childFinished(_ batch: BatchRecord, now: Milliseconds, effects: inout Effects) {
        guard let parent = batch.parentTaskID, var children = childBatches[parent] else { return }
        children.remove(batch.id)
        childBatches[parent] = children.isEmpty ? nil : children
        guard children.isEmpty, let slot = slots[parent], slot.state == .waitingChildren else { return }
        resumable[slot.task.agent, default: []].append(parent)
        // Dispatch soon: not every path that ends a batch dispatches afterwards.
        effects.wakeAt = min(effects.wakeAt ?? now, now)
    }

    /// After recovery admitted the active batches: waiting tasks get their slots
    /// back; children whose parent no longer runs (the crash ended its attempt)
    /// are cancelled; parents whose children all ended meanwhile resume.
    mutating func recoverWaiting(_ tasks: [RunnableTask], now: Milliseconds, effects: inout Effects) {
        for task in tasks where batches[task.batchID] != nil {
            slots[task.id] = TaskSlot(task: task, state: .waitingChildren)
            openSlots[task.batchID, default: []].insert(task.id)
            // The wait's deadline is not stored: it starts again at recovery.
            if let limit = agents[task.agent]?.configuration.childrenTimeoutMs, limit > 0 { waitDeadlines[task.id] = now + limit }
        }
        recovering = false
        // On a shared store a parent may run on another daemon: only a daemon holding it knows.
        for (parent, children) in childBatches.sorted(by: { $0.key < $1.key }) where !sharedStore {
            for child in children.sorted() where !isSpawning(parent, attempt: batches[child]?.record.parentAttempt) {
                closeBatch(child, as: .cancelled, now: now, effects: &effects)
            }
        }
        for task in tasks where slots[task.id]?.state == .waitingChildren && childBatches[task.id] == nil {
            resumable[task.agent, default: []].append(task.id)
        }
    }
}
