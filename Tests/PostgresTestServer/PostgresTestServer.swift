import Foundation
import Subprocess
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A throwaway PostgreSQL server for tests: its own cluster in a short
/// temporary directory, reachable only through a Unix socket in that directory
/// (no TCP), trust authentication, durability off. It is started by `start()`
/// and must be stopped with `stop()`; the `.postgresServer` suite trait and
/// `withPostgresServer` do both.
///
/// PostgreSQL refuses to run as root, and the tests run as root on CI, so as
/// root every server command runs as the unprivileged system user
/// `fanout-pgtest` (created on first use). Client tools (`createdb`, `psql`)
/// run as the calling user: root may use the socket, and auth is trust.
///
/// Connecting from Swift: PostgresNIO 1.33.2 parses no URLs; its Unix socket
/// configuration takes the socket *file*, not the directory:
///
///     PostgresClient.Configuration(unixSocketPath: server.socketPath,
///                                  username: server.user, password: nil, database: name)
///
/// `connectionURL(database:)` is the libpq form, for psql and for settings a
/// user would write; a store accepting it must map `host=` to
/// `host + "/.s.PGSQL.\(port)"` itself.
public final class PostgresTestServer: @unchecked Sendable { // mutable state is behind `lock`
    /// The system user the server runs as when the tests run as root.
    public static let serverUserName = "fanout-pgtest"

    /// The directory holding `initdb`, `pg_ctl`, `createdb`, `psql`.
    public let binDirectory: String
    /// The temporary directory: holds the cluster (`data`), the server log and the socket.
    public let directory: String
    /// The server's only listening address; short, so the socket path fits `sun_path` (107 bytes).
    public var socketDirectory: String { directory }
    /// 5432 unless the server also listens on TCP (`tls`): the socket directory is private to this
    /// server, so no two servers can clash on it.
    public let port: Int
    /// Set: the server also listens on loopback TCP, at `port`, with TLS.
    public let tls: TLSFiles?
    /// The database superuser, created by initdb; trust auth, no password.
    public let user = "postgres"
    /// The OS user the server process runs as; nil when it is the current user.
    public let serverUser: String?

    public var dataDirectory: String { directory + "/data" }
    public var logPath: String { directory + "/server.log" }
    /// The socket file itself, which PostgresNIO's `unixSocketPath:` wants.
    public var socketPath: String { "\(directory)/.s.PGSQL.\(port)" }

    private let lock = NSLock()
    private var stopped = false

    /// The server's certificate and key (PEM files) for TLS on loopback TCP, and the TCP port.
    public struct TLSFiles: Sendable {
        public var port: Int
        public var certificatePath: String
        public var keyPath: String

        public init(port: Int, certificatePath: String, keyPath: String) {
            self.port = port
            self.certificatePath = certificatePath
            self.keyPath = keyPath
        }
    }

    private init(binDirectory: String, serverUser: String?, directory: String, tls: TLSFiles?) {
        self.binDirectory = binDirectory
        self.serverUser = serverUser
        self.directory = directory
        self.tls = tls
        port = tls?.port ?? 5432
    }

    /// Finds the binaries, creates the cluster and starts the server, waiting
    /// (pg_ctl -w) until it accepts connections; about a second. With `tls`, it
    /// also listens on 127.0.0.1 at `tls.port`, with TLS (the port a caller found free there).
    public static func start(binDirectory: String? = nil, tls: TLSFiles? = nil) async throws -> PostgresTestServer {
        let binDirectory = try binDirectory.map(checkedBinDirectory) ?? locateBinaries()
        let serverUser = getuid() == 0 ? serverUserName : nil
        if serverUser != nil { try await ensureServerUser() }
        let server = PostgresTestServer(binDirectory: binDirectory, serverUser: serverUser,
                                        directory: try makeShortTemporaryDirectory(), tls: tls)
        do {
            if let tls { try server.copyTLSFiles(tls) }
            if let serverUser { try await chownRecursively(server.directory, to: serverUser) }
            try await server.initCluster()
            try await server.startServer()
        } catch {
            // Whatever got started is stopped and the directory removed; the first error is the one to report.
            try? await server.stop()
            throw error
        }
        return server
    }

    /// `createdb` over the socket, as the current user (trust auth lets root in as `postgres`).
    public func createDatabase(named name: String) async throws {
        let result = try await Self.run(tool("createdb"), ["-h", socketDirectory, "-p", "\(port)", "-U", user, name])
        guard result.status == 0 else {
            throw PostgresTestServerError("createdb \(name) failed (exit \(result.status)):\n\(result.output)"
                                          + logTail())
        }
    }

