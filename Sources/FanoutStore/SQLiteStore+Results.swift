import FanoutCore
import Foundation
import GRDB

extension SQLiteStore {
    public func results(batchID: BatchID, afterTaskID: TaskID, limit: Int, maxBytes: Int) async throws -> [TaskRecord] {
        try await read { db in
            // One batch, one owner: read once rather than joined onto every row.
            let owner = try String.fetchOne(db, sql: "SELECT owner_id FROM batches WHERE id = ?", arguments: [batchID]) ?? ""
            // A cursor, so reading stops at the byte budget: the rows after the
            // cut are never decoded, and the next page starts with them.
            let rows = try Row.fetchCursor(db, sql: """
                SELECT \(Self.resultColumns)
                FROM tasks t
                WHERE t.batch_id = ? AND t.id > ? AND t.state IN ('completed', 'failed', 'cancelled', 'expired')
                ORDER BY t.id LIMIT ?
                """, arguments: [batchID, afterTaskID, limit])
            var records: [TaskRecord] = []
            records.reserveCapacity(min(limit, 1_024))
            var bytes = 0
            while let row = try rows.next() {
                let record = try Self.resultRecord(row, batchID: batchID, owner: owner)
                let size = record.resultPageBytes
                if !records.isEmpty && size > maxBytes - bytes { break }
                bytes += size
                records.append(record)
            }
            return records
        }
    }

    /// The columns `resultRecord` reads, by position: a results stream reads
    /// every row of a batch, and GRDB's lookups by name (case-insensitive,
    /// so lowercased per access) cost more than the decoding itself.
    static let resultColumns = """
        t.id, t.custom_id, t.agent, t.state, t.priority, t.attempt, t.max_attempts, t.timeout_ms, t.turns_completed,
        t.max_turns, t.result, t.error_message, t.error_code, t.error_retryable, t.parent_task_id, t.created_at,
        t.started_at, t.finished_at, t.url, t.status_code, t.request_id, t.prompt_tokens, t.completion_tokens,
        t.total_tokens
        """

    static func resultRecord(_ row: Row, batchID: BatchID, owner: String) throws -> TaskRecord {
        let state: String = row[3]
        let message: String? = row[11]
        let totalTokens: Int64? = row[23]
        // The blob straight from SQLite into the array: one copy, not two via Data (nor a byte-by-byte one).
        let result = try row.withUnsafeData(atIndex: 10) { data in data.map { $0.withUnsafeBytes { [UInt8]($0) } } }
        return TaskRecord(
            id: row[0], batchID: batchID, customID: row[1], ownerID: owner, agent: row[2],
            state: TaskState(rawValue: state) ?? .failed, priority: row[4], attempt: row[5], maxAttempts: row[6],
            timeoutMs: row[7], turnsCompleted: row[8], maxTurns: row[9], result: result,
            failure: message.map { TaskFailure(message: $0, code: row[12] ?? "", retryable: row[13] ?? false) },
            parentTaskID: row[14], createdAt: row[15], startedAt: row[16], finishedAt: row[17], url: row[18],
            details: ResponseDetails(
                statusCode: row[19], requestID: row[20],
                usage: totalTokens.map { TokenUsage(promptTokens: row[21] ?? 0, completionTokens: row[22] ?? 0, totalTokens: $0) }))
    }
}
