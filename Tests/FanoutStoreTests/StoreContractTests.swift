import FanoutCore
import FanoutStore
import FanoutTestSupport
import Foundation
import Testing

/// What every store does alike, run on SQLite and on PostgreSQL: inserts and reads, commits,
/// results and events. What only one engine does stays in its own suite.
@Suite(.postgresServer) struct StoreContractTests {
    @Test(arguments: StoreKind.allCases) func insertsABatchAndReadsItBack(on kind: StoreKind) async throws {
        try await withFreshStore(on: kind) { store async throws in
            let request = newBatch(count: 5, maxTurns: 3, metadata: ["team": "search", "run": "7"])
            let inserted = try store.writer.insertBatch(request, now: 1_234)
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

    @Test(arguments: StoreKind.allCases) func binaryPayloadsSurviveUnchanged(on kind: StoreKind) async throws {
        try await withFreshStore(on: kind) { store async throws in
            let bytes: [UInt8] = [0, 255, 0, 1, 0xC3, 0x28, 0]
            let inserted = try store.writer.insertBatch(
                NewBatch(ownerID: "o", agent: "echo", tasks: [NewTask(customID: "bin", agent: "echo", payload: bytes),
                                                              NewTask(customID: "empty", agent: "echo", payload: [])]),
                now: 1)
            #expect(try await store.payload(of: inserted.taskIDs[0]) == bytes)
            #expect(try await store.payload(of: inserted.taskIDs[1]) == [])
        }
    }

    @Test(arguments: StoreKind.allCases) func idsKeepGrowingAcrossBatches(on kind: StoreKind) async throws {
        try await withFreshStore(on: kind) { store async throws in
            let first = try store.writer.insertBatch(newBatch(count: 3), now: 1)
            let second = try store.writer.insertBatch(newBatch(count: 2), now: 2)
            #expect(second.batch.id > first.batch.id)
            #expect(second.taskIDs[0] > first.taskIDs[2])
            #expect(second.taskIDs == [second.taskIDs[0], second.taskIDs[0] + 1])
        }
    }

    @Test(arguments: StoreKind.allCases) func missingRowsAreNilOrNotFound(on kind: StoreKind) async throws {
        try await withFreshStore(on: kind) { store async throws in
            #expect(try await store.batch(99) == nil)
            #expect(try await store.task(99, includePayload: true) == nil)
            await #expect(throws: FanoutError.notFound("task 99 does not exist")) { try await store.payload(of: 99) }
            #expect(try await store.lastEventSequence() == 0)
            #expect(try await store.events(after: 0, upTo: nil, filter: EventFilter(ownerID: ""), limit: 10).isEmpty)
        }
    }

    @Test(arguments: StoreKind.allCases) func listsBatchesNewestFirstByOwnerAndCreator(on kind: StoreKind) async throws {
        try await withFreshStore(on: kind) { store async throws in
            var ids: [BatchID] = []
            for index in 0..<5 {
                var batch = newBatch(owner: index.isMultiple(of: 2) ? "alice" : "bob", count: 1)
                batch.creatorUID = UInt32(100 + index % 2)
                ids.append(try store.writer.insertBatch(batch, now: Milliseconds(index)).batch.id)
            }
            #expect(try await store.batches(ownerID: nil, creatorUID: nil, limit: 10, beforeID: nil).map(\.id) == ids.reversed())
            #expect(try await store.batches(ownerID: "alice", creatorUID: nil, limit: 10, beforeID: nil).map(\.id) == [ids[4], ids[2], ids[0]])
            #expect(try await store.batches(ownerID: nil, creatorUID: 101, limit: 10, beforeID: nil).map(\.id) == [ids[3], ids[1]])
            #expect(try await store.batches(ownerID: nil, creatorUID: nil, limit: 2, beforeID: nil).map(\.id) == [ids[4], ids[3]])
            #expect(try await store.batches(ownerID: nil, creatorUID: nil, limit: 2, beforeID: ids[3]).map(\.id) == [ids[2], ids[1]])
            #expect(try await store.batches(ownerID: "alice", creatorUID: 101, limit: 10, beforeID: nil).isEmpty)
        }
    }

    @Test(arguments: StoreKind.allCases) func commitAssignsIncreasingSequencesAndUpdatesRows(on kind: StoreKind) async throws {
        try await withFreshStore(on: kind) { store async throws in
            let inserted = try store.writer.insertBatch(newBatch(count: 3, maxTurns: 2), now: 1_000)
            let batchID = inserted.batch.id
            let (a, b, c) = (inserted.taskIDs[0], inserted.taskIDs[1], inserted.taskIDs[2])
            try await claimPending(store, of: inserted)

            var first = ChangeSet()
            first.tasks = [.started(a, attempt: 1, at: 2_000), .started(b, attempt: 1, at: 2_001)]
            first.batches[batchID] = snapshot(inserted.batch, state: .processing, { $0.pending = 1; $0.running = 2 }, units: 0)
            first.events = [taskEvent(.taskStarted, batch: batchID, task: a), taskEvent(.taskStarted, batch: batchID, task: b)]
            let stored1 = try store.writer.commit(first)
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
            let stored2 = try store.writer.commit(second)
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

    @Test(arguments: StoreKind.allCases) func aStartAndFinishInOneCommitKeepBoth(on kind: StoreKind) async throws {
        try await withFreshStore(on: kind) { store async throws in
            let inserted = try store.writer.insertBatch(newBatch(count: 2), now: 1_000)
            let (a, b) = (inserted.taskIDs[0], inserted.taskIDs[1])
            try await claimPending(store, of: inserted)
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
            #expect(try store.writer.commit(changes).map(\.sequence) == [1, 2])

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

    @Test(arguments: StoreKind.allCases) func emptyCommitWritesNothing(on kind: StoreKind) async throws {
        try await withFreshStore(on: kind) { store async throws in
            #expect(try store.writer.commit(ChangeSet()).isEmpty)
            #expect(try await store.lastEventSequence() == 0)
        }
    }

    @Test(arguments: StoreKind.allCases) func eventFieldsRoundTrip(on kind: StoreKind) async throws {
        try await withFreshStore(on: kind) { store async throws in
            let inserted = try store.writer.insertBatch(newBatch(count: 1), now: 1)
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
            let stored = try store.writer.commit(changes)
            let read = try await store.events(after: 0, upTo: nil, filter: EventFilter(ownerID: ""), limit: 10)
            #expect(read == stored)
            #expect(read[0].sequence == 1)
            #expect(read[0].retryDelayMs == 150)
            #expect(read[0].failure == failure)
            #expect(read[0].parentTaskID == 5)
            #expect(read[0].turn == 3)
            #expect(read[0].attempt == 2)
            #expect(read[1].taskID == nil)
            switch kind {
            case .sqlite:
                #expect(read[1].progress == 62.5)
                #expect(read[1].counters == counters)
            case .postgres:
                // Other daemons change the batch too: its events carry the batch row's figures, not the commit's.
                let batch = try #require(try await store.batch(inserted.batch.id))
                #expect(read[1].counters == batch.counters)
                #expect(read[1].progress == batch.progress.percent)
            }
        }
    }

    @Test(arguments: StoreKind.allCases) func resultsPageThroughTerminalTasksInIDOrder(on kind: StoreKind) async throws {
        try await withFreshStore(on: kind) { store async throws in
            let inserted = try store.writer.insertBatch(newBatch(count: 10), now: 1)
            let other = try store.writer.insertBatch(newBatch(count: 2), now: 1)
            try await claimPending(store, of: inserted)
            try await claimPending(store, of: other)
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
            _ = try store.writer.commit(changes)

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

    @Test(arguments: StoreKind.allCases) func eventsFilterByOwnerBatchKindsAndRange(on kind: StoreKind) async throws {
        try await withFreshStore(on: kind) { store async throws in
            let alice1 = try store.writer.insertBatch(newBatch(owner: "alice", count: 2), now: 1)
            let alice2 = try store.writer.insertBatch(newBatch(owner: "alice", count: 1), now: 1)
            let bob = try store.writer.insertBatch(newBatch(owner: "bob", count: 1), now: 1)
            var changes = ChangeSet()
            changes.events = [
                taskEvent(.taskStarted, batch: alice1.batch.id, task: alice1.taskIDs[0]),            // 1
                taskEvent(.taskStarted, owner: "bob", batch: bob.batch.id, task: bob.taskIDs[0]),     // 2
                taskEvent(.taskCompleted, batch: alice1.batch.id, task: alice1.taskIDs[0]),          // 3
                taskEvent(.taskStarted, batch: alice2.batch.id, task: alice2.taskIDs[0]),            // 4
                taskEvent(.taskFailed, owner: "bob", batch: bob.batch.id, task: bob.taskIDs[0]),      // 5
                taskEvent(.taskCompleted, batch: alice2.batch.id, task: alice2.taskIDs[0]),          // 6
                EventRecord(kind: .batchProgress, timestamp: 9, ownerID: "alice", batchID: alice2.batch.id, progress: 0), // 7
            ]
            _ = try store.writer.commit(changes)
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
            #expect(try await sequences(EventFilter(ownerID: "", kinds: [.taskStarted, .batchProgress])) == [1, 2, 4, 7])
            #expect(try await sequences(EventFilter(ownerID: "alice", kinds: [.taskCompleted, .batchProgress], batchID: alice2.batch.id)) == [6, 7])
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

    @Test(arguments: StoreKind.allCases) func endedBatchesAreFoundAmongOthersInOneCall(on kind: StoreKind) async throws {
        try await withFreshStore(on: kind) { store async throws in
            let done = try store.writer.insertBatch(newBatch(count: 1), now: 1_000)
            let running = try store.writer.insertBatch(newBatch(count: 1), now: 1_000)
            try await claimPending(store, of: done)
            var changes = ChangeSet()
            changes.tasks = [.started(done.taskIDs[0], attempt: 1, at: 2_000),
                             .finished(done.taskIDs[0], state: .completed, result: [1], failure: nil, turnsCompleted: 0, at: 2_100)]
            var ended = snapshot(done.batch, state: .completed, { $0.pending = 0; $0.completed = 1 }, units: 1)
            ended.finishedAt = 2_100
            changes.batches[done.batch.id] = ended
            _ = try store.writer.commit(changes)

            let found = try await store.endedBatches(among: [done.batch.id, running.batch.id, 999])
            #expect(found.map(\.id) == [done.batch.id])
            #expect(found.first?.state == .completed && found.first?.counters.completed == 1)
            #expect(try await store.endedBatches(among: []).isEmpty)
        }
    }
}
