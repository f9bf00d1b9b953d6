import FanoutCore
import FanoutStore
import Foundation
import Testing

@testable import FanoutScheduler

// SQLite only: on a shared store the order across batches also depends on when each batch's claim answers.
@Suite struct SchedulingOrderTests {
    static func task(_ id: String, priority: Int32 = 0, agent: String = "") -> NewTask {
        NewTask(customID: id, agent: agent, payload: [], priority: priority)
    }

    @Test func priorityThenFIFOWithinOneBatch() async throws {
        let runner = RecordingRunner()
        try await withScheduler(agents: [AgentConfiguration(name: "work", runner: "test")], globalConcurrency: 1,
                                runners: ["work": runner]) { scheduler, store in
            let specs: [(String, Int32)] = [("a", 0), ("b", 3), ("c", -1), ("d", 3), ("e", 0), ("f", 7), ("g", -1), ("h", 3)]
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "work",
                                                             tasks: specs.map { Self.task($0.0, priority: $0.1) }))
            _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            let record = runner.snapshot
            #expect(record.starts == ["f", "b", "d", "h", "a", "e", "c", "g"])
            #expect(record.maxTotal == 1)
            #expect(try await store.batch(batch.id)?.counters.completed == 8)
        }
    }

    @Test func priorityThenFIFOAcrossBatches() async throws {
        let gate = Gate()
        let runner = RecordingRunner(gate: gate, gated: ["first"])
        try await withScheduler(agents: [AgentConfiguration(name: "work", runner: "test", concurrency: 8)], globalConcurrency: 1,
                                runners: ["work": runner]) { scheduler, store in
            let first = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "work", tasks: [Self.task("first")]))
            try await waitUntil("the first task to start") { runner.snapshot.starts == ["first"] }
            let second = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "work", tasks: [
                Self.task("b1"), Self.task("b2", priority: 1), Self.task("b3"), Self.task("b4", priority: 5), Self.task("b5", priority: 1),
            ]))
            let third = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "work", tasks: [
                Self.task("c1", priority: 1), Self.task("c2", priority: 5),
            ]))
            // The only slot is taken: nothing else starts until it frees.
            try await Task.sleep(for: .milliseconds(20))
            #expect(runner.snapshot.starts == ["first"])
            #expect(scheduler.statistics.pending == 7)
            #expect(scheduler.statistics.running == 1)
            gate.open()
            for batch in [first, second, third] {
                _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            }
            #expect(runner.snapshot.starts == ["first", "b4", "c2", "b2", "b5", "c1", "b1", "b3"])
            #expect(runner.snapshot.maxTotal == 1)
            #expect(try await store.batch(second.id)?.state == .completed)
            #expect(try await store.batch(third.id)?.state == .completed)
        }
    }

    @Test func perAgentAndGlobalConcurrencyLimitsHold() async throws {
        let runner = RecordingRunner(holdMs: 15)
        let agents = [AgentConfiguration(name: "a", runner: "test", concurrency: 2),
                      AgentConfiguration(name: "b", runner: "test", concurrency: 3)]
        try await withScheduler(agents: agents, globalConcurrency: 4, runners: ["a": runner, "b": runner]) { scheduler, store in
            // Interleaved so both agents compete; b has more work, so it runs alone at the end.
            var tasks: [NewTask] = []
            for index in 0..<24 {
                let agent = index < 12 && index.isMultiple(of: 2) ? "a" : "b"
                tasks.append(Self.task("\(agent)\(index)", agent: agent))
            }
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "a", tasks: tasks))
            // Sample the scheduler's own view while the batch runs.
            var sampledMax: [String: Int] = [:]
            var sampledTotal = 0
            try await waitUntil("the batch to finish") {
                let statistics = scheduler.statistics
                for (agent, count) in statistics.runningByAgent { sampledMax[agent] = max(sampledMax[agent] ?? 0, count) }
                sampledTotal = max(sampledTotal, statistics.running)
                return try await store.batch(batch.id)?.state == .completed
            }
            let record = runner.snapshot
            #expect(record.starts.count == 24)
            #expect(record.finished == 24)
            #expect(record.maxRunning["a"] == 2)
            #expect(record.maxRunning["b"] == 3)
            #expect(record.maxTotal == 4)
            #expect((sampledMax["a"] ?? 0) <= 2)
            #expect((sampledMax["b"] ?? 0) <= 3)
            #expect(sampledTotal <= 4)
            let statistics = scheduler.statistics
            #expect(statistics.running == 0)
            #expect(statistics.pending == 0)
            #expect(statistics.activeBatches == 0)
            #expect(statistics.runningByAgent.values.allSatisfy { $0 == 0 })
        }
    }

    @Test func tasksWithoutAnAgentTakeTheBatchAgent() async throws {
        let runner = RecordingRunner()
        let agents = [AgentConfiguration(name: "a", runner: "test"), AgentConfiguration(name: "b", runner: "test")]
        try await withScheduler(agents: agents, globalConcurrency: 1, runners: ["a": runner, "b": runner]) { scheduler, store in
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "b", tasks: [Self.task("x"), Self.task("y", agent: "a")]))
            _ = try await eventsUntilBatchEnds(scheduler, batch: batch.id)
            let results = try await store.results(batchID: batch.id, afterTaskID: 0, limit: 10)
            #expect(results.map(\.agent) == ["b", "a"])
            #expect(results.map(\.state) == [.completed, .completed])
        }
    }

    @Test func invalidBatchIsRefusedWholeAndNothingIsStored() async throws {
        try await withScheduler { (scheduler, store) async throws in
            let request = NewBatch(ownerID: "alice", agent: "echo", tasks: [
                NewTask(customID: "ok", agent: "", payload: []), NewTask(customID: "bad", agent: "nope", payload: []),
            ])
            await #expect(throws: FanoutError.invalidArgument("task \"bad\": unknown agent \"nope\"; this daemon runs echo")) {
                _ = try await scheduler.enqueue(request)
            }
            await #expect(throws: FanoutError.invalidArgument("owner_id is required")) {
                _ = try await scheduler.enqueue(NewBatch(ownerID: "", agent: "echo", tasks: [NewTask(customID: "x", agent: "", payload: [])]))
            }
            #expect(try await store.batches(ownerID: nil, creatorUID: nil, limit: 10, beforeID: nil).isEmpty)
            #expect(try await store.lastEventSequence() == 0)
        }
    }

    @Test func agentWithoutARunnerIsUnknown() async throws {
        // Configured but with no runner: refused, not accepted and failed later.
        let agents = [AgentConfiguration(name: "echo", runner: "echo"), AgentConfiguration(name: "ghost", runner: "none")]
        try await withScheduler(agents: agents, runners: ["echo": EchoRunnerForTests()]) { scheduler, _ in
            await #expect(throws: FanoutError.invalidArgument("task \"x\": unknown agent \"ghost\"; this daemon runs echo")) {
                _ = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "ghost", tasks: [NewTask(customID: "x", agent: "", payload: [])]))
            }
        }
    }
}

/// Returns its payload at once.
struct EchoRunnerForTests: Runner {
    func run(_ context: RunContext) async throws -> RunOutput { RunOutput(result: context.payload) }
}
