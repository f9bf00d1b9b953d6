import FanoutCore
import FanoutStore
import FanoutTestSupport
import Foundation
import Testing

@testable import FanoutScheduler

/// On both stores: each test runs on SQLite and on PostgreSQL.
@Suite(.postgresServer) struct CancellationTests {
    static let slow = json(["delay_ms": 10_000])

    @Test(arguments: StoreKind.allCases) func cancelPendingThenRunningTask(on kind: StoreKind) async throws {
        try await withScheduler(on: kind, globalConcurrency: 1) { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: [
                NewTask(customID: "running", agent: "", payload: Self.slow),
                NewTask(customID: "waiting", agent: "", payload: Array("x".utf8)),
            ]))
            let ids = batch.taskIDs
            #expect(ids.count == 2)
            let (runningID, waitingID) = (ids[0], ids[1])
            try await waitUntil("the first task to run") { try await store.task(runningID, includePayload: false)?.state == .running }
            #expect(try await store.task(waitingID, includePayload: false)?.state == .pending)

            // Pending: cancelled at once, and the answer already says so.
            let pending = try await scheduler.cancelTask(waitingID)
            #expect(pending.id == waitingID)
            #expect(pending.state == .cancelled)
            #expect(pending.finishedAt != nil)
            #expect(try await store.batch(batch.id)?.counters.cancelled == 1)
            #expect(try await store.batch(batch.id)?.state == .processing)

            // Running: interrupted promptly although its echo would sleep 10 s.
            let clock = ContinuousClock()
            let started = clock.now
            let running = try await scheduler.cancelTask(runningID)
            // The answer comes once the runner has stopped (well before its 10 s sleep would end).
            #expect(clock.now - started < .seconds(6))
            #expect(running.id == runningID)
            #expect(running.state == .cancelled)
            #expect(try await store.task(runningID, includePayload: false)?.state == .cancelled)

