import FanoutClient
import FanoutTestSupport
import Foundation
import Synchronization
import Testing

/// Several real `fanoutd` processes sharing one PostgreSQL database (decision 51). One test at a
/// time: each runs two or three daemons, which is load enough beside the other suites.
@Suite(.postgresServer, .serialized) struct MultiDaemonProcessTests {
    /// `count` daemons on one database, each on its own socket, all listening; killed afterwards.
    static func withDaemons<T: Sendable>(
        _ count: Int, database: String, in directory: String, arguments: [String] = [], environment: [String: String] = [:],
        _ body: @escaping @Sendable (_ daemons: [DaemonProcess], _ sockets: [String]) async throws -> T
    ) async throws -> T {
        let server = try PostgresTestServer.current()
        try await server.createDatabase(named: database)
        let url = server.connectionURL(database: database)
        // Looks for other daemons' work ten times a second, so the test need not wait.
        let environment = ["FANOUT_POSTGRES_POLL_MS": "100"].merging(environment) { _, new in new }
        func start(_ index: Int, _ started: [DaemonProcess]) async throws -> T {
            guard index < count else {
                let sockets = (0..<count).map { directory + "/d\($0).sock" }
                for (daemon, socket) in zip(started, sockets) { try await daemon.waitUntilListening(socket) }
                do {
                    return try await body(started, sockets)
                } catch {
                    // What the database held when the test gave up: who holds which tasks, in what state.
                    let held = try? await server.psql("""
                        SELECT batch_id, state, claimed_by, lease_expires_at IS NOT NULL, cancel_requested, count(*) FROM tasks
                        GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3
                        """, database: database)
                    let batches = try? await server.psql(
                        "SELECT id, state, closing, pending, running, completed, cancelled FROM batches ORDER BY id", database: database)
                    let daemonsSeen = try? await server.psql("SELECT id, heartbeat_at FROM daemons", database: database)
                    // And what each daemon still running says it holds.
                    var views: [String] = []
                    for (daemon, socket) in zip(started, sockets) where daemon.isRunning {
                        let info = try? await withClient(socket) { try await $0.serverInfo() }
                        views.append("pid \(daemon.pid): " + (info.map {
                            "pending \($0.pendingTasks), running \($0.runningTasks), agents \($0.agents.map { "\($0.name) \($0.running)" })"
                        } ?? "no answer"))
                    }
                    Issue.record("""
                        the database held: tasks
                        \(held ?? "?")
                        batches
                        \(batches ?? "?")
                        daemons
                        \(daemonsSeen ?? "?")
                        the daemons said: \(views.joined(separator: "; "))
                        """)
                    throw error
                }
            }
            return try await withDaemonProcess(["--socket", directory + "/d\(index).sock", "--store", url, "--concurrency", "4"] + arguments,
                                               environment: environment, logPath: directory + "/d\(index).log") { daemon in
                do {
                    return try await start(index + 1, started + [daemon])
                } catch {
                    // What the daemon said, for a failure that is the daemons' (the directory goes with the test).
                    Issue.record("daemon \(index) (pid \(daemon.pid)) said:\n\(daemon.output.suffix(4_000))")
                    throw error
                }
            }
        }
        return try await start(0, [])
    }

