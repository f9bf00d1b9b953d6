import FanoutCore
import FanoutStore
import Foundation
import PostgresNIO

/// The async calls: staging, reads, RetryFailed, on the pool.
extension PostgresStore {
    func rows(_ query: PostgresQuery) async throws -> [PostgresRow] {
        do {
            return try await client.query(query, logger: logger).collect()
        } catch {
            throw Self.storeError(error)
        }
    }

    /// A transaction on the pool; what its body threw comes out as thrown, not wrapped.
    func transaction<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        do {
            return try await client.withTransaction(logger: logger) { connection in try await body(connection) }
        } catch let error as PostgresTransactionError {
            throw Self.storeError(error.closureError ?? error.beginError ?? error.commitError ?? error)
        } catch {
            throw Self.storeError(error)
        }
    }

    // MARK: Staging

    public func createStagedBatch(_ batch: NewBatch, now: Milliseconds) async throws -> BatchID {
        let insert = try PostgresStatements.insertBatch(batch, state: "staging", taskCount: 0, stagedBy: daemonID, now: now)
        guard let row = try await rows(insert).first else { throw PostgresSchemaError("an INSERT … RETURNING returned no row") }
        return try row.decode(Int64.self)
    }

    public func appendStagedTasks(_ tasks: [NewTask], to batch: BatchID, parentTaskID: TaskID?, now: Milliseconds) async throws {
        let logger = self.logger
        try await transaction { connection in
            for start in stride(from: 0, to: tasks.count, by: PostgresStatements.tasksPerInsert) {
                let chunk = tasks[start..<min(start + PostgresStatements.tasksPerInsert, tasks.count)]
                try await connection.query(PostgresStatements.insertTasks(chunk, batchID: batch, parentTaskID: parentTaskID, now: now),
                                           logger: logger)
            }
            try await connection.query("""
                UPDATE batches SET total = total + \(tasks.count), pending = pending + \(tasks.count)
                WHERE id = \(batch) AND state = 'staging'
                """, logger: logger)
        }
    }

    public func publishStagedBatch(_ batch: BatchID) async throws -> BatchRecord {
        let published = try await rows("UPDATE batches SET state = 'pending' WHERE id = \(batch) AND state = 'staging' RETURNING *")
        guard let row = published.first else { throw FanoutError.notFound("staged batch \(batch) does not exist") }
        return try PostgresRows.batch(row)
    }

    public func discardStagedBatch(_ batch: BatchID) async throws {
        let logger = self.logger
        try await transaction { connection in
            let staged = "EXISTS (SELECT 1 FROM batches WHERE id = \(batch) AND state = 'staging')"
            try await connection.query(PostgresQuery(unsafeSQL: "DELETE FROM tasks WHERE batch_id = \(batch) AND \(staged)"), logger: logger)
            try await connection.query(PostgresQuery(unsafeSQL: "DELETE FROM gateway_rejects WHERE batch_id = \(batch) AND \(staged)"),
                                       logger: logger)
            try await connection.query("DELETE FROM batches WHERE id = \(batch) AND state = 'staging'", logger: logger)
        }
    }

    // MARK: Batches and tasks

    public func batch(_ id: BatchID) async throws -> BatchRecord? {
        try await rows("SELECT * FROM batches WHERE id = \(id) AND state != 'staging'").first.map(PostgresRows.batch)
    }

    public func endedBatches(among ids: [BatchID]) async throws -> [BatchRecord] {
        guard !ids.isEmpty else { return [] }
        return try await rows("SELECT * FROM batches WHERE id = ANY(\(ids)) AND state IN ('completed', 'failed', 'cancelled')")
            .map(PostgresRows.batch)
    }

    public func batches(ownerID: String?, creatorUID: UInt32?, parentBatchID: BatchID?, limit: Int,
                        beforeID: BatchID?) async throws -> [BatchRecord] {
        var query = DynamicQuery("SELECT * FROM batches WHERE state != 'staging'")
        if let parentBatchID { query.sql += " AND parent_task_id IN (SELECT id FROM tasks WHERE batch_id = \(query.bind(parentBatchID)))" }
        if let ownerID { query.sql += " AND owner_id = \(query.bind(ownerID))" }
        if let creatorUID { query.sql += " AND creator_uid = \(query.bind(Int64(creatorUID)))" }
        if let beforeID { query.sql += " AND id < \(query.bind(beforeID))" }
        query.sql += " ORDER BY id DESC LIMIT \(query.bind(limit))"
        return try await rows(query.query).map(PostgresRows.batch)
    }

    public func childBatches(of parent: TaskID, attempt: Int) async throws -> [BatchRecord] {
        try await rows("""
            SELECT * FROM batches WHERE parent_task_id = \(parent) AND parent_attempt = \(attempt) AND state != 'staging' ORDER BY id
            """).map(PostgresRows.batch)
    }

    public func task(_ id: TaskID, includePayload: Bool) async throws -> TaskRecord? {
        var query = DynamicQuery("SELECT \(PostgresRows.taskColumns)\(includePayload ? ", t.payload" : ""), b.owner_id")
        query.sql += " FROM tasks t JOIN batches b ON b.id = t.batch_id WHERE t.id = \(query.bind(id))"
        return try await rows(query.query).first.map { try PostgresRows.task($0, includePayload: includePayload) }
    }

    public func payload(of task: TaskID) async throws -> [UInt8] {
        guard let row = try await rows("SELECT payload FROM tasks WHERE id = \(task)").first else {
            throw FanoutError.notFound("task \(task) does not exist")
        }
        return Array(try row.decode(ByteBuffer.self).readableBytesView)
    }

    public func results(batchID: BatchID, afterTaskID: TaskID, limit: Int, maxBytes: Int) async throws -> [TaskRecord] {
        // Cut by bytes in the query too: a running sum of the result sizes, so a page of big results
        // does not read the rows after its cut (the exact cut, by `resultPageBytes`, is made below).
        var query = DynamicQuery("SELECT \(PostgresRows.taskColumns), b.owner_id FROM (SELECT t.*, sum(coalesce(octet_length(t.result), 0)")
        query.sql += " + coalesce(octet_length(t.error_message), 0)) OVER (ORDER BY t.id) AS running_bytes FROM tasks t"
        query.sql += " WHERE t.batch_id = \(query.bind(batchID)) AND t.id > \(query.bind(afterTaskID))"
        query.sql += " AND t.state IN ('completed', 'failed', 'cancelled', 'expired') ORDER BY t.id LIMIT \(query.bind(limit))) t"
        query.sql += " JOIN batches b ON b.id = t.batch_id"
        // The first row always, then rows while the results alone fit.
        query.sql += " WHERE t.running_bytes <= \(query.bind(maxBytes)) OR t.id = (SELECT min(id) FROM tasks"
        query.sql += " WHERE batch_id = \(query.bind(batchID)) AND id > \(query.bind(afterTaskID))"
        query.sql += " AND state IN ('completed', 'failed', 'cancelled', 'expired')) ORDER BY t.id"
        let page = try await rows(query.query)
        var records: [TaskRecord] = []
        var bytes = 0
        for row in page {
            let record = try PostgresRows.task(row, includePayload: false)
            let size = record.resultPageBytes
            if !records.isEmpty && size > maxBytes - bytes { break }
            bytes += size
            records.append(record)
        }
        return records
    }

    public func reopenTasks(batchID: BatchID, states: Set<TaskState>, now: Milliseconds) async throws -> ReopenedBatch {
        let logger = self.logger
        return try await transaction { connection -> ReopenedBatch in
            guard let row = try await connection.query("SELECT * FROM batches WHERE id = \(batchID) FOR UPDATE", logger: logger)
                .collect().first else {
                throw FanoutError.notFound("batch \(batchID) does not exist")
            }
            let batch = try PostgresRows.batch(row)
            guard batch.state.isTerminal else {
                throw FanoutError.failedPrecondition("batch \(batchID) is still \(batch.state.rawValue); retry its failed tasks once it has finished")
            }
            let list = states.map(\.rawValue).sorted()
            var reopen = DynamicQuery("""
                UPDATE tasks SET state = 'pending', attempt = 0, turns_completed = 0, result = NULL,
                    error_message = NULL, error_code = NULL, error_retryable = NULL, started_at = NULL, finished_at = NULL,
                    status_code = NULL, request_id = NULL, prompt_tokens = NULL, completion_tokens = NULL, total_tokens = NULL,
                    claimed_by = NULL, lease_expires_at = NULL
                """)
            reopen.sql += " WHERE batch_id = \(reopen.bind(batchID)) AND state IN (\(list.map { reopen.bind($0) }.joined(separator: ", ")))"
            reopen.sql += " RETURNING id"
            let reopened = try await connection.query(reopen.query, logger: logger).collect().count
            if reopened > 0 {
                try await connection.query(PostgresQuery(unsafeSQL: PostgresStatements.recountBatch + " WHERE id = \(batchID)"), logger: logger)
                try await connection.query("""
                    UPDATE batches SET state = 'processing', finished_at = NULL, deadline_at = NULL, closing = NULL WHERE id = \(batchID)
                    """, logger: logger)
            }
            let updated = try PostgresRows.batch(try await connection.query("SELECT * FROM batches WHERE id = \(batchID)", logger: logger)
                .collect()[0])
            var agents: [String] = []
            if reopened > 0 {
                for try await agent in try await connection.query("""
                    SELECT DISTINCT agent FROM tasks WHERE batch_id = \(batchID) AND state = 'pending' ORDER BY agent
                    """, logger: logger).decode(String.self) {
                    agents.append(agent)
                }
            }
            return ReopenedBatch(batch: updated, reopened: reopened, agents: agents)
        }
    }

    // MARK: Events

    public func events(after: EventSequence, upTo: EventSequence?, filter: EventFilter, limit: Int) async throws -> [EventRecord] {
        try await rows(Self.eventsQuery(after: after, upTo: upTo, filter: filter, limit: limit)).map(PostgresRows.event)
    }

    public func eventPage(after: EventSequence, upTo: EventSequence?, filter: EventFilter, limit: Int) async throws -> EventPage {
        let logger = self.logger
        // One snapshot for the page and the log's oldest sequence.
        return try await client.withConnection { connection in
            try await connection.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", logger: logger)
            do {
                let events = try await connection.query(Self.eventsQuery(after: after, upTo: upTo, filter: filter, limit: limit),
                                                        logger: logger).collect().map(PostgresRows.event)
                let first = try await connection.query("SELECT min(sequence) FROM events", logger: logger).collect().first?
                    .decode(Int64?.self)
                let last = try Self.lastSequence(rows: try await connection.query(PostgresStatements.lastSequence, logger: logger).collect())
                try await connection.query("COMMIT", logger: logger)
                return EventPage(events: events, firstAvailable: first ?? last + 1)
            } catch {
                _ = try? await connection.query("ROLLBACK", logger: logger)
                throw error
            }
        }
    }

    static func eventsQuery(after: EventSequence, upTo: EventSequence?, filter: EventFilter, limit: Int) -> PostgresQuery {
        var query = DynamicQuery("SELECT \(PostgresRows.eventColumns) FROM events")
        query.sql += " WHERE sequence > \(query.bind(after))"
        if let upTo { query.sql += " AND sequence <= \(query.bind(upTo))" }
        if !filter.ownerID.isEmpty { query.sql += " AND owner_id = \(query.bind(filter.ownerID))" }
        if let batchID = filter.batchID { query.sql += " AND batch_id = \(query.bind(batchID))" }
        if let creatorUID = filter.creatorUID { query.sql += " AND creator_uid = \(query.bind(Int64(creatorUID)))" }
        if !filter.kinds.isEmpty {
            query.sql += " AND kind IN (\(filter.kinds.map { query.bind($0.rawValue) }.joined(separator: ", ")))"
        }
        query.sql += " ORDER BY sequence LIMIT \(query.bind(limit))"
        return query.query
    }

    public func lastEventSequence() async throws -> EventSequence {
        try Self.lastSequence(rows: try await rows(PostgresStatements.lastSequence))
    }

    static func lastSequence(rows: [PostgresRow]) throws -> EventSequence {
        try rows.first?.decode(Int64.self) ?? 0
    }

    public func firstEventSequence() async throws -> EventSequence? {
        try await rows("SELECT min(sequence) FROM events").first?.decode(Int64?.self)
    }
}

/// A statement whose conditions depend on the call: values are bound as `$n`, never spliced in.
struct DynamicQuery {
    var sql: String
    private var binds = PostgresBindings()

    init(_ sql: String) {
        self.sql = sql
    }

    /// Binds `value` and returns its placeholder.
    mutating func bind<Value: PostgresDynamicTypeEncodable>(_ value: Value) -> String {
        binds.append(value)
        return "$\(binds.count)"
    }

    /// Binds `value`, or NULL (typed by where it goes), and returns its placeholder.
    mutating func bind<Value: PostgresDynamicTypeEncodable>(_ value: Value?) -> String {
        if let value { binds.append(value) } else { binds.appendNull() }
        return "$\(binds.count)"
    }

    var query: PostgresQuery { PostgresQuery(unsafeSQL: sql, binds: binds) }
}
