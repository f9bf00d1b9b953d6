import Foundation
import Testing

/// `make example`'s script, end to end: fanoutd, the OpenAI stub and the
/// research worker (Examples/ResearchWorker) as separate processes.
@Suite struct ExampleScriptTests {
    @Test func theResearchExampleAnswersAQuestionThroughItsSubagents() async throws {
        let daemon = try #require(FanoutdExecutable.path, "fanoutd not found; build with `swift build --build-tests`")
        let bin = URL(fileURLWithPath: daemon).deletingLastPathComponent().path
        var root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        while !FileManager.default.fileExists(atPath: root.appendingPathComponent("scripts/example").path) { root.deleteLastPathComponent() }
        let run = try await ChildProcess.run("/usr/bin/env", ["BIN=\(bin)", "QUESTION=Why test examples",
                                                               "bash", root.appendingPathComponent("scripts/example").path],
                                             timeoutSeconds: 60)
        #expect(run.status == 0, "\(run.out)\n\(run.err)")
        let answer = run.out.components(separatedBy: "Answer:\n").last ?? ""
        let parts = answer.split(separator: "\n").filter { $0.hasPrefix("- ") }
        #expect(parts.count == 4, "four sub-questions answered:\n\(run.out)")
        #expect(parts.allSatisfy { $0.contains("Why test examples?: stub answer") }, "\(answer)")
        #expect(run.out.contains("└ batch"), "the status shows the child batch:\n\(run.out)")
    }
}
