import FanoutCore
@testable import FanoutPostgresStore
import FanoutStore
import FanoutTestSupport
import PostgresNIO
import Testing

/// `PostgresStore` against a real PostgreSQL: each test on a database of its own.
@Suite(.postgresServer) struct PostgresStoreTests {
    func withStore<T: Sendable>(_ name: String, _ body: @Sendable (PostgresStore) async throws -> T) async throws -> T {
        try await PostgresTestServer.current().withStore(database: name, body)
    }

    @Test func anInsertedBatchReadsBackWithItsTasksInWindowOrder() async throws {
        try await withStore("insert_read") { store in
            let batch = newBatch(count: 6, metadata: ["team": "search"])
            let inserted = try store.insertBatch(batch, now: 1_000)
            #expect(inserted.taskIDs.count == 6)
            let read = try #require(try await store.batch(inserted.batch.id))
            #expect(read.counters.total == 6 && read.counters.pending == 6 && read.state == .pending)
            #expect(read.metadata == ["team": "search"] && read.creatorUID == 1000)
            let task = try #require(try await store.task(inserted.taskIDs[2], includePayload: true))
            #expect(task.customID == "t2" && task.ownerID == "alice" && task.priority == 2 && task.maxAttempts == 2)
            #expect(task.payload == Array("payload-2".utf8))
            #expect(try await store.payload(of: inserted.taskIDs[5]) == Array("payload-5".utf8))

            // Highest priority first, then by id; the cursor continues where a window stopped.
            let first = try await store.pendingTasks(batchID: inserted.batch.id, agent: "echo", after: nil, limit: 4, inlinePayloadBytes: 1_000)
            #expect(first.map(\.customID) == ["t2", "t5", "t1", "t4"])
            #expect(first[0].payload == Array("payload-2".utf8))
            let rest = try await store.pendingTasks(batchID: inserted.batch.id, agent: "echo", after: first.last?.cursor, limit: 4,
                                                    inlinePayloadBytes: 0)
            #expect(rest.map(\.customID) == ["t0", "t3"])
            #expect(rest.allSatisfy { $0.payload == nil })
        }
    }

    @Test func aBatchOfSeveralInsertStatementsKeepsItsOrderAndItsURLs() async throws {
        try await withStore("insert_chunks") { store in
            var batch = newBatch(count: PostgresStatements.tasksPerInsert * 2 + 500)
            for index in stride(from: 0, to: batch.tasks.count, by: 3) { batch.tasks[index].url = "/v1/chat/completions" }
            let inserted = try store.insertBatch(batch, now: 1_000)
            #expect(inserted.taskIDs.count == batch.tasks.count && inserted.taskIDs == inserted.taskIDs.sorted())
            for index in [0, 1, 2_000, 2_001, batch.tasks.count - 1] {
                let task = try #require(try await store.task(inserted.taskIDs[index], includePayload: true))
                #expect(task.customID == "t\(index)" && task.payload == Array("payload-\(index)".utf8))
                #expect(task.url == (index % 3 == 0 ? "/v1/chat/completions" : nil))
            }
        }
    }

