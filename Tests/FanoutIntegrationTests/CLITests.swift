import FanoutClient
import Foundation
import Testing

/// The `fanout` command as a user runs it, against a daemon on a real socket.
@Suite struct CLITests {
    /// OpenAI Batch request lines, as a user would have them in a file.
    private static func openAILines(_ count: Int) -> String {
        (0..<count).map { index in
            #"{"custom_id": "request-\#(index)", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello \#(index)"}]}}"#
        }.joined(separator: "\n") + "\n"
    }

    @Test func submitWatchResultsStatusListAndEvents() async throws {
        try await withTestDaemon { daemon in
            try await withDeadline(.seconds(60)) {
                let file = daemon.directory + "/requests.jsonl"
                try Data(Self.openAILines(300).utf8).write(to: URL(fileURLWithPath: file))
                let socket = ["--socket", daemon.socketPath]

                // submit prints the batch id alone on stdout; --watch reports progress on stderr.
                let submit = try await FanoutCLI.run(["submit", file, "--agent", "echo", "--owner", "alice", "--watch"] + socket)
                #expect(submit.status == 0, "\(submit.err)")
                let batchID = try #require(UInt64(submit.out.trimmingCharacters(in: .whitespacesAndNewlines)), "stdout: \(submit.out)")
                #expect(submit.err.contains("submitted batch \(batchID): 300 tasks"), "\(submit.err)")
                // Not a terminal: plain progress lines, ending at 100 %.
                #expect(submit.err.contains("batch \(batchID): 100.0% 300/300 done"), "\(submit.err)")
                #expect(submit.err.contains("300 completed"), "\(submit.err)")

                // results: one OpenAI-format output line per custom_id, the body echoed back.
                let output = daemon.directory + "/results.jsonl"
                let results = try await FanoutCLI.run(["results", String(batchID), "-o", output] + socket)
                #expect(results.status == 0, "\(results.err)")
                let lines = try String(contentsOfFile: output, encoding: .utf8).split(separator: "\n")
                #expect(lines.count == 300)
                var seen = Set<String>()
                for line in lines {
                    let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
                    let customID = try #require(object["custom_id"] as? String)
                    seen.insert(customID)
                    let response = try #require(object["response"] as? [String: Any])
                    #expect(response["status_code"] as? Int == 200)
                    let body = try #require(response["body"] as? [String: Any])
                    #expect(body["model"] as? String == "gpt-4o-mini")
                    #expect(object["error"] is NSNull)
                    #expect((object["id"] as? String)?.hasPrefix("batch_req_") == true)
                }
                #expect(seen == Set((0..<300).map { "request-\($0)" }))

                let status = try await FanoutCLI.run(["status", String(batchID), "--json"] + socket)
                let statusObject = try #require(try JSONSerialization.jsonObject(with: Data(status.out.utf8)) as? [String: Any])
                #expect(statusObject["status"] as? String == "completed")
                #expect((statusObject["counts"] as? [String: Any])?["completed"] as? Int == 300)

                let list = try await FanoutCLI.run(["list"] + socket)
                #expect(list.out.contains("\(batchID)"), "\(list.out)")
                #expect(list.out.contains("alice / echo"), "\(list.out)")

                // events: replay, filtered by type, resumable with --since.
                let events = try await FanoutCLI.run(["events", "--owner", "alice", "--type", "batch_completed", "--json"] + socket)
                let eventLines = events.out.split(separator: "\n")
                #expect(eventLines.count == 1, "\(events.out)")
                let completed = try #require(try JSONSerialization.jsonObject(with: Data(eventLines[0].utf8)) as? [String: Any])
                let sequence = try #require(completed["sequence"] as? Int)
                let after = try await FanoutCLI.run(["events", "--owner", "alice", "--since", String(sequence)] + socket)
                #expect(after.status == 0)
                #expect(after.out.isEmpty, "nothing after the last event: \(after.out)")
            }
        }
    }

