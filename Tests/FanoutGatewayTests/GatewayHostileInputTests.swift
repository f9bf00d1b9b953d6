@testable import FanoutGateway
import FanoutTestSupport
import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import Testing

/// Bad input gets an OpenAI-shaped error, never a crash, and leaves nothing behind.
@Suite struct GatewayHostileInputTests {
    typealias G = GatewayHTTPTests

    static func post(_ client: any TestClientProtocol, contentType: String, _ body: String) async throws -> TestResponse {
        var headers = G.auth
        headers[.contentType] = contentType
        return try await client.execute(uri: "/v1/files", method: .post, headers: headers, body: ByteBuffer(string: body))
    }

    @Test func oddIDsAre404() async throws {
        try await withDeadline(.seconds(30)) {
            try await G.withGateway { client in
                for id in ["file-batchx", "file-batch", "file-batch-1-output", "file-batch0-output", "file-batch1-output-x",
                           "file-batch99999999999999999999999-output", "file-batch1-", "file-batch-", "%00"] {
                    for suffix in ["", "/content"] {
                        let response = try await client.execute(uri: "/v1/files/\(id)\(suffix)", method: .get, headers: G.auth)
                        #expect(response.status == .notFound, "\(id)\(suffix)")
                    }
                }
                for id in ["batch_-1", "batch_", "batch_99999999999999999999999", "batch_1x"] {
                    #expect(try await client.execute(uri: "/v1/batches/\(id)", method: .get, headers: G.auth).status == .notFound)
                    #expect(try await client.execute(uri: "/v1/batches/\(id)/cancel", method: .post, headers: G.auth).status == .notFound)
                }
                let list = try await client.execute(uri: "/v1/batches?limit=-5&after=batch_-3", method: .get, headers: G.auth)
                #expect(list.status == .ok)
            }
        }
    }

    @Test func malformedMultipartIsRefused() async throws {
        try await withDeadline(.seconds(30)) {
            try await G.withGateway { client in
                let line = G.line(0)
                let cases: [(String, String, String)] = [
                    ("multipart/form-data; boundary=\"\"", "x", "boundary"),
                    ("multipart/form-data; boundary=" + String(repeating: "b", count: 71), "x", "boundary"),
                    ("multipart/form-data; boundary=b", "--b\r\n\u{E9}t\u{E9}: x\r\n\r\nbody\r\n--b--\r\n", "Name: value"),
                    ("multipart/form-data; boundary=b", "--b\r\nX-Big: " + String(repeating: "a", count: 40_000) + "\r\n\r\n", "headers are longer"),
                    ("multipart/form-data; boundary=b",
                     "--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n\(line)\n\(line)",
                     "cut off"),
                    ("multipart/form-data; boundary=b", String(repeating: "z", count: 40_000), "no multipart boundary"),
                ]
                for (contentType, body, words) in cases {
                    let response = try await Self.post(client, contentType: contentType, body)
                    #expect(response.status == .badRequest, "\(words)")
                    let message = (try G.json(response)["error"] as? [String: Any])?["message"] as? String ?? ""
                    #expect(message.contains(words), "\(message)")
                }
                let list = try G.json(try await client.execute(uri: "/v1/files", method: .get, headers: G.auth))
                #expect((list["data"] as? [Any])?.isEmpty == true, "no refused upload is left")
            }
        }
    }

    @Test func linesBeyondTheDaemonsLimitsAreRefusedByNumber() async throws {
        try await withDeadline(.seconds(30)) {
            try await G.withGateway { client in
                let longID = String(repeating: "i", count: 300)
                let file = [
                    G.line(0),
                    #"{"custom_id": "\#(longID)", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}"#,
                    G.line(2, extra: #", "pad": "\#(String(repeating: "p", count: 1_100_000))""#),
                ].joined(separator: "\n")
                let (headers, body) = G.form(file)
                let response = try await client.execute(uri: "/v1/files", method: .post, headers: headers, body: body)
                #expect(response.status == .badRequest)
                let message = (try G.json(response)["error"] as? [String: Any])?["message"] as? String ?? ""
                #expect(message.contains("line 2: custom_id is 300 bytes"), "\(message)")
                #expect(message.contains("line 3"), "\(message)")
            }
        }
    }
}

/// The multipart reader gives the same parts however the body is cut into pieces.
@Suite struct MultipartStreamTests {
    static let body = Array("preamble\r\n--xyz\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--xyz  \r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\nContent-Type: text/plain\r\n\r\nline one\r\n--xy not a boundary\nline two\r\n--xyz--\r\nepilogue".utf8)

    static func parts(splitting bytes: [UInt8], every size: Int) throws -> ([[String: String]], [[UInt8]], Bool) {
        var stream = try MultipartStream(boundary: "xyz")
        var headers: [[String: String]] = []
        var bodies: [[UInt8]] = []
        var index = 0
        while index < bytes.count {
            try stream.feed(bytes[index..<min(index + size, bytes.count)]) { event in
                switch event {
                case .partStarted(let found):
                    headers.append(found)
                    bodies.append([])
                case .bytes(let piece): bodies[bodies.count - 1] += piece
                case .partEnded: break
                }
            }
            index += size
        }
        return (headers, bodies, stream.isFinished)
    }

    @Test(arguments: [1, 2, 3, 7, 16, 1_000])
    func anySplitGivesTheSameParts(size: Int) throws {
        let (headers, bodies, finished) = try Self.parts(splitting: Self.body, every: size)
        #expect(finished)
        #expect(headers.map { $0["content-disposition"] } == ["form-data; name=\"purpose\"", "form-data; name=\"file\"; filename=\"a.jsonl\""])
        #expect(headers.last?["content-type"] == "text/plain")
        #expect(bodies.map { String(decoding: $0, as: UTF8.self) } == ["batch", "line one\r\n--xy not a boundary\nline two"])
    }

    @Test func aBodyWithoutItsClosingBoundaryIsNotFinished() throws {
        let cut = Array(Self.body.prefix(Self.body.count - 20))
        let (_, _, finished) = try Self.parts(splitting: cut, every: 5)
        #expect(!finished)
    }
}