            let all = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            // A batch whose tasks were cancelled one by one still completes.
            #expect(all.last?.kind == .batchCompleted)
            #expect(all.filter { $0.kind == .taskCancelled }.map(\.taskID) == [waitingID, runningID])
            #expect(all.filter { $0.kind == .taskStarted }.map(\.taskID) == [runningID])
            #expect(!all.contains { $0.kind == .taskCompleted || $0.kind == .taskFailed || $0.kind == .batchCancelled })
            let stored = try #require(try await store.batch(batch.id))
            #expect(stored.state == .completed)
            #expect(stored.counters.cancelled == 2)
            #expect(stored.counters.terminal == 2)
            #expect(stored.progress.percent == 100)
            let task = try #require(try await store.task(runningID, includePayload: false))
            #expect(task.state == .cancelled)
            #expect(task.attempt == 1)
            #expect(task.result == nil)
        }
    }

    @Test func cancelRunningTaskAnswersWithTheCancelledState() async throws {
        try await withScheduler { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: [
                NewTask(customID: "a", agent: "", payload: Self.slow), NewTask(customID: "b", agent: "", payload: Self.slow),
            ]))
            let first = try await collectEvents(scheduler, EventFilter(ownerID: "alice", kinds: [.taskStarted])) { _ in true }
            let id = try #require(first.first?.taskID)
            let answer = try await scheduler.cancelTask(id)
            #expect(answer.state == .cancelled)
            #expect(try await store.batch(batch.id)?.counters.cancelled == 1)
            #expect(try await store.batch(batch.id)?.counters.running == 1)
        }
    }

    @Test func cancelUnknownOrFinishedTask() async throws {
        try await withScheduler { scheduler, store in
            await #expect(throws: FanoutError.notFound("task 12345 does not exist")) { try await scheduler.cancelTask(12345) }
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: [NewTask(customID: "a", agent: "", payload: [1])]))
            _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            let last = try await store.lastEventSequence()
            let id = try #require(try await store.results(batchID: batch.id, afterTaskID: 0, limit: 1).first?.id)
            let answer = try await scheduler.cancelTask(id)
            #expect(answer.state == .completed)
            #expect(answer.result == [1])
            #expect(try await store.lastEventSequence() == last)
        }
    }

    @Test(arguments: StoreKind.allCases) func cancelBatchCancelsEverythingOnceAndIsIdempotent(on kind: StoreKind) async throws {
        let agents = [AgentConfiguration(name: "echo", runner: "echo", concurrency: 3)]
        try await withScheduler(on: kind, agents: agents) { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo",
                                                             tasks: echoTasks(10, payload: { _ in Self.slow })))
            try await waitUntil("three tasks to run") { try await store.batch(batch.id)?.counters.running == 3 }
            let clock = ContinuousClock()
            let started = clock.now
            let cancelled = try await scheduler.cancelBatch(batch.id)
            // Prompt: the running tasks' 10 s sleeps were interrupted (generous bound for loaded machines).
            #expect(clock.now - started < .seconds(6))
            #expect(cancelled.id == batch.id)
            #expect(cancelled.state == .cancelled)
            #expect(cancelled.counters.cancelled == 10)
            #expect(cancelled.counters.terminal == 10)
            #expect(cancelled.counters.running == 0)
            #expect(cancelled.counters.pending == 0)
            #expect(cancelled.finishedAt != nil)
            #expect(cancelled.progress.percent == 100)

            let events = try await allEvents(store, EventFilter(ownerID: "alice", batchID: batch.id))
            #expect(events.filter { $0.kind == .batchCancelled }.count == 1)
            #expect(events.last?.kind == .batchCancelled)
            #expect(events.last?.counters?.cancelled == 10)
            #expect(events.last?.progress == 100)
            #expect(Set(events.filter { $0.kind == .taskCancelled }.compactMap(\.taskID)).count == 10)
            #expect(events.filter { $0.kind == .taskCancelled }.count == 10)
            #expect(events.filter { $0.kind == .taskStarted }.count == 3)
            #expect(!events.contains { $0.kind == .batchCompleted || $0.kind == .taskCompleted })
            let results = try await store.results(batchID: batch.id, afterTaskID: 0, limit: 100)
            #expect(results.count == 10)
            #expect(results.allSatisfy { $0.state == .cancelled })

            // Again: same answer, nothing new written.
            let lastSequence = try await store.lastEventSequence()
            let again = try await scheduler.cancelBatch(batch.id)
            #expect(again == cancelled)
            #expect(try await store.lastEventSequence() == lastSequence)
            #expect(scheduler.statistics.running == 0)
            #expect(scheduler.statistics.activeBatches == 0)
        }
    }

    @Test(arguments: StoreKind.allCases) func cancelBatchOfPendingOnlyTasks(on kind: StoreKind) async throws {
        // The only slot is held by another batch, so nothing of this one has started.
        try await withScheduler(on: kind, globalConcurrency: 1) { scheduler, store in
            let blocker = try await scheduler.enqueue(NewBatch(ownerID: "bob", agent: "echo", tasks: echoTasks(1, payload: { _ in Self.slow })))
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(4)))
            let cancelled = try await scheduler.cancelBatch(batch.id)
            #expect(cancelled.state == .cancelled)
            #expect(cancelled.counters.cancelled == 4)
            #expect(cancelled.startedAt != nil)
            let events = try await allEvents(store, EventFilter(ownerID: "alice"))
            // Every waiting task is closed with its own event, then one progress at 100 % and the terminal event.
            #expect(events.map(\.kind) == [.taskCancelled, .taskCancelled, .taskCancelled, .taskCancelled,
                                           .batchProgress, .batchCancelled])
            #expect(events.filter { $0.kind == .batchProgress }.compactMap(\.progress) == [100])
            #expect(events.compactMap(\.taskID) == batch.taskIDs)
            #expect(try await store.batch(blocker.id)?.state == .processing)
            _ = try await scheduler.cancelBatch(blocker.id)
        }
    }

    @Test func cancelFinishedOrUnknownBatch() async throws {
        try await withScheduler { scheduler, store in
            await #expect(throws: FanoutError.notFound("batch 777 does not exist")) { try await scheduler.cancelBatch(777) }
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(2)))
            _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            let last = try await store.lastEventSequence()
            let answer = try await scheduler.cancelBatch(batch.id)
            #expect(answer.state == .completed)
            #expect(answer.counters.completed == 2)
            #expect(try await store.lastEventSequence() == last)
        }
    }
}
