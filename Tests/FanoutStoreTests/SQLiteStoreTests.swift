import FanoutTestSupport
import FanoutCore
import FanoutStore
import Foundation
import Testing

@Suite struct SQLiteStoreTests {
    // MARK: Insert and read back

    @Test func insertsABatchAndReadsItBack() async throws {
        try await withStore { (store, _) async throws in
            let request = newBatch(count: 5, maxTurns: 3, metadata: ["team": "search", "run": "7"])
            let inserted = try store.insertBatch(request, now: 1_234)
            #expect(inserted.taskIDs.count == 5)
            // Ids are assigned in the order the batch listed the tasks, ascending and contiguous.
            #expect(inserted.taskIDs == Array(inserted.taskIDs[0]...inserted.taskIDs[0] + 4))
            #expect(inserted.batch.state == .pending)
            #expect(inserted.batch.counters == BatchCounters(pending: 5))

            let batch = try #require(try await store.batch(inserted.batch.id))
            #expect(batch == inserted.batch)
            #expect(batch.ownerID == "alice")
            #expect(batch.agent == "echo")
            #expect(batch.state == .pending)
            #expect(batch.counters.total == 5)
            #expect(batch.counters.pending == 5)
            #expect(batch.progress == BatchProgress(totalTasks: 5, maxTurns: 3, units: 0))
            #expect(batch.metadata == ["team": "search", "run": "7"])
            #expect(batch.createdAt == 1_234)
            #expect(batch.startedAt == nil)
            #expect(batch.finishedAt == nil)
            #expect(batch.creatorUID == 1000)

            for (index, id) in inserted.taskIDs.enumerated() {
                let task = try #require(try await store.task(id, includePayload: true))
                #expect(task.id == id)
                #expect(task.batchID == batch.id)
                #expect(task.customID == "t\(index)")
                #expect(task.ownerID == "alice")
                #expect(task.agent == "echo")
                #expect(task.state == .pending)
                #expect(task.priority == Int32(index % 3))
                #expect(task.attempt == 0)
                #expect(task.maxAttempts == 2)
                #expect(task.timeoutMs == 500)
                #expect(task.maxTurns == 3)
                #expect(task.turnsCompleted == 0)
                #expect(task.result == nil)
                #expect(task.failure == nil)
                #expect(task.createdAt == 1_234)
                #expect(task.payload == Array("payload-\(index)".utf8))
                #expect(try await store.payload(of: id) == Array("payload-\(index)".utf8))
                #expect(try await store.task(id, includePayload: false)?.payload == nil)
            }
        }
    }

    @Test func binaryPayloadsSurviveUnchanged() async throws {
        try await withStore { (store, _) async throws in
            let bytes: [UInt8] = [0, 255, 0, 1, 0xC3, 0x28, 0]
            let inserted = try store.insertBatch(
                NewBatch(ownerID: "o", agent: "echo", tasks: [NewTask(customID: "bin", agent: "echo", payload: bytes),
                                                              NewTask(customID: "empty", agent: "echo", payload: [])]),
                now: 1)
            #expect(try await store.payload(of: inserted.taskIDs[0]) == bytes)
            #expect(try await store.payload(of: inserted.taskIDs[1]) == [])
        }
    }

    @Test func idsKeepGrowingAcrossBatches() async throws {
        try await withStore { (store, _) async throws in
            let first = try store.insertBatch(newBatch(count: 3), now: 1)
            let second = try store.insertBatch(newBatch(count: 2), now: 2)
            #expect(second.batch.id > first.batch.id)
            #expect(second.taskIDs[0] > first.taskIDs[2])
            #expect(second.taskIDs == [second.taskIDs[0], second.taskIDs[0] + 1])
        }
    }

    @Test func missingRowsAreNilOrNotFound() async throws {
        try await withStore { (store, _) async throws in
            #expect(try await store.batch(99) == nil)
            #expect(try await store.task(99, includePayload: true) == nil)
            await #expect(throws: FanoutError.notFound("task 99 does not exist")) { try await store.payload(of: 99) }
            #expect(try await store.lastEventSequence() == 0)
            #expect(try await store.events(after: 0, upTo: nil, filter: EventFilter(ownerID: ""), limit: 10).isEmpty)
        }
    }

