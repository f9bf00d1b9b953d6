import FanoutCore
import FanoutRunners
import FanoutStore
import Foundation
import Synchronization
import Testing

@testable import FanoutScheduler

/// Monotonic milliseconds, for start and end times measured by test runners.
func monotonicMs() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1_000_000 }

/// A runner whose behaviour a test passes in; it logs every attempt (task,
/// agent, attempt, monotonic start and end).
final class ScriptedRunner: Runner {
    struct Attempt: Sendable {
        var customID: String
        var agent: String
        var attempt: Int
        var start: Double
        var end: Double?
    }

    let log = Mutex<[Attempt]>([])
    let behaviour: @Sendable (RunContext) async throws -> RunOutput

    init(_ behaviour: @escaping @Sendable (RunContext) async throws -> RunOutput = { RunOutput(result: $0.payload) }) {
        self.behaviour = behaviour
    }

    var attempts: [Attempt] { log.withLock { $0 } }

    func run(_ context: RunContext) async throws -> RunOutput {
        let index = log.withLock { log in
            log.append(Attempt(customID: context.customID, agent: context.agent, attempt: context.attempt, start: monotonicMs()))
            return log.count - 1
        }
        defer { log.withLock { $0[index].end = monotonicMs() } }
        return try await behaviour(context)
    }
}

/// Suites that measure time, or load both cores with thousands of tasks, run
/// one test at a time so they do not skew each other's timings.
@Suite(.serialized) struct SchedulerTimingTests {}

extension SchedulerTimingTests {
    @Suite struct FairnessTests {
        static func tasks(_ prefix: String, _ count: Int, priority: Int32 = 0) -> [NewTask] {
            (0..<count).map { NewTask(customID: "\(prefix)\($0)", agent: "", payload: [], priority: priority) }
        }

        @Test func smallBatchOfAnotherOwnerFinishesLongBeforeAHugeOne() async throws {
            let agents = [AgentConfiguration(name: "echo", runner: "echo", concurrency: 64)]
            try await withScheduler(agents: agents, globalConcurrency: 4) { scheduler, store in
                let slow = json(["delay_ms": 2])
                let huge = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo",
                                                                tasks: echoTasks(5_000, prefix: "a", payload: { _ in slow })))
                try await waitUntil("alice's batch to be under way") { (try await store.batch(huge.id)?.counters.completed ?? 0) >= 20 }
                let small = try await scheduler.enqueue(NewBatch(ownerID: "bob", agent: "echo",
                                                                 tasks: echoTasks(10, prefix: "b", payload: { _ in slow })))
                let bobEvents = try await eventsUntilBatchEnds(scheduler, batch: small.id, owner: "bob")
                #expect(bobEvents.last?.kind == .batchCompleted)
                let aliceAtThatPoint = try #require(try await store.batch(huge.id))
                #expect(aliceAtThatPoint.state == .processing)
                #expect(aliceAtThatPoint.counters.completed < 1_000,
                        "bob's 10 tasks waited for \(aliceAtThatPoint.counters.completed) of alice's")

                // While bob had work, alice's tasks started about once per bob task (owners take turns).
                let bobDone = try #require(bobEvents.last?.sequence)
                let bobFirst = try #require(bobEvents.first { $0.kind == .taskStarted }?.sequence)
                let aliceStarts = try await allEvents(store, EventFilter(ownerID: "alice", kinds: [.taskStarted], batchID: huge.id))
                    .filter { $0.sequence > bobFirst && $0.sequence < bobDone }
                #expect(aliceStarts.count <= 10 + 4 + 4, "alice started \(aliceStarts.count) tasks while bob's 10 ran")

