import FanoutCore
import FanoutStore
import Foundation
import PostgresNIO

/// The statements both sides of the store run (the commit loop's blocking
/// connection and the async pool), as values: each side only executes them.
enum PostgresStatements {
    /// `stagedBy`: the daemon receiving a batch in chunks (state `staging`).
    static func insertBatch(_ batch: NewBatch, state: String, taskCount: Int, stagedBy: String? = nil, now: Milliseconds) throws
        -> PostgresQuery
    {
        let metadata = batch.metadata.isEmpty ? nil : String(decoding: try JSONEncoder().encode(batch.metadata), as: UTF8.self)
        return """
            INSERT INTO batches (owner_id, agent, state, total, pending, max_turns, metadata,
                                 parent_task_id, parent_attempt, created_at, deadline_at, creator_uid, staged_by)
            VALUES (\(batch.ownerID), \(batch.agent), \(state), \(taskCount), \(taskCount), \(batch.maxTurns), \(metadata),
                    \(batch.parentTaskID), \(batch.parentAttempt), \(now), \(batch.deadlineAt), \(Int64(batch.creatorUID)), \(stagedBy))
            RETURNING id
            """
    }

    /// Tasks per INSERT: one statement (and one round trip) per chunk, its columns sent as arrays.
    static let tasksPerInsert = 2_000

    /// `tasks` in one statement, their columns as arrays `unnest` turns back into rows. The rows are
    /// inserted in the order given, so their ids ascend in that order (`insertedTaskIDs`).
    static func insertTasks(_ tasks: ArraySlice<NewTask>, batchID: BatchID, parentTaskID: TaskID?, now: Milliseconds) -> PostgresQuery {
        """
        INSERT INTO tasks (batch_id, custom_id, agent, state, priority, max_attempts, timeout_ms,
                           max_turns, payload, parent_task_id, created_at, url)
        SELECT \(batchID), t.custom_id, t.agent, 'pending', t.priority, t.max_attempts, t.timeout_ms,
               t.max_turns, t.payload, \(parentTaskID), \(now), CASE WHEN t.has_url THEN t.url END
        FROM unnest(\(tasks.map(\.customID)), \(tasks.map(\.agent)), \(tasks.map(\.priority)), \(tasks.map { Int32(clamping: $0.maxAttempts) }),
                    \(tasks.map(\.timeoutMs)), \(tasks.map { Int32(clamping: $0.maxTurns) }), \(tasks.map { ByteBuffer(bytes: $0.payload) }),
                    \(tasks.map { $0.url ?? "" }), \(tasks.map { $0.url != nil }))
            WITH ORDINALITY AS t(custom_id, agent, priority, max_attempts, timeout_ms, max_turns, payload, url, has_url, position)
        ORDER BY t.position
        RETURNING id
        """
    }

    /// The ids an `insertTasks` returned, in the order of its tasks: ascending, as they were assigned.
    static func insertedTaskIDs(_ rows: [PostgresRow]) throws -> [TaskID] {
        try rows.map { try $0.decode(Int64.self) }.sorted()
    }

    /// Adds a commit's `BatchDelta` to a batch's counters, progress and token use, and takes the
    /// snapshot's own fields (start time, closing). The counters are never set from a snapshot:
    /// each daemon's snapshot counts only its own tasks.
    static func applyDelta(_ delta: BatchDelta, to id: BatchID, snapshot: BatchSnapshot?) -> PostgresQuery {
        let counters = delta.counters
        return """
            UPDATE batches SET pending = pending + \(counters.pending), running = running + \(counters.running),
                waiting_children = waiting_children + \(counters.waitingChildren), retry_wait = retry_wait + \(counters.retryWait),
                completed = completed + \(counters.completed), failed = failed + \(counters.failed),
                cancelled = cancelled + \(counters.cancelled), expired = expired + \(counters.expired),
                progress_units = progress_units + \(delta.progressUnits),
                prompt_tokens = prompt_tokens + \(delta.usage.promptTokens),
                completion_tokens = completion_tokens + \(delta.usage.completionTokens),
                total_tokens = total_tokens + \(delta.usage.totalTokens),
                started_at = coalesce(started_at, \(snapshot?.startedAt)),
                closing = coalesce(\(snapshot?.closing?.rawValue), closing),
                state = CASE WHEN state = 'pending' AND \(snapshot.map { $0.state != .pending } ?? !delta.isEmpty) THEN 'processing'
                             ELSE state END
            WHERE id = \(id)
            RETURNING *
            """
    }

