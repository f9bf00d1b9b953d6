import CFanoutSpawn
import FanoutCore
import FanoutScheduler
import Foundation

/// Runs a command per attempt (the `exec` runner).
///
/// The task's payload is the command's stdin and its stdout the result. Its
/// descriptor 3 (named by `FANOUT_TURN_FD`) is a pipe: each line written
/// there reports one turn. Exit status 0 succeeds; anything else fails, as
/// `ExecSettings` classifies it. A cancelled attempt stops the command's
/// whole process group (SIGTERM, then SIGKILL after `kill_grace_ms`), and
/// nothing of the group outlives the attempt even when the command succeeds.
public struct ExecRunner: Runner {
    public let settings: ExecSettings

    public init(settings: ExecSettings) {
        self.settings = settings
    }

    public func run(_ context: RunContext) async throws -> RunOutput {
        try Task.checkCancellation()
        do {
            try settings.validate()
        } catch {
            throw RunnerFailure("exec: \(error.message)", code: "spawn_failed", retryable: false)
        }
        let monitor: IOMonitor
        do {
            monitor = try IOMonitor.shared.get()
        } catch {
            throw RunnerFailure("exec: cannot watch child processes: \(error)", code: "spawn_failed", retryable: false)
        }
        let child: ChildProcess, pipes: ChildProcess.Pipes
        do {
            (child, pipes) = try ChildProcess.spawn(command: settings.command, environment: environment(for: context),
                                                    cwd: settings.cwd, monitor: monitor)
        } catch {
            throw spawnFailure(error)
        }
        let grace = Duration.milliseconds(settings.killGraceMs)
        let outcome = await withTaskCancellationHandler {
            await supervise(child, pipes, context, monitor)
        } onCancel: {
            child.terminate(grace: grace)
        }
        try Task.checkCancellation()
        return try outcome.result(settings)
    }

    /// The daemon's environment, the agent's `env` over it, and the attempt's variables over both.
    func environment(for context: RunContext) -> [String: String] {
        var environment = ProcessInfo.processInfo.environment
        environment.merge(settings.env) { $1 }
        let attempt: [String: String] = [
            "FANOUT_TASK_ID": String(context.taskID),
            "FANOUT_BATCH_ID": String(context.batchID),
            "FANOUT_CUSTOM_ID": context.customID,
            "FANOUT_ATTEMPT": String(context.attempt),
            "FANOUT_AGENT": context.agent,
            "FANOUT_MAX_TURNS": String(context.maxTurns),
            "FANOUT_TURN_FD": "3",
        ]
        // An environment string ends at NUL; the ids come from clients.
        environment.merge(attempt.mapValues { $0.replacingOccurrences(of: "\0", with: "") }) { $1 }
        return environment
    }

    private func spawnFailure(_ error: SystemCallError) -> RunnerFailure {
        let program = "\"\(settings.command[0])\""
        var message = "could not start \(program): \(error.reason)"
        if error.call == "posix_spawn", let cwd = settings.cwd, !FileManager.default.fileExists(atPath: cwd) {
            // posix_spawn says ENOENT for a missing directory and a missing program alike.
            message = "could not start \(program): cwd \"\(cwd)\": \(error.reason)"
        } else if error.call != "posix_spawn" {
            message = "could not start \(program): \(error)"
        }
        return RunnerFailure(message, code: "spawn_failed", retryable: false)
    }

    /// What the attempt saw, collected while the process ran.
    struct Outcome: Sendable {
        var stdout: [UInt8] = []
        var outputTooLarge = false
        var stderr = StderrTail()
        var ioFailure: SystemCallError?
        var termination = ChildProcess.Termination.exited(0)

