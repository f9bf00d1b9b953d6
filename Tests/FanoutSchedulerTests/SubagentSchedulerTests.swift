import FanoutCore
import FanoutRunners
import FanoutStore
import FanoutTestSupport
import Foundation
import Testing
@testable import FanoutScheduler

/// Spawns `count` children on `childAgent` through its `RunContext`, waits for
/// them (unless resumed: they ended already), and reports what it found.
struct FanRunner: Runner {
    var childAgent: String
    var count: Int
    /// Spawn, then run until cancelled instead of waiting.
    var blockAfterSpawning = false

    func run(_ context: RunContext) async throws -> RunOutput {
        guard let children = context.children else { throw RunnerFailure("no children API", retryable: false) }
        if !context.resumed {
            _ = try await children.spawn(NewBatch(ownerID: "ignored", agent: childAgent, tasks: (0..<count).map {
                NewTask(customID: "c\($0)", agent: childAgent, payload: Array("child \($0)".utf8))
            }))
            if blockAfterSpawning { try await Task.sleep(for: .seconds(600)) }
            try await children.wait(timeoutMs: nil)
        }
        var total = 0
        var completed = 0
        for batch in try await children.batches() {
            let results = try await children.results(of: batch.id, afterTaskID: 0, limit: 10_000)
            total += results.count
            completed += results.filter { $0.state == .completed }.count
        }
        return RunOutput(result: Array("resumed=\(context.resumed) children=\(total) completed=\(completed)".utf8))
    }
}

/// Runs until cancelled.
struct BlockingRunner: Runner {
    func run(_ context: RunContext) async throws -> RunOutput {
        try await Task.sleep(for: .seconds(600))
        return RunOutput(result: [])
    }
}

/// Spawns a child of its own agent, as deep as the scheduler lets it; returns the refusal.
struct RecursiveRunner: Runner {
    func run(_ context: RunContext) async throws -> RunOutput {
        guard let children = context.children else { throw RunnerFailure("no children API", retryable: false) }
        do {
            _ = try await children.spawn(NewBatch(ownerID: "", agent: context.agent, tasks: [
                NewTask(customID: "deeper", agent: context.agent, payload: []),
            ]))
            try await children.wait(timeoutMs: nil)
            let batch = try await children.batches()[0]
            return RunOutput(result: try await children.results(of: batch.id, afterTaskID: 0, limit: 1)[0].result ?? [])
        } catch let error as FanoutError {
            return RunOutput(result: Array("\(error.kind): \(error.message)".utf8))
        }
    }
}

/// Attempt 1 spawns two children, waits, and fails retryably; attempt 2 spawns three and reports what it sees.
struct RetryingFanRunner: Runner {
    func run(_ context: RunContext) async throws -> RunOutput {
        guard let children = context.children else { throw RunnerFailure("no children API", retryable: false) }
        let count = context.attempt == 1 ? 2 : 3
        _ = try await children.spawn(NewBatch(ownerID: "", agent: "echo", tasks: (0..<count).map {
            NewTask(customID: "c\($0)", agent: "echo", payload: [])
        }))
        try await children.wait(timeoutMs: nil)
        if context.attempt == 1 { throw RunnerFailure("try again", retryable: true) }
        let batches = try await children.batches()
        let results = try await children.results(of: batches[0].id, afterTaskID: 0, limit: 100)
        return RunOutput(result: Array("batches=\(batches.count) results=\(results.count)".utf8))
    }
}

@Suite struct SubagentSchedulerTests {
    static let agents = [
        AgentConfiguration(name: "fan", runner: "custom", concurrency: 4),
        AgentConfiguration(name: "hold", runner: "custom", concurrency: 8),
        AgentConfiguration(name: "echo", runner: "echo", concurrency: 8),
    ]

    /// Two schedulers, one after the other, on one store: a restart.
    static func scheduler(_ store: SQLiteStore, fan: any Runner, hold: any Runner,
                          configure: (inout SchedulerConfiguration) -> Void = { _ in }) throws -> Scheduler {
        var configuration = SchedulerConfiguration(agents: agents)
        configuration.backoff = Backoff(baseMs: 10, maxMs: 50)
        configure(&configuration)
        let scheduler = try Scheduler(store: store, configuration: configuration,
                                      runners: ["fan": fan, "hold": hold, "echo": EchoRunner()])
        try scheduler.start()
        return scheduler
    }

