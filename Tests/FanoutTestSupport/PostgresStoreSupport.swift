import FanoutPostgresStore
import Foundation
import Logging

/// The stores a test can run on: the suites that run on both carry `.postgresServer`.
public enum StoreKind: String, CaseIterable, Sendable {
    case sqlite, postgres
}

extension PostgresTestServer {
    /// A migrated `PostgresStore` on a fresh database `name` of this server, its pool running
    /// for the duration of `body`, closed afterwards.
    public func withStore<T: Sendable>(database name: String,
                                       writerStatementTimeoutMs: Int = PostgresStore.defaultWriterStatementTimeoutMs,
                                       leaseMs: Int = PostgresStore.defaultLeaseMs,
                                       _ body: @Sendable (PostgresStore) async throws -> T) async throws -> T {
        try await createDatabase(named: name)
        var logger = Logger(label: "fanout.test.postgres")
        // PostgresNIO logs a connection cut short by the end of a test at info.
        logger.logLevel = .warning
        let store = PostgresStore(location: try PostgresLocation(url: connectionURL(database: name)),
                                  writerStatementTimeoutMs: writerStatementTimeoutMs, leaseMs: leaseMs, logger: logger)
        return try await store.withRunning { try await body(store) }
    }
}

extension PostgresTestServer {
    /// A `PostgresStore` on a fresh database of this server with a unique name, not yet running.
    public func makeStore(leaseMs: Int = PostgresStore.defaultLeaseMs) async throws -> PostgresStore {
        let database = "s_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(20)
        try await createDatabase(named: database)
        var logger = Logger(label: "fanout.test.postgres")
        // PostgresNIO logs a connection cut short by the end of a test at info.
        logger.logLevel = .warning
        return PostgresStore(location: try PostgresLocation(url: connectionURL(database: database)), leaseMs: leaseMs, logger: logger)
    }
}

extension PostgresStore {
    /// Another daemon's view of the same database: its pool only (no writer, so it does not
    /// take the database's lock), running for the duration of `body`.
    public func withPeer<T: Sendable>(leaseMs: Int = PostgresStore.defaultLeaseMs,
                                      _ body: @Sendable (PostgresStore) async throws -> T) async throws -> T {
        var logger = Logger(label: "fanout.test.postgres.peer")
        logger.logLevel = .warning
        let peer = PostgresStore(location: location, leaseMs: leaseMs, logger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await peer.run() }
            defer { group.cancelAll() }
            return try await body(peer)
        }
    }
}
