import FanoutCore
import FanoutStore
import Foundation
import Synchronization

/// A `Store` that fails on demand: the next N commits, or every write until
/// a time, as a full disk or an I/O error would. Reads always work.
final class FaultyStore: Store {
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

    func insertBatch(_ batch: NewBatch, now: Milliseconds) throws -> InsertedBatch {
        try writeFault(commit: false)
        return try base.insertBatch(batch, now: now)
    }
    func createStagedBatch(_ batch: NewBatch, now: Milliseconds) throws -> BatchID {
        try writeFault(commit: false)
        return try base.createStagedBatch(batch, now: now)
    }
    func appendStagedTasks(_ tasks: [NewTask], to batch: BatchID, parentTaskID: TaskID?, now: Milliseconds) throws {
        try writeFault(commit: false)
        try base.appendStagedTasks(tasks, to: batch, parentTaskID: parentTaskID, now: now)
    }
    func publishStagedBatch(_ batch: BatchID) throws -> BatchRecord { try base.publishStagedBatch(batch) }
    func discardStagedBatch(_ batch: BatchID) throws { try base.discardStagedBatch(batch) }
    func commit(_ changes: ChangeSet) throws -> [EventRecord] {
        try writeFault(commit: true)
        return try base.commit(changes)
    }
    func recover(now: Milliseconds) throws -> RecoveredState { try base.recover(now: now) }
    func batch(_ id: BatchID) throws -> BatchRecord? { try base.batch(id) }
    func batches(ownerID: String?, creatorUID: UInt32?, parentBatchID: BatchID?, limit: Int, beforeID: BatchID?) throws -> [BatchRecord] {
        try base.batches(ownerID: ownerID, creatorUID: creatorUID, parentBatchID: parentBatchID, limit: limit, beforeID: beforeID)
    }
    func task(_ id: TaskID, includePayload: Bool) throws -> TaskRecord? { try base.task(id, includePayload: includePayload) }
    func childBatches(of parent: TaskID, attempt: Int) throws -> [BatchRecord] { try base.childBatches(of: parent, attempt: attempt) }
    func results(batchID: BatchID, afterTaskID: TaskID, limit: Int, maxBytes: Int) throws -> [TaskRecord] {
        try base.results(batchID: batchID, afterTaskID: afterTaskID, limit: limit, maxBytes: maxBytes)
    }
    func payload(of task: TaskID) throws -> [UInt8] { try base.payload(of: task) }
    func pendingTasks(batchID: BatchID, agent: String, after cursor: QueueCursor?, limit: Int,
                      inlinePayloadBytes: Int) throws -> [RunnableTask] {
        try base.pendingTasks(batchID: batchID, agent: agent, after: cursor, limit: limit, inlinePayloadBytes: inlinePayloadBytes)
    }
    func reopenTasks(batchID: BatchID, states: Set<TaskState>, now: Milliseconds) throws -> ReopenedBatch {
        try writeFault(commit: false)
        let reopened = try base.reopenTasks(batchID: batchID, states: states, now: now)
        if let delay = faults.withLock({ $0.reopenDelay }) {
            let (seconds, attoseconds) = delay.components
            Thread.sleep(forTimeInterval: Double(seconds) + Double(attoseconds) / 1e18)
        }
        return reopened
    }
    func events(after: EventSequence, upTo: EventSequence?, filter: EventFilter, limit: Int) throws -> [EventRecord] {
        try base.events(after: after, upTo: upTo, filter: filter, limit: limit)
    }
    func eventPage(after: EventSequence, upTo: EventSequence?, filter: EventFilter, limit: Int) throws -> EventPage {
        try base.eventPage(after: after, upTo: upTo, filter: filter, limit: limit)
    }
    func lastEventSequence() throws -> EventSequence { try base.lastEventSequence() }
    func firstEventSequence() throws -> EventSequence? { try base.firstEventSequence() }
    func trimEvents(keepingLast: Int?, olderThan: Milliseconds?, limit: Int) throws -> Int {
        try writeFault(commit: false)
        return try base.trimEvents(keepingLast: keepingLast, olderThan: olderThan, limit: limit)
    }
}
