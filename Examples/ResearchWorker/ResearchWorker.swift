// A worker for a `research` agent, built on FanoutClient's FanoutWorker.
//
// Each task's payload is a question, as text or as {"question": "...", "parts": N}.
// The handler splits it into N sub-questions, spawns them as child tasks on an
// `openai` agent (chat completions), waits for them without holding a slot,
// and combines the answers into one. `make example` runs it end to end
// against the local OpenAI stub.
//
//   fanout-example-research --socket PATH [--llm-agent llm] [--model NAME]

import FanoutClient
import Foundation
import Logging
import ServiceLifecycle

@main
struct ResearchWorker {
    static func main() async throws {
        let options = Options(CommandLine.arguments.dropFirst())
        let worker = FanoutWorker(name: "research-example", agents: [
            WorkerAgent("research", concurrency: 4, maxTurns: 2) { task in
                try await research(task, options: options)
            },
        ], settings: .init(socketPath: options.socket))
        var logger = Logger(label: "research-example")
        logger.logLevel = .warning
        // SIGTERM or SIGINT drains the worker: running questions finish, then it exits.
        let group = ServiceGroup(configuration: .init(services: [.init(service: worker)],
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }

    /// One question: split, ask each part as a child task, combine.
    static func research(_ task: WorkerTaskContext, options: Options) async throws -> WorkerOutput {
        let question = Question(payload: task.payload)
        let parts = question.subQuestions()
        try await task.reportTurn()
        let children = try await task.spawn(try parts.enumerated().map { index, part in
            let body: [String: Any] = ["model": options.model, "messages": [["role": "user", "content": part]]]
            return TaskSpec(customID: "part-\(index + 1)", agent: options.llmAgent,
                            payload: Array(try JSONSerialization.data(withJSONObject: body)), url: "/v1/chat/completions")
        }, agent: options.llmAgent, metadata: ["question": String(question.text.prefix(200))])
        try await task.reportTurn()
        // Child results come back in task id order, which is the order they were spawned in.
        let answers = zip(parts, children.results).map { part, child in
            ["question": part, "answer": Self.answer(child)]
        }
        let combined = answers.map { "- \($0["question"]!): \($0["answer"]!)" }.joined(separator: "\n")
        let output: [String: Any] = ["question": question.text, "answer": combined, "parts": answers]
        return WorkerOutput(Array(try JSONSerialization.data(withJSONObject: output, options: [.sortedKeys])))
    }

    /// The assistant's text from a chat completion, or why there is none.
    static func answer(_ child: TaskResult) -> String {
        guard child.status == .completed else { return "(no answer: \(child.error?.message ?? "\(child.status)"))" }
        let reply = try? JSONSerialization.jsonObject(with: Data(child.result)) as? [String: Any]
        let message = ((reply?["choices"] as? [[String: Any]])?.first?["message"]) as? [String: Any]
        return message?["content"] as? String ?? String(decoding: child.result.prefix(200), as: UTF8.self)
    }
}

/// A question and how many parts to ask.
struct Question {
    var text: String
    var parts: Int

    static let angles = ["What is the background of", "What is known today about", "What are the open problems in",
                         "What are the practical consequences of", "Who works on", "What should a newcomer read about"]

    init(payload: [UInt8]) {
        let object = try? JSONSerialization.jsonObject(with: Data(payload)) as? [String: Any]
        text = object?["question"] as? String ?? String(decoding: payload, as: UTF8.self)
        parts = min(max((object?["parts"] as? Int) ?? 3, 1), Self.angles.count)
    }

    func subQuestions() -> [String] {
        Self.angles.prefix(parts).map { "\($0): \(text)?" }
    }
}

struct Options {
    var socket = FanoutClient.defaultSocketPath
    var llmAgent = "llm"
    var model = "example-model"

    init(_ arguments: ArraySlice<String>) {
        var arguments = arguments
        while let flag = arguments.popFirst() {
            guard let value = arguments.popFirst() else { fatalError("\(flag) needs a value") }
            switch flag {
            case "--socket": socket = value
            case "--llm-agent": llmAgent = value
            case "--model": model = value
            default: fatalError("unknown option \(flag); see the comment at the top of ResearchWorker.swift")
            }
        }
    }
}
