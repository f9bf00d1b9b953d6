import Foundation
import Testing

/// Programs the tests run: their output goes to files (a pipe nobody reads
/// could fill and stall them), and only the `FANOUT_*` variables a test sets
/// reach them.
enum ChildProcess {
    /// Runs `executable arguments…` to the end; returns its exit status and what it printed.
    static func run(_ executable: String, _ arguments: [String], timeoutSeconds: Double = 20) async throws -> (status: Int32, out: String, err: String) {
        let process = try BackgroundProcess(executable, arguments, logPrefix: makeTemporaryDirectory() + "/run")
        defer { try? FileManager.default.removeItem(atPath: URL(fileURLWithPath: process.outPath).deletingLastPathComponent().path) }
        let deadline = ContinuousClock.now + .seconds(timeoutSeconds)
        while process.isRunning {
            if ContinuousClock.now > deadline {
                process.stop()
                Issue.record("\(executable) \(arguments.joined(separator: " ")) did not finish within \(timeoutSeconds) s")
                break
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        return (process.status, process.output, process.errors)
    }
}

extension ChildProcess {
    /// Runs to the end without awaiting: for cleanup in a `defer`.
    static func runBlocking(_ executable: String, _ arguments: [String]) throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        return process.terminationStatus
    }
}

/// A child process that runs while the test goes on; `stop()` ends it.
final class BackgroundProcess: @unchecked Sendable {
    // @unchecked: `process` is started in init and afterwards only read or
    // terminated, which Foundation's Process allows from any thread.
    private let process = Process()
    let outPath: String
    let errPath: String

    init(_ executable: String, _ arguments: [String], logPrefix: String) throws {
        outPath = logPrefix + ".out"
        errPath = logPrefix + ".err"
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("FANOUT_") }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
        try process.run()
    }

    var isRunning: Bool { process.isRunning }
    var status: Int32 { process.terminationStatus }
    var output: String { (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "" }
    var errors: String { (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "" }

    /// SIGKILL, then wait for it to exit.
    func kill() {
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    /// SIGTERM, then wait for it to exit. Safe to call more than once.
    func stop() {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
    }
}
