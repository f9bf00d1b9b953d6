import FanoutClient
import FanoutScheduler
import FanoutTestSupport
import Foundation
import Testing

/// Subagents through the real socket: workers built on `FanoutWorker` spawn
/// child batches, wait for them, and resume with their results.
@Suite(.postgresServer) struct SubagentTests {
    /// A daemon with an `echo` agent and a worker pool; agents workers declare run there too.
    static func withSubagentDaemon<T: Sendable>(on kind: StoreKind = .sqlite, agents: [AgentConfiguration] = [],
                                                runners: (WorkerPool) -> [String: any Runner] = { _ in [:] }, leaseMs: Int64 = 20_000,
                                                _ body: @escaping @Sendable (TestDaemon) async throws -> T) async throws -> T {
        let pool = WorkerPool(settings: .init(leaseMs: leaseMs, cancelGraceMs: 500))
        let timer = Task { try await pool.run() }
        defer { timer.cancel() }
        return try await withTestDaemon(on: kind, agents: [AgentConfiguration(name: "echo", runner: "echo", concurrency: 32)] + agents,
                                        runners: runners(pool), workerPool: pool, body)
    }

    /// Runs `worker` while `body` runs.
    static func withWorker<T: Sendable>(_ worker: FanoutWorker, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let running = Task { try await worker.run() }
        defer { running.cancel() }
        return try await body()
    }

    static func worker(_ daemon: TestDaemon, _ agents: [WorkerAgent]) -> FanoutWorker {
        FanoutWorker(name: "test-worker", agents: agents, settings: .init(socketPath: daemon.socketPath, reconnectDelay: .milliseconds(20)))
    }

    /// Waits for the batch's terminal event and returns the batch.
    static func finished(_ client: FanoutClient, _ batch: UInt64) async throws -> BatchInfo {
        for try await event in client.subscribe(batchID: batch, since: 0)
        where [.batchCompleted, .batchCancelled, .batchFailed].contains(event.type) { break }
        return try await client.batch(batch)
    }

    static func payload(_ text: String) -> [UInt8] { Array(text.utf8) }

    /// Agent `tree`: the payload is a depth; inner nodes spawn `childrenPerNode` children one level down,
    /// leaves run until cancelled.
    static func treeAgent(childrenPerNode: Int) -> WorkerAgent {
        WorkerAgent("tree", concurrency: 8) { task in
            let depth = Int(String(decoding: task.payload, as: UTF8.self)) ?? 0
            guard depth > 0 else {
                try await Task.sleep(for: .seconds(600))
                return "leaf"
            }
            _ = try await task.spawn((0..<childrenPerNode).map {
                TaskSpec(customID: "n\($0)", agent: "tree", payload: payload("\(depth - 1)"))
            })
            return "inner"
        }
    }

