import FanoutCore
import FanoutStore
import Synchronization

/// A `Store` that fails on demand: the next N commits, or every write until
/// a time, as a full disk or an I/O error would. Reads always work.
final class FaultyStore: Store, StoreWriter {
    struct InjectedFault: Error, CustomStringConvertible {
        var description: String { "injected fault: disk full" }
    }

    private struct Faults {
        var failNextCommits = 0
        var failWritesUntil: ContinuousClock.Instant?
        var failedCommits = 0
        var reopenDelay: Duration?
    }

    let base: SQLiteStore
    private let faults = Mutex(Faults())

    init(_ base: SQLiteStore) { self.base = base }

    func failNextCommits(_ count: Int) { faults.withLock { $0.failNextCommits = count } }
    func failWrites(for duration: Duration) { faults.withLock { $0.failWritesUntil = .now + duration } }
    /// Every write fails until `heal()`.
    func failWrites() { faults.withLock { $0.failWritesUntil = .now + .seconds(3_600) } }
    func heal() { faults.withLock { $0.failWritesUntil = nil } }
    var failedCommits: Int { faults.withLock { $0.failedCommits } }
    /// RetryFailed's reopening commits, then takes this long to return: a window for races.
    func delayReopen(by duration: Duration) { faults.withLock { $0.reopenDelay = duration } }

    private func writeFault(commit: Bool) throws {
        let fail = faults.withLock { faults -> Bool in
            var fail = false
            if commit && faults.failNextCommits > 0 {
                faults.failNextCommits -= 1
                fail = true
            }
            if let until = faults.failWritesUntil, ContinuousClock.now < until { fail = true }
            if fail && commit { faults.failedCommits += 1 }
            return fail
        }
        if fail { throw InjectedFault() }
    }

    var writer: any StoreWriter { self }

    // MARK: StoreWriter: the commit thread's writes

    func insertBatch(_ batch: NewBatch, now: Milliseconds) throws -> InsertedBatch {
        try writeFault(commit: false)
        return try base.insertBatch(batch, now: now)
    }
    func commit(_ changes: ChangeSet) throws -> [EventRecord] {
        try writeFault(commit: true)
        return try base.commit(changes)
    }
    func trimEvents(keepingLast: Int?, olderThan: Milliseconds?, limit: Int) throws -> Int {
        try writeFault(commit: false)
        return try base.trimEvents(keepingLast: keepingLast, olderThan: olderThan, limit: limit)
    }
    func recover(now: Milliseconds) throws -> RecoveredState { try base.recover(now: now) }
    func lastEventSequence() throws -> EventSequence { try base.writer.lastEventSequence() }

    // MARK: Store

    func createStagedBatch(_ batch: NewBatch, now: Milliseconds) async throws -> BatchID {
        try writeFault(commit: false)
        return try await base.createStagedBatch(batch, now: now)
    }
    func appendStagedTasks(_ tasks: [NewTask], to batch: BatchID, parentTaskID: TaskID?, now: Milliseconds) async throws {
        try writeFault(commit: false)
        try await base.appendStagedTasks(tasks, to: batch, parentTaskID: parentTaskID, now: now)
    }
    func publishStagedBatch(_ batch: BatchID) async throws -> BatchRecord { try await base.publishStagedBatch(batch) }
    func discardStagedBatch(_ batch: BatchID) async throws { try await base.discardStagedBatch(batch) }
    func batch(_ id: BatchID) async throws -> BatchRecord? { try await base.batch(id) }
    func batches(ownerID: String?, creatorUID: UInt32?, parentBatchID: BatchID?, limit: Int,
                 beforeID: BatchID?) async throws -> [BatchRecord] {
        try await base.batches(ownerID: ownerID, creatorUID: creatorUID, parentBatchID: parentBatchID, limit: limit, beforeID: beforeID)
    }
    func task(_ id: TaskID, includePayload: Bool) async throws -> TaskRecord? { try await base.task(id, includePayload: includePayload) }
    func childBatches(of parent: TaskID, attempt: Int) async throws -> [BatchRecord] {
        try await base.childBatches(of: parent, attempt: attempt)
    }
    func results(batchID: BatchID, afterTaskID: TaskID, limit: Int, maxBytes: Int) async throws -> [TaskRecord] {
        try await base.results(batchID: batchID, afterTaskID: afterTaskID, limit: limit, maxBytes: maxBytes)
    }
    func payload(of task: TaskID) async throws -> [UInt8] { try await base.payload(of: task) }
    func pendingTasks(batchID: BatchID, agent: String, after cursor: QueueCursor?, limit: Int,
                      inlinePayloadBytes: Int) async throws -> [RunnableTask] {
        try await base.pendingTasks(batchID: batchID, agent: agent, after: cursor, limit: limit, inlinePayloadBytes: inlinePayloadBytes)
    }
    func reopenTasks(batchID: BatchID, states: Set<TaskState>, now: Milliseconds) async throws -> ReopenedBatch {
        try writeFault(commit: false)
        let reopened = try await base.reopenTasks(batchID: batchID, states: states, now: now)
        if let delay = faults.withLock({ $0.reopenDelay }) { try await Task.sleep(for: delay) }
        return reopened
    }
    func events(after: EventSequence, upTo: EventSequence?, filter: EventFilter, limit: Int) async throws -> [EventRecord] {
        try await base.events(after: after, upTo: upTo, filter: filter, limit: limit)
    }
    func eventPage(after: EventSequence, upTo: EventSequence?, filter: EventFilter, limit: Int) async throws -> EventPage {
        try await base.eventPage(after: after, upTo: upTo, filter: filter, limit: limit)
    }
    func lastEventSequence() async throws -> EventSequence { try await base.lastEventSequence() }
    func firstEventSequence() async throws -> EventSequence? { try await base.firstEventSequence() }
}
