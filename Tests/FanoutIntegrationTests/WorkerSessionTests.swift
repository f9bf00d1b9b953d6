import FanoutClient
import FanoutScheduler
import FanoutTestSupport
import FanoutWire
import Foundation
import Testing

/// A worker written against the wire protocol alone (raw frames on the
/// socket), serving an agent whose runner is `worker`.
@Suite(.postgresServer) struct WorkerSessionTests {
    /// A daemon whose agent `work` is served by workers, with the pool's lease timer running.
    static func withWorkerDaemon<T: Sendable>(on kind: StoreKind = .sqlite, leaseMs: Int64 = 30_000,
                                              _ body: (TestDaemon) async throws -> T) async throws -> T {
        // A cancelled task's worker has 10 s to answer: on a loaded machine the raw worker of a test may take seconds.
        let pool = WorkerPool(settings: .init(leaseMs: leaseMs, cancelGraceMs: 10_000))
        let timer = Task { try await pool.run() }
        defer { timer.cancel() }
        return try await withTestDaemon(on: kind, agents: [AgentConfiguration(name: "work", runner: "worker", concurrency: 8, maxAttempts: 3)],
                                        runners: ["work": pool.runner(for: "work")], workerPool: pool, body)
    }

    static func register(_ session: inout RawSession, slots: UInt32) async throws {
        try await session.handshake()
        try await session.send(Frame(streamID: 1, kind: .request(.workerSession(WorkerRegister(
            workerName: "raw-worker", agents: [AgentRegistration(name: "work", concurrency: slots)])))))
        let registered = try #require(try await session.readFrame()).frame
        guard case .message(.toWorker(.ack(taskID: 0, status: let status))) = registered.kind else {
            Issue.record("expected the registration ack, got \(registered)")
            throw CancellationError()
        }
        #expect(status.code == .ok)
    }

    /// The next server-to-worker message on stream 1.
    static func next(_ session: inout RawSession) async throws -> ServerToWorker {
        while let (frame, _) = try await session.readFrame() {
            if frame.streamID == 1, case .message(.toWorker(let message)) = frame.kind { return message }
            if frame.streamID == 1, case .end(let status) = frame.kind { throw RawSessionError.unexpected("session ended: \(status)") }
        }
        throw RawSessionError.unexpected("the connection closed")
    }

    @Test(arguments: StoreKind.allCases) func aRawWorkerRunsTasksAndItsResultsReachClients(on kind: StoreKind) async throws {
        try await withDeadline(.seconds(30)) {
            try await Self.withWorkerDaemon(on: kind) { daemon in
                let client = try await daemon.client()
                let batch = try await client.enqueueBatch(ownerID: "alice", agent: "work",
                                                          tasks: (0..<6).map { TaskSpec(customID: "t\($0)", payload: Array("hello \($0)".utf8)) })
                try await withRawSession(daemon.socketPath) { session in
                    try await Self.register(&session, slots: 2)
                    // Assignments and acknowledgements interleave: answer each assignment, check each ack.
                    var accepted = 0
                    var duplicateRefused = false
                    var resent: UInt64?
                    while accepted < 6 || !duplicateRefused {
                        switch try await Self.next(&session) {
                        case .assignment(let task, let leaseMs, _):
                            #expect(leaseMs == 30_000)
                            #expect(task.agent == "work")
                            let answer = Array(String(decoding: task.payload, as: UTF8.self).uppercased().utf8)
                            try await session.send(Frame(streamID: 1, kind: .message(.worker(.turn(taskID: task.id, turns: 1)))))
                            try await session.send(Frame(streamID: 1, kind: .message(.worker(.result(
                                taskID: task.id, result: answer, usage: TokenUsage(promptTokens: 2, completionTokens: 3))))))
                        case .ack(let taskID, let status) where taskID == resent:
                            // The same result again is refused: the task is no longer this worker's.
                            #expect(status.code == .notFound)
                            duplicateRefused = true
                        case .ack(let taskID, let status):
                            #expect(status.code == .ok, "\(status)")
                            accepted += 1
                            if resent == nil {
                                resent = taskID
                                try await session.send(Frame(streamID: 1, kind: .message(.worker(.result(taskID: taskID, result: [], usage: nil)))))
                            }
                        default:
                            break
                        }
                    }
                }
                _ = try await events(of: batch.id, owner: "alice", on: client)
                var results: [String: String] = [:]
                for try await result in client.results(batchID: batch.id) { results[result.customID] = String(decoding: result.result, as: UTF8.self) }
                #expect(results == Dictionary(uniqueKeysWithValues: (0..<6).map { ("t\($0)", "HELLO \($0)") }))
                #expect(try await client.batch(batch.id).usage.totalTokens == 30)
                await client.close()
            }
        }
    }

