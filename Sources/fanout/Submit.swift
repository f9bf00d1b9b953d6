import ArgumentParser
import FanoutClient
import FanoutWire
import Foundation

struct Submit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Submit a JSONL file of tasks as one batch; prints the batch id.",
        discussion: """
            Each line is an OpenAI Batch request ({"custom_id", "method", "url", "body"}; the body \
            becomes the task's payload) or {"custom_id", "payload"}. Invalid lines are listed with \
            their numbers and nothing is submitted.
            """)

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "The JSONL file ('-' for standard input).")
    var file: String

    @Option(help: "The agent that runs the tasks.")
    var agent: String

    @Option(help: "The owner the batch belongs to (subscriptions filter by it).")
    var owner: String

    @Option(help: "Priority: higher runs first.")
    var priority: Int32 = 0

    @Option(name: .customLong("completion-window"), help: "Deadline for the whole batch, in seconds (0: none).")
    var completionWindow: UInt64 = 0

    @Option(name: .customLong("metadata"), help: "key=value metadata; repeatable.")
    var metadata: [String] = []

    @Flag(help: "Follow the batch with a progress display until it ends.")
    var watch = false

    func run() async throws {
        let data: Data
        do {
            data = file == "-" ? FileHandle.standardInput.readDataToEndOfFile() : try Data(contentsOf: URL(fileURLWithPath: file))
        } catch {
            throw CLIError("cannot read \(file): \(error.localizedDescription)")
        }
        let input = BatchInput(contentsOf: data)
        if !input.problems.isEmpty {
            for problem in input.problems.prefix(50) { Console.error("\(file): \(problem)") }
            if input.problems.count > 50 { Console.error("… and \(input.problems.count - 50) more problems") }
            throw CLIError("\(input.problems.count) invalid line(s); nothing was submitted")
        }
        // Seconds as the user typed them: Duration holds any UInt64 of them; the daemon checks its limit.
        var entries: [String: String] = [:]
        for pair in metadata {
            guard let equals = pair.firstIndex(of: "=") else { throw CLIError("--metadata expects key=value, not \"\(pair)\"") }
            entries[String(pair[..<equals])] = String(pair[pair.index(after: equals)...])
        }
        let client = try await connection.connect()
        defer { Task { await client.close() } }
        try await reportingErrors {
            let start = try await client.serverInfo().lastSequence
            let batch = try await client.enqueueBatch(
                ownerID: owner, agent: agent, tasks: input.tasks, metadata: entries, priority: priority,
                completionWindow: completionWindow == 0 ? nil : .seconds(completionWindow))
            if connection.json {
                print(JSON.line(Describe.json(batch)))
            } else {
                print(batch.id)
            }
            Console.error("submitted batch \(batch.id): \(batch.counts.total) tasks for agent \(agent)")
            if watch {
                let final = try await ProgressView(batchID: batch.id, since: start).follow(client)
                Console.error(Describe.summary(final))
                if final.status != .completed { throw ExitCode(2) }
            }
        }
    }
}
