import DequeModule
import FanoutCore

/// The tasks of one agent that are ready to run: highest priority first,
/// then first in, first out.
///
/// Cancelled tasks are not searched for and removed; the scheduler skips ids
/// that are no longer pending when it pops them.
struct ReadyQueue {
    private var lanes: [Int32: Deque<TaskID>] = [:]
    /// Priorities with a lane, highest first.
    private var priorities: [Int32] = []

    var isEmpty: Bool { priorities.isEmpty }

    mutating func append(_ id: TaskID, priority: Int32) {
        if lanes[priority] == nil {
            lanes[priority] = Deque()
            let index = priorities.firstIndex { $0 < priority } ?? priorities.endIndex
            priorities.insert(priority, at: index)
        }
        lanes[priority]!.append(id)
    }

    /// The head, without removing it.
    var first: (id: TaskID, priority: Int32)? {
        guard let priority = priorities.first, let id = lanes[priority]?.first else { return nil }
        return (id, priority)
    }

    mutating func removeFirst() {
        guard let priority = priorities.first else { return }
        lanes[priority]!.removeFirst()
        if lanes[priority]!.isEmpty {
            lanes[priority] = nil
            priorities.removeFirst()
        }
    }
}