    @Test func aCommitWritesTaskChangesSnapshotsAndEventsWithOneGaplessSequence() async throws {
        try await withStore("commit_events") { store in
            let inserted = try store.insertBatch(newBatch(count: 2), now: 1_000)
            let (batchID, ids) = (inserted.batch.id, inserted.taskIDs)
            #expect(try store.writer.lastEventSequence() == 0)
            // Tasks start where they were claimed: through the window read.
            #expect(try await store.pendingTasks(batchID: batchID, agent: "echo", after: nil, limit: 10, inlinePayloadBytes: 0).count == 2)
            var changes = ChangeSet()
            changes.tasks = [.started(ids[0], attempt: 1, at: 2_000), .started(ids[1], attempt: 1, at: 2_000)]
            changes.events = [taskEvent(.taskStarted, batch: batchID, task: ids[0]), taskEvent(.taskStarted, batch: batchID, task: ids[1])]
            changes.batches[batchID] = snapshot(inserted.batch, state: .processing, { $0.pending = 0; $0.running = 2 }, units: 0)
            #expect(try store.commit(changes).map(\.sequence) == [1, 2])

            changes = ChangeSet()
            changes.tasks = [
                .finished(ids[0], state: .completed, result: Array("ok".utf8), failure: nil, turnsCompleted: 0, at: 3_000,
                          details: ResponseDetails(statusCode: 200, requestID: "req-1", usage: TokenUsage(promptTokens: 3, completionTokens: 4, totalTokens: 7))),
                .finished(ids[1], state: .failed, result: nil, failure: TaskFailure(message: "boom", code: "E1", retryable: true),
                          turnsCompleted: 0, at: 3_000),
            ]
            // This daemon's own count is off (as when others ran some of the batch), and it announces an end:
            // the row takes the tasks' moves, and the end is the database's, announced once.
            var stale = inserted.batch
            stale.counters.pending = 2
            changes.events = [taskEvent(.taskCompleted, batch: batchID, task: ids[0]), taskEvent(.taskFailed, batch: batchID, task: ids[1]),
                              EventRecord(kind: .batchCompleted, timestamp: 3_000, ownerID: "alice", batchID: batchID, progress: 0,
                                          counters: stale.counters)]
            changes.batches[batchID] = snapshot(stale, state: .completed, { $0.running = 5 }, units: 0)
            changes.batches[batchID]?.finishedAt = 3_000
            let (committed, ended) = try store.commitReportingEnded(changes)
            #expect(committed.map(\.sequence) == [3, 4, 5, 6])
            #expect(committed.map(\.kind) == [.taskCompleted, .taskFailed, .batchProgress, .batchCompleted])
            #expect(committed.last?.counters?.completed == 1 && committed.last?.counters?.failed == 1 && committed.last?.progress == 100)
            #expect(ended.map(\.id) == [batchID] && ended.first?.state == .completed)

            let batch = try #require(try await store.batch(batchID))
            #expect(batch.state == .completed && batch.counters.completed == 1 && batch.counters.failed == 1 && batch.progress.units == 2)
            #expect(batch.counters.pending == 0 && batch.counters.running == 0 && batch.usage.totalTokens == 7 && batch.finishedAt == 3_000)
            let results = try await store.results(batchID: batchID, afterTaskID: 0, limit: 10)
            #expect(results.map(\.state) == [.completed, .failed])
            #expect(results[0].result == Array("ok".utf8) && results[0].details.statusCode == 200 && results[0].details.usage?.totalTokens == 7)
            #expect(results[1].failure == TaskFailure(message: "boom", code: "E1", retryable: true))
            // Paged by bytes: the first result alone fills a page of one byte, the second comes next.
            #expect(try await store.results(batchID: batchID, afterTaskID: 0, limit: 10, maxBytes: 1).map(\.id) == [ids[0]])

            let all = try await store.events(after: 0, upTo: nil, filter: EventFilter(ownerID: "alice"), limit: 100)
            #expect(all.map(\.sequence) == [1, 2, 3, 4, 5, 6])
            #expect(all.map(\.kind) == [.taskStarted, .taskStarted, .taskCompleted, .taskFailed, .batchProgress, .batchCompleted])
            let page = try await store.eventPage(after: 1, upTo: 3, filter: EventFilter(ownerID: "alice", kinds: [.taskStarted]), limit: 10)
            #expect(page.events.map(\.sequence) == [2] && page.firstAvailable == 1)
            #expect(try await store.lastEventSequence() == 6)
            #expect(try await store.events(after: 0, upTo: nil, filter: EventFilter(ownerID: "bob"), limit: 10).isEmpty)

            // Retention from the oldest end; numbers are never reused afterwards.
            #expect(try store.trimEvents(keepingLast: 1, olderThan: nil, limit: 100) == 5)
            #expect(try await store.firstEventSequence() == 6)
            let next = try store.commit({ var more = ChangeSet(); more.events = [taskEvent(.taskTurn, batch: batchID, task: ids[0])]; return more }())
            #expect(next.map(\.sequence) == [7])
            // An empty log still knows the newest number, and a reader learns nothing before it is left.
            #expect(try store.trimEvents(keepingLast: 0, olderThan: nil, limit: 100) == 2)
            #expect(try await store.lastEventSequence() == 7)
            #expect(try await store.eventPage(after: 0, upTo: nil, filter: EventFilter(ownerID: ""), limit: 10).firstAvailable == 8)
        }
    }

