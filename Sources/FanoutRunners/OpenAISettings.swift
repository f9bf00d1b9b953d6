import FanoutCore
import Foundation

/// The `openai` runner's settings, from its agent's entry in the config file.
public struct OpenAISettings: Sendable, Hashable {
    public static let keys: Set<String> = ["base_url", "api_key_env", "model", "headers", "default_url", "max_response_bytes"]
    public static let defaultMaxResponseBytes = 1 << 20
    /// An answer may not be larger than this (it is kept as the task's result and sent in one frame).
    public static let maxResponseBytesLimit = 64 << 20

    /// e.g. `http://127.0.0.1:8000/v1` or `https://api.openai.com/v1`.
    public var baseURL: String
    /// The environment variable of fanoutd holding the API key; nil: no Authorization header.
    public var apiKeyVariable: String?
    /// Used when a request body names no model.
    public var model: String?
    /// Sent with every request, after the defaults (so they may replace Authorization, e.g. for an `api-key` scheme).
    public var headers: [String: String]
    /// The endpoint of tasks that come without a `url`.
    public var defaultURL: String
    /// A longer answer fails the attempt (`response_too_large`).
    public var maxResponseBytes: Int

    public init(baseURL: String, apiKeyVariable: String? = nil, model: String? = nil, headers: [String: String] = [:],
                defaultURL: String = OpenAIEndpoint.chatCompletions, maxResponseBytes: Int = OpenAISettings.defaultMaxResponseBytes) {
        self.baseURL = baseURL
        self.apiKeyVariable = apiKeyVariable
        self.model = model
        self.headers = headers
        self.defaultURL = defaultURL
        self.maxResponseBytes = maxResponseBytes
    }

    /// Control characters other than tab, which an HTTP header value may not hold.
    static func hasControlCharacter(_ text: String) -> Bool {
        text.utf8.contains { ($0 < 0x20 && $0 != 0x09) || $0 == 0x7F }
    }

    /// Decodes and checks the runner's keys of an agent entry.
    public static func decode(_ object: [String: Any], agent: String) throws -> OpenAISettings {
        let reader = RunnerSettingsReader(agent: agent, object: object)
        try reader.requireOnly(keys, runner: "openai")
        guard let baseURL = try reader.string("base_url") else {
            throw reader.problem("the openai runner needs base_url, e.g. \"http://127.0.0.1:8000/v1\"")
        }
        guard let url = URL(string: baseURL), let scheme = url.scheme?.lowercased(), ["http", "https"].contains(scheme),
              let host = url.host, !host.isEmpty, url.query == nil else {
            throw reader.problem("base_url must be an http:// or https:// address such as \"http://127.0.0.1:8000/v1\", not \"\(baseURL)\"")
        }
        var settings = OpenAISettings(baseURL: baseURL)
        if let variable = try reader.string("api_key_env") {
            guard !variable.isEmpty, !variable.contains("=") else { throw reader.problem("api_key_env must name an environment variable") }
            settings.apiKeyVariable = variable
        }
        settings.model = try reader.string("model").flatMap { $0.isEmpty ? nil : $0 }
        settings.headers = try reader.stringDictionary("headers") ?? [:]
        for (name, value) in settings.headers {
            // A header is one line: CR or LF would let a value smuggle more headers in, and the
            // HTTP client refuses other control characters with an error that quotes the value.
            let isToken = !name.isEmpty && name.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ":") }
            guard isToken, !hasControlCharacter(value) else {
                throw reader.problem("headers: \"\(name)\" is not a valid header name and single-line value without control characters")
            }
        }
        if let defaultURL = try reader.string("default_url") {
            guard OpenAIEndpoint.supported.contains(defaultURL) else {
                throw reader.problem("default_url must be one of \(OpenAIEndpoint.supported.joined(separator: ", "))")
            }
            settings.defaultURL = defaultURL
        }
        if let bytes = try reader.integer("max_response_bytes", in: 1...Int64(maxResponseBytesLimit)) {
            settings.maxResponseBytes = Int(bytes)
        }
        return settings
    }
}
