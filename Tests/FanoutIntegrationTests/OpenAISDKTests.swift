import FanoutTestSupport
import Foundation
import Testing

/// The gateway as OpenAI SDK users meet it: the official `openai` Python
/// package (pinned, from PyPI) against fanoutd, changing nothing but
/// base_url and api_key, with the local OpenAI-compatible stub behind.
@Suite(.serialized) struct OpenAISDKTests {
    @Test func aBatchRunsToCompletionThroughTheSDK() async throws {
        try await withDeadline(.seconds(400), "the SDK run (a first run installs the openai package)") {
            _ = try await OpenAISDK.python()
            try await withOpenAIStub(delay: .milliseconds(5)) { stub, baseURL in
                try await withGatewayDaemon(baseURL: baseURL) { _, http, token, _, _ in
                    let result = try await OpenAISDK.run("run", ["--base-url", http, "--api-key", token, "--count", "200", "--unrouted"])
                    #expect(result["status"] as? String == "completed")
                    #expect(result["counts"] as? [String: Int] == ["total": 200, "completed": 199, "failed": 1])
                    #expect(result["metadata"] as? [String: String] == ["suite": "sdk"])
                    // Every custom_id exactly once: 199 answers in the output file, the unrouted one in the error file.
                    let output = try #require(result["output_ids"] as? [String])
                    let errors = try #require(result["error_lines"] as? [[String: Any]])
                    #expect(Set(output).count == 199)
                    #expect(Set(output + errors.compactMap { $0["custom_id"] as? String }) == Set((0..<200).map { "req-\($0)" }))
                    #expect((errors.first?["error"] as? [String: Any])?["code"] as? String == "model_not_found")
                    #expect(result["output_status"] as? [Int] == [200])
                    #expect(result["output_has_body"] as? Bool == true)
                    #expect(result["content_roundtrip"] as? Int == 200, "the input file reads back line for line")
                    #expect(stub.requestCount == 199)
                }
            }
        }
    }

    @Test func cancelPartWayKeepsTheCompletedLines() async throws {
        try await withDeadline(.seconds(400)) {
            _ = try await OpenAISDK.python()
            try await withOpenAIStub { _, baseURL in
                try await withGatewayDaemon(baseURL: baseURL) { _, http, token, _, _ in
                    let result = try await OpenAISDK.run("cancel", ["--base-url", http, "--api-key", token, "--count", "300"])
                    #expect(result["status"] as? String == "cancelled")
                    let counts = try #require(result["counts"] as? [String: Int])
                    let output = try #require(result["output_ids"] as? [String])
                    #expect(counts["completed"] == output.count)
                    #expect(output.count >= 3 && output.count < 300, "cancelled part-way: \(output.count) completed")
                    #expect(counts["total"] == 300)
                }
            }
        }
    }

    @Test func malformedFilesAndWrongKeysGetOpenAIErrors() async throws {
        try await withDeadline(.seconds(400)) {
            _ = try await OpenAISDK.python()
            try await withOpenAIStub { _, baseURL in
                try await withGatewayDaemon(baseURL: baseURL) { _, http, token, _, _ in
                    let malformed = try await OpenAISDK.run("malformed", ["--base-url", http, "--api-key", token])
                    #expect(malformed["status"] as? Int == 400)
                    let message = malformed["message"] as? String ?? ""
                    #expect(message.contains("line 3") && message.contains("line 4"), "\(message)")
                    let wrong = try await OpenAISDK.run("wrong-key", ["--base-url", http, "--api-key", "not-the-token"])
                    #expect(wrong["status"] as? Int == 401)
                }
            }
        }
    }

