/// A task's life cycle (DESIGN.md, "States").
public enum TaskState: String, Sendable, Hashable, CaseIterable, Codable {
    case pending
    case running
    case waitingChildren = "waiting_children"
    case retryWait = "retry_wait"
    case completed
    case failed
    case cancelled
    case expired

    public var isTerminal: Bool {
        switch self {
        case .completed, .failed, .cancelled, .expired: true
        case .pending, .running, .waitingChildren, .retryWait: false
        }
    }

    /// The transitions the state machine allows; anything else is a bug or a
    /// stale message (a late result for a cancelled task) and is refused.
    /// Beyond DESIGN.md's list: a pending task whose agent no daemon runs any
    /// more fails without running, and a task running (or waiting for its
    /// children) when its batch's deadline passes is interrupted and expires.
    public func canMove(to next: TaskState) -> Bool {
        switch (self, next) {
        case (.pending, .running), (.pending, .cancelled), (.pending, .expired), (.pending, .failed): true
        case (.running, .completed), (.running, .failed), (.running, .cancelled), (.running, .expired),
             (.running, .retryWait), (.running, .waitingChildren), (.running, .pending): true
        case (.waitingChildren, .running), (.waitingChildren, .cancelled), (.waitingChildren, .failed),
             (.waitingChildren, .expired): true
        case (.retryWait, .pending), (.retryWait, .cancelled), (.retryWait, .expired): true
        default: false
        }
    }
}

/// A batch's life cycle.
public enum BatchState: String, Sendable, Hashable, CaseIterable, Codable {
    case pending
    case processing
    case completed
    case cancelled
    case failed

    public var isTerminal: Bool {
        switch self {
        case .completed, .cancelled, .failed: true
        case .pending, .processing: false
        }
    }
}
