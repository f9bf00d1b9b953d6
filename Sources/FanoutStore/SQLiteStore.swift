import FanoutCore
import Foundation
import GRDB

/// The embedded store: one SQLite file in WAL mode through GRDB.
///
/// Writes go through GRDB's single writer connection, so they are serialized;
/// reads run concurrently on the pool's reader connections and see only
/// committed data.
public final class SQLiteStore: Store {
    private let pool: DatabasePool

    public init(path: String, durability: Durability = .normal) throws {
        var configuration = Configuration()
        configuration.label = "fanout"
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = \(durability == .full ? "FULL" : "NORMAL")")
        }
        // A second daemon on the same file waits briefly instead of failing at once.
        configuration.busyMode = .timeout(5)
        pool = try DatabasePool(path: path, configuration: configuration)
        try Migrations.migrator.migrate(pool)
    }

    // MARK: Writes

    public func insertBatch(_ batch: NewBatch, now: Milliseconds) throws -> InsertedBatch {
        try pool.write { db in
            let metadata = batch.metadata.isEmpty ? nil : try String(decoding: JSONEncoder().encode(batch.metadata), as: UTF8.self)
            try db.execute(
                sql: """
                    INSERT INTO batches (owner_id, agent, state, total, pending, max_turns, metadata,
                                         parent_task_id, created_at, deadline_at, creator_uid)
                    VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [batch.ownerID, batch.agent, batch.tasks.count, batch.tasks.count, batch.maxTurns, metadata,
                            batch.parentTaskID, now, batch.deadlineAt, Int64(batch.creatorUID)])
            let batchID = db.lastInsertedRowID
            let insert = try db.cachedStatement(sql: """
                INSERT INTO tasks (batch_id, custom_id, agent, state, priority, max_attempts, timeout_ms,
                                   max_turns, payload, parent_task_id, created_at)
                VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)
                """)
            var taskIDs: [TaskID] = []
            taskIDs.reserveCapacity(batch.tasks.count)
            for task in batch.tasks {
                try insert.execute(arguments: [batchID, task.customID, task.agent, task.priority, task.maxAttempts,
                                               task.timeoutMs, task.maxTurns, Data(task.payload), batch.parentTaskID, now])
                taskIDs.append(db.lastInsertedRowID)
            }
            let record = BatchRecord(
                id: batchID, ownerID: batch.ownerID, agent: batch.agent, state: .pending,
                counters: BatchCounters(pending: batch.tasks.count),
                progress: BatchProgress(totalTasks: batch.tasks.count, maxTurns: batch.maxTurns),
                metadata: batch.metadata, parentTaskID: batch.parentTaskID, createdAt: now,
                deadlineAt: batch.deadlineAt, creatorUID: batch.creatorUID)
            return InsertedBatch(batch: record, taskIDs: taskIDs)
        }
    }

    public func commit(_ changes: ChangeSet) throws -> [EventRecord] {
        guard !changes.isEmpty else { return [] }
        return try pool.write { db in
            for change in changes.tasks {
                try apply(change, in: db)
            }
            for snapshot in changes.batches.values {
                try db.cachedStatement(sql: """
                    UPDATE batches SET state = ?, pending = ?, running = ?, waiting_children = ?, retry_wait = ?,
                        completed = ?, failed = ?, cancelled = ?, expired = ?, progress_units = ?,
                        started_at = ?, finished_at = ?
                    WHERE id = ?
                    """).execute(arguments: [
                        snapshot.state.rawValue, snapshot.counters.pending, snapshot.counters.running,
                        snapshot.counters.waitingChildren, snapshot.counters.retryWait, snapshot.counters.completed,
                        snapshot.counters.failed, snapshot.counters.cancelled, snapshot.counters.expired,
                        snapshot.progressUnits, snapshot.startedAt, snapshot.finishedAt, snapshot.id,
                    ])
            }
            var stored: [EventRecord] = []
            stored.reserveCapacity(changes.events.count)
            let insertEvent = try db.cachedStatement(sql: """
                INSERT INTO events (kind, timestamp, owner_id, batch_id, task_id, custom_id, parent_task_id, progress,
                                    counters, attempt, turn, retry_delay_ms, error_message, error_code, error_retryable)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """)
            for var event in changes.events {
                let counters = try event.counters.map { try String(decoding: JSONEncoder().encode($0), as: UTF8.self) }
                try insertEvent.execute(arguments: [
                    event.kind.rawValue, event.timestamp, event.ownerID, event.batchID, event.taskID, event.customID,
                    event.parentTaskID, event.progress, counters, event.attempt, event.turn, event.retryDelayMs,
                    event.failure?.message, event.failure?.code, event.failure?.retryable,
                ])
                event.sequence = db.lastInsertedRowID
                stored.append(event)
            }
            return stored
        }
    }

    private func apply(_ change: TaskChange, in db: Database) throws {
        switch change {
        case let .started(id, attempt, at):
            try db.cachedStatement(sql: "UPDATE tasks SET state = 'running', attempt = ?, started_at = ? WHERE id = ?")
                .execute(arguments: [attempt, at, id])
        case let .turns(id, turns):
            try db.cachedStatement(sql: "UPDATE tasks SET turns_completed = ? WHERE id = ?")
                .execute(arguments: [turns, id])
        case let .requeued(id, state, failure):
            try db.cachedStatement(sql: """
                UPDATE tasks SET state = ?, error_message = ?, error_code = ?, error_retryable = ? WHERE id = ?
                """).execute(arguments: [state.rawValue, failure?.message, failure?.code, failure?.retryable, id])
        case let .finished(id, state, result, failure, turns, at):
            try db.cachedStatement(sql: """
                UPDATE tasks SET state = ?, result = ?, error_message = ?, error_code = ?, error_retryable = ?,
                    turns_completed = ?, finished_at = ?
                WHERE id = ?
                """).execute(arguments: [state.rawValue, result.map { Data($0) }, failure?.message, failure?.code,
                                         failure?.retryable, turns, at, id])
        }
    }

    public func recover(now: Milliseconds) throws -> RecoveredState {
        try pool.write { db in
            // A task that was running when the daemon stopped runs again; its attempt was already counted.
            try db.execute(sql: "UPDATE tasks SET state = 'pending' WHERE state IN ('running', 'retry_wait')")
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
            let tasks = try Row.fetchAll(db, sql: """
                SELECT t.id, t.batch_id, b.owner_id, t.custom_id, t.agent, t.priority, t.attempt, t.max_attempts,
                       t.timeout_ms, t.turns_completed, t.max_turns, t.parent_task_id
                FROM tasks t JOIN batches b ON b.id = t.batch_id
                WHERE b.state IN ('pending', 'processing') AND t.state = 'pending'
                ORDER BY t.id
                """).map { row in
                    RunnableTask(
                        id: row["id"], batchID: row["batch_id"], ownerID: row["owner_id"], customID: row["custom_id"],
                        agent: row["agent"], priority: row["priority"], attempt: row["attempt"],
                        maxAttempts: row["max_attempts"], timeoutMs: row["timeout_ms"],
                        turnsCompleted: row["turns_completed"], maxTurns: row["max_turns"],
                        parentTaskID: row["parent_task_id"])
                }
            return RecoveredState(activeBatches: batches, runnableTasks: tasks, requeued: requeued)
        }
    }

    // MARK: Reads

    public func batch(_ id: BatchID) throws -> BatchRecord? {
        try pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM batches WHERE id = ?", arguments: [id]).map(Self.batchRecord)
        }
    }

    public func batches(ownerID: String?, creatorUID: UInt32?, limit: Int, beforeID: BatchID?) throws -> [BatchRecord] {
        try pool.read { db in
            var conditions: [String] = []
            var arguments: StatementArguments = []
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

    public func task(_ id: TaskID, includePayload: Bool) throws -> TaskRecord? {
        try pool.read { db in
            try Row.fetchOne(db, sql: """
                SELECT t.*, b.owner_id FROM tasks t JOIN batches b ON b.id = t.batch_id WHERE t.id = ?
                """, arguments: [id]).map { Self.taskRecord($0, includePayload: includePayload) }
        }
    }

    public func results(batchID: BatchID, afterTaskID: TaskID, limit: Int) throws -> [TaskRecord] {
        try pool.read { db in
            try Row.fetchAll(db, sql: """
                SELECT t.id, t.batch_id, t.custom_id, t.agent, t.state, t.priority, t.attempt, t.max_attempts,
                       t.timeout_ms, t.turns_completed, t.max_turns, t.result, t.error_message, t.error_code,
                       t.error_retryable, t.parent_task_id, t.created_at, t.started_at, t.finished_at, b.owner_id
                FROM tasks t JOIN batches b ON b.id = t.batch_id
                WHERE t.batch_id = ? AND t.id > ? AND t.state IN ('completed', 'failed', 'cancelled', 'expired')
                ORDER BY t.id LIMIT ?
                """, arguments: [batchID, afterTaskID, limit]).map { Self.taskRecord($0, includePayload: false) }
        }
    }

    public func payload(of task: TaskID) throws -> [UInt8] {
        try pool.read { db in
            guard let data = try Data.fetchOne(db, sql: "SELECT payload FROM tasks WHERE id = ?", arguments: [task]) else {
                throw FanoutError.notFound("task \(task) does not exist")
            }
            return [UInt8](data)
        }
    }

    public func events(after: EventSequence, upTo: EventSequence?, filter: EventFilter, limit: Int) throws -> [EventRecord] {
        try pool.read { db in
            var sql = "SELECT * FROM events WHERE sequence > ?"
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
            if !filter.kinds.isEmpty {
                sql += " AND kind IN (\(filter.kinds.map { _ in "?" }.joined(separator: ",")))"
                arguments += StatementArguments(filter.kinds.map(\.rawValue))
            }
            sql += " ORDER BY sequence LIMIT ?"
            arguments += [limit]
            return try Row.fetchAll(db, sql: sql, arguments: arguments).map(Self.eventRecord)
        }
    }

    public func lastEventSequence() throws -> EventSequence {
        try pool.read { db in
            try EventSequence.fetchOne(db, sql: "SELECT coalesce(max(sequence), 0) FROM events") ?? 0
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
        return BatchRecord(
            id: row["id"], ownerID: row["owner_id"], agent: row["agent"],
            state: BatchState(rawValue: row["state"]) ?? .failed, counters: counters,
            progress: BatchProgress(totalTasks: counters.total, maxTurns: row["max_turns"], units: row["progress_units"]),
            metadata: metadata, parentTaskID: row["parent_task_id"], createdAt: row["created_at"],
            startedAt: row["started_at"], finishedAt: row["finished_at"], deadlineAt: row["deadline_at"],
            creatorUID: UInt32(truncatingIfNeeded: creatorUID))
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
            startedAt: row["started_at"], finishedAt: row["finished_at"], payload: payload.map { [UInt8]($0) })
    }

    static func eventRecord(_ row: Row) -> EventRecord {
        let countersJSON: String? = row["counters"]
        let kind: String = row["kind"]
        return EventRecord(
            sequence: row["sequence"], kind: EventKind(rawValue: kind) ?? .batchProgress, timestamp: row["timestamp"],
            ownerID: row["owner_id"], batchID: row["batch_id"], taskID: row["task_id"], customID: row["custom_id"],
            parentTaskID: row["parent_task_id"], progress: row["progress"],
            counters: countersJSON.flatMap { try? JSONDecoder().decode(BatchCounters.self, from: Data($0.utf8)) },
            attempt: row["attempt"], turn: row["turn"], retryDelayMs: row["retry_delay_ms"], failure: failure(from: row))
    }
}
