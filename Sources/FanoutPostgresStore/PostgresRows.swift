import FanoutCore
import FanoutStore
import Foundation
import PostgresNIO

/// Rows of the schema as the store's records. Columns are read by name: the
/// statements select `*` or name their columns, and PostgreSQL's types are the
/// schema's (BIGINT as Int64, INTEGER as Int32, BYTEA as bytes).
enum PostgresRows {
    static func batch(_ row: PostgresRow) throws -> BatchRecord {
        let cells = row.makeRandomAccess()
        var counters = BatchCounters()
        counters.total = try cells.int("total")
        counters.pending = try cells.int("pending")
        counters.running = try cells.int("running")
        counters.waitingChildren = try cells.int("waiting_children")
        counters.retryWait = try cells.int("retry_wait")
        counters.completed = try cells.int("completed")
        counters.failed = try cells.int("failed")
        counters.cancelled = try cells.int("cancelled")
        counters.expired = try cells.int("expired")
        let metadataJSON = try cells["metadata"].decode(String?.self)
        let metadata = metadataJSON.flatMap { try? JSONDecoder().decode([String: String].self, from: Data($0.utf8)) } ?? [:]
        var record = BatchRecord(
            id: try cells["id"].decode(Int64.self), ownerID: try cells["owner_id"].decode(String.self),
            agent: try cells["agent"].decode(String.self),
            state: BatchState(rawValue: try cells["state"].decode(String.self)) ?? .failed, counters: counters,
            progress: BatchProgress(totalTasks: counters.total, maxTurns: try cells.int("max_turns"), units: try cells.int("progress_units")),
            metadata: metadata, parentTaskID: try cells["parent_task_id"].decode(Int64?.self),
            createdAt: try cells["created_at"].decode(Int64.self), startedAt: try cells["started_at"].decode(Int64?.self),
            finishedAt: try cells["finished_at"].decode(Int64?.self), deadlineAt: try cells["deadline_at"].decode(Int64?.self),
            creatorUID: UInt32(truncatingIfNeeded: try cells["creator_uid"].decode(Int64.self)),
            closing: try cells["closing"].decode(String?.self).flatMap(TaskState.init(rawValue:)),
            usage: TokenUsage(promptTokens: try cells["prompt_tokens"].decode(Int64.self), completionTokens: try cells["completion_tokens"].decode(Int64.self),
                              totalTokens: try cells["total_tokens"].decode(Int64.self)))
        record.parentAttempt = try cells.optionalInt("parent_attempt")
        return record
    }

    static func task(_ row: PostgresRow, includePayload: Bool) throws -> TaskRecord {
        let cells = row.makeRandomAccess()
        let total = try cells["total_tokens"].decode(Int64?.self)
        let details = ResponseDetails(
            statusCode: try cells.optionalInt("status_code"), requestID: try cells["request_id"].decode(String?.self),
            usage: try total.map { TokenUsage(promptTokens: try cells["prompt_tokens"].decode(Int64?.self) ?? 0,
                                              completionTokens: try cells["completion_tokens"].decode(Int64?.self) ?? 0, totalTokens: $0) })
        return TaskRecord(
            id: try cells["id"].decode(Int64.self), batchID: try cells["batch_id"].decode(Int64.self),
            customID: try cells["custom_id"].decode(String.self), ownerID: try cells["owner_id"].decode(String.self),
            agent: try cells["agent"].decode(String.self), state: TaskState(rawValue: try cells["state"].decode(String.self)) ?? .failed,
            priority: try cells["priority"].decode(Int32.self), attempt: try cells.int("attempt"),
            maxAttempts: try cells.int("max_attempts"), timeoutMs: try cells["timeout_ms"].decode(Int64.self),
            turnsCompleted: try cells.int("turns_completed"), maxTurns: try cells.int("max_turns"),
            result: try cells.bytes("result"), failure: try failure(cells), parentTaskID: try cells["parent_task_id"].decode(Int64?.self),
            createdAt: try cells["created_at"].decode(Int64.self), startedAt: try cells["started_at"].decode(Int64?.self),
            finishedAt: try cells["finished_at"].decode(Int64?.self), payload: includePayload ? try cells.bytes("payload") : nil,
            url: try cells["url"].decode(String?.self), details: details)
    }

