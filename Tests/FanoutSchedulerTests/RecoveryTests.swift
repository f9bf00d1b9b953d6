import FanoutTestSupport
import FanoutCore
import FanoutRunners
import FanoutStore
import Foundation
import Testing

@testable import FanoutScheduler

@Suite struct RecoveryTests {
    static func makeScheduler(_ store: SQLiteStore, concurrency: Int = 4) throws -> Scheduler {
        let configuration = SchedulerConfiguration(globalConcurrency: concurrency, agents: [AgentConfiguration(name: "echo", runner: "echo")])
        return try Scheduler(store: store, configuration: configuration, runners: ["echo": EchoRunner()])
    }

    @Test func restartFinishesTheBatchWithEveryTaskCompletedOnce() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/fanout.db"
            // t0–t3 are quick, the rest slow: the shutdown comes while t4–t7 run. Slow enough that
            // it does on a loaded machine too, where noticing the first wave can take a second.
            let quick = json(["delay_ms": 5])
            let slow = json(["delay_ms": 3_000])
            let payloads = (0..<16).map { $0 < 4 ? quick : slow }

            // First life: stop while the second wave of tasks runs.
            let batchID: BatchID = try await {
                let store = try SQLiteStore(path: path)
                let scheduler = try Self.makeScheduler(store)
                try scheduler.start()
                let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(16, payload: { payloads[$0] })))
                try await waitUntil("the first wave to complete") { (try await store.batch(batch.id)?.counters.completed ?? 0) >= 4 }
                await scheduler.shutdown()
                let stopped = try #require(try await store.batch(batch.id))
                #expect(stopped.state == .processing)
                #expect(stopped.counters.completed == 4)
                #expect(stopped.counters.running == 0)
                #expect(stopped.counters.pending == 12)
                // Interrupted tasks were put back to pending; a graceful stop gives their attempt back.
                var interrupted: [TaskRecord] = []
                for id in batch.taskIDs[4...7] { interrupted.append(try #require(try await store.task(id, includePayload: false))) }
                #expect(interrupted.map(\.state) == Array(repeating: .pending, count: 4))
                #expect(interrupted.map(\.attempt) == [0, 0, 0, 0])
                return batch.id
            }()

            // Second life on the same file, with room for every remaining task at once.
            let store = try SQLiteStore(path: path)
            let scheduler = try Self.makeScheduler(store, concurrency: 16)
            try scheduler.start()
            do {
                try await waitUntil("the batch to finish after the restart", timeout: .seconds(20)) {
                    try await store.batch(batchID)?.state == .completed
                }
                let batch = try #require(try await store.batch(batchID))
                #expect(batch.counters.completed == 16)
                #expect(batch.counters.terminal == 16)
                #expect(batch.progress.percent == 100)

                let events = try await allEvents(store, EventFilter(ownerID: "alice", batchID: batchID))
                let completedPerTask = Dictionary(grouping: events.filter { $0.kind == .taskCompleted }, by: { $0.taskID! })
                #expect(completedPerTask.count == 16)
                #expect(completedPerTask.values.allSatisfy { $0.count == 1 })
                #expect(events.filter { $0.kind == .batchCompleted }.count == 1)
                #expect(events.last?.kind == .batchCompleted)
                #expect(isStrictlyIncreasing(events.map(\.sequence)))

                // Every start is an attempt, except those a graceful stop gave back.
                let startsPerTask = Dictionary(grouping: events.filter { $0.kind == .taskStarted }, by: { $0.taskID! })
                let results = try await store.results(batchID: batchID, afterTaskID: 0, limit: 100)
                #expect(results.count == 16)
                for (index, task) in results.enumerated() {
                    #expect(task.state == .completed)
                    #expect(task.result == payloads[index])
                    let interruptedByTheStop = (4...7).contains(index) ? 1 : 0
                    #expect(startsPerTask[task.id]?.count == task.attempt + interruptedByTheStop, "task \(task.customID)")
                    // Nothing starts again after its completion.
                    let lastStart = startsPerTask[task.id]!.map(\.sequence).max()!
                    #expect(lastStart < completedPerTask[task.id]![0].sequence)
                }
                #expect(results.allSatisfy { $0.attempt == 1 }, "\(results.map(\.attempt))")
            } catch {
                await scheduler.shutdown()
                throw error
            }
            await scheduler.shutdown()
        }
    }

    @Test func restartResumesEventSequences() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/fanout.db"
            let first: EventSequence = try await {
                let store = try SQLiteStore(path: path)
                let scheduler = try Self.makeScheduler(store)
                try scheduler.start()
                let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(3)))
                _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
                await scheduler.shutdown()
                return try await store.lastEventSequence()
            }()
            let store = try SQLiteStore(path: path)
            let scheduler = try Self.makeScheduler(store)
            try scheduler.start()
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(2)))
            // A subscriber that resumes from before the restart sees the old events, then the new ones.
            let events = try await collectEvents(scheduler, EventFilter(ownerID: "alice"), since: first - 2) {
                $0.kind == .batchCompleted && $0.batchID == batch.id
            }
            await scheduler.shutdown()
            #expect(events.first?.sequence == first - 1)
            #expect(isStrictlyIncreasing(events.map(\.sequence)))
            #expect(zip(events, events.dropFirst()).allSatisfy { $1.sequence == $0.sequence + 1 })
            #expect(events.filter { $0.batchID == batch.id && $0.kind == .taskCompleted }.count == 2)
        }
    }
}

func isStrictlyIncreasing(_ values: [EventSequence]) -> Bool {
    zip(values, values.dropFirst()).allSatisfy { $0 < $1 }
}
