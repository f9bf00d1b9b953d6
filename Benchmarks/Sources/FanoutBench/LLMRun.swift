import AsyncHTTPClient
import FanoutClient
import Foundation
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The LLM row: chat-completion tasks through an `openai` agent against a
/// local stub that answers after `stubDelayMs`, timed from enqueue to
/// `batch_completed`, next to the stub's own ceiling: the same number of
/// requests sent by a bare HTTP load loop with as many connections as the
/// agent's concurrency.
struct LLMResult: Codable, Sendable {
    var tasks: Int
    var concurrency: Int
    var stubDelayMs: Int
    var status = "running"
    var error: String?
    /// The bare load loop: all requests, `concurrency` at a time.
    var stubCeilingSeconds: Double?
    /// Enqueue start to batch_completed.
    var batchSeconds: Double?
    var ratio: Double?
    /// What the issue asks: the batch within this many times the ceiling.
    var targetRatio = 2.2
}

enum LLMRun {
    static func run(tasks: Int, concurrency: Int, stubDelayMs: Int, stub: String, fanoutd: String) async -> LLMResult {
        var result = LLMResult(tasks: tasks, concurrency: concurrency, stubDelayMs: stubDelayMs)
        let folder: String
        do {
            folder = try Daemon.makeTemporaryDirectory()
        } catch {
            result.status = "error"
            result.error = "\(error)"
            return result
        }
        var server: StubProcess?
        defer {
            server?.stop()
            removeTree(folder)
        }
        do {
            server = try await StubProcess.start(stub, delayMs: stubDelayMs, folder: folder)
            let baseURL = server!.baseURL
            let body = #"{"model":"bench","messages":[{"role":"user","content":"Say hello"}]}"#

            // Warm up, then the ceiling: the requests alone, `concurrency` connections at a time.
            let http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(
                connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: concurrency)))
            do {
                _ = try await loadLoop(http, url: baseURL + "/chat/completions", body: body, requests: concurrency, concurrency: concurrency)
                result.stubCeilingSeconds = try await loadLoop(http, url: baseURL + "/chat/completions", body: body,
                                                               requests: tasks, concurrency: concurrency)
                try await http.shutdown()
            } catch {
                try? await http.shutdown()
                throw error
            }

            let agent = #"{"name":"llm","runner":"openai","base_url":"\#(baseURL)","concurrency":\#(concurrency)}"#
            let daemon = try await Daemon.start(executable: fanoutd, concurrency: max(concurrency, 64), maxTasksPerBatch: max(tasks, 1),
                                                extraAgents: [agent])
            let specs = (0..<tasks).map { TaskSpec(customID: "c\($0)", payload: Array(body.utf8), url: "/v1/chat/completions") }
            let (end, info, elapsed): (Event, BatchInfo, Double)
            do {
                let client = try await FanoutClient.connect(socketPath: daemon.socketPath, clientName: "fanout-bench-llm")
                let since = try await client.serverInfo().lastSequence
                let clock = ContinuousClock()
                let start = clock.now
                let batch = try await client.enqueueBatch(ownerID: SizeRun.owner, agent: "llm", tasks: specs)
                end = try await SizeRun.awaitEnd(of: batch.id, client: client, since: since)
                elapsed = (clock.now - start).seconds
                info = try await client.batch(batch.id)
                await client.close()
                await daemon.stop()
            } catch {
                await daemon.stop()
                throw error
            }
            guard end.type == .batchCompleted, info.counts.completed == UInt32(tasks) else {
                throw BenchError("the LLM batch ended \(end.type) with \(info.counts.completed) of \(tasks) completed")
            }
            result.batchSeconds = elapsed
            result.ratio = result.stubCeilingSeconds.map { elapsed / $0 }
            result.status = "ok"
        } catch {
            result.status = "error"
            result.error = "\(error)"
        }
        return result
    }

    /// Sends `requests` POSTs, `concurrency` at a time; returns the seconds it took.
    private static func loadLoop(_ http: HTTPClient, url: String, body: String, requests: Int, concurrency: Int) async throws -> Double {
        let clock = ContinuousClock()
        let start = clock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            let perWorker = (requests + concurrency - 1) / concurrency
            for worker in 0..<concurrency {
                let count = min(perWorker, max(0, requests - worker * perWorker))
                guard count > 0 else { continue }
                group.addTask {
                    for _ in 0..<count {
                        var request = HTTPClientRequest(url: url)
                        request.method = .POST
                        request.headers.add(name: "Content-Type", value: "application/json")
                        request.body = .bytes(ByteBuffer(string: body))
                        let response = try await http.execute(request, timeout: .seconds(30))
                        _ = try await response.body.collect(upTo: 1 << 20)
                        guard response.status == .ok else { throw BenchError("the stub answered \(response.status)") }
                    }
                }
            }
            try await group.waitForAll()
        }
        return (clock.now - start).seconds
    }
}
