import FanoutClient
import Foundation

/// Start latency and memory under a backlog: enqueue → `task_started` for one
/// task at a time, first on an idle daemon, then with a backlog of pending
/// tasks (on an agent served by workers, none connected, so they wait) and
/// the daemon's RSS holding them.
struct LatencyResult: Codable, Sendable {
    var status = "running"
    var error: String?
    var samples: Int
    var idleP50Us: Double?
    var idleP99Us: Double?
    var idleMaxUs: Double?
    var backlogTasks: Int
    var backlogEnqueueSeconds: Double?
    /// fanoutd's VmRSS once the backlog is stored and admitted, and its peak so far.
    var backlogRssMb: Double?
    var backlogPeakRssMb: Double?
    var backlogP50Us: Double?
    var backlogP99Us: Double?
    var backlogMaxUs: Double?
    /// What the issue asks on a 2-core machine.
    var targetIdleP50Us = 300.0
    var targetIdleP99Us = 2_000.0
    var targetBacklogP99Us = 5_000.0
    var targetBacklogRssMb = 200.0
}

enum LatencyRun {
    static let owner = "fanout-bench-latency"

    static func run(samples: Int, backlog: Int, payloadBytes: Int, fanoutd: String) async -> LatencyResult {
        var result = LatencyResult(samples: samples, backlogTasks: backlog)
        do {
            result = try await BacklogDaemon.run(fanoutd: fanoutd, maxTasksPerBatch: backlog) { daemon, client in
                var result = result
                try await measure(into: &result, client: client, daemon: daemon, samples: samples, backlog: backlog,
                                  payloadBytes: payloadBytes)
                return result
            }
            result.status = "ok"
        } catch {
            result.status = "error"
            result.error = "\(error)"
        }
        return result
    }

    private static func measure(into result: inout LatencyResult, client: FanoutClient, daemon: Daemon, samples: Int,
                                backlog: Int, payloadBytes: Int) async throws {
        let started = client.subscribe(ownerID: owner, eventTypes: [.taskStarted])
        var events = started.makeAsyncIterator()
        let task = SizeRun.makeTasks(count: 1, payloadBytes: payloadBytes)[0]

        _ = try await measure(count: min(50, samples), task: task, client: client, events: &events)  // warm-up
        let idle = try await measure(count: samples, task: task, client: client, events: &events)
        (result.idleP50Us, result.idleP99Us, result.idleMaxUs) = percentiles(idle)

        if backlog > 0 {
            let tasks = SizeRun.makeTasks(count: backlog, payloadBytes: payloadBytes)
            let clock = ContinuousClock()
            let start = clock.now
            _ = try await client.enqueueBatch(ownerID: "fanout-bench-backlog", agent: "backlog", tasks: tasks)
            result.backlogEnqueueSeconds = (clock.now - start).seconds
            let loaded = try await measure(count: samples, task: task, client: client, events: &events)
            (result.backlogP50Us, result.backlogP99Us, result.backlogMaxUs) = percentiles(loaded)
            if let stats = ProcStats.read(daemon.pid) {
                result.backlogRssMb = Double(stats.vmRSS) / 1024
                result.backlogPeakRssMb = Double(stats.vmHWM) / 1024
            }
        }
    }

    /// Microseconds from each single-task enqueue until its `task_started` event is read.
    private static func measure(count: Int, task: TaskSpec, client: FanoutClient,
                                events: inout ServerStream<Event>.AsyncIterator) async throws -> [Double] {
        let clock = ContinuousClock()
        var latencies: [Double] = []
        latencies.reserveCapacity(count)
        for _ in 0..<count {
            let start = clock.now
            let batch = try await client.enqueueBatch(ownerID: owner, agent: "echo", tasks: [task])
            while true {
                guard let event = try await events.next() else { throw BenchError("the task_started subscription ended") }
                if event.batchID == batch.id { break }
            }
            latencies.append((clock.now - start).seconds * 1_000_000)
        }
        return latencies
    }

    private static func percentiles(_ values: [Double]) -> (Double?, Double?, Double?) {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return (nil, nil, nil) }
        return (sorted[sorted.count / 2], sorted[min(sorted.count - 1, sorted.count * 99 / 100)], sorted.last)
    }
}

/// Enqueue with `durability = full` (fsync at every commit): one batch, timed
/// until its answer, on an agent whose tasks wait so only the enqueue is measured.
struct DurableEnqueueResult: Codable, Sendable {
    var status = "running"
    var error: String?
    var tasks: Int
    var seconds: Double?
    var tasksPerSecond: Double?
    var targetTasksPerSecond = 100_000.0
}

enum DurableEnqueueRun {
    static func run(tasks count: Int, payloadBytes: Int, fanoutd: String) async -> DurableEnqueueResult {
        var result = DurableEnqueueResult(tasks: count)
        do {
            let seconds = try await BacklogDaemon.run(fanoutd: fanoutd, maxTasksPerBatch: count,
                                                      extraArguments: ["--durability", "full"]) { _, client in
                let tasks = SizeRun.makeTasks(count: count, payloadBytes: payloadBytes)
                let clock = ContinuousClock()
                let start = clock.now
                _ = try await client.enqueueBatch(ownerID: "fanout-bench-durable", agent: "backlog", tasks: tasks)
                return (clock.now - start).seconds
            }
            result.seconds = seconds
            result.tasksPerSecond = Double(count) / seconds
            result.status = "ok"
        } catch {
            result.status = "error"
            result.error = "\(error)"
        }
        return result
    }
}

/// A fresh daemon with an agent, `backlog`, whose tasks wait (its runner is
/// "worker" and no worker connects), and a client to it, for as long as `body` runs.
enum BacklogDaemon {
    static func run<T: Sendable>(fanoutd: String, maxTasksPerBatch: Int, extraArguments: [String] = [],
                                 _ body: (Daemon, FanoutClient) async throws -> T) async throws -> T {
        let daemon = try await Daemon.start(executable: fanoutd, concurrency: 256, maxTasksPerBatch: max(maxTasksPerBatch, 1),
                                            extraAgents: [#"{"name":"backlog","runner":"worker"}"#],
                                            extraArguments: extraArguments)
        var outcome: Result<T, any Error>
        do {
            let client = try await FanoutClient.connect(socketPath: daemon.socketPath, clientName: "fanout-bench")
            do { outcome = .success(try await body(daemon, client)) } catch { outcome = .failure(error) }
            await client.close()
        } catch {
            outcome = .failure(error)
        }
        if case .failure(let error) = outcome {
            let log = daemon.logTail()
            await daemon.stop()
            throw BenchError("\(error)\n\(log)")
        }
        await daemon.stop()
        return try outcome.get()
    }
}
