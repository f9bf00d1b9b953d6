import FanoutCore
import FanoutStore
import FanoutTestSupport
import Foundation

/// A fresh SQLite store in its own temporary directory.
func withStore<T>(_ body: (SQLiteStore, String) async throws -> T) async throws -> T {
    try await withTemporaryDirectory { directory in
        let path = directory + "/fanout.db"
        return try await body(try SQLiteStore(path: path), path)
    }
}

func newBatch(owner: String = "alice", agent: String = "echo", count: Int, maxTurns: Int = 0,
              metadata: [String: String] = [:]) -> NewBatch {
    NewBatch(ownerID: owner, agent: agent, metadata: metadata, deadlineAt: nil, creatorUID: 1000, maxTurns: maxTurns,
             tasks: (0..<count).map { NewTask(customID: "t\($0)", agent: agent, payload: Array("payload-\($0)".utf8),
                                               priority: Int32($0 % 3), maxAttempts: 2, timeoutMs: 500, maxTurns: maxTurns) })
}

func taskEvent(_ kind: EventKind, owner: String = "alice", batch: BatchID, task: TaskID, at: Milliseconds = 1_000) -> EventRecord {
    EventRecord(kind: kind, timestamp: at, ownerID: owner, batchID: batch, taskID: task, customID: "c\(task)", attempt: 1)
}

func snapshot(_ record: BatchRecord, state: BatchState, _ edit: (inout BatchCounters) -> Void, units: Int) -> BatchSnapshot {
    var counters = record.counters
    edit(&counters)
    return BatchSnapshot(id: record.id, state: state, counters: counters, progressUnits: units, startedAt: 2_000, finishedAt: nil)
}

/// A fresh store of `kind`: a SQLite file in a temporary directory, or a database of its own on
/// the suite's PostgreSQL server (`.postgresServer`).
func withFreshStore<T: Sendable>(on kind: StoreKind, _ body: @Sendable (any Store) async throws -> T) async throws -> T {
    switch kind {
    case .sqlite:
        try await withStore { store, _ in try await body(store) }
    case .postgres:
        try await PostgresTestServer.current().withStore(database: "c_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(20)) {
            try await body($0)
        }
    }
}

/// Reads a batch's pending tasks as the scheduler's window would: on a shared store this claims
/// them, which a task's start and end then require.
func claimPending(_ store: any Store, of inserted: InsertedBatch, agent: String = "echo") async throws {
    _ = try await store.pendingTasks(batchID: inserted.batch.id, agent: agent, after: nil, limit: 100_000, inlinePayloadBytes: 0)
}
