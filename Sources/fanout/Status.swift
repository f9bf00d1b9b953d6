import ArgumentParser
import FanoutClient
import FanoutWire
import Foundation

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a batch's state and counts, and the child batches its tasks spawned, as a tree.")

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "The batch id.")
    var batch: UInt64

    /// The tree shows at most this many child batches.
    static let maxTreeBatches = 200

    func run() async throws {
        let client = try await connection.connect()
        defer { Task { await client.close() } }
        try await reportingErrors {
            let info = try await client.batch(batch)
            var budget = Self.maxTreeBatches
            let tree = try await ChildTree.load(below: info.id, client: client, budget: &budget)
            if connection.json {
                var object = Describe.json(info)
                object["children"] = tree.map(\.json)
                print(JSON.line(object))
                return
            }
            print(Describe.summary(info))
            guard !tree.isEmpty else { return }
            print("  child batches:")
            for node in tree { node.print(indent: "    ") }
            if budget <= 0 { print("    … more child batches; see fanout list") }
        }
    }
}

/// A child batch and the child batches its own tasks spawned.
struct ChildTree {
    var batch: BatchInfo
    var children: [ChildTree]

    /// The child batches of `parent`'s tasks, oldest first, at most `budget` of them in all.
    static func load(below parent: UInt64, client: FanoutClient, budget: inout Int, depth: Int = 0) async throws -> [ChildTree] {
        guard budget > 0, depth < 16 else { return [] }
        let page = try await client.batches(limit: budget, parentBatchID: parent)
        var nodes: [ChildTree] = []
        for child in page.batches.reversed() where budget > 0 {
            budget -= 1
            nodes.append(ChildTree(batch: child, children: try await load(below: child.id, client: client, budget: &budget,
                                                                          depth: depth + 1)))
        }
        return nodes
    }

    var json: [String: Any] {
        var object = Describe.json(batch)
        object["children"] = children.map(\.json)
        return object
    }

    func print(indent: String) {
        let c = batch.counts
        Swift.print("\(indent)└ batch \(batch.id)  \(Describe.word(batch.status))  \(String(format: "%.1f", batch.progress))%  "
            + "\(c.total) tasks, \(c.completed) completed  (\(batch.agent.isEmpty ? "" : "agent \(batch.agent), ")parent task \(batch.parentTaskID))")
        for child in children { child.print(indent: indent + "  ") }
    }
}

struct Results: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a batch's results as JSONL in the OpenAI Batch output format.",
        discussion: "One line per finished task: {\"id\", \"custom_id\", \"response\": {\"status_code\", \"body\"}, \"error\"}.")

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "The batch id.")
    var batch: UInt64

    @Option(name: .shortAndLong, help: "Write to this file instead of standard output.")
    var output: String?

    func run() async throws {
        let client = try await connection.connect()
        defer { Task { await client.close() } }
        var sink = try OutputSink.opening(output)
        var count = 0
        do {
            // Each result is written as it arrives (through the sink's buffer): memory holds a few pages
            // at most (the client pauses the stream beyond that), never the batch.
            try await reportingErrors {
                for try await result in client.results(batchID: batch) {
                    ResultOutput.append(result, to: &sink.buffer)
                    sink.buffer.append(UInt8(ascii: "\n"))
                    count += 1
                    try sink.flushIfFull()
                }
            }
        } catch {
            // The results that arrived before the failure are still written.
            try? sink.finish()
            throw error
        }
        try sink.finish()
        if let output { Console.error("wrote \(count) results to \(output)") }
    }
}

struct Cancel: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Cancel a batch, or one task with --task.")

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "The batch id.")
    var batch: UInt64?

    @Option(help: "Cancel only this task.")
    var task: UInt64?

    func validate() throws {
        if (batch == nil) == (task == nil) { throw ValidationError("give a batch id, or --task ID") }
    }

    func run() async throws {
        let client = try await connection.connect()
        defer { Task { await client.close() } }
        try await reportingErrors {
            if let task {
                let info = try await client.cancelTask(task)
                print(connection.json ? JSON.line(Describe.json(info)) : "task \(info.id): \(ResultOutput.statusWord(info.status))")
            } else if let batch {
                let info = try await client.cancelBatch(batch)
                print(connection.json ? JSON.line(Describe.json(info)) : Describe.summary(info))
            }
        }
    }
}

struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List batches, newest first.")

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "Only this owner's batches.")
    var owner: String = ""

    @Option(help: "How many batches.")
    var limit: Int = 20

    func run() async throws {
        let client = try await connection.connect()
        defer { Task { await client.close() } }
        let page = try await reportingErrors { try await client.batches(ownerID: owner, limit: limit) }
        if connection.json {
            print(JSON.line(["batches": page.batches.map(Describe.json), "next_before_id": page.nextBeforeID]))
            return
        }
        if page.batches.isEmpty {
            Console.error("no batches")
            return
        }
        print("ID        STATUS      PROGRESS  TASKS     OWNER / AGENT")
        for batch in page.batches {
            let id = String(batch.id).padding(toLength: 9, withPad: " ", startingAt: 0)
            let status = Describe.word(batch.status).padding(toLength: 11, withPad: " ", startingAt: 0)
            let progress = String(format: "%5.1f%%   ", batch.progress)
            let tasks = String(batch.counts.total).padding(toLength: 9, withPad: " ", startingAt: 0)
            print("\(id) \(status) \(progress) \(tasks) \(batch.ownerID) / \(batch.agent)")
        }
    }
}

struct Events: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print an owner's events; --follow keeps listening.")

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "The owner whose events to show (default: every owner whose batches you may see).")
    var owner: String?

    @Option(help: "Only this batch's events.")
    var batch: UInt64?

    @Option(help: "Start after this sequence number.")
    var since: UInt64?

    @Option(help: "Only these event types, comma-separated (e.g. batch_progress,task_failed).")
    var type: String?

    @Flag(help: "Keep following live events.")
    var follow = false

    func run() async throws {
        var types: [EventType] = []
        for word in (type ?? "").split(separator: ",") {
            guard let eventType = Describe.eventType(String(word)) else {
                throw ValidationError("unknown event type \"\(word)\"")
            }
            types.append(eventType)
        }
        let client = try await connection.connect()
        defer { Task { await client.close() } }
        var cursor = since ?? 0
        while true {
            do {
                for try await event in client.subscribe(ownerID: owner, eventTypes: types, batchID: batch, since: cursor, follow: follow) {
                    cursor = event.sequence
                    print(connection.json ? JSON.line(Describe.json(event)) : Describe.line(event))
                    fflush(nil)  // stdout may be a pipe: deliver each event as it comes
                }
                return
            } catch let error as FanoutClientError where error.lagged {
                // Fell behind: resume where the daemon says we stopped, with no gap.
                Console.error("fanout: fell behind at #\(error.lastSequence), resuming")
                cursor = error.lastSequence
            } catch let error as FanoutClientError {
                throw CLIError(error.description)
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
