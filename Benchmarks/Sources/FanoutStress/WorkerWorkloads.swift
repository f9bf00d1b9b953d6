import FanoutClient
import FanoutWire
import Foundation
import NIOCore

/// Workloads of worker-served tasks: batches for an agent that workers
/// declare, a steady worker, a worker that leaves mid-task every few seconds,
/// and raw sessions sending mutated worker messages. Every task must still
/// complete exactly once: a task whose worker left runs again elsewhere.
enum WorkerWorkloads {
    static let agent = "stress-work"

    /// Batches of 40 worker tasks, one every 100 ms. Many attempts each: a task
    /// may be held by a worker that leaves, several times.
    static func producer(_ supervisor: Supervisor, _ tally: Tally, until: ContinuousClock.Instant) async {
        await Workloads.produce(supervisor, tally, until: until, agent: agent, every: .milliseconds(100)) { number in
            (0..<40).map { TaskSpec(customID: "w\(number)-t\($0)", payload: Array("w\(number)-\($0)".utf8), maxAttempts: 50) }
        }
    }

    /// A worker that echoes each payload after up to 3 ms; it reconnects after every kill and runs
    /// until cancelled, so it finishes the last batches while they are verified.
    static func steadyWorker(_ supervisor: Supervisor) async {
        let worker = FanoutWorker(name: "stress-steady", agents: [echoAgent(concurrency: 16)],
                                  settings: .init(socketPath: supervisor.socketPath, reconnectDelay: .milliseconds(50),
                                                  maxReconnectDelay: .milliseconds(500)))
        _ = try? await worker.run()
    }

    /// A worker that leaves without a word every 0.5 to 3 s, holding tasks.
    static func flakyWorker(_ supervisor: Supervisor, _ tally: Tally, until: ContinuousClock.Instant) async {
        while ContinuousClock.now < until {
            let worker = FanoutWorker(name: "stress-flaky", agents: [echoAgent(concurrency: 8)],
                                      settings: .init(socketPath: supervisor.socketPath, reconnectDelay: .milliseconds(50),
                                                      maxReconnectDelay: .milliseconds(500)))
            let running = Task { try await worker.run() }
            try? await Task.sleep(for: .milliseconds(Int.random(in: 500...3_000)))
            running.cancel()
            _ = await running.result
            tally.update { $0.workerDepartures += 1 }
        }
    }

    /// Raw sessions: register for the agent, then send worker messages with bytes changed, cut
    /// short or with absurd lengths, for tasks held or not; then close, holding whatever was assigned.
    static func hostileWorker(_ supervisor: Supervisor, _ tally: Tally, until: ContinuousClock.Instant) async {
        var random = SystemRandomNumberGenerator()
        let register = FrameTemplates.framed(Frame(streamID: 1, kind: .request(.workerSession(WorkerRegister(
            workerName: "stress-hostile", agents: [AgentRegistration(name: agent, concurrency: 4)])))))
        let hello = FrameTemplates.framed(Frame(streamID: 0, kind: .request(.hello(Hello(clientName: "stress-hostile")))))
        while ContinuousClock.now < until {
            do {
                let channel = try await Workloads.rawConnection(to: supervisor)
                try await channel.executeThenClose { inbound, outbound in
                    // Half the sessions read what they are sent; the others never do.
                    let reads = Bool.random(using: &random)
                    let drain = Task { if reads { for try await _ in inbound {} } }
                    defer { drain.cancel() }
                    try await outbound.write(ByteBuffer(bytes: hello + register))
                    try? await Task.sleep(for: .milliseconds(Int.random(in: 0...50, using: &random)))
                    for _ in 0..<20 {
                        let message = messages(taskID: UInt64.random(in: 1...5_000, using: &random)).randomElement(using: &random)!
                        let frame = FrameTemplates.framed(Frame(streamID: 1, kind: .message(.worker(message))))
                        try await outbound.write(ByteBuffer(bytes: FrameTemplates.mutate(frame, using: &random)))
                        tally.update { $0.workerFramesFuzzed += 1 }
                    }
                    try? await Task.sleep(for: .milliseconds(Int.random(in: 0...200, using: &random)))
                }
            } catch {
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
    }

    private static func echoAgent(concurrency: Int) -> WorkerAgent {
        WorkerAgent(agent, concurrency: concurrency) { task in
            try await Task.sleep(for: .milliseconds(Int.random(in: 0...3)))
            return WorkerOutput(task.payload)
        }
    }

    /// One of each worker message, about `taskID`.
    private static func messages(taskID: UInt64) -> [WorkerMessage] {
        [
            .heartbeat(taskIDs: (0..<64).map { taskID + $0 }),
            .turn(taskID: taskID, turns: 1_000_000),
            .result(taskID: taskID, result: Array("forged".utf8), usage: nil),
            .failure(taskID: taskID, error: TaskError(message: "forged", code: "forged", retryable: true), retryAfterMs: 1),
            .spawn(taskID: taskID, children: EnqueueBatchRequest(ownerID: "x", agent: "echo", tasks: [TaskSpec(customID: "c", payload: [1])])),
            .waitChildren(taskID: taskID, timeoutMs: 1),
            .drain,
        ]
    }
}
