import Foundation
@_exported import PostgresTestServer

#if canImport(Testing)
import Testing

/// `@Suite(.postgresServer)`: the whole suite runs inside one server, reached
/// through `PostgresServerTrait.current` (or `PostgresTestServer.current()`),
/// and stopped when the suite ends, passed or failed. If PostgreSQL cannot be
/// started, the suite fails with the reason; it is never skipped.
public struct PostgresServerTrait: SuiteTrait, TestScoping {
    @TaskLocal public static var current: PostgresTestServer?

    /// One server per suite, not per test: initdb and a start take about a second.
    public var isRecursive: Bool { false }

    /// Whether suites running at the same time share one server (each test makes its own
    /// database): several initdb and servers at once would load a small machine enough to
    /// upset the timing of other suites. Off: a server of the suite's own.
    public var shared: Bool

    public init(shared: Bool = true) {
        self.shared = shared
    }

    public func provideScope(for test: Test, testCase: Test.Case?,
                             performing function: @Sendable () async throws -> Void) async throws {
        guard shared else {
            return try await withPostgresServer { server in
                try await Self.$current.withValue(server) { try await function() }
            }
        }
        let server = try await SharedPostgresServer.instance.acquire()
        do {
            try await Self.$current.withValue(server) { try await function() }
        } catch {
            await SharedPostgresServer.instance.release()
            throw error
        }
        await SharedPostgresServer.instance.release()
    }
}

/// The server the suites running at one time share: started by the first, stopped when the
/// last one ends (a suite starting later gets a new one).
actor SharedPostgresServer {
    static let instance = SharedPostgresServer()

    private var starting: Task<PostgresTestServer, any Error>?
    private var users = 0

    func acquire() async throws -> PostgresTestServer {
        users += 1
        let start = starting ?? Task { try await PostgresTestServer.start() }
        starting = start
        do {
            return try await start.value
        } catch {
            users -= 1
            if users == 0 { starting = nil }
            throw error
        }
    }

    func release() async {
        users -= 1
        guard users == 0, let start = starting else { return }
        starting = nil
        try? await start.value.stop()
    }
}

extension Trait where Self == PostgresServerTrait {
    /// Runs the suite inside a private PostgreSQL server; see `PostgresServerTrait`.
    public static var postgresServer: Self { PostgresServerTrait() }
}

extension PostgresTestServer {
    /// The server of the enclosing `.postgresServer` suite.
    public static func current() throws -> PostgresTestServer {
        guard let server = PostgresServerTrait.current else {
            throw PostgresTestServerError("no PostgreSQL server here: add .postgresServer to the suite's traits")
        }
        return server
    }
}
#endif
