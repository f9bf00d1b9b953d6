extension TaskSpec {
    /// A task in Swift's own types: nil means "the agent's default" where the
    /// wire uses 0.
    ///
    /// - Parameters:
    ///   - agent: nil: the batch's agent.
    ///   - maxAttempts: nil: the agent's default.
    ///   - timeout: per attempt; nil: the agent's default. Rounded down to
    ///     milliseconds; the daemon refuses one over its `max_task_timeout_ms`.
    ///   - url: an OpenAI Batch line's endpoint (`/v1/chat/completions`, …), for the openai runner.
    public init(customID: String, payload: [UInt8], agent: String? = nil, priority: Int32 = 0,
                maxAttempts: Int?, timeout: Duration?, url: String? = nil) throws(FanoutClientError) {
        guard maxAttempts.map({ $0 > 0 }) ?? true else {
            throw FanoutClientError(code: .invalidArgument, message: "max_attempts must be at least 1, not \(maxAttempts!)")
        }
        self.init(customID: customID, agent: agent ?? "", payload: payload, priority: priority,
                  maxAttempts: UInt32(clamping: maxAttempts ?? 0),
                  timeoutMs: try timeout.map(FanoutClient.milliseconds) ?? 0, url: url ?? "")
    }

    /// The attempt timeout, or nil for the agent's default.
    public var timeout: Duration? { timeoutMs == 0 ? nil : .milliseconds(Int64(clamping: timeoutMs)) }
}
