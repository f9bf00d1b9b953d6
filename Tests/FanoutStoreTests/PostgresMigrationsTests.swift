import FanoutPostgresStore
import FanoutTestSupport
import Logging
import PostgresNIO
import Testing

/// The schema against a real PostgreSQL (Debian's, started by the suite as an unprivileged user).
@Suite(.postgresServer) struct PostgresMigrationsTests {
    /// Quiet: PostgresNIO logs a connection cut short by the end of a test at info.
    static let logger: Logger = {
        var logger = Logger(label: "fanout.test.postgres")
        logger.logLevel = .warning
        return logger
    }()

    /// A client of a fresh database of the suite's server, running for the duration of `body`.
    static func withDatabase<T: Sendable>(_ name: String, _ body: @Sendable (PostgresClient, PostgresTestServer) async throws -> T) async throws -> T {
        let server = try PostgresTestServer.current()
        try await server.createDatabase(named: name)
        let location = try PostgresLocation(url: server.connectionURL(database: name))
        let client = PostgresClient(configuration: location.clientConfiguration(poolSize: 4), backgroundLogger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            return try await body(client, server)
        }
    }

    @Test func aFreshDatabaseGetsEveryMigrationOnceAndASecondRunChangesNothing() async throws {
        try await Self.withDatabase("migrate_twice") { client, server in
            #expect(try await client.withConnection { try await PostgresMigrations.migrate($0, logger: Self.logger) } == PostgresMigrations.all.map(\.version))
            #expect(try await client.withConnection { try await PostgresMigrations.migrate($0, logger: Self.logger) } == [])
            #expect(try await PostgresMigrations.appliedVersions(client, logger: Self.logger) == PostgresMigrations.all.map(\.version))
            let tables = try await server.psql(
                "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = 'public'",
                database: "migrate_twice")
            #expect(tables == "batches,commit_receipts,daemons,event_log,events,fanout_migrations,file_chunks,files,gateway_batches,gateway_rejects,rate_limits,tasks")
        }
    }

    @Test func daemonsStartingTogetherApplyTheMigrationsOnce() async throws {
        try await Self.withDatabase("migrate_together") { client, _ in
            // Two migrations at once, on two connections: the advisory lock makes the second wait and find nothing to do.
            async let first = client.withConnection { try await PostgresMigrations.migrate($0, logger: Self.logger) }
            async let second = client.withConnection { try await PostgresMigrations.migrate($0, logger: Self.logger) }
            let results = try await [first, second]
            #expect(results.filter(\.isEmpty).count == 1, "\(results)")
            #expect(results.flatMap { $0 } == PostgresMigrations.all.map(\.version))
        }
    }

    @Test func aDatabaseMigratedByANewerFanoutdIsRefusedAndLeftAlone() async throws {
        try await Self.withDatabase("migrate_newer") { client, _ in
            _ = try await client.withConnection { try await PostgresMigrations.migrate($0, logger: Self.logger) }
            try await client.query("INSERT INTO fanout_migrations (version, name) VALUES (999, 'from the future')", logger: Self.logger)
            do {
                _ = try await client.withConnection { try await PostgresMigrations.migrate($0, logger: Self.logger) }
                Issue.record("a schema at version 999 was accepted")
            } catch let error as PostgresSchemaError {
                #expect(error.description.contains("version 999, newer than this fanoutd knows"))
            }
            #expect(try await PostgresMigrations.appliedVersions(client, logger: Self.logger).last == 999)
        }
    }

    @Test func eventSequencesComeFromTheDatabaseAndCannotBeSetByAWriter() async throws {
        try await Self.withDatabase("migrate_events") { client, _ in
            _ = try await client.withConnection { try await PostgresMigrations.migrate($0, logger: Self.logger) }
            await #expect(throws: PSQLError.self) {
                try await client.query("""
                    INSERT INTO events (sequence, kind, timestamp, owner_id, batch_id) VALUES (5, 'task_started', 0, 'o', 1)
                    """, logger: Self.logger)
            }
            var sequences: [Int64] = []
            for _ in 0..<3 {
                let rows = try await client.query("""
                    INSERT INTO events (kind, timestamp, owner_id, batch_id) VALUES ('task_started', 0, 'o', 1) RETURNING sequence
                    """, logger: Self.logger)
                for try await sequence in rows.decode(Int64.self) { sequences.append(sequence) }
            }
            #expect(sequences == [1, 2, 3])
        }
    }
}
