import FanoutCore
import FanoutStore
import FanoutTestSupport
import Foundation
import Synchronization
import Testing

@testable import FanoutScheduler

/// Fails with a retryable error until attempt `succeedOn`, asking for `retryAfterMs`.
struct FlakyRunner: Runner {
    var succeedOn: Int
    var retryAfterMs: Int64?

    func run(_ context: RunContext) async throws -> RunOutput {
        if context.attempt < succeedOn {
            throw RunnerFailure("overloaded (attempt \(context.attempt))", code: "429", retryable: true, retryAfterMs: retryAfterMs)
        }
        return RunOutput(result: Array("ok on \(context.attempt)".utf8))
    }
}

/// On both stores: each test runs on SQLite and on PostgreSQL.
@Suite(.postgresServer) struct FailureAndRetryTests {
    func events(_ all: [EventRecord], task: TaskID) -> [EventRecord] { all.filter { $0.taskID == task } }

    @Test func failingTaskDoesNotFailTheBatch() async throws {
        try await withScheduler { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: [
                NewTask(customID: "ok1", agent: "", payload: Array("one".utf8)),
                NewTask(customID: "bad", agent: "", payload: json(["fail": "boom"]), maxAttempts: 3),
                NewTask(customID: "ok2", agent: "", payload: Array("two".utf8)),
            ]))
            let all = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            #expect(all.last?.kind == .batchCompleted)
            #expect(all.filter { $0.kind == .batchCompleted }.count == 1)
            #expect(!all.contains { $0.kind == .batchFailed })
            #expect(!all.contains { $0.kind == .taskRetrying })

            let stored = try #require(try await store.batch(batch.id))
            #expect(stored.state == .completed)
            #expect(stored.counters.completed == 2)
            #expect(stored.counters.failed == 1)
            #expect(stored.counters.terminal == 3)
            #expect(stored.progress.percent == 100)

