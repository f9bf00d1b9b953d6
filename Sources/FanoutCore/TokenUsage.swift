/// LLM tokens, as a provider's `usage` object reports them. Kept per task
/// and summed per batch; the total feeds an agent's tokens-per-minute limit.
public struct TokenUsage: Sendable, Hashable, Codable {
    /// Chat and completions' `prompt_tokens`, the Responses API's `input_tokens`.
    public var promptTokens: Int64
    /// Chat and completions' `completion_tokens`, the Responses API's `output_tokens`.
    public var completionTokens: Int64
    public var totalTokens: Int64

    public init(promptTokens: Int64 = 0, completionTokens: Int64 = 0, totalTokens: Int64 = 0) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.totalTokens = totalTokens
    }

    public static let zero = TokenUsage()

    /// Adds, saturating: a provider's numbers are not trusted to stay small.
    public static func + (lhs: TokenUsage, rhs: TokenUsage) -> TokenUsage {
        func add(_ a: Int64, _ b: Int64) -> Int64 {
            let (sum, overflow) = a.addingReportingOverflow(b)
            return overflow ? .max : sum
        }
        return TokenUsage(promptTokens: add(lhs.promptTokens, rhs.promptTokens),
                          completionTokens: add(lhs.completionTokens, rhs.completionTokens),
                          totalTokens: add(lhs.totalTokens, rhs.totalTokens))
    }
}

/// What a provider answered besides the body, kept with the task: the HTTP
/// status and request id that OpenAI's batch output lines carry, and usage.
public struct ResponseDetails: Sendable, Hashable {
    public var statusCode: Int?
    public var requestID: String?
    public var usage: TokenUsage?

    public init(statusCode: Int? = nil, requestID: String? = nil, usage: TokenUsage? = nil) {
        self.statusCode = statusCode
        self.requestID = requestID
        self.usage = usage
    }

    public var isEmpty: Bool { statusCode == nil && requestID == nil && usage == nil }
}
