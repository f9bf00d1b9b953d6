import FanoutCore
@testable import FanoutGateway
import FanoutRunners
import FanoutScheduler
import FanoutStore
import FanoutTestSupport
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing

/// The gateway's HTTP layer, driven by Hummingbird's test client against a
/// real scheduler and SQLite file, with echo tasks behind.
@Suite struct GatewayHTTPTests {
    static let token = "test-token"

    /// A gateway on a live test server, over a fresh store and scheduler running echo tasks.
    static func withGateway<T: Sendable>(_ body: @escaping @Sendable (any TestClientProtocol) async throws -> T) async throws -> T {
        try await withTemporaryDirectory { directory in
            let store = try SQLiteStore(path: directory + "/fanout.db")
            let scheduler = try Scheduler(store: store, configuration: SchedulerConfiguration(
                agents: [AgentConfiguration(name: "echo", runner: "echo", concurrency: 16)]), runners: ["echo": EchoRunner()])
            try scheduler.start()
            let configuration = GatewayConfiguration(tcpAddress: nil, socketPath: nil, token: token, tokenUID: 0,
                                                     routes: GatewayRoutes(defaultAgent: "echo"), limits: EnqueueLimits())
            let router = GatewayRouter(scheduler: scheduler, store: store, configuration: configuration)
                .router(authentication: .token(token, uid: 0))
            do {
                let value = try await Application(router: router).test(.live, body)
                await scheduler.shutdown()
                return value
            } catch {
                await scheduler.shutdown()
                throw error
            }
        }
    }

    static var auth: HTTPFields { [.authorization: "Bearer \(token)"] }

    static func line(_ index: Int, model: String = "m", extra: String = "") -> String {
        #"{"custom_id": "c\#(index)", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "\#(model)", "n": \#(index)\#(extra)}}"#
    }

    /// A multipart form with `purpose` and a `file` part.
    static func form(_ file: String, purpose: String = "batch") -> (HTTPFields, ByteBuffer) {
        let boundary = "----fanout\(UInt32.random(in: 0...UInt32.max))"
        let body = """
            --\(boundary)\r
            Content-Disposition: form-data; name="purpose"\r
            \r
            \(purpose)\r
            --\(boundary)\r
            Content-Disposition: form-data; name="file"; filename="requests.jsonl"\r
            Content-Type: application/jsonl\r
            \r
            \(file)\r
            --\(boundary)--\r

            """
        var headers = auth
        headers[.contentType] = "multipart/form-data; boundary=\(boundary)"
        return (headers, ByteBuffer(string: body))
    }

