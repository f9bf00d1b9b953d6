import CSQLite
import FanoutCore
import Foundation
import GRDB

/// The embedded store: one SQLite file in WAL mode through GRDB.
///
/// Writes go through GRDB's single writer connection, so they are serialized;
/// reads run concurrently on the pool's reader connections and see only
/// committed data.
public final class SQLiteStore: Store, StoreWriter {
    private let pool: DatabasePool
    private let checkpointer: WALCheckpointer?
    /// How often the log is copied back into the database file: often enough that it
    /// stays small, rarely enough that an idle daemon does next to nothing.
    static let checkpointInterval = Duration.milliseconds(100)

    static let walSizeLimitBytes = 64 << 20

    /// Turns SQLite's memory statistics off: a global mutex around every allocation, some 10 %
    /// of an enqueue. SQLite allows this only before its first use in the process, with no other
    /// thread using it: a program calls it first thing (fanoutd does), or not at all. Returns
    /// whether SQLite took it.
    @discardableResult
    public static func configureProcess() -> Bool {
        fanout_sqlite_disable_memory_statistics() == SQLITE_OK
    }

    public init(path: String, durability: Durability = .normal) throws {
        var configuration = Configuration()
        configuration.label = "fanout"
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = \(durability == .full ? "FULL" : "NORMAL")")
            // After a checkpoint the WAL file shrinks back to this, so a burst does not keep its
            // disk space for ever (and a disk freed after running full has room for the next checkpoint).
            try db.execute(sql: "PRAGMA journal_size_limit = \(Self.walSizeLimitBytes)")
        }
        // A second daemon on the same file waits briefly instead of failing at once.
        configuration.busyMode = .timeout(5)
        pool = try DatabasePool(path: path, configuration: configuration)
        try Migrations.migrator.migrate(pool)
        let synchronous = durability == .full ? "FULL" : "NORMAL"
        checkpointer = WALCheckpointer(path: path, synchronous: synchronous, interval: Self.checkpointInterval,
                                       restartAboveBytes: Self.walSizeLimitBytes / 4)
        if checkpointer != nil {
            // Checkpoints run beside the writer (WALCheckpointer), not inside its commits; the
            // writer's own remains as a backstop, at the size journal_size_limit trims the log to.
            try pool.writeWithoutTransaction {
                try $0.execute(sql: "PRAGMA wal_autocheckpoint = \(Self.walSizeLimitBytes / 4_096)")
            }
        }
    }

    /// Closes the store for good, at a clean stop: the checkpoint thread ends, the log is
    /// copied into the database and emptied (so the next start has nothing to replay), and
    /// every connection closes. Called by fanoutd once the scheduler's last commit is written.
    public func close() {
        checkpointer?.stop()
        try? pool.writeWithoutTransaction { try $0.checkpoint(.truncate) }
        try? pool.close()
    }

    deinit {
        checkpointer?.stop()
    }

    public var writer: any StoreWriter { self }

    // MARK: Errors

    /// A write; an error of the disk or the file (full, I/O, read-only, locked)
    /// becomes UNAVAILABLE with SQLite's words, so a caller knows to try again later.
    func write<T>(_ body: (Database) throws -> T) throws -> T {
        do {
            return try pool.write(body)
        } catch let error as DatabaseError where Self.unavailableCodes.contains(error.resultCode.primaryResultCode.rawValue) {
            throw Self.unavailable(error, doing: "written")
        }
    }

    func read<T>(_ body: (Database) throws -> T) throws -> T {
        do {
            return try pool.read(body)
        } catch let error as DatabaseError where Self.unavailableCodes.contains(error.resultCode.primaryResultCode.rawValue) {
            throw Self.unavailable(error, doing: "read")
        }
    }

    /// The same, awaited: the work runs on GRDB's writer queue, off the caller's thread.
    func write<T: Sendable>(_ body: @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await pool.write(body)
        } catch let error as DatabaseError where Self.unavailableCodes.contains(error.resultCode.primaryResultCode.rawValue) {
            throw Self.unavailable(error, doing: "written")
        }
    }

    func read<T: Sendable>(_ body: @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await pool.read(body)
        } catch let error as DatabaseError where Self.unavailableCodes.contains(error.resultCode.primaryResultCode.rawValue) {
            throw Self.unavailable(error, doing: "read")
        }
    }

    private static func unavailable(_ error: DatabaseError, doing verb: String) -> FanoutError {
        .unavailable("the database cannot be \(verb): \(error.message ?? "\(error.resultCode)") (\(error.resultCode))")
    }

    private static let unavailableCodes: Set<Int32> = Set([ResultCode.SQLITE_FULL, .SQLITE_IOERR, .SQLITE_READONLY, .SQLITE_BUSY,
                                                           .SQLITE_LOCKED, .SQLITE_CANTOPEN, .SQLITE_PROTOCOL, .SQLITE_NOMEM].map(\.rawValue))

    // MARK: Writes

    public func insertBatch(_ batch: NewBatch, now: Milliseconds) throws -> InsertedBatch {
        try write { db in
            let batchID = try Self.insertBatchRow(batch, state: "pending", taskCount: batch.tasks.count, now: now, in: db)
            let taskIDs = try Self.insertTasks(batch.tasks, batchID: batchID, parentTaskID: batch.parentTaskID, now: now, in: db)
            return InsertedBatch(batch, id: batchID, taskIDs: taskIDs, now: now)
        }
    }

    public func createStagedBatch(_ batch: NewBatch, now: Milliseconds) async throws -> BatchID {
        try await write { db in try Self.insertBatchRow(batch, state: "staging", taskCount: 0, now: now, in: db) }
    }

    public func appendStagedTasks(_ tasks: [NewTask], to batch: BatchID, parentTaskID: TaskID?, now: Milliseconds) async throws {
        try await write { db in
            _ = try Self.insertTasks(tasks, batchID: batch, parentTaskID: parentTaskID, now: now, in: db, keepIDs: false)
            try db.execute(sql: "UPDATE batches SET total = total + ?, pending = pending + ? WHERE id = ? AND state = 'staging'",
                           arguments: [tasks.count, tasks.count, batch])
        }
    }

    public func publishStagedBatch(_ batch: BatchID) async throws -> BatchRecord {
        try await write { db in
            try db.execute(sql: "UPDATE batches SET state = 'pending' WHERE id = ? AND state = 'staging'", arguments: [batch])
            guard db.changesCount == 1,
                  let record = try Row.fetchOne(db, sql: "SELECT * FROM batches WHERE id = ?", arguments: [batch]).map(Self.batchRecord)
            else { throw FanoutError.notFound("staged batch \(batch) does not exist") }
            return record
        }
    }

    public func discardStagedBatch(_ batch: BatchID) async throws {
        try await write { db in
            try db.execute(sql: "DELETE FROM tasks WHERE batch_id = ? AND EXISTS (SELECT 1 FROM batches WHERE id = ? AND state = 'staging')",
                           arguments: [batch, batch])
            try db.execute(sql: "DELETE FROM gateway_rejects WHERE batch_id = ? AND EXISTS (SELECT 1 FROM batches WHERE id = ? AND state = 'staging')",
                           arguments: [batch, batch])
            try db.execute(sql: "DELETE FROM batches WHERE id = ? AND state = 'staging'", arguments: [batch])
        }
    }

    private static func insertBatchRow(_ batch: NewBatch, state: String, taskCount: Int, now: Milliseconds, in db: Database) throws -> BatchID {
        let metadata = batch.metadata.isEmpty ? nil : try String(decoding: JSONEncoder().encode(batch.metadata), as: UTF8.self)
        try db.execute(
            sql: """
                INSERT INTO batches (owner_id, agent, state, total, pending, max_turns, metadata,
                                     parent_task_id, parent_attempt, created_at, deadline_at, creator_uid)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
            arguments: [batch.ownerID, batch.agent, state, taskCount, taskCount, batch.maxTurns, metadata,
                        batch.parentTaskID, batch.parentAttempt, now, batch.deadlineAt, Int64(batch.creatorUID)])
        return db.lastInsertedRowID
    }

    @discardableResult
    private static func insertTasks(_ tasks: [NewTask], batchID: BatchID, parentTaskID: TaskID?, now: Milliseconds,
                                    in db: Database, keepIDs: Bool = true) throws -> [TaskID] {
        let insert = try db.cachedStatement(sql: """
            INSERT INTO tasks (batch_id, custom_id, agent, state, priority, max_attempts, timeout_ms,
                               max_turns, payload, parent_task_id, created_at, url)
            VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?)
            """)
        let bound = BoundStatement(insert)
        var taskIDs: [TaskID] = []
        if keepIDs { taskIDs.reserveCapacity(tasks.count) }
        bound.bind(batchID, at: 1)
        bound.bind(parentTaskID, at: 9)
        bound.bind(now, at: 10)
        for task in tasks {
            bound.bind(task.customID, at: 2)
            bound.bind(task.agent, at: 3)
            bound.bind(task.priority, at: 4)
            bound.bind(task.maxAttempts, at: 5)
            bound.bind(task.timeoutMs, at: 6)
            bound.bind(task.maxTurns, at: 7)
            bound.bind(task.payload, at: 8)
            bound.bind(task.url, at: 11)
            try bound.execute()
            if keepIDs { taskIDs.append(db.lastInsertedRowID) }
        }
        return taskIDs
    }

    public func commit(_ changes: ChangeSet) throws -> [EventRecord] {
        guard !changes.isEmpty else { return [] }
        return try write { db in
            // A task that started and finished within one group commit (most short
            // tasks) gets one UPDATE instead of two.
            var planned: [TaskChange?] = changes.tasks
            var openStarts: [TaskID: (index: Int, attempt: Int, at: Milliseconds)] = [:]
            var startsFolded: [Int: (attempt: Int, at: Milliseconds)] = [:]
            for (index, change) in changes.tasks.enumerated() {
                switch change {
                case let .started(id, attempt, at):
                    openStarts[id] = (index, attempt, at)
                case let .finished(id, _, _, _, _, _, _):
                    if let start = openStarts.removeValue(forKey: id) {
                        planned[start.index] = nil
                        startsFolded[index] = (start.attempt, start.at)
                    }
                case let .turns(id, _), let .requeued(id, _, _), let .released(id), let .waiting(id), let .resumed(id):
                    openStarts[id] = nil
                }
            }
            for (index, change) in planned.enumerated() {
                guard let change else { continue }
                if case let .finished(id, state, result, failure, turns, at, details) = change {
                    try Self.finish(id, state: state, result: result, failure: failure, turns: turns, at: at, details: details,
                                    start: startsFolded[index], in: db)
                } else {
                    try apply(change, in: db)
                }
            }
            for snapshot in changes.batches.values {
                try db.cachedStatement(sql: """
                    UPDATE batches SET state = ?, pending = ?, running = ?, waiting_children = ?, retry_wait = ?,
                        completed = ?, failed = ?, cancelled = ?, expired = ?, progress_units = ?,
                        started_at = ?, finished_at = ?, closing = ?,
                        prompt_tokens = ?, completion_tokens = ?, total_tokens = ?
                    WHERE id = ?
                    """).execute(arguments: [
                        snapshot.state.rawValue, snapshot.counters.pending, snapshot.counters.running,
                        snapshot.counters.waitingChildren, snapshot.counters.retryWait, snapshot.counters.completed,
                        snapshot.counters.failed, snapshot.counters.cancelled, snapshot.counters.expired,
                        snapshot.progressUnits, snapshot.startedAt, snapshot.finishedAt, snapshot.closing?.rawValue,
                        snapshot.usage.promptTokens, snapshot.usage.completionTokens, snapshot.usage.totalTokens, snapshot.id,
                    ])
            }
            var stored: [EventRecord] = []
            stored.reserveCapacity(changes.events.count)
            let insertEvent = try db.cachedStatement(sql: """
                INSERT INTO events (kind, timestamp, owner_id, batch_id, task_id, custom_id, parent_task_id, progress,
                                    counters, attempt, turn, retry_delay_ms, error_message, error_code, error_retryable,
                                    creator_uid)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """)
            let bound = BoundStatement(insertEvent)
            for var event in changes.events {
                bound.bind(event.kind.rawValue, at: 1)
                bound.bind(event.timestamp, at: 2)
                bound.bind(event.ownerID, at: 3)
                bound.bind(event.batchID, at: 4)
                bound.bind(event.taskID, at: 5)
                bound.bind(event.customID, at: 6)
                bound.bind(event.parentTaskID, at: 7)
                bound.bind(event.progress, at: 8)
                bound.bind(try event.counters.map { try $0.json() }, at: 9)
                bound.bind(event.attempt, at: 10)
                bound.bind(event.turn, at: 11)
                bound.bind(event.retryDelayMs, at: 12)
                bound.bind(event.failure, at: 13)
                bound.bind(event.creatorUID.map { Int64($0) }, at: 16)
                try bound.execute()
                event.sequence = db.lastInsertedRowID
                stored.append(event)
            }
            return stored
        }
    }

    private func apply(_ change: TaskChange, in db: Database) throws {
        switch change {
        case let .started(id, attempt, at):
            let update = BoundStatement(try db.cachedStatement(sql: "UPDATE tasks SET state = 'running', attempt = ?, started_at = ? WHERE id = ?"))
            update.bind(attempt, at: 1)
            update.bind(at, at: 2)
            update.bind(id, at: 3)
            try update.execute()
        case let .turns(id, turns):
            try db.cachedStatement(sql: "UPDATE tasks SET turns_completed = ? WHERE id = ?")
                .execute(arguments: [turns, id])
        case let .waiting(id):
            try db.cachedStatement(sql: "UPDATE tasks SET state = 'waiting_children' WHERE id = ?").execute(arguments: [id])
        case let .resumed(id):
            try db.cachedStatement(sql: "UPDATE tasks SET state = 'running' WHERE id = ?").execute(arguments: [id])
        case let .released(id):
            // A graceful stop is not the task's fault: the attempt it was on is given back.
            try db.cachedStatement(sql: "UPDATE tasks SET state = 'pending', attempt = max(attempt - 1, 0) WHERE id = ?")
                .execute(arguments: [id])
        case let .requeued(id, state, failure):
            try db.cachedStatement(sql: """
                UPDATE tasks SET state = ?, error_message = ?, error_code = ?, error_retryable = ? WHERE id = ?
                """).execute(arguments: [state.rawValue, failure?.message, failure?.code, failure?.retryable, id])
        case let .finished(id, state, result, failure, turns, at, details):
            try Self.finish(id, state: state, result: result, failure: failure, turns: turns, at: at, details: details,
                            start: nil, in: db)
        }
    }

    /// A task's outcome; with `start`, also the start folded into it (a task that started
    /// and finished within one group commit gets one UPDATE instead of two).
    private static func finish(_ id: TaskID, state: TaskState, result: [UInt8]?, failure: TaskFailure?, turns: Int,
                               at: Milliseconds, details: ResponseDetails, start: (attempt: Int, at: Milliseconds)?,
                               in db: Database) throws {
        let update = BoundStatement(try db.cachedStatement(sql: """
            UPDATE tasks SET state = ?, attempt = coalesce(?, attempt), started_at = coalesce(?, started_at), result = ?,
                error_message = ?, error_code = ?, error_retryable = ?, turns_completed = ?, finished_at = ?,
                status_code = ?, request_id = ?, prompt_tokens = ?, completion_tokens = ?, total_tokens = ?
            WHERE id = ?
            """))
        update.bind(state.rawValue, at: 1)
        update.bind(start?.attempt, at: 2)
        update.bind(start?.at, at: 3)
        update.bind(result, at: 4)
        update.bind(failure, at: 5)
        update.bind(turns, at: 8)
        update.bind(at, at: 9)
        update.bind(details, at: 10)
        update.bind(id, at: 15)
        try update.execute()
    }

    public func recover(now: Milliseconds) throws -> RecoveredState {
        try write { db in
            // A batch still being received when the daemon stopped was never accepted: it goes.
            try db.execute(sql: "DELETE FROM tasks WHERE batch_id IN (SELECT id FROM batches WHERE state = 'staging')")
            try db.execute(sql: "DELETE FROM gateway_rejects WHERE batch_id IN (SELECT id FROM batches WHERE state = 'staging')")
            try db.execute(sql: "DELETE FROM file_chunks WHERE file_id IN (SELECT id FROM files WHERE state = 'uploading')")
            try db.execute(sql: "DELETE FROM files WHERE state = 'uploading'")
            try db.execute(sql: "DELETE FROM batches WHERE state = 'staging'")
            // A task found running was cut short by a crash (a graceful stop releases its tasks first):
            // that attempt counts, so a task that kills the daemon cannot run for ever. With attempts
            // left it runs again; without, it fails saying so. Only active batches can hold such tasks;
            // looking there keeps start-up independent of how much finished history the database holds.
            let active = "batch_id IN (SELECT id FROM batches WHERE state IN ('pending', 'processing'))"
            try db.execute(sql: "UPDATE tasks SET crashes = crashes + 1 WHERE \(active) AND state = 'running'")
            let exhausted = try Row.fetchAll(db, sql: """
                SELECT t.id, t.batch_id, t.custom_id, t.attempt, t.max_attempts, t.crashes, t.parent_task_id,
                       b.owner_id, b.creator_uid
                FROM tasks t JOIN batches b ON b.id = t.batch_id
                WHERE t.\(active) AND t.state = 'running' AND t.attempt >= t.max_attempts
                """)
            var interrupted: [EventRecord] = []
            for row in exhausted {
                let crashes: Int = row["crashes"], maxAttempts: Int = row["max_attempts"]
                let failure = TaskFailure(
                    message: "fanoutd stopped unexpectedly while this task was running, \(crashes) time(s); "
                        + "its \(maxAttempts) attempt(s) are used up (max_attempts)",
                    code: "interrupted", retryable: false)
                try db.execute(sql: """
                    UPDATE tasks SET state = 'failed', error_message = ?, error_code = ?, error_retryable = 0, finished_at = ?
                    WHERE id = ?
                    """, arguments: [failure.message, failure.code, now, row["id"] as Int64])
                let creator: Int64 = row["creator_uid"]
                interrupted.append(EventRecord(
                    kind: .taskFailed, timestamp: now, ownerID: row["owner_id"], batchID: row["batch_id"], taskID: row["id"],
                    customID: row["custom_id"], parentTaskID: row["parent_task_id"], attempt: row["attempt"], failure: failure,
                    creatorUID: UInt32(truncatingIfNeeded: creator)))
            }
            try db.execute(sql: "UPDATE tasks SET state = 'pending' WHERE \(active) AND state IN ('running', 'retry_wait')")
            let requeued = db.changesCount
            // Counters and progress are recomputed from the task rows, the source of truth.
            try db.execute(sql: """
                UPDATE batches SET
                    pending = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id AND t.state = 'pending'),
                    running = 0, retry_wait = 0,
                    waiting_children = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id AND t.state = 'waiting_children'),
                    completed = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id AND t.state = 'completed'),
                    failed = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id AND t.state = 'failed'),
                    cancelled = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id AND t.state = 'cancelled'),
                    expired = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id AND t.state = 'expired'),
                    progress_units = (SELECT coalesce(sum(CASE
                        WHEN t.state IN ('completed', 'failed', 'cancelled', 'expired') THEN max(batches.max_turns, 1)
                        WHEN batches.max_turns > 0 THEN min(t.turns_completed, batches.max_turns)
                        ELSE 0 END), 0) FROM tasks t WHERE t.batch_id = batches.id)
                WHERE state IN ('pending', 'processing')
                """)
            let batches = try Row.fetchAll(db, sql: "SELECT * FROM batches WHERE state IN ('pending', 'processing') ORDER BY id")
                .map(Self.batchRecord)
            // Parents waiting for their children stay waiting: the scheduler resumes them when the children end.
            let waiting = try Row.fetchAll(db, sql: """
                SELECT t.id, t.batch_id, t.custom_id, t.agent, t.priority, t.attempt, t.max_attempts, t.timeout_ms,
                       t.turns_completed, t.max_turns, t.parent_task_id, t.url, b.owner_id
                FROM tasks t JOIN batches b ON b.id = t.batch_id
                WHERE b.state IN ('pending', 'processing') AND t.state = 'waiting_children' ORDER BY t.id
                """).map { row in
                var task = RunnableTask(
                    id: row["id"], batchID: row["batch_id"], ownerID: row["owner_id"], customID: row["custom_id"],
                    agent: row["agent"], priority: row["priority"], attempt: row["attempt"], maxAttempts: row["max_attempts"],
                    timeoutMs: row["timeout_ms"], turnsCompleted: row["turns_completed"], maxTurns: row["max_turns"],
                    parentTaskID: row["parent_task_id"])
                task.url = row["url"]
                return task
            }
            var pendingAgents: [BatchID: [String]] = [:]
            for row in try Row.fetchAll(db, sql: """
                SELECT DISTINCT t.batch_id, t.agent FROM tasks t JOIN batches b ON b.id = t.batch_id
                WHERE b.state IN ('pending', 'processing') AND t.state = 'pending'
                """) {
                pendingAgents[row["batch_id"], default: []].append(row["agent"])
            }
            return RecoveredState(activeBatches: batches, pendingAgents: pendingAgents, requeued: requeued,
                                  interruptedFailures: interrupted, waitingTasks: waiting)
        }
    }

    // MARK: Reads

    public func batch(_ id: BatchID) async throws -> BatchRecord? {
        try await read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM batches WHERE id = ? AND state != 'staging'", arguments: [id]).map(Self.batchRecord)
        }
    }

    public func batches(ownerID: String?, creatorUID: UInt32?, parentBatchID: BatchID?, limit: Int,
                        beforeID: BatchID?) async throws -> [BatchRecord] {
        try await read { db in
            var conditions = ["state != 'staging'"]
            var arguments: StatementArguments = []
            if let parentBatchID {
                conditions.append("parent_task_id IN (SELECT id FROM tasks WHERE batch_id = ?)")
                arguments += [parentBatchID]
            }
            if let ownerID {
                conditions.append("owner_id = ?")
                arguments += [ownerID]
            }
            if let creatorUID {
                conditions.append("creator_uid = ?")
                arguments += [Int64(creatorUID)]
            }
            if let beforeID {
                conditions.append("id < ?")
                arguments += [beforeID]
            }
            let whereClause = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
            arguments += [limit]
            return try Row.fetchAll(db, sql: "SELECT * FROM batches \(whereClause) ORDER BY id DESC LIMIT ?", arguments: arguments)
                .map(Self.batchRecord)
        }
    }

    public func childBatches(of parent: TaskID, attempt: Int) async throws -> [BatchRecord] {
        try await read { db in
            try Row.fetchAll(db, sql: """
                SELECT * FROM batches WHERE parent_task_id = ? AND parent_attempt = ? AND state != 'staging' ORDER BY id
                """, arguments: [parent, attempt]).map(Self.batchRecord)
        }
    }

    public func task(_ id: TaskID, includePayload: Bool) async throws -> TaskRecord? {

        try await read { db in
            try Row.fetchOne(db, sql: """
                SELECT t.*, b.owner_id FROM tasks t JOIN batches b ON b.id = t.batch_id WHERE t.id = ?
                """, arguments: [id]).map { Self.taskRecord($0, includePayload: includePayload) }
        }
    }

    public func payload(of task: TaskID) async throws -> [UInt8] {
        try await read { db in
            guard let data = try Data.fetchOne(db, sql: "SELECT payload FROM tasks WHERE id = ?", arguments: [task]) else {
                throw FanoutError.notFound("task \(task) does not exist")
            }
            return [UInt8](data)
        }
    }

    public func pendingTasks(batchID: BatchID, agent: String, after cursor: QueueCursor?, limit: Int,
                             inlinePayloadBytes: Int) async throws -> [RunnableTask] {
        try await read { db in
            var sql = """
                SELECT t.id, t.custom_id, t.priority, t.attempt, t.max_attempts, t.timeout_ms, t.turns_completed,
                       t.max_turns, t.parent_task_id, t.url,
                       CASE WHEN length(t.payload) <= ? THEN t.payload END AS inline_payload
                FROM tasks t INDEXED BY tasks_pending
                WHERE t.batch_id = ? AND t.agent = ? AND t.state = 'pending'
                """
            var arguments: StatementArguments = [inlinePayloadBytes, batchID, agent]
            if let cursor {
                sql += " AND (t.priority < ? OR (t.priority = ? AND t.id > ?))"
                arguments += [cursor.priority, cursor.priority, cursor.id]
            }
            sql += " ORDER BY t.priority DESC, t.id LIMIT ?"
            arguments += [limit]
            let owner = try String.fetchOne(db, sql: "SELECT owner_id FROM batches WHERE id = ?", arguments: [batchID]) ?? ""
            // Columns by position: a lookup by name lowercases the name, per row and column.
            var tasks: [RunnableTask] = []
            let rows = try Row.fetchCursor(db, sql: sql, arguments: arguments)
            while let row = try rows.next() {
                var task = RunnableTask(
                    id: row[0], batchID: batchID, ownerID: owner, customID: row[1], agent: agent,
                    priority: row[2], attempt: row[3], maxAttempts: row[4], timeoutMs: row[5], turnsCompleted: row[6],
                    maxTurns: row[7], parentTaskID: row[8])
                task.url = row[9]
                task.payload = try row.withUnsafeData(atIndex: 10) { data in data.map { [UInt8]($0) } }
                tasks.append(task)
            }
            return tasks
        }
    }

    public func reopenTasks(batchID: BatchID, states: Set<TaskState>, now: Milliseconds) async throws -> ReopenedBatch {
        try await write { db in
            guard let batch = try Row.fetchOne(db, sql: "SELECT * FROM batches WHERE id = ?", arguments: [batchID]).map(Self.batchRecord) else {
                throw FanoutError.notFound("batch \(batchID) does not exist")
            }
            guard batch.state.isTerminal else {
                throw FanoutError.failedPrecondition("batch \(batchID) is still \(batch.state.rawValue); retry its failed tasks once it has finished")
            }
            let list = states.map(\.rawValue).sorted()
            try db.execute(
                sql: """
                    UPDATE tasks SET state = 'pending', attempt = 0, turns_completed = 0, result = NULL,
                        error_message = NULL, error_code = NULL, error_retryable = NULL, started_at = NULL, finished_at = NULL,
                        status_code = NULL, request_id = NULL, prompt_tokens = NULL, completion_tokens = NULL, total_tokens = NULL
                    WHERE batch_id = ? AND state IN (\(list.map { _ in "?" }.joined(separator: ",")))
                    """,
                arguments: StatementArguments([batchID] as [any DatabaseValueConvertible] + list))
            let reopened = db.changesCount
            if reopened > 0 {
                try db.execute(sql: """
                    UPDATE batches SET state = 'processing', finished_at = NULL, deadline_at = NULL, closing = NULL,
                        pending = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id AND t.state = 'pending'),
                        completed = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id AND t.state = 'completed'),
                        failed = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id AND t.state = 'failed'),
                        cancelled = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id AND t.state = 'cancelled'),
                        expired = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id AND t.state = 'expired'),
                        running = 0, retry_wait = 0, waiting_children = 0,
                        prompt_tokens = (SELECT coalesce(sum(t.prompt_tokens), 0) FROM tasks t WHERE t.batch_id = batches.id),
                        completion_tokens = (SELECT coalesce(sum(t.completion_tokens), 0) FROM tasks t WHERE t.batch_id = batches.id),
                        total_tokens = (SELECT coalesce(sum(t.total_tokens), 0) FROM tasks t WHERE t.batch_id = batches.id),
                        progress_units = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id
                            AND t.state IN ('completed', 'failed', 'cancelled', 'expired')) * max(batches.max_turns, 1)
                    WHERE id = ?
                    """, arguments: [batchID])
            }
            let updated = try Row.fetchOne(db, sql: "SELECT * FROM batches WHERE id = ?", arguments: [batchID]).map(Self.batchRecord)!
            let agents = reopened == 0 ? [] : try String.fetchAll(db, sql: """
                SELECT DISTINCT agent FROM tasks INDEXED BY tasks_pending WHERE batch_id = ? AND state = 'pending'
                """, arguments: [batchID])
            return ReopenedBatch(batch: updated, reopened: reopened, agents: agents)
        }
    }

    public func events(after: EventSequence, upTo: EventSequence?, filter: EventFilter, limit: Int) async throws -> [EventRecord] {
        try await read { db in try Self.fetchEvents(db, after: after, upTo: upTo, filter: filter, limit: limit) }
    }

    public func eventPage(after: EventSequence, upTo: EventSequence?, filter: EventFilter, limit: Int) async throws -> EventPage {
        // One read transaction: the page and the log's oldest sequence come from the same snapshot.
        try await read { db in
            let events = try Self.fetchEvents(db, after: after, upTo: upTo, filter: filter, limit: limit)
            let first = try Self.firstSequence(db) ?? Self.lastSequence(db) + 1
            return EventPage(events: events, firstAvailable: first)
        }
    }

    private static func fetchEvents(_ db: Database, after: EventSequence, upTo: EventSequence?, filter: EventFilter,
                                    limit: Int) throws -> [EventRecord] {
        var sql = "SELECT \(eventColumns) FROM events WHERE sequence > ?"
        var arguments: StatementArguments = [after]
        if let upTo {
            sql += " AND sequence <= ?"
            arguments += [upTo]
        }
        if !filter.ownerID.isEmpty {
            sql += " AND owner_id = ?"
            arguments += [filter.ownerID]
        }
        if let batchID = filter.batchID {
            sql += " AND batch_id = ?"
            arguments += [batchID]
        }
        if let creatorUID = filter.creatorUID {
            sql += " AND creator_uid = ?"
            arguments += [Int64(creatorUID)]
        }
        if !filter.kinds.isEmpty {
            sql += " AND kind IN (\(filter.kinds.map { _ in "?" }.joined(separator: ",")))"
            arguments += StatementArguments(filter.kinds.map(\.rawValue))
        }
        sql += " ORDER BY sequence LIMIT ?"
        arguments += [limit]
        return try Row.fetchAll(db, sql: sql, arguments: arguments).map(Self.eventRecord)
    }

    public func lastEventSequence() throws -> EventSequence {
        try read { db in try Self.lastSequence(db) }
    }

    public func lastEventSequence() async throws -> EventSequence {
        try await read { db in try Self.lastSequence(db) }
    }

    public func firstEventSequence() async throws -> EventSequence? {
        try await read { db in try Self.firstSequence(db) }
    }

    /// `min`/`max` of the integer primary key are a single b-tree seek each.
    private static func firstSequence(_ db: Database) throws -> EventSequence? {
        try EventSequence.fetchOne(db, sql: "SELECT min(sequence) FROM events")
    }

    private static func lastSequence(_ db: Database) throws -> EventSequence {
        let stored = try EventSequence.fetchOne(db, sql: "SELECT max(sequence) FROM events") ?? 0
        // AUTOINCREMENT remembers the highest sequence ever assigned, also after retention deleted it (even
        // every event, on a daemon idle for longer than the age limit), so numbers are never reused.
        let assigned = try EventSequence.fetchOne(db, sql: "SELECT seq FROM sqlite_sequence WHERE name = 'events'") ?? 0
        return max(stored, assigned)
    }

    public func trimEvents(keepingLast: Int?, olderThan: Milliseconds?, limit: Int) throws -> Int {
        guard limit > 0, keepingLast != nil || olderThan != nil else { return 0 }
        return try write { db in
            guard let first = try Self.firstSequence(db),
                  let last = try EventSequence.fetchOne(db, sql: "SELECT max(sequence) FROM events")
            else { return 0 }
            // This step removes nothing past the oldest `limit` sequence numbers.
            let (end, overflow) = first.addingReportingOverflow(EventSequence(limit) - 1)
            let stepEnd = overflow ? last : min(last, end)
            var through = first - 1
            if let keepingLast {
                // Sequence numbers are assigned without holes and removed only from the oldest end, so the
                // newest `keepingLast` events are exactly those after `last - keepingLast`.
                through = max(through, last - EventSequence(max(0, keepingLast)))
            }
            if let olderThan, through < stepEnd {
                // Events are appended in time order, so the expired ones are the oldest by sequence too: find
                // the first one of this step's range that is young enough to stay. Walking the primary key
                // bounds the scan to `limit` rows, so no index on `timestamp` is needed. Stopping at the first
                // young event (rather than deleting every old one) keeps the log contiguous should the clock
                // ever have stepped back.
                let firstKept = try EventSequence.fetchOne(db, sql: """
                    SELECT sequence FROM events WHERE sequence > ? AND sequence <= ? AND timestamp >= ?
                    ORDER BY sequence LIMIT 1
                    """, arguments: [through, stepEnd, olderThan])
                through = max(through, (firstKept ?? stepEnd + 1) - 1)
            }
            through = min(through, stepEnd)
            guard through >= first else { return 0 }
            try db.execute(sql: "DELETE FROM events WHERE sequence <= ?", arguments: [through])
            return db.changesCount
        }
    }

    // MARK: Rows

    private static func failure(from row: Row) -> TaskFailure? {
        guard let message: String = row["error_message"] else { return nil }
        return TaskFailure(message: message, code: row["error_code"] ?? "", retryable: row["error_retryable"] ?? false)
    }

    static func batchRecord(_ row: Row) -> BatchRecord {
        var counters = BatchCounters()
        counters.total = row["total"]
        counters.pending = row["pending"]
        counters.running = row["running"]
        counters.waitingChildren = row["waiting_children"]
        counters.retryWait = row["retry_wait"]
        counters.completed = row["completed"]
        counters.failed = row["failed"]
        counters.cancelled = row["cancelled"]
        counters.expired = row["expired"]
        let metadataJSON: String? = row["metadata"]
        let metadata = metadataJSON.flatMap { try? JSONDecoder().decode([String: String].self, from: Data($0.utf8)) } ?? [:]
        let creatorUID: Int64 = row["creator_uid"]
        let closing: String? = row["closing"]
        var record = BatchRecord(
            id: row["id"], ownerID: row["owner_id"], agent: row["agent"],
            state: BatchState(rawValue: row["state"]) ?? .failed, counters: counters,
            progress: BatchProgress(totalTasks: counters.total, maxTurns: row["max_turns"], units: row["progress_units"]),
            metadata: metadata, parentTaskID: row["parent_task_id"], createdAt: row["created_at"],
            startedAt: row["started_at"], finishedAt: row["finished_at"], deadlineAt: row["deadline_at"],
            creatorUID: UInt32(truncatingIfNeeded: creatorUID), closing: closing.flatMap(TaskState.init(rawValue:)),
            usage: TokenUsage(promptTokens: row["prompt_tokens"], completionTokens: row["completion_tokens"],
                              totalTokens: row["total_tokens"]))
        record.parentAttempt = row["parent_attempt"]
        return record
    }

    static func taskRecord(_ row: Row, includePayload: Bool) -> TaskRecord {
        let result: Data? = row["result"]
        let payload: Data? = includePayload ? row["payload"] : nil
        return TaskRecord(
            id: row["id"], batchID: row["batch_id"], customID: row["custom_id"], ownerID: row["owner_id"],
            agent: row["agent"], state: TaskState(rawValue: row["state"]) ?? .failed, priority: row["priority"],
            attempt: row["attempt"], maxAttempts: row["max_attempts"], timeoutMs: row["timeout_ms"],
            turnsCompleted: row["turns_completed"], maxTurns: row["max_turns"], result: result.map { [UInt8]($0) },
            failure: failure(from: row), parentTaskID: row["parent_task_id"], createdAt: row["created_at"],
            startedAt: row["started_at"], finishedAt: row["finished_at"], payload: payload.map { [UInt8]($0) },
            url: row["url"], details: details(from: row))
    }

    private static func details(from row: Row) -> ResponseDetails {
        let total: Int64? = row["total_tokens"]
        return ResponseDetails(
            statusCode: row["status_code"], requestID: row["request_id"],
            usage: total.map { TokenUsage(promptTokens: row["prompt_tokens"] ?? 0, completionTokens: row["completion_tokens"] ?? 0,
                                          totalTokens: $0) })
    }

    /// The columns `eventRecord` reads, by position: replaying a log reads
    /// many rows, and positional access skips GRDB's column-name lookups.
    static let eventColumns = """
        sequence, kind, timestamp, owner_id, batch_id, task_id, custom_id, parent_task_id, progress, counters,
        attempt, turn, retry_delay_ms, error_message, error_code, error_retryable, creator_uid
        """

    static func eventRecord(_ row: Row) -> EventRecord {
        let countersJSON: String? = row[9]
        let kind: String = row[1]
        let message: String? = row[13]
        let creator: Int64? = row[16]
        return EventRecord(
            sequence: row[0], kind: EventKind(rawValue: kind) ?? .batchProgress, timestamp: row[2],
            ownerID: row[3], batchID: row[4], taskID: row[5], customID: row[6], parentTaskID: row[7], progress: row[8],
            counters: countersJSON.flatMap(BatchCounters.init(json:)),
            attempt: row[10], turn: row[11], retryDelayMs: row[12],
            failure: message.map { TaskFailure(message: $0, code: row[14] ?? "", retryable: row[15] ?? false) },
            creatorUID: creator.map { UInt32(truncatingIfNeeded: $0) })
    }
}

extension BatchCounters {
    /// The counters an event row stores as JSON.
    public init?(json: String) {
        guard let decoded = try? JSONDecoder().decode(BatchCounters.self, from: Data(json.utf8)) else { return nil }
        self = decoded
    }

    /// The JSON `init(json:)` reads, as an event row stores it.
    public func json() throws -> String {
        String(decoding: try JSONEncoder().encode(self), as: UTF8.self)
    }
}
