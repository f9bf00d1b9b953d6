import FanoutCore
@testable import FanoutRunners
import FanoutScheduler
import Foundation
import Testing

/// How the openai runner reads a provider's answer and shapes its request, without a server.
@Suite struct OpenAIReplyTests {
    static func reply(_ status: Int, _ body: String, _ headers: [String: String] = [:]) -> OpenAIReply {
        OpenAIReply(statusCode: status, headers: headers, body: Array(body.utf8))
    }

    @Test func successKeepsTheBodyStatusRequestIDAndUsage() throws {
        let body = #"{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#
        let output = try Self.reply(200, body, ["x-request-id": "req_1"]).outcome().get()
        #expect(output.result == Array(body.utf8))
        #expect(output.details == ResponseDetails(statusCode: 200, requestID: "req_1",
                                                  usage: TokenUsage(promptTokens: 3, completionTokens: 4, totalTokens: 7)))
    }

    @Test func responsesAPIUsageAndAMissingTotal() throws {
        let output = try Self.reply(200, #"{"usage":{"input_tokens":5,"output_tokens":6}}"#).outcome().get()
        #expect(output.details.usage == TokenUsage(promptTokens: 5, completionTokens: 6, totalTokens: 11))
        #expect(try Self.reply(200, #"{"data":[]}"#).outcome().get().details.usage == nil)
    }

    @Test(arguments: [(408, true), (409, true), (429, true), (500, true), (503, true),
                      (400, false), (401, false), (403, false), (404, false), (422, false)])
    func statusClassification(status: Int, retryable: Bool) {
        guard case .failure(let failure) = Self.reply(status, #"{"error":{"message":"m","code":"c"}}"#).outcome() else {
            Issue.record("\(status) succeeded")
            return
        }
        #expect(failure.failure.retryable == retryable)
        #expect(failure.failure.code == "c")
        #expect(failure.failure.message == "m")
        #expect(failure.details.statusCode == status)
    }

    @Test func exhaustedQuotaIsNotRetried() {
        guard case .failure(let failure) = Self.reply(429, #"{"error":{"message":"quota","code":"insufficient_quota"}}"#,
                                                      ["retry-after": "5"]).outcome() else { return }
        #expect(!failure.failure.retryable)
        #expect(failure.retryAfterMs == nil)
    }

    @Test func retryAfterInMillisecondsSecondsOrAnHTTPDate() {
        let now = Date(timeIntervalSince1970: 1_700_000_000)
        #expect(OpenAIReply.retryAfterMs(["retry-after-ms": "1500"], now: now) == 1_500)
        #expect(OpenAIReply.retryAfterMs(["retry-after": "2"], now: now) == 2_000)
        #expect(OpenAIReply.retryAfterMs(["retry-after": "0.5"], now: now) == 500)
        // 1_700_000_000 is Tue, 14 Nov 2023 22:13:20 GMT.
        #expect(OpenAIReply.retryAfterMs(["retry-after": "Tue, 14 Nov 2023 22:13:30 GMT"], now: now) == 10_000)
        #expect(OpenAIReply.retryAfterMs(["retry-after": "Tue, 14 Nov 2023 22:13:00 GMT"], now: now) == 0)
        #expect(OpenAIReply.retryAfterMs(["retry-after": "soon"], now: now) == nil)
        #expect(OpenAIReply.retryAfterMs(["retry-after": "1e300"], now: now) == RunnerFailure.maxRetryAfterMs)
    }

    @Test func plainerErrorShapesOfCompatibleServers() {
        #expect(ProviderError(body: [], parsed: ["error": "model not found"], statusCode: 404).message == "model not found")
        let fastAPI = ProviderError(body: [], parsed: ["detail": "Not Found"], statusCode: 404)
        #expect(fastAPI.message == "Not Found")
        #expect(fastAPI.code == "http_404")
        let text = ProviderError(body: Array("Bad Gateway".utf8), parsed: nil, statusCode: 502)
        #expect(text.message.contains("\"Bad Gateway\""))
    }

    @Test func aBodyThatIsNotJSONQuotesItsFirstBytes() {
        guard case .failure(let failure) = Self.reply(200, "<html>" + String(repeating: "x", count: 500)).outcome() else { return }
        #expect(failure.failure.code == "invalid_response")
        #expect(failure.failure.message.contains("\"<html>xxx"))
        #expect(failure.failure.message.count < 300)
    }

    @Test func theModelIsAddedInFrontAndNothingElseChanges() {
        let body = Array(#" {"messages": [], "temperature": 0.7}"#.utf8)
        #expect(String(decoding: OpenAIRequestBody.adding(model: "m", to: body), as: UTF8.self)
                == #" {"model":"m","messages": [], "temperature": 0.7}"#)
        #expect(String(decoding: OpenAIRequestBody.adding(model: "m", to: Array("{ }".utf8)), as: UTF8.self) == #"{"model":"m" }"#)
    }

    @Test func addressesJoinTheBaseAndTheEndpointOnce() {
        #expect(OpenAIEndpoint.address(of: "/v1/chat/completions", under: "http://h:1/v1") == "http://h:1/v1/chat/completions")
        #expect(OpenAIEndpoint.address(of: "/v1/chat/completions", under: "http://h:1/v1/") == "http://h:1/v1/chat/completions")
        #expect(OpenAIEndpoint.address(of: "/v1/embeddings", under: "http://h:1") == "http://h:1/v1/embeddings")
        #expect(OpenAIEndpoint.address(of: "/v1/responses", under: "https://h/openai/v1") == "https://h/openai/v1/responses")
    }

    @Test func settingsAreCheckedWithClearMessages() throws {
        func message(_ object: [String: Any]) -> String {
            do {
                _ = try OpenAISettings.decode(object, agent: "a")
                return ""
            } catch {
                return "\(error)"
            }
        }
        #expect(message([:]).contains("needs base_url"))
        #expect(message(["base_url": "ftp://x"]).contains("http:// or https://"))
        #expect(message(["base_url": "http://x", "modle": "m"]).contains("unknown setting \"modle\""))
        #expect(message(["base_url": "http://x", "headers": ["X-A": "1\r\nEvil: 2"]]).contains("single-line"))
        #expect(message(["base_url": "http://x", "max_response_bytes": 0]).contains("max_response_bytes"))
        let settings = try OpenAISettings.decode(["base_url": "http://x/v1", "model": "m", "headers": ["X-A": "1"]], agent: "a")
        #expect(settings.model == "m")
        #expect(settings.headers == ["X-A": "1"])
    }
}

/// What must never reach a log, an error or the store: the key, and unbounded provider text.
@Suite struct OpenAISecretsTests {
    @Test func aKeyOrHeaderWithControlCharactersIsRefusedWithoutShowingIt() throws {
        let http = BuiltinRunners.makeHTTPClient(connections: 1)
        defer { try? http.syncShutdown() }
        let settings = try OpenAISettings.decode(["base_url": "http://127.0.0.1:1/v1", "api_key_env": "K"], agent: "a")
        do {
            _ = try OpenAIRunner(settings: settings, agent: "a", client: http, environment: ["K": "sk-secret\r"])
            Issue.record("a key ending in CR was accepted")
        } catch {
            #expect("\(error)".contains("control character"))
            #expect(!"\(error)".contains("sk-secret"))
        }
        #expect(throws: (any Error).self) {
            _ = try OpenAISettings.decode(["base_url": "http://x", "headers": ["X-A": "a\u{1}b"]], agent: "a")
        }
    }

    @Test func aHugeProviderMessageIsCut() {
        let message = String(repeating: "m", count: 100_000)
        let reply = OpenAIReply(statusCode: 400, headers: [:], body: Array(#"{"error":{"message":"\#(message)","code":"c"}}"#.utf8))
        guard case .failure(let failure) = reply.outcome() else { return }
        #expect(failure.failure.message.utf8.count <= ProviderError.maxTextBytes + 3)
    }

    @Test func absurdUsageIsBounded() throws {
        let output = try OpenAIReply(statusCode: 200, headers: [:], body: Array(#"{"usage":{"total_tokens":9e300}}"#.utf8)).outcome().get()
        #expect(output.details.usage?.totalTokens == 1_000_000_000_000)
    }

    @Test func anEmptyModelIsRefusedAtSubmit() throws {
        let http = BuiltinRunners.makeHTTPClient(connections: 1)
        defer { try? http.syncShutdown() }
        let runner = try OpenAIRunner(settings: OpenAISettings(baseURL: "http://x/v1", model: "m"), agent: "a", client: http, environment: [:])
        let task = NewTask(customID: "t", agent: "a", payload: Array(#"{"model": null, "messages": []}"#.utf8))
        #expect(runner.problem(with: task)?.contains("non-empty string") == true)
    }
}
