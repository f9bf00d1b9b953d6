import ArgumentParser
import FanoutClient
import FanoutWire
import Foundation

struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a sample batch and show its progress and results.",
        discussion: """
            Without --file, it makes echo tasks that take 0.1–1.5 s. With --file, it submits that JSONL \
            file (OpenAI Batch lines) to --agent, and also shows the tasks that needed a retry.
            """)

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "How many echo tasks.")
    var tasks: Int = 400

    @Option(help: "A JSONL batch file to run instead of the echo tasks.")
    var file: String?

    @Option(help: "The agent that runs the batch.")
    var agent: String = "echo"

    func run() async throws {
        let client = try await connection.connect()
        defer { Task { await client.close() } }
        let specs = try file.map(Self.read) ?? Self.echoTasks(tasks)
        try await reportingErrors {
            let info = try await client.serverInfo()
            Console.error("fanoutd \(info.serverVersion): agents \(info.agents.map(\.name).joined(separator: ", "))")
            let batch = try await client.enqueueBatch(ownerID: "demo", agent: agent, tasks: specs, metadata: ["source": "fanout demo"])
            Console.error("submitted batch \(batch.id) with \(batch.counts.total) tasks")
            let final = try await ProgressView(batchID: batch.id, since: info.lastSequence).follow(client)
            Console.error(Describe.summary(final))
            var shown = 0
            var failed: [TaskResult] = []
            var retried: [TaskResult] = []
            print("first results (OpenAI Batch output format):")
            for try await result in client.results(batchID: batch.id) {
                if result.status == .completed && result.attempt > 1 {
                    retried.append(result)
                } else if result.status == .completed && shown < 3 {
                    print(String(decoding: ResultOutput.line(result), as: UTF8.self))
                    shown += 1
                } else if result.status != .completed {
                    failed.append(result)
                }
            }
            if !retried.isEmpty {
                print("completed on a later attempt (e.g. answered 429 Too Many Requests first, then retried after its Retry-After):")
                for result in retried {
                    print("attempt \(result.attempt): " + String(decoding: ResultOutput.line(result), as: UTF8.self))
                }
            }
            if !failed.isEmpty {
                print("failed tasks:")
                for result in failed { print(String(decoding: ResultOutput.line(result), as: UTF8.self)) }
            }
        }
    }

    /// Echo tasks that take 0.1–1.5 s; a few fail so the results show both shapes.
    private static func echoTasks(_ count: Int) -> [TaskSpec] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { index -> TaskSpec in
            var body: [String: Any] = [
                "model": "demo", "delay_ms": Int.random(in: 100...1_500, using: &generator),
                "messages": [["role": "user", "content": "Summarize document #\(index)"]],
            ]
            if index % 97 == 13 { body["fail"] = "the document could not be read" }
            return TaskSpec(customID: "doc-\(index)", payload: Array(JSON.encode(body)))
        }
    }

    private static func read(_ path: String) throws -> [TaskSpec] {
        let input = BatchInput(contentsOf: try Data(contentsOf: URL(fileURLWithPath: path)))
        guard input.problems.isEmpty else {
            throw ValidationError(input.problems.map(\.description).joined(separator: "\n"))
        }
        return input.tasks
    }
}