    @Test func invalidLinesAreReportedWithNumbersAndNothingIsSubmitted() async throws {
        try await withTestDaemon { daemon in
            try await withDeadline(.seconds(30)) {
                let file = daemon.directory + "/bad.jsonl"
                let text = """
                    {"custom_id": "a", "payload": {"x": 1}}
                    not json
                    {"custom_id": "a", "payload": 2}
                    {"payload": 3}
                    {"custom_id": "b", "method": "GET", "url": "/v1/x", "body": {}}

                    {"custom_id": "c", "payload": "plain text"}
                    """
                try Data(text.utf8).write(to: URL(fileURLWithPath: file))
                let socket = ["--socket", daemon.socketPath]
                let submit = try await FanoutCLI.run(["submit", file, "--agent", "echo", "--owner", "bob"] + socket)
                #expect(submit.status != 0)
                #expect(submit.out.isEmpty, "no batch id: \(submit.out)")
                #expect(submit.err.contains("line 2: not valid JSON"), "\(submit.err)")
                #expect(submit.err.contains("line 3: custom_id \"a\" already used on line 1"), "\(submit.err)")
                #expect(submit.err.contains("line 4: custom_id is missing"), "\(submit.err)")
                #expect(submit.err.contains("line 5: method must be \"POST\""), "\(submit.err)")
                #expect(!submit.err.contains("line 7"), "line 7 is valid: \(submit.err)")
                #expect(submit.err.contains("4 invalid line(s); nothing was submitted"), "\(submit.err)")
                let client = try await daemon.client()
                #expect(try await client.batches(ownerID: "bob").batches.isEmpty)
                await client.close()
            }
        }
    }

    @Test func cancelABatchAndATaskAndReportDaemonErrors() async throws {
        try await withTestDaemon { daemon in
            try await withDeadline(.seconds(30)) {
                let socket = ["--socket", daemon.socketPath]
                let client = try await daemon.client()
                let slow = Array(#"{"delay_ms": 600000}"#.utf8)
                let batch = try await client.enqueueBatch(ownerID: "carol", agent: "echo",
                                                          tasks: (0..<5).map { TaskSpec(customID: "s\($0)", payload: slow) })
                let other = try await client.enqueueTask(ownerID: "carol", task: TaskSpec(customID: "one", agent: "echo", payload: slow))

                let cancelTask = try await FanoutCLI.run(["cancel", "--task", String(other.id)] + socket)
                #expect(cancelTask.status == 0, "\(cancelTask.err)")
                #expect(cancelTask.out.contains("task \(other.id): cancelled"), "\(cancelTask.out)")

                let cancel = try await FanoutCLI.run(["cancel", String(batch.id), "--json"] + socket)
                #expect(cancel.status == 0, "\(cancel.err)")
                let object = try #require(try JSONSerialization.jsonObject(with: Data(cancel.out.utf8)) as? [String: Any])
                #expect(object["status"] as? String == "cancelled")
                #expect((object["counts"] as? [String: Any])?["cancelled"] as? Int == 5)

                // Results of cancelled tasks carry an error line, not a response.
                let results = try await FanoutCLI.run(["results", String(batch.id)] + socket)
                let first = try #require(results.out.split(separator: "\n").first)
                let line = try #require(try JSONSerialization.jsonObject(with: Data(first.utf8)) as? [String: Any])
                #expect(line["response"] is NSNull)
                #expect((line["error"] as? [String: Any])?["code"] as? String == "cancelled")

                let missing = try await FanoutCLI.run(["status", "999999"] + socket)
                #expect(missing.status != 0)
                #expect(missing.err.contains("NOT_FOUND"), "\(missing.err)")
                #expect(missing.err.contains("batch 999999 does not exist"), "\(missing.err)")

                let noDaemon = try await FanoutCLI.run(["list", "--socket", daemon.directory + "/nothing.sock"])
                #expect(noDaemon.status != 0)
                #expect(noDaemon.err.contains("cannot connect to fanoutd"), "\(noDaemon.err)")
                await client.close()
            }
        }
    }
}
