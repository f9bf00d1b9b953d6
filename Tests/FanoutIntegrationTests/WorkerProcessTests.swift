import FanoutTestSupport
import Foundation
import Synchronization
import Testing
@testable import FanoutClient

/// Workers and subagents with real processes: fanoutd, and `fanout worker`
/// (built on FanoutWorker) as separate processes that are killed mid-work.
@Suite(.serialized) struct WorkerProcessTests {
    static func startWorker(_ socket: String, _ arguments: [String], as user: UnprivilegedUser? = nil,
                            directory: String, name: String) async throws -> BackgroundProcess {
        let cli = try #require(FanoutCLI.path)
        let command = ["worker", "--socket", socket] + arguments
        if let user {
            return try await BackgroundProcess("/usr/sbin/runuser", ["-u", user.name, "--", cli] + command, logPrefix: directory + "/" + name)
        }
        return try await BackgroundProcess(cli, command, logPrefix: directory + "/" + name)
    }

    /// Waits until `count` workers are connected.
    static func waitForWorkers(_ client: FanoutClient, _ count: Int) async throws {
        while try await client.serverInfo().workerList.count != count { try await Task.sleep(for: .milliseconds(20)) }
    }

    @Test func aWorkerKilledMidTaskHasItsTaskRunAgainByAnother() async throws {
        try await withListeningDaemon { _, socket, directory in
            try await withDeadline(.seconds(60)) {
                try await withClient(socket) { client in
                    // The first worker's command never finishes in time; the second one's answers at once.
                    let stuck = try await Self.startWorker(socket, ["--agent", "job", "--", "sleep", "8"], directory: directory, name: "stuck")
                    defer { stuck.kill() }
                    try await Self.waitForWorkers(client, 1)
                    let batch = try await client.enqueueBatch(ownerID: "ops", agent: "job",
                                                              tasks: [TaskSpec(customID: "only", payload: Array("payload".utf8))])
                    while try await client.serverInfo().workerList.first?.runningTaskIDs.isEmpty != false {
                        try await Task.sleep(for: .milliseconds(20))
                    }
                    stuck.kill()
                    let rescuer = try await Self.startWorker(socket, ["--agent", "job", "--", "cat"], directory: directory, name: "rescuer")
                    defer { rescuer.stop() }
                    let seen = try await events(of: batch.id, owner: "ops", on: client)
                    #expect(seen.last?.type == .batchCompleted)
                    let retry = try #require(seen.first { $0.type == .taskRetrying })
                    #expect(retry.error?.code == "worker_lost", "the event says why: \(String(describing: retry.error))")
                    let result = try #require(try await client.results(batchID: batch.id).first { _ in true })
                    #expect(result.result == Array("payload".utf8))
                    #expect(result.attempt == 2, "the lost attempt counts")
                }
            }
        }
    }

    @Test func sigtermDrainsAWorkerItFinishesWhatItRunsAndTakesNothingNew() async throws {
        try await withListeningDaemon { _, socket, directory in
            try await withDeadline(.seconds(60)) {
                try await withClient(socket) { client in
                    // Five seconds per task: the SIGTERM must come while the first runs, also on a loaded machine.
                    let worker = try await Self.startWorker(socket, ["--agent", "slow", "--", "sh", "-c", "sleep 5; cat"],
                                                      directory: directory, name: "draining")
                    defer { worker.kill() }
                    try await Self.waitForWorkers(client, 1)
                    let batch = try await client.enqueueBatch(ownerID: "ops", agent: "slow", tasks: (0..<2).map {
                        TaskSpec(customID: "t\($0)", payload: Array("payload \($0)".utf8))
                    })
                    while try await client.serverInfo().workerList.first?.runningTaskIDs.isEmpty != false {
                        try await Task.sleep(for: .milliseconds(20))
                    }
                    worker.stop()   // SIGTERM, then wait for the exit
                    #expect(await worker.exitStatus() == 0, "a drained worker exits cleanly: \(worker.errors)")
                    // Its last result was sent before it exited; the daemon records it as it comes.
                    for try await event in client.subscribe(batchID: batch.id, since: 0) where event.type == .taskCompleted { break }
                    let info = try await client.batch(batch.id)
                    #expect(info.counts.completed == 1, "the running task finished; the other was not taken: \(info.counts)")
                    #expect(info.counts.pending == 1)
                    while try await !client.serverInfo().workerList.isEmpty { try await Task.sleep(for: .milliseconds(20)) }
                }
            }
        }
    }