    static func failure(_ cells: PostgresRandomAccessRow) throws -> TaskFailure? {
        guard let message = try cells["error_message"].decode(String?.self) else { return nil }
        return TaskFailure(message: message, code: try cells["error_code"].decode(String?.self) ?? "",
                           retryable: try cells["error_retryable"].decode(Bool?.self) ?? false)
    }

    /// What `task` reads but the payload, which only a call that asks for it reads (results never do).
    static let taskColumns = """
        t.id, t.batch_id, t.custom_id, t.agent, t.state, t.priority, t.attempt, t.max_attempts, t.timeout_ms,
        t.turns_completed, t.max_turns, t.result, t.error_message, t.error_code, t.error_retryable, t.parent_task_id,
        t.created_at, t.started_at, t.finished_at, t.url, t.status_code, t.request_id, t.prompt_tokens,
        t.completion_tokens, t.total_tokens
        """

    static let eventColumns = """
        sequence, kind, timestamp, owner_id, batch_id, task_id, custom_id, parent_task_id, progress, counters,
        attempt, turn, retry_delay_ms, error_message, error_code, error_retryable, creator_uid
        """

    static func event(_ row: PostgresRow) throws -> EventRecord {
        let cells = row.makeRandomAccess()
        let creator = try cells["creator_uid"].decode(Int64?.self)
        return EventRecord(
            sequence: try cells["sequence"].decode(Int64.self),
            kind: EventKind(rawValue: try cells["kind"].decode(String.self)) ?? .batchProgress,
            timestamp: try cells["timestamp"].decode(Int64.self), ownerID: try cells["owner_id"].decode(String.self),
            batchID: try cells["batch_id"].decode(Int64.self), taskID: try cells["task_id"].decode(Int64?.self),
            customID: try cells["custom_id"].decode(String?.self), parentTaskID: try cells["parent_task_id"].decode(Int64?.self),
            progress: try cells["progress"].decode(Double?.self),
            counters: try cells["counters"].decode(String?.self).flatMap(BatchCounters.init(json:)),
            attempt: try cells.optionalInt("attempt"), turn: try cells.optionalInt("turn"),
            retryDelayMs: try cells["retry_delay_ms"].decode(Int64?.self), failure: try failure(cells),
            creatorUID: creator.map { UInt32(truncatingIfNeeded: $0) })
    }

    static func runnable(_ row: PostgresRow, batchID: BatchID, ownerID: String, agent: String) throws -> RunnableTask {
        let cells = row.makeRandomAccess()
        var task = RunnableTask(
            id: try cells["id"].decode(Int64.self), batchID: batchID, ownerID: ownerID,
            customID: try cells["custom_id"].decode(String.self), agent: agent, priority: try cells["priority"].decode(Int32.self),
            attempt: try cells.int("attempt"), maxAttempts: try cells.int("max_attempts"),
            timeoutMs: try cells["timeout_ms"].decode(Int64.self), turnsCompleted: try cells.int("turns_completed"),
            maxTurns: try cells.int("max_turns"), parentTaskID: try cells["parent_task_id"].decode(Int64?.self))
        task.url = try cells["url"].decode(String?.self)
        return task
    }
}

extension PostgresRandomAccessRow {
    /// An INTEGER or BIGINT column as Int.
    func int(_ column: String) throws -> Int {
        try optionalInt(column) ?? 0
    }

    func optionalInt(_ column: String) throws -> Int? {
        let cell = self[column]
        if cell.dataType == .int4 { return try cell.decode(Int32?.self).map(Int.init) }
        return try cell.decode(Int64?.self).map(Int.init)
    }

    func bytes(_ column: String) throws -> [UInt8]? {
        try self[column].decode(ByteBuffer?.self).map { Array($0.readableBytesView) }
    }
}

