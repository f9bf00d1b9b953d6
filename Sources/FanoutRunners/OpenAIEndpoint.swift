import OpenAIBatchFormat

/// The OpenAI endpoints the `openai` runner posts to: those the Batch API
/// accepts in a line's `url`.
public enum OpenAIEndpoint {
    public static let chatCompletions = "/v1/chat/completions"
    public static let supported: [String] = OpenAIBatchLine.endpoints

    /// The full address of `endpoint` under `baseURL`. Both usually carry
    /// `/v1` (`http://127.0.0.1:8000/v1` and `/v1/chat/completions`, as the
    /// OpenAI SDKs and Batch files write them); it appears once.
    public static func address(of endpoint: String, under baseURL: String) -> String {
        var base = Substring(baseURL)
        while base.hasSuffix("/") { base = base.dropLast() }
        if base.hasSuffix("/v1"), endpoint.hasPrefix("/v1/") {
            return String(base + endpoint.dropFirst(3))
        }
        return String(base) + endpoint
    }
}
