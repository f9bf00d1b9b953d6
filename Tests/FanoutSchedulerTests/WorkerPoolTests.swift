import FanoutCore
import FanoutRunners
import FanoutStore
import FanoutTestSupport
import Foundation
import Synchronization
import Testing

@testable import FanoutScheduler

/// A worker session as the pool sees it, driven by the test: it records
/// the commands it is sent and answers when told to.
final class FakeWorker: Sendable {
    let pool: WorkerPool
    let id: WorkerPool.WorkerID

    init(_ pool: WorkerPool, name: String = "w", uid: UInt32 = 0, isAdmin: Bool = true, agents: [String: Int]) throws {
        self.pool = pool
        let holder = CommandHolder()
        id = try pool.register(name: name, uid: uid, isAdmin: isAdmin, agents: agents, send: { holder.append($0) })
        self.holder = holder
    }

    private let holder: CommandHolder

    var assignments: [RunContext] {
        holder.commands.compactMap { if case .assign(let context, _, _) = $0 { context } else { nil } }
    }

    var cancels: [TaskID] {
        holder.commands.compactMap { if case .cancel(let id) = $0 { id } else { nil } }
    }

    /// Answers every assignment not answered yet with its payload.
    func completeAll(answered: inout Set<TaskID>) -> Int {
        var count = 0
        for context in assignments where !answered.contains(context.taskID) {
            answered.insert(context.taskID)
            if pool.complete(id, taskID: context.taskID, output: RunOutput(result: context.payload, tokensUsed: 3)) == .accepted { count += 1 }
        }
        return count
    }
}

final class CommandHolder: Sendable {
    private let list = Mutex<[WorkerPool.Command]>([])
    func append(_ command: WorkerPool.Command) { list.withLock { $0.append(command) } }
    var commands: [WorkerPool.Command] { list.withLock { $0 } }
}

@Suite struct WorkerPoolTests {
    /// A scheduler whose agent `work` is served by `pool`, with the pool's lease timer running.
    static func withPool<T>(_ settings: WorkerPool.Settings = .init(leaseMs: 2_000, cancelGraceMs: 300),
                            allowedUIDs: [String: Set<UInt32>] = [:], timeoutMs: Int64 = 0,
                            _ body: (Scheduler, WorkerPool) async throws -> T) async throws -> T {
        let pool = WorkerPool(settings: settings, allowedUIDs: allowedUIDs)
        let timer = Task { try await pool.run() }
        defer { timer.cancel() }
        return try await withScheduler(agents: [AgentConfiguration(name: "work", runner: "worker", concurrency: 16, maxAttempts: 3,
                                                                   timeoutMs: timeoutMs)],
                                       runners: ["work": pool.runner(for: "work")], workerPool: pool) { scheduler, _ in
            try await body(scheduler, pool)
        }
    }

    static func enqueue(_ scheduler: Scheduler, _ count: Int) async throws -> InsertedBatch {
        try await scheduler.enqueue(NewBatch(ownerID: "alice", agent: "work", creatorUID: 1000,
                                             tasks: (0..<count).map { NewTask(customID: "t\($0)", agent: "work", payload: Array("p\($0)".utf8), maxAttempts: 3) }))
    }

    @Test func tasksWaitForAWorkerThenRunWithinItsSlots() async throws {
        try await withDeadline(.seconds(20)) {
            try await Self.withPool { scheduler, pool in
                let inserted = try await Self.enqueue(scheduler, 10)
                try await Task.sleep(for: .milliseconds(100))
                #expect(try await scheduler.store.batch(inserted.batch.id)?.counters.completed == 0, "no worker, nothing runs")

                let worker = try FakeWorker(pool, agents: ["work": 2])
                var answered = Set<TaskID>()
                var completed = 0
                while completed < 10 {
                    try await waitUntil("an assignment") { worker.assignments.count > answered.count }
                    #expect(worker.assignments.count - answered.count <= 2, "never more than its slots")
                    completed += worker.completeAll(answered: &answered)
                }
                try await waitUntil("the batch to complete") { try await scheduler.store.batch(inserted.batch.id)?.state == .completed }
                let batch = try #require(try await scheduler.store.batch(inserted.batch.id))
                #expect(batch.usage.totalTokens == 30, "worker-reported usage is summed")
                let result = try #require(try await scheduler.store.results(batchID: inserted.batch.id, afterTaskID: 0, limit: 1).first)
                #expect(result.result == Array("p0".utf8))
                #expect(pool.workers.first?.freeSlots == ["work": 2])
            }
        }
    }

