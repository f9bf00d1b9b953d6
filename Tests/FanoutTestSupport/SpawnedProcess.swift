import Foundation
import Subprocess
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A child process that runs while a test goes on, started with
/// swift-subprocess (Foundation's `Process.run` can crash the test process:
/// swift-corelibs-foundation#5472).
///
/// swift-subprocess reaps the child when it exits; until then the handle
/// peeks at it with `waitid(…, WNOWAIT)`, which reads the exit without
/// reaping, so `isRunning` and `kill()` work synchronously — in a `defer` —
/// without waiting on the concurrency pool.
public final class SpawnedProcess: Sendable {
    public let pid: pid_t
    private let exit: Task<Int32, Never>
    private let reaped = ReapedStatus()

    /// Starts `executable` with `arguments`; stdin is /dev/null, stdout and
    /// stderr go to the given descriptors (which it closes once the child has them).
    public init(_ executable: String, _ arguments: [String], environment: [String: String],
                stdout: CInt, stderr: CInt) async throws {
        let started = StartSignal()
        let reaped = reaped
        let environment = Environment.custom(Dictionary(uniqueKeysWithValues: environment.compactMap { key, value in
            Environment.Key(rawValue: key).map { ($0, value) }
        }))
        exit = Task {
            do {
                let result = try await Subprocess.run(
                    .path(.init(executable)), arguments: Arguments(arguments), environment: environment,
                    input: .none,
                    output: .fileDescriptor(.init(rawValue: stdout), closeAfterSpawningProcess: true),
                    error: .fileDescriptor(.init(rawValue: stderr), closeAfterSpawningProcess: true)
                ) { execution in
                    started.resume(.success(execution.processIdentifier.value))
                }
                let status = result.terminationStatus.shellStatus
                reaped.set(status)
                return status
            } catch {
                started.resume(.failure(error))
                reaped.set(127)
                return 127
            }
        }
        pid = try await started.value
    }

    /// True until the child has exited (whether or not it has been reaped yet).
    public var isRunning: Bool {
        if reaped.value != nil { return false }
        var info = siginfo_t()
        let peeked = waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT)
        // 0 with no pid: still running. ECHILD: reaped just now.
        return peeked == 0 && info._sifields._sigchld.si_pid == 0
    }

    /// The exit status once it has exited (128 + signal when killed, the shell's convention).
    /// For a child known to have exited, or been signalled to: it waits for the exit, uncancellably.
    public func exitStatus() async -> Int32 {
        await exit.value
    }

    /// Waits for the exit; returns its status, or nil after `seconds` (the child still running).
    /// It looks every 20 ms rather than race `exit` in a task group: a group waits for all its
    /// children, and awaiting `exit` does not end on cancellation, so a child that never exits
    /// would hold the caller for ever instead of `seconds`.
    public func waitForExit(seconds: Double) async -> Int32? {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            // Exited: swift-subprocess reaps it at once, and `exit` ends with the status.
            if !isRunning { return await exit.value }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return nil
    }

    public func signal(_ number: Int32) {
        if isRunning { _ = kill(pid, number) }
    }

    /// Sends `number` and blocks until the child has exited; safe to call more than once.
    public func signalAndWait(_ number: Int32) {
        signal(number)
        waitUntilExited()
    }

    /// Blocks the calling thread until the child has exited, without reaping it.
    public func waitUntilExited() {
        guard reaped.value == nil else { return }
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) != 0, errno == EINTR {}
    }
}

/// The exit status, once swift-subprocess has reaped the child.
private final class ReapedStatus: Sendable {
    private let status = Mutex<Int32?>(nil)
    var value: Int32? { status.withLock { $0 } }
    func set(_ value: Int32) { status.withLock { $0 = value } }
}

/// Hands the child's pid (or the launch error) from the task that runs it to `init`, once.
private final class StartSignal: Sendable {
    private let state = Mutex<(result: Result<pid_t, any Error>?, waiter: CheckedContinuation<pid_t, any Error>?)>((nil, nil))

    func resume(_ result: Result<pid_t, any Error>) {
        let waiter = state.withLock { state -> CheckedContinuation<pid_t, any Error>? in
            guard state.result == nil else { return nil }
            state.result = result
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(with: result)
    }

    var value: pid_t {
        get async throws {
            try await withCheckedThrowingContinuation { continuation in
                let ready = state.withLock { state -> Result<pid_t, any Error>? in
                    if state.result == nil { state.waiter = continuation }
                    return state.result
                }
                if let ready { continuation.resume(with: ready) }
            }
        }
    }
}
