import FanoutCore
import FanoutStore
import PostgresNIO

/// A commit's task changes in as few statements as it takes: one per kind of change and
/// round, its columns sent as arrays. A round holds at most one change per task (the k-th of
/// each), so a task changed twice in one commit (started, then finished) sees its changes in
/// order; across tasks the order does not matter, because each statement returns what it moved
/// (`TaskMove`) and the batch rows add those up.
///
/// A statement changes a task only while this daemon holds it (`fence`): a task it lost (its
/// lease expired and another daemon reclaimed it) comes back in no row, and its late word does
/// not overwrite the new holder's.
struct TaskChangeStatement {
    /// The tasks the statement is about; those missing from its rows were fenced off.
    var taskIDs: [TaskID]
    var query: PostgresQuery

    /// Tasks per statement: bounds one statement's size, results and all.
    static let maxTasks = 2_000

    /// Locks every task `changes` touch, in id order, before the statements that change them: each
    /// statement locks its own rows in id order, but a commit runs several, and two commits taking
    /// the same rows in different statement orders would deadlock.
    static func lockAll(_ changes: [TaskChange]) -> PostgresQuery {
        let ids = Array(Set(changes.map(\.taskID))).sorted()
        return "SELECT id FROM tasks WHERE id = ANY(\(ids)) ORDER BY id FOR UPDATE"
    }

    static func statements(for changes: [TaskChange], daemon: String, leaseMs: Int) -> [TaskChangeStatement] {
        var rounds: [[TaskChange]] = []
        var seen: [TaskID: Int] = [:]
        for change in changes {
            let round = seen[change.taskID, default: 0]
            seen[change.taskID] = round + 1
            if round == rounds.count { rounds.append([]) }
            rounds[round].append(change)
        }
        var statements: [TaskChangeStatement] = []
        for round in rounds {
            for kind in Kind.allCases {
                let group = round.filter { Kind($0) == kind }.sorted { $0.taskID < $1.taskID }
                for start in stride(from: 0, to: group.count, by: maxTasks) {
                    let slice = group[start..<min(start + maxTasks, group.count)]
                    statements.append(TaskChangeStatement(taskIDs: slice.map(\.taskID),
                                                          query: query(kind, Array(slice), daemon: daemon, leaseMs: leaseMs)))
                }
            }
        }
        return statements
    }

    enum Kind: CaseIterable {
        case started, turns, waiting, resumed, released, requeued, finished

        init(_ change: TaskChange) {
            self = switch change {
            case .started: .started
            case .turns: .turns
            case .waiting: .waiting
            case .resumed: .resumed
            case .released: .released
            case .requeued: .requeued
            case .finished: .finished
            }
        }
    }

    /// The changes of one kind, each to a different task: `v` holds their values, `old` the rows
    /// as they were, locked in id order (the order every daemon locks tasks in).
    private static func query(_ kind: Kind, _ changes: [TaskChange], daemon: String, leaseMs: Int) -> PostgresQuery {
        var query = DynamicQuery("")
        let values = Self.values(kind, changes, &query)
        let lease = "lease_expires_at = \(ClaimStatements.serverNowMs) + \(query.bind(leaseMs))"
        let set: String
        switch kind {
        case .started:
            set = "state = 'running', attempt = v.attempt, started_at = v.at, claimed_by = \(query.bind(daemon)), \(lease)"
        case .turns:
            set = "turns_completed = v.turns, \(lease)"
        case .waiting:
            set = "state = 'waiting_children', \(lease)"
        case .resumed:
            set = "state = 'running', \(lease)"
        case .released:
            // A graceful stop is not the task's fault: the attempt it was on is given back.
            set = "state = 'pending', attempt = greatest(t.attempt - 1, 0), claimed_by = NULL, lease_expires_at = NULL"
        case .requeued:
            set = "state = v.state, \(failureColumns), \(lease)"
        case .finished:
            set = """
                state = v.state, result = CASE WHEN v.has_result THEN v.result END, \(failureColumns),
                turns_completed = v.turns, finished_at = v.at, status_code = CASE WHEN v.has_status THEN v.status END,
                request_id = CASE WHEN v.has_request THEN v.request END, prompt_tokens = CASE WHEN v.has_usage THEN v.prompt END,
                completion_tokens = CASE WHEN v.has_usage THEN v.completion END,
                total_tokens = CASE WHEN v.has_usage THEN v.total END, lease_expires_at = NULL
                """
        }
        let holder = query.bind(daemon)
        // A cancel or an expiry may also end a pending task nobody claimed (one never read into a
        // window). A task reclaimed from this daemon is pending and unclaimed too, but the late
        // result of the attempt it lost is not a cancel, so it is refused.
        let fence = kind == .finished
            ? "(t.claimed_by = \(holder) OR (v.state IN ('cancelled', 'expired') AND t.claimed_by IS NULL AND t.state = 'pending'))"
            : "t.claimed_by = \(holder)"
        query.sql = """
            WITH v AS (SELECT * FROM \(values)),
                 old AS (SELECT id AS old_id, state AS old_state, turns_completed AS old_turns,
                                coalesce(prompt_tokens, 0) AS old_prompt, coalesce(completion_tokens, 0) AS old_completion,
                                coalesce(total_tokens, 0) AS old_total
                         FROM tasks WHERE id IN (SELECT id FROM v) ORDER BY id FOR UPDATE)
            UPDATE tasks t SET \(set)
            FROM old, v, batches b
            WHERE t.id = old.old_id AND v.id = t.id AND b.id = t.batch_id AND \(fence)
            RETURNING t.id, t.batch_id, old.old_state, t.state AS new_state, old.old_turns, t.turns_completed AS new_turns,
                b.max_turns, coalesce(t.prompt_tokens, 0) - old.old_prompt AS prompt_delta,
                coalesce(t.completion_tokens, 0) - old.old_completion AS completion_delta,
                coalesce(t.total_tokens, 0) - old.old_total AS total_delta
            """
        return query.query
    }

