import FanoutTestSupport
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The harness the PostgreSQL store's tests will run on: a real server, as an
/// unprivileged user when we are root, gone after its scope.
@Suite(.postgresServer)
struct PostgresTestServerTests {
    @Test func createsADatabaseThatPsqlReaches() async throws {
        let server = try PostgresTestServer.current()
        try await server.createDatabase(named: "harness")
        let output = try await server.psql("select current_user, version()", database: "harness")
        #expect(output.hasPrefix("postgres|PostgreSQL "), "psql printed: \(output)")
        #expect(FileManager.default.fileExists(atPath: server.socketPath))
        #expect(server.socketPath.utf8.count < 108, "sun_path holds 107 bytes and a NUL")
    }

    @Test func connectionURLNamesTheSocketDirectory() async throws {
        let server = try PostgresTestServer.current()
        try await server.createDatabase(named: "by_url")
        let url = server.connectionURL(database: "by_url")
        let encoded = server.socketDirectory.replacingOccurrences(of: "/", with: "%2F")
        #expect(url == "postgres://postgres@localhost:5432/by_url?host=\(encoded)")
        // psql takes the URL in place of a database name: the URL is what libpq understands.
        #expect(try await server.psql("select current_database()", database: url) == "by_url")
    }

    @Test func serverRunsAsTheUnprivilegedUserWhenWeAreRoot() throws {
        let server = try PostgresTestServer.current()
        let pid = try #require(server.postmasterPID())
        let uid = try #require(processUID(pid), "no /proc/\(pid)/status")
        if getuid() == 0 {
            let user = try #require(getpwnam(PostgresTestServer.serverUserName), "no user fanout-pgtest")
            #expect(uid == user.pointee.pw_uid)
            #expect(uid != 0)
            #expect(server.serverUser == PostgresTestServer.serverUserName)
        } else {
            #expect(uid == getuid())
            #expect(server.serverUser == nil)
        }
    }
}

@Suite struct PostgresTestServerLifecycleTests {
    /// The trait itself, driven by hand, so that what it leaves behind can be looked at.
    @Test func theScopeStopsTheServerEvenWhenTheSuiteThrows() async throws {
        struct SuiteFailed: Error {}
        let seen = Seen()
        await #expect(throws: SuiteFailed.self) {
            try await PostgresServerTrait(shared: false).provideScope(for: Test.current!, testCase: nil) {
                let server = try PostgresTestServer.current()
                seen.set(server, try #require(server.postmasterPID()))
                throw SuiteFailed()
            }
        }
        let (server, pid) = try #require(seen.get())
        #expect(!FileManager.default.fileExists(atPath: server.socketPath))
        #expect(!FileManager.default.fileExists(atPath: server.directory))
        #expect(!processIsAlive(pid), "postmaster \(pid) still running")
        #expect(PostgresServerTrait.current == nil)
        try await server.stop() // a second stop does nothing
    }

    @Test func missingPostgreSQLIsReportedPlainly() async throws {
        let error = try #require(throws: PostgresTestServerError.self) {
            try PostgresTestServer.locateBinaries(environment: ["FANOUT_POSTGRES_BINDIR": "/nonexistent"])
        }
        #expect(error.description.contains("PostgreSQL is not installed"))
        #expect(error.description.contains("`postgresql` package"))
        #expect(error.description.contains("make test"))
        // No Debian layout and nothing on PATH either.
        #expect(throws: PostgresTestServerError.self) {
            try PostgresTestServer.locateBinaries(environment: ["PATH": "/nonexistent"], debianRoot: "/nonexistent")
        }
        let fromStart = try await #require(throws: PostgresTestServerError.self) {
            try await PostgresTestServer.start(binDirectory: "/nonexistent")
        }
        #expect(fromStart.description.contains("PostgreSQL is not installed"))
    }
}

private final class Seen: @unchecked Sendable { // written once inside the scope, read after it
    private let lock = NSLock()
    private var value: (PostgresTestServer, pid_t)?
    func set(_ server: PostgresTestServer, _ pid: pid_t) { lock.withLock { value = (server, pid) } }
    func get() -> (PostgresTestServer, pid_t)? { lock.withLock { value } }
}

/// The real uid of a process, from the `Uid:` line of /proc/<pid>/status.
private func processUID(_ pid: pid_t) -> uid_t? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Uid:") }) else { return nil }
    return line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first.flatMap { uid_t($0) }
}

/// Whether the process still runs. The postmaster's parent (pg_ctl) has
/// exited, so it is reaped by init; an unreaped zombie counts as gone.
private func processIsAlive(_ pid: pid_t) -> Bool {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return false }
    return !status.contains("State:\tZ")
}
