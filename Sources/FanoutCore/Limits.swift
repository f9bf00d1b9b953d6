/// Limits on what one client request may ask for. Every one is configurable
/// on the daemon and announced to clients in the handshake.
public struct EnqueueLimits: Sendable, Hashable {
    public var maxTasksPerBatch: Int = 1_000_000
    public var maxPayloadBytes: Int = 1 << 20
    public var maxCustomIDBytes: Int = 256
    public var maxOwnerIDBytes: Int = 256
    public var maxMetadataEntries: Int = 64
    /// A task's `url` (an endpoint path such as `/v1/chat/completions`) may not be longer.
    public var maxURLBytes: Int = 2_048
    /// A task's `max_attempts` may not ask for more.
    public var maxAttemptsPerTask: Int = 100
    /// A task's per-attempt `timeout_ms` may not be longer (7 days).
    public var maxTaskTimeoutMs: Int64 = 7 * 24 * 3_600_000
    /// A batch's `completion_window_ms` may not be longer (365 days).
    public var maxCompletionWindowMs: Int64 = 365 * 24 * 3_600_000

    public init() {}
}

/// Checks a batch against the limits before anything is stored, so an
/// invalid request is refused whole with a message that names the problem.
public enum BatchValidation {
    public static func validate(_ batch: NewBatch, limits: EnqueueLimits, knownAgents: Set<String>) throws(FanoutError) {
        try validateHeader(batch, limits: limits)
        if batch.tasks.isEmpty {
            throw .invalidArgument("a batch needs at least one task")
        }
        var seen = Set<String>(minimumCapacity: batch.tasks.count)
        try validateTasks(batch.tasks, startingAt: 0, seen: &seen, limits: limits, knownAgents: knownAgents)
    }

    /// The batch-wide fields; a chunked batch checks these once, before its first chunk.
    public static func validateHeader(_ batch: NewBatch, limits: EnqueueLimits) throws(FanoutError) {
        if batch.ownerID.isEmpty {
            throw .invalidArgument("owner_id is required")
        }
        if batch.ownerID.utf8.count > limits.maxOwnerIDBytes {
            throw .invalidArgument("owner_id is \(batch.ownerID.utf8.count) bytes; the limit is \(limits.maxOwnerIDBytes)")
        }
        if let window = batch.completionWindowMs, window > limits.maxCompletionWindowMs {
            throw .invalidArgument("completion_window_ms is \(window); the limit is \(limits.maxCompletionWindowMs) (max_completion_window_ms)")
        }
        if batch.metadata.count > limits.maxMetadataEntries {
            throw .invalidArgument("batch has \(batch.metadata.count) metadata entries; the limit is \(limits.maxMetadataEntries)")
        }
    }

    /// Tasks `startingAt` onwards of a batch; `seen` carries the custom ids of
    /// the earlier ones, so uniqueness holds across the chunks of one batch.
    public static func validateTasks(_ tasks: [NewTask], startingAt offset: Int, seen: inout Set<String>,
                                     limits: EnqueueLimits, knownAgents: Set<String>) throws(FanoutError) {
        if offset + tasks.count > limits.maxTasksPerBatch {
            throw .resourceExhausted("batch has \(offset + tasks.count) tasks; the limit is \(limits.maxTasksPerBatch) (max_tasks_per_batch)")
        }
        for (position, task) in tasks.enumerated() {
            let index = offset + position
            if task.customID.isEmpty {
                throw .invalidArgument("task \(index): custom_id is required")
            }
            if task.customID.utf8.count > limits.maxCustomIDBytes {
                throw .invalidArgument("task \(index): custom_id is \(task.customID.utf8.count) bytes; the limit is \(limits.maxCustomIDBytes) (max_custom_id_bytes)")
            }
            if !seen.insert(task.customID).inserted {
                throw .invalidArgument("task \(index): custom_id \"\(task.customID)\" appears more than once in the batch")
            }
            if task.payload.count > limits.maxPayloadBytes {
                throw .resourceExhausted("task \"\(task.customID)\": payload is \(task.payload.count) bytes; the limit is \(limits.maxPayloadBytes) (max_payload_bytes)")
            }
            if let url = task.url, url.utf8.count > limits.maxURLBytes {
                throw .invalidArgument("task \"\(task.customID)\": url is \(url.utf8.count) bytes; the limit is \(limits.maxURLBytes)")
            }
            if task.agent.isEmpty {
                throw .invalidArgument("task \"\(task.customID)\": no agent given, for the task or the batch")
            }
            if task.maxAttempts > limits.maxAttemptsPerTask {
                throw .invalidArgument("task \"\(task.customID)\": max_attempts is \(task.maxAttempts); the limit is \(limits.maxAttemptsPerTask) (max_attempts_per_task)")
            }
            if task.timeoutMs < 0 || task.timeoutMs > limits.maxTaskTimeoutMs {
                throw .invalidArgument("task \"\(task.customID)\": timeout_ms is \(task.timeoutMs); the limit is \(limits.maxTaskTimeoutMs) (max_task_timeout_ms)")
            }
            if !knownAgents.contains(task.agent) {
                let name = task.agent.count > 100 ? task.agent.prefix(100) + "…" : Substring(task.agent)
                throw .invalidArgument("task \"\(task.customID)\": unknown agent \"\(name)\"; this daemon runs \(knownAgents.sorted().joined(separator: ", "))")
            }
        }
    }

    /// The longest agent name a worker may declare.
    public static let maxAgentNameBytes = 128

    /// Why a worker may not declare an agent of this name, or nil: names are short
    /// and printable, so they list cleanly in `fanout workers` and logs.
    public static func agentNameProblem(_ name: String) -> String? {
        let shown = name.count > 100 ? name.prefix(100) + "…" : Substring(name)
        if name.isEmpty { return "an agent registers with a name" }
        if name.utf8.count > maxAgentNameBytes {
            return "agent \"\(shown)\": the name is \(name.utf8.count) bytes; the limit is \(maxAgentNameBytes)"
        }
        if name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control || $0 == " " }) {
            return "agent \"\(shown.unicodeScalars.filter { $0.value >= 0x20 && $0 != " " }.map(String.init).joined())\": names have no spaces or control characters"
        }
        return nil
    }
}
