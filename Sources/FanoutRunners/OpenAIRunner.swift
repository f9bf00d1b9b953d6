import AsyncHTTPClient
import FanoutCore
import FanoutScheduler
import Foundation
import NIOCore
import NIOHTTP1

/// Posts each task's body to an OpenAI-compatible endpoint (OpenAI, vLLM,
/// llama.cpp server, Ollama, LiteLLM, …) and keeps the answer as it came.
///
/// The body goes out unchanged, except that `model` is added when it names
/// none and the agent sets one. A 2xx JSON answer completes the task with
/// the body byte for byte, its status, `x-request-id` and `usage`; other
/// answers fail it, retryably for 408, 409, 429 and 5xx (honouring
/// Retry-After), at once for the rest. Cancellation aborts the request.
public struct OpenAIRunner: Runner {
    public let settings: OpenAISettings
    let client: HTTPClient
    /// Resolved from `settings.apiKeyVariable` when the daemon starts; never logged or stored.
    let apiKey: String?
    /// How long one request may take when the agent sets no attempt timeout.
    let requestTimeout: TimeAmount

    public static let defaultRequestTimeoutMs: Int64 = 600_000

    /// - Parameters:
    ///   - environment: where `api_key_env` is looked up (fanoutd's environment).
    ///   - requestTimeoutMs: the agent's attempt timeout; nil or 0: `defaultRequestTimeoutMs`.
    public init(settings: OpenAISettings, agent: String, client: HTTPClient, environment: [String: String],
                requestTimeoutMs: Int64? = nil) throws {
        self.settings = settings
        self.client = client
        if let variable = settings.apiKeyVariable {
            guard let key = environment[variable], !key.isEmpty else {
                throw FanoutError.invalidArgument(
                    "agent \"\(agent)\": api_key_env is \(variable), which is not set in fanoutd's environment")
            }
            // A control character (a CR from a Windows env file) would make every request fail with
            // an error quoting the header, key included. Refuse it here, without showing the key.
            guard !OpenAISettings.hasControlCharacter(key) else {
                throw FanoutError.invalidArgument(
                    "agent \"\(agent)\": the key in \(variable) holds a control character (a trailing CR or newline?)")
            }
            apiKey = key
        } else {
            apiKey = nil
        }
        let timeout = requestTimeoutMs.flatMap { $0 > 0 ? $0 : nil } ?? Self.defaultRequestTimeoutMs
        requestTimeout = .milliseconds(timeout)
    }

    public func problem(with task: NewTask) -> String? {
        let endpoint = task.url ?? settings.defaultURL
        guard OpenAIEndpoint.supported.contains(endpoint) else {
            return "url \"\(endpoint.prefix(200))\" is not an endpoint the openai runner serves; use one of \(OpenAIEndpoint.supported.joined(separator: ", "))"
        }
        switch OpenAIRequestBody.inspect(task.payload) {
        case .failure(let problem):
            return problem.message
        case .success(let body):
            if body.streams {
                return "the body asks for \"stream\": true; batch requests need whole answers, so remove it or set it to false"
            }
            if body.hasModel && !body.modelIsValid {
                return "\"model\" must be a non-empty string"
            }
            if !body.hasModel && settings.model == nil {
                return "the body names no model and agent \"\(task.agent)\" sets none; add \"model\" to the body or to the agent"
            }
            return nil
        }
    }

    public func run(_ context: RunContext) async throws -> RunOutput {
        let endpoint = context.url ?? settings.defaultURL
        let timeout = context.timeoutMs.map { TimeAmount.milliseconds($0) } ?? requestTimeout
        var body = context.payload
        if let model = settings.model, case .success(let inspected) = OpenAIRequestBody.inspect(body), !inspected.hasModel {
            body = OpenAIRequestBody.adding(model: model, to: body)
        }
        var request = HTTPClientRequest(url: OpenAIEndpoint.address(of: endpoint, under: settings.baseURL))
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "User-Agent", value: "fanout")
        if let apiKey { request.headers.add(name: "Authorization", value: "Bearer \(apiKey)") }
        for (name, value) in settings.headers { request.headers.replaceOrAdd(name: name, value: value) }
        request.body = .bytes(ByteBuffer(bytes: body))

        let reply: OpenAIReply
        do {
            let response = try await client.execute(request, timeout: timeout)
            let collected = try await response.body.collect(upTo: settings.maxResponseBytes)
            var headers: [String: String] = [:]
            for header in response.headers { headers[header.name.lowercased()] = header.value }
            reply = OpenAIReply(statusCode: Int(response.status.code), headers: headers, body: Array(buffer: collected))
        } catch {
            if Task.isCancelled { throw CancellationError() }
            throw failure(for: error, timeout: timeout)
        }
        switch reply.outcome() {
        case .success(let output): return output
        case .failure(let failure): throw failure
        }
    }

    /// A request that got no complete answer.
    private func failure(for error: any Error, timeout: TimeAmount) -> RunnerFailure {
        if error is NIOTooManyBytesError {
            return RunnerFailure("the answer is larger than max_response_bytes (\(settings.maxResponseBytes))",
                                 code: "response_too_large", retryable: false)
        }
        if let client = error as? HTTPClientError, client == .connectTimeout {
            return RunnerFailure("could not connect to \(settings.baseURL) within 10 s", code: "timeout", retryable: true)
        }
        if let client = error as? HTTPClientError, [.deadlineExceeded, .readTimeout, .writeTimeout].contains(client) {
            return RunnerFailure("no answer from \(settings.baseURL) within \(timeout.nanoseconds / 1_000_000) ms",
                                 code: "timeout", retryable: true)
        }
        // Never `\(error)` of a client error: some quote the request's header values, the key among them.
        let reason = (error as? HTTPClientError)?.shortDescription ?? String(describing: type(of: error)) + ": \(error)"
        return RunnerFailure("the request to \(settings.baseURL) failed: \(reason)", code: "connection_error", retryable: true)
    }
}
