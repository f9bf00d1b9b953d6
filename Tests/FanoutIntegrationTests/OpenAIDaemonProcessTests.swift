import FanoutTestSupport
import Foundation
import OpenAIStub
import Testing

/// The openai runner as a user meets it: fanoutd started with a config file
/// naming an OpenAI-compatible server, and the `fanout` command submitting a
/// Batch JSONL file and fetching results.
@Suite struct OpenAIDaemonProcessTests {
    @Test func batchFileThroughFanoutdAndTheCLIKeepsTheKeySecret() async throws {
        try await withDeadline(.seconds(90)) {
            try await withOpenAIStub { stub, baseURL in
                try await withTemporaryDirectory { directory in
                    let key = "sk-secret-\(UInt64.random(in: 1...UInt64.max))"
                    let config: [String: Any] = ["agents": [[
                        "name": "llm", "runner": "openai", "base_url": baseURL, "api_key_env": "TEST_OPENAI_KEY",
                        "concurrency": 16, "max_attempts": 3,
                    ]]]
                    try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: directory + "/config.json"))
                    let socket = directory + "/d.sock"
                    try await withDaemonProcess(
                        ["--socket", socket, "--db", directory + "/fanout.db", "--config", directory + "/config.json",
                         "--log-level", "trace"],
                        environment: ["TEST_OPENAI_KEY": key], logPath: directory + "/fanoutd.log"
                    ) { daemon in
                        try await daemon.waitUntilListening(socket)
                        // 200 Batch lines; every 50th is answered 429 (Retry-After: 1) once.
                        let bodies = (0..<200).map { index in
                            let steer = index % 50 == 0 ? #", "stub": "429-once", "stub_key": "k\#(index)""# : ""
                            return #"{"model": "m-1", "messages": [{"role": "user", "content": "Hi \#(index)"}], "temperature": 0.7\#(steer)}"#
                        }
                        let lines = bodies.enumerated().map { index, body in
                            #"{"custom_id": "r\#(index)", "method": "POST", "url": "/v1/chat/completions", "body": \#(body)}"#
                        }
                        let file = directory + "/batch.jsonl"
                        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: file))

                        let submit = try await FanoutCLI.run(["submit", file, "--agent", "llm", "--owner", "alice", "--watch", "--socket", socket],
                                                             timeoutSeconds: 60)
                        #expect(submit.status == 0, "\(submit.err) \(submit.out)")
                        let batchID = submit.out.trimmingCharacters(in: .whitespacesAndNewlines)

                        let output = directory + "/results.jsonl"
                        let results = try await FanoutCLI.run(["results", batchID, "-o", output, "--socket", socket])
                        #expect(results.status == 0, "\(results.err)")
                        let outputLines = try String(contentsOfFile: output, encoding: .utf8).split(separator: "\n")
                        #expect(outputLines.count == 200)
                        var customIDs = Set<String>()
                        for line in outputLines {
                            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
                            customIDs.insert(try #require(object["custom_id"] as? String))
                            let response = try #require(object["response"] as? [String: Any])
                            #expect(response["status_code"] as? Int == 200)
                            #expect((response["request_id"] as? String)?.hasPrefix("req_stub_") == true)
                            let body = try #require(response["body"] as? [String: Any])
                            #expect(body["object"] as? String == "chat.completion")
                            #expect(object["error"] is NSNull)
                        }
                        #expect(customIDs.count == 200)

                        // The server got each body exactly as the file wrote it, and the key as a Bearer token.
                        let received = Set(stub.requests.map { String(decoding: $0.body, as: UTF8.self) })
                        #expect(received == Set(bodies))
                        #expect(stub.requests.allSatisfy { $0.headers["authorization"] == "Bearer \(key)" })
                        #expect(stub.requestCount == 204, "four 429s, each retried once")

                        // Usage is summed per batch and shown by `fanout status`.
                        let status = try await FanoutCLI.run(["status", batchID, "--json", "--socket", socket])
                        let statusObject = try #require(try JSONSerialization.jsonObject(with: Data(status.out.utf8)) as? [String: Any])
                        #expect((statusObject["usage"] as? [String: Any])?["total_tokens"] as? Int == 200 * 12)
                        let summary = try await FanoutCLI.run(["status", batchID, "--socket", socket])
                        #expect(summary.out.contains("tokens: 2400"), "\(summary.out)")

                        // A line naming another endpoint is refused by number, and nothing is submitted.
                        let bad = directory + "/bad.jsonl"
                        let badLines = lines.prefix(2) + [#"{"custom_id": "x", "method": "POST", "url": "/v1/images/generations", "body": {"model": "m"}}"#]
                        try Data(badLines.joined(separator: "\n").utf8).write(to: URL(fileURLWithPath: bad))
                        let refused = try await FanoutCLI.run(["submit", bad, "--agent", "llm", "--owner", "alice", "--socket", socket])
                        #expect(refused.status != 0)
                        #expect(refused.err.contains("line 3"), "\(refused.err)")
                        #expect(stub.requestCount == 204)

                        // The key is in neither the log (at trace level) nor the database files.
                        daemon.signal(SIGTERM)
                        _ = await daemon.waitForExit(seconds: 15)
                        #expect(!daemon.output.contains(key))
                        #expect(daemon.output.contains("fanoutd stopped"))
                        for name in try FileManager.default.contentsOfDirectory(atPath: directory) where name.hasPrefix("fanout.db") {
                            let bytes = try Data(contentsOf: URL(fileURLWithPath: directory + "/" + name))
                            #expect(bytes.range(of: Data(key.utf8)) == nil, "\(name) holds the key")
                        }
                    }
                }
            }
        }
    }
}
