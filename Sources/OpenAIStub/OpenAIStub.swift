import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Synchronization

/// A local OpenAI-compatible server for tests, the demo and benchmarks: it
/// answers the four Batch endpoints with canned completions, and misbehaves
/// on request. Built on Hummingbird: its async router is the shortest way to
/// a server that keeps up with hundreds of concurrent requests.
///
/// A request body may steer the answer with members OpenAI would not send:
/// - `"stub": "429-once"` / `"500-once"`: that status first (429 with
///   `Retry-After: 1`), then success, counted per `stub_key`;
/// - `"stub": "400"`: an OpenAI-shaped invalid_request_error;
/// - `"stub": "quota"`: a 429 with code `insufficient_quota`;
/// - `"stub": "malformed"`: 200 with a body that is not JSON;
/// - `"stub_delay_ms": N`: answer after N ms (on top of the server's delay).
public final class OpenAIStub: Sendable {
    public struct RecordedRequest: Sendable {
        public var path: String
        /// Header names in lower case.
        public var headers: [String: String]
        public var body: [UInt8]
        public var receivedAt: Date
    }

    private struct State {
        var requests: [RecordedRequest] = []
        var seenKeys: Set<String> = []
        var count = 0
    }

    /// Every answer waits this long first (a model's latency).
    public let delay: Duration
    /// Whether to keep every request (tests) or only count them (benchmarks).
    public let recordsRequests: Bool
    private let state = Mutex(State())

    public init(delay: Duration = .zero, recordsRequests: Bool = true) {
        self.delay = delay
        self.recordsRequests = recordsRequests
    }

    public var requests: [RecordedRequest] { state.withLock { $0.requests } }
    public var requestCount: Int { state.withLock { $0.count } }

    public static let endpoints = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]

    /// Serves on `host:port` (0: any free port) until the calling task is
    /// cancelled; `onListening` gets the bound port.
    public func run(host: String = "127.0.0.1", port: Int = 0, onListening: @escaping @Sendable (Int) async -> Void) async throws {
        let router = Router()
        for endpoint in Self.endpoints {
            router.post(RouterPath(stringLiteral: endpoint)) { [self] request, _ -> Response in
                try await answer(request, path: endpoint)
            }
        }
        var logger = Logger(label: "openai-stub")
        logger.logLevel = .critical
        let app = Application(
            router: router, configuration: .init(address: .hostname(host, port: port), serverName: nil),
            onServerRunning: { channel in await onListening(channel.localAddress?.port ?? 0) }, logger: logger)
        try await app.run()
    }

    private func answer(_ request: Request, path: String) async throws -> Response {
        let buffer = try await request.body.collect(upTo: 16 << 20)
        let body = Array(buffer: buffer)
        var headers: [String: String] = [:]
        for field in request.headers { headers[field.name.canonicalName] = field.value }
        let fields = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] ?? [:]
        let (number, firstTime) = state.withLock { state -> (Int, Bool) in
            state.count += 1
            if recordsRequests {
                state.requests.append(RecordedRequest(path: path, headers: headers, body: body, receivedAt: Date()))
            }
            let key = (fields["stub_key"] as? String) ?? ""
            return (state.count, state.seenKeys.insert(key).inserted)
        }
        var wait = delay
        if let extra = fields["stub_delay_ms"] as? Int { wait += .milliseconds(extra) }
        if wait > .zero { try await Task.sleep(for: wait) }

        let requestID = "req_stub_\(number)"
        switch fields["stub"] as? String {
        case "429-once" where firstTime:
            return Self.error(429, code: "rate_limit_exceeded", message: "Rate limit reached, try again in 1s", requestID: requestID,
                              extra: [.retryAfter: "1"])
        case "500-once" where firstTime:
            return Self.error(500, code: "server_error", message: "The server had an error", requestID: requestID)
        case "400":
            return Self.error(400, code: "invalid_value", message: "Invalid value for 'messages': expected an array.",
                              requestID: requestID)
        case "quota":
            return Self.error(429, code: "insufficient_quota", message: "You exceeded your current quota.", requestID: requestID)
        case "malformed":
            return Self.respond(200, Array("<html>upstream proxy error</html>".utf8), requestID: requestID)
        default:
            return Self.respond(200, Self.success(path: path, model: fields["model"] as? String ?? "stub-model", number: number),
                                requestID: requestID)
        }
    }

    private static func success(path: String, model: String, number: Int) -> [UInt8] {
        let usage: [String: Any] = ["prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12]
        let object: [String: Any] = switch path {
        case "/v1/embeddings":
            ["object": "list", "model": model, "data": [["object": "embedding", "index": 0, "embedding": [0.25, -0.5]]],
             "usage": ["prompt_tokens": 7, "total_tokens": 7]]
        case "/v1/responses":
            ["id": "resp_\(number)", "object": "response", "model": model, "status": "completed",
             "output": [["type": "message", "role": "assistant", "content": [["type": "output_text", "text": "stub answer \(number)"]]]],
             "usage": ["input_tokens": 7, "output_tokens": 5, "total_tokens": 12]]
        case "/v1/completions":
            ["id": "cmpl-\(number)", "object": "text_completion", "model": model,
             "choices": [["index": 0, "text": "stub answer \(number)", "finish_reason": "stop"]], "usage": usage]
        default:
            ["id": "chatcmpl-\(number)", "object": "chat.completion", "model": model,
             "choices": [["index": 0, "message": ["role": "assistant", "content": "stub answer \(number)"], "finish_reason": "stop"]],
             "usage": usage]
        }
        return Array((try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data())
    }

    private static func error(_ status: Int, code: String, message: String, requestID: String,
                              extra: [HTTPField.Name: String] = [:]) -> Response {
        let object: [String: Any] = ["error": ["message": message, "type": "invalid_request_error", "code": code, "param": NSNull()]]
        var response = respond(status, Array((try? JSONSerialization.data(withJSONObject: object)) ?? Data()), requestID: requestID)
        for (name, value) in extra { response.headers[name] = value }
        return response
    }

    private static func respond(_ status: Int, _ body: [UInt8], requestID: String) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        headers[HTTPField.Name("x-request-id")!] = requestID
        return Response(status: .init(code: status), headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }
}
