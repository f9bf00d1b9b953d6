import FanoutCore
import FanoutStore
import Foundation
import PostgresNIO

/// The commit loop's writes and recovery, blocking on the writer's connection.
extension PostgresStore {
    public func insertBatch(_ batch: NewBatch, now: Milliseconds) throws -> InsertedBatch {
        try writeTransaction { transaction in
            let batchID = try Self.insertedID(transaction.query(PostgresStatements.insertBatch(batch, state: "pending",
                                                                                              taskCount: batch.tasks.count, now: now)))
            var taskIDs: [TaskID] = []
            taskIDs.reserveCapacity(batch.tasks.count)
            for start in stride(from: 0, to: batch.tasks.count, by: PostgresStatements.tasksPerInsert) {
                let chunk = batch.tasks[start..<min(start + PostgresStatements.tasksPerInsert, batch.tasks.count)]
                let inserted = try transaction.query(PostgresStatements.insertTasks(chunk, batchID: batchID, parentTaskID: batch.parentTaskID,
                                                                                    now: now))
                taskIDs += try PostgresStatements.insertedTaskIDs(inserted.rows)
            }
            return InsertedBatch(batch, id: batchID, taskIDs: taskIDs, now: now)
        }
    }

    static func insertedID(_ result: PostgresQueryResult) throws -> Int64 {
        guard let row = result.rows.first else { throw PostgresSchemaError("an INSERT … RETURNING returned no row") }
        return try row.decode(Int64.self)
    }

    public func commit(_ changes: ChangeSet) throws -> [EventRecord] {
        try commitReportingEnded(changes).events
    }

    /// Several daemons change one batch's tasks at once: each task change returns what it moved,
    /// the batch row takes the sums (`BatchDelta`), and the commit that leaves it nothing to run
    /// ends it and writes its terminal events (`CommittedBatchEvents`). Changes to tasks another
    /// daemon holds now are dropped, with their events.
    ///
    /// A failed commit is retried by the commit loop with the same changes, under the same number:
    /// its receipt (`CommitReceipts`) says whether the failed attempt was written after all (only
    /// its answer lost), and then nothing is written again. Its ended batches are then learnt by
    /// the next poll of the shared store.
    public func commitReportingEnded(_ changes: ChangeSet) throws -> (events: [EventRecord], endedBatches: [BatchRecord]) {
        guard !changes.isEmpty else { return ([], []) }
        let number = commitNumber(for: changes)
        do {
            let written = try write(changes, as: number)
            commitEnded(number, changes: changes, written: true)
            return written
        } catch is CommitAlreadyWritten {
            commitEnded(number, changes: changes, written: true)
            logger.notice("a commit whose answer was lost had been written; it is not written again", metadata: ["commit": "\(number)"])
            return ([], [])
        } catch {
            commitEnded(number, changes: changes, written: false)
            throw error
        }
    }

