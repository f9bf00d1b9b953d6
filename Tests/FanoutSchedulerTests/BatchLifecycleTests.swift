import FanoutCore
import FanoutRunners
import FanoutStore
import FanoutTestSupport
import Foundation
import Synchronization
import Testing

@testable import FanoutScheduler

/// Wall-clock milliseconds, the clock batch deadlines are given in.
func wallClockMs() -> Milliseconds { Milliseconds((Date().timeIntervalSince1970 * 1000).rounded()) }

/// Counts each task's events of `kind`.
func perTask(_ events: [EventRecord], _ kind: EventKind) -> [TaskID: Int] {
    events.filter { $0.kind == kind }.reduce(into: [:]) { $0[$1.taskID!, default: 0] += 1 }
}

/// Fails the first attempt it sees of each task in `failFirst` (not
/// retryable); every other attempt succeeds with the task's custom id.
final class FailOnceRunner: Runner {
    let failFirst: Set<String>
    private let seen = Mutex<Set<String>>([])

    init(failFirst: Set<String>) { self.failFirst = failFirst }

    func run(_ context: RunContext) async throws -> RunOutput {
        let firstTime = seen.withLock { $0.insert(context.customID).inserted }
        if firstTime && failFirst.contains(context.customID) {
            throw RunnerFailure("first run of \(context.customID) fails", code: "once", retryable: false)
        }
        return RunOutput(result: Array("done \(context.customID)".utf8))
    }
}

extension SchedulerTimingTests {
    @Suite(.postgresServer) struct BoundedMemoryTests {
        @Test(arguments: StoreKind.allCases) func windowKeepsTasksInMemoryBoundedAndEveryTaskCompletesOnce(on kind: StoreKind) async throws {
            let windowSize = 64, concurrency = 4, count = 20_000
            try await withScheduler(on: kind, globalConcurrency: concurrency, configure: { $0.windowSize = windowSize }) { scheduler, store in
                let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(count)))
                var peak = 0, samples = 0
                try await waitUntil("the 20,000-task batch to finish", timeout: .seconds(90)) {
                    let statistics = scheduler.statistics
                    peak = max(peak, statistics.tasksInMemory)
                    samples += 1
                    return statistics.activeBatches == 0
                }
                // A window is refilled when it falls below a quarter, with a page of `windowSize`:
                // at most 1.25 windows, plus the running tasks.
                let bound = windowSize + windowSize / 4 + concurrency
                #expect(peak <= bound, "peak \(peak) tasks in memory (bound \(bound), \(samples) samples)")
                #expect(peak > 0)
                #expect(samples > 20)
                #expect(scheduler.statistics.tasksInMemory == 0)

                _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id, timeout: .seconds(10))
                let stored = try #require(try await store.batch(batch.id))
                #expect(stored.state == .completed)
                #expect(stored.counters.completed == count)
                let events = try await allEvents(store, EventFilter(ownerID: "alice", batchID: batch.id))
                let completed = perTask(events, .taskCompleted)
                #expect(completed.count == count)
                #expect(completed.values.allSatisfy { $0 == 1 })
                #expect(Set(completed.keys) == Set(batch.taskIDs))
                #expect(perTask(events, .taskStarted).values.allSatisfy { $0 == 1 })
                #expect(events.filter { $0.kind == .batchCompleted }.count == 1)
            }
        }
    }
}

@Suite(.postgresServer) struct SmallWindowTests {
    /// A window is refilled when it runs low (below a quarter); with fewer
    /// than four slots a quarter is zero (and 0 is read as 1), and a batch bigger than its window
    /// must still run to the end rather than stall once the first page is used.
    @Test(arguments: [0, 1, 2, 3, 4])
    func batchesLargerThanATinyWindowRunToTheEnd(windowSize: Int) async throws {
        try await withScheduler(globalConcurrency: 2, configure: { $0.windowSize = windowSize }) { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(25)))
            // Generous: a page of one is a store round trip per task, slow when the whole suite runs at once.
            let events = try await eventsUntilBatchEnds(scheduler, batch: batch.id, timeout: .seconds(30))
            #expect(events.last?.kind == .batchCompleted)
            #expect(try await store.batch(batch.id)?.counters.completed == 25)
            #expect(scheduler.statistics.tasksInMemory == 0)
        }
    }
}

