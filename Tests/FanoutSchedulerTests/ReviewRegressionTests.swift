import FanoutTestSupport
import FanoutCore
import FanoutRunners
import FanoutStore
import Foundation
import Testing

@testable import FanoutScheduler

/// Regressions for defects found in review, driven through the state machine
/// (deterministic interleavings) or a real scheduler and store.
@Suite struct ReviewRegressionTests {
    typealias R = SchedulerStateRaceTests

    /// A retried task back in its window while its row still says retry_wait must still be cancellable.
    @Test func cancelOfRetriedTaskWhoseRowStillSaysRetryWait() throws {
        var state = SchedulerState(configuration: R.configuration(globalConcurrency: 1), now: 0)
        let a = R.task(1, batch: 1, owner: "o", maxAttempts: 3)
        let b = R.task(2, batch: 1, owner: "o")
        let key = SourceKey(batchID: 1, agent: "a")
        var effects = Effects()
        state.admit(R.batch(1, owner: "o", tasks: 2), agents: ["a"], now: 0, effects: &effects)
        effects = Effects()
        state.refilled(key, tasks: [a, b], requested: 512, now: 1, effects: &effects)
        #expect(effects.starts.map(\.task.id) == [1])
        effects = Effects()
        state.finish(1, attempt: 1, outcome: .failed(R.retryable), jitter: 0, now: 2, effects: &effects)
        #expect(effects.starts.map(\.task.id) == [2])
        effects = Effects()
        state.retryDue(1, attempt: 1, now: 3, effects: &effects)
        #expect(state.sources[key]?.window.map(\.id) == [1])
        effects = Effects()
        var row = R.row(a, state: .retryWait)
        row.attempt = 1
        #expect(state.cancelTask(row, now: 4, effects: &effects))
        effects = Effects()
        state.finish(2, attempt: 1, outcome: .succeeded(RunOutput(result: [])), jitter: 0, now: 5, effects: &effects)
        #expect(effects.starts.isEmpty, "the cancelled task must not start again")
        #expect(state.batches[1] == nil, "the batch finished: one completed, one cancelled")
    }

    /// A page whose every task was cancelled meanwhile must not strand the rest of the batch.
    @Test func fullyFilteredPageStillReadsOn() throws {
        var state = SchedulerState(configuration: R.configuration(globalConcurrency: 4, windowSize: 4), now: 0)
        let key = SourceKey(batchID: 1, agent: "a")
        let tasks = (1...12).map { R.task(TaskID($0), batch: 1, owner: "o") }
        var effects = Effects()
        state.admit(R.batch(1, owner: "o", tasks: 12), agents: ["a"], now: 0, effects: &effects)
        effects = Effects()
        state.refilled(key, tasks: Array(tasks[0..<4]), requested: 4, now: 1, effects: &effects)
        #expect(effects.starts.map(\.task.id) == [1, 2, 3, 4])
        let next = try #require(effects.refills.first)
        for task in tasks[4..<8] {
            effects = Effects()
            #expect(state.cancelTask(R.row(task, state: .pending), now: 2, effects: &effects))
        }
        effects = Effects()
        state.refilled(key, generation: next.generation, tasks: Array(tasks[4..<8]), requested: next.limit, now: 3, effects: &effects)
        #expect(effects.refills.count == 1, "tasks 9-12 are still in the store: the next page must be read")
    }

    /// RetryFailed of a batch whose agent is no longer configured ends instead of hanging.
    @Test func retryFailedWithAnAgentNoLongerConfiguredFailsItsTasks() async throws {
        try await withTemporaryDirectory { directory in
            let store = try SQLiteStore(path: directory + "/fanout.db")
            let old = try Scheduler(store: store, configuration: SchedulerConfiguration(agents: [AgentConfiguration(name: "old", runner: "echo")]),
                                    runners: ["old": EchoRunner()])
            try old.start()
            let inserted = try await old.enqueue(NewBatch(ownerID: "alice", agent: "old",
                                                          tasks: [NewTask(customID: "x", agent: "old", payload: Array(#"{"fail":"no"}"#.utf8))]))
            try await withDeadline(.seconds(10), "the first run") {
                for try await event in old.subscribe(EventFilter(ownerID: "alice"), since: 0, follow: true, bufferSize: 100)
                where event.kind == .batchCompleted { break }
            }
            await old.shutdown()

            let new = try Scheduler(store: store, configuration: SchedulerConfiguration(agents: [AgentConfiguration(name: "new", runner: "echo")]),
                                    runners: ["new": EchoRunner()])
            try new.start()
            let (_, reopened) = try await new.retryFailed(inserted.batch.id, includeExpired: false, includeCancelled: false)
            #expect(reopened == 1)
            try await withDeadline(.seconds(10), "the retried batch to end") {
                while try await store.batch(inserted.batch.id)?.state.isTerminal != true { try await Task.sleep(for: .milliseconds(10)) }
            }
            let task = try #require(try await store.results(batchID: inserted.batch.id, afterTaskID: 0, limit: 1).first)
            #expect(task.state == .failed)
            #expect(task.failure?.code == "no_runner")
            await new.shutdown()
        }
    }

    /// A cancel_batch cut short by a stop is finished after the restart: the rest never runs.
    @Test func cancelBatchInterruptedByShutdownStaysCancelledAfterRestart() async throws {
        try await withTemporaryDirectory { directory in
            let store = try SQLiteStore(path: directory + "/fanout.db")
            var configuration = SchedulerConfiguration(globalConcurrency: 1, agents: [AgentConfiguration(name: "echo", runner: "echo", concurrency: 1)])
            configuration.windowSize = 64
            let first = try Scheduler(store: store, configuration: configuration, runners: ["echo": EchoRunner()])
            try first.start()
            let inserted = try await first.enqueue(NewBatch(ownerID: "alice", agent: "echo",
                tasks: (0..<20_000).map { NewTask(customID: "t\($0)", agent: "echo", payload: Array(#"{"delay_ms":1}"#.utf8)) }))
            try await Task.sleep(for: .milliseconds(30))
            _ = try await first.cancelBatch(inserted.batch.id, timeout: .milliseconds(1))
            await first.shutdown()
            let stopped = try #require(try await store.batch(inserted.batch.id))
            #expect(stopped.closing == .cancelled)

            let second = try Scheduler(store: store, configuration: SchedulerConfiguration(agents: [AgentConfiguration(name: "echo", runner: "echo", concurrency: 64)]),
                                       runners: ["echo": EchoRunner()])
            try second.start()
            try await withDeadline(.seconds(30), "the cancel to finish after the restart") {
                while try await store.batch(inserted.batch.id)?.state.isTerminal != true { try await Task.sleep(for: .milliseconds(20)) }
            }
            let final = try #require(try await store.batch(inserted.batch.id))
            #expect(final.state == .cancelled)
            #expect(final.counters.completed <= stopped.counters.completed + 1, "nothing new ran after the restart")
            #expect(final.counters.completed + final.counters.cancelled == 20_000)
            await second.shutdown()
        }
    }
}