                let cancelled = try await scheduler.cancelBatch(huge.id)
                #expect(cancelled.state == .cancelled)
                #expect(try await store.batch(small.id)?.counters.completed == 10)
            }
        }

        @Test func startsAlternateBetweenOwnersWithinOnePriority() async throws {
            let gate = Gate()
            let runner = RecordingRunner(gate: gate, gated: ["blocker"])
            try await withScheduler(agents: [AgentConfiguration(name: "work", runner: "test")], globalConcurrency: 1,
                                    runners: ["work": runner]) { scheduler, store in
                // The only slot is held, so both owners' work is queued before anything of it starts.
                _ = try await scheduler.enqueue(NewBatch(ownerID: "carol", agent: "work", tasks: Self.tasks("blocker", 1).map {
                    var task = $0
                    task.customID = "blocker"
                    return task
                }))
                try await waitUntil("the blocker to run") { runner.snapshot.starts == ["blocker"] }
                let a = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "work", tasks: Self.tasks("a", 6)))
                try await waitUntil("alice's window") { scheduler.statistics.tasksInMemory == 1 + 6 }
                let b = try await scheduler.enqueue(NewBatch(ownerID: "bob", agent: "work", tasks: Self.tasks("b", 4)))
                try await waitUntil("bob's window") { scheduler.statistics.tasksInMemory == 1 + 6 + 4 }
                gate.open()
                _ = try await eventsUntilBatchEnds(scheduler, batch: a.id, owner: "alice")
                _ = try await eventsUntilBatchEnds(scheduler, batch: b.id, owner: "bob")
                #expect(runner.snapshot.starts == ["blocker", "a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3", "a4", "a5"])
                #expect(runner.snapshot.maxTotal == 1)
                #expect(try await store.batch(a.id)?.counters.completed == 6)
                #expect(try await store.batch(b.id)?.counters.completed == 4)
            }
        }

        @Test func priorityWinsOverFairness() async throws {
            let gate = Gate()
            let runner = RecordingRunner(gate: gate, gated: ["blocker"])
            try await withScheduler(agents: [AgentConfiguration(name: "work", runner: "test")], globalConcurrency: 1,
                                    runners: ["work": runner]) { scheduler, _ in
                var blocker = Self.tasks("x", 1)
                blocker[0].customID = "blocker"
                _ = try await scheduler.enqueue(NewBatch(ownerID: "carol", agent: "work", tasks: blocker))
                try await waitUntil("the blocker to run") { runner.snapshot.starts == ["blocker"] }
                // bob's normal work comes first, then alice's urgent batch, then more normal work of alice's.
                let bob = try await scheduler.enqueue(NewBatch(ownerID: "bob", agent: "work", tasks: Self.tasks("b", 3)))
                try await waitUntil("bob's window") { scheduler.statistics.tasksInMemory == 1 + 3 }
                let urgent = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "work", tasks: Self.tasks("u", 3, priority: 5)))
                try await waitUntil("alice's urgent window") { scheduler.statistics.tasksInMemory == 1 + 3 + 3 }
                let normal = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "work", tasks: Self.tasks("n", 2)))
                try await waitUntil("alice's normal window") { scheduler.statistics.tasksInMemory == 1 + 3 + 3 + 2 }
                gate.open()
                for (owner, batch) in [("bob", bob), ("alice", urgent), ("alice", normal)] {
                    _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id, owner: owner)
                }
                // Urgent work first although bob queued earlier; then bob and alice take turns again.
                #expect(runner.snapshot.starts == ["blocker", "u0", "u1", "u2", "b0", "n0", "b1", "n1", "b2"])
            }
        }
    }

    @Suite struct RateLimitTests {
        /// The bucket starts full with one minute's allowance (600 here), so the
        /// first 600 starts may come at once; the 10 after them must follow the
        /// sustained rate of 10 per second.
        @Test func requestsPerMinuteHoldsAfterTheBurst() async throws {
            let runner = ScriptedRunner()
            let agents = [AgentConfiguration(name: "api", runner: "test", concurrency: 64, requestsPerMinute: 600)]
            // The bucket is created with the scheduler, so no later than this (the scheduler's clock: wall ms).
            let bucketNotBefore = wallClockMs()
            let events = try await withScheduler(agents: agents, globalConcurrency: 64, runners: ["api": runner]) { scheduler, store in
                let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "api",
                                                                 tasks: echoTasks(610, payload: { _ in [] })))
                let events = try await eventsUntilBatchEnds(scheduler, batch: batch.id, timeout: .seconds(10))
                #expect(events.last?.kind == .batchCompleted)
                #expect(try await store.batch(batch.id)?.counters.completed == 610)
                return events
            }
            #expect(runner.attempts.count == 610)
            // When the scheduler decided each start, in its own clock (the one the bucket runs on).
            let starts = events.filter { $0.kind == .taskStarted }.map(\.timestamp)
            try #require(starts.count == 610)
            #expect(starts == starts.sorted())
            // 610 requests from a bucket of 600 refilling at 10/s: the last one needs 1 s of refill.
            let span = starts.last! - bucketNotBefore
            #expect(span >= 995, "610 starts within \(span) ms of the bucket's creation")
            #expect(span <= 4_000, "far slower than the limit: \(span) ms")
            // Replay the starts against the bucket the limit describes (600 deep, 10 per second, full at
            // `bucketNotBefore`, which is no later than the real one was created): none finds it empty.
            var level = 600.0, at = bucketNotBefore
            var overdrawn: [Int] = []
            for (index, start) in starts.enumerated() {
                level = min(600, level + Double(start - at) / 100)
                at = start
                if level < 0.98 { overdrawn.append(index) }
                level -= 1
            }
            #expect(overdrawn.isEmpty, "starts beyond the limit: \(overdrawn.prefix(10))")
            // Once the burst is spent the rate is about 10 per second, not much slower.
            let tail = Array(starts.suffix(6))
            let meanGap = Double(tail.last! - tail.first!) / Double(tail.count - 1)
            #expect(meanGap <= 300, "mean gap of the last starts: \(Int(meanGap)) ms")
        }

        /// Token use is known only afterwards: one task that overdraws the bucket
        /// makes the agent's next task wait until it has refilled past zero.
        @Test func tokensPerMinuteOverdraftDelaysTheNextTask() async throws {
            // 6,000 tokens a minute = 0.1 per ms. "big" uses 6,030: 30 below zero, 300 ms to refill.
            let runner = ScriptedRunner { context in
                RunOutput(result: [], tokensUsed: context.customID == "big" ? 6_030 : 0)
            }
            let agents = [AgentConfiguration(name: "llm", runner: "test", concurrency: 1, tokensPerMinute: 6_000)]
            try await withScheduler(agents: agents, runners: ["llm": runner]) { scheduler, _ in
                let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "llm", tasks: [
                    NewTask(customID: "small", agent: "", payload: []),
                    NewTask(customID: "big", agent: "", payload: []),
                    NewTask(customID: "after1", agent: "", payload: []),
                    NewTask(customID: "after2", agent: "", payload: []),
                ]))
                _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            }
            let attempts = Dictionary(uniqueKeysWithValues: runner.attempts.map { ($0.customID, $0) })
            let small = try #require(attempts["small"]), big = try #require(attempts["big"])
            let after1 = try #require(attempts["after1"]), after2 = try #require(attempts["after2"])
            // With tokens left, the next task follows at once.
            #expect(big.start - small.end! < 250, "small → big: \(Int(big.start - small.end!)) ms")
            // After the overdraft: about 300 ms (a little less for the refill while big ran).
            let wait = after1.start - big.end!
            #expect(wait >= 270, "big → after1: \(Int(wait)) ms")
            #expect(wait <= 1_500, "big → after1: \(Int(wait)) ms")
            // after1 used nothing, so after2 does not wait.
            #expect(after2.start - after1.end! < 250, "after1 → after2: \(Int(after2.start - after1.end!)) ms")
        }

        /// A runner's Retry-After pauses the whole agent, not just the failed task;
        /// other agents keep running meanwhile.
        @Test func retryAfterPausesTheAgentButNotOthers() async throws {
            let failedAt = Mutex<Double?>(nil)
            let runner = ScriptedRunner { context in
                if context.customID == "first" && context.attempt == 1 {
                    failedAt.withLock { $0 = monotonicMs() }
                    throw RunnerFailure("slow down", code: "429", retryable: true, retryAfterMs: 400)
                }
                try await Task.sleep(for: .milliseconds(10))
                return RunOutput(result: Array(context.customID.utf8))
            }
            // One at a time per agent: no other task of "api" can be under way when "first" fails.
            let agents = [AgentConfiguration(name: "api", runner: "test", concurrency: 1),
                          AgentConfiguration(name: "other", runner: "test", concurrency: 1)]
            try await withScheduler(agents: agents, globalConcurrency: 4, runners: ["api": runner, "other": runner]) { scheduler, store in
                var tasks = [NewTask(customID: "first", agent: "api", payload: [], maxAttempts: 2)]
                tasks += (0..<5).map { NewTask(customID: "api\($0)", agent: "api", payload: []) }
                tasks += (0..<60).map { NewTask(customID: "other\($0)", agent: "other", payload: []) }
                let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "api", tasks: tasks))
                let events = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
                #expect(events.last?.kind == .batchCompleted)
                let retrying = events.filter { $0.kind == .taskRetrying }
                #expect(retrying.map(\.customID) == ["first"])
                #expect(retrying.first?.retryDelayMs == 400)
                #expect(try await store.batch(batch.id)?.counters.completed == 66)
            }
            let failed = try #require(failedAt.withLock { $0 })
            let attempts = runner.attempts
            let apiLater = attempts.filter { $0.agent == "api" && $0.start > failed }.map { $0.start - failed }
            #expect(apiLater.count == 6, "the 5 other api tasks and the retry of first")
            #expect(apiLater.allSatisfy { $0 >= 390 }, "api starts after the 429, ms after it: \(apiLater.map { Int($0) })")
            #expect((apiLater.min() ?? 0) <= 1_500, "the pause ends: \(apiLater.map { Int($0) })")
            let otherDuringPause = attempts.filter { $0.agent == "other" && $0.start > failed + 20 && $0.start < failed + 380 }
            // About 30 when the machine is idle (10 ms tasks); the point is that it did not stop.
            #expect(otherDuringPause.count >= 3, "other agent started \(otherDuringPause.count) tasks during the pause")
        }
    }
}
