import DequeModule
import FanoutCore
import FanoutStore

/// One batch's pending tasks for one agent.
struct SourceKey: Hashable, Sendable {
    var batchID: BatchID
    var agent: String
}

/// A window onto a batch's pending tasks for one agent, in (priority desc,
/// id) order. Only the window is in memory; the rest stays in the store and
/// is read after `cursor` when the window runs low.
struct Source {
    let key: SourceKey
    let ownerID: String
    /// Tells this source from an earlier one of the same key.
    var generation = 0
    var window: Deque<RunnableTask> = []
    var cursor: QueueCursor?
    /// The store has nothing pending after `cursor`.
    var exhausted = false
    var refilling = false
    /// The priority lane the source is listed in, if it is.
    var listedAt: Int32?
}

/// One agent's ready sources: the highest priority first, and within a
/// priority, round-robin across owners, so one owner's huge batch does not
/// starve another owner's small one. An owner's own sources run oldest first.
struct AgentQueue {
    private struct Lane {
        var owners: Deque<String> = []
        var sources: [String: Deque<SourceKey>] = [:]
    }

    private var lanes: [Int32: Lane] = [:]
    /// Priorities with a lane, highest first.
    private var priorities: [Int32] = []

    var isEmpty: Bool { priorities.isEmpty }
    var topPriority: Int32? { priorities.first }

    mutating func add(_ key: SourceKey, owner: String, priority: Int32) {
        if lanes[priority] == nil {
            lanes[priority] = Lane()
            priorities.insert(priority, at: priorities.firstIndex { $0 < priority } ?? priorities.endIndex)
        }
        lanes.modifyValue(forKey: priority) { lane in
            if lane.sources[owner] == nil { lane.owners.append(owner) }
            lane.sources[owner, default: []].append(key)
        }
    }

    mutating func remove(_ key: SourceKey, owner: String, priority: Int32) {
        guard var lane = lanes[priority], var keys = lane.sources[owner], let index = keys.firstIndex(of: key) else { return }
        keys.remove(at: index)
        if keys.isEmpty {
            lane.sources[owner] = nil
            if let ownerIndex = lane.owners.firstIndex(of: owner) { lane.owners.remove(at: ownerIndex) }
        } else {
            lane.sources[owner] = keys
        }
        if lane.owners.isEmpty {
            lanes[priority] = nil
            priorities.removeAll { $0 == priority }
        } else {
            lanes[priority] = lane
        }
    }

    /// The source whose turn it is, and moves its owner to the back of the ring.
    mutating func next() -> SourceKey? {
        guard let priority = priorities.first, var lane = lanes[priority], let owner = lane.owners.popFirst(),
              let key = lane.sources[owner]?.first else { return nil }
        lane.owners.append(owner)
        lanes[priority] = lane
        return key
    }
}