    static func enqueueFan(_ scheduler: Scheduler) async throws -> InsertedBatch {
        try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "fan", creatorUID: 1000,
                                             tasks: [NewTask(customID: "parent", agent: "fan", payload: [])]))
    }

    static func result(_ store: SQLiteStore, _ batch: BatchID) async throws -> String? {
        try await store.results(batchID: batch, afterTaskID: 0, limit: 1).first?.result.map { String(decoding: $0, as: UTF8.self) }
    }

    @Test func aRunnerSpawnsChildrenThroughItsContextWaitsAndReadsThem() async throws {
        try await withTemporaryDirectory { directory in
            let store = try SQLiteStore(path: directory + "/fanout.db")
            let scheduler = try Self.scheduler(store, fan: FanRunner(childAgent: "echo", count: 5), hold: BlockingRunner())
            let inserted = try await Self.enqueueFan(scheduler)
            try await waitUntil("the parent to finish") { try await store.batch(inserted.batch.id)?.state == .completed }
            #expect(try await Self.result(store, inserted.batch.id) == "resumed=false children=5 completed=5")
            let children = try await store.childBatches(of: inserted.taskIDs[0], attempt: 1)
            #expect(children.count == 1)
            #expect(children.first?.ownerID == "alice", "children belong to their parent's owner")
            #expect(children.first?.creatorUID == 1000)
            #expect(children.first?.parentTaskID == inserted.taskIDs[0])
            await scheduler.shutdown()
        }
    }

    @Test func aWaitingParentSurvivesARestartAndResumesWhenItsChildrenEnd() async throws {
        try await withTemporaryDirectory { directory in
            let store = try SQLiteStore(path: directory + "/fanout.db")
            let first = try Self.scheduler(store, fan: FanRunner(childAgent: "hold", count: 3), hold: BlockingRunner())
            let inserted = try await Self.enqueueFan(first)
            try await waitUntil("the parent to wait, its children to run") {
                let children = try await store.childBatches(of: inserted.taskIDs[0], attempt: 1)
                return try await store.batch(inserted.batch.id)?.counters.waitingChildren == 1 && children.first?.counters.running == 3
            }
            #expect(first.statistics.running == 3, "a waiting parent holds no slot")
            await first.shutdown()
            #expect(try await store.task(inserted.taskIDs[0], includePayload: false)?.state == .waitingChildren)

            // Back up with children that now complete: the parent resumes, in a new run that finds their results.
            let second = try Self.scheduler(store, fan: FanRunner(childAgent: "hold", count: 3), hold: EchoRunner())
            try await waitUntil("the parent to finish") { try await store.batch(inserted.batch.id)?.state == .completed }
            #expect(try await Self.result(store, inserted.batch.id) == "resumed=true children=3 completed=3")
            #expect(try await store.childBatches(of: inserted.taskIDs[0], attempt: 1).count == 1, "not spawned twice")
            await second.shutdown()
        }
    }

    @Test func aParentWhoseChildrenEndedWhileTheDaemonWasDownResumesAtStart() async throws {
        try await withTemporaryDirectory { directory in
            let store = try SQLiteStore(path: directory + "/fanout.db")
            let first = try Self.scheduler(store, fan: FanRunner(childAgent: "hold", count: 2), hold: BlockingRunner())
            let inserted = try await Self.enqueueFan(first)
            try await waitUntil("the parent to wait") { try await store.batch(inserted.batch.id)?.counters.waitingChildren == 1 }
            try await waitUntil("the children to run") { try await store.childBatches(of: inserted.taskIDs[0], attempt: 1).first?.counters.running == 2 }
            await first.shutdown()

            // The children's last commit landed, the parent's resumption did not: what a crash in between leaves.
            let child = try #require(try await store.childBatches(of: inserted.taskIDs[0], attempt: 1).first)
            let pending = try await store.pendingTasks(batchID: child.id, agent: "hold", after: nil, limit: 10, inlinePayloadBytes: 0)
            #expect(pending.count == 2)
            var changes = ChangeSet()
            for task in pending {
                changes.tasks.append(.finished(task.id, state: .completed, result: Array("done".utf8), failure: nil, turnsCompleted: 0, at: 1))
            }
            var counters = child.counters
            counters.pending = 0
            counters.completed = 2
            changes.batches[child.id] = BatchSnapshot(id: child.id, state: .completed, counters: counters, progressUnits: 2,
                                                      startedAt: 1, finishedAt: 2)
            _ = try store.commit(changes)

            // The children's runner still blocks: only resuming the parent at start finishes the batch.
            let second = try Self.scheduler(store, fan: FanRunner(childAgent: "hold", count: 2), hold: BlockingRunner())
            try await waitUntil("the parent to finish") { try await store.batch(inserted.batch.id)?.state == .completed }
            #expect(try await Self.result(store, inserted.batch.id) == "resumed=true children=2 completed=2")
            await second.shutdown()
        }
    }

    @Test func childrenOfAParentThatNoLongerRunsAreCancelledAtRecovery() async throws {
        try await withTemporaryDirectory { directory in
            let store = try SQLiteStore(path: directory + "/fanout.db")
            let first = try Self.scheduler(store, fan: FanRunner(childAgent: "hold", count: 2, blockAfterSpawning: true), hold: BlockingRunner())
            let inserted = try await Self.enqueueFan(first)
            try await waitUntil("the children to run") { try await store.childBatches(of: inserted.taskIDs[0], attempt: 1).first?.counters.running == 2 }
            await first.shutdown()
            // The parent was running, not waiting: stopped, it goes back to pending and its children are orphans.
            let second = try Self.scheduler(store, fan: EchoRunner(), hold: BlockingRunner())
            let child = try #require(try await store.childBatches(of: inserted.taskIDs[0], attempt: 1).first)
            try await waitUntil("the orphans to be cancelled") { try await store.batch(child.id)?.state == .cancelled }
            #expect(try await store.batch(child.id)?.counters.cancelled == 2)
            try await waitUntil("the parent to run again") { try await store.batch(inserted.batch.id)?.state == .completed }
            await second.shutdown()
        }
    }

    @Test func spawnDepthAndChildrenPerTaskAreLimited() async throws {
        try await withTemporaryDirectory { directory in
            let store = try SQLiteStore(path: directory + "/fanout.db")
            let scheduler = try Self.scheduler(store, fan: RecursiveRunner(), hold: BlockingRunner()) { $0.maxSpawnDepth = 2 }
            let inserted = try await Self.enqueueFan(scheduler)
            try await waitUntil("the tree to finish") { try await store.batch(inserted.batch.id)?.state == .completed }
            let answer = try #require(try await Self.result(store, inserted.batch.id))
            #expect(answer.contains("resourceExhausted") && answer.contains("max_spawn_depth"), "\(answer)")
            await scheduler.shutdown()

            let many = try Self.scheduler(store, fan: FanRunner(childAgent: "echo", count: 5), hold: BlockingRunner()) {
                $0.maxChildrenPerTask = 4
            }
            let refused = try await Self.enqueueFan(many)
            try await waitUntil("the parent to fail") { try await store.batch(refused.batch.id)?.state == .completed }
            let task = try #require(try await store.task(refused.taskIDs[0], includePayload: false))
            #expect(task.state == .failed)
            #expect(task.failure?.message.contains("max_children_per_task") == true, "\(String(describing: task.failure))")
            await many.shutdown()
        }
    }

    @Test func cancellingAChildDoesNotCancelItsParent() async throws {
        try await withTemporaryDirectory { directory in
            let store = try SQLiteStore(path: directory + "/fanout.db")
            let scheduler = try Self.scheduler(store, fan: FanRunner(childAgent: "hold", count: 2), hold: BlockingRunner())
            let inserted = try await Self.enqueueFan(scheduler)
            try await waitUntil("the children to run") { try await store.childBatches(of: inserted.taskIDs[0], attempt: 1).first?.counters.running == 2 }
            let child = try #require(try await store.childBatches(of: inserted.taskIDs[0], attempt: 1).first)
            _ = try await scheduler.cancelBatch(child.id)
            try await waitUntil("the parent to finish") { try await store.batch(inserted.batch.id)?.state == .completed }
            #expect(try await Self.result(store, inserted.batch.id) == "resumed=false children=2 completed=0")
            await scheduler.shutdown()
        }
    }

    @Test func aBatchDeadlineExpiresAWaitingParentAndCancelsItsChildren() async throws {
        try await withTemporaryDirectory { directory in
            let store = try SQLiteStore(path: directory + "/fanout.db")
            let scheduler = try Self.scheduler(store, fan: FanRunner(childAgent: "hold", count: 2), hold: BlockingRunner())
            let inserted = try await scheduler.enqueue(NewBatch(
                ownerID: "alice", agent: "fan", deadlineAt: Milliseconds(Date().timeIntervalSince1970 * 1000) + 2_000, creatorUID: 1000,
                tasks: [NewTask(customID: "parent", agent: "fan", payload: [])]))
            // On a loaded machine the deadline may pass before the parent gets to wait; it must expire either way.
            var sawWaiting = false
            try await waitUntil("the parent's batch to fail") {
                let batch = try await store.batch(inserted.batch.id)
                if batch?.counters.waitingChildren == 1 { sawWaiting = true }
                return batch?.state == .failed
            }
            #expect(try await store.task(inserted.taskIDs[0], includePayload: false)?.state == .expired)
            if let child = try await store.childBatches(of: inserted.taskIDs[0], attempt: 1).first {
                try await waitUntil("the children to be cancelled") { try await store.batch(child.id)?.state == .cancelled }
            }
            if !sawWaiting { print("note: the deadline passed before the parent waited; the waiting case was not exercised") }
            await scheduler.shutdown()
        }
    }

    @Test func aRetriedTaskSeesOnlyItsOwnAttemptsChildren() async throws {
        try await withTemporaryDirectory { directory in
            let store = try SQLiteStore(path: directory + "/fanout.db")
            let scheduler = try Self.scheduler(store, fan: RetryingFanRunner(), hold: BlockingRunner())
            let inserted = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "fan", creatorUID: 1000, tasks: [
                NewTask(customID: "parent", agent: "fan", payload: [], maxAttempts: 2),
            ]))
            try await waitUntil("the parent to finish") { try await store.batch(inserted.batch.id)?.state == .completed }
            #expect(try await Self.result(store, inserted.batch.id) == "batches=1 results=3")
            await scheduler.shutdown()
        }
    }
}
