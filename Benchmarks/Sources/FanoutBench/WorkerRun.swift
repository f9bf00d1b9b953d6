import FanoutClient
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The worker rows: zero-work tasks through worker processes built on the
/// Swift worker API (`fanout worker`, which echoes payloads with
/// `FanoutWorker`), timed from enqueue to `batch_completed` with the durable
/// store; and the latency of a parent that spawns children of zero work and
/// resumes with their results, from its enqueue to its batch's end.
struct WorkerResult: Codable, Sendable {
    var tasks: Int
    var workers: Int
    var slotsPerWorker: Int
    var status = "running"
    var error: String?
    var seconds: Double?
    var tasksPerSecond: Double?
    /// What the issue asks on a 2-core machine.
    var targetTasksPerSecond = 60_000.0
    var parents: Int
    var childrenPerParent: Int
    var parentP50Ms: Double?
    var parentP99Ms: Double?
}

enum WorkerRun {
    static func run(tasks: Int, workers: Int, slotsPerWorker: Int, parents: Int, childrenPerParent: Int,
                    fanoutd: String) async -> WorkerResult {
        var result = WorkerResult(tasks: tasks, workers: workers, slotsPerWorker: slotsPerWorker, parents: parents,
                                  childrenPerParent: childrenPerParent)
        let cli = URL(fileURLWithPath: fanoutd).deletingLastPathComponent().appendingPathComponent("fanout").path
        var processes: [Process] = []
        var daemon: Daemon?
        defer {
            for process in processes where process.isRunning { process.terminate() }
            for process in processes { process.waitUntilExit() }
        }
        do {
            daemon = try await Daemon.start(executable: fanoutd, concurrency: workers * slotsPerWorker,
                                            maxTasksPerBatch: max(tasks, 1))
            let socket = daemon!.socketPath
            for index in 0..<workers {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: cli)
                process.arguments = ["worker", "--socket", socket, "--agent", "work", "--concurrency", String(slotsPerWorker),
                                     "--name", "bench-\(index)"]
                process.standardOutput = FileHandle.nullDevice
                process.standardError = FileHandle.nullDevice
                try process.run()
                processes.append(process)
            }
            let client = try await FanoutClient.connect(socketPath: socket, clientName: "fanout-bench-workers")
            do {
                // The parents' agent runs in this process, on the same worker API.
                let parentWorker = FanoutWorker(name: "bench-parents", agents: [
                    WorkerAgent("parent", concurrency: 4) { task in
                        let children = try await task.spawn((0..<childrenPerParent).map {
                            TaskSpec(customID: "c\($0)", agent: "work", payload: Array("child".utf8))
                        })
                        return WorkerOutput("\(children.results.count)")
                    },
                ], settings: .init(socketPath: socket))
                let parentRun = Task { try await parentWorker.run() }
                defer { parentRun.cancel() }
                let deadline = ContinuousClock.now + .seconds(30)
                while try await client.serverInfo().workerList.count < workers + 1 {
                    guard ContinuousClock.now < deadline else { throw BenchError("the workers did not all connect within 30 s") }
                    try await Task.sleep(for: .milliseconds(20))
                }

                let payload = Array(repeating: UInt8(ascii: "x"), count: 16)
                let specs = (0..<tasks).map { TaskSpec(customID: "w\($0)", payload: payload) }
                let since = try await client.serverInfo().lastSequence
                let clock = ContinuousClock()
                let start = clock.now
                let batch = try await client.enqueueBatch(ownerID: SizeRun.owner, agent: "work", tasks: specs)
                let end = try await SizeRun.awaitEnd(of: batch.id, client: client, since: since)
                let elapsed = (clock.now - start).seconds
                let info = try await client.batch(batch.id)
                guard end.type == .batchCompleted, info.counts.completed == UInt32(tasks) else {
                    throw BenchError("the worker batch ended \(end.type) with \(info.counts.completed) of \(tasks) completed")
                }
                result.seconds = elapsed
                result.tasksPerSecond = Double(tasks) / elapsed

                var latencies: [Double] = []
                for index in 0..<parents {
                    let since = try await client.serverInfo().lastSequence
                    let start = clock.now
                    let parent = try await client.enqueueBatch(ownerID: SizeRun.owner, agent: "parent",
                                                               tasks: [TaskSpec(customID: "p\(index)", payload: [])])
                    let end = try await SizeRun.awaitEnd(of: parent.id, client: client, since: since)
                    guard end.type == .batchCompleted else { throw BenchError("parent \(index) ended \(end.type)") }
                    latencies.append((clock.now - start).seconds * 1000)
                }
                latencies.sort()
                result.parentP50Ms = latencies[latencies.count / 2]
                result.parentP99Ms = latencies[min(latencies.count - 1, Int((Double(latencies.count) * 0.99).rounded(.up)) - 1)]
                result.status = "ok"
                await client.close()
            } catch {
                await client.close()
                throw error
            }
        } catch {
            result.status = "error"
            result.error = "\(error)" + (daemon.map { "\n" + $0.logTail() } ?? "")
        }
        if let daemon { _ = await daemon.stop() }
        return result
    }
}