            let results = try await store.results(batchID: batch.id, afterTaskID: 0, limit: 10)
            #expect(results.map(\.customID) == ["ok1", "bad", "ok2"])
            #expect(results.map(\.state) == [.completed, .failed, .completed])
            #expect(results[0].result == Array("one".utf8))
            #expect(results[2].result == Array("two".utf8))
            let bad = results[1]
            // Not retryable: failed on the first attempt although three were allowed.
            #expect(bad.attempt == 1)
            #expect(bad.maxAttempts == 3)
            #expect(bad.failure == TaskFailure(message: "boom", code: "echo_fail", retryable: false))
            #expect(bad.result == nil)
            #expect(events(all, task: bad.id).map(\.kind) == [.taskStarted, .taskFailed])
            let failed = try #require(all.first { $0.kind == .taskFailed })
            #expect(failed.attempt == 1)
            #expect(failed.customID == "bad")
            #expect(failed.failure == TaskFailure(message: "boom", code: "echo_fail", retryable: false))
        }
    }

    @Test func retryableFailureIsRetriedUpToMaxAttempts() async throws {
        try await withScheduler { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: [
                NewTask(customID: "flaky", agent: "", payload: json(["fail": "try again", "retryable": true]), maxAttempts: 3),
            ]))
            let all = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            let taskEvents = all.filter { $0.taskID != nil }
            #expect(taskEvents.map(\.kind) == [.taskStarted, .taskRetrying, .taskStarted, .taskRetrying, .taskStarted, .taskFailed])
            #expect(taskEvents.map(\.attempt) == [1, 1, 2, 2, 3, 3])
            let retries = taskEvents.filter { $0.kind == .taskRetrying }
            let failure = TaskFailure(message: "try again", code: "echo_fail", retryable: true)
            #expect(retries.map(\.failure) == [failure, failure])
            // Backoff(baseMs: 10, maxMs: 50): before attempt 2 within [5, 10], before attempt 3 within [10, 20].
            let delays = retries.compactMap(\.retryDelayMs)
            #expect(delays.count == 2)
            #expect((5...10).contains(delays[0]), "first delay \(delays[0])")
            #expect((10...20).contains(delays[1]), "second delay \(delays[1])")
            // The next attempt starts no earlier than the delay asked for.
            #expect(taskEvents[2].timestamp - taskEvents[1].timestamp >= delays[0] - 1)
            #expect(taskEvents[4].timestamp - taskEvents[3].timestamp >= delays[1] - 1)

            let task = try #require(try await store.results(batchID: batch.id, afterTaskID: 0, limit: 1).first)
            #expect(task.state == .failed)
            #expect(task.attempt == 3)
            #expect(task.failure == failure)
            let stored = try #require(try await store.batch(batch.id))
            #expect(stored.state == .completed)
            #expect(stored.counters.failed == 1)
            #expect(stored.counters.retryWait == 0)
            #expect(stored.counters.pending == 0)
        }
    }

    @Test(arguments: StoreKind.allCases) func retryThatSucceedsHonoursRetryAfter(on kind: StoreKind) async throws {
        let agents = [AgentConfiguration(name: "flaky", runner: "test")]
        try await withScheduler(on: kind, agents: agents, runners: ["flaky": FlakyRunner(succeedOn: 3, retryAfterMs: 30)]) { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "flaky", tasks: [
                NewTask(customID: "x", agent: "", payload: [], maxAttempts: 5),
            ]))
            let all = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            let retries = all.filter { $0.kind == .taskRetrying }
            // Retry-After (30 ms) is longer than the backoff (at most 20 ms here), so it wins exactly.
            #expect(retries.map(\.retryDelayMs) == [30, 30])
            #expect(retries.map(\.attempt) == [1, 2])
            #expect(retries.map { $0.failure?.message } == ["overloaded (attempt 1)", "overloaded (attempt 2)"])
            let completed = try #require(all.first { $0.kind == .taskCompleted })
            #expect(completed.attempt == 3)
            let task = try #require(try await store.task(completed.taskID!, includePayload: false))
            #expect(task.state == .completed)
            #expect(task.attempt == 3)
            #expect(task.result == Array("ok on 3".utf8))
            #expect(try await store.batch(batch.id)?.counters.completed == 1)
        }
    }

    @Test func nonRetryableFailureFailsAtOnce() async throws {
        try await withScheduler { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: [
                NewTask(customID: "x", agent: "", payload: json(["fail": "bad input", "retryable": false]), maxAttempts: 4),
            ]))
            let all = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            #expect(all.compactMap { $0.taskID == nil ? nil : $0.kind } == [.taskStarted, .taskFailed])
            let task = try #require(try await store.results(batchID: batch.id, afterTaskID: 0, limit: 1).first)
            #expect(task.attempt == 1)
            #expect(task.state == .failed)
            #expect(task.failure == TaskFailure(message: "bad input", code: "echo_fail", retryable: false))
        }
    }

    @Test(arguments: StoreKind.allCases) func attemptTimeoutIsARetryableFailure(on kind: StoreKind) async throws {
        let agents = [AgentConfiguration(name: "echo", runner: "echo", timeoutMs: 50)]
        try await withScheduler(on: kind, agents: agents) { scheduler, store in
            let started = ContinuousClock.now
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: [
                NewTask(customID: "slow", agent: "", payload: json(["delay_ms": 10_000]), maxAttempts: 2),
            ]))
            let all = try await eventsUntilBatchEnds(scheduler, batch: batch.id, timeout: .seconds(15))
            // Both attempts were cut short (their outcomes below are timeouts): under 2 × 10 s, what the echo
            // asked for. The bound is loose: at the start of the full suite this machine stalls for seconds.
            #expect(ContinuousClock.now - started < .seconds(19))
            let taskEvents = all.filter { $0.taskID != nil }
            #expect(taskEvents.map(\.kind) == [.taskStarted, .taskRetrying, .taskStarted, .taskFailed])
            #expect(taskEvents.map(\.attempt) == [1, 1, 2, 2])
            let timeout = TaskFailure(message: "attempt timed out after 50 ms", code: "timeout", retryable: true)
            #expect(taskEvents[1].failure == timeout)
            #expect(taskEvents[3].failure == timeout)
            // Each attempt ran for at least its timeout.
            #expect(taskEvents[1].timestamp - taskEvents[0].timestamp >= 49)
            let task = try #require(try await store.results(batchID: batch.id, afterTaskID: 0, limit: 1).first)
            #expect(task.state == .failed)
            #expect(task.attempt == 2)
            #expect(task.failure == timeout)
        }
    }

    @Test(arguments: StoreKind.allCases) func taskTimeoutOverridesTheAgentDefault(on kind: StoreKind) async throws {
        let agents = [AgentConfiguration(name: "echo", runner: "echo", timeoutMs: 10_000)]
        try await withScheduler(on: kind, agents: agents) { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: [
                NewTask(customID: "slow", agent: "", payload: json(["delay_ms": 10_000]), maxAttempts: 1, timeoutMs: 30),
                NewTask(customID: "fast", agent: "", payload: json(["delay_ms": 1]), maxAttempts: 1, timeoutMs: 5_000),
            ]))
            _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            let results = try await store.results(batchID: batch.id, afterTaskID: 0, limit: 10)
            #expect(results.map(\.state) == [.failed, .completed])
            #expect(results[0].failure == TaskFailure(message: "attempt timed out after 30 ms", code: "timeout", retryable: true))
            #expect(results[0].attempt == 1)
        }
    }

    @Test(arguments: StoreKind.allCases) func agentMaxAttemptsIsTheDefaultForTasksThatSetNone(on kind: StoreKind) async throws {
        let agents = [AgentConfiguration(name: "echo", runner: "echo", maxAttempts: 2)]
        try await withScheduler(on: kind, agents: agents) { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: [
                NewTask(customID: "x", agent: "", payload: json(["fail": "again", "retryable": true]), maxAttempts: 0),
            ]))
            let all = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            #expect(all.filter { $0.kind == .taskRetrying }.count == 1)
            let task = try #require(try await store.results(batchID: batch.id, afterTaskID: 0, limit: 1).first)
            #expect(task.maxAttempts == 2)
            #expect(task.attempt == 2)
        }
    }
}
