import FanoutCore
import FanoutStore
import Testing

@testable import FanoutScheduler

/// `SchedulerState` driven by hand, so interleavings that the real scheduler
/// produces only by bad luck (a window read still in flight, a stored row
/// that lags behind memory) happen every time.
@Suite struct SchedulerStateRaceTests {
    static func configuration(globalConcurrency: Int, windowSize: Int = 512) -> SchedulerConfiguration {
        var configuration = SchedulerConfiguration(globalConcurrency: globalConcurrency,
                                                   agents: [AgentConfiguration(name: "a", runner: "test")])
        configuration.windowSize = windowSize
        return configuration
    }

    static func batch(_ id: BatchID, owner: String, tasks: Int, state: BatchState = .pending) -> BatchRecord {
        BatchRecord(id: id, ownerID: owner, agent: "a", state: state, counters: BatchCounters(pending: tasks),
                    progress: BatchProgress(totalTasks: tasks, maxTurns: 0), metadata: [:], parentTaskID: nil,
                    createdAt: 0, creatorUID: 0)
    }

    static func task(_ id: TaskID, batch: BatchID, owner: String, maxAttempts: Int = 1) -> RunnableTask {
        RunnableTask(id: id, batchID: batch, ownerID: owner, customID: "t\(id)", agent: "a", priority: 0, attempt: 0,
                     maxAttempts: maxAttempts, timeoutMs: 0, turnsCompleted: 0, maxTurns: 0, parentTaskID: nil)
    }

    /// The stored row of a task as `cancelTask` reads it.
    static func row(_ task: RunnableTask, state: TaskState) -> TaskRecord {
        TaskRecord(id: task.id, batchID: task.batchID, customID: task.customID, ownerID: task.ownerID, agent: task.agent,
                   state: state, priority: task.priority, attempt: task.attempt, maxAttempts: task.maxAttempts,
                   timeoutMs: 0, turnsCompleted: 0, maxTurns: 0, createdAt: 0)
    }

    static let retryable = RunnerFailure("busy", code: "429", retryable: true)

    /// cancel_task reads the task's row, then takes the lock. A task that was
    /// retried, restarted and completed before any of that reached the store
    /// still reads `pending`. When its source had been used up and brought
    /// back by another retry, that source has no cursor, and the stale row
    /// was taken for a task not yet read: the completed task was "cancelled"
    /// a second time and the batch finished with a task still waiting.
    @Test func staleRowOfAFinishedTaskIsNotCancelledThroughARecreatedSource() throws {
        var state = SchedulerState(configuration: Self.configuration(globalConcurrency: 2), now: 0)
        let alice = Self.batch(1, owner: "alice", tasks: 2)
        let bob = Self.batch(2, owner: "bob", tasks: 3)
        let v = Self.task(11, batch: 1, owner: "alice")
        let w = Self.task(12, batch: 1, owner: "alice", maxAttempts: 2)
        let x = (21...23).map { Self.task(TaskID($0), batch: 2, owner: "bob") }
        let aliceKey = SourceKey(batchID: 1, agent: "a")
        let bobKey = SourceKey(batchID: 2, agent: "a")

        var effects = Effects()
        state.admit(alice, agents: ["a"], now: 0, effects: &effects)
        state.admit(bob, agents: ["a"], now: 0, effects: &effects)
        // Both windows arrive before anything starts, as when the slots were busy meanwhile.
        state.stopping = true
        state.refilled(aliceKey, tasks: [v, w], requested: 512, now: 1, effects: &effects)
        state.refilled(bobKey, tasks: x, requested: 512, now: 1, effects: &effects)
        state.stopping = false
        state.dispatch(now: 1, effects: &effects)
        // Owners take turns for the two slots: v (alice), x21 (bob).
        #expect(effects.starts.map(\.task.id) == [11, 21])

        effects = Effects()
        state.finish(21, attempt: 1, outcome: .succeeded(RunOutput(result: [])), jitter: 0, now: 2, effects: &effects)
        #expect(effects.starts.map(\.task.id) == [12])  // alice's turn: w; alice's source is now used up
        effects = Effects()
        state.finish(12, attempt: 1, outcome: .failed(Self.retryable), jitter: 0, now: 3, effects: &effects)
        #expect(effects.starts.map(\.task.id) == [22])
        #expect(state.sources[aliceKey] == nil)
        effects = Effects()
        state.retryDue(12, attempt: 1, now: 4, effects: &effects)
        #expect(effects.starts.isEmpty)  // both slots taken (v, x22): w waits in a recreated source
        #expect(state.sources[aliceKey]?.window.map(\.id) == [12])
        effects = Effects()
        state.finish(11, attempt: 1, outcome: .succeeded(RunOutput(result: [1])), jitter: 0, now: 5, effects: &effects)
        #expect(effects.starts.map(\.task.id) == [23])  // bob's turn
        #expect(state.batches[1]?.record.counters.completed == 1)

        // v completed in memory; a cancel_task that read its row before that commit sees `pending`.
        effects = Effects()
        let acted = state.cancelTask(Self.row(v, state: .pending), now: 6, effects: &effects)
        #expect(!acted, "v already ran; there is nothing to cancel")
        #expect(effects.changes.isEmpty)
        let active = try #require(state.batches[1], "alice's batch must still be active: w has not run")
        #expect(active.record.counters.completed == 1)
        #expect(active.record.counters.cancelled == 0)
        #expect(active.record.counters.pending == 1)
        #expect(state.sources[aliceKey]?.window.map(\.id) == [12])

        // A pending row that really is in the window is still cancelled.
        effects = Effects()
        #expect(state.cancelTask(Self.row(w, state: .pending), now: 7, effects: &effects))
        #expect(effects.changes.events.map(\.kind) == [.taskCancelled, .batchProgress, .batchCompleted])
    }