    /// Runs `sql` with psql over the socket, as `createDatabase` does, and
    /// returns what it printed: bare values, `|` between columns (`-At`).
    /// `database` may also be a connection URL.
    public func psql(_ sql: String, database: String) async throws -> String {
        // -X: no ~/.psqlrc, whose settings would change the output.
        let result = try await Self.run(tool("psql"), ["-X", "-h", socketDirectory, "-p", "\(port)", "-U", user,
                                                       "-d", database, "-Atc", sql])
        guard result.status == 0 else {
            throw PostgresTestServerError("psql failed (exit \(result.status)): \(result.output)")
        }
        return result.output
    }

    /// `postgres://postgres@localhost:5432/<db>?host=%2Ftmp%2F…`: libpq's URI
    /// form for a Unix socket (the `host` parameter, percent-encoded, names the
    /// socket directory; `localhost` is ignored). See the type's comment for PostgresNIO.
    public func connectionURL(database: String) -> String {
        "postgres://\(user)@localhost:\(port)/\(Self.percentEncoded(database))?host=\(Self.percentEncoded(socketDirectory))"
    }

    /// The postmaster's pid, from the first line of `data/postmaster.pid`; nil when the server is not running.
    public func postmasterPID() -> pid_t? {
        guard let text = try? String(contentsOfFile: dataDirectory + "/postmaster.pid", encoding: .utf8),
              let first = text.split(separator: "\n").first else { return nil }
        return pid_t(first.trimmingCharacters(in: .whitespaces))
    }

    /// The path of a client or server program of this PostgreSQL (`psql`, `pg_ctl`, …).
    public func tool(_ name: String) -> String { binDirectory + "/" + name }

    /// Stops the server (`pg_ctl stop -m fast -w`) and removes the directory.
    /// A second call does nothing. If pg_ctl fails, the postmaster's process
    /// group is killed; the directory is removed either way and the failure thrown.
    public func stop() async throws {
        let first = lock.withLock {
            defer { stopped = true }
            return !stopped
        }
        guard first else { return }
        var problems: [String] = []
        if FileManager.default.fileExists(atPath: dataDirectory + "/postmaster.pid") {
            do {
                let result = try await runServerCommand("pg_ctl", ["-D", dataDirectory, "-m", "fast", "-w", "stop"])
                if result.status != 0 {
                    problems.append("pg_ctl stop failed (exit \(result.status)):\n\(result.output)" + logTail())
                }
            } catch {
                problems.append("\(error)")
            }
            if !problems.isEmpty { killPostmaster() }
        }
        do {
            if FileManager.default.fileExists(atPath: directory) { try FileManager.default.removeItem(atPath: directory) }
        } catch {
            problems.append("could not remove \(directory): \(error)")
        }
        if !problems.isEmpty { throw PostgresTestServerError(problems.joined(separator: "\n")) }
    }

    // MARK: - Starting

    private func initCluster() async throws {
        // --locale=C: the machine's locale may not be generated (initdb refuses it), and C sorts the same everywhere.
        let result = try await runServerCommand("initdb", ["-D", dataDirectory, "-U", user, "--auth=trust",
                                                           "-E", "UTF8", "--locale=C", "--no-sync"])
        guard result.status == 0 else {
            throw PostgresTestServerError("initdb failed (exit \(result.status)):\n\(result.output)")
        }
    }

    private func startServer() async throws {
        // fsync and the rest off: a test cluster never has to survive a crash. Many stores at once
        // (each a pool of up to 20 connections, several daemons per test): more clients than the default 100.
        var options = "-k \(socketDirectory) -p \(port) -c fsync=off -c max_connections=500"
            + " -c synchronous_commit=off -c full_page_writes=off"
        if tls != nil {
            options += " -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file=\(directory)/server.pem -c ssl_key_file=\(directory)/server.key"
        } else {
            options += " -c listen_addresses=''"
        }
        let result = try await runServerCommand("pg_ctl", ["-D", dataDirectory, "-l", logPath, "-w", "-o", options,
                                                           "start"])
        guard result.status == 0 else {
            throw PostgresTestServerError("pg_ctl start failed (exit \(result.status)):\n\(result.output)" + logTail())
        }
    }

    /// The last lines of the server log, to append to an error message.
    private func logTail(lines: Int = 30) -> String {
        guard let text = try? String(contentsOfFile: logPath, encoding: .utf8), !text.isEmpty else { return "" }
        let tail = text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
        return "\nserver log \(logPath) (last \(lines) lines):\n\(tail)"
    }