extension SchedulerTimingTests {
    @Suite(.postgresServer) struct DeadlineTests {
        @Test(arguments: StoreKind.allCases) func deadlineExpiresUnfinishedTasksAndFailsTheBatchKeepingResults(on kind: StoreKind) async throws {
            try await withScheduler(on: kind, globalConcurrency: 2) { scheduler, store in
                let slow = json(["delay_ms": 5_000])
                let fast = Array("quick".utf8)
                let payloads = (0..<10).map { $0 < 2 ? fast : slow }
                let started = ContinuousClock.now
                let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", deadlineAt: wallClockMs() + 300,
                                                                 tasks: echoTasks(10, payload: { payloads[$0] })))
                let events = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
                // Soon after the deadline (a ticker period, and a loaded machine's delays), not after the 5 s tasks.
                #expect(ContinuousClock.now - started < .seconds(4))
                #expect(events.last?.kind == .batchFailed)
                #expect(events.filter { $0.kind == .batchFailed }.count == 1)
                #expect(!events.contains { $0.kind == .batchCompleted || $0.kind == .batchCancelled })
                #expect(events.last?.progress == 100)
                #expect(events.filter { $0.kind == .batchProgress }.last?.progress == 100)

                let expired = perTask(events, .taskExpired)
                #expect(Set(expired.keys) == Set(batch.taskIDs[2...]))
                #expect(expired.values.allSatisfy { $0 == 1 })
                // Two slow tasks were running when the deadline passed; they are expired too.
                let startedIDs = Set(events.filter { $0.kind == .taskStarted }.compactMap(\.taskID))
                #expect(startedIDs.count == 4)
                #expect(startedIDs.isSuperset(of: batch.taskIDs[0...1]))
                #expect(Set(perTask(events, .taskCompleted).keys) == Set(batch.taskIDs[0...1]))

                let stored = try #require(try await store.batch(batch.id))
                #expect(stored.state == .failed)
                #expect(stored.counters.completed == 2)
                #expect(stored.counters.expired == 8)
                #expect(stored.counters.running == 0 && stored.counters.pending == 0)
                #expect(stored.progress.percent == 100)
                #expect(stored.finishedAt != nil)
                let results = try await store.results(batchID: batch.id, afterTaskID: 0, limit: 20)
                #expect(results.map(\.state) == [.completed, .completed] + Array(repeating: .expired, count: 8))
                #expect(results[0].result == fast && results[1].result == fast)
                #expect(results[2...].allSatisfy { $0.result == nil })
                #expect(scheduler.statistics.tasksInMemory == 0)
                #expect(scheduler.statistics.running == 0)
            }
        }
    }
}

@Suite(.postgresServer) struct RetryFailedTests {
    @Test(arguments: StoreKind.allCases) func retryFailedRerunsOnlyTheFailedTasksAndKeepsCompletedResults(on kind: StoreKind) async throws {
        let runner = FailOnceRunner(failFirst: ["bad0", "bad1", "bad2"])
        let agents = [AgentConfiguration(name: "work", runner: "test")]
        try await withScheduler(on: kind, agents: agents, runners: ["work": runner]) { scheduler, store in
            let ids = ["ok0", "bad0", "ok1", "bad1", "ok2", "bad2"]
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "work",
                                                             tasks: ids.map { NewTask(customID: $0, agent: "", payload: []) }))
            _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            let first = try #require(try await store.batch(batch.id))
            #expect(first.state == .completed)
            #expect(first.counters.completed == 3 && first.counters.failed == 3)
            let before = try await store.results(batchID: batch.id, afterTaskID: 0, limit: 10)
            let okBefore = before.filter { $0.state == .completed }
            #expect(okBefore.map(\.customID) == ["ok0", "ok1", "ok2"])

            let since = try await store.lastEventSequence()
            let (reopened, count) = try await scheduler.retryFailed(batch.id, includeExpired: false, includeCancelled: false)
            #expect(count == 3)
            #expect(reopened.state == .processing)
            #expect(reopened.counters.pending == 3 && reopened.counters.completed == 3 && reopened.counters.failed == 0)
            #expect(reopened.progress.percent == 50)

            let events = try await collectEvents(scheduler, EventFilter(ownerID: "alice", batchID: batch.id), since: since) {
                $0.kind == .batchCompleted
            }
            #expect(events.first?.kind == .batchProgress)
            #expect(events.first?.progress == 50)
            let progress = events.filter { $0.kind == .batchProgress }.compactMap(\.progress)
            #expect(zip(progress, progress.dropFirst()).allSatisfy { $0 <= $1 }, "\(progress)")
            #expect(progress.last == 100)
            // Only the failed tasks ran again, each once, from attempt 1.
            let restarted = events.filter { $0.kind == .taskStarted }
            #expect(Set(restarted.compactMap(\.customID)) == ["bad0", "bad1", "bad2"])
            #expect(restarted.count == 3)
            #expect(restarted.allSatisfy { $0.attempt == 1 })