    /// Ends a batch once none of its tasks is left to run, whichever daemon's commit got it there:
    /// the batch row is locked by this transaction's update, so exactly one commit sees it happen.
    /// A batch being cancelled ends cancelled; one past its deadline, failed.
    static func finishIfDone(_ id: BatchID, now: Milliseconds) -> PostgresQuery {
        """
        UPDATE batches SET state = CASE closing WHEN 'cancelled' THEN 'cancelled' WHEN 'expired' THEN 'failed' ELSE 'completed' END,
            finished_at = \(now), started_at = coalesce(started_at, \(now))
        WHERE id = \(id) AND state IN ('pending', 'processing') AND completed + failed + cancelled + expired = total
        RETURNING *
        """
    }

    static func batchSnapshot(_ snapshot: BatchSnapshot) -> PostgresQuery {
        let counters = snapshot.counters
        return """
            UPDATE batches SET state = \(snapshot.state.rawValue), pending = \(counters.pending), running = \(counters.running),
                waiting_children = \(counters.waitingChildren), retry_wait = \(counters.retryWait),
                completed = \(counters.completed), failed = \(counters.failed), cancelled = \(counters.cancelled),
                expired = \(counters.expired), progress_units = \(snapshot.progressUnits), started_at = \(snapshot.startedAt),
                finished_at = \(snapshot.finishedAt), closing = \(snapshot.closing?.rawValue),
                prompt_tokens = \(snapshot.usage.promptTokens), completion_tokens = \(snapshot.usage.completionTokens),
                total_tokens = \(snapshot.usage.totalTokens)
            WHERE id = \(snapshot.id)
            """
    }

    /// Events per INSERT: one statement (and one round trip) per chunk.
    static let eventsPerInsert = 1_000

    /// `events` in one statement, handed over as one JSON array (their many nullable columns as
    /// JSON nulls) and inserted in the order given, so their sequences ascend in that order
    /// (`insertedSequences`).
    static func insertEvents(_ events: ArraySlice<EventRecord>) throws -> PostgresQuery {
        let rows = try events.map { event -> [String: JSONValue] in
            [
                "kind": .string(event.kind.rawValue), "timestamp": .int(event.timestamp), "owner_id": .string(event.ownerID),
                "batch_id": .int(event.batchID), "task_id": event.taskID.map { .int($0) } ?? .null,
                "custom_id": event.customID.map { .string($0) } ?? .null,
                "parent_task_id": event.parentTaskID.map { .int($0) } ?? .null,
                "progress": event.progress.map { .double($0) } ?? .null,
                "counters": try event.counters.map { .string(try $0.json()) } ?? .null,
                "attempt": event.attempt.map { .int(Int64($0)) } ?? .null, "turn": event.turn.map { .int(Int64($0)) } ?? .null,
                "retry_delay_ms": event.retryDelayMs.map { .int($0) } ?? .null,
                "error_message": event.failure.map { .string($0.message) } ?? .null,
                "error_code": event.failure.map { .string($0.code) } ?? .null,
                "error_retryable": event.failure.map { .bool($0.retryable) } ?? .null,
                "creator_uid": event.creatorUID.map { .int(Int64($0)) } ?? .null,
            ]
        }
        let json = String(decoding: try JSONEncoder().encode(rows), as: UTF8.self)
        return """
            INSERT INTO events (kind, timestamp, owner_id, batch_id, task_id, custom_id, parent_task_id, progress,
                                counters, attempt, turn, retry_delay_ms, error_message, error_code, error_retryable, creator_uid)
            SELECT e.kind, e.timestamp, e.owner_id, e.batch_id, e.task_id, e.custom_id, e.parent_task_id, e.progress,
                   e.counters, e.attempt, e.turn, e.retry_delay_ms, e.error_message, e.error_code, e.error_retryable, e.creator_uid
            FROM ROWS FROM (json_to_recordset(\(json)::json) AS (
                     kind text, timestamp bigint, owner_id text, batch_id bigint, task_id bigint, custom_id text,
                     parent_task_id bigint, progress double precision, counters text, attempt integer, turn integer,
                     retry_delay_ms bigint, error_message text, error_code text, error_retryable boolean, creator_uid bigint))
                 WITH ORDINALITY AS e(kind, timestamp, owner_id, batch_id, task_id, custom_id, parent_task_id, progress, counters,
                                      attempt, turn, retry_delay_ms, error_message, error_code, error_retryable, creator_uid, position)
            ORDER BY e.position
            RETURNING sequence
            """
    }

