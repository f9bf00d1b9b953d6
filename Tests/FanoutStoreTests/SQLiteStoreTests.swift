import FanoutTestSupport
import FanoutCore
import FanoutStore
import Foundation
import Testing

/// What only the SQLite store does: recovery of its own file, durability across a reopen, and
/// several stores on one file. What every store does is in `StoreContractTests`.
@Suite struct SQLiteStoreTests {
    // MARK: Recovery

    @Test func recoverRequeuesAndRecountsFromTaskRows() async throws {
        try await withStore { (store, _) async throws in
            // Six tasks, max_turns 4: after the changes below
            // t0 completed (4 units), t1 failed after 1 turn (4), t2 running with 2 turns (2),
            // t3 retry_wait with 5 reported turns (capped: 4), t4 cancelled (4), t5 pending (0).
            let inserted = try store.insertBatch(newBatch(count: 6, maxTurns: 4), now: 1)
            let ids = inserted.taskIDs
            var changes = ChangeSet()
            changes.tasks = [
                .started(ids[0], attempt: 1, at: 10),
                .finished(ids[0], state: .completed, result: [1], failure: nil, turnsCompleted: 4, at: 11),
                .started(ids[1], attempt: 1, at: 10),
                .finished(ids[1], state: .failed, result: nil, failure: TaskFailure(message: "x"), turnsCompleted: 1, at: 12),
                .started(ids[2], attempt: 2, at: 10),
                .turns(ids[2], turnsCompleted: 2),
                .started(ids[3], attempt: 1, at: 10),
                .turns(ids[3], turnsCompleted: 5),
                .requeued(ids[3], state: .retryWait, failure: TaskFailure(message: "later", retryable: true)),
                .finished(ids[4], state: .cancelled, result: nil, failure: nil, turnsCompleted: 0, at: 13),
            ]
            // A deliberately wrong snapshot: counters and units that do not match the rows.
            var wrong = BatchCounters(pending: 6)
            wrong.pending = 0
            wrong.completed = 5
            wrong.running = 1
            changes.batches[inserted.batch.id] = BatchSnapshot(id: inserted.batch.id, state: .processing, counters: wrong,
                                                               progressUnits: 23, startedAt: 10, finishedAt: nil)
            _ = try store.commit(changes)
            #expect(try await store.batch(inserted.batch.id)?.counters.completed == 5)

            // A finished batch is left alone by recovery.
            let done = try store.insertBatch(newBatch(owner: "bob", count: 1), now: 2)
            var finish = ChangeSet()
            var doneCounters = BatchCounters(pending: 1)
            doneCounters.move(from: .pending, to: .running)
            doneCounters.move(from: .running, to: .completed)
            finish.tasks = [.finished(done.taskIDs[0], state: .completed, result: [], failure: nil, turnsCompleted: 0, at: 20)]
            finish.batches[done.batch.id] = BatchSnapshot(id: done.batch.id, state: .completed, counters: doneCounters,
                                                          progressUnits: 1, startedAt: 20, finishedAt: 20)
            _ = try store.commit(finish)

            let recovered = try store.recover(now: 100)
            // t2 was running on its last attempt (2 of 2): the crash used it up, so it fails, with an event.
            #expect(recovered.requeued == 1)
            #expect(recovered.interruptedFailures.map(\.taskID) == [ids[2]])
            #expect(recovered.interruptedFailures.first?.kind == .taskFailed)
            #expect(recovered.interruptedFailures.first?.failure?.code == "interrupted")
            #expect(recovered.interruptedFailures.first?.creatorUID == 1000)
            #expect(recovered.activeBatches.map(\.id) == [inserted.batch.id])
            let batch = try #require(recovered.activeBatches.first)
            #expect(batch.state == .processing)
            #expect(batch.counters.total == 6)
            #expect(batch.counters.pending == 2)
            #expect(batch.counters.running == 0)
            #expect(batch.counters.retryWait == 0)
            #expect(batch.counters.waitingChildren == 0)
            #expect(batch.counters.completed == 1)
            #expect(batch.counters.failed == 2)
            #expect(batch.counters.cancelled == 1)
            #expect(batch.counters.expired == 0)
            #expect(batch.progress.units == 20) // 4 + 4 + 4 + 4 + 4 + 0
            #expect(abs(batch.progress.percent - 100.0 * 20 / 24) < 1e-9)
            #expect(try await store.batch(inserted.batch.id) == batch)

            // Pending again, in id order, keeping attempts and turns; read as the scheduler's window reads them.
            #expect(recovered.pendingAgents[inserted.batch.id] == ["echo"])
            let window = try await store.pendingTasks(batchID: inserted.batch.id, agent: "echo", after: nil, limit: 100, inlinePayloadBytes: 0)
            // The window comes in (priority desc, id) order.
            #expect(window.map(\.priority) == window.map(\.priority).sorted(by: >))
            let runnable = window.sorted { $0.id < $1.id }
            #expect(runnable.map(\.id) == [ids[3], ids[5]])
            #expect(runnable.map(\.attempt) == [1, 0])
            #expect(runnable.map(\.turnsCompleted) == [5, 0])
            #expect(runnable.allSatisfy { $0.ownerID == "alice" && $0.batchID == inserted.batch.id })
            #expect(runnable.map(\.customID) == ["t3", "t5"])
            #expect(runnable[0].maxAttempts == 2)
            #expect(runnable[0].timeoutMs == 500)
            #expect(runnable[0].maxTurns == 4)
            let crashed = try #require(try await store.task(ids[2], includePayload: false))
            #expect(crashed.state == .failed)
            #expect(crashed.attempt == 2)
            #expect(crashed.failure?.message.contains("stopped unexpectedly while this task was running, 1 time(s)") == true)
            #expect(try await store.task(ids[3], includePayload: false)?.state == .pending)

            let untouched = try #require(try await store.batch(done.batch.id))
            #expect(untouched.state == .completed)
            #expect(untouched.counters == doneCounters)

            // Recovering again changes nothing.
            let again = try store.recover(now: 200)
            #expect(again.requeued == 0)
            #expect(again.activeBatches == recovered.activeBatches)
            #expect(again.pendingAgents == recovered.pendingAgents)
        }
    }