        func result(_ settings: ExecSettings) throws -> RunOutput {
            if let ioFailure {
                throw RunnerFailure("exec: talking to the command failed: \(ioFailure)", code: "io_error", retryable: true)
            }
            if outputTooLarge {
                throw RunnerFailure(
                    "command wrote more than \(settings.maxOutputBytes) bytes to stdout (the agent's max_output_bytes); it was stopped",
                    code: "output_too_large", retryable: false)
            }
            let detail = stderr.message.isEmpty ? "" : ": \(stderr.message)"
            switch termination {
            case .exited(0):
                return RunOutput(result: stdout)
            case .exited(let status):
                throw RunnerFailure("command exited with status \(status)\(detail)", code: "exit_status",
                                    retryable: settings.retryableExitCodes.contains(status))
            case .signaled(let signal):
                let name = fanout_signal_name(signal).map { " (SIG\(String(cString: $0)))" } ?? ""
                throw RunnerFailure("command was killed by signal \(signal)\(name)\(detail)", code: "signal", retryable: true)
            case .lost(let error):
                throw RunnerFailure("exec: the command's exit status is unknown (\(error))", code: "exit_status",
                                    retryable: true)
            }
        }
    }

    private enum Event: Sendable {
        case fed
        case stdout(PipeIO.End, [UInt8], tooLarge: Bool)
        case stderr(PipeIO.End, StderrTail)
        case turns(PipeIO.End)
        case exited
    }

    /// Feeds and drains the pipes until the process exits, then reaps it.
    /// Returns only once every descriptor is closed and the process reaped.
    private func supervise(_ child: ChildProcess, _ pipes: ChildProcess.Pipes, _ context: RunContext,
                           _ monitor: IOMonitor) async -> Outcome {
        let limit = settings.maxOutputBytes
        let grace = Duration.milliseconds(settings.killGraceMs)
        return await withTaskGroup(of: Event.self) { group in
            group.addTask {
                await PipeIO.feed(pipes.stdin, context.payload, monitor: monitor)
                return .fed
            }
            group.addTask {
                var output: [UInt8] = []
                var tooLarge = false
                let end = await PipeIO.pump(pipes.stdout, monitor: monitor) { chunk in
                    guard output.count + chunk.count <= limit else {
                        tooLarge = true
                        return false
                    }
                    output += chunk
                    return true
                }
                return .stdout(end, output, tooLarge: tooLarge)
            }
            group.addTask {
                var tail = StderrTail()
                let end = await PipeIO.pump(pipes.stderr, monitor: monitor) { chunk in
                    tail.append(chunk)
                    return true
                }
                return .stderr(end, tail)
            }
            group.addTask {
                // Only newlines matter, so a line of any length costs nothing to hold.
                let end = await PipeIO.pump(pipes.turns, monitor: monitor) { chunk in
                    for byte in chunk where byte == UInt8(ascii: "\n") { await context.reportTurn() }
                    return true
                }
                return .turns(end)
            }
            group.addTask {
                await child.waitForExit()
                return .exited
            }

            var outcome = Outcome()
            for await event in group {
                switch event {
                case .fed:
                    break
                case .stdout(let end, let output, let tooLarge):
                    outcome.stdout = output
                    outcome.outputTooLarge = tooLarge
                    if tooLarge { child.terminate(grace: grace) }
                    outcome.note(end, child, grace)
                case .stderr(let end, let tail):
                    outcome.stderr = tail
                    outcome.note(end, child, grace)
                case .turns(let end):
                    outcome.note(end, child, grace)
                case .exited:
                    child.killRemainingGroup()
                    // The readers take what the pipes hold and stop, even if an escaped descendant keeps them open.
                    group.cancelAll()
                }
            }
            outcome.termination = child.reap()
            return outcome
        }
    }
}

extension ExecRunner.Outcome {
    /// A pipe that failed leaves no way to follow the command: stop it.
    fileprivate mutating func note(_ end: PipeIO.End, _ child: ChildProcess, _ grace: Duration) {
        guard case .failed(let error) = end else { return }
        if ioFailure == nil { ioFailure = error }
        child.terminate(grace: grace)
    }
}