    /// A worker's reports are handled on the read loop, as soon as read: even one sent in the same write as
    /// the registration is answered only after the registration's acknowledgement.
    @Test func theRegistrationIsAcknowledgedBeforeAnyAnswer() async throws {
        try await withDeadline(.seconds(30)) {
            try await Self.withWorkerDaemon { daemon in
                try await withRawSession(daemon.socketPath) { session in
                    try await session.handshake()
                    let register = try framed(Frame(streamID: 1, kind: .request(.workerSession(WorkerRegister(
                        workerName: "eager", agents: [AgentRegistration(name: "work", concurrency: 1)])))))
                    let report = try framed(Frame(streamID: 1, kind: .message(.worker(.result(taskID: 999, result: [1], usage: nil)))))
                    try await session.send(register + report)
                    guard case .ack(taskID: 0, let registered) = try await Self.next(&session) else {
                        Issue.record("the first answer was not the registration's acknowledgement")
                        return
                    }
                    #expect(registered.code == .ok)
                    guard case .ack(taskID: 999, let refused) = try await Self.next(&session) else {
                        Issue.record("the report was not answered next")
                        return
                    }
                    #expect(refused.code == .notFound)
                }
            }
        }
    }

    /// PROTOCOL.md §11, step 11: a session the daemon ends at shutdown ends UNAVAILABLE, so the worker comes back.
    @Test func aSessionTheDaemonEndsAtShutdownSaysUnavailable() async throws {
        try await withDeadline(.seconds(30)) {
            try await Self.withWorkerDaemon { daemon in
                try await withRawSession(daemon.socketPath) { session in
                    try await Self.register(&session, slots: 1)
                    daemon.server.shutdown()
                    while let (frame, _) = try await session.readFrame() {
                        guard frame.streamID == 1, case .end(let status) = frame.kind else { continue }
                        #expect(status.code == .unavailable, "\(status)")
                        return
                    }
                    Issue.record("the connection closed without ending the session")
                }
            }
        }
    }

    @Test(arguments: StoreKind.allCases) func aWorkerThatDisconnectsHandsItsTasksBack(on kind: StoreKind) async throws {
        try await withDeadline(.seconds(30)) {
            try await Self.withWorkerDaemon(on: kind) { daemon in
                let client = try await daemon.client()
                let batch = try await client.enqueueBatch(ownerID: "alice", agent: "work", tasks: [TaskSpec(customID: "only", payload: [1])])
                try await withRawSession(daemon.socketPath) { session in
                    try await Self.register(&session, slots: 1)
                    guard case .assignment(let task, _, _) = try await Self.next(&session) else { throw CancellationError() }
                    #expect(task.attempt == 1)
                }
                // The first worker's connection is closed: a second one gets the task as attempt 2.
                try await withRawSession(daemon.socketPath) { session in
                    try await Self.register(&session, slots: 1)
                    guard case .assignment(let task, _, _) = try await Self.next(&session) else { throw CancellationError() }
                    #expect(task.attempt == 2)
                    try await session.send(Frame(streamID: 1, kind: .message(.worker(.result(taskID: task.id, result: [7], usage: nil)))))
                    _ = try await Self.next(&session)
                }
                let seen = try await events(of: batch.id, owner: "alice", on: client)
                #expect(seen.contains { $0.type == .taskRetrying && $0.error?.code == "worker_lost" })
                #expect(seen.last?.type == .batchCompleted)
                await client.close()
            }
        }
    }
}

