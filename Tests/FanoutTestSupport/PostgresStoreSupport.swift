import FanoutPostgresStore
import Logging

extension PostgresTestServer {
    /// A migrated `PostgresStore` on a fresh database `name` of this server, its pool running
    /// for the duration of `body`, closed afterwards.
    public func withStore<T: Sendable>(database name: String,
                                       writerStatementTimeoutMs: Int = PostgresStore.defaultWriterStatementTimeoutMs,
                                       _ body: @Sendable (PostgresStore) async throws -> T) async throws -> T {
        try await createDatabase(named: name)
        var logger = Logger(label: "fanout.test.postgres")
        // PostgresNIO logs a connection cut short by the end of a test at info.
        logger.logLevel = .warning
        let store = PostgresStore(location: try PostgresLocation(url: connectionURL(database: name)),
                                  writerStatementTimeoutMs: writerStatementTimeoutMs, logger: logger)
        return try await store.withRunning { try await body(store) }
    }
}