    static func json(_ response: TestResponse) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any])
    }

    static func upload(_ client: any TestClientProtocol, _ lines: [String]) async throws -> String {
        let (headers, body) = form(lines.joined(separator: "\n"))
        let response = try await client.execute(uri: "/v1/files", method: .post, headers: headers, body: body)
        #expect(response.status == .ok, "\(String(buffer: response.body))")
        return try #require(try json(response)["id"] as? String)
    }

    static func createBatch(_ client: any TestClientProtocol, file: String) async throws -> [String: Any] {
        var headers = auth
        headers[.contentType] = "application/json"
        let response = try await client.execute(uri: "/v1/batches", method: .post, headers: headers, body: ByteBuffer(string: """
            {"input_file_id": "\(file)", "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": {"k": "v"}}
            """))
        #expect(response.status == .ok, "\(String(buffer: response.body))")
        return try json(response)
    }

    static func waitForEnd(_ client: any TestClientProtocol, _ id: String) async throws -> [String: Any] {
        while true {
            let batch = try json(try await client.execute(uri: "/v1/batches/\(id)", method: .get, headers: auth))
            if ["completed", "failed", "expired", "cancelled"].contains(batch["status"] as? String ?? "") { return batch }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    @Test func filesUploadListReadAndDelete() async throws {
        try await withDeadline(.seconds(30)) {
            try await Self.withGateway { client in
                let lines = (0..<5).map { Self.line($0) }
                let id = try await Self.upload(client, lines)
                let file = try Self.json(try await client.execute(uri: "/v1/files/\(id)", method: .get, headers: Self.auth))
                #expect(file["object"] as? String == "file")
                #expect(file["purpose"] as? String == "batch")
                #expect(file["filename"] as? String == "requests.jsonl")
                let content = try await client.execute(uri: "/v1/files/\(id)/content", method: .get, headers: Self.auth)
                #expect(String(buffer: content.body) == lines.joined(separator: "\n") + "\n")
                let list = try Self.json(try await client.execute(uri: "/v1/files", method: .get, headers: Self.auth))
                #expect((list["data"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == [id])
                let deleted = try Self.json(try await client.execute(uri: "/v1/files/\(id)", method: .delete, headers: Self.auth))
                #expect(deleted["deleted"] as? Bool == true)
                let gone = try await client.execute(uri: "/v1/files/\(id)", method: .get, headers: Self.auth)
                #expect(gone.status == .notFound)
                #expect((try Self.json(gone)["error"] as? [String: Any])?["type"] as? String == "invalid_request_error")
            }
        }
    }

    @Test func badUploadsAreRefusedWithLineNumbers() async throws {
        try await withDeadline(.seconds(30)) {
            try await Self.withGateway { client in
                let cases: [(String, String, String)] = [
                    ([Self.line(0), "{not json", Self.line(2)].joined(separator: "\n"), "batch", "line 2: not valid JSON"),
                    ([Self.line(0), Self.line(0)].joined(separator: "\n"), "batch", "line 2: custom_id \"c0\" appears more than once"),
                    (Self.line(0, extra: #", "stream": true"#), "batch", "line 1: body has \"stream\": true"),
                    (Self.line(0), "fine-tune", "purpose must be \"batch\""),
                    ("", "batch", "the file has no requests"),
                ]
                for (file, purpose, words) in cases {
                    let (headers, body) = Self.form(file, purpose: purpose)
                    let response = try await client.execute(uri: "/v1/files", method: .post, headers: headers, body: body)
                    #expect(response.status == .badRequest)
                    let error = try #require(try Self.json(response)["error"] as? [String: Any])
                    #expect((error["message"] as? String)?.contains(words) == true, "\(error)")
                }
                var plain = Self.auth
                plain[.contentType] = "application/json"
                let notMultipart = try await client.execute(uri: "/v1/files", method: .post, headers: plain, body: ByteBuffer(string: "{}"))
                #expect(notMultipart.status == .badRequest)
                // Nothing of the refused uploads is left.
                let list = try Self.json(try await client.execute(uri: "/v1/files", method: .get, headers: Self.auth))
                #expect((list["data"] as? [Any])?.isEmpty == true)
            }
        }
    }

    @Test func aBatchRunsAndItsOutputFileHoldsEveryLine() async throws {
        try await withDeadline(.seconds(30)) {
            try await Self.withGateway { client in
                let file = try await Self.upload(client, (0..<50).map { Self.line($0) })
                let created = try await Self.createBatch(client, file: file)
                #expect(created["object"] as? String == "batch")
                #expect(created["input_file_id"] as? String == file)
                #expect(created["metadata"] as? [String: String] == ["k": "v"])
                let id = try #require(created["id"] as? String)
                let batch = try await Self.waitForEnd(client, id)
                #expect(batch["status"] as? String == "completed")
                #expect(batch["request_counts"] as? [String: Int] == ["total": 50, "completed": 50, "failed": 0])
                #expect(batch["error_file_id"] is NSNull)
                let output = try #require(batch["output_file_id"] as? String)
                let content = String(buffer: try await client.execute(uri: "/v1/files/\(output)/content", method: .get, headers: Self.auth).body)
                let lines = content.split(separator: "\n").map { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                #expect(lines.count == 50)
                #expect(Set(lines.compactMap { $0?["custom_id"] as? String }) == Set((0..<50).map { "c\($0)" }))
                // The echo runner answers with the body it was sent.
                let first = try #require(lines.first ?? nil)
                #expect(((first["response"] as? [String: Any])?["body"] as? [String: Any])?["model"] as? String == "m")
                let list = try Self.json(try await client.execute(uri: "/v1/batches?limit=1", method: .get, headers: Self.auth))
                #expect((list["data"] as? [[String: Any]])?.first?["id"] as? String == id)
                #expect(list["has_more"] as? Bool == false)
            }
        }
    }

    @Test func cancelStopsABatchAndUnknownIDsAre404() async throws {
        try await withDeadline(.seconds(30)) {
            try await Self.withGateway { client in
                let file = try await Self.upload(client, (0..<40).map { Self.line($0, extra: #", "delay_ms": 2000"#) })
                let id = try #require(try await Self.createBatch(client, file: file)["id"] as? String)
                let cancelled = try Self.json(try await client.execute(uri: "/v1/batches/\(id)/cancel", method: .post, headers: Self.auth))
                #expect(["cancelling", "cancelled"].contains(cancelled["status"] as? String ?? ""))
                let batch = try await Self.waitForEnd(client, id)
                #expect(batch["status"] as? String == "cancelled")
                #expect(batch["cancelling_at"] is Int)
                for uri in ["/v1/batches/batch_999", "/v1/batches/nope", "/v1/files/file-nope", "/v1/files/file-batch999-output/content"] {
                    #expect(try await client.execute(uri: uri, method: .get, headers: Self.auth).status == .notFound, "\(uri)")
                }
            }
        }
    }

    @Test func requestsWithoutTheTokenAreRefused() async throws {
        try await withDeadline(.seconds(30)) {
            try await Self.withGateway { client in
                let unknown = try await client.execute(uri: "/v1/nothing", method: .get, headers: Self.auth)
                #expect(unknown.status == .notFound)
                #expect((try Self.json(unknown)["error"] as? [String: Any])?["code"] as? String == "unknown_url")
                for headers: HTTPFields in [[:], [.authorization: "Bearer wrong"], [.authorization: "Basic \(Self.token)"]] {
                    let response = try await client.execute(uri: "/v1/batches", method: .get, headers: headers)
                    #expect(response.status == .unauthorized)
                    #expect((try Self.json(response)["error"] as? [String: Any])?["code"] as? String == "invalid_api_key")
                }
            }
        }
    }
}
