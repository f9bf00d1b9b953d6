import FanoutCore
import FanoutStore
import FanoutTestSupport
import Foundation
import Testing

/// A provider's answer details (url, status, request id, usage) as the store keeps them.
@Suite struct ResponseDetailsStoreTests {
    @Test func detailsSurviveAReopenAndRetryFailedRecountsTheBatchUsage() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory + "/fanout.db"
            var batch = newBatch(count: 3)
            for index in batch.tasks.indices { batch.tasks[index].url = "/v1/chat/completions" }
            let (batchID, ids): (BatchID, [TaskID]) = try {
                let store = try SQLiteStore(path: path)
                let inserted = try store.insertBatch(batch, now: 1)
                let ids = inserted.taskIDs
                let ok = ResponseDetails(statusCode: 200, requestID: "req_1", usage: TokenUsage(promptTokens: 3, completionTokens: 4, totalTokens: 7))
                let refused = ResponseDetails(statusCode: 400, requestID: "req_2")
                var changes = ChangeSet()
                changes.tasks = [
                    .started(ids[0], attempt: 1, at: 10),
                    .finished(ids[0], state: .completed, result: Array("{}".utf8), failure: nil, turnsCompleted: 0, at: 11, details: ok),
                    .finished(ids[1], state: .completed, result: Array("{}".utf8), failure: nil, turnsCompleted: 0, at: 12, details: ok),
                    .finished(ids[2], state: .failed, result: Array("{\"error\":{}}".utf8), failure: TaskFailure(message: "bad", code: "invalid_value"),
                              turnsCompleted: 0, at: 13, details: refused),
                ]
                var counters = inserted.batch.counters
                for final in [TaskState.completed, .completed, .failed] {
                    counters.move(from: .pending, to: .running)
                    counters.move(from: .running, to: final)
                }
                changes.batches[inserted.batch.id] = BatchSnapshot(
                    id: inserted.batch.id, state: .completed, counters: counters, progressUnits: 3, startedAt: 10, finishedAt: 13,
                    usage: TokenUsage(promptTokens: 6, completionTokens: 8, totalTokens: 14))
                _ = try store.commit(changes)
                return (inserted.batch.id, ids)
            }()

            let store = try SQLiteStore(path: path)
            _ = try store.recover(now: 100)
            #expect(try await store.batch(batchID)?.usage == TokenUsage(promptTokens: 6, completionTokens: 8, totalTokens: 14))
            let first = try #require(try await store.task(ids[0], includePayload: false))
            #expect(first.url == "/v1/chat/completions")
            #expect(first.details.statusCode == 200)
            #expect(first.details.requestID == "req_1")
            #expect(first.details.usage?.totalTokens == 7)
            let results = try await store.results(batchID: batchID, afterTaskID: 0, limit: 10)
            #expect(results.map(\.details.statusCode) == [200, 200, 400])
            #expect(results[2].result == Array("{\"error\":{}}".utf8), "a refused task keeps the provider's body")

            // RetryFailed clears the failed task's answer and recounts the batch's usage from its rows.
            _ = try await store.reopenTasks(batchID: batchID, states: [.failed], now: 200)
            let reopened = try #require(try await store.task(ids[2], includePayload: false))
            #expect(reopened.details == ResponseDetails())
            #expect(reopened.url == "/v1/chat/completions", "the url stays with the task")
            #expect(try await store.batch(batchID)?.usage == TokenUsage(promptTokens: 6, completionTokens: 8, totalTokens: 14))
        }
    }
}
