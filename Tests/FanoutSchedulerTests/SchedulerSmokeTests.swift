import FanoutTestSupport
import FanoutCore
import FanoutRunners
import FanoutStore
import Foundation
import Testing

@testable import FanoutScheduler

@Suite struct SchedulerSmokeTests {
    @Test func runsABatchToCompletion() async throws {
        try await withTemporaryDirectory { directory in
            let store = try SQLiteStore(path: directory + "/fanout.db")
            let scheduler = try Scheduler(
                store: store,
                configuration: SchedulerConfiguration(globalConcurrency: 8, agents: [AgentConfiguration(name: "echo", runner: "echo")]),
                runners: ["echo": EchoRunner()])
            try scheduler.start()
            let tasks = (0..<200).map { NewTask(customID: "t\($0)", agent: "", payload: Array("{\"n\":\($0)}".utf8)) }
            let batch = try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "echo", tasks: tasks)).batch
            var kinds: [EventKind] = []
            for try await event in scheduler.subscribe(EventFilter(ownerID: "alice", batchID: batch.id), since: 0, follow: true, bufferSize: 10_000) {
                kinds.append(event.kind)
                if event.kind == .batchCompleted { break }
            }
            #expect(kinds.filter { $0 == .taskCompleted }.count == 200)
            #expect(kinds.filter { $0 == .batchCompleted }.count == 1)
            await scheduler.shutdown()
            let stored = try #require(try await store.batch(batch.id))
            #expect(stored.state == .completed)
            #expect(stored.counters.completed == 200)
            #expect(stored.progress.percent == 100)
            let results = try await store.results(batchID: batch.id, afterTaskID: 0, limit: 1000)
            #expect(results.count == 200)
            #expect(results.first?.result == Array("{\"n\":0}".utf8))
        }
    }
}