    /// The sequences an `insertEvents` returned, in the order of its events: ascending, as they were assigned.
    static func insertedSequences(_ rows: [PostgresRow]) throws -> [EventSequence] {
        try rows.map { try $0.decode(Int64.self) }.sorted()
    }

    /// The newest committed event sequence (migration 2), also after retention removed that event.
    static let lastSequence: PostgresQuery = "SELECT last_sequence FROM event_log"

    static func recordLastSequence(_ sequence: EventSequence) -> PostgresQuery {
        "UPDATE event_log SET last_sequence = \(sequence)"
    }

    /// Wakes every daemon's event feed (delivered at commit, one per transaction whatever its events).
    static let notifyEvents = PostgresQuery(unsafeSQL: "SELECT pg_notify('\(PostgresStore.eventsChannel)', '')")

    /// Batches still being received by a daemon that is no longer alive (or by none): never
    /// accepted. Other daemons' staging goes on.
    static let abandonedStagedBatches = PostgresQuery(unsafeSQL: """
        SELECT id FROM batches WHERE state = 'staging' AND (staged_by IS NULL OR staged_by NOT IN (
            SELECT id FROM daemons WHERE heartbeat_at + lease_ms > \(ClaimStatements.serverNowMs)))
        """)

    /// Removes the abandoned staged batches `ids`.
    static func discardStagedBatches(_ ids: [BatchID]) -> [PostgresQuery] {
        [
            "DELETE FROM tasks WHERE batch_id = ANY(\(ids))",
            "DELETE FROM gateway_rejects WHERE batch_id = ANY(\(ids))",
            "DELETE FROM batches WHERE id = ANY(\(ids))",
        ]
    }

    /// Files still being uploaded when the daemon stopped (the gateway runs on SQLite only, so these are its own).
    static let discardUnfinishedFiles = [
        "DELETE FROM file_chunks WHERE file_id IN (SELECT id FROM files WHERE state = 'uploading')",
        "DELETE FROM files WHERE state = 'uploading'",
    ]

    /// Locks batch rows in id order before a recount: a commit that changed their tasks has then
    /// committed, or will add its sums after the recount (see `applyDelta`).
    static func lockBatches(_ ids: [BatchID]) -> PostgresQuery {
        "SELECT id FROM batches WHERE id = ANY(\(ids)) ORDER BY id FOR UPDATE"
    }

    /// The same for the batches a WHERE clause appended to it names.
    static let recountBatch = """
        UPDATE batches SET
            pending = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id AND t.state = 'pending'),
            running = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id AND t.state = 'running'),
            retry_wait = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id AND t.state = 'retry_wait'),
            waiting_children = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id AND t.state = 'waiting_children'),
            completed = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id AND t.state = 'completed'),
            failed = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id AND t.state = 'failed'),
            cancelled = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id AND t.state = 'cancelled'),
            expired = (SELECT count(*) FROM tasks t WHERE t.batch_id = batches.id AND t.state = 'expired'),
            progress_units = (SELECT coalesce(sum(CASE
                WHEN t.state IN ('completed', 'failed', 'cancelled', 'expired') THEN greatest(batches.max_turns, 1)
                WHEN batches.max_turns > 0 THEN least(t.turns_completed, batches.max_turns)
                ELSE 0 END), 0) FROM tasks t WHERE t.batch_id = batches.id),
            prompt_tokens = (SELECT coalesce(sum(t.prompt_tokens), 0) FROM tasks t WHERE t.batch_id = batches.id),
            completion_tokens = (SELECT coalesce(sum(t.completion_tokens), 0) FROM tasks t WHERE t.batch_id = batches.id),
            total_tokens = (SELECT coalesce(sum(t.total_tokens), 0) FROM tasks t WHERE t.batch_id = batches.id)
        """
}

/// A JSON value of an event column, for `insertEvents`.
enum JSONValue: Encodable {
    case string(String), int(Int64), double(Double), bool(Bool), null

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let value): try container.encode(value)
        case .int(let value): try container.encode(value)
        case .double(let value): try container.encode(value)
        case .bool(let value): try container.encode(value)
        case .null: try container.encodeNil()
        }
    }
}
