import FanoutClient
import Foundation
import PostgresTestServer

/// The PostgreSQL rows: one batch of zero-delay echo tasks enqueued through
/// the first of 1, 2 and 3 `fanoutd` sharing one database (a server this run
/// starts in a temporary directory), timed from enqueue to `batch_completed`,
/// with how many tasks each daemon ran. On a 2-core machine the point is
/// correctness and how the cost grows with daemons, not peak speed.
struct PostgresRunResult: Codable, Sendable {
    var daemons: Int
    var tasks: Int
    var status = "running"
    var error: String?
    var seconds: Double?
    var tasksPerSecond: Double?
    /// Tasks each daemon ran (`claimed_by`), in start order.
    var tasksPerDaemon: [Int]?
    /// What the database says afterwards, checked: every task completed on its first attempt
    /// and started once, the batch's counters equal a recount, one `batch_completed`.
    var verified: Bool?
}

struct PostgresResult: Codable, Sendable {
    var tasks: Int
    var concurrencyPerDaemon: Int
    var status = "ok"
    var error: String?
    var runs: [PostgresRunResult] = []
}

enum PostgresRun {
    static func run(tasks: Int, daemonCounts: [Int], concurrency: Int, fanoutd: String) async -> PostgresResult {
        var result = PostgresResult(tasks: tasks, concurrencyPerDaemon: concurrency)
        let server: PostgresTestServer
        do {
            server = try await PostgresTestServer.start()
        } catch {
            result.status = "error"
            result.error = "\(error)"
            return result
        }
        // Daemons look for one another's work ten times a second (the default is once), and keep
        // every event, so the check after each run can count every task's start.
        setenv("FANOUT_POSTGRES_POLL_MS", "100", 1)
        setenv("FANOUT_EVENT_RETENTION_COUNT", "0", 1)
        defer {
            unsetenv("FANOUT_POSTGRES_POLL_MS")
            unsetenv("FANOUT_EVENT_RETENTION_COUNT")
        }
        for count in daemonCounts {
            let run = await runOnce(daemons: count, tasks: tasks, concurrency: concurrency, server: server, fanoutd: fanoutd)
            if run.status != "ok" { result.status = "error" }
            result.runs.append(run)
        }
        try? await server.stop()
        return result
    }

    private static func runOnce(daemons count: Int, tasks: Int, concurrency: Int, server: PostgresTestServer,
                                fanoutd: String) async -> PostgresRunResult {
        var result = PostgresRunResult(daemons: count, tasks: tasks)
        var daemons: [Daemon] = []
        do {
            let database = "bench_\(count)_daemons"
            try await server.createDatabase(named: database)
            let url = server.connectionURL(database: database)
            for _ in 0..<count {
                daemons.append(try await Daemon.start(executable: fanoutd, concurrency: concurrency, maxTasksPerBatch: tasks,
                                                      extraArguments: ["--store", url]))
            }
            let client = try await FanoutClient.connect(socketPath: daemons[0].socketPath, clientName: "fanout-bench-postgres")
            let payload = Array(#"{"n":1}"#.utf8)
            let started = ContinuousClock.now
            let batch = try await client.enqueueBatch(ownerID: "bench", agent: "echo",
                                                      tasks: (0..<tasks).map { TaskSpec(customID: "t\($0)", payload: payload) })
            for try await event in client.subscribe(ownerID: "bench", eventTypes: [.batchCompleted, .batchFailed, .batchCancelled],
                                                    batchID: batch.id, since: 0) {
                guard event.type == .batchCompleted else { throw BenchError("the batch ended \(event.type)") }
                break
            }
            let elapsed = ContinuousClock.now - started
            await client.close()
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            result.seconds = seconds
            result.tasksPerSecond = Double(tasks) / seconds
            let shares = try await server.psql(
                "SELECT split_part(claimed_by, '/', 2), count(*) FROM tasks WHERE batch_id = \(batch.id) GROUP BY 1", database: database)
            var byPID: [Int32: Int] = [:]
            for line in shares.split(separator: "\n") {
                let cells = line.split(separator: "|")
                if cells.count == 2, let pid = Int32(cells[0]), let ran = Int(cells[1]) { byPID[pid] = ran }
            }
            result.tasksPerDaemon = daemons.map { byPID[$0.pid] ?? 0 }
            try await verify(batch: batch.id, tasks: tasks, server: server, database: database)
            result.verified = true
            result.status = "ok"
        } catch {
            result.status = "error"
            result.error = "\(error)"
        }
        for daemon in daemons { _ = await daemon.stop() }
        return result
    }

    /// Each task ran exactly once and the counters are right, as the database records them.
    private static func verify(batch: UInt64, tasks: Int, server: PostgresTestServer, database: String) async throws {
        let facts = try await server.psql("""
            SELECT (SELECT count(*) FROM tasks WHERE batch_id = \(batch) AND state = 'completed' AND attempt = 1),
                   (SELECT count(*) FROM events WHERE batch_id = \(batch) AND kind = 'task_started'),
                   (SELECT count(DISTINCT task_id) FROM events WHERE batch_id = \(batch) AND kind = 'task_started'),
                   (SELECT count(*) FROM events WHERE batch_id = \(batch) AND kind = 'batch_completed'),
                   (SELECT completed FROM batches WHERE id = \(batch)),
                   (SELECT pending + running + waiting_children + retry_wait + failed + cancelled + expired FROM batches WHERE id = \(batch))
            """, database: database)
        let numbers = facts.split(separator: "|").map { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1 }
        let expected = [tasks, tasks, tasks, 1, tasks, 0]
        guard numbers == expected else {
            throw BenchError("the database disagrees: [completed on attempt 1, task_started events, tasks started, batch_completed events, "
                             + "completed counter, other counters] = \(numbers), expected \(expected)")
        }
    }
}
