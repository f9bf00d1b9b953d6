import FanoutCore
import FanoutRunners
import FanoutStore
import FanoutTestSupport
import Foundation
import Testing

@testable import FanoutScheduler

/// While the store refuses writes, nothing is acknowledged or published that
/// is not committed, new work is refused with UNAVAILABLE, reads go on, and
/// the daemon resumes by itself with nothing lost and nothing duplicated.
@Suite struct StoreFailureTests {
    private static func withFaultyScheduler<T>(_ body: (Scheduler, FaultyStore) async throws -> T) async throws -> T {
        try await withScheduler(over: FaultyStore.init, globalConcurrency: 8, body)
    }

    @Test("commits failing for a while: enqueues refused with UNAVAILABLE, reads served, then every task completes once")
    func storeFailsForAWhile() async throws {
        try await Self.withFaultyScheduler { scheduler, store in
            let tasks = (0..<200).map { NewTask(customID: "t\($0)", agent: "", payload: json(["delay_ms": 20])) }
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: tasks))
            // Failing until healed: however slow the machine, the running batch's next commit fails.
            store.failWrites()
            try await waitUntil("the commit loop to notice", timeout: .seconds(20)) { scheduler.storeFailure != nil }
            do {
                _ = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(1)))
                Issue.record("an enqueue was accepted while the store failed")
            } catch let error as FanoutError {
                #expect(error.kind == .unavailable)
                #expect(error.message.contains("injected fault"), "\(error.message)")
            }
            // Reads still work meanwhile.
            #expect(try await store.batch(batch.id) != nil)
            store.heal()
            _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id, timeout: .seconds(30))
            #expect(store.failedCommits > 0)
            #expect(scheduler.storeFailure == nil)
            let stored = try #require(try await store.batch(batch.id))
            #expect(stored.state == .completed)
            #expect(stored.counters.completed == 200)
            let events = try await allEvents(store.base, EventFilter(ownerID: "alice", batchID: batch.id))
            #expect(isStrictlyIncreasing(events.map(\.sequence)))
            let completed = Dictionary(grouping: events.filter { $0.kind == .taskCompleted }, by: { $0.taskID! })
            #expect(completed.count == 200 && completed.values.allSatisfy { $0.count == 1 })
            #expect(events.filter { $0.kind == .batchCompleted }.count == 1)
            // Accepting work again.
            let next = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(3)))
            _ = try await eventsUntilBatchEnds(scheduler, batch: next.id)
        }
    }

    @Test("a commit that fails 60 times in a row is still written, never dropped")
    func manyFailuresAreNotDropped() async throws {
        try await Self.withFaultyScheduler { scheduler, store in
            store.failNextCommits(60)
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(5)))
            _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id, timeout: .seconds(30))
            #expect(store.failedCommits == 60)
            #expect(try await store.batch(batch.id)?.counters.completed == 5)
        }
    }
}