    private static let failureColumns = """
        error_message = CASE WHEN v.has_failure THEN v.message END, error_code = CASE WHEN v.has_failure THEN v.code END,
        error_retryable = CASE WHEN v.has_failure THEN v.retryable END
        """

    /// `unnest` of the changes' columns, as `v(id, …)`. Arrays cannot hold a typed NULL here, so
    /// an optional value travels with a `has_` flag beside a placeholder.
    private static func values(_ kind: Kind, _ changes: [TaskChange], _ query: inout DynamicQuery) -> String {
        var columns: [(name: String, array: String)] = [("id", query.bind(changes.map(\.taskID)))]
        func add<Value: PostgresArrayEncodable & PostgresNonThrowingEncodable>(_ name: String, _ values: [Value]) {
            columns.append((name, query.bind(values)))
        }
        func addFailures(_ failures: [TaskFailure?]) {
            add("has_failure", failures.map { $0 != nil })
            add("message", failures.map { $0?.message ?? "" })
            add("code", failures.map { $0?.code ?? "" })
            add("retryable", failures.map { $0?.retryable ?? false })
        }
        switch kind {
        case .started:
            let started = changes.compactMap { change -> (Int32, Int64)? in
                guard case let .started(_, attempt, at) = change else { return nil }
                return (Int32(clamping: attempt), at)
            }
            add("attempt", started.map(\.0))
            add("at", started.map(\.1))
        case .turns:
            add("turns", changes.map { change -> Int32 in
                guard case let .turns(_, turns) = change else { return 0 }
                return Int32(clamping: turns)
            })
        case .waiting, .resumed, .released:
            break
        case .requeued:
            let requeued = changes.compactMap { change -> (String, TaskFailure?)? in
                guard case let .requeued(_, state, failure) = change else { return nil }
                return (state.rawValue, failure)
            }
            add("state", requeued.map(\.0))
            addFailures(requeued.map(\.1))
        case .finished:
            let finished = changes.compactMap { change -> Finished? in
                guard case let .finished(_, state, result, failure, turns, at, details) = change else { return nil }
                return Finished(state: state, result: result, failure: failure, turns: turns, at: at, details: details)
            }
            add("state", finished.map(\.state.rawValue))
            add("has_result", finished.map { $0.result != nil })
            add("result", finished.map { ByteBuffer(bytes: $0.result ?? []) })
            addFailures(finished.map(\.failure))
            add("turns", finished.map { Int32(clamping: $0.turns) })
            add("at", finished.map(\.at))
            add("has_status", finished.map { $0.details.statusCode != nil })
            add("status", finished.map { Int32(clamping: $0.details.statusCode ?? 0) })
            add("has_request", finished.map { $0.details.requestID != nil })
            add("request", finished.map { $0.details.requestID ?? "" })
            add("has_usage", finished.map { $0.details.usage != nil })
            add("prompt", finished.map { $0.details.usage?.promptTokens ?? 0 })
            add("completion", finished.map { $0.details.usage?.completionTokens ?? 0 })
            add("total", finished.map { $0.details.usage?.totalTokens ?? 0 })
        }
        return "unnest(\(columns.map(\.array).joined(separator: ", "))) AS v(\(columns.map(\.name).joined(separator: ", ")))"
    }

    private struct Finished {
        var state: TaskState
        var result: [UInt8]?
        var failure: TaskFailure?
        var turns: Int
        var at: Milliseconds
        var details: ResponseDetails
    }
}
