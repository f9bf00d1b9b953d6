import FanoutCore
import FanoutStore

/// A commit's events as the database has them. Each daemon's scheduler counts
/// only its own tasks, so its batch events are rewritten: progress carries the
/// batch's counters as committed, and a batch's last progress event and its
/// terminal event go out once, from the commit that ended the batch — whether
/// or not that daemon's scheduler knew the batch had ended. Events of task
/// changes the database refused (the task was reclaimed) are dropped.
struct CommittedBatchEvents {
    let fenced: Set<TaskID>
    /// The scheduler's own view of each batch at the end of the commit (its snapshot).
    let snapshots: [BatchID: BatchSnapshot]
    private var counted: [BatchID: BatchRecord] = [:]
    private(set) var endedBatches: [BatchRecord] = []
    private var endedAt: [BatchID: Milliseconds] = [:]

    init(fenced: Set<TaskID>, snapshots: [BatchID: BatchSnapshot] = [:]) {
        self.fenced = fenced
        self.snapshots = snapshots
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
            guard event.kind == .batchProgress else { continue }
            if let batch = counted[event.batchID] {
                // Ended by an earlier commit (another daemon's): nothing follows its terminal event.
                if batch.state.isTerminal && endedAt[batch.id] == nil { continue }
                shift(&event, to: batch)
            }
            // The last progress of an ended batch goes out below, with its end.
            if endedAt[event.batchID] != nil, event.progress ?? 0 >= 100 { continue }
            rewritten.append(event)
        }
        for batch in endedBatches {
            let time = endedAt[batch.id] ?? batch.finishedAt ?? 0
            rewritten.append(Self.event(.batchProgress, batch, at: time))
            rewritten.append(Self.event(Self.terminalKind(of: batch.state), batch, at: time))
        }
        return rewritten
    }

    /// A progress event carries what the scheduler counted when it decided it. The database's
    /// row adds what other daemons did: the difference between the row and the scheduler's own
    /// view at the end of this commit, the same for every event of the commit. With one daemon
    /// that difference is nothing, and each event keeps its own step.
    private func shift(_ event: inout EventRecord, to batch: BatchRecord) {
        guard let snapshot = snapshots[batch.id], let counters = event.counters else {
            event.counters = batch.counters
            event.progress = batch.progress.percent
            return
        }
        var shifted = counters
        for state in TaskState.allCases where state != .pending {
            shifted[state] = max(0, counters[state] + batch.counters[state] - snapshot.counters[state])
        }
        shifted.total = batch.counters.total
        shifted.pending = max(0, shifted.total - TaskState.allCases.filter { $0 != .pending }.reduce(0) { $0 + shifted[$1] })
        event.counters = shifted
        let maxUnits = batch.progress.maxUnits
        let eventUnits = Int(((event.progress ?? 0) * Double(maxUnits) / 100).rounded())
        let units = min(maxUnits, max(0, eventUnits + batch.progress.units - snapshot.progressUnits))
        event.progress = BatchProgress(totalTasks: batch.counters.total, maxTurns: batch.progress.maxTurns, units: units).percent
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
