import FanoutCore
import FanoutRunners
import FanoutStore
import FanoutTestSupport
import Foundation
import Synchronization
import Testing

@testable import FanoutScheduler

/// Opens once; everyone waiting then goes on. Waiting ignores cancellation.
final class Latch: Sendable {
    private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let openNow = state.withLock { state -> Bool in
                if state.open { return true }
                state.waiters.append(continuation)
                return false
            }
            if openNow { continuation.resume() }
        }
    }

    func open() {
        let waiters = state.withLock { state in
            state.open = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// Waits for its latch whatever happens, then returns: a runner that ignores cancellation.
struct StubbornRunner: Runner {
    let latch: Latch

    func run(_ context: RunContext) async throws -> RunOutput {
        await latch.wait()
        return RunOutput(result: Array("late".utf8))
    }
}

/// Throws CancellationError though nobody cancelled it.
struct SpuriousCancellationRunner: Runner {
    func run(_ context: RunContext) async throws -> RunOutput { throw CancellationError() }
}

@Suite struct ShutdownAndRaceTests {
    /// A scheduler (not shut down: the body does it) whose two tasks run on runners that ignore cancellation.
    private static func withTwoStubbornTasks(
        _ body: (Scheduler, SQLiteStore, InsertedBatch, Latch) async throws -> Void
    ) async throws {
        let latch = Latch()
        defer { latch.open() }
        try await withTemporaryDirectory { directory in
            let store = try SQLiteStore(path: directory + "/fanout.db")
            var configuration = SchedulerConfiguration(agents: [AgentConfiguration(name: "echo", runner: "echo")])
            configuration.shutdownGraceMs = 200
            let scheduler = try Scheduler(store: store, configuration: configuration, runners: ["echo": StubbornRunner(latch: latch)])
            try scheduler.start()
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(2)))
            try await waitUntil("both tasks to run") { try await store.batch(batch.id)?.counters.running == 2 }
            try await body(scheduler, store, batch, latch)
        }
    }

    @Test("an enqueue waiting for a scheduler that never started ends with UNAVAILABLE at shutdown, rather than hanging")
    func enqueueBeforeStartEndsAtShutdown() async throws {
        try await withTemporaryDirectory { directory in
            let store = try SQLiteStore(path: directory + "/fanout.db")
            let scheduler = try Scheduler(store: store, configuration: SchedulerConfiguration(
                globalConcurrency: 4, agents: [AgentConfiguration(name: "echo", runner: "echo")]), runners: ["echo": EchoRunner()])
            let pending = try scheduler.startEnqueue(NewBatch(ownerID: "o", agent: "echo", creatorUID: 0,
                                                              tasks: [NewTask(customID: "t", agent: "echo", payload: [])]))
            await scheduler.shutdown()
            await #expect(throws: FanoutError.self) { _ = try await pending.value }
            #expect(try await store.batches(ownerID: nil, creatorUID: nil, limit: 10, beforeID: nil).isEmpty, "nothing was inserted")
        }
    }

    @Test("a runner that throws a cancellation nobody asked for fails the task once; it is not run again and again")
    func spuriousCancellation() async throws {
        let agents = [AgentConfiguration(name: "echo", runner: "echo", maxAttempts: 3)]
        try await withScheduler(agents: agents, runners: ["echo": SpuriousCancellationRunner()]) { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(2)))
            let events = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            #expect(events.filter { $0.kind == .taskStarted }.count == 2)
            let results = try await store.results(batchID: batch.id, afterTaskID: 0, limit: 10)
            #expect(results.map(\.state) == [.failed, .failed])
            #expect(results.allSatisfy { $0.failure?.code == "runner_error" && $0.attempt == 1 })
        }
    }

    @Test("a task cancelled while its runner ignores cancellation stays cancelled through shutdown")
    func cancelStandsThroughShutdown() async throws {
        try await Self.withTwoStubbornTasks { scheduler, store, batch, latch in
            let cancelling = Task { try await scheduler.cancelTask(batch.taskIDs[0], timeout: .milliseconds(100)) }
            _ = try await cancelling.value
            await scheduler.shutdown()
            #expect(try await store.task(batch.taskIDs[0], includePayload: false)?.state == .cancelled)
            #expect(try await store.task(batch.taskIDs[1], includePayload: false)?.state == .pending)
            // The runners return now, after the stop: their results must change nothing.
            latch.open()
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await store.task(batch.taskIDs[0], includePayload: false)?.state == .cancelled)
        }
    }

    @Test("shutdown waits a bounded time for a runner that ignores cancellation; its task goes back to pending and its late result is dropped")
    func stubbornRunnerDoesNotHoldShutdown() async throws {
        try await Self.withTwoStubbornTasks { scheduler, store, batch, latch in
            let started = ContinuousClock.now
            await scheduler.shutdown()
            #expect(ContinuousClock.now - started < .seconds(5))
            let stopped = try #require(try await store.batch(batch.id))
            #expect(stopped.counters.pending == 2 && stopped.counters.running == 0)
            for id in batch.taskIDs {
                let task = try #require(try await store.task(id, includePayload: false))
                #expect(task.state == .pending)
                #expect(task.attempt == 0, "a graceful stop gives the attempt back")
            }
            // The late results arrive after the stop: nothing changes.
            // The runners return now, after the stop: their results must change nothing.
            latch.open()
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await store.batch(batch.id)?.counters.pending == 2)
            #expect(try await store.results(batchID: batch.id, afterTaskID: 0, limit: 10).isEmpty)
        }
    }

    @Test("a CancelBatch that lands between RetryFailed's commit and its admission is not lost")
    func cancelDuringRetryFailed() async throws {
        try await withScheduler(over: FaultyStore.init) { scheduler, store in
            let failing = json(["fail": "no"])
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: echoTasks(20, payload: { _ in failing })))
            _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            store.delayReopen(by: .milliseconds(500))
            async let retried = scheduler.retryFailed(batch.id, includeExpired: false, includeCancelled: false)
            try await Task.sleep(for: .milliseconds(150))
            let cancelled = try await scheduler.cancelBatch(batch.id)
            _ = try await retried
            #expect(cancelled.state == .cancelled, "\(cancelled.state)")
            let final = try #require(try await store.batch(batch.id))
            #expect(final.state == .cancelled)
            #expect(final.counters.cancelled == 20)
        }
    }
}