    @Test func listsBatchesNewestFirstByOwnerAndCreator() async throws {
        try await withStore { (store, _) async throws in
            var ids: [BatchID] = []
            for index in 0..<5 {
                var batch = newBatch(owner: index.isMultiple(of: 2) ? "alice" : "bob", count: 1)
                batch.creatorUID = UInt32(100 + index % 2)
                ids.append(try store.insertBatch(batch, now: Milliseconds(index)).batch.id)
            }
            #expect(try await store.batches(ownerID: nil, creatorUID: nil, limit: 10, beforeID: nil).map(\.id) == ids.reversed())
            #expect(try await store.batches(ownerID: "alice", creatorUID: nil, limit: 10, beforeID: nil).map(\.id) == [ids[4], ids[2], ids[0]])
            #expect(try await store.batches(ownerID: nil, creatorUID: 101, limit: 10, beforeID: nil).map(\.id) == [ids[3], ids[1]])
            #expect(try await store.batches(ownerID: nil, creatorUID: nil, limit: 2, beforeID: nil).map(\.id) == [ids[4], ids[3]])
            #expect(try await store.batches(ownerID: nil, creatorUID: nil, limit: 2, beforeID: ids[3]).map(\.id) == [ids[2], ids[1]])
            #expect(try await store.batches(ownerID: "alice", creatorUID: 101, limit: 10, beforeID: nil).isEmpty)
        }
    }

    // MARK: Commit

    @Test func commitAssignsIncreasingSequencesAndUpdatesRows() async throws {
        try await withStore { (store, _) async throws in
            let inserted = try store.insertBatch(newBatch(count: 3, maxTurns: 2), now: 1_000)
            let batchID = inserted.batch.id
            let (a, b, c) = (inserted.taskIDs[0], inserted.taskIDs[1], inserted.taskIDs[2])

            var first = ChangeSet()
            first.tasks = [.started(a, attempt: 1, at: 2_000), .started(b, attempt: 1, at: 2_001)]
            first.batches[batchID] = snapshot(inserted.batch, state: .processing, { $0.pending = 1; $0.running = 2 }, units: 0)
            first.events = [taskEvent(.taskStarted, batch: batchID, task: a), taskEvent(.taskStarted, batch: batchID, task: b)]
            let stored1 = try store.commit(first)
            #expect(stored1.map(\.sequence) == [1, 2])
            #expect(stored1.map(\.taskID) == [a, b])

            var second = ChangeSet()
            second.tasks = [
                .turns(a, turnsCompleted: 1),
                .finished(a, state: .completed, result: Array("done".utf8), failure: nil, turnsCompleted: 2, at: 3_000),
                .requeued(b, state: .retryWait, failure: TaskFailure(message: "busy", code: "429", retryable: true)),
                .started(c, attempt: 1, at: 3_001),
            ]
            second.batches[batchID] = snapshot(inserted.batch, state: .processing,
                                               { $0.pending = 0; $0.running = 1; $0.retryWait = 1; $0.completed = 1 }, units: 2)
            second.events = [taskEvent(.taskCompleted, batch: batchID, task: a), taskEvent(.taskRetrying, batch: batchID, task: b),
                             taskEvent(.taskStarted, batch: batchID, task: c)]
            let stored2 = try store.commit(second)
            #expect(stored2.map(\.sequence) == [3, 4, 5])
            #expect(stored2.map(\.kind) == [.taskCompleted, .taskRetrying, .taskStarted])
            #expect(try await store.lastEventSequence() == 5)

            let taskA = try #require(try await store.task(a, includePayload: false))
            #expect(taskA.state == .completed)
            #expect(taskA.attempt == 1)
            #expect(taskA.startedAt == 2_000)
            #expect(taskA.finishedAt == 3_000)
            #expect(taskA.turnsCompleted == 2)
            #expect(taskA.result == Array("done".utf8))
            #expect(taskA.failure == nil)

            let taskB = try #require(try await store.task(b, includePayload: false))
            #expect(taskB.state == .retryWait)
            #expect(taskB.attempt == 1)
            #expect(taskB.failure == TaskFailure(message: "busy", code: "429", retryable: true))
            #expect(taskB.finishedAt == nil)

            let taskC = try #require(try await store.task(c, includePayload: false))
            #expect(taskC.state == .running)
            #expect(taskC.startedAt == 3_001)

            let batch = try #require(try await store.batch(batchID))
            #expect(batch.state == .processing)
            #expect(batch.counters.pending == 0)
            #expect(batch.counters.running == 1)
            #expect(batch.counters.retryWait == 1)
            #expect(batch.counters.completed == 1)
            #expect(batch.counters.total == 3)
            #expect(batch.progress.units == 2)
            #expect(batch.startedAt == 2_000)
        }
    }

