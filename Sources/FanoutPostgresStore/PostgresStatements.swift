import FanoutCore
import FanoutStore
import Foundation
import PostgresNIO

/// The statements both sides of the store run (the commit loop's blocking
/// connection and the async pool), as values: each side only executes them.
enum PostgresStatements {
    static func insertBatch(_ batch: NewBatch, state: String, taskCount: Int, now: Milliseconds) throws -> PostgresQuery {
        let metadata = batch.metadata.isEmpty ? nil : String(decoding: try JSONEncoder().encode(batch.metadata), as: UTF8.self)
        return """
            INSERT INTO batches (owner_id, agent, state, total, pending, max_turns, metadata,
                                 parent_task_id, parent_attempt, created_at, deadline_at, creator_uid)
            VALUES (\(batch.ownerID), \(batch.agent), \(state), \(taskCount), \(taskCount), \(batch.maxTurns), \(metadata),
                    \(batch.parentTaskID), \(batch.parentAttempt), \(now), \(batch.deadlineAt), \(Int64(batch.creatorUID)))
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

    /// One change of a task, by `daemon`. A task stays claimed by the daemon that runs it while it
    /// is live (running, waiting, back in its window); once finished it keeps `claimed_by`, as a
    /// record of who ran it, and loses its lease.
    static func taskChange(_ change: TaskChange, daemon: String, leaseMs: Int) -> PostgresQuery {
        switch change {
        case let .started(id, attempt, at):
            """
            UPDATE tasks SET state = 'running', attempt = \(attempt), started_at = \(at), claimed_by = \(daemon),
                lease_expires_at = \(unescaped: ClaimStatements.serverNowMs) + \(leaseMs)
            WHERE id = \(id)
            """
        case let .turns(id, turns):
            "UPDATE tasks SET turns_completed = \(turns) WHERE id = \(id)"
        case let .waiting(id):
            "UPDATE tasks SET state = 'waiting_children' WHERE id = \(id)"
        case let .resumed(id):
            "UPDATE tasks SET state = 'running' WHERE id = \(id)"
        case let .released(id):
            // A graceful stop is not the task's fault: the attempt it was on is given back.
            "UPDATE tasks SET state = 'pending', attempt = greatest(attempt - 1, 0), claimed_by = NULL, lease_expires_at = NULL WHERE id = \(id)"
        case let .requeued(id, state, failure):
            """
            UPDATE tasks SET state = \(state.rawValue), error_message = \(failure?.message), error_code = \(failure?.code),
                error_retryable = \(failure?.retryable)
            WHERE id = \(id)
            """
        case let .finished(id, state, result, failure, turns, at, details):
            """
            UPDATE tasks SET state = \(state.rawValue), result = \(result.map { ByteBuffer(bytes: $0) }),
                error_message = \(failure?.message), error_code = \(failure?.code), error_retryable = \(failure?.retryable),
                turns_completed = \(turns), finished_at = \(at), status_code = \(details.statusCode),
                request_id = \(details.requestID), prompt_tokens = \(details.usage?.promptTokens),
                completion_tokens = \(details.usage?.completionTokens),
                total_tokens = \(details.usage?.totalTokens), lease_expires_at = NULL
            WHERE id = \(id)
            """
        }
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

    static func insertEvent(_ event: EventRecord) throws -> PostgresQuery {
        """
        INSERT INTO events (kind, timestamp, owner_id, batch_id, task_id, custom_id, parent_task_id, progress,
                            counters, attempt, turn, retry_delay_ms, error_message, error_code, error_retryable, creator_uid)
        VALUES (\(event.kind.rawValue), \(event.timestamp), \(event.ownerID), \(event.batchID), \(event.taskID), \(event.customID),
                \(event.parentTaskID), \(event.progress), \(try event.counters.map { try $0.json() }), \(event.attempt), \(event.turn),
                \(event.retryDelayMs), \(event.failure?.message), \(event.failure?.code), \(event.failure?.retryable),
                \(event.creatorUID.map { Int64($0) }))
        RETURNING sequence
        """
    }

    /// The newest committed event sequence (migration 2), also after retention removed that event.
    static let lastSequence: PostgresQuery = "SELECT last_sequence FROM event_log"

    static func recordLastSequence(_ sequence: EventSequence) -> PostgresQuery {
        "UPDATE event_log SET last_sequence = \(sequence)"
    }

    /// A batch still being received, or a file still being uploaded, when the daemon stopped was never accepted.
    static let discardUnfinishedUploads = [
        "DELETE FROM tasks WHERE batch_id IN (SELECT id FROM batches WHERE state = 'staging')",
        "DELETE FROM gateway_rejects WHERE batch_id IN (SELECT id FROM batches WHERE state = 'staging')",
        "DELETE FROM file_chunks WHERE file_id IN (SELECT id FROM files WHERE state = 'uploading')",
        "DELETE FROM files WHERE state = 'uploading'",
        "DELETE FROM batches WHERE state = 'staging'",
    ]

    /// Counters, progress and token use of the active batches, from their task rows (the source of truth).
    static let recountActiveBatches = recountBatch + " WHERE state IN ('pending', 'processing')"

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
