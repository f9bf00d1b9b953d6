import FanoutCore

/// A commit's events as the database has them. Each daemon's scheduler counts
/// only its own tasks, so its batch events are rewritten: progress carries the
/// batch's counters as committed, and a batch's last progress event and its
/// terminal event go out once, from the commit that ended the batch — whether
/// or not that daemon's scheduler knew the batch had ended. Events of task
/// changes the database refused (the task was reclaimed) are dropped.
struct CommittedBatchEvents {
    let fenced: Set<TaskID>
    private var counted: [BatchID: BatchRecord] = [:]
    private(set) var endedBatches: [BatchRecord] = []
    private var endedAt: [BatchID: Milliseconds] = [:]

    init(fenced: Set<TaskID>) {
        self.fenced = fenced
    }

    /// The batch's row after this commit's changes.
    mutating func counted(_ batch: BatchRecord) {
        counted[batch.id] = batch
    }

    /// This commit ended the batch.
    mutating func ended(_ batch: BatchRecord, at time: Milliseconds) {
        counted[batch.id] = batch
        endedBatches.append(batch)
        endedAt[batch.id] = time
    }

    func rewrite(_ events: [EventRecord]) -> [EventRecord] {
        var rewritten: [EventRecord] = []
        rewritten.reserveCapacity(events.count + endedBatches.count * 2)
        for var event in events {
            if let task = event.taskID, fenced.contains(task), !event.kind.isBatchEvent { continue }
            guard event.kind.isBatchEvent else {
                rewritten.append(event)
                continue
            }
            // The end goes out below, from the database's row; an end the database does not see is not one.
            if endedAt[event.batchID] != nil || event.kind != .batchProgress { continue }
            if let batch = counted[event.batchID] {
                event.counters = batch.counters
                event.progress = batch.progress.percent
            }
            rewritten.append(event)
        }
        for batch in endedBatches {
            let time = endedAt[batch.id] ?? batch.finishedAt ?? 0
            rewritten.append(Self.event(.batchProgress, batch, at: time))
            rewritten.append(Self.event(Self.terminalKind(of: batch.state), batch, at: time))
        }
        return rewritten
    }

    static func terminalKind(of state: BatchState) -> EventKind {
        switch state {
        case .cancelled: .batchCancelled
        case .failed: .batchFailed
        default: .batchCompleted
        }
    }

    static func event(_ kind: EventKind, _ batch: BatchRecord, at time: Milliseconds) -> EventRecord {
        EventRecord(kind: kind, timestamp: time, ownerID: batch.ownerID, batchID: batch.id, parentTaskID: batch.parentTaskID,
                    progress: batch.progress.percent, counters: batch.counters, creatorUID: batch.creatorUID)
    }
}