    @Test func aLostWorkersTaskRunsAgainElsewhereAndItsLateResultIsRefused() async throws {
        try await withDeadline(.seconds(20)) {
            try await Self.withPool { scheduler, pool in
                let inserted = try await Self.enqueue(scheduler, 1)
                let first = try FakeWorker(pool, name: "first", agents: ["work": 1])
                try await waitUntil("the first assignment") { !first.assignments.isEmpty }
                let taskID = first.assignments[0].taskID
                pool.unregister(first.id)

                let second = try FakeWorker(pool, name: "second", agents: ["work": 1])
                try await waitUntil("the task to reach the second worker") { !second.assignments.isEmpty }
                #expect(second.assignments[0].attempt == 2, "the lost attempt is counted")
                #expect(pool.complete(first.id, taskID: taskID, output: RunOutput(result: [1])) == .leaseLost)
                #expect(pool.complete(second.id, taskID: taskID, output: RunOutput(result: Array("ok".utf8))) == .accepted)
                #expect(pool.complete(second.id, taskID: taskID, output: RunOutput(result: [2])) == .unknownTask)
                try await waitUntil("completion") { try await scheduler.store.batch(inserted.batch.id)?.state == .completed }
                #expect(try await scheduler.store.results(batchID: inserted.batch.id, afterTaskID: 0, limit: 1).first?.result == Array("ok".utf8))
                let retrying = try await allEvents(scheduler.store as! SQLiteStore).filter { $0.kind == .taskRetrying }
                #expect(retrying.first?.failure?.code == "worker_lost")
            }
        }
    }

    @Test func aWorkersTaskPastItsTimeoutIsCancelledThereAndRunsAgain() async throws {
        try await withDeadline(.seconds(20)) {
            try await Self.withPool(.init(leaseMs: 10_000, cancelGraceMs: 5_000), timeoutMs: 300) { scheduler, pool in
                let inserted = try await Self.enqueue(scheduler, 1)
                let worker = try FakeWorker(pool, agents: ["work": 1])
                try await waitUntil("the assignment") { !worker.assignments.isEmpty }
                let taskID = worker.assignments[0].taskID
                #expect(worker.assignments[0].timeoutMs == 300, "the worker is told its timeout")
                // Heartbeats keep the lease; the timeout ends the attempt anyway, by cancelling it on the worker.
                let sent = ContinuousClock.now
                while worker.cancels.isEmpty {
                    pool.heartbeat(worker.id, taskIDs: [taskID])
                    try await Task.sleep(for: .milliseconds(50))
                }
                #expect(ContinuousClock.now - sent >= .milliseconds(250))
                #expect(worker.cancels == [taskID])
                // The worker stops it: the attempt fails as timed out, and the task runs again.
                pool.cancelAcknowledged(worker.id, taskID: taskID)
                try await waitUntil("the second attempt") { worker.assignments.count == 2 }
                #expect(worker.assignments[1].attempt == 2)
                #expect(pool.complete(worker.id, taskID: taskID, output: RunOutput(result: Array("ok".utf8))) == .accepted)
                try await waitUntil("completion") { try await scheduler.store.batch(inserted.batch.id)?.state == .completed }
                let retrying = try await allEvents(scheduler.store as! SQLiteStore).filter { $0.kind == .taskRetrying }
                #expect(retrying.map(\.failure?.code) == ["timeout"])
            }
        }
    }

    @Test func heartbeatsKeepALeaseAndSilenceLosesIt() async throws {
        try await withDeadline(.seconds(20)) {
            try await Self.withPool(.init(leaseMs: 300, cancelGraceMs: 300)) { scheduler, pool in
                _ = try await Self.enqueue(scheduler, 1)
                let worker = try FakeWorker(pool, agents: ["work": 1])
                try await waitUntil("an assignment") { !worker.assignments.isEmpty }
                let taskID = worker.assignments[0].taskID
                for _ in 0..<6 {
                    try await Task.sleep(for: .milliseconds(100))
                    pool.heartbeat(worker.id, taskIDs: [taskID])
                }
                #expect(worker.assignments.count == 1, "kept alive for 600 ms by heartbeats")
                // Silence: the lease runs out. The silent worker gets nothing more until it is heard from again;
                // then the task comes back to it as attempt 2.
                try await waitUntil("the lease to be lost") { pool.workers.first?.runningTasks.isEmpty == true }
                try await Task.sleep(for: .milliseconds(300))
                #expect(worker.assignments.count == 1, "a stalled worker is given no task")
                pool.heard(from: worker.id)
                try await waitUntil("the task to be given again") { worker.assignments.count == 2 }
                #expect(worker.assignments[1].attempt == 2)
                #expect(pool.complete(worker.id, taskID: taskID, output: RunOutput(result: [])) == .accepted, "the new lease's result")
            }
        }
    }