    @Test func recoverWithoutMaxTurnsCountsTerminalTasks() async throws {
        try await withStore { (store, _) async throws in
            let inserted = try store.insertBatch(newBatch(count: 4), now: 1)
            var changes = ChangeSet()
            changes.tasks = [
                .started(inserted.taskIDs[0], attempt: 1, at: 5),
                .turns(inserted.taskIDs[0], turnsCompleted: 3), // turns do not count without max_turns
                .finished(inserted.taskIDs[1], state: .expired, result: nil, failure: nil, turnsCompleted: 0, at: 6),
            ]
            changes.batches[inserted.batch.id] = snapshot(inserted.batch, state: .processing, { $0.pending = 4 }, units: 3)
            _ = try store.commit(changes)
            let recovered = try store.recover(now: 10)
            let batch = try #require(recovered.activeBatches.first)
            #expect(batch.counters.pending == 3)
            #expect(batch.counters.expired == 1)
            #expect(batch.progress.units == 1)
            #expect(batch.progress.percent == 25)
            #expect(recovered.requeued == 1)
            let window = try await store.pendingTasks(batchID: inserted.batch.id, agent: "echo", after: nil, limit: 100, inlinePayloadBytes: 0)
            // The window comes in (priority desc, id) order.
            #expect(window.map(\.priority) == window.map(\.priority).sorted(by: >))
            let runnable = window.sorted { $0.id < $1.id }
            #expect(runnable.map(\.id) == [inserted.taskIDs[0], inserted.taskIDs[2], inserted.taskIDs[3]])
        }
    }

    // MARK: Durability across reopen

    @Test func dataSurvivesClosingAndReopening() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/fanout.db"
            let (batchID, taskIDs): (BatchID, [TaskID]) = try {
                let store = try SQLiteStore(path: path, durability: .full)
                let inserted = try store.insertBatch(newBatch(count: 3, maxTurns: 2), now: 5)
                var changes = ChangeSet()
                changes.tasks = [.started(inserted.taskIDs[0], attempt: 1, at: 6),
                                 .finished(inserted.taskIDs[0], state: .completed, result: Array("ok".utf8), failure: nil,
                                           turnsCompleted: 2, at: 7)]
                changes.batches[inserted.batch.id] = snapshot(inserted.batch, state: .processing,
                                                              { $0.pending = 2; $0.completed = 1 }, units: 2)
                changes.events = [taskEvent(.taskCompleted, batch: inserted.batch.id, task: inserted.taskIDs[0])]
                _ = try store.commit(changes)
                return (inserted.batch.id, inserted.taskIDs)
            }() // the store (and its pool) is released here

            let reopened = try SQLiteStore(path: path)
            let batch = try #require(try await reopened.batch(batchID))
            #expect(batch.state == .processing)
            #expect(batch.counters.completed == 1)
            #expect(batch.counters.pending == 2)
            #expect(batch.progress.units == 2)
            #expect(batch.progress.percent == 100.0 / 3.0)
            #expect(try await reopened.task(taskIDs[0], includePayload: false)?.result == Array("ok".utf8))
            #expect(try await reopened.payload(of: taskIDs[2]) == Array("payload-2".utf8))
            #expect(try await reopened.lastEventSequence() == 1)
            #expect(try await reopened.events(after: 0, upTo: nil, filter: EventFilter(ownerID: "alice"), limit: 10).map(\.kind) == [.taskCompleted])
            // New rows continue after the old ones.
            let next = try reopened.insertBatch(newBatch(count: 1), now: 8)
            #expect(next.batch.id == batchID + 1)
            #expect(next.taskIDs == [taskIDs[2] + 1])
            var more = ChangeSet()
            more.events = [taskEvent(.taskStarted, batch: next.batch.id, task: next.taskIDs[0])]
            #expect(try reopened.commit(more).map(\.sequence) == [2])
        }
    }

    @Test func twoStoresOnOneFileSeeEachOthersCommits() async throws {
        try await withStore { (store, path) async throws in
            let other = try SQLiteStore(path: path)
            let inserted = try store.insertBatch(newBatch(count: 1), now: 1)
            #expect(try await other.batch(inserted.batch.id)?.counters.total == 1)
        }
    }
}