    @Test func fanoutdKilledWhileParentsWaitRecoversAndResumesThem() async throws {
        try await withTemporaryDirectory { directory in
            let socket = directory + "/d.sock"
            let arguments = ["--socket", socket, "--db", directory + "/fanout.db"]
            let gate = Signal()
            let spawned = SpawnCounter()
            let agents = [
                WorkerAgent("parent", concurrency: 4) { task in
                    spawned.add(task.taskID)
                    let children = try await task.spawn((0..<3).map { TaskSpec(customID: "c\($0)", agent: "gate", payload: Array("\($0)".utf8)) })
                    let answers = children.results.map { String(decoding: $0.result, as: UTF8.self) }.sorted()
                    return WorkerOutput(answers.joined(separator: ","))
                },
                WorkerAgent("gate", concurrency: 8) { task in
                    await gate.wait()
                    try Task.checkCancellation()
                    return WorkerOutput(task.payload)
                },
            ]
            let worker = FanoutWorker(name: "recovering", agents: agents,
                                      settings: .init(socketPath: socket, reconnectDelay: .milliseconds(50), maxReconnectDelay: .milliseconds(200)))
            let running = Task { try await worker.run() }
            defer { running.cancel() }
            let batchID = try await withDaemonProcess(arguments, logPath: directory + "/first.log") { first in
                try await withDeadline(.seconds(30)) {
                    try await first.waitUntilListening(socket)
                    return try await withClient(socket) { client in
                        try await Self.waitForWorkers(client, 1)
                        let batch = try await client.enqueueBatch(ownerID: "lab", agent: "parent",
                                                                  tasks: (0..<2).map { TaskSpec(customID: "p\($0)", payload: []) })
                        // Both parents wait, and their six children run (held at the gate).
                        while true {
                            let parents = try await client.batch(batch.id)
                            let children = try await client.batches(ownerID: "lab").batches.filter { $0.parentTaskID != 0 }
                            if parents.counts.waitingChildren == 2 && children.reduce(0, { $0 + $1.counts.running }) == 6 { break }
                            try await Task.sleep(for: .milliseconds(20))
                        }
                        first.kill()
                        return batch.id
                    }
                }
            }
            try await withDaemonProcess(arguments, logPath: directory + "/second.log") { second in
                try await withDeadline(.seconds(30)) {
                    try await second.waitUntilListening(socket)
                    try await withClient(socket) { client in
                        #expect(try await client.batch(batchID).counts.waitingChildren == 2, "still waiting after the crash")
                        gate.fire()
                        let seen = try await events(of: batchID, owner: "lab", on: client)
                        #expect(seen.last?.type == .batchCompleted)
                        for try await result in client.results(batchID: batchID) {
                            #expect(result.status == .completed)
                            #expect(String(decoding: result.result, as: UTF8.self) == "0,1,2")
                        }
                        let childBatches = try await client.batches(ownerID: "lab").batches.filter { $0.parentTaskID != 0 }
                        #expect(childBatches.count == 2, "each parent spawned once, before the crash")
                        #expect(childBatches.allSatisfy { $0.status == .completed })
                    }
                }
            }
            #expect(spawned.runs.values.allSatisfy { $0 >= 1 }, "\(spawned.runs)")
        }
    }

    @Test func anotherUidCannotServeAnAgentTheConfigurationKeepsForAdmins() async throws {
        let user = try await UnprivilegedUser.make()
        try await withTemporaryDirectory { directory in
            chmod(directory, 0o755)
            let config = directory + "/fanout.json"
            try #"{"agents": [{"name": "private", "runner": "worker"}, {"name": "echo", "runner": "echo"}]}"#
                .write(toFile: config, atomically: true, encoding: .utf8)
            let socket = directory + "/d.sock"
            try await withDaemonProcess(["--socket", socket, "--db", directory + "/fanout.db", "--config", config, "--socket-mode", "0666"],
                                        logPath: directory + "/fanoutd.log") { daemon in
                try await withDeadline(.seconds(60)) {
                    try await daemon.waitUntilListening(socket)
                    let cli = try #require(FanoutCLI.path)
                    let refused = try await user.run(cli, ["worker", "--socket", socket, "--agent", "private"])
                    #expect(refused.status != 0)
                    #expect(refused.err.contains("may not serve agent \"private\""), "\(refused.err)")

                    // Its own agent, though, it may declare; it runs that uid's tasks and no one else's.
                    let own = try await Self.startWorker(socket, ["--agent", "mine", "--", "tr", "a-z", "A-Z"], as: user,
                                                   directory: directory, name: "own")
                    defer { own.stop() }
                    try await withClient(socket) { client in
                        try await Self.waitForWorkers(client, 1)
                        let error = await caughtClientError {
                            _ = try await client.enqueueBatch(ownerID: "root", agent: "mine", tasks: [TaskSpec(customID: "x", payload: [])])
                        }
                        #expect(error?.code == .permissionDenied, "\(String(describing: error))")
                    }
                    let input = directory + "/in.jsonl"
                    try #"{"custom_id": "a", "payload": "hello"}"#.write(toFile: input, atomically: true, encoding: .utf8)
                    chmod(input, 0o644)
                    let submitted = try await user.run(cli, ["submit", input, "--agent", "mine", "--owner", "u", "--socket", socket, "--watch"])
                    #expect(submitted.status == 0, "\(submitted.out) \(submitted.err)")
                    let results = try await user.run(cli, ["results", "1", "--socket", socket])
                    #expect(results.out.contains("HELLO"), "\(results.out) \(results.err)")
                }
            }
        }
    }
}

/// How many times each parent task's handler ran.
final class SpawnCounter: Sendable {
    private let counts = Mutex<[UInt64: Int]>([:])
    func add(_ task: UInt64) { counts.withLock { $0[task, default: 0] += 1 } }
    var runs: [UInt64: Int] { counts.withLock { $0 } }
}