    @Test func aCommitStuckBehindAnotherSessionsLockFailsAfterTheStatementTimeout() async throws {
        try await PostgresTestServer.current().withStore(database: "writer_timeout", writerStatementTimeoutMs: 300) { store in
            let inserted = try store.insertBatch(newBatch(count: 1), now: 1_000)
            var changes = ChangeSet()
            changes.batches[inserted.batch.id] = snapshot(inserted.batch, state: .processing, { $0.running = 1 }, units: 0)
            // Another session holds the batch row: the commit loop must not wait for it for ever.
            try await store.client.withTransaction(logger: store.logger) { connection in
                try await connection.query("SELECT id FROM batches WHERE id = \(inserted.batch.id) FOR UPDATE", logger: store.logger)
                let started = ContinuousClock.now
                do {
                    _ = try store.commit(changes)
                    Issue.record("the commit went through a row another session held")
                } catch let error as FanoutError {
                    #expect(error.kind == .unavailable, "\(error)")
                    #expect(error.message.contains("statement timeout"), "\(error)")
                }
                #expect(ContinuousClock.now - started < .seconds(10))
            }
            // The lock released, the same commit goes through (the writer's connection survived the timeout).
            _ = try store.commit(changes)
            #expect(try await store.batch(inserted.batch.id)?.state == .processing)
        }
    }

