import FanoutCore
import PostgresNIO

/// What one commit's task changes did to a batch: each task moved between
/// states, earned progress and used tokens. Several daemons change one batch's
/// tasks at once, so the batch row takes sums, never a daemon's own count.
struct BatchDelta: Equatable {
    var counters = BatchCounters()
    var progressUnits = 0
    var usage = TokenUsage.zero

    var isEmpty: Bool { self == BatchDelta() }

    mutating func add(_ move: TaskMove) {
        if move.oldState != move.newState {
            counters[move.oldState] -= 1
            counters[move.newState] += 1
        }
        progressUnits += move.newUnits - move.oldUnits
        usage = usage + move.usage
    }
}

/// One task change as the database saw it: the task's state and turns before and after.
struct TaskMove {
    var taskID: TaskID
    var batchID: BatchID
    var oldState: TaskState
    var newState: TaskState
    var oldUnits: Int
    var newUnits: Int
    var usage: TokenUsage

    /// A row of a `TaskChangeStatement`'s RETURNING.
    init(_ row: PostgresRow) throws {
        let cells = row.makeRandomAccess()
        taskID = try cells["id"].decode(Int64.self)
        batchID = try cells["batch_id"].decode(Int64.self)
        let maxTurns = try cells.int("max_turns")
        func state(_ column: String) throws -> TaskState {
            let text = try cells[column].decode(String.self)
            guard let state = TaskState(rawValue: text) else { throw PostgresSchemaError("a task row has an unknown state \"\(text)\"") }
            return state
        }
        oldState = try state("old_state")
        newState = try state("new_state")
        let progress = BatchProgress(totalTasks: 1, maxTurns: maxTurns)
        oldUnits = progress.units(turnsCompleted: try cells.int("old_turns"), terminal: oldState.isTerminal)
        newUnits = progress.units(turnsCompleted: try cells.int("new_turns"), terminal: newState.isTerminal)
        usage = TokenUsage(promptTokens: try cells["prompt_delta"].decode(Int64.self),
                           completionTokens: try cells["completion_delta"].decode(Int64.self),
                           totalTokens: try cells["total_delta"].decode(Int64.self))
    }
}
