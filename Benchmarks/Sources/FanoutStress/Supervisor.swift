import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One `fanoutd` on a fixed socket and database, started again after every
/// exit. An exit the harness did not cause (no SIGKILL sent) is a crash.
final class Supervisor: Sendable {
    private struct State {
        var pid: pid_t?
        var killing = false
        var kills = 0
        var crashes: [String] = []
    }

    let executable: String
    let directory: String
    var socketPath: String { directory + "/fanout.sock" }
    private let state = Mutex(State())

    init(executable: String, directory: String) {
        self.executable = executable
        self.directory = directory
    }

    var kills: Int { state.withLock { $0.kills } }
    var crashes: [String] { state.withLock { $0.crashes } }

    /// Starts the daemon and waits until it accepts connections.
    func start() async throws {
        let arguments = [executable, "--socket", socketPath, "--db", directory + "/fanout.db", "--concurrency", "32",
                         "--log-level", "warning"]
        let pid = try spawn(arguments, output: directory + "/fanoutd.log")
        state.withLock { $0.pid = pid }
        let deadline = ContinuousClock.now + .seconds(60)
        while !acceptsConnections(socketPath) {
            if let status = reap(pid, wait: false) {
                throw StressError("fanoutd exited (\(status)) before listening:\n\(logTail())")
            }
            guard ContinuousClock.now < deadline else { throw StressError("fanoutd did not listen within 60 s:\n\(logTail())") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// SIGKILL, reap, start again.
    func killAndRestart() async throws {
        guard let pid = state.withLock({ state -> pid_t? in
            state.killing = true
            return state.pid
        }) else { return }
        kill(pid, SIGKILL)
        _ = reap(pid, wait: true)
        state.withLock {
            $0.kills += 1
            $0.killing = false
            $0.pid = nil
        }
        try await start()
    }

    /// Whether the daemon died on its own since the last look; if so it is
    /// counted as a crash and started again.
    func checkAlive() async throws {
        guard let pid = state.withLock({ $0.killing ? nil : $0.pid }), let status = reap(pid, wait: false) else { return }
        state.withLock {
            $0.crashes.append("exit status \(status):\n\(logTail())")
            $0.pid = nil
        }
        try await start()
    }

    func stop() {
        guard let pid = state.withLock({ $0.pid }) else { return }
        kill(pid, SIGTERM)
        _ = reap(pid, wait: true)
        state.withLock { $0.pid = nil }
    }

    func logTail() -> String {
        let text = (try? String(contentsOfFile: directory + "/fanoutd.log", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(15).joined(separator: "\n")
    }

    private func reap(_ pid: pid_t, wait: Bool) -> Int32? {
        var status: Int32 = 0
        let result = waitpid(pid, &status, wait ? 0 : WNOHANG)
        return result == pid ? status : nil
    }

    private func spawn(_ arguments: [String], output: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) }
        argv.append(nil)
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, arguments[0], &actions, nil, argv, environ)
        guard result == 0 else { throw StressError("cannot start \(arguments[0]): \(String(cString: strerror(result)))") }
        return pid
    }
}

func acceptsConnections(_ path: String) -> Bool {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { buffer in
        let bytes = Array(path.utf8.prefix(buffer.count - 1))
        buffer.copyBytes(from: bytes)
        buffer[bytes.count] = 0
    }
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    } == 0
}

struct StressError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
