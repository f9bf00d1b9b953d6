import FanoutCore
import FanoutScheduler
import FanoutTestSupport
import Foundation
import Testing

@testable import FanoutRunners

@Suite struct ExecRunnerTests {
    let clock = ContinuousClock()

    func output(of settings: ExecSettings, payload: [UInt8] = [], reportTurn: @escaping @Sendable () async -> Void = {})
        async throws -> [UInt8] {
        try await withDeadline(.seconds(30)) {
            try await ExecRunner(settings: settings).run(execContext(payload, reportTurn: reportTurn)).result
        }
    }

    @Test func stdoutIsTheResultOfThePayloadOnStdin() async throws {
        let result = try await output(of: ExecSettings(command: ["tr", "a-z", "A-Z"]), payload: Array("hello, world\n".utf8))
        #expect(String(decoding: result, as: UTF8.self) == "HELLO, WORLD\n")
    }

    @Test func aMebibyteRoundTripsThroughCat() async throws {
        var generator = SplitMix64(seed: 7)
        let payload = (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        #expect(try await output(of: ExecSettings(command: ["cat"]), payload: payload) == payload)
    }

    @Test func aCommandThatIgnoresItsInputStillSucceeds() async throws {
        // Its stdin closes under the writer: EPIPE, never a SIGPIPE in the daemon.
        #expect(try await output(of: ExecSettings(command: ["true"]), payload: Array(repeating: 1, count: 1 << 20)).isEmpty)
    }

    @Test func manyAtOnce() async throws {
        try await withDeadline(.seconds(60)) {
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for index in 0..<60 {
                    group.addTask {
                        let payload = Array("task \(index)\n".utf8)
                        return try await ExecRunner(settings: ExecSettings(command: ["cat"])).run(execContext(payload)).result == payload
                    }
                }
                for try await same in group { #expect(same) }
            }
        }
    }

    @Test func nonZeroExitCarriesTheStderrTail() async throws {
        let failure = try await runFailure(of: shell("echo starting >&2; echo 'no such input' >&2; exit 3"))
        #expect(failure.failure.code == "exit_status")
        #expect(failure.failure.message == "command exited with status 3: starting\nno such input")
        #expect(!failure.failure.retryable)

        // Only the last 2 KiB of a long stderr is quoted.
        let long = try await runFailure(of: shell("head -c 200000 /dev/zero | tr '\\0' x >&2; echo ' the end' >&2; exit 1"))
        #expect(long.failure.message.hasPrefix("command exited with status 1: xxx"))
        #expect(long.failure.message.hasSuffix("x the end"))
        #expect(long.failure.message.utf8.count <= 2_048 + 40)
    }

    @Test func listedExitCodesAreRetryable() async throws {
        let listed = try await runFailure(of: shell("exit 75") { $0.retryableExitCodes = [75] })
        #expect(listed.failure.code == "exit_status")
        #expect(listed.failure.message == "command exited with status 75")
        #expect(listed.failure.retryable)
        let other = try await runFailure(of: shell("exit 76") { $0.retryableExitCodes = [75] })
        #expect(!other.failure.retryable)
    }

    @Test func deathBySignalIsRetryable() async throws {
        let failure = try await runFailure(of: shell("echo dying >&2; kill -KILL $$"))
        #expect(failure.failure.code == "signal")
        #expect(failure.failure.message == "command was killed by signal 9 (SIGKILL): dying")
        #expect(failure.failure.retryable)
    }

    @Test func outputOverTheLimitStopsTheCommand() async throws {
        let started = clock.now
        let failure = try await runFailure(of: ExecSettings(command: ["yes"], maxOutputBytes: 1_000))
        #expect(failure.failure.code == "output_too_large")
        #expect(failure.failure.message.contains("more than 1000 bytes"))
        #expect(failure.failure.message.contains("max_output_bytes"))
        #expect(!failure.failure.retryable)
        #expect(clock.now - started < .seconds(10))

        // Exactly the limit is fine.
        #expect(try await output(of: ExecSettings(command: ["printf", "12345"], maxOutputBytes: 5)) == Array("12345".utf8))
    }

    @Test func spawnFailures() async throws {
        let missing = try await runFailure(of: ExecSettings(command: ["fanout-no-such-command", "x"]))
        #expect(missing.failure.code == "spawn_failed")
        #expect(missing.failure.message == "could not start \"fanout-no-such-command\": No such file or directory")
        #expect(!missing.failure.retryable)

        let noDirectory = try await runFailure(of: ExecSettings(command: ["cat"], cwd: "/nonexistent/fanout-dir"))
        #expect(noDirectory.failure.code == "spawn_failed")
        #expect(noDirectory.failure.message == "could not start \"cat\": cwd \"/nonexistent/fanout-dir\": No such file or directory")

        try await withTemporaryDirectory { directory in
            let file = "\(directory)/data"
            #expect(FileManager.default.createFile(atPath: file, contents: Data("x".utf8), attributes: [.posixPermissions: 0o644]))
            let notExecutable = try await runFailure(of: ExecSettings(command: [file]))
            #expect(notExecutable.failure.code == "spawn_failed")
            #expect(notExecutable.failure.message == "could not start \"\(file)\": Permission denied")
        }
    }

    @Test func eachLineOnTheTurnDescriptorIsATurn() async throws {
        let turns = TurnCounter()
        let result = try await output(of: shell("for i in 1 2 3; do echo t >&$FANOUT_TURN_FD; done; cat"),
                                      payload: Array("payload".utf8), reportTurn: turns.report)
        #expect(String(decoding: result, as: UTF8.self) == "payload")
        #expect(turns.value == 3)

        // A line longer than any buffer is still one turn; an unfinished line is none.
        let long = TurnCounter()
        _ = try await output(of: shell("head -c 200000 /dev/zero | tr '\\0' x >&3; echo >&3; printf partial >&3"),
                             reportTurn: long.report)
        #expect(long.value == 1)
    }

    @Test func environmentAndDirectory() async throws {
        try await withTemporaryDirectory { directory in
            let settings = shell(#"printf '%s|' "$GREETING" "$(pwd)" "$FANOUT_TASK_ID" "$FANOUT_BATCH_ID" "$FANOUT_CUSTOM_ID" "$FANOUT_ATTEMPT" "$FANOUT_AGENT" "$FANOUT_MAX_TURNS" "$FANOUT_TURN_FD" "${PATH:+inherited}""#) {
                $0.env = ["GREETING": "hi there"]
                $0.cwd = directory
            }
            let result = String(decoding: try await output(of: settings), as: UTF8.self)
            #expect(result == "hi there|\(directory)|41|7|task-a|2|tool|5|3|inherited|")
        }
    }

    @Test func cancellingStopsTheWholeProcessGroup() async throws {
        try await withTemporaryDirectory { directory in
            let settings = shell("sleep 300 & echo $! > grandchild; echo $$ > child; echo ready >&3; sleep 300") {
                $0.cwd = directory
                $0.killGraceMs = 3_000
            }
            let turns = TurnCounter()
            let attempt = Task { try await ExecRunner(settings: settings).run(execContext(reportTurn: turns.report)) }
            let (child, grandchild, elapsed, result) = try await withDeadline(.seconds(30)) {
                for await _ in turns.first { break }
                let child = try readPID("\(directory)/child"), grandchild = try readPID("\(directory)/grandchild")
                let started = clock.now
                attempt.cancel()
                let result = await attempt.result
                return (child, grandchild, clock.now - started, result)
            }
            #expect(throws: CancellationError.self) { try result.get() }
            #expect(elapsed < .seconds(3) + .seconds(2))
            #expect(isReaped(child))
            try await waitUntilGone(grandchild, "the grandchild")
        }
    }

    @Test func aChildIgnoringSIGTERMIsKilledAfterTheGrace() async throws {
        try await withTemporaryDirectory { directory in
            let settings = shell("trap '' TERM; echo $$ > child; echo ready >&3; sleep 300; sleep 300") {
                $0.cwd = directory
                $0.killGraceMs = 200
            }
            let turns = TurnCounter()
            let attempt = Task { try await ExecRunner(settings: settings).run(execContext(reportTurn: turns.report)) }
            let (child, elapsed, result) = try await withDeadline(.seconds(30)) {
                for await _ in turns.first { break }
                let child = try readPID("\(directory)/child")
                let started = clock.now
                attempt.cancel()
                let result = await attempt.result
                return (child, clock.now - started, result)
            }
            #expect(throws: CancellationError.self) { try result.get() }
            #expect(elapsed >= .milliseconds(200))
            #expect(elapsed < .milliseconds(200) + .seconds(3))
            #expect(isReaped(child))
        }
    }

    @Test func aGrandchildLeftBehindIsKilled() async throws {
        try await withTemporaryDirectory { directory in
            // The grandchild holds stdout open: the run must not wait for its end of file.
            let settings = shell("sleep 300 & echo $! > grandchild; echo done") { $0.cwd = directory }
            let started = clock.now
            #expect(try await output(of: settings) == Array("done\n".utf8))
            #expect(clock.now - started < .seconds(10))
            try await waitUntilGone(try readPID("\(directory)/grandchild"), "the grandchild")
        }
    }

    @Test func aDescendantThatLeftTheGroupDoesNotHoldTheRunOpen() async throws {
        try await withTemporaryDirectory { directory in
            // It starts a session of its own (out of reach of the group kill) and keeps stdout, stderr and fd 3 open.
            let settings = shell("mkfifo up; setsid sh -c 'echo $$ > up; exec sleep 60' & read pid < up; echo $pid > escaped; echo done") {
                $0.cwd = directory
            }
            let started = clock.now
            let result = try await output(of: settings)
            let escaped = try readPID("\(directory)/escaped")
            defer { kill(escaped, SIGKILL) }
            #expect(result == Array("done\n".utf8))
            #expect(clock.now - started < .seconds(10))
            #expect(kill(escaped, 0) == 0, "the escaped process should still run, or this test proves nothing")
        }
    }
}
