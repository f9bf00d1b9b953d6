import FanoutClient
import FanoutScheduler
import FanoutTestSupport
import Foundation
import Testing

/// The `exec` runner through the real daemon path: real child processes,
/// results and failures read back over the socket.
@Suite struct ExecRunnerDaemonTests {
    /// `sh -s`: each task's payload is the script the shell reads from stdin.
    static func shellAgent(maxTurns: Int = 0, maxAttempts: Int = 1) -> (AgentConfiguration, [String: any Sendable]) {
        (AgentConfiguration(name: "sh", runner: "exec", concurrency: 8, maxTurns: maxTurns, maxAttempts: maxAttempts),
         ["command": ["sh", "-s"], "retryable_exit_codes": [75], "kill_grace_ms": 500])
    }

    static func results(of batchID: UInt64, on client: FanoutClient) async throws -> [String: TaskResult] {
        _ = try await events(of: batchID, owner: "exec-test", on: client)
        var results: [String: TaskResult] = [:]
        for try await result in client.results(batchID: batchID) { results[result.customID] = result }
        return results
    }

    /// Whether `pid` is gone, or a zombie waiting for init, within a few seconds.
    static func isGone(_ pid: Int32) async -> Bool {
        for _ in 0..<300 {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return true }
            if stat.split(separator: ")").last?.split(separator: " ").first == "Z" { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    @Test func trUpperCasesEveryPayload() async throws {
        try await withDeadline(.seconds(30)) {
            let agent = (AgentConfiguration(name: "upper", runner: "exec", concurrency: 8), ["command": ["tr", "a-z", "A-Z"]] as [String: any Sendable])
            try await withRunnerDaemon([agent]) { _, client in
                let tasks = (0..<50).map { TaskSpec(customID: "t\($0)", payload: Array("hello number \($0)".utf8)) }
                let batch = try await client.enqueueBatch(ownerID: "exec-test", agent: "upper", tasks: tasks)
                let results = try await Self.results(of: batch.id, on: client)
                #expect(results.count == 50)
                for index in 0..<50 {
                    #expect(results["t\(index)"].map { String(decoding: $0.result, as: UTF8.self) } == "HELLO NUMBER \(index)")
                }
            }
        }
    }

    @Test func exitsTurnsAndRetries() async throws {
        try await withDeadline(.seconds(30)) {
            try await withRunnerDaemon([Self.shellAgent(maxTurns: 3, maxAttempts: 2)]) { _, client in
                let tasks = [
                    TaskSpec(customID: "fails", payload: Array("echo 'disk is full' >&2; exit 3".utf8)),
                    TaskSpec(customID: "retried", payload: Array("exit 75".utf8)),
                    TaskSpec(customID: "turns", payload: Array("for step in a b c; do echo $step >&$FANOUT_TURN_FD; done; echo ok".utf8)),
                ]
                let batch = try await client.enqueueBatch(ownerID: "exec-test", agent: "sh", tasks: tasks)
                let seen = try await events(of: batch.id, owner: "exec-test", on: client)
                var results: [String: TaskResult] = [:]
                for try await result in client.results(batchID: batch.id) { results[result.customID] = result }

                let fails = try #require(results["fails"])
                #expect(fails.status == .failed)
                #expect(fails.attempt == 1, "exit 3 is not retryable")
                #expect(fails.error?.code == "exit_status")
                #expect(fails.error?.message.contains("status 3") == true)
                #expect(fails.error?.message.contains("disk is full") == true)

                let retried = try #require(results["retried"])
                #expect(retried.status == .failed)
                #expect(retried.attempt == 2, "75 is listed in retryable_exit_codes")
                #expect(retried.error?.retryable == true)

                let turns = try #require(results["turns"])
                #expect(turns.status == .completed)
                #expect(String(decoding: turns.result, as: UTF8.self) == "ok\n")
                let turnEvents = seen.filter { $0.type == .taskTurn && $0.customID == "turns" }.map(\.turn)
                #expect(turnEvents == [1, 2, 3])
            }
        }
    }

    @Test func timeoutAndCancelKillTheWholeProcessGroup() async throws {
        try await withDeadline(.seconds(40)) {
            try await withTemporaryDirectory { directory in
                try await withRunnerDaemon([Self.shellAgent()]) { _, client in
                    // Each script starts a grandchild, notes its pid, reports a turn and waits.
                    func script(_ name: String) -> [UInt8] {
                        Array("sleep 300 & echo $! > \(directory)/\(name).pid; echo up >&3; wait".utf8)
                    }
                    let timed = try TaskSpec(customID: "timed", payload: script("timed"), maxAttempts: 1, timeout: .milliseconds(500))
                    let cancelled = TaskSpec(customID: "cancelled", payload: script("cancelled"))
                    let batch = try await client.enqueueBatch(ownerID: "exec-test", agent: "sh", tasks: [timed, cancelled])
                    for try await event in client.subscribe(ownerID: "exec-test", eventTypes: [.taskTurn], batchID: batch.id, since: 0)
                    where event.customID == "cancelled" {
                        let task = try await client.cancelTask(event.taskID)
                        #expect(task.status == .cancelled)
                        break
                    }
                    let results = try await Self.results(of: batch.id, on: client)
                    #expect(results["timed"]?.error?.code == "timeout")
                    #expect(results["cancelled"]?.status == .cancelled)
                    for name in ["timed", "cancelled"] {
                        let text = try String(contentsOfFile: "\(directory)/\(name).pid", encoding: .utf8)
                        let pid = try #require(Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)))
                        #expect(await Self.isGone(pid), "the \(name) task's grandchild \(pid) outlived it")
                    }
                }
            }
        }
    }
}