    private func write(_ changes: ChangeSet, as number: Int64) throws -> (events: [EventRecord], endedBatches: [BatchRecord]) {
        try writeTransaction { transaction in
            guard try !transaction.query(CommitReceipts.record(number, daemon: daemonID)).rows.isEmpty else { throw CommitAlreadyWritten() }
            var deltas: [BatchID: BatchDelta] = [:]
            var fenced = Set<TaskID>()
            let statements = TaskChangeStatement.statements(for: changes.tasks, daemon: daemonID, leaseMs: leaseMs)
            if statements.count > 1 { try transaction.query(TaskChangeStatement.lockAll(changes.tasks)) }
            for statement in statements {
                var moved = Set<TaskID>()
                for row in try transaction.query(statement.query).rows {
                    let move = try TaskMove(row)
                    moved.insert(move.taskID)
                    deltas[move.batchID, default: BatchDelta()].add(move)
                }
                fenced.formUnion(statement.taskIDs.lazy.filter { !moved.contains($0) })
            }
            if !fenced.isEmpty {
                logger.warning("changes to tasks another daemon has reclaimed were dropped", metadata: ["tasks": "\(fenced.sorted())"])
            }
            var batchEvents = CommittedBatchEvents(fenced: fenced, snapshots: changes.batches)
            // In id order, the order every daemon locks batch rows in: no deadlock between two commits.
            // Batches with events but no change are read too: an event for a batch another daemon ended is dropped.
            let announced = changes.events.lazy.filter(\.kind.isBatchEvent).map(\.batchID)
            for id in Set(deltas.keys).union(changes.batches.keys).union(announced).sorted() {
                let snapshot = changes.batches[id]
                guard let row = try transaction.query(PostgresStatements.applyDelta(deltas[id] ?? BatchDelta(), to: id, snapshot: snapshot))
                    .rows.first else { continue }
                batchEvents.counted(try PostgresRows.batch(row))
                let now = snapshot?.finishedAt ?? WallClock.now
                if let ended = try transaction.query(PostgresStatements.finishIfDone(id, now: now)).rows.first {
                    batchEvents.ended(try PostgresRows.batch(ended), at: now)
                }
            }
            let events = batchEvents.rewrite(changes.events)
            guard !events.isEmpty else { return ([], batchEvents.endedBatches) }
            try transaction.query("SELECT pg_advisory_xact_lock(\(Self.eventsLockKey))")
            var stored = events
            for start in stride(from: 0, to: events.count, by: PostgresStatements.eventsPerInsert) {
                let end = min(start + PostgresStatements.eventsPerInsert, events.count)
                let sequences = try PostgresStatements.insertedSequences(transaction.query(PostgresStatements.insertEvents(events[start..<end])).rows)
                guard sequences.count == end - start else { throw PostgresSchemaError("an events INSERT returned \(sequences.count) rows for \(end - start)") }
                for (offset, sequence) in sequences.enumerated() { stored[start + offset].sequence = sequence }
            }
            try transaction.query(PostgresStatements.recordLastSequence(stored[stored.count - 1].sequence))
            try transaction.query(PostgresStatements.notifyEvents)
            return (stored, batchEvents.endedBatches)
        }
    }

    public func lastEventSequence() throws -> EventSequence {
        try writeTransaction { transaction in try Self.lastSequence(rows: transaction.query(PostgresStatements.lastSequence).rows) }
    }

    public func trimEvents(keepingLast: Int?, olderThan: Milliseconds?, limit: Int) throws -> Int {
        guard limit > 0, keepingLast != nil || olderThan != nil else { return 0 }
        return try writeTransaction { transaction in
            guard let bounds = try transaction.query("SELECT min(sequence), max(sequence) FROM events").rows.first,
                  case let (first?, last?) = try bounds.decode((Int64?, Int64?).self)
            else { return 0 }
            // As in SQLiteStore.trimEvents: at most `limit` from the oldest end, the log kept contiguous.
            let (end, overflow) = first.addingReportingOverflow(EventSequence(limit) - 1)
            let stepEnd = overflow ? last : min(last, end)
            var through = first - 1
            if let keepingLast { through = max(through, last - EventSequence(max(0, keepingLast))) }
            if let olderThan, through < stepEnd {
                let kept = try transaction.query("""
                    SELECT sequence FROM events WHERE sequence > \(through) AND sequence <= \(stepEnd) AND timestamp >= \(olderThan)
                    ORDER BY sequence LIMIT 1
                    """).rows.first.map { try $0.decode(Int64.self) }
                through = max(through, (kept ?? stepEnd + 1) - 1)
            }
            through = min(through, stepEnd)
            guard through >= first else { return 0 }
            return try transaction.query("DELETE FROM events WHERE sequence <= \(through)").metadata.rows ?? 0
        }
    }

