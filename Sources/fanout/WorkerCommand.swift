import ArgumentParser
import FanoutClient
import Foundation
import Logging
import ServiceLifecycle
import Subprocess

/// `fanout worker`: serves one agent's tasks from this process, running a
/// command for each (or echoing payloads back), until SIGTERM or SIGINT
/// drains it.
struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Serve an agent's tasks as a worker: run a command for each one, or echo each payload back.",
        discussion: """
            The command gets the task's payload on stdin; what it writes to stdout is the result. A non-zero exit \
            fails the task (its stderr goes to the worker's). FANOUT_TASK_ID, FANOUT_BATCH_ID, FANOUT_CUSTOM_ID, \
            FANOUT_ATTEMPT and FANOUT_AGENT are set. An agent not in fanoutd's configuration is declared by the \
            worker and runs only tasks submitted by the worker's own uid. SIGTERM or SIGINT drains the worker: it \
            takes no new task and exits once the running ones are done.

              fanout worker --agent summarize --concurrency 4 -- python3 summarize.py
            """)

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "The agent to serve.")
    var agent: String

    @Option(help: "How many of its tasks run at once here.")
    var concurrency = 1

    @Option(help: "The worker's name, as `fanout workers` lists it.")
    var name = "fanout-worker"

    @Option(name: .customLong("max-output-bytes"), help: "Largest result a command may write (default 1048576).")
    var maxOutputBytes = 1 << 20

    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --; none: echo each payload back.")
    var command: [String] = []

    func validate() throws {
        guard concurrency >= 1 else { throw ValidationError("--concurrency must be at least 1") }
        guard maxOutputBytes >= 1 else { throw ValidationError("--max-output-bytes must be at least 1") }
    }

    func run() async throws {
        let (command, limit) = (command, maxOutputBytes)
        let handler: @Sendable (WorkerTaskContext) async throws -> WorkerOutput = { task in
            command.isEmpty ? WorkerOutput(task.payload) : try await Self.execute(command, for: task, outputLimit: limit)
        }
        let worker = FanoutWorker(name: name, agents: [WorkerAgent(agent, concurrency: concurrency, handler: handler)],
                                  settings: .init(socketPath: connection.socket))
        var logger = Logger(label: "fanout.worker")
        logger.logLevel = .warning
        let group = ServiceGroup(configuration: .init(services: [.init(service: worker)],
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await group.run()
        } catch let error as FanoutClientError {
            throw CLIError(error.message)
        }
    }

    /// Runs `command` for one task: its payload on stdin, its stdout the result.
    static func execute(_ command: [String], for task: WorkerTaskContext, outputLimit: Int) async throws -> WorkerOutput {
        var options = PlatformOptions()
        // A cancelled task's command gets SIGTERM, then SIGKILL if it lingers.
        options.teardownSequence = [.gracefulShutDown(allowedDurationToNextStep: .seconds(2))]
        let executable: Executable = command[0].contains("/") ? .path(.init(command[0])) : .name(command[0])
        let result: ExecutionResult<Void, BytesOutput, DiscardedOutput>
        do {
            result = try await Subprocess.run(
                executable, arguments: Arguments(Array(command.dropFirst())),
                environment: .inherit.updating([
                    "FANOUT_TASK_ID": "\(task.task.id)", "FANOUT_BATCH_ID": "\(task.task.batchID)",
                    "FANOUT_CUSTOM_ID": task.task.customID, "FANOUT_ATTEMPT": "\(task.task.attempt)", "FANOUT_AGENT": task.task.agent,
                ]),
                platformOptions: options, input: .array(task.payload), output: .bytes(limit: outputLimit), error: .discarded)
        } catch let error as SubprocessError {
            throw WorkerTaskError("\(command[0]): \(error)", code: "exec_failed")
        }
        guard case .exited(0) = result.terminationStatus else {
            throw WorkerTaskError("\(command[0]) ended with \(result.terminationStatus)", code: "exit_status")
        }
        return WorkerOutput(result.standardOutput)
    }
}
