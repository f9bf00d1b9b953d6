import CFanoutSpawn
import FanoutScheduler
import FanoutTestSupport
import Foundation
import Synchronization
import Testing

@testable import FanoutRunners

/// An attempt's context with a payload and a turn callback.
func execContext(_ payload: [UInt8] = [], customID: String = "task-a",
                 reportTurn: @escaping @Sendable () async -> Void = {}) -> RunContext {
    RunContext(taskID: 41, batchID: 7, customID: customID, agent: "tool", attempt: 2, maxTurns: 5,
               payload: payload, reportTurn: reportTurn)
}

/// `sh -c script`, with `$0` = "sh".
func shell(_ script: String, _ configure: (inout ExecSettings) -> Void = { _ in }) -> ExecSettings {
    var settings = ExecSettings(command: ["/bin/sh", "-c", script])
    configure(&settings)
    return settings
}

/// The failure a run is expected to end with.
func runFailure(of settings: ExecSettings, payload: [UInt8] = []) async throws -> RunnerFailure {
    try await withDeadline(.seconds(30)) {
        do {
            let output = try await ExecRunner(settings: settings).run(execContext(payload))
            Issue.record("expected a failure, got \(output.result.count) bytes of output")
            throw CancellationError()
        } catch let failure as RunnerFailure {
            return failure
        }
    }
}

/// Counts reported turns; the first one can be awaited.
final class TurnCounter: Sendable {
    private let count = Mutex(0)
    let first: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    init() {
        (first, continuation) = AsyncStream.makeStream()
    }

    var value: Int { count.withLock { $0 } }

    @Sendable func report() async {
        count.withLock { $0 += 1 }
        continuation.yield()
    }
}

/// Waits until process `pid` has exited (a zombie not ours to reap counts as gone).
func waitUntilGone(_ pid: pid_t, _ what: String) async throws {
    let pidfd = fanout_pidfd_open(pid)
    guard pidfd >= 0 else {
        #expect(-pidfd == ESRCH, "pidfd_open(\(what))")
        return
    }
    let monitor = try IOMonitor.shared.get()
    defer { monitor.close(pidfd) }
    try await withDeadline(.seconds(10), "\(what) to exit") {
        try await monitor.wait(for: .readable, on: pidfd)
    }
}

func readPID(_ path: String) throws -> pid_t {
    let text = try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    return try #require(pid_t(text), "pid in \(path)")
}

/// Whether a pid no longer exists at all (reaped).
func isReaped(_ pid: pid_t) -> Bool {
    kill(pid, 0) == -1 && errno == ESRCH
}