    /// Recovery on a database other daemons may be using while this one starts: what they hold
    /// stays theirs. The tasks of a daemon that died are taken back when their leases expire
    /// (`reclaimExpiredLeases`), also this daemon's own from before a crash, since it starts
    /// with a new id. Only rows no claim covers (written before claims existed) are recovered
    /// here as a single daemon would. Active batches come back for the scheduler to take up;
    /// it claims their tasks for the agents it runs.
    public func recover(now: Milliseconds) throws -> RecoveredState {
        try writeTransaction { transaction in
            let abandoned = try transaction.query(PostgresStatements.abandonedStagedBatches).rows.map { try $0.decode(Int64.self) }
            for statement in PostgresStatements.discardStagedBatches(abandoned) { try transaction.query(statement) }
            for statement in PostgresStatements.discardUnfinishedFiles { try transaction.execute(statement) }
            // A task found running without a claim was cut short by a crash: that attempt counts (see SQLiteStore.recover).
            let unclaimed = "batch_id IN (SELECT id FROM batches WHERE state IN ('pending', 'processing')) AND claimed_by IS NULL"
            var touched = Set<BatchID>()
            for row in try transaction.query(PostgresQuery(unsafeSQL: """
                UPDATE tasks SET crashes = crashes + 1 WHERE \(unclaimed) AND state = 'running' RETURNING batch_id
                """)).rows {
                touched.insert(try row.decode(Int64.self))
            }
            var interrupted: [EventRecord] = []
            let exhausted = try transaction.query(PostgresQuery(unsafeSQL: """
                SELECT t.id, t.batch_id, t.custom_id, t.attempt, t.max_attempts, t.crashes, t.parent_task_id, b.owner_id, b.creator_uid
                FROM tasks t JOIN batches b ON b.id = t.batch_id
                WHERE t.\(unclaimed) AND t.state = 'running' AND t.attempt >= t.max_attempts
                """))
            for row in exhausted.rows {
                let (id, batchID, customID, attempt, maxAttempts, crashes, parentTaskID, ownerID, creator) =
                    try row.decode((Int64, Int64, String, Int32, Int32, Int32, Int64?, String, Int64).self)
                let failure = TaskFailure(
                    message: "fanoutd stopped unexpectedly while this task was running, \(crashes) time(s); "
                        + "its \(maxAttempts) attempt(s) are used up (max_attempts)",
                    code: "interrupted", retryable: false)
                try transaction.query("""
                    UPDATE tasks SET state = 'failed', error_message = \(failure.message), error_code = \(failure.code),
                        error_retryable = false, finished_at = \(now) WHERE id = \(id)
                    """)
                interrupted.append(EventRecord(
                    kind: .taskFailed, timestamp: now, ownerID: ownerID, batchID: batchID, taskID: id, customID: customID,
                    parentTaskID: parentTaskID, attempt: Int(attempt), failure: failure, creatorUID: UInt32(truncatingIfNeeded: creator)))
            }
            var requeued = 0
            for row in try transaction.query(PostgresQuery(unsafeSQL: """
                UPDATE tasks SET state = 'pending' WHERE \(unclaimed) AND state IN ('running', 'retry_wait') RETURNING batch_id
                """)).rows {
                touched.insert(try row.decode(Int64.self))
                requeued += 1
            }
            if !touched.isEmpty {
                let ids = touched.sorted()
                try transaction.query(PostgresStatements.lockBatches(ids))
                var recount = DynamicQuery(PostgresStatements.recountBatch)
                recount.sql += " WHERE id = ANY(\(recount.bind(ids)))"
                try transaction.query(recount.query)
            }
            let batches = try transaction.query("SELECT * FROM batches WHERE state IN ('pending', 'processing') ORDER BY id")
                .rows.map(PostgresRows.batch)
            // Waiting tasks nobody holds: this daemon takes them, and resumes them when their children end.
            let waiting = try transaction.query("""
                UPDATE tasks t SET claimed_by = \(daemonID),
                    lease_expires_at = \(unescaped: ClaimStatements.serverNowMs) + \(leaseMs)
                FROM batches b
                WHERE b.id = t.batch_id AND b.state IN ('pending', 'processing') AND t.state = 'waiting_children' AND t.claimed_by IS NULL
                RETURNING t.id, t.batch_id, t.custom_id, t.agent, t.priority, t.attempt, t.max_attempts, t.timeout_ms,
                          t.turns_completed, t.max_turns, t.parent_task_id, t.url, b.owner_id
                """).rows.map { row in
                let cells = row.makeRandomAccess()
                return try PostgresRows.runnable(row, batchID: try cells["batch_id"].decode(Int64.self),
                                                 ownerID: try cells["owner_id"].decode(String.self), agent: try cells["agent"].decode(String.self))
            }.sorted { $0.id < $1.id }
            // Which agents' tasks to claim is the scheduler's to say (the agents it runs): none listed here.
            return RecoveredState(activeBatches: batches, pendingAgents: [:], requeued: requeued,
                                  interruptedFailures: interrupted, waitingTasks: waiting)
        }
    }
}
