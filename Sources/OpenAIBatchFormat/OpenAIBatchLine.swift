import Foundation

/// One request line of an OpenAI Batch input file:
/// `{"custom_id", "method": "POST", "url", "body"}`.
///
/// The body is kept as the line wrote it, byte for byte, so the provider
/// receives exactly that. The rules are the ones fanoutd's openai runner
/// enforces, checked here so that a file is refused with line numbers.
public struct OpenAIBatchLine: Sendable, Hashable {
    public var customID: String
    public var url: String
    public var body: [UInt8]
    /// The body's `model`, when it names one.
    public var model: String?

    /// The endpoints a line may name.
    public static let endpoints = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]

    /// A problem with a line, for a message that names the line.
    public struct Problem: Error, Sendable, Hashable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    /// Parses a line already decoded as a JSON object (`object`) from its bytes.
    public static func parse(_ bytes: [UInt8], object: [String: Any]) -> Result<OpenAIBatchLine, Problem> {
        func problem(_ message: String) -> Result<OpenAIBatchLine, Problem> { .failure(Problem(message: message)) }
        // JSON parsers disagree on which of two equal keys wins; refuse the ambiguity.
        if let key = RawJSON.duplicateKey(inObject: bytes) {
            return problem("\"\(key.prefix(100))\" appears twice")
        }
        guard let customID = object["custom_id"] as? String, !customID.isEmpty else {
            return problem("custom_id is missing or not a non-empty string")
        }
        if let method = object["method"], (method as? String)?.uppercased() != "POST" {
            return problem("method must be \"POST\"")
        }
        guard let url = object["url"] as? String else {
            return problem("url is missing or not a string; OpenAI Batch lines name their endpoint, e.g. \"/v1/chat/completions\"")
        }
        guard endpoints.contains(url) else {
            return problem("url \"\(url.prefix(200))\" is not a supported endpoint; use one of \(endpoints.joined(separator: ", "))")
        }
        guard let fields = object["body"] as? [String: Any] else {
            return problem("body must be a JSON object (the request OpenAI would receive)")
        }
        if (fields["stream"] as? Bool) == true {
            return problem("body has \"stream\": true; batch requests need whole answers, so remove it or set it to false")
        }
        guard let range = RawJSON.valueRange(of: "body", inObject: bytes) else {
            return problem("body cannot be read from the line")
        }
        return .success(OpenAIBatchLine(customID: customID, url: url, body: Array(bytes[range]), model: fields["model"] as? String))
    }

    /// Parses one line's bytes.
    public static func parse(_ bytes: [UInt8]) -> Result<OpenAIBatchLine, Problem> {
        guard let parsed = try? JSONSerialization.jsonObject(with: Data(bytes)) else {
            return .failure(Problem(message: "not valid JSON"))
        }
        guard let object = parsed as? [String: Any] else { return .failure(Problem(message: "expected a JSON object")) }
        return parse(bytes, object: object)
    }
}
