import AsyncHTTPClient
import FanoutClient
import Foundation
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The gateway row: the same Batch file run twice on one daemon against
/// the stub, once as an OpenAI SDK user would through the HTTP gateway
/// (upload, create, poll, download the output file), once with
/// `fanout submit --watch` and `fanout results`. Reports both times and the
/// gateway path's overhead.
struct GatewayResult: Codable, Sendable {
    var lines: Int
    var status = "running"
    var error: String?
    var gatewaySeconds: Double?
    var cliSeconds: Double?
    /// gateway / cli - 1.
    var overhead: Double?
    var targetOverhead = 0.20
}

enum GatewayRun {
    static func run(lines: Int, concurrency: Int, stubDelayMs: Int, stub: String, fanoutd: String) async -> GatewayResult {
        var result = GatewayResult(lines: lines)
        do {
            let folder = try Daemon.makeTemporaryDirectory()
            defer { removeTree(folder) }
            let server = try await StubProcess.start(stub, delayMs: stubDelayMs, folder: folder)
            defer { server.stop() }
            let token = "bench-\(UInt64.random(in: 1...UInt64.max))"
            _ = FileManager.default.createFile(atPath: folder + "/token", contents: Data(token.utf8), attributes: [.posixPermissions: 0o600])
            let file = folder + "/batch.jsonl"
            let text = (0..<lines).map { index in
                #"{"custom_id": "r\#(index)", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "bench", "messages": [{"role": "user", "content": "Say hello \#(index)"}]}}"#
            }.joined(separator: "\n") + "\n"
            try Data(text.utf8).write(to: URL(fileURLWithPath: file))

            let agent = #"{"name":"llm","runner":"openai","base_url":"\#(server.baseURL)","concurrency":\#(concurrency)}"#
            let daemon = try await Daemon.start(executable: fanoutd, concurrency: max(concurrency, 64), maxTasksPerBatch: max(lines, 1),
                                                extraAgents: [agent],
                                                extraArguments: ["--http", "127.0.0.1:0", "--http-token-file", folder + "/token"])
            do {
                let address = try await gatewayAddress(daemon)
                let cli = URL(fileURLWithPath: fanoutd).deletingLastPathComponent().appendingPathComponent("fanout").path
                // Warm both paths up with a small batch, then measure each once.
                let warmUp = text.split(separator: "\n").prefix(5).map { $0.replacingOccurrences(of: "\"r", with: "\"w") }
                _ = try await viaGateway(address: address, token: token, file: Data((warmUp.joined(separator: "\n") + "\n").utf8))
                result.gatewaySeconds = try await viaGateway(address: address, token: token, file: Data(text.utf8))
                result.cliSeconds = try await viaCLI(cli, socket: daemon.socketPath, file: file, output: folder + "/out.jsonl")
                await daemon.stop()
            } catch {
                await daemon.stop()
                throw error
            }
            if let gateway = result.gatewaySeconds, let cli = result.cliSeconds { result.overhead = gateway / cli - 1 }
            result.status = "ok"
        } catch {
            result.status = "error"
            result.error = "\(error)"
        }
        return result
    }

