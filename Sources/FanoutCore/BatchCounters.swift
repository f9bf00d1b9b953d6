/// How many of a batch's tasks are in each state.
public struct BatchCounters: Sendable, Hashable, Codable {
    public var total: Int = 0
    public var pending: Int = 0
    public var running: Int = 0
    public var waitingChildren: Int = 0
    public var retryWait: Int = 0
    public var completed: Int = 0
    public var failed: Int = 0
    public var cancelled: Int = 0
    public var expired: Int = 0

    public init() {}

    public init(pending total: Int) {
        self.total = total
        self.pending = total
    }

    public var terminal: Int { completed + failed + cancelled + expired }
    public var isFinished: Bool { terminal == total }

    public subscript(state: TaskState) -> Int {
        get {
            switch state {
            case .pending: pending
            case .running: running
            case .waitingChildren: waitingChildren
            case .retryWait: retryWait
            case .completed: completed
            case .failed: failed
            case .cancelled: cancelled
            case .expired: expired
            }
        }
        set {
            switch state {
            case .pending: pending = newValue
            case .running: running = newValue
            case .waitingChildren: waitingChildren = newValue
            case .retryWait: retryWait = newValue
            case .completed: completed = newValue
            case .failed: failed = newValue
            case .cancelled: cancelled = newValue
            case .expired: expired = newValue
            }
        }
    }

    /// Moves one task between states. Every transition the scheduler makes
    /// goes through here, so `canMove` is checked in one place (debug builds
    /// stop on a forbidden one; a release daemon keeps counting).
    public mutating func move(from old: TaskState, to new: TaskState) {
        assert(old.canMove(to: new), "forbidden task transition \(old.rawValue) -> \(new.rawValue)")
        self[old] -= 1
        self[new] += 1
    }
}