    @Test(arguments: StoreKind.allCases) func aParentSpawningTwentyChildrenResumesWithTheirResults(on kind: StoreKind) async throws {
        try await withDeadline(.seconds(30)) {
            try await Self.withSubagentDaemon(on: kind) { daemon in
                let research = WorkerAgent("research", concurrency: 2) { task in
                    let question = String(decoding: task.payload, as: UTF8.self)
                    let children = try await task.spawn((0..<20).map {
                        TaskSpec(customID: "sub-\($0)", agent: "echo", payload: Self.payload("\(question)/\($0)"))
                    })
                    let answers = children.results.map { String(decoding: $0.result, as: UTF8.self) }.sorted()
                    return WorkerOutput("\(children.results.count):\(answers.first ?? ""):\(children.results.allSatisfy { $0.status == .completed })")
                }
                try await Self.withWorker(Self.worker(daemon, [research])) {
                    let client = try await daemon.client()
                    // The agent exists once the worker has declared it.
                    while try await client.serverInfo().workerList.isEmpty { try await Task.sleep(for: .milliseconds(20)) }
                    let declared = try await client.serverInfo().agents.first { $0.name == "research" }
                    #expect(declared?.runner == "worker" && declared?.concurrency == 2 && declared?.workers == 1,
                            "ServerInfo lists the agent the worker declared: \(String(describing: declared))")
                    let batch = try await client.enqueueBatch(ownerID: "alice", agent: "research",
                                                              tasks: [TaskSpec(customID: "q", payload: Self.payload("why"))])
                    let done = try await Self.finished(client, batch.id)
                    #expect(done.status == .completed)
                    let result = try #require(try await client.results(batchID: batch.id).first { _ in true })
                    #expect(String(decoding: result.result, as: UTF8.self) == "20:why/0:true")

                    // The child batch: the parent task is its parent, it belongs to the same owner, and its events say so.
                    let children = try await client.batches(ownerID: "alice").batches.filter { $0.parentTaskID == result.taskID }
                    #expect(children.count == 1)
                    #expect(children.first?.counts.completed == 20)
                    var childEvents = 0
                    for try await event in client.subscribe(ownerID: "alice", since: 0, follow: false)
                    where event.batchID == children.first?.id && event.type == .taskCompleted {
                        #expect(event.parentTaskID == result.taskID)
                        childEvents += 1
                    }
                    #expect(childEvents == 20)
                    await client.close()
                }
            }
        }
    }

    @Test(arguments: StoreKind.allCases) func cancellingAParentCancelsItsWholeSubtree(on kind: StoreKind) async throws {
        try await withDeadline(.seconds(30)) {
            try await Self.withSubagentDaemon(on: kind) { daemon in
                let tree = Self.treeAgent(childrenPerNode: 2)
                try await Self.withWorker(Self.worker(daemon, [tree])) {
                    let client = try await daemon.client()
                    while try await client.serverInfo().workerList.isEmpty { try await Task.sleep(for: .milliseconds(20)) }
                    let batch = try await client.enqueueBatch(ownerID: "alice", agent: "tree",
                                                              tasks: [TaskSpec(customID: "root", payload: Self.payload("2"))])
                    // The root, its two children and four grandchildren (the leaves) all started.
                    var started: [UInt64] = []
                    for try await event in client.subscribe(ownerID: "alice", eventTypes: [.taskStarted], since: 0) {
                        started.append(event.taskID)
                        if started.count == 7 { break }
                    }
                    let root = started[0]
                    let cancelled = try await client.cancelTask(root)
                    #expect(cancelled.status == .cancelled)
                    #expect(try await Self.finished(client, batch.id).status == .completed, "a batch whose tasks were cancelled one by one completes")
                    // Every descendant batch ended cancelled, with every task in it cancelled.
                    let descendants = try await client.batches(ownerID: "alice").batches.filter { $0.id != batch.id }
                    #expect(descendants.count == 3, "two levels: one child batch, two grandchild batches")
                    for child in descendants {
                        let info = try await Self.finished(client, child.id)
                        #expect(info.status == .cancelled)
                        #expect(info.counts.cancelled == 2)
                    }
                    await client.close()
                }
            }
        }
    }

    @Test(arguments: StoreKind.allCases) func aWaitingParentsDeadlineCancelsTheRestAndResumesIt(on kind: StoreKind) async throws {
        try await withDeadline(.seconds(30)) {
            try await Self.withSubagentDaemon(on: kind) { daemon in
                let sleepy = WorkerAgent("sleepy", concurrency: 4) { task in
                    if task.payload == Self.payload("quick") { return "done" }
                    try await Task.sleep(for: .seconds(600))
                    return "late"
                }
                let parent = WorkerAgent("impatient", concurrency: 1) { task in
                    let children = try await task.spawn(["quick", "slow", "slower"].map {
                        TaskSpec(customID: $0, agent: "sleepy", payload: Self.payload($0 == "quick" ? "quick" : "slow"))
                    }, timeout: .seconds(3))
                    let states = children.results.map { "\($0.customID)=\($0.status)" }.sorted().joined(separator: ",")
                    return WorkerOutput(states)
                }
                try await Self.withWorker(Self.worker(daemon, [sleepy, parent])) {
                    let client = try await daemon.client()
                    while try await client.serverInfo().workerList.isEmpty { try await Task.sleep(for: .milliseconds(20)) }
                    let batch = try await client.enqueueBatch(ownerID: "alice", agent: "impatient",
                                                              tasks: [TaskSpec(customID: "p", payload: [])])
                    #expect(try await Self.finished(client, batch.id).status == .completed)
                    let result = try #require(try await client.results(batchID: batch.id).first { _ in true })
                    #expect(String(decoding: result.result, as: UTF8.self) == "quick=completed,slow=cancelled,slower=cancelled")
                    await client.close()
                }
            }
        }
    }

    @Test(arguments: StoreKind.allCases) func tasksOfAnAgentWithNoWorkerWaitThenRunWhenOneConnects(on kind: StoreKind) async throws {
        try await withDeadline(.seconds(30)) {
            try await Self.withSubagentDaemon(on: kind, agents: [AgentConfiguration(name: "work", runner: "worker", concurrency: 4)],
                                              runners: { ["work": $0.runner(for: "work")] }) { daemon in
                let client = try await daemon.client()
                let batch = try await client.enqueueBatch(ownerID: "alice", agent: "work",
                                                          tasks: (0..<3).map { TaskSpec(customID: "t\($0)", payload: []) })
                try await Task.sleep(for: .milliseconds(300))
                let waiting = try await client.batch(batch.id)
                #expect(waiting.counts.pending == 3, "no worker: the tasks wait, no attempt is spent")
                let work = WorkerAgent("work", concurrency: 2) { task in WorkerOutput("attempt \(task.attempt)") }
                try await Self.withWorker(Self.worker(daemon, [work])) {
                    #expect(try await Self.finished(client, batch.id).status == .completed)
                    for try await result in client.results(batchID: batch.id) {
                        #expect(String(decoding: result.result, as: UTF8.self) == "attempt 1")
                    }
                }
                await client.close()
            }
        }
    }

    @Test func theCLIShowsTheTreeAndItsTaskCancelCascades() async throws {
        try await withDeadline(.seconds(60)) {
            try await Self.withSubagentDaemon { daemon in
                let tree = Self.treeAgent(childrenPerNode: 1)
                try await Self.withWorker(Self.worker(daemon, [tree])) {
                    let client = try await daemon.client()
                    while try await client.serverInfo().workerList.isEmpty { try await Task.sleep(for: .milliseconds(20)) }
                    let batch = try await client.enqueueBatch(ownerID: "alice", agent: "tree",
                                                              tasks: [TaskSpec(customID: "root", payload: Self.payload("2"))])
                    var started: [UInt64] = []
                    for try await event in client.subscribe(ownerID: "alice", eventTypes: [.taskStarted], since: 0) {
                        started.append(event.taskID)
                        if started.count == 3 { break }
                    }
                    let status = try await FanoutCLI.run(["status", "\(batch.id)", "--socket", daemon.socketPath])
                    #expect(status.status == 0, "\(status.err)")
                    #expect(status.out.contains("1 waiting for children"), "\(status.out)")
                    let lines = status.out.split(separator: "\n").filter { $0.contains("└ batch") }
                    #expect(lines.count == 2, "the child batch and, under it, the grandchild batch:\n\(status.out)")
                    #expect(lines.count == 2 && lines[1].prefix { $0 == " " }.count > lines[0].prefix { $0 == " " }.count)

                    let cancel = try await FanoutCLI.run(["cancel", "--task", "\(started[0])", "--socket", daemon.socketPath])
                    #expect(cancel.status == 0, "\(cancel.err)")
                    let children = try await client.batches(ownerID: "alice").batches.filter { $0.id != batch.id }
                    for child in children { #expect(try await Self.finished(client, child.id).status == .cancelled) }
                    let json = try await FanoutCLI.run(["status", "\(batch.id)", "--json", "--socket", daemon.socketPath])
                    let object = try JSONSerialization.jsonObject(with: Data(json.out.utf8)) as? [String: Any]
                    let first = (object?["children"] as? [[String: Any]])?.first
                    #expect(first?["status"] as? String == "cancelled", "\(json.out)")
                    #expect(((first?["children"] as? [[String: Any]])?.first?["status"]) as? String == "cancelled")
                    await client.close()
                }
            }
        }
    }

    @Test func aWorkerThatStopsReadingDoesNotHoldUpAnother() async throws {
        try await withDeadline(.seconds(60)) {
            try await Self.withSubagentDaemon(leaseMs: 1_000) { daemon in
                // A raw worker registers and never reads again: its socket fills with 200 KB assignments.
                let stalled = Task {
                    try await withRawSession(daemon.socketPath) { session in
                        try await session.handshake()
                        try await session.send(Frame(streamID: 1, kind: .request(.workerSession(WorkerRegister(
                            workerName: "stalled", agents: [AgentRegistration(name: "work", concurrency: 8)])))))
                        try await Task.sleep(for: .seconds(120))
                    }
                }
                defer { stalled.cancel() }
                let client = try await daemon.client()
                while try await client.serverInfo().workerList.count < 1 { try await Task.sleep(for: .milliseconds(20)) }
                let payload = Array(repeating: UInt8(ascii: "p"), count: 200_000)
                let batch = try await client.enqueueBatch(ownerID: "alice", agent: "work", tasks: (0..<60).map {
                    TaskSpec(customID: "t\($0)", payload: payload, maxAttempts: 20)
                })
                let done = WorkerAgent("work", concurrency: 8) { task in WorkerOutput("ok \(task.attempt)") }
                try await Self.withWorker(Self.worker(daemon, [done])) {
                    let info = try await Self.finished(client, batch.id)
                    #expect(info.status == .completed)
                    var failures: [String] = []
                    for try await result in client.results(batchID: batch.id) where result.status != .completed {
                        failures.append("\(result.customID) attempt \(result.attempt): \(result.error?.code ?? "") \(result.error?.message ?? "")")
                    }
                    #expect(info.counts.completed == 60, "every task completed on the worker that reads: \(failures)")
                }
                await client.close()
            }
        }
    }
}
