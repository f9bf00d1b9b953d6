import FanoutCore
import FanoutStore

/// Following a store other daemons share (decision 51): each daemon runs what
/// it claims, so it must learn of work it did not enqueue itself.
extension SchedulerState {
    /// The agents this daemon runs: configured ones, and those its workers declared.
    var servedAgents: [String] { agents.keys.sorted() }

    /// Takes the shared store's active batches into account: adopts those with unclaimed tasks
    /// it does not hold, reads again for those it holds whose tasks were given back, and closes
    /// those cancelled (or expired) through another daemon. Returns the batches it holds that
    /// are not in the list: ended elsewhere, unless enqueued after the list was read.
    mutating func follow(_ shared: [SharedBatch], now: Milliseconds, effects: inout Effects) -> [BatchID] {
        guard !stopping else { return [] }
        var listed = Set<BatchID>()
        for batch in shared {
            let record = batch.record
            listed.insert(record.id)
            guard !admitting.contains(record.id) else { continue }
            // Only agents this daemon runs were asked about (see `servedAgents`).
            guard let held = batches[record.id] else {
                if !batch.unclaimedAgents.isEmpty {
                    admitBatch(record, agents: batch.unclaimedAgents, adopted: true, now: now, effects: &effects)
                }
                continue
            }
            if let closing = record.closing, held.closing == nil {
                closeBatch(record.id, as: closing, now: now, effects: &effects)
                continue
            }
            // Tasks given back (a daemon stopped or died) are claimed again: to run them, or, for a
            // closing batch, to end them.
            for agent in batch.unclaimedAgents where sources[SourceKey(batchID: record.id, agent: agent)] == nil {
                let key = SourceKey(batchID: record.id, agent: agent)
                sources[key] = makeSource(key, ownerID: record.ownerID)
                batches.modifyValue(forKey: record.id) { $0.agents.insert(agent) }
                requestRefill(key, effects: &effects)
            }
        }
        dispatch(now: now, effects: &effects)
        return batches.keys.filter { !listed.contains($0) && !admitting.contains($0) }.sorted()
    }

    /// Those of `ids` in no slot and no window.
    func unheld(among ids: [TaskID]) -> Set<TaskID> {
        var unheld = Set(ids.lazy.filter { slots[$0] == nil })
        for source in sources.values where !unheld.isEmpty {
            for task in source.window { unheld.remove(task.id) }
        }
        return unheld
    }
}