    /// Upload, create, poll every 20 ms, download the output file; seconds taken.
    private static func viaGateway(address: String, token: String, file: Data) async throws -> Double {
        let http = HTTPClient(eventLoopGroupProvider: .singleton)
        do {
            let clock = ContinuousClock()
            let start = clock.now
            let base = "http://\(address)/v1"
            let boundary = "fanoutbench\(UInt32.random(in: 0...UInt32.max))"
            var form = Data("--\(boundary)\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n".utf8)
            form += Data("--\(boundary)\r\nContent-Disposition: form-data; name=\"file\"; filename=\"batch.jsonl\"\r\n\r\n".utf8)
            form += file + Data("\r\n--\(boundary)--\r\n".utf8)
            let uploaded = try await call(http, "POST", base + "/files", token: token, body: form,
                                          contentType: "multipart/form-data; boundary=\(boundary)")
            let fileID = try field("id", of: uploaded)
            let create = #"{"input_file_id": "\#(fileID)", "endpoint": "/v1/chat/completions", "completion_window": "24h"}"#
            let batchID = try field("id", of: try await call(http, "POST", base + "/batches", token: token, body: Data(create.utf8),
                                                             contentType: "application/json"))
            var outputID = ""
            while true {
                let batch = try JSONSerialization.jsonObject(with: try await call(http, "GET", base + "/batches/\(batchID)", token: token)) as? [String: Any]
                let status = batch?["status"] as? String ?? ""
                if status == "completed" {
                    outputID = batch?["output_file_id"] as? String ?? ""
                    break
                }
                guard status == "in_progress" || status == "validating" || status == "finalizing" else {
                    throw BenchError("the gateway batch ended \(status)")
                }
                try await Task.sleep(for: .milliseconds(20))
            }
            let output = try await call(http, "GET", base + "/files/\(outputID)/content", token: token)
            let elapsed = (clock.now - start).seconds
            _ = output
            try await http.shutdown()
            return elapsed
        } catch {
            try? await http.shutdown()
            throw error
        }
    }

    /// `fanout submit --watch` then `fanout results -o`; seconds taken.
    private static func viaCLI(_ cli: String, socket: String, file: String, output: String) async throws -> Double {
        let clock = ContinuousClock()
        let start = clock.now
        let submitted = try await runProcess([cli, "submit", file, "--agent", "llm", "--owner", "bench", "--watch", "--socket", socket])
        let id = submitted.trimmingCharacters(in: .whitespacesAndNewlines)
        _ = try await runProcess([cli, "results", id, "-o", output, "--socket", socket])
        return (clock.now - start).seconds
    }

    private static func runProcess(_ arguments: [String]) async throws -> String {
        let folder = try Daemon.makeTemporaryDirectory()
        defer { removeTree(folder) }
        let pid = try Daemon.spawn(arguments, output: folder + "/out")
        var status: Int32 = 0
        while waitpid(pid, &status, WNOHANG) == 0 { await uncancellableSleep(milliseconds: 5) }
        let text = (try? String(contentsOfFile: folder + "/out", encoding: .utf8)) ?? ""
        guard status == 0 else { throw BenchError("\(arguments.prefix(2).joined(separator: " ")) failed: \(text.suffix(500))") }
        // Spawned with stderr joined to stdout: the batch id is the line that is only digits.
        return text.split(separator: "\n").last { $0.allSatisfy(\.isNumber) }.map(String.init) ?? text
    }

    private static func call(_ http: HTTPClient, _ method: String, _ url: String, token: String, body: Data? = nil,
                             contentType: String? = nil) async throws -> Data {
        var request = HTTPClientRequest(url: url)
        request.method = .init(rawValue: method)
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        if let contentType { request.headers.add(name: "Content-Type", value: contentType) }
        if let body { request.body = .bytes(ByteBuffer(bytes: body)) }
        let response = try await http.execute(request, timeout: .seconds(120))
        let bytes = try await response.body.collect(upTo: 256 << 20)
        guard response.status == .ok else { throw BenchError("\(method) \(url): \(response.status) \(String(buffer: bytes).prefix(300))") }
        return Data(bytes.readableBytesView)
    }

    private static func field(_ name: String, of data: Data) throws -> String {
        guard let value = (try JSONSerialization.jsonObject(with: data) as? [String: Any])?[name] as? String else {
            throw BenchError("no \(name) in \(String(decoding: data.prefix(300), as: UTF8.self))")
        }
        return value
    }

    private static func gatewayAddress(_ daemon: Daemon) async throws -> String {
        for _ in 0..<400 {
            let log = (try? String(contentsOfFile: daemon.logPath, encoding: .utf8)) ?? ""
            for line in log.split(separator: "\n") where line.contains("OpenAI-compatible gateway listening") {
                if let range = line.range(of: "address=") {
                    return String(line[range.upperBound...].prefix { !$0.isWhitespace })
                }
            }
            await uncancellableSleep(milliseconds: 25)
        }
        throw BenchError("the gateway did not start: \(daemon.logTail())")
    }
}