extension WorkerSessionTests {
    @Test(arguments: StoreKind.allCases) func resultsSentJustBeforeTheWorkerLeavesAreKept(on kind: StoreKind) async throws {
        try await withDeadline(.seconds(30)) {
            try await Self.withWorkerDaemon(on: kind) { daemon in
                let client = try await daemon.client()
                let batch = try await client.enqueueBatch(ownerID: "alice", agent: "work",
                                                          tasks: (0..<8).map { TaskSpec(customID: "t\($0)", payload: [UInt8($0)]) })
                try await withRawSession(daemon.socketPath) { session in
                    try await Self.register(&session, slots: 8)
                    var held: [TaskInfo] = []
                    while held.count < 8 {
                        if case .assignment(let task, _, _) = try await Self.next(&session) { held.append(task) }
                    }
                    // Every result, then the connection closes at once, without waiting for an acknowledgement.
                    for task in held {
                        try await session.send(Frame(streamID: 1, kind: .message(.worker(.result(taskID: task.id, result: task.payload, usage: nil)))))
                    }
                }
                let seen = try await events(of: batch.id, owner: "alice", on: client)
                #expect(seen.last?.type == .batchCompleted)
                #expect(!seen.contains { $0.type == .taskRetrying }, "no result was lost with the connection")
                let info = try await client.batch(batch.id)
                #expect(info.counts.completed == 8)
                await client.close()
            }
        }
    }
}

extension WorkerSessionTests {
    @Test(arguments: StoreKind.allCases) func aCancelledTaskIsCancelledOnItsWorker(on kind: StoreKind) async throws {
        try await withDeadline(.seconds(30)) {
            try await Self.withWorkerDaemon(on: kind) { daemon in
                let client = try await daemon.client()
                _ = try await client.enqueueBatch(ownerID: "alice", agent: "work", tasks: [TaskSpec(customID: "c", payload: [1])])
                try await withRawSession(daemon.socketPath) { session in
                    try await Self.register(&session, slots: 1)
                    guard case .assignment(let task, _, _) = try await Self.next(&session) else { throw CancellationError() }
                    async let cancelled = client.cancelTask(task.id)
                    guard case .cancel(let taskID) = try await Self.next(&session) else { throw CancellationError() }
                    #expect(taskID == task.id)
                    try await session.send(Frame(streamID: 1, kind: .message(.worker(.failure(
                        taskID: taskID, error: TaskError(message: "stopped", code: "cancelled"), retryAfterMs: 0)))))
                    guard case .ack(_, let status) = try await Self.next(&session) else { throw CancellationError() }
                    #expect(status.code == .cancelled)
                    #expect(try await cancelled.status == .cancelled)
                }
                await client.close()
            }
        }
    }
}

extension WorkerSessionTests {
    @Test func serverInfoAndFanoutWorkersListConnectedWorkers() async throws {
        try await withDeadline(.seconds(30)) {
            try await Self.withWorkerDaemon { daemon in
                let client = try await daemon.client()
                try await withRawSession(daemon.socketPath) { session in
                    try await Self.register(&session, slots: 3)
                    let info = try await client.serverInfo()
                    #expect(info.workers == 1)
                    let worker = try #require(info.workerList.first)
                    #expect(worker.name == "raw-worker")
                    #expect(worker.agents == [ConnectedWorker.Slots(agent: "work", slots: 3, freeSlots: 3)])
                    #expect(info.agents.first { $0.name == "work" }?.workers == 1)
                    let listed = try await FanoutCLI.run(["workers", "--json", "--socket", daemon.socketPath])
                    #expect(listed.status == 0, "\(listed.err)")
                    let object = try #require(try JSONSerialization.jsonObject(with: Data(listed.out.utf8)) as? [String: Any])
                    let workers = try #require(object["workers"] as? [[String: Any]])
                    #expect(workers.first?["name"] as? String == "raw-worker")
                    let table = try await FanoutCLI.run(["workers", "--socket", daemon.socketPath])
                    #expect(table.out.contains("work 3/3"), "\(table.out)")
                }
                // Gone once its connection closes.
                try await waitUntil { try await client.serverInfo().workerList.isEmpty }
                await client.close()
            }
        }
    }
}

/// Polls `condition` every few milliseconds until it holds (bounded by the test's deadline).
private func waitUntil(_ condition: () async throws -> Bool) async throws {
    while try await !condition() { try await Task.sleep(for: .milliseconds(10)) }
}
