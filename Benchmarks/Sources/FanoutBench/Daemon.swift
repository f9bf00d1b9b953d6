import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A `fanoutd` child process on a temporary socket and database, in a
/// temporary folder of its own. `stop()` ends it (SIGTERM, then SIGKILL after
/// 10 s) and removes the folder; it is also called for every live daemon when
/// the harness itself is interrupted.
final class Daemon: Sendable {
    let pid: pid_t
    let directory: String
    let socketPath: String
    let databasePath: String
    let logPath: String
    private let stopped = Mutex(false)

    private init(pid: pid_t, directory: String) {
        self.pid = pid
        self.directory = directory
        self.socketPath = directory + "/fanout.sock"
        self.databasePath = directory + "/fanout.db"
        self.logPath = directory + "/fanoutd.log"
    }

    /// Starts the daemon and waits (up to `readyTimeout`) for its socket.
    /// With `agentsConfig`, a config file gives the `echo` agent the same
    /// concurrency as the daemon; without it the daemon's default echo agent
    /// (concurrency 64) is used.
    static func start(executable: String, concurrency: Int, maxTasksPerBatch: Int, agentsConfig: Bool = true,
                      extraAgents: [String] = [], extraArguments: [String] = [],
                      readyTimeout: Duration = .seconds(30)) async throws -> Daemon {
        guard access(executable, X_OK) == 0 else {
            throw BenchError("\(executable) not found or not executable; build it with `swift build -c release` in the main package")
        }
        let directory = try makeTemporaryDirectory()
        let config = """
        {"concurrency":\(concurrency),"agents":[{"name":"echo","runner":"echo","concurrency":\(concurrency)}\(extraAgents.map { "," + $0 }.joined())]}
        """
        do {
            try Data(config.utf8).write(to: URL(fileURLWithPath: directory + "/config.json"))
        } catch {
            removeTree(directory)
            throw error
        }
        var arguments = [
            executable,
            "--socket", directory + "/fanout.sock",
            "--db", directory + "/fanout.db",
            "--concurrency", String(concurrency),
            "--max-tasks-per-batch", String(maxTasksPerBatch),
        ]
        if agentsConfig { arguments += ["--config", directory + "/config.json"] }
        arguments += extraArguments
        let pid: pid_t
        do {
            pid = try spawn(arguments, output: directory + "/fanoutd.log")
        } catch {
            removeTree(directory)
            throw error
        }
        let daemon = Daemon(pid: pid, directory: directory)
        LiveDaemons.shared.add(daemon)

        let deadline = ContinuousClock.now + readyTimeout
        while true {
            var info = stat()
            if stat(daemon.socketPath, &info) == 0, (info.st_mode & S_IFMT) == S_IFSOCK { return daemon }
            if let status = daemon.exitStatus() {
                let log = daemon.logTail()
                let firstError = daemon.firstErrorLine()
                await daemon.stop()
                throw DaemonStartFailure(description: "fanoutd exited (\(status)) before creating its socket\n\(log)",
                                         exited: true, firstErrorLine: firstError)
            }
            if ContinuousClock.now >= deadline {
                let log = daemon.logTail()
                await daemon.stop()
                throw BenchError("fanoutd did not create its socket within \(readyTimeout)\n\(log)")
            }
            await uncancellableSleep(milliseconds: 50)
        }
    }

    /// Whether the process has ended; reaps it if so. Nil while it runs.
    func exitStatus() -> String? {
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        if result == 0 { return nil }
        if result < 0 { return "gone" }
        stopped.withLock { $0 = true }
        return Self.describe(status)
    }

    /// SIGTERM, then SIGKILL if it has not exited 10 s later; then the
    /// temporary folder is removed. Safe to call more than once. Returns how
    /// the daemon ended.
    @discardableResult
    func stop() async -> String {
        let alreadyStopped = stopped.withLock { value in
            defer { value = true }
            return value
        }
        var how = "already stopped"
        if !alreadyStopped {
            how = await Self.terminate(pid)
        }
        removeTree(directory)
        LiveDaemons.shared.remove(self)
        return how
    }

    /// Synchronous variant for the signal handler, where no task can be awaited.
    func stopBlocking() {
        let alreadyStopped = stopped.withLock { value in
            defer { value = true }
            return value
        }
        if !alreadyStopped {
            kill(pid, SIGTERM)
            var status: Int32 = 0
            var reaped = false
            for _ in 0..<200 {
                if waitpid(pid, &status, WNOHANG) != 0 { reaped = true; break }
                usleep(50_000)
            }
            if !reaped {
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
            }
        }
        removeTree(directory)
    }