            let final = try #require(try await store.batch(batch.id))
            #expect(final.state == .completed)
            #expect(final.counters.completed == 6 && final.counters.failed == 0)
            #expect(final.progress.percent == 100)
            let after = try await store.results(batchID: batch.id, afterTaskID: 0, limit: 10)
            #expect(after.map(\.state) == Array(repeating: .completed, count: 6))
            #expect(after.map(\.result) == ids.map { Array("done \($0)".utf8) })
            // The first run's results are untouched: same bytes, same finish time.
            for old in okBefore {
                let new = try #require(after.first { $0.id == old.id })
                #expect(new.result == old.result && new.finishedAt == old.finishedAt && new.attempt == old.attempt)
            }
            #expect(after.filter { $0.customID.hasPrefix("bad") }.allSatisfy { $0.failure == nil && $0.attempt == 1 })
        }
    }

    @Test(arguments: StoreKind.allCases) func retryFailedOnAProcessingBatchIsAFailedPrecondition(on kind: StoreKind) async throws {
        let gate = Gate()
        let runner = RecordingRunner(gate: gate, gated: ["held"])
        try await withScheduler(on: kind, agents: [AgentConfiguration(name: "work", runner: "test")], runners: ["work": runner]) { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "work",
                                                             tasks: [NewTask(customID: "held", agent: "", payload: [])]))
            try await waitUntil("the task to run") { runner.snapshot.starts == ["held"] }
            let error = await #expect(throws: FanoutError.self) {
                _ = try await scheduler.retryFailed(batch.id, includeExpired: true, includeCancelled: true)
            }
            #expect(error?.kind == .failedPrecondition)
            let missing = await #expect(throws: FanoutError.self) {
                _ = try await scheduler.retryFailed(987_654, includeExpired: false, includeCancelled: false)
            }
            #expect(missing?.kind == .notFound)
            gate.open()
            _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            #expect(try await store.batch(batch.id)?.counters.completed == 1)
        }
    }

    @Test(arguments: StoreKind.allCases) func includeCancelledRerunsCancelledTasks(on kind: StoreKind) async throws {
        let gate = Gate()
        let runner = RecordingRunner(gate: gate, gated: ["held"])
        try await withScheduler(on: kind, agents: [AgentConfiguration(name: "work", runner: "test")], globalConcurrency: 1,
                                runners: ["work": runner]) { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "work", tasks: [
                NewTask(customID: "held", agent: "", payload: []), NewTask(customID: "dropped", agent: "", payload: []),
                NewTask(customID: "kept", agent: "", payload: []),
            ]))
            try await waitUntil("the first task to run") { runner.snapshot.starts == ["held"] }
            #expect(try await scheduler.cancelTask(batch.taskIDs[1]).state == .cancelled)
            gate.open()
            _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            #expect(try await store.batch(batch.id)?.counters.cancelled == 1)

            // Without the flag nothing is due: the batch stays as it is and nothing is written.
            let last = try await store.lastEventSequence()
            let (unchanged, none) = try await scheduler.retryFailed(batch.id, includeExpired: false, includeCancelled: false)
            #expect(none == 0)
            #expect(unchanged.state == .completed)
            #expect(try await store.lastEventSequence() == last)

            let (reopened, one) = try await scheduler.retryFailed(batch.id, includeExpired: false, includeCancelled: true)
            #expect(one == 1)
            #expect(reopened.state == .processing)
            let events = try await collectEvents(scheduler, EventFilter(ownerID: "alice", batchID: batch.id), since: last) {
                $0.kind == .batchCompleted
            }
            #expect(events.filter { $0.kind == .taskStarted }.compactMap(\.customID) == ["dropped"])
            let final = try #require(try await store.batch(batch.id))
            #expect(final.counters.completed == 3 && final.counters.cancelled == 0)
            #expect(runner.snapshot.starts == ["held", "kept", "dropped"])
        }
    }
}

