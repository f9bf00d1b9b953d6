/// Batch progress as DESIGN.md defines it.
///
/// Progress is kept as integer *units* so it can be updated incrementally and
/// recomputed exactly from task rows after a crash:
/// - with `maxTurns` set, a task is worth `maxTurns` units: one per reported
///   turn (capped), and whatever is left when it reaches a terminal state;
/// - without, a task is worth one unit, earned when it becomes terminal.
public struct BatchProgress: Sendable, Hashable, Codable {
    public var totalTasks: Int
    public var maxTurns: Int
    public private(set) var units: Int

    public init(totalTasks: Int, maxTurns: Int, units: Int = 0) {
        self.totalTasks = totalTasks
        self.maxTurns = max(0, maxTurns)
        self.units = units
    }

    public var unitsPerTask: Int { maxTurns > 0 ? maxTurns : 1 }
    public var maxUnits: Int { totalTasks * unitsPerTask }

    /// 0–100. An empty batch counts as done.
    public var percent: Double {
        maxUnits == 0 ? 100 : Double(units) * 100 / Double(maxUnits)
    }

    /// Units a task has earned given its turns and whether it is terminal.
    public func units(turnsCompleted: Int, terminal: Bool) -> Int {
        if terminal { return unitsPerTask }
        return maxTurns > 0 ? min(turnsCompleted, maxTurns) : 0
    }

    /// A task reported a turn; `turnsBefore` is its count before this one.
    /// Returns whether progress moved.
    @discardableResult
    public mutating func recordTurn(turnsBefore: Int) -> Bool {
        guard maxTurns > 0, turnsBefore < maxTurns else { return false }
        units += 1
        return true
    }

    /// A task reached a terminal state having completed `turnsCompleted` turns.
    public mutating func recordTerminal(turnsCompleted: Int) {
        units += unitsPerTask - units(turnsCompleted: turnsCompleted, terminal: false)
    }
}