    /// The commit loop retries a failed commit with the same changes. When only the answer to its
    /// COMMIT was lost, the changes were written: written again, their events would be published twice.
    @Test func aCommitWhoseAnswerWasLostIsNotWrittenTwice() async throws {
        try await withStore("lost_answer") { store in
            let inserted = try store.insertBatch(newBatch(count: 2), now: 1_000)
            let (batchID, ids) = (inserted.batch.id, inserted.taskIDs)
            #expect(try await store.pendingTasks(batchID: batchID, agent: "echo", after: nil, limit: 10, inlinePayloadBytes: 0).count == 2)
            var changes = ChangeSet()
            changes.tasks = [.started(ids[0], attempt: 1, at: 2_000),
                             .finished(ids[0], state: .completed, result: [1], failure: nil, turnsCompleted: 0, at: 2_100)]
            changes.events = [taskEvent(.taskStarted, batch: batchID, task: ids[0]), taskEvent(.taskCompleted, batch: batchID, task: ids[0])]

            store.losesNextCommitAnswer.store(true, ordering: .relaxed)
            #expect(throws: (any Error).self) { try store.commitReportingEnded(changes) }
            // Retried as the commit loop does: nothing more is written.
            #expect(try store.commitReportingEnded(changes).events.isEmpty)
            #expect(try await store.events(after: 0, upTo: nil, filter: EventFilter(ownerID: ""), limit: 10).map(\.kind)
                    == [.taskStarted, .taskCompleted])
            #expect(try await store.batch(batchID)?.counters.completed == 1)

            // A commit of other changes after one whose answer was lost gets a number of its own.
            var next = ChangeSet()
            next.tasks = [.started(ids[1], attempt: 1, at: 3_000)]
            next.events = [taskEvent(.taskStarted, batch: batchID, task: ids[1])]
            #expect(try store.commitReportingEnded(next).events.map(\.sequence) == [3])
            #expect(try await store.lastEventSequence() == 3)

            // A commit that failed before its COMMIT is written by its retry, once.
            var failing = ChangeSet()
            failing.events = [taskEvent(.taskCompleted, batch: batchID, task: ids[1])]
            failing.batches[batchID] = BatchSnapshot(id: batchID, state: .processing, counters: BatchCounters(), progressUnits: 0,
                                                     startedAt: 2_000, finishedAt: nil)
            _ = try await store.rows(PostgresQuery(unsafeSQL: "ALTER TABLE events ADD CONSTRAINT fail_once CHECK (kind <> 'task_completed' OR task_id <> \(ids[1]))"))
            #expect(throws: (any Error).self) { try store.commitReportingEnded(failing) }
            _ = try await store.rows("ALTER TABLE events DROP CONSTRAINT fail_once")
            #expect(try store.commitReportingEnded(failing).events.map(\.sequence).count == 1)
            #expect(try await store.events(after: 3, upTo: nil, filter: EventFilter(ownerID: ""), limit: 10).map(\.kind) == [.taskCompleted])
        }
    }

    @Test func aStagedBatchIsInvisibleUntilPublishedAndGoneWhenDiscarded() async throws {
        try await withStore("staging") { store in
            var header = newBatch(count: 0)
            header.tasks = []
            let staged = try await store.createStagedBatch(header, now: 1_000)
            try await store.appendStagedTasks(newBatch(count: 3).tasks, to: staged, parentTaskID: nil, now: 1_000)
            try await store.appendStagedTasks(newBatch(count: 2).tasks, to: staged, parentTaskID: nil, now: 1_000)
            #expect(try await store.batch(staged) == nil)
            let published = try await store.publishStagedBatch(staged)
            #expect(published.counters.total == 5 && published.state == .pending)
            #expect(try await store.batches(ownerID: "alice", creatorUID: nil, limit: 10, beforeID: nil).map(\.id) == [staged])

            let dropped = try await store.createStagedBatch(header, now: 1_000)
            try await store.appendStagedTasks(newBatch(count: 2).tasks, to: dropped, parentTaskID: nil, now: 1_000)
            try await store.discardStagedBatch(dropped)
            await #expect(throws: FanoutError.self) { try await store.publishStagedBatch(dropped) }
        }
    }

    @Test func recoveryTakesBackOnlyWhatNoDaemonHolds() async throws {
        try await withStore("recover") { store in
            let inserted = try store.insertBatch(newBatch(count: 4), now: 1_000)
            let ids = inserted.taskIDs
            // Rows no claim covers (written before claims existed): task 0 on its first of two attempts,
            // task 1 on its last. Task 2 runs on another daemon, which is alive; task 3 is still pending.
            _ = try await store.rows("""
                UPDATE tasks SET state = 'running', attempt = CASE WHEN id = \(ids[1]) THEN 2 ELSE 1 END,
                    claimed_by = CASE WHEN id = \(ids[2]) THEN 'another-daemon' END,
                    lease_expires_at = CASE WHEN id = \(ids[2]) THEN 9000000000000 END
                WHERE id = ANY(\(Array(ids[0...2])))
                """)
            _ = try await store.rows("UPDATE batches SET pending = 1, running = 3 WHERE id = \(inserted.batch.id)")

            let recovered = try store.recover(now: 5_000)
            #expect(recovered.requeued == 1)
            #expect(recovered.interruptedFailures.map(\.taskID) == [ids[1]])
            #expect(recovered.interruptedFailures.first?.failure?.code == "interrupted")
            let batch = try #require(recovered.activeBatches.first)
            #expect(batch.counters.pending == 2 && batch.counters.failed == 1 && batch.counters.running == 1)
            // Which agents to claim for is the scheduler's call (the agents it runs).
            #expect(recovered.pendingAgents.isEmpty)
            #expect(try await store.task(ids[1], includePayload: false)?.state == .failed)
            #expect(try await store.task(ids[2], includePayload: false)?.state == .running)
        }
    }

    @Test func retryFailedReopensOnlyTheAskedStatesOfAFinishedBatch() async throws {
        try await withStore("reopen") { store in
            let inserted = try store.insertBatch(newBatch(count: 2), now: 1_000)
            let ids = inserted.taskIDs
            await #expect(throws: FanoutError.self) {
                try await store.reopenTasks(batchID: inserted.batch.id, states: [.failed], now: 2_000)
            }
            _ = try await store.pendingTasks(batchID: inserted.batch.id, agent: "echo", after: nil, limit: 10, inlinePayloadBytes: 0)
            var changes = ChangeSet()
            changes.tasks = [
                .finished(ids[0], state: .completed, result: [1], failure: nil, turnsCompleted: 0, at: 2_000),
                .finished(ids[1], state: .failed, result: nil, failure: TaskFailure(message: "no"), turnsCompleted: 0, at: 2_000),
            ]
            changes.batches[inserted.batch.id] = snapshot(inserted.batch, state: .completed, { $0.pending = 0; $0.completed = 1; $0.failed = 1 },
                                                          units: 2)
            _ = try store.commit(changes)
            let reopened = try await store.reopenTasks(batchID: inserted.batch.id, states: [.failed], now: 3_000)
            #expect(reopened.reopened == 1 && reopened.agents == ["echo"])
            #expect(reopened.batch.state == .processing && reopened.batch.counters.pending == 1 && reopened.batch.counters.completed == 1)
            #expect(try await store.task(ids[1], includePayload: false)?.state == .pending)
        }
    }
}