    /// Last resort when pg_ctl cannot stop the server. pg_ctl starts the
    /// postmaster with setsid, so its backends share its process group.
    private func killPostmaster() {
        guard let pid = postmasterPID(), pid > 1 else { return }
        // A stale pid file may name a reused pid: only kill what is a postgres.
        if let cmdline = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8),
           !cmdline.contains("postgres") { return }
        kill(-pid, SIGKILL)
        kill(pid, SIGKILL)
    }

    private func runServerCommand(_ name: String, _ arguments: [String]) async throws -> CommandResult {
        guard let serverUser else { return try await Self.run(tool(name), arguments, in: directory) }
        // setpriv rather than runuser: no PAM session, which minimal containers may refuse.
        return try await Self.run(try Self.systemTool("setpriv"),
                                  ["--reuid=\(serverUser)", "--regid=\(serverUser)", "--init-groups", "--", tool(name)]
                                      + arguments,
                                  in: directory)
    }

    // MARK: - Binaries

    /// The directory of the PostgreSQL programs: `$FANOUT_POSTGRES_BINDIR` if set
    /// (and nothing else then), else the highest `/usr/lib/postgresql/<N>/bin`
    /// (Debian's layout), else the directory of the `initdb` on PATH.
    public static func locateBinaries(environment: [String: String] = ProcessInfo.processInfo.environment,
                                      debianRoot: String = "/usr/lib/postgresql") throws -> String {
        if let configured = environment["FANOUT_POSTGRES_BINDIR"], !configured.isEmpty {
            return try checkedBinDirectory(configured)
        }
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: debianRoot)) ?? []
        let highest = versions
            .filter { isExecutable("\(debianRoot)/\($0)/bin/initdb") }
            .max { versionKey($0).lexicographicallyPrecedes(versionKey($1)) }
        if let highest { return "\(debianRoot)/\(highest)/bin" }
        for directory in (environment["PATH"] ?? "").split(separator: ":").map(String.init)
        where isExecutable(directory + "/initdb") {
            // Resolved, so pg_ctl and psql come from the same installation as a symlinked initdb.
            let resolved = URL(fileURLWithPath: directory + "/initdb").resolvingSymlinksInPath().path
            return (resolved as NSString).deletingLastPathComponent
        }
        throw PostgresTestServerError.notInstalled(searched: "\(debianRoot)/*/bin or on PATH")
    }

    private static func checkedBinDirectory(_ directory: String) throws -> String {
        guard isExecutable(directory + "/initdb") else {
            throw PostgresTestServerError.notInstalled(searched: "\(directory) (FANOUT_POSTGRES_BINDIR)")
        }
        return directory
    }

    private static func versionKey(_ name: String) -> [Int] {
        name.split(separator: ".").map { Int($0) ?? -1 }
    }

    private static func isExecutable(_ path: String) -> Bool {
        FileManager.default.isExecutableFile(atPath: path)
    }

    /// Runs a system program (found like the server's own tools: `openssl` for a test's
    /// certificates, say) in `directory`; returns its exit status and its output and errors.
    public static func runSystemTool(_ name: String, _ arguments: [String], in directory: String? = nil) async throws
        -> (status: Int32, output: String)
    {
        let result = try await run(try systemTool(name), arguments, in: directory)
        return (result.status, result.output)
    }

    /// A system program by name; sbin included, since a test runner's PATH may lack it even for root.
    private static func systemTool(_ name: String) throws -> String {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
            + ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        guard let found = path.map({ $0 + "/" + name }).first(where: isExecutable) else {
            throw PostgresTestServerError("\(name) not found (on PATH or in /usr/sbin, /usr/bin, /sbin, /bin)")
        }
        return found
    }

    // MARK: - The unprivileged user

    /// One attempt per test process, which every server awaits: suites start concurrently.
    private static let serverUserCreation = Task<Void, any Error> { try await createServerUser() }

    static func ensureServerUser() async throws {
        try await serverUserCreation.value
    }

    /// Creates `fanout-pgtest` unless `id` knows it. Another test process may
    /// be creating it at the same moment: then our useradd fails (name taken,
    /// or /etc/passwd locked), so success is judged by `id` afterwards, with a
    /// few retries for the lock.
    private static func createServerUser() async throws {
        let name = serverUserName
        let id = try systemTool("id")
        if try await run(id, ["-u", name]).status == 0 { return }
        let useradd = try systemTool("useradd")
        var last = CommandResult(status: 0, output: "")
        for attempt in 0..<5 {
            if attempt > 0 { try await Task.sleep(for: .milliseconds(200)) }
            last = try await run(useradd, ["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                                           "--shell", "/usr/sbin/nologin", name])
            if try await run(id, ["-u", name]).status == 0 { return }
        }
        throw PostgresTestServerError("""
            could not create the system user \(name) that PostgreSQL runs as when the tests run as root \
            (useradd exit \(last.status)):
            \(last.output)
            """)
    }

    /// The certificate and key in the server's directory: PostgreSQL wants its key readable by its
    /// own user only.
    private func copyTLSFiles(_ tls: TLSFiles) throws {
        let manager = FileManager.default
        try manager.copyItem(atPath: tls.certificatePath, toPath: directory + "/server.pem")
        try manager.copyItem(atPath: tls.keyPath, toPath: directory + "/server.key")
        try manager.setAttributes([.posixPermissions: 0o600], ofItemAtPath: directory + "/server.key")
    }

    private static func chownRecursively(_ path: String, to user: String) async throws {
        let result = try await run(try systemTool("chown"), ["-R", "\(user):\(user)", path])
        guard result.status == 0 else {
            throw PostgresTestServerError("chown \(user) \(path) failed (exit \(result.status)):\n\(result.output)")
        }
    }

    /// `/tmp/fo-pg-XXXXXX`, mode 0700: mkdtemp, so the name cannot be taken by someone else first.
    private static func makeShortTemporaryDirectory() throws -> String {
        var template = Array("/tmp/fo-pg-XXXXXX".utf8CString)
        guard let created = mkdtemp(&template) else {
            throw PostgresTestServerError("mkdtemp /tmp/fo-pg-XXXXXX failed: \(String(cString: strerror(errno)))")
        }
        let path = String(cString: created)
        // mkdtemp's 0700 is masked by the umask, which another test may narrow for a moment (the daemon's
        // socket sets 0177): a directory without x would lock the server user out.
        guard chmod(path, 0o700) == 0 else {
            let reason = String(cString: strerror(errno))
            rmdir(path)
            throw PostgresTestServerError("chmod 0700 \(path) failed: \(reason)")
        }
        return path
    }

    // MARK: - Running programs

    struct CommandResult {
        var status: Int32
        var output: String
    }

    /// Runs a program to its end with swift-subprocess, stdout and stderr
    /// together into an unlinked temporary file: `pg_ctl start` leaves a
    /// postmaster that inherits them, and a pipe it held open would never end.
    /// swift-subprocess closes every other descriptor in the child and resets
    /// its signal mask and dispositions, which the postmaster needs.
    static func run(_ executable: String, _ arguments: [String], in directory: String? = nil) async throws
        -> CommandResult
    {
        let outputPath = FileManager.default.temporaryDirectory
            .appendingPathComponent("fanout-pg-\(UUID().uuidString).out").path
        let outputFD = open(outputPath, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard outputFD >= 0 else {
            throw PostgresTestServerError("could not create \(outputPath): \(String(cString: strerror(errno)))")
        }
        unlink(outputPath)
        let output = FileHandle(fileDescriptor: outputFD, closeOnDealloc: true)

        // A developer's PGHOST, PGPORT, PGDATABASE… must not redirect our commands; LC_ALL=C keeps messages in English.
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("PG") }
        environment["LC_ALL"] = "C"
        let status: TerminationStatus
        do {
            status = try await Subprocess.run(
                .path(.init(executable)), arguments: Arguments(arguments),
                environment: .custom(Dictionary(uniqueKeysWithValues: environment.compactMap { key, value in
                    Environment.Key(rawValue: key).map { ($0, value) }
                })),
                // As another user, the caller's directory (root's home) may be unreadable.
                workingDirectory: directory.map { .init($0) },
                output: .fileDescriptor(.init(rawValue: outputFD), closeAfterSpawningProcess: false),
                error: .fileDescriptor(.init(rawValue: outputFD), closeAfterSpawningProcess: false)
            ).terminationStatus
        } catch {
            throw PostgresTestServerError("could not run \(executable): \(error)")
        }
        try output.seek(toOffset: 0)
        let text = String(decoding: try output.readToEnd() ?? Data(), as: UTF8.self)
        return CommandResult(status: status.shellStatus, output: text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    private static let urlUnreserved = CharacterSet(
        charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

    private static func percentEncoded(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: urlUnreserved) ?? text
    }
}

/// Why a test PostgreSQL could not be found, started or stopped; the message
/// carries the command's output and the tail of the server log.
public struct PostgresTestServerError: Error, CustomStringConvertible {
    public var description: String

    public init(_ description: String) {
        self.description = description
    }

    static func notInstalled(searched: String) -> PostgresTestServerError {
        PostgresTestServerError("""
            PostgreSQL is not installed: no initdb in \(searched). \
            The tests need a real PostgreSQL server: Debian's `postgresql` package provides it. \
            `make test` installs it when run as root; otherwise run `sudo apt-get install postgresql`.
            """)
    }
}

/// Runs `body` with a fresh server, stopped afterwards whether `body` returns or throws.
public func withPostgresServer<T>(
    isolation: isolated (any Actor)? = #isolation,
    _ body: (PostgresTestServer) async throws -> T
) async throws -> T {
    let server = try await PostgresTestServer.start()
    let result: T
    do {
        result = try await body(server)
    } catch {
        // body's error is the one to report; a failed stop after it would only hide it.
        try? await server.stop()
        throw error
    }
    try await server.stop()
    return result
}