    /// The first line of the log starting with "Error:" (how ArgumentParser reports a refused setting).
    func firstErrorLine() -> String? {
        guard let text = try? String(contentsOfFile: logPath, encoding: .utf8) else { return nil }
        return text.split(separator: "\n").first { $0.hasPrefix("Error:") }.map(String.init)
    }

    func logTail(lines: Int = 30) -> String {
        guard let text = try? String(contentsOfFile: logPath, encoding: .utf8) else { return "(no fanoutd log)" }
        let tail = text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines)
        return "---- last lines of fanoutd's log ----\n" + tail.joined(separator: "\n")
    }

    private static func terminate(_ pid: pid_t) async -> String {
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) != 0 { return "had exited (\(describe(status)))" }
        kill(pid, SIGTERM)
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            let result = waitpid(pid, &status, WNOHANG)
            if result == pid { return "stopped by SIGTERM (\(describe(status)))" }
            if result < 0 { return "gone" }
            await uncancellableSleep(milliseconds: 50)
        }
        kill(pid, SIGKILL)
        waitpid(pid, &status, 0)
        return "did not stop within 10 s of SIGTERM; killed with SIGKILL"
    }

    private static func describe(_ status: Int32) -> String {
        let signal = status & 0x7f
        if signal == 0 { return "exit \((status >> 8) & 0xff)" }
        return "signal \(signal)"
    }

    static func spawn(_ arguments: [String], output: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)

        // The child starts with default signal handling and an empty mask,
        // whatever the harness changed for itself.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGINT, SIGTERM, SIGHUP, SIGPIPE] { sigaddset(&defaults, signal) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) }
        argv.append(nil)
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, arguments[0], &actions, &attributes, argv, environ)
        guard result == 0 else { throw BenchError("cannot start \(arguments[0]): \(String(cString: strerror(result)))") }
        return pid
    }

    /// A fresh folder under $TMPDIR (or /tmp when that would make the socket
    /// path too long for sun_path's 108 bytes).
    static func makeTemporaryDirectory() throws -> String {
        var base = ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        while base.count > 1 && base.hasSuffix("/") { base.removeLast() }
        if base.utf8.count + "/fanout-bench.XXXXXX/fanout.sock".utf8.count >= 100 || access(base, W_OK) != 0 {
            base = "/tmp"
        }
        var template = Array((base + "/fanout-bench.XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else {
            throw BenchError("cannot create a temporary folder in \(base): \(String(cString: strerror(errno)))")
        }
        return String(cString: made)
    }
}

func removeTree(_ path: String) {
    try? FileManager.default.removeItem(atPath: path)
}

/// Sleeps even when the current task is cancelled (clean-up must still wait).
func uncancellableSleep(milliseconds: Int) async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(milliseconds)) {
            continuation.resume()
        }
    }
}

/// Every daemon not yet stopped, so an interrupted harness can stop them.
final class LiveDaemons: Sendable {
    static let shared = LiveDaemons()
    private let daemons = Mutex<[pid_t: Daemon]>([:])

    private let interruptedFlag = Mutex(false)

    /// Set when a signal arrived: the handler stops the daemons and exits,
    /// so the harness must not go on to report the failures this causes.
    var interrupted: Bool { interruptedFlag.withLock { $0 } }

    func add(_ daemon: Daemon) { daemons.withLock { $0[daemon.pid] = daemon } }
    func remove(_ daemon: Daemon) { _ = daemons.withLock { $0.removeValue(forKey: daemon.pid) } }

    /// On SIGINT, SIGTERM or SIGHUP: stop every live daemon, remove its
    /// folder, and exit with 128 + the signal.
    func installSignalHandlers() {
        let queue = DispatchQueue(label: "fanout-bench.signals")
        var installed: [any DispatchSourceSignal] = []
        for signalNumber in [SIGINT, SIGTERM, SIGHUP] {
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: queue)
            source.setEventHandler { [self] in
                interruptedFlag.withLock { $0 = true }
                let live = daemons.withLock { Array($0.values) }
                FileHandle.standardError.write(Data("fanout-bench: interrupted (signal \(signalNumber)); stopping \(live.count) daemon(s)\n".utf8))
                for daemon in live { daemon.stopBlocking() }
                exit(128 + signalNumber)
            }
            source.resume()
            installed.append(source)
        }
        signalSources = installed
    }
}

/// Keeps the signal sources alive. Written once, by `installSignalHandlers`
/// at start-up before any other task runs, and never read: safe unsynchronised.
nonisolated(unsafe) private var signalSources: [any DispatchSourceSignal] = []

struct DaemonStartFailure: Error, CustomStringConvertible {
    var description: String
    /// The process ended by itself (as opposed to never creating its socket).
    var exited: Bool
    var firstErrorLine: String?
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
