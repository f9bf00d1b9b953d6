import ArgumentParser
import FanoutClient
import FanoutWire
import Foundation

struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a sample batch on the built-in echo agent and show its progress and results.")

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "How many tasks.")
    var tasks: Int = 400

    func run() async throws {
        let client = try await connection.connect()
        defer { Task { await client.close() } }
        // Echo tasks that take 0.1–1.5 s; a few fail so the results show both shapes.
        var generator = SystemRandomNumberGenerator()
        let specs = (0..<tasks).map { index -> TaskSpec in
            var body: [String: Any] = [
                "model": "demo", "delay_ms": Int.random(in: 100...1_500, using: &generator),
                "messages": [["role": "user", "content": "Summarize document #\(index)"]],
            ]
            if index % 97 == 13 { body["fail"] = "the document could not be read" }
            return TaskSpec(customID: "doc-\(index)", payload: Array(JSON.encode(body)))
        }
        try await reportingErrors {
            let info = try await client.serverInfo()
            Console.error("fanoutd \(info.serverVersion): agents \(info.agents.map(\.name).joined(separator: ", "))")
            let batch = try await client.enqueueBatch(ownerID: "demo", agent: "echo", tasks: specs, metadata: ["source": "fanout demo"])
            Console.error("submitted batch \(batch.id) with \(batch.counts.total) tasks")
            let final = try await ProgressView(batchID: batch.id, since: info.lastSequence).follow(client)
            Console.error(Describe.summary(final))
            var shown = 0
            var failed: [TaskResult] = []
            print("first results (OpenAI Batch output format):")
            for try await result in client.results(batchID: batch.id) {
                if result.status == .completed && shown < 3 {
                    print(String(decoding: ResultOutput.line(result), as: UTF8.self))
                    shown += 1
                } else if result.status != .completed {
                    failed.append(result)
                }
            }
            if !failed.isEmpty {
                print("failed tasks:")
                for result in failed { print(String(decoding: ResultOutput.line(result), as: UTF8.self)) }
            }
        }
    }
}