    @Test func cancellingATaskCancelsItOnItsWorker() async throws {
        try await withDeadline(.seconds(20)) {
            try await Self.withPool { scheduler, pool in
                _ = try await Self.enqueue(scheduler, 2)
                let worker = try FakeWorker(pool, agents: ["work": 2])
                try await waitUntil("two assignments") { worker.assignments.count == 2 }
                let (acked, silent) = (worker.assignments[0].taskID, worker.assignments[1].taskID)
                async let first = scheduler.cancelTask(acked)
                try await waitUntil("the cancel to reach the worker") { worker.cancels.contains(acked) }
                pool.cancelAcknowledged(worker.id, taskID: acked)
                #expect(try await first.state == .cancelled)
                #expect(pool.complete(worker.id, taskID: acked, output: RunOutput(result: [])) == .unknownTask)
                // No acknowledgement: the slot is free after the grace period.
                let started = ContinuousClock.now
                #expect(try await scheduler.cancelTask(silent).state == .cancelled)
                try await waitUntil("the slot to be free") { pool.workers.first?.freeSlots == ["work": 2] }
                #expect(ContinuousClock.now - started >= .milliseconds(250))
            }
        }
    }

    @Test func onlyAllowedUIDsMayServeAnAgent() async throws {
        let pool = WorkerPool(allowedUIDs: ["shared": [1001]])
        let agents = ["shared", "admin-only"].map { AgentConfiguration(name: $0, runner: "worker") }
            + [AgentConfiguration(name: "echo", runner: "echo")]
        try await withScheduler(agents: agents, runners: ["shared": pool.runner(for: "shared"), "admin-only": pool.runner(for: "admin-only"),
                                                          "echo": EchoRunner()], workerPool: pool) { _, _ in
            #expect(throws: FanoutError.self) {
                _ = try pool.register(name: "x", uid: 1002, isAdmin: false, agents: ["shared": 1], send: { _ in })
            }
            #expect(throws: FanoutError.self) {
                _ = try pool.register(name: "x", uid: 1001, isAdmin: false, agents: ["admin-only": 1], send: { _ in })
            }
            #expect(throws: FanoutError.self, "a built-in runner's agent is not the workers'") {
                _ = try pool.register(name: "x", uid: 0, isAdmin: true, agents: ["echo": 1], send: { _ in })
            }
            _ = try pool.register(name: "x", uid: 1001, isAdmin: false, agents: ["shared": 1], send: { _ in })
            _ = try pool.register(name: "root", uid: 0, isAdmin: true, agents: ["admin-only": 1], send: { _ in })
            // An agent the configuration does not know belongs to the uid of the worker that declares it.
            _ = try pool.register(name: "mine", uid: 1001, isAdmin: false, agents: ["private": 1], send: { _ in })
            #expect(throws: FanoutError.self, "another uid cannot declare it too") {
                _ = try pool.register(name: "theirs", uid: 1002, isAdmin: false, agents: ["private": 1], send: { _ in })
            }
            #expect(pool.workers.count == 3)
        }
    }

    @Test func aDeclaredNameServesOneUidAtATime() async throws {
        let pool = WorkerPool()
        try await withScheduler(agents: [AgentConfiguration(name: "echo", runner: "echo")], runners: ["echo": EchoRunner()],
                                workerPool: pool) { scheduler, store in
            // A name declared, given up, and declared again by the same uid.
            let first = try pool.register(name: "a", uid: 1001, isAdmin: false, agents: ["mine": 1], send: { _ in })
            pool.unregister(first)
            let second = try pool.register(name: "a", uid: 1001, isAdmin: false, agents: ["mine": 1], send: { _ in })
            // Attempts to spare: the task may reach the worker before it leaves, and is then retried.
            let inserted = try await scheduler.enqueue(NewBatch(ownerID: "a", agent: "mine", creatorUID: 1001,
                                                                tasks: [NewTask(customID: "t", agent: "mine", payload: [], maxAttempts: 3)]))
            await #expect(throws: FanoutError.self, "another uid cannot submit to it") {
                _ = try await scheduler.enqueue(NewBatch(ownerID: "b", agent: "mine", creatorUID: 1002,
                                                         tasks: [NewTask(customID: "t", agent: "mine", payload: [])]))
            }
            pool.unregister(second)
            // 1001's task waits for a worker of 1001: the name is not another uid's to take meanwhile.
            #expect(throws: FanoutError.self) {
                _ = try pool.register(name: "b", uid: 1002, isAdmin: false, agents: ["mine": 1], send: { _ in })
            }
            // The task may have reached the worker before it left (worker_lost, then a retry), or have been
            // started as it left and wait for a slot: either way it waits for a worker of 1001, and goes to
            // the next one.
            let (assignments, assign) = AsyncStream.makeStream(of: TaskID.self)
            let third = try pool.register(name: "a", uid: 1001, isAdmin: false, agents: ["mine": 1], send: { command in
                if case .assign(let context, _, _) = command { assign.yield(context.taskID) }
            })
            let assigned = try await withDeadline(.seconds(30), "the task's assignment to the next worker of 1001") {
                var iterator = assignments.makeAsyncIterator()
                return await iterator.next()
            }
            #expect(assigned == inserted.taskIDs[0])
            pool.unregister(third)
        }
    }
}