    /// RetryFailed admits a finished batch again. A window read issued in the
    /// batch's previous run that answers only now must not be taken for the
    /// new source's read: its empty page marked the new source used up and
    /// dropped it, the real page was then ignored, and the batch stayed
    /// `processing` with pending tasks nobody would run.
    @Test func windowReadFromABatchsPreviousRunIsIgnoredAfterReadmission() throws {
        var state = SchedulerState(configuration: Self.configuration(globalConcurrency: 4, windowSize: 4), now: 0)
        let key = SourceKey(batchID: 1, agent: "a")
        let tasks = (1...4).map { Self.task(TaskID($0), batch: 1, owner: "alice") }

        var effects = Effects()
        state.admit(Self.batch(1, owner: "alice", tasks: 4), agents: ["a"], now: 0, effects: &effects)
        let first = try #require(effects.refills.first)
        effects = Effects()
        // A full page: there may be more, so emptying the window asks for the next one.
        state.refilled(key, tasks: tasks, requested: first.limit, now: 1, effects: &effects)
        #expect(effects.starts.count == 4)
        let stale = try #require(effects.refills.first, "the next page is asked for while the window runs dry")
        for task in tasks {
            effects = Effects()
            state.finish(task.id, attempt: 1, outcome: .failed(RunnerFailure("no", retryable: false)), jitter: 0,
                         now: 2, effects: &effects)
        }
        #expect(effects.changes.events.last?.kind == .batchCompleted)
        #expect(state.batches[1] == nil)

        // RetryFailed reopened the four failed tasks and admits the batch again.
        var reopened = Self.batch(1, owner: "alice", tasks: 4, state: .processing)
        reopened.startedAt = 0
        effects = Effects()
        state.admit(reopened, agents: ["a"], now: 3, effects: &effects)
        let fresh = try #require(effects.refills.first)
        #expect(fresh.cursor == nil)

        // The old read answers first: nothing after its cursor.
        effects = Effects()
        state.refilled(stale.key, generation: stale.generation, tasks: [], requested: stale.limit, now: 4, effects: &effects)
        #expect(state.sources[key] != nil, "the new source is still waiting for its own read")
        // Then the new one, with the reopened tasks: they run.
        effects = Effects()
        state.refilled(fresh.key, generation: fresh.generation, tasks: tasks, requested: fresh.limit, now: 5, effects: &effects)
        #expect(effects.starts.map(\.task.id) == [1, 2, 3, 4])
        #expect(state.batches[1]?.record.counters.running == 4)
    }

    /// On a shared store, a daemon whose lease lapsed has its claims given back by another; its own
    /// next claim may then return tasks its window still holds. Each is held, and runs, once.
    @Test func aSharedStoreClaimReturningTasksTheWindowHoldsAddsThemOnce() throws {
        var state = SchedulerState(configuration: Self.configuration(globalConcurrency: 1), now: 0)
        state.sharedStore = true
        let key = SourceKey(batchID: 1, agent: "a")
        let tasks = (1...4).map { Self.task(TaskID($0), batch: 1, owner: "alice") }
        var effects = Effects()
        state.admit(Self.batch(1, owner: "alice", tasks: 4), agents: ["a"], now: 0, effects: &effects)
        state.refilled(key, tasks: Array(tasks[0...2]), requested: 3, now: 1, effects: &effects)
        #expect(effects.starts.map(\.task.id) == [1])
        // The window ran low (2 of 16): the next read claims 2 and 3 again, and 4.
        state.refilled(key, tasks: Array(tasks[1...3]), requested: 16, now: 2, effects: &effects)
        #expect(state.sources[key]?.window.map(\.id) == [2, 3, 4])
    }

    /// The claim check (`Scheduler.giveBackForgottenClaims`) gives back only claims the state holds
    /// nowhere: a task in a window, running, or waiting to retry is held.
    @Test func tasksInAWindowOrASlotAreHeldForTheClaimCheck() throws {
        var state = SchedulerState(configuration: Self.configuration(globalConcurrency: 1), now: 0)
        state.sharedStore = true
        let key = SourceKey(batchID: 1, agent: "a")
        var effects = Effects()
        state.admit(Self.batch(1, owner: "alice", tasks: 3), agents: ["a"], now: 0, effects: &effects)
        state.refilled(key, tasks: (1...3).map { Self.task(TaskID($0), batch: 1, owner: "alice", maxAttempts: 2) }, requested: 16,
                       now: 1, effects: &effects)
        #expect(effects.starts.map(\.task.id) == [1])
        #expect(state.unheld(among: [1, 2, 3, 4]) == [4])
        // Task 1 fails and waits to retry: still held. Task 2 starts.
        effects = Effects()
        state.finish(1, attempt: 1, run: 0, outcome: .failed(Self.retryable), jitter: 0, now: 2, effects: &effects)
        #expect(state.slots[1]?.state == .retryWait)
        #expect(state.unheld(among: [1, 2, 3, 4]) == [4])
    }
}

extension SchedulerState {
    /// The reply to the current read of `key`, whatever its generation.
    mutating func refilled(_ key: SourceKey, tasks: [RunnableTask], requested: Int, now: Milliseconds, effects: inout Effects) {
        refilled(key, generation: sources[key]?.generation ?? -1, tasks: tasks, requested: requested, now: now, effects: &effects)
    }
}
