import CFanoutSpawn
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A command the exec runner started: the leader of its own process group,
/// left unreaped until `reap()` so that its pid, which is also the group's
/// id, cannot be reused by another process while we may still signal it.
final class ChildProcess: Sendable {
    /// The daemon's ends of the child's descriptors 0-3, non-blocking.
    struct Pipes: Sendable {
        var stdin: Int32
        var stdout: Int32
        var stderr: Int32
        var turns: Int32
    }

    enum Termination: Sendable, Hashable {
        case exited(Int32)
        case signaled(Int32)
        /// waitpid failed, so the status is unknown (something else reaped it).
        case lost(SystemCallError)
    }

    let pid: pid_t
    private let pidfd: Int32
    private let monitor: IOMonitor

    private struct State {
        var stopping = false
        var reaped = false
        var killTimer: UInt64?
    }

    private let state = Mutex(State())

    private init(pid: pid_t, pidfd: Int32, monitor: IOMonitor) {
        self.pid = pid
        self.pidfd = pidfd
        self.monitor = monitor
    }

    /// Starts `command` with the pipes as its descriptors 0-3 and nothing else open.
    static func spawn(command: [String], environment: [String: String], cwd: String?,
                      monitor: IOMonitor) throws(SystemCallError) -> (ChildProcess, Pipes) {
        // Each [read end, write end]; `ours` is the daemon's end (non-blocking): stdin's write end, the others' read ends.
        var made: [[Int32]] = []
        func closeAll() { for pipe in made { for fd in pipe { Glibc.close(fd) } } }
        for ours in [1, 0, 0, 0] as [Int32] {
            var ends: [Int32] = [-1, -1]
            let rc = ends.withUnsafeMutableBufferPointer { fanout_pipe($0.baseAddress, ours) }
            guard rc == 0 else {
                closeAll()
                throw SystemCallError("pipe2", negated: rc)
            }
            made.append(ends)
        }
        let childEnds = [made[0][0], made[1][1], made[2][1], made[3][1]]
        let pipes = Pipes(stdin: made[0][1], stdout: made[1][0], stderr: made[2][0], turns: made[3][0])

        var pid: pid_t = 0
        let spawned = withCStrings(command) { argv in
            withCStrings(environment.map { "\($0.key)=\($0.value)" }) { envp in
                childEnds.withUnsafeBufferPointer { fds in
                    if let cwd {
                        cwd.withCString { fanout_spawn(command[0], argv, envp, $0, fds.baseAddress, &pid) }
                    } else {
                        fanout_spawn(command[0], argv, envp, nil, fds.baseAddress, &pid)
                    }
                }
            }
        }
        for fd in childEnds { Glibc.close(fd) }
        let ourEnds = [pipes.stdin, pipes.stdout, pipes.stderr, pipes.turns]
        guard spawned == 0 else {
            for fd in ourEnds { Glibc.close(fd) }
            throw SystemCallError("posix_spawn", errno: spawned)
        }
        let pidfd = fanout_pidfd_open(pid)
        guard pidfd >= 0 else {
            // Without a pidfd its exit cannot be awaited: stop it at once.
            kill(-pid, SIGKILL)
            kill(pid, SIGKILL)
            var status: Int32 = 0, signal: Int32 = 0
            _ = fanout_reap(pid, &status, &signal)
            for fd in ourEnds { Glibc.close(fd) }
            throw SystemCallError("pidfd_open", negated: pidfd)
        }
        return (ChildProcess(pid: pid, pidfd: pidfd, monitor: monitor), pipes)
    }

    /// Asks the group to stop (SIGTERM) and kills it (SIGKILL) if the leader
    /// still runs after `grace`. Only the first call acts.
    func terminate(grace: Duration) {
        let first = state.withLock { state -> Bool in
            guard !state.reaped, !state.stopping else { return false }
            state.stopping = true
            send(SIGTERM)
            return true
        }
        guard first else { return }
        let timer = monitor.schedule(after: grace) { [self] in
            state.withLock { if !$0.reaped { send(SIGKILL) } }
        }
        state.withLock { $0.killTimer = timer }
    }

    /// Kills whatever is left in the group once the leader has exited: no
    /// descendant outlives the attempt.
    func killRemainingGroup() {
        state.withLock { if !$0.reaped { _ = kill(-pid, SIGKILL) } }
    }

    /// Returns once the leader has exited; it stays unreaped. Not
    /// cancellable: a stopped attempt still waits here for its process.
    func waitForExit() async {
        while true {
            let exited = fanout_has_exited(pid)
            if exited == 1 { return }
            do {
                guard exited == 0 else { throw SystemCallError("waitid", negated: exited) }
                try await monitor.wait(for: .readable, on: pidfd, cancellable: false)
            } catch {
                // No way left to learn when it exits: end it now, so `reap` cannot block for long.
                state.withLock { if !$0.reaped { send(SIGKILL) } }
                return
            }
        }
    }

    /// Kills the rest of the group, collects the leader's status and closes
    /// the pidfd. Call once, after `waitForExit`.
    func reap() -> Termination {
        let timer = state.withLock { state -> UInt64? in
            // Still a zombie here, so the group id cannot name anyone else's group.
            _ = kill(-pid, SIGKILL)
            state.reaped = true
            return state.killTimer
        }
        if let timer { monitor.cancelTimer(timer) }
        var status: Int32 = -1, signal: Int32 = 0
        let rc = fanout_reap(pid, &status, &signal)
        monitor.close(pidfd)
        if rc != 0 { return .lost(SystemCallError("waitpid", negated: rc)) }
        return signal != 0 ? .signaled(signal) : .exited(status)
    }

    /// The group, and the leader itself in case it moved to another group. Call with the lock held, unreaped.
    private func send(_ number: Int32) {
        _ = kill(-pid, number)
        _ = kill(pid, number)
    }
}

/// A NULL-terminated array of C strings, valid during `body`.
private func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    let pointers = strings.map { strdup($0) } + [nil]
    defer { for pointer in pointers { free(pointer) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
