import FanoutCore
@testable import FanoutPostgresStore
import FanoutRunners
import FanoutStore
import FanoutTestSupport
import Testing

@testable import FanoutScheduler

/// The scheduler on the PostgreSQL store, against a real server: the same
/// path as on SQLite (commit loop, windows, events, recovery), one daemon.
@Suite(.postgresServer) struct PostgresSchedulerTests {
    static func makeScheduler(_ store: PostgresStore, concurrency: Int = 16, pollMs: Int64? = nil) throws -> Scheduler {
        var configuration = SchedulerConfiguration(globalConcurrency: concurrency, agents: [AgentConfiguration(name: "echo", runner: "echo")])
        if let pollMs { configuration.sharedStorePollMs = pollMs }
        return try Scheduler(store: store, configuration: configuration, runners: ["echo": EchoRunner()])
    }

    /// A claim this daemon made but whose tasks its scheduler holds nowhere would be renewed for as
    /// long as the daemon lives, and nobody would run them. Its scheduler gives such claims back.
    @Test func claimsTheSchedulerHoldsNowhereAreGivenBackAndTheirTasksRun() async throws {
        try await PostgresTestServer.current().withStore(database: "scheduler_forgotten_claims", leaseMs: 2_000) { store in
            let scheduler = try Self.makeScheduler(store, concurrency: 4, pollMs: 100)
            try scheduler.start()
            // A batch for an agent this daemon does not run, so it claims none of it; then, in one
            // statement, its tasks become echo's, claimed by this daemon a while ago: as if a window
            // read had claimed them and the window had been dropped without giving them back.
            let tasks = echoTasks(5).map { task in
                var task = task
                task.agent = "elsewhere"
                return task
            }
            let batch = try store.insertBatch(NewBatch(ownerID: "alice", agent: "elsewhere", tasks: tasks), now: WallClock.now).batch
            _ = try await store.rows("""
                UPDATE tasks SET agent = 'echo', claimed_by = \(store.daemonID), claimed_at = 0,
                    lease_expires_at = \(unescaped: ClaimStatements.serverNowMs) + 2000
                WHERE batch_id = \(batch.id)
                """)
            try await waitUntil("the forgotten claims to be given back and their tasks run", timeout: .seconds(30)) {
                try await store.batch(batch.id)?.state == .completed
            }
            await scheduler.shutdown()
            let results = try await store.results(batchID: batch.id, afterTaskID: 0, limit: 10)
            #expect(results.map(\.state) == Array(repeating: .completed, count: 5))
            #expect(results.allSatisfy { $0.attempt == 1 }, "\(results.map(\.attempt))")
        }
    }

    @Test func aBatchLargerThanAWindowRunsToCompletionWithEveryTaskOnce() async throws {
        try await PostgresTestServer.current().withStore(database: "scheduler_run") { store in
            let scheduler = try Self.makeScheduler(store)
            try scheduler.start()
            // Over the 512-task window: the rest is read from the store in windows as slots free up.
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(700))).batch
            // A generous bound: beside the other suites (three-daemon tests included) one server serves every test.
            let events = try await collectEvents(scheduler, EventFilter(ownerID: "alice", batchID: batch.id), timeout: .seconds(90)) {
                $0.kind == .batchCompleted
            }
            await scheduler.shutdown()

            let completed = Dictionary(grouping: events.filter { $0.kind == .taskCompleted }, by: { $0.taskID! })
            #expect(completed.count == 700 && completed.values.allSatisfy { $0.count == 1 })
            #expect(isStrictlyIncreasing(events.map(\.sequence)))
            let stored = try #require(try await store.batch(batch.id))
            #expect(stored.state == .completed && stored.counters.completed == 700 && stored.progress.percent == 100)
            let results = try await store.results(batchID: batch.id, afterTaskID: 0, limit: 1_000)
            #expect(results.count == 700)
            #expect(results.first?.result == Array("{\"n\":0}".utf8))
            // A replay from the store sees what the live subscriber saw.
            let replayed = try await store.events(after: 0, upTo: nil, filter: EventFilter(ownerID: "alice", batchID: batch.id), limit: 10_000)
            #expect(replayed.map(\.sequence) == events.map(\.sequence))
        }
    }

    @Test func aRestartFinishesTheBatchAStopInterrupted() async throws {
        try await PostgresTestServer.current().withStore(database: "scheduler_restart") { store in
            // Slow tasks, so the stop comes while some run and most wait.
            let slow = json(["delay_ms": 3_000])
            let first = try Self.makeScheduler(store, concurrency: 2)
            try first.start()
            let batch = try await first.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(6, payload: { _ in slow }))).batch
            try await waitUntil("two tasks to run") { try await store.batch(batch.id)?.counters.running == 2 }
            await first.shutdown()
            #expect(try await store.batch(batch.id)?.counters.pending == 6)
            // A new daemon's store: the first one's lock goes with its connection.
            store.close()
            let restarted = PostgresStore(location: store.location)
            try await restarted.withRunning {
                let second = try Self.makeScheduler(restarted, concurrency: 6)
                try second.start()
                try await waitUntil("the batch to finish after the restart", timeout: .seconds(20)) {
                    try await restarted.batch(batch.id)?.state == .completed
                }
                await second.shutdown()
                let results = try await restarted.results(batchID: batch.id, afterTaskID: 0, limit: 10)
                #expect(results.map(\.state) == Array(repeating: .completed, count: 6))
                // A graceful stop gives the interrupted attempt back: every task completed on attempt 1.
                #expect(results.allSatisfy { $0.attempt == 1 }, "\(results.map(\.attempt))")
            }
        }
    }
}
