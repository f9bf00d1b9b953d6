import FanoutCore
import FanoutRunners
import FanoutStore
import FanoutTestSupport
import Foundation
import Synchronization
import Testing

@testable import FanoutScheduler

/// Reports `turns` turns as fast as it can, then succeeds.
struct TurnFloodRunner: Runner {
    let turns: Int

    func run(_ context: RunContext) async throws -> RunOutput {
        for _ in 0..<turns {
            try Task.checkCancellation()
            await context.reportTurn()
        }
        return RunOutput(result: Array("\(turns) turns".utf8))
    }
}

/// Records the turn budget each attempt was given.
final class BudgetRecordingRunner: Runner {
    let budgets = Mutex<[String: Int]>([:])

    func run(_ context: RunContext) async throws -> RunOutput {
        budgets.withLock { $0[context.customID] = context.maxTurns }
        return RunOutput(result: [])
    }
}

@Suite struct TurnBoundTests {
    @Test("with max_turns, a runner reporting 200 turns per task produces exactly max_turns turn events per task")
    func maxTurnsBoundsTurnEvents() async throws {
        let agents = [AgentConfiguration(name: "flood", runner: "flood", maxTurns: 5)]
        try await withScheduler(agents: agents, runners: ["flood": TurnFloodRunner(turns: 200)]) { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "flood", tasks: echoTasks(3)))
            _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id, timeout: .seconds(60))
            let turns = try await allEvents(store, EventFilter(ownerID: "alice", kinds: [.taskTurn], batchID: batch.id))
            #expect(turns.count == 15, "\(turns.count) turn events")
            #expect(Set(turns.compactMap(\.turn)) == Set(1...5))
            let stored = try await store.results(batchID: batch.id, afterTaskID: 0, limit: 10)
            #expect(stored.map(\.turnsCompleted) == [5, 5, 5])
            #expect(try await store.batch(batch.id)?.progress.percent == 100)
        }
    }

    @Test("without max_turns, 200,000 turns are counted in full and their events coalesced")
    func turnsWithoutBudgetAreCoalesced() async throws {
        let count = 200_000
        let agents = [AgentConfiguration(name: "flood", runner: "flood")]
        try await withScheduler(agents: agents, runners: ["flood": TurnFloodRunner(turns: count)],
                                configure: { $0.progressIntervalMs = 50 }) { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "flood", tasks: echoTasks(1)))
            _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id, timeout: .seconds(60))
            let turns = try await allEvents(store, EventFilter(ownerID: "alice", kinds: [.taskTurn], batchID: batch.id))
            // One at the first turn, then at most one per 50 ms, and the last count before the end.
            #expect(turns.count < 2_000, "\(turns.count) turn events for \(count) turns")
            #expect(turns.last?.turn == count)
            #expect(try await store.results(batchID: batch.id, afterTaskID: 0, limit: 1).first?.turnsCompleted == count)
        }
    }

    @Test("progress reaching 100 % on a last turn before the task ends still gives exactly one event at 100 %")
    func oneProgressEventAtHundred() async throws {
        let agents = [AgentConfiguration(name: "echo", runner: "echo", maxTurns: 2)]
        try await withScheduler(agents: agents, configure: { $0.progressIntervalMs = 0 }) { scheduler, _ in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: [
                NewTask(customID: "a", agent: "", payload: json(["turns": 2, "delay_ms": 30])),
            ]))
            let events = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            let progress = events.filter { $0.kind == .batchProgress }.compactMap(\.progress)
            #expect(progress.filter { $0 == 100 }.count == 1, "\(progress)")
            #expect(progress.last == 100)
            #expect(events.suffix(2).map(\.kind) == [.batchProgress, .batchCompleted])
        }
    }

    @Test("a runner is told its task's max_turns, not its batch's")
    func runnerGetsTheTasksTurnBudget() async throws {
        let runner = BudgetRecordingRunner()
        let agents = [AgentConfiguration(name: "four", runner: "r", maxTurns: 4), AgentConfiguration(name: "nine", runner: "r", maxTurns: 9)]
        try await withScheduler(agents: agents, runners: ["four": runner, "nine": runner]) { scheduler, _ in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "four", tasks: [
                NewTask(customID: "a", agent: "four", payload: []), NewTask(customID: "b", agent: "nine", payload: []),
            ]))
            _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            #expect(runner.budgets.withLock { $0 } == ["a": 4, "b": 9])
        }
    }

    @Test("the echo runner refuses turns and delays past its caps, at once and without retrying")
    func echoCaps() async throws {
        try await withScheduler { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: [
                NewTask(customID: "turns", agent: "", payload: json(["turns": 1_000_000_000]), maxAttempts: 3),
                NewTask(customID: "delay", agent: "", payload: json(["delay_ms": 1e30]), maxAttempts: 3),
                NewTask(customID: "negative", agent: "", payload: json(["turns": -1]), maxAttempts: 3),
            ]))
            _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            let results = try await store.results(batchID: batch.id, afterTaskID: 0, limit: 10)
            #expect(results.map(\.state) == [.failed, .failed, .failed])
            #expect(results.allSatisfy { $0.failure?.code == "invalid_payload" && $0.attempt == 1 }, "\(results)")
            #expect(results[0].failure?.message.contains("\(EchoRunner.maxTurns)") == true)
        }
    }

    @Test("a runner reporting turns faster than commits land waits: the commit queue stays bounded")
    func turnReportsAreBackpressured() async throws {
        // With max_turns every turn is written (a row change and an event): the flood that needs a brake.
        let agents = [AgentConfiguration(name: "flood", runner: "flood", concurrency: 8, maxTurns: 1_000_000)]
        try await withScheduler(agents: agents, runners: ["flood": TurnFloodRunner(turns: 20_000)],
                                configure: { $0.maxChangesPerCommit = 500 }) { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "flood", tasks: echoTasks(8)))
            let peak = Mutex(0)
            let watcher = Task {
                while !Task.isCancelled {
                    let queued = scheduler.statistics.queuedChanges
                    peak.withLock { $0 = max($0, queued) }
                    try? await Task.sleep(for: .milliseconds(1))
                }
            }
            _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id, timeout: .seconds(60))
            watcher.cancel()
            // Each of the 8 runners adds at most one change past the bound before it waits; the
            // scheduler's own decisions (starts, finishes, progress) add a few more.
            #expect(peak.withLock { $0 } < 500 + 200, "peak queue \(peak.withLock { $0 })")
            #expect(try await store.batch(batch.id)?.counters.completed == 8)
        }
    }
}