    /// Waits until the batch has ended, asking `client`; returns it.
    static func waitForEnd(of batchID: UInt64, on client: FanoutClient) async throws -> BatchInfo {
        while true {
            let batch = try await client.batch(batchID)
            if [.completed, .failed, .cancelled].contains(batch.status) { return batch }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    static func results(of batchID: UInt64, socket: String) async throws -> [TaskResult] {
        try await withClient(socket) { client in
            var results: [TaskResult] = []
            for try await result in client.results(batchID: batchID) { results.append(result) }
            return results
        }
    }

    /// How many of the batch's tasks each daemon ran, by pid (`claimed_by` is host/pid/random).
    static func tasksRun(in batchID: UInt64, database: String) async throws -> [pid_t: Int] {
        let output = try await PostgresTestServer.current().psql(
            "SELECT split_part(claimed_by, '/', 2), count(*) FROM tasks WHERE batch_id = \(batchID) GROUP BY 1", database: database)
        var counts: [pid_t: Int] = [:]
        for line in output.split(separator: "\n") {
            let cells = line.split(separator: "|", omittingEmptySubsequences: false)
            if cells.count == 2, let pid = pid_t(cells[0]), let count = Int(cells[1]) { counts[pid] = count }
        }
        return counts
    }

    static func count(_ sql: String, database: String) async throws -> Int {
        Int(try await PostgresTestServer.current().psql(sql, database: database)) ?? -1
    }

    @Test func aBatchEnqueuedOnOneDaemonRunsOnAllThreeEachTaskOnce() async throws {
        try await withTemporaryDirectory { directory in
            try await Self.withDaemons(3, database: "three_daemons", in: directory) { daemons, sockets in
                try await withDeadline(.seconds(90)) {
                    let total = 1_000
                    let payload = Array(#"{"delay_ms": 5}"#.utf8)
                    let batchID = try await withClient(sockets[0]) { client in
                        try await client.enqueueBatch(ownerID: "fleet", agent: "echo",
                                                      tasks: (0..<total).map { TaskSpec(customID: "t\($0)", payload: payload) }).id
                    }
                    // Seen ending from another daemon than the one it was enqueued on.
                    let ended = try await withClient(sockets[2]) { client in try await Self.waitForEnd(of: batchID, on: client) }
                    #expect(ended.status == .completed && ended.counts.completed == UInt32(total))

                    let results = try await Self.results(of: batchID, socket: sockets[1])
                    #expect(results.count == total && Set(results.map(\.customID)).count == total)
                    #expect(results.allSatisfy { $0.status == .completed && $0.attempt == 1 && $0.result == payload })

                    // Every daemon ran a share, and nothing ran anywhere else.
                    let shares = try await Self.tasksRun(in: batchID, database: "three_daemons")
                    #expect(Set(shares.keys) == Set(daemons.map(\.pid)), "shares by pid: \(shares), daemons \(daemons.map(\.pid))")
                    #expect(shares.values.reduce(0, +) == total)

                    // The counters equal a recount, and the end was announced once.
                    let database = "three_daemons"
                    #expect(try await Self.count("SELECT count(*) FROM tasks WHERE batch_id = \(batchID) AND state = 'completed'",
                                                 database: database) == total)
                    #expect(try await Self.count("SELECT completed FROM batches WHERE id = \(batchID)", database: database) == total)
                    #expect(try await Self.count("SELECT count(*) FROM events WHERE batch_id = \(batchID) AND kind = 'batch_completed'",
                                                 database: database) == 1)
                    #expect(try await Self.count("SELECT count(*) FROM events WHERE batch_id = \(batchID) AND kind = 'task_completed'",
                                                 database: database) == total)
                    for daemon in daemons { #expect(daemon.isRunning, "\(daemon.output)") }
                }
            }
        }
    }

    @Test func theTasksOfADaemonKilledMidBatchAreFinishedByTheOthers() async throws {
        try await withTemporaryDirectory { directory in
            let database = "killed_daemon"
            try await Self.withDaemons(3, database: database, in: directory, environment: ["FANOUT_POSTGRES_LEASE_MS": "5000"]) {
                daemons, sockets in
                try await withDeadline(.seconds(90)) {
                    // About 3 s of work for three daemons running four at a time.
                    let total = 2_000
                    let payload = Array(#"{"delay_ms": 20}"#.utf8)
                    let batchID = try await withClient(sockets[0]) { client in
                        try await client.enqueueBatch(ownerID: "fleet", agent: "echo",
                                                      tasks: (0..<total).map { TaskSpec(customID: "t\($0)", payload: payload) }).id
                    }
                    // The second daemon dies without a word once it holds work and has run some.
                    let victim = daemons[1]
                    while try await Self.count("""
                        SELECT count(*) FROM tasks WHERE batch_id = \(batchID) AND state = 'completed' AND claimed_by LIKE '%/\(victim.pid)/%'
                        """, database: database) < 5 {
                        let pending = try await Self.count(
                            "SELECT count(*) FROM tasks WHERE batch_id = \(batchID) AND state = 'pending'", database: database)
                        // Not a hang if the others ran it all first: a failure that says so.
                        try #require(pending > 100, "the batch was nearly done before the second daemon had run 5 of its tasks")
                        try await Task.sleep(for: .milliseconds(20))
                    }
                    victim.kill()
                    let held = try await Self.count("""
                        SELECT count(*) FROM tasks WHERE batch_id = \(batchID) AND lease_expires_at IS NOT NULL
                            AND claimed_by LIKE '%/\(victim.pid)/%'
                        """, database: database)
                    #expect(held > 0, "the killed daemon held no task: nothing was left to reclaim")

                    let ended = try await withClient(sockets[0]) { client in try await Self.waitForEnd(of: batchID, on: client) }
                    #expect(ended.status == .completed && ended.counts.completed == UInt32(total), "\(ended.counts)")
                    let results = try await Self.results(of: batchID, socket: sockets[2])
                    #expect(results.count == total && Set(results.map(\.customID)).count == total)
                    #expect(results.allSatisfy { $0.status == .completed })
                    // The attempts it was running count; nothing else ran twice.
                    let crashed = try await Self.count("SELECT count(*) FROM tasks WHERE batch_id = \(batchID) AND crashes > 0",
                                                       database: database)
                    // It may have been between two claims, running nothing, when it died.
                    #expect(crashed <= 4, "\(crashed) tasks counted a crash; the killed daemon ran at most 4 at once")
                    #expect(results.filter { $0.attempt > 1 }.count == crashed)
                    #expect(try await Self.count("SELECT count(*) FROM events WHERE batch_id = \(batchID) AND kind = 'batch_completed'",
                                                 database: database) == 1)
                    #expect(daemons[0].isRunning && daemons[2].isRunning)
                }
            }
        }
    }

    @Test func aCancelSentToOneDaemonStopsTasksRunningOnAnother() async throws {
        try await withTemporaryDirectory { directory in
            let database = "cancel_across"
            try await Self.withDaemons(2, database: database, in: directory) { daemons, sockets in
                try await withDeadline(.seconds(60)) {
                    let slow = Array(#"{"delay_ms": 600000}"#.utf8)
                    // Enqueued on the first daemon, either of which may claim it; running before the batch comes,
                    // which would otherwise fill the slots of the daemon that claimed it.
                    let single = try await withClient(sockets[0]) { client in
                        try await client.enqueueTask(ownerID: "fleet", task: TaskSpec(customID: "one", agent: "echo", payload: slow)).id
                    }
                    var holder = -1
                    while holder < 0 {
                        try await Task.sleep(for: .milliseconds(20))
                        holder = try await Self.count("""
                            SELECT split_part(claimed_by, '/', 2) FROM tasks WHERE id = \(single) AND state = 'running'
                            """, database: database)
                    }
                    let batch = try await withClient(sockets[0]) { client in
                        try await client.enqueueBatch(ownerID: "fleet", agent: "echo",
                                                      tasks: (0..<6).map { TaskSpec(customID: "b\($0)", payload: slow) }).id
                    }
                    while try await Self.count("SELECT count(*) FROM tasks WHERE batch_id = \(batch) AND state = 'running'",
                                               database: database) == 0 {
                        try await Task.sleep(for: .milliseconds(20))
                    }
                    // The cancels go to the daemon that does not run the single task.
                    let elsewhere = try #require(daemons.firstIndex { $0.pid != pid_t(holder) })
                    try await withClient(sockets[elsewhere]) { client in
                        let cancelled = try await client.cancelTask(single)
                        #expect(cancelled.status == .cancelled, "the task is \(cancelled.status)")
                        let closed = try await client.cancelBatch(batch)
                        #expect(closed.status == .cancelled && closed.counts.cancelled == 6, "\(closed.status) \(closed.counts)")
                    }
                    // Nothing runs any more, on either daemon.
                    #expect(try await Self.count("SELECT count(*) FROM tasks WHERE state NOT IN ('cancelled')", database: database) == 0)
                    #expect(daemons.allSatisfy { $0.isRunning })
                }
            }
        }
    }

    @Test func aSubscriberOnOneDaemonSeesEveryDaemonsEventsInSequenceOrder() async throws {
        try await withTemporaryDirectory { directory in
            let database = "events_across"
            try await Self.withDaemons(2, database: database, in: directory) { daemons, sockets in
                try await withDeadline(.seconds(60)) {
                    let total = 1_000
                    let payload = Array(#"{"delay_ms": 5}"#.utf8)
                    let batchID = try await withClient(sockets[0]) { client in
                        try await client.enqueueBatch(ownerID: "fleet", agent: "echo",
                                                      tasks: (0..<total).map { TaskSpec(customID: "t\($0)", payload: payload) }).id
                    }
                    // Followed through the second daemon, from the start of the log to the end of the batch.
                    let seen = try await withClient(sockets[1]) { client in try await events(of: batchID, owner: "fleet", on: client) }
                    #expect(seen.last?.type == .batchCompleted)
                    #expect(seen.filter { $0.type == .batchCompleted }.count == 1)
                    // Gap-free and in order: the log holds this batch's events only.
                    #expect(seen.map(\.sequence) == Array(1...UInt64(seen.count)), "sequences out of order or with gaps")
                    let completed = seen.filter { $0.type == .taskCompleted }.map(\.taskID)
                    #expect(completed.count == total && Set(completed).count == total)
                    let logged = try await Self.count("SELECT count(*) FROM events WHERE batch_id = \(batchID)", database: database)
                    #expect(seen.count == logged)
                    // Both daemons ran tasks, so the subscriber saw the other daemon's events.
                    let shares = try await Self.tasksRun(in: batchID, database: database)
                    #expect(Set(shares.keys) == Set(daemons.map(\.pid)), "shares by pid: \(shares)")
                }
            }
        }
    }

    @Test func aRequestsPerMinuteLimitHoldsForAllDaemonsTogether() async throws {
        try await withTemporaryDirectory { directory in
            let database = "shared_rate_limit"
            let config = directory + "/fanout.json"
            try #"{"agents": [{"name": "echo", "runner": "echo", "concurrency": 4, "requests_per_minute": 600}]}"#
                .write(toFile: config, atomically: true, encoding: .utf8)
            try await Self.withDaemons(2, database: database, in: directory, arguments: ["--config", config]) { daemons, sockets in
                try await withDeadline(.seconds(60)) {
                    // An empty bucket: from here on, 10 requests a second for both daemons together.
                    _ = try await PostgresTestServer.current().psql("""
                        INSERT INTO rate_limits (agent, kind, level, updated_at)
                        VALUES ('echo', 'requests', 0, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                        """, database: database)
                    let total = 40
                    let batches = try await withThrowingTaskGroup(of: UInt64.self) { group in
                        // Half through each daemon, so both have work of their own from the start.
                        for socket in sockets {
                            group.addTask {
                                try await withClient(socket) { client in
                                    try await client.enqueueBatch(ownerID: "fleet", agent: "echo",
                                                                  tasks: (0..<total / 2).map { TaskSpec(customID: "t\($0)", payload: [1]) }).id
                                }
                            }
                        }
                        return try await group.reduce(into: []) { $0.append($1) }
                    }
                    for batch in batches {
                        let ended = try await withClient(sockets[0]) { client in try await Self.waitForEnd(of: batch, on: client) }
                        #expect(ended.status == .completed)
                    }
                    // 40 starts at 10 a second take about 4 s; two daemons each with the limit to itself
                    // would have started them all at once (a full bucket holds a minute's worth).
                    let span = try await Self.count("SELECT max(started_at) - min(started_at) FROM tasks", database: database)
                    #expect(span >= 3_300, "40 starts within \(span) ms: more than 10 a second")
                    let shares = try await Self.count("SELECT count(DISTINCT claimed_by) FROM tasks", database: database)
                    #expect(shares == 2, "both daemons ran tasks")
                    _ = daemons
                }
            }
        }
    }

    /// What an outside harness checks: batches enqueued through three daemons, one of them killed at
    /// a random moment (while enqueueing, claiming or running), and afterwards every accepted task
    /// has one result, the counters equal a recount, and a subscriber on a surviving daemon saw
    /// the owner's whole log in order, without a gap or a duplicate, one end per batch.
    @Test func aDaemonKilledAtARandomMomentLosesNothingAndTheLogStaysGapFree() async throws {
        let killAfterMs = Int.random(in: 0...1_200)
        try await withTemporaryDirectory { directory in
            let database = "random_kill"
            try await Self.withDaemons(3, database: database, in: directory, environment: ["FANOUT_POSTGRES_LEASE_MS": "1500"]) {
                daemons, sockets in
                try await withDeadline(.seconds(90), "the run with a kill after \(killAfterMs) ms") {
                    // About 2 s of work for the three daemons: the kill comes while it runs, or while it is enqueued.
                    let perBatch = 300
                    let payload = Array(#"{"delay_ms": 20}"#.utf8)
                    // Following the whole owner on a daemon that stays, from before the first enqueue.
                    let seen = Mutex<[Event]>([])
                    let subscriber = Task {
                        try await withClient(sockets[2]) { client in
                            for try await event in client.subscribe(ownerID: "fleet", since: 0) { seen.withLock { $0.append(event) } }
                        }
                    }
                    defer { subscriber.cancel() }
                    // One batch through each daemon; the second is killed meanwhile, and the batch sent to it
                    // may not have been accepted.
                    let accepted = await withTaskGroup(of: UInt64?.self) { group in
                        for socket in sockets {
                            group.addTask {
                                try? await withClient(socket) { client in
                                    try await client.enqueueBatch(ownerID: "fleet", agent: "echo", tasks: (0..<perBatch).map {
                                        TaskSpec(customID: "t\($0)", payload: payload)
                                    }).id
                                }
                            }
                        }
                        group.addTask {
                            try? await Task.sleep(for: .milliseconds(killAfterMs))
                            daemons[1].kill()
                            return nil
                        }
                        return await group.reduce(into: [UInt64]()) { if let id = $1 { $0.append(id) } }
                    }
                    #expect(accepted.count >= 2, "the surviving daemons accepted their batches (kill after \(killAfterMs) ms)")

                    for batch in accepted {
                        let ended = try await withClient(sockets[0]) { client in try await Self.waitForEnd(of: batch, on: client) }
                        #expect(ended.status == .completed && ended.counts.completed == UInt32(perBatch),
                                "batch \(batch): \(ended.status) \(ended.counts) (kill after \(killAfterMs) ms)")
                        let results = try await Self.results(of: batch, socket: sockets[2])
                        #expect(results.count == perBatch && Set(results.map(\.customID)).count == perBatch)
                        #expect(results.allSatisfy { $0.status == .completed && $0.result == payload })
                    }
                    // Every counter equals a recount of the batch's tasks.
                    #expect(try await Self.count("""
                        SELECT count(*) FROM batches b WHERE state <> 'staging' AND (
                            completed <> (SELECT count(*) FROM tasks t WHERE t.batch_id = b.id AND t.state = 'completed')
                            OR pending + running + waiting_children + retry_wait + failed + cancelled + expired
                               <> (SELECT count(*) FROM tasks t WHERE t.batch_id = b.id AND t.state <> 'completed'))
                        """, database: database) == 0, "kill after \(killAfterMs) ms")

                    // The subscriber has every batch's end, then the whole log up to it, in order.
                    let ends: Set<EventType> = [.batchCompleted, .batchFailed, .batchCancelled]
                    while seen.withLock({ events in Set(events.filter { ends.contains($0.type) }.map(\.batchID)) }).count < accepted.count {
                        try await Task.sleep(for: .milliseconds(20))
                    }
                    subscriber.cancel()
                    let log = seen.withLock { $0 }
                    let last = try #require(log.last?.sequence)
                    let stored = try await PostgresTestServer.current().psql(
                        "SELECT sequence FROM events WHERE owner_id = 'fleet' AND sequence <= \(last) ORDER BY sequence", database: database)
                    #expect(log.map(\.sequence) == stored.split(separator: "\n").compactMap { UInt64($0) },
                            "the subscriber's log is not the stored one (kill after \(killAfterMs) ms)")
                    for batch in accepted {
                        #expect(log.filter { $0.batchID == batch && ends.contains($0.type) }.count == 1)
                    }
                    #expect(daemons[0].isRunning && daemons[2].isRunning)
                }
            }
        }
    }
}
