import FanoutWire
import Foundation

/// How batches, tasks and events look on the terminal and in `--json`.
enum Describe {
    static func word(_ status: BatchStatus) -> String {
        switch status {
        case .unspecified: "unspecified"
        case .pending: "pending"
        case .processing: "processing"
        case .completed: "completed"
        case .cancelled: "cancelled"
        case .failed: "failed"
        }
    }

    static func word(_ type: EventType) -> String {
        switch type {
        case .unspecified: "unspecified"
        case .batchProgress: "batch_progress"
        case .batchCompleted: "batch_completed"
        case .batchCancelled: "batch_cancelled"
        case .batchFailed: "batch_failed"
        case .taskStarted: "task_started"
        case .taskTurn: "task_turn"
        case .taskRetrying: "task_retrying"
        case .taskCompleted: "task_completed"
        case .taskFailed: "task_failed"
        case .taskCancelled: "task_cancelled"
        case .taskExpired: "task_expired"
        }
    }

    static func eventType(_ word: String) -> EventType? {
        EventType.allCases.first { self.word($0) == word && $0 != .unspecified }
    }

    static func counts(_ counts: BatchCounts) -> [String: Any] {
        ["total": counts.total, "pending": counts.pending, "running": counts.running,
         "waiting_children": counts.waitingChildren, "retry_wait": counts.retryWait, "completed": counts.completed,
         "failed": counts.failed, "cancelled": counts.cancelled, "expired": counts.expired]
    }

    static func json(_ batch: BatchInfo) -> [String: Any] {
        var object: [String: Any] = [
            "id": batch.id, "owner_id": batch.ownerID, "agent": batch.agent, "status": word(batch.status),
            "progress": (batch.progress * 10).rounded() / 10, "counts": counts(batch.counts),
            "created_at_ms": batch.createdAtMs, "metadata": batch.metadata,
        ]
        if batch.startedAtMs != 0 { object["started_at_ms"] = batch.startedAtMs }
        if batch.finishedAtMs != 0 { object["finished_at_ms"] = batch.finishedAtMs }
        if batch.deadlineAtMs != 0 { object["deadline_at_ms"] = batch.deadlineAtMs }
        if batch.parentTaskID != 0 { object["parent_task_id"] = batch.parentTaskID }
        if !batch.usage.isZero { object["usage"] = usage(batch.usage) }
        return object
    }

    static func json(_ task: TaskInfo) -> [String: Any] {
        var object: [String: Any] = [
            "id": task.id, "batch_id": task.batchID, "custom_id": task.customID, "agent": task.agent,
            "status": ResultOutput.statusWord(task.status), "attempt": task.attempt, "max_attempts": task.maxAttempts,
            "turns_completed": task.turnsCompleted,
        ]
        if let error = task.error { object["error"] = ["code": error.code, "message": error.message] }
        if !task.url.isEmpty { object["url"] = task.url }
        if task.statusCode != 0 { object["status_code"] = task.statusCode }
        if !task.requestID.isEmpty { object["request_id"] = task.requestID }
        if let usage = task.usage { object["usage"] = Self.usage(usage) }
        return object
    }

    static func usage(_ usage: TokenUsage) -> [String: Any] {
        ["prompt_tokens": usage.promptTokens, "completion_tokens": usage.completionTokens, "total_tokens": usage.totalTokens]
    }

    static func json(_ event: Event) -> [String: Any] {
        var object: [String: Any] = [
            "sequence": event.sequence, "type": word(event.type), "timestamp_ms": event.timestampMs,
            "owner_id": event.ownerID, "batch_id": event.batchID,
        ]
        if event.taskID != 0 {
            object["task_id"] = event.taskID
            object["custom_id"] = event.customID
            object["attempt"] = event.attempt
        }
        if let counts = event.counts {
            object["counts"] = Self.counts(counts)
            object["progress"] = (event.progress * 10).rounded() / 10
        }
        if event.type == .taskTurn { object["turn"] = event.turn }
        if event.type == .taskRetrying { object["retry_delay_ms"] = event.retryDelayMs }
        if let error = event.error { object["error"] = ["code": error.code, "message": error.message] }
        return object
    }

    static func line(_ event: Event) -> String {
        var text = "#\(event.sequence) \(word(event.type)) batch \(event.batchID)"
        if event.taskID != 0 { text += " task \(event.taskID) (\(event.customID)) attempt \(event.attempt)" }
        if event.type == .taskTurn { text += " turn \(event.turn)" }
        if event.type == .taskRetrying { text += " retry in \(event.retryDelayMs) ms" }
        if let counts = event.counts {
            text += String(format: " %.1f%% (%d/%d done)", event.progress, counts.finished, counts.total)
        }
        if let error = event.error { text += ": \(error.message)" }
        return text
    }

    static func summary(_ batch: BatchInfo) -> String {
        let c = batch.counts
        var lines = [
            "batch \(batch.id)  \(word(batch.status))  \(String(format: "%.1f", batch.progress))%",
            "  owner \(batch.ownerID), agent \(batch.agent)",
            "  \(c.total) tasks: \(c.completed) completed, \(c.failed) failed, \(c.cancelled) cancelled, \(c.expired) expired, "
                + "\(c.running) running, \(c.pending + c.retryWait) waiting"
                + (c.waitingChildren > 0 ? ", \(c.waitingChildren) waiting for children" : ""),
        ]
        if !batch.usage.isZero {
            let u = batch.usage
            lines.append("  tokens: \(u.totalTokens) (\(u.promptTokens) prompt, \(u.completionTokens) completion)")
        }
        if batch.startedAtMs != 0 {
            let end = batch.finishedAtMs != 0 ? batch.finishedAtMs : Int64(Date().timeIntervalSince1970 * 1000)
            lines.append(String(format: "  elapsed %.1f s", Double(end - batch.startedAtMs) / 1000))
        }
        return lines.joined(separator: "\n")
    }
}
