import FanoutClient
import FanoutRunners
import FanoutScheduler
import FanoutTestSupport
import Foundation
import OpenAIStub
import Testing

/// The `openai` runner through the real daemon path (socket, scheduler,
/// SQLite file) against a real HTTP server on loopback.
@Suite struct OpenAIRunnerTests {
    static let key = "sk-test-\(UInt64.random(in: 1...UInt64.max))"

    static func agent(_ name: String = "llm", baseURL: String, maxAttempts: Int = 3, timeoutMs: Int64 = 0,
                      extra: [String: any Sendable] = [:]) -> (AgentConfiguration, [String: any Sendable]) {
        var settings: [String: any Sendable] = ["base_url": baseURL, "api_key_env": "TEST_OPENAI_KEY", "model": "stub-model"]
        settings.merge(extra) { _, new in new }
        return (AgentConfiguration(name: name, runner: "openai", concurrency: 8, maxAttempts: maxAttempts, timeoutMs: timeoutMs), settings)
    }

    static let environment = ["TEST_OPENAI_KEY": key]

    static func body(_ extra: String = "") -> [UInt8] {
        Array(#"{"messages": [{"role": "user", "content": "hi"}], "temperature": 0.7\#(extra)}"#.utf8)
    }

    /// Enqueues, waits for the batch's end, returns its results by custom id.
    static func run(_ tasks: [TaskSpec], on client: FanoutClient, agent: String = "llm") async throws -> (BatchInfo, [String: TaskResult]) {
        let batch = try await client.enqueueBatch(ownerID: "openai-test", agent: agent, tasks: tasks)
        _ = try await events(of: batch.id, owner: "openai-test", on: client)
        var results: [String: TaskResult] = [:]
        for try await result in client.results(batchID: batch.id) { results[result.customID] = result }
        return (try await client.batch(batch.id), results)
    }

    @Test func eachEndpointAnswersWithTheProvidersBodyStatusRequestIDAndUsage() async throws {
        try await withDeadline(.seconds(30)) {
            try await withOpenAIStub { stub, baseURL in
                try await withRunnerDaemon([Self.agent(baseURL: baseURL)], environment: Self.environment) { _, client in
                    let tasks = try OpenAIStub.endpoints.enumerated().map { index, endpoint in
                        try TaskSpec(customID: "e\(index)", payload: Self.body(), maxAttempts: nil, timeout: nil, url: endpoint)
                    }
                    let (batch, results) = try await Self.run(tasks, on: client)
                    #expect(batch.status == .completed)
                    for (index, endpoint) in OpenAIStub.endpoints.enumerated() {
                        let result = try #require(results["e\(index)"])
                        #expect(result.status == .completed)
                        #expect(result.statusCode == 200)
                        #expect(result.requestID.hasPrefix("req_stub_"))
                        #expect(result.url == endpoint)
                        let object = try #require(try JSONSerialization.jsonObject(with: Data(result.result)) as? [String: Any])
                        #expect(object["model"] as? String == "stub-model")
                        let usage = try #require(result.usage)
                        #expect(usage.totalTokens == (endpoint == "/v1/embeddings" ? 7 : 12))
                    }
                    // Usage is summed per batch: three 12-token answers and one 7-token embedding.
                    #expect(batch.usage.totalTokens == 43)
                    #expect(batch.usage.promptTokens == 28)
                    // The server saw each endpoint once, the key as a Bearer token, and the body as
                    // written with only the agent's model added in front.
                    let requests = stub.requests
                    #expect(Set(requests.map(\.path)) == Set(OpenAIStub.endpoints))
                    for request in requests {
                        #expect(request.headers["authorization"] == "Bearer \(Self.key)")
                        #expect(request.body == Array(#"{"model":"stub-model","#.utf8) + Self.body().dropFirst())
                    }
                }
            }
        }
    }

    @Test func a429WithRetryAfterIsRetriedNoSoonerThanAsked() async throws {
        try await withDeadline(.seconds(30)) {
            try await withOpenAIStub { stub, baseURL in
                try await withRunnerDaemon([Self.agent(baseURL: baseURL)], environment: Self.environment) { _, client in
                    let task = TaskSpec(customID: "limited", payload: Self.body(#", "stub": "429-once", "stub_key": "a""#),
                                        url: "/v1/chat/completions")
                    let (_, results) = try await Self.run([task], on: client)
                    let result = try #require(results["limited"])
                    #expect(result.status == .completed)
                    #expect(result.attempt == 2)
                    let times = stub.requests.map(\.receivedAt)
                    try #require(times.count == 2)
                    // Retry-After: 1 (seconds); a little slack for the two clocks' rounding.
                    #expect(times[1].timeIntervalSince(times[0]) >= 0.98)
                }
            }
        }
    }

    @Test func a500IsRetriedThenSucceeds() async throws {
        try await withDeadline(.seconds(30)) {
            try await withOpenAIStub { stub, baseURL in
                try await withRunnerDaemon([Self.agent(baseURL: baseURL)], environment: Self.environment) { _, client in
                    let task = TaskSpec(customID: "flaky", payload: Self.body(#", "stub": "500-once", "stub_key": "b""#))
                    let (_, results) = try await Self.run([task], on: client)
                    let result = try #require(results["flaky"])
                    #expect(result.status == .completed)
                    #expect(result.attempt == 2)
                    #expect(result.statusCode == 200)
                    #expect(stub.requestCount == 2)
                }
            }
        }
    }

    @Test func clientErrorsAndExhaustedQuotaFailAtOnceWithTheProvidersMessage() async throws {
        try await withDeadline(.seconds(30)) {
            try await withOpenAIStub { stub, baseURL in
                try await withRunnerDaemon([Self.agent(baseURL: baseURL)], environment: Self.environment) { _, client in
                    let tasks = [
                        TaskSpec(customID: "bad", payload: Self.body(#", "stub": "400""#)),
                        TaskSpec(customID: "quota", payload: Self.body(#", "stub": "quota""#)),
                        TaskSpec(customID: "html", payload: Self.body(#", "stub": "malformed""#)),
                    ]
                    let (batch, results) = try await Self.run(tasks, on: client)
                    #expect(batch.counts.failed == 3)
                    #expect(stub.requestCount == 3, "none of them is retried")

                    let bad = try #require(results["bad"])
                    #expect(bad.status == .failed)
                    #expect(bad.attempt == 1)
                    #expect(bad.statusCode == 400)
                    #expect(bad.error?.code == "invalid_value")
                    #expect(bad.error?.message == "Invalid value for 'messages': expected an array.")
                    #expect(String(decoding: bad.result, as: UTF8.self).contains("invalid_request_error"), "the provider's body is kept")

                    let quota = try #require(results["quota"])
                    #expect(quota.error?.code == "insufficient_quota")
                    #expect(quota.error?.retryable == false)

                    let html = try #require(results["html"])
                    #expect(html.error?.code == "invalid_response")
                    #expect(html.error?.message.contains("<html>upstream proxy error") == true)
                }
            }
        }
    }

    @Test func connectionResetsAreRetriedThenFail() async throws {
        try await withDeadline(.seconds(30)) {
            let server = try await MisbehavingServer(.reset)
            try await withRunnerDaemon([Self.agent(baseURL: "http://127.0.0.1:\(server.port)/v1", maxAttempts: 2)],
                                       environment: Self.environment) { _, client in
                let (_, results) = try await Self.run([TaskSpec(customID: "reset", payload: Self.body())], on: client)
                let result = try #require(results["reset"])
                #expect(result.status == .failed)
                #expect(result.attempt == 2)
                #expect(result.error?.code == "connection_error")
                #expect(result.error?.retryable == true)
                #expect(server.requestsSeen == 2)
            }
            await server.stop()
        }
    }

    @Test func aSlowAnswerHitsTheTimeout() async throws {
        try await withDeadline(.seconds(30)) {
            try await withOpenAIStub { _, baseURL in
                try await withRunnerDaemon([Self.agent(baseURL: baseURL, maxAttempts: 1, timeoutMs: 300)],
                                           environment: Self.environment) { _, client in
                    let started = ContinuousClock.now
                    // An answer 12 s away and a 300 ms timeout: a loaded machine takes a few seconds for the rest, never 10.
                    let (_, results) = try await Self.run([TaskSpec(customID: "slow", payload: Self.body(#", "stub_delay_ms": 12000"#))],
                                                          on: client)
                    let result = try #require(results["slow"])
                    #expect(result.status == .failed)
                    #expect(result.error?.code == "timeout")
                    #expect(ContinuousClock.now - started < .seconds(10), "it did not wait for the answer")
                }
            }
        }
    }

    @Test func cancellingATaskAbortsItsRequest() async throws {
        try await withDeadline(.seconds(30)) {
            let server = try await MisbehavingServer(.silent)
            try await withRunnerDaemon([Self.agent(baseURL: "http://127.0.0.1:\(server.port)/v1")],
                                       environment: Self.environment) { _, client in
                let batch = try await client.enqueueBatch(ownerID: "openai-test", agent: "llm",
                                                          tasks: [TaskSpec(customID: "hang", payload: Self.body())])
                while server.requestsSeen == 0 { try await Task.sleep(for: .milliseconds(10)) }
                var taskID: UInt64 = 0
                for try await result in client.subscribe(ownerID: "openai-test", eventTypes: [.taskStarted], batchID: batch.id, since: 0) {
                    taskID = result.taskID
                    break
                }
                let cancelled = try await client.cancelTask(taskID)
                #expect(cancelled.status == .cancelled)
                // The server sees its connection closed: the request was aborted, not left to run.
                while server.closedByClient == 0 { try await Task.sleep(for: .milliseconds(10)) }
                #expect(server.closedByClient == 1)
            }
            await server.stop()
        }
    }

    @Test func tasksTheRunnerCannotSendAreRefusedAtSubmit() async throws {
        try await withDeadline(.seconds(30)) {
            try await withOpenAIStub { stub, baseURL in
                try await withRunnerDaemon([Self.agent(baseURL: baseURL)], environment: Self.environment) { _, client in
                    let cases: [(TaskSpec, String)] = [
                        (TaskSpec(customID: "u", payload: Self.body(), url: "/v1/images/generations"), "is not an endpoint"),
                        (TaskSpec(customID: "s", payload: Self.body(#", "stream": true"#)), "stream"),
                        (TaskSpec(customID: "j", payload: Array("not json".utf8)), "JSON object"),
                    ]
                    for (task, words) in cases {
                        let ok = TaskSpec(customID: "fine", payload: Self.body())
                        let error = await caughtClientError {
                            _ = try await client.enqueueBatch(ownerID: "openai-test", agent: "llm", tasks: [ok, task])
                        }
                        #expect(error?.code == .invalidArgument)
                        #expect(error?.message.contains("task 1") == true)
                        #expect(error?.message.contains(words) == true, "\(error?.message ?? "")")
                    }
                    #expect(stub.requestCount == 0, "nothing of a refused batch ran")
                }
            }
        }
    }
}