    @Test func aStartAndFinishInOneCommitKeepBoth() async throws {
        try await withStore { (store, _) async throws in
            let inserted = try store.insertBatch(newBatch(count: 2), now: 1_000)
            let (a, b) = (inserted.taskIDs[0], inserted.taskIDs[1])
            var changes = ChangeSet()
            changes.tasks = [
                .started(a, attempt: 2, at: 2_000),
                .started(b, attempt: 1, at: 2_001),
                .finished(a, state: .failed, result: nil, failure: TaskFailure(message: "no", code: "E1"), turnsCompleted: 0,
                          at: 2_500, details: ResponseDetails(statusCode: 500, requestID: "req-1",
                                                              usage: TokenUsage(promptTokens: 3, completionTokens: 4, totalTokens: 7))),
            ]
            changes.events = [taskEvent(.taskStarted, batch: inserted.batch.id, task: a),
                              taskEvent(.taskFailed, batch: inserted.batch.id, task: a)]
            #expect(try store.commit(changes).map(\.sequence) == [1, 2])

            let taskA = try #require(try await store.task(a, includePayload: false))
            #expect(taskA.state == .failed)
            #expect(taskA.attempt == 2)
            #expect(taskA.startedAt == 2_000)
            #expect(taskA.finishedAt == 2_500)
            #expect(taskA.failure == TaskFailure(message: "no", code: "E1"))
            #expect(taskA.details == ResponseDetails(statusCode: 500, requestID: "req-1",
                                                     usage: TokenUsage(promptTokens: 3, completionTokens: 4, totalTokens: 7)))
            let taskB = try #require(try await store.task(b, includePayload: false))
            #expect(taskB.state == .running)
            #expect(taskB.attempt == 1)
            #expect(taskB.startedAt == 2_001)
        }
    }

    @Test func emptyCommitWritesNothing() async throws {
        try await withStore { (store, _) async throws in
            #expect(try store.commit(ChangeSet()).isEmpty)
            #expect(try await store.lastEventSequence() == 0)
        }
    }

    @Test func eventFieldsRoundTrip() async throws {
        try await withStore { (store, _) async throws in
            let inserted = try store.insertBatch(newBatch(count: 1), now: 1)
            var counters = BatchCounters(pending: 1)
            counters.move(from: .pending, to: .failed)
            let failure = TaskFailure(message: "no", code: "E1", retryable: false)
            var changes = ChangeSet()
            changes.events = [
                EventRecord(kind: .taskRetrying, timestamp: 77, ownerID: "alice", batchID: inserted.batch.id,
                            taskID: inserted.taskIDs[0], customID: "t0", parentTaskID: 5, attempt: 2, turn: 3,
                            retryDelayMs: 150, failure: failure),
                EventRecord(kind: .batchProgress, timestamp: 78, ownerID: "alice", batchID: inserted.batch.id,
                            progress: 62.5, counters: counters),
            ]
            let stored = try store.commit(changes)
            let read = try await store.events(after: 0, upTo: nil, filter: EventFilter(ownerID: ""), limit: 10)
            #expect(read == stored)
            #expect(read[0].sequence == 1)
            #expect(read[0].retryDelayMs == 150)
            #expect(read[0].failure == failure)
            #expect(read[0].parentTaskID == 5)
            #expect(read[0].turn == 3)
            #expect(read[0].attempt == 2)
            #expect(read[1].progress == 62.5)
            #expect(read[1].counters == counters)
            #expect(read[1].taskID == nil)
        }
    }

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

    // MARK: Results

    @Test func resultsPageThroughTerminalTasksInIDOrder() async throws {
        try await withStore { (store, _) async throws in
            let inserted = try store.insertBatch(newBatch(count: 10), now: 1)
            let other = try store.insertBatch(newBatch(count: 2), now: 1)
            let ids = inserted.taskIDs
            var changes = ChangeSet()
            // Terminal: 0, 2, 3, 5, 8, 9 (finished out of order); 1 running, 4 retry_wait, 6 and 7 pending.
            let terminal: [(Int, TaskState)] = [(9, .completed), (2, .failed), (5, .cancelled), (0, .completed), (8, .expired), (3, .completed)]
            for (index, state) in terminal {
                changes.tasks.append(.finished(ids[index], state: state, result: state == .completed ? [UInt8(index)] : nil,
                                               failure: state == .failed ? TaskFailure(message: "bad \(index)") : nil,
                                               turnsCompleted: 0, at: 50))
            }
            changes.tasks.append(.started(ids[1], attempt: 1, at: 40))
            changes.tasks.append(.started(ids[4], attempt: 1, at: 40))
            changes.tasks.append(.requeued(ids[4], state: .retryWait, failure: nil))
            changes.tasks.append(.finished(other.taskIDs[0], state: .completed, result: [], failure: nil, turnsCompleted: 0, at: 50))
            _ = try store.commit(changes)

            let all = try await store.results(batchID: inserted.batch.id, afterTaskID: 0, limit: 100)
            #expect(all.map(\.id) == [0, 2, 3, 5, 8, 9].map { ids[$0] })
            #expect(all.map(\.state) == [.completed, .failed, .completed, .cancelled, .expired, .completed])
            #expect(all[0].result == [0])
            #expect(all[1].failure == TaskFailure(message: "bad 2"))
            #expect(all.allSatisfy { $0.payload == nil && $0.ownerID == "alice" && $0.batchID == inserted.batch.id })

            let page1 = try await store.results(batchID: inserted.batch.id, afterTaskID: 0, limit: 4)
            #expect(page1.map(\.id) == [0, 2, 3, 5].map { ids[$0] })
            let page2 = try await store.results(batchID: inserted.batch.id, afterTaskID: page1.last!.id, limit: 4)
            #expect(page2.map(\.id) == [8, 9].map { ids[$0] })
            let page3 = try await store.results(batchID: inserted.batch.id, afterTaskID: page2.last!.id, limit: 4)
            #expect(page3.isEmpty)
            // Starting in the middle of the id range, between terminal tasks.
            #expect(try await store.results(batchID: inserted.batch.id, afterTaskID: ids[3], limit: 1).map(\.id) == [ids[5]])
            #expect(try await store.results(batchID: other.batch.id, afterTaskID: 0, limit: 10).map(\.id) == [other.taskIDs[0]])
        }
    }

    // MARK: Events

    @Test func eventsFilterByOwnerBatchKindsAndRange() async throws {
        try await withStore { (store, _) async throws in
            let alice1 = try store.insertBatch(newBatch(owner: "alice", count: 2), now: 1)
            let alice2 = try store.insertBatch(newBatch(owner: "alice", count: 1), now: 1)
            let bob = try store.insertBatch(newBatch(owner: "bob", count: 1), now: 1)
            var changes = ChangeSet()
            changes.events = [
                taskEvent(.taskStarted, batch: alice1.batch.id, task: alice1.taskIDs[0]),            // 1
                taskEvent(.taskStarted, owner: "bob", batch: bob.batch.id, task: bob.taskIDs[0]),     // 2
                taskEvent(.taskCompleted, batch: alice1.batch.id, task: alice1.taskIDs[0]),          // 3
                taskEvent(.taskStarted, batch: alice2.batch.id, task: alice2.taskIDs[0]),            // 4
                taskEvent(.taskFailed, owner: "bob", batch: bob.batch.id, task: bob.taskIDs[0]),      // 5
                taskEvent(.taskCompleted, batch: alice2.batch.id, task: alice2.taskIDs[0]),          // 6
                EventRecord(kind: .batchCompleted, timestamp: 9, ownerID: "alice", batchID: alice2.batch.id, progress: 100), // 7
            ]
            _ = try store.commit(changes)
            func sequences(after: EventSequence = 0, upTo: EventSequence? = nil, _ filter: EventFilter, limit: Int = 100) async throws -> [EventSequence] {
                try await store.events(after: after, upTo: upTo, filter: filter, limit: limit).map(\.sequence)
            }
            #expect(try await sequences(EventFilter(ownerID: "")) == [1, 2, 3, 4, 5, 6, 7])
            #expect(try await sequences(EventFilter(ownerID: "alice")) == [1, 3, 4, 6, 7])
            #expect(try await sequences(EventFilter(ownerID: "bob")) == [2, 5])
            #expect(try await sequences(EventFilter(ownerID: "carol")) == [])
            #expect(try await sequences(EventFilter(ownerID: "alice", batchID: alice2.batch.id)) == [4, 6, 7])
            #expect(try await sequences(EventFilter(ownerID: "", batchID: bob.batch.id)) == [2, 5])
            #expect(try await sequences(EventFilter(ownerID: "alice", kinds: [.taskCompleted])) == [3, 6])
            #expect(try await sequences(EventFilter(ownerID: "", kinds: [.taskStarted, .batchCompleted])) == [1, 2, 4, 7])
            #expect(try await sequences(EventFilter(ownerID: "alice", kinds: [.taskCompleted, .batchCompleted], batchID: alice2.batch.id)) == [6, 7])
            #expect(try await sequences(EventFilter(ownerID: "bob", kinds: [.taskCompleted])) == [])
            // Range (after, upTo] and limit.
            #expect(try await sequences(after: 2, EventFilter(ownerID: "")) == [3, 4, 5, 6, 7])
            #expect(try await sequences(after: 2, upTo: 5, EventFilter(ownerID: "")) == [3, 4, 5])
            #expect(try await sequences(after: 2, upTo: 5, EventFilter(ownerID: "alice")) == [3, 4])
            #expect(try await sequences(after: 0, EventFilter(ownerID: ""), limit: 3) == [1, 2, 3])
            #expect(try await sequences(after: 7, EventFilter(ownerID: "")) == [])
            #expect(try await sequences(after: 3, upTo: 3, EventFilter(ownerID: "")) == [])
            let bobEvents = try await store.events(after: 0, upTo: nil, filter: EventFilter(ownerID: "bob"), limit: 10)
            #expect(bobEvents.map(\.kind) == [.taskStarted, .taskFailed])
            #expect(bobEvents.allSatisfy { $0.ownerID == "bob" && $0.taskID == bob.taskIDs[0] })
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