@Suite(.postgresServer) struct PartWayProgressTests {
    /// With max_turns 4, tasks that fail after some turns (or none), or fail
    /// and retry, still add up to exactly 100 %, and progress never goes back.
    @Test(arguments: [Int64(0), 100])
    func maxTurnsProgressReachesHundredWithTasksFailingPartWay(progressIntervalMs: Int64) async throws {
        let agents = [AgentConfiguration(name: "echo", runner: "echo", maxTurns: 4)]
        try await withScheduler(agents: agents, configure: { $0.progressIntervalMs = progressIntervalMs }) { scheduler, store in
            let tasks = [
                NewTask(customID: "full", agent: "", payload: json(["turns": 4, "delay_ms": 5])),
                NewTask(customID: "fail-after-4", agent: "", payload: json(["turns": 4, "delay_ms": 5, "fail": "x"])),
                NewTask(customID: "fail-after-2", agent: "", payload: json(["turns": 2, "delay_ms": 5, "fail": "x"])),
                NewTask(customID: "fail-at-once", agent: "", payload: json(["fail": "x"])),
                // 3 turns per attempt, two attempts: 6 turns reported, the first 4 counted.
                NewTask(customID: "retried", agent: "", payload: json(["turns": 3, "delay_ms": 5, "fail": "x", "retryable": true]),
                        maxAttempts: 2),
            ]
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: tasks))
            let events = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            let progress = events.filter { $0.kind == .batchProgress }.compactMap(\.progress)
            #expect(zip(progress, progress.dropFirst()).allSatisfy { $0 <= $1 }, "progress went down: \(progress)")
            #expect(progress.allSatisfy { $0 >= 0 && $0 <= 100 })
            #expect(progress.last == 100)
            #expect(events.suffix(2).map(\.kind) == [.batchProgress, .batchCompleted])
            #expect(events.filter { $0.kind == .batchCompleted }.count == 1)
            // 20 units of 5 % each: every value is a whole number of units.
            #expect(progress.allSatisfy { ($0 / 5).rounded() * 5 == $0 }, "\(progress)")
            if progressIntervalMs == 0 {
                // Uncoalesced, each of the 14 turns that count is its own step (terminal steps add more).
                #expect(Set(progress).count >= 14, "\(progress)")
            }
            let stored = try #require(try await store.batch(batch.id))
            #expect(stored.progress.units == 20)
            #expect(stored.progress.percent == 100)
            #expect(stored.counters.completed == 1 && stored.counters.failed == 4)
            let turns = try await store.results(batchID: batch.id, afterTaskID: 0, limit: 10).map { ($0.customID, $0.turnsCompleted) }
            #expect(turns.map(\.1) == [4, 4, 2, 0, 4], "\(turns)")
        }
    }
}

extension SchedulerTimingTests {
    @Suite(.postgresServer) struct LargeCancelTests {
        @Test(arguments: StoreKind.allCases) func cancellingATenThousandTaskBatchCancelsEachTaskOnce(on kind: StoreKind) async throws {
            let count = 10_000
            try await withScheduler(on: kind, globalConcurrency: 2) { scheduler, store in
                let slow = json(["delay_ms": 10_000])
                // The first four are quick: they complete before the cancel and stay completed.
                let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo",
                                                                 tasks: echoTasks(count, payload: { $0 < 4 ? [UInt8($0)] : slow })))
                try await waitUntil("the quick tasks to complete and two slow ones to run") {
                    let counters = try await store.batch(batch.id)?.counters
                    return counters?.completed == 4 && counters?.running == 2
                }
                #expect(scheduler.statistics.tasksInMemory <= SchedulerConfiguration(agents: []).windowSize * 5 / 4 + 2)
                let clock = ContinuousClock()
                let started = clock.now
                let cancelled = try await scheduler.cancelBatch(batch.id)
                #expect(clock.now - started < .seconds(3))
                #expect(cancelled.state == .cancelled)
                #expect(cancelled.counters.completed == 4)
                #expect(cancelled.counters.cancelled == count - 4)
                #expect(cancelled.counters.pending == 0 && cancelled.counters.running == 0)
                #expect(cancelled.progress.percent == 100)

                let events = try await allEvents(store, EventFilter(ownerID: "alice", batchID: batch.id))
                let cancelledEvents = perTask(events, .taskCancelled)
                #expect(cancelledEvents.count == count - 4)
                #expect(cancelledEvents.values.allSatisfy { $0 == 1 })
                #expect(Set(cancelledEvents.keys) == Set(batch.taskIDs[4...]))
                #expect(Set(perTask(events, .taskCompleted).keys) == Set(batch.taskIDs[0..<4]))
                #expect(events.filter { $0.kind == .batchCancelled }.count == 1)
                #expect(events.last?.kind == .batchCancelled)

                let statistics = scheduler.statistics
                #expect(statistics.tasksInMemory == 0)
                #expect(statistics.pending == 0 && statistics.running == 0 && statistics.activeBatches == 0)
            }
        }
    }
}
