import FanoutTestSupport
import Foundation
import Testing

/// Programs the tests run: their output goes to files (a pipe nobody reads
/// could fill and stall them), and only the `FANOUT_*` variables a test sets
/// reach them.
enum ChildProcess {
    /// Runs `executable arguments…` to the end; returns its exit status and what it printed.
    static func run(_ executable: String, _ arguments: [String], timeoutSeconds: Double = 20) async throws -> (status: Int32, out: String, err: String) {
        let directory = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let process = try await BackgroundProcess(executable, arguments, logPrefix: directory + "/run")
        guard let status = await process.waitForExit(seconds: timeoutSeconds) else {
            // SIGKILL: a program that is stuck may be stuck ignoring SIGTERM too.
            process.kill()
            Issue.record("\(executable) \(arguments.joined(separator: " ")) did not finish within \(timeoutSeconds) s")
            return (await process.exitStatus(), process.output, process.errors)
        }
        return (status, process.output, process.errors)
    }

    /// Runs to the end without awaiting: for cleanup in a `defer`.
    static func runBlocking(_ executable: String, _ arguments: [String]) -> Int32 {
        var pid = pid_t()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for fd: CInt in 0...2 {
            posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0)
        }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        guard posix_spawn(&pid, executable, &actions, nil, argv, environ) == 0 else { return 127 }
        var status: CInt = 0
        while waitpid(pid, &status, 0) < 0, errno == EINTR {}
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }
}

/// A child process that runs while the test goes on, its stdout and stderr in
/// `logPrefix.out` and `logPrefix.err`; `stop()` ends it.
final class BackgroundProcess: Sendable {
    private let process: SpawnedProcess
    let outPath: String
    let errPath: String

    init(_ executable: String, _ arguments: [String], logPrefix: String) async throws {
        outPath = logPrefix + ".out"
        errPath = logPrefix + ".err"
        let out = try openLog(outPath)
        let err: CInt
        do { err = try openLog(errPath) } catch { close(out); throw error }
        process = try await SpawnedProcess(executable, arguments,
                                           environment: ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("FANOUT_") },
                                           stdout: out, stderr: err)
    }

    var isRunning: Bool { process.isRunning }
    func exitStatus() async -> Int32 { await process.exitStatus() }
    func waitForExit(seconds: Double) async -> Int32? { await process.waitForExit(seconds: seconds) }
    var output: String { (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "" }
    var errors: String { (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "" }

    /// SIGKILL, then wait for it to exit.
    func kill() {
        process.signalAndWait(SIGKILL)
    }

    /// SIGTERM, then wait for it to exit. Safe to call more than once.
    func stop() {
        process.signalAndWait(SIGTERM)
    }
}