    @Test func anotherUserOnTheUnixSocketSeesOnlyItsOwnBatches() async throws {
        try await withDeadline(.seconds(400)) {
            _ = try await OpenAISDK.python()
            let user = try await UnprivilegedUser.make()
            try await withOpenAIStub { _, baseURL in
                try await withGatewayDaemon(baseURL: baseURL, socketMode: "0666") { _, _, _, socket, directory in
                    // Root's batch, through the SDK on the Unix socket.
                    let mine = try await OpenAISDK.run("run", ["--socket", socket, "--count", "5", "--prefix", "root-"])
                    let rootBatch = try #require(mine["batch_id"] as? String)
                    let rootFile = try #require(mine["file_id"] as? String)
                    chmod(directory, 0o755)

                    // The other user: its own upload and batch work, root's are invisible.
                    let lines = (0..<3).map {
                        #"{"custom_id": "other-\#($0)", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "stub-model", "messages": []}}"#
                    }.joined(separator: "\n")
                    let input = directory + "/other.jsonl"
                    FileManager.default.createFile(atPath: input, contents: Data(lines.utf8), attributes: [.posixPermissions: 0o644])
                    func curl(_ arguments: [String]) async throws -> (status: Int, body: [String: Any]) {
                        let result = try await user.run("/usr/bin/curl", ["-s", "-w", "\n%{http_code}", "--unix-socket", socket] + arguments)
                        let parts = result.out.split(separator: "\n")
                        let body = try JSONSerialization.jsonObject(with: Data((parts.dropLast().joined(separator: "\n")).utf8)) as? [String: Any]
                        return (Int(parts.last ?? "") ?? 0, body ?? [:])
                    }
                    let upload = try await curl(["-F", "purpose=batch", "-F", "file=@\(input)", "http://fanout/v1/files"])
                    #expect(upload.status == 200, "\(upload.body)")
                    let fileID = try #require(upload.body["id"] as? String)
                    let created = try await curl(["-H", "Content-Type: application/json", "-d",
                                                  #"{"input_file_id": "\#(fileID)", "endpoint": "/v1/chat/completions", "completion_window": "24h"}"#,
                                                  "http://fanout/v1/batches"])
                    #expect(created.status == 200, "\(created.body)")
                    let otherBatch = try #require(created.body["id"] as? String)

                    let listed = try await curl(["http://fanout/v1/batches"])
                    let ids = (listed.body["data"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
                    #expect(ids == [otherBatch], "the other user lists only its own batch")
                    #expect(try await curl(["http://fanout/v1/batches/\(rootBatch)"]).status == 404)
                    #expect(try await curl(["-X", "POST", "http://fanout/v1/batches/\(rootBatch)/cancel"]).status == 404)
                    #expect(try await curl(["http://fanout/v1/files/\(rootFile)/content"]).status == 404)
                    let rootOutput = try #require(try await OpenAISDK.run("run", ["--socket", socket, "--count", "1", "--prefix", "again-"])["batch_id"] as? String)
                    let outputID = "file-batch\(rootOutput.dropFirst("batch_".count))-output"
                    #expect(try await curl(["http://fanout/v1/files/\(outputID)/content"]).status == 404, "another uid's output file")
                    #expect(try await curl(["http://fanout/v1/files/\(outputID)"]).status == 404)
                    #expect(try await curl(["-X", "DELETE", "http://fanout/v1/files/\(rootFile)"]).status == 404)
                    let files = try await curl(["http://fanout/v1/files"])
                    #expect((files.body["data"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String } == [fileID])
                }
            }
        }
    }
}

/// A system user without privileges, made once, for tests that need another uid.
struct UnprivilegedUser: Sendable {
    static let name = "fanout-test"
    let name: String

    static func make() async throws -> UnprivilegedUser {
        if try await ChildProcess.run("/usr/bin/id", ["-u", name]).status != 0 {
            let made = try await ChildProcess.run("/usr/sbin/useradd", ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name])
            // Another test may have made it meanwhile.
            try #require(made.status == 0 || made.err.contains("already exists"), "useradd failed: \(made.err)")
        }
        return UnprivilegedUser(name: name)
    }

    /// Runs a program as this user.
    func run(_ executable: String, _ arguments: [String]) async throws -> (status: Int32, out: String, err: String) {
        try await ChildProcess.run("/usr/sbin/runuser", ["-u", name, "--", executable] + arguments, timeoutSeconds: 60)
    }
}

/// fanoutd's gateway settings, refused at start with a message naming the fix.
@Suite struct GatewaySettingsTests {
    @Test func tcpWithoutATokenAndAnOpenTokenFileAreRefused() async throws {
        let fanoutd = try #require(FanoutdExecutable.path)
        try await withTemporaryDirectory { directory in
            let base = ["--socket", directory + "/d.sock", "--db", directory + "/fanout.db", "--http", "127.0.0.1:0"]
            let noToken = try await ChildProcess.run(fanoutd, base)
            #expect(noToken.status != 0)
            #expect(noToken.err.contains("--http-token-file"), "\(noToken.err)")

            FileManager.default.createFile(atPath: directory + "/token", contents: Data("t".utf8), attributes: [.posixPermissions: 0o644])
            let open = try await ChildProcess.run(fanoutd, base + ["--http-token-file", directory + "/token"])
            #expect(open.status != 0)
            #expect(open.err.contains("chmod 600"), "\(open.err)")

            let badRoute = directory + "/config.json"
            try Data(#"{"gateway_routes": {"gpt-4o": "nobody"}}"#.utf8).write(to: URL(fileURLWithPath: badRoute))
            let route = try await ChildProcess.run(fanoutd, ["--socket", directory + "/d.sock", "--db", directory + "/fanout.db",
                                                              "--http-socket", directory + "/h.sock", "--config", badRoute])
            #expect(route.status != 0)
            #expect(route.err.contains("\"nobody\", which is not an agent"), "\(route.err)")
        }
    }
}
