import FanoutCore
import FanoutStore
import FanoutTestSupport
import Foundation
import Testing

@testable import FanoutScheduler

@Suite(.postgresServer) struct ProgressEventTests {
    func distinct(_ values: [Double]) -> [Double] { Array(Set(values)).sorted() }

    /// k × 100 / units for k in 1...units: every value progress takes when each unit is reported.
    func steps(_ units: Int) -> [Double] { (1...units).map { (k: Int) -> Double in Double(k) * 100 / Double(units) } }

    /// Checks what every batch's event stream must satisfy and returns the progress values.
    func checkProgressStream(_ events: [EventRecord]) -> [Double] {
        let progress = events.filter { $0.kind == .batchProgress }.compactMap(\.progress)
        #expect(!progress.isEmpty)
        #expect(zip(progress, progress.dropFirst()).allSatisfy { $0 <= $1 }, "progress went down: \(progress)")
        #expect(progress.allSatisfy { $0 >= 0 && $0 <= 100 })
        #expect(progress.last == 100)
        // The last two events: progress at exactly 100, then exactly one batch_completed.
        #expect(events.suffix(2).map(\.kind) == [.batchProgress, .batchCompleted])
        #expect(events.filter { $0.kind == .batchCompleted }.count == 1)
        #expect(events.last?.progress == 100)
        return progress
    }

    @Test(arguments: StoreKind.allCases) func maxTurnsProgressMovesEveryTurnAndEndsAtHundred(on kind: StoreKind) async throws {
        let agents = [AgentConfiguration(name: "echo", runner: "echo", maxTurns: 4)]
        try await withScheduler(on: kind, agents: agents) { scheduler, store in
            let payload = json(["turns": 4, "delay_ms": 5])
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(6, payload: { _ in payload })))
            #expect(batch.progress.maxTurns == 4)
            let events = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            _ = checkProgressStream(events)

            let turns = events.filter { $0.kind == .taskTurn }
            #expect(turns.count == 24)
            for (task, taskTurns) in Dictionary(grouping: turns, by: { $0.taskID! }) {
                #expect(taskTurns.map(\.turn) == [1, 2, 3, 4], "task \(task)")
            }
            #expect(events.filter { $0.kind == .taskCompleted }.count == 6)
            let stored = try #require(try await store.batch(batch.id))
            #expect(stored.progress.units == 24)
            #expect(stored.progress.percent == 100)
            let results = try await store.results(batchID: batch.id, afterTaskID: 0, limit: 10)
            #expect(results.map(\.turnsCompleted) == Array(repeating: 4, count: 6))
        }
    }

    @Test(arguments: StoreKind.allCases) func everyTurnIsAProgressStepWithoutCoalescing(on kind: StoreKind) async throws {
        let agents = [AgentConfiguration(name: "echo", runner: "echo", maxTurns: 4)]
        try await withScheduler(on: kind, agents: agents, configure: { $0.progressIntervalMs = 0 }) { scheduler, _ in
            let payload = json(["turns": 4, "delay_ms": 2])
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(5, payload: { _ in payload })))
            let events = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            let progress = checkProgressStream(events)
            // 5 tasks × 4 turns = 20 units: each turn is a step of exactly 5 %.
            #expect(distinct(progress) == steps(20))
            // Each turn is followed by its progress event carrying the counters of that moment.
            let progressEvents = events.filter { $0.kind == .batchProgress }
            #expect(progressEvents.allSatisfy { $0.counters?.total == 5 })
            #expect(progressEvents.last?.counters?.completed == 5)
        }
    }

    @Test(arguments: StoreKind.allCases) func turnsBeyondMaxTurnsAreCapped(on kind: StoreKind) async throws {
        let agents = [AgentConfiguration(name: "echo", runner: "echo", maxTurns: 4)]
        try await withScheduler(on: kind, agents: agents, configure: { $0.progressIntervalMs = 0 }) { scheduler, store in
            let payload = json(["turns": 6, "delay_ms": 1])
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(2, payload: { _ in payload })))
            let events = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            let progress = checkProgressStream(events)
            #expect(distinct(progress) == steps(8))
            // Turns past max_turns are ignored: no event, not counted.
            #expect(events.filter { $0.kind == .taskTurn }.count == 8)
            let stored = try #require(try await store.batch(batch.id))
            #expect(stored.progress.units == 8)
            #expect(try await store.results(batchID: batch.id, afterTaskID: 0, limit: 10).map(\.turnsCompleted) == [4, 4])
        }
    }

    @Test(arguments: StoreKind.allCases) func fewerTurnsThanMaxTurnsJumpToDoneAtTheEnd(on kind: StoreKind) async throws {
        let agents = [AgentConfiguration(name: "echo", runner: "echo", maxTurns: 4)]
        try await withScheduler(on: kind, agents: agents, globalConcurrency: 1, configure: { $0.progressIntervalMs = 0 }) { scheduler, _ in
            let payload = json(["turns": 1, "delay_ms": 1])
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(2, payload: { _ in payload })))
            let events = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            let progress = checkProgressStream(events)
            // One at a time: turn (1/8), terminal (+3 → 4/8), turn (5/8), terminal (8/8).
            #expect(distinct(progress) == [12.5, 50, 62.5, 100])
        }
    }

    @Test(arguments: StoreKind.allCases) func withoutMaxTurnsProgressCountsFinishedTasks(on kind: StoreKind) async throws {
        try await withScheduler(on: kind, globalConcurrency: 1, configure: { $0.progressIntervalMs = 0 }) { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: [
                NewTask(customID: "a", agent: "", payload: []),
                NewTask(customID: "b", agent: "", payload: json(["fail": "no"])),
                NewTask(customID: "c", agent: "", payload: json(["turns": 3])), // turns do not count without max_turns
                NewTask(customID: "d", agent: "", payload: []),
            ]))
            let events = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            let progress = checkProgressStream(events)
            #expect(progress == [25, 50, 75, 100])
            #expect(events.filter { $0.kind == .taskTurn }.count == 3)
            #expect(try await store.batch(batch.id)?.progress.units == 4)
        }
    }

    @Test(arguments: StoreKind.allCases) func coalescedProgressStillAlwaysReachesHundred(on kind: StoreKind) async throws {
        try await withScheduler(on: kind, configure: { $0.progressIntervalMs = 10_000 }) { scheduler, _ in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(50)))
            let events = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            let progress = checkProgressStream(events)
            // The first change is reported at once, the rest is held back until the end.
            #expect(progress.count == 2)
            #expect(progress.first == 2)
        }
    }
}
