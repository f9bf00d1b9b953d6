import FanoutCore
import FanoutStore
import Foundation
import Logging
import NIOCore
import NIOPosix
import PostgresNIO
import Synchronization

/// The store on PostgreSQL, for several daemons sharing one queue.
///
/// Async calls go through a `PostgresClient` (a connection pool) that the
/// owner runs (`run()`, a `Service` of the daemon). The commit loop's writes
/// (`StoreWriter`) go through one connection of their own, on which the commit
/// thread blocks with NIO futures: that thread exists to block (decision 49),
/// and a future's `wait()` needs no thread of the cooperative pool.
public final class PostgresStore: Store, StoreWriter {
    public let location: PostgresLocation
    let client: PostgresClient
    let logger: Logger
    private let writerState = Mutex(WriterState())

    /// The commit loop's connection, and whether the store was closed (no connection opens after).
    private struct WriterState: ~Copyable {
        var connection: PostgresConnection?
        var closed = false
        /// The number of this daemon's last commit, as its receipt records it (`CommitReceipts`).
        var commitNumber: Int64 = 0
        /// The last commit that failed, and its number: the commit loop retries the same changes,
        /// and the retry keeps the number, so its receipt tells whether the failed attempt was written.
        var failedCommit: (number: Int64, changes: ChangeSet)?
    }

    /// The number for a commit of `changes`: the failed attempt's when they are its retry, else the next.
    func commitNumber(for changes: ChangeSet) -> Int64 {
        writerState.withLock { state in
            if let failed = state.failedCommit, failed.changes == changes { return failed.number }
            state.failedCommit = nil
            state.commitNumber += 1
            return state.commitNumber
        }
    }

    /// Records how commit `number` ended: forgotten once written (or found written), kept after a failure.
    func commitEnded(_ number: Int64, changes: ChangeSet, written: Bool) {
        writerState.withLock { $0.failedCommit = written ? nil : (number, changes) }
    }

    /// Tests only: the next COMMIT is written, and its answer then reported lost, as a connection
    /// that breaks between the server's commit and its reply would.
    let losesNextCommitAnswer = Atomic(false)
    /// Tests only: the same for the next claim of pending tasks.
    let losesNextClaimAnswer = Atomic(false)

    /// Claims whose answer was lost: their tokens, and when (this process's clock) each was lost.
    let lostClaims = Mutex<[(token: Int64, since: ContinuousClock.Instant)]>([])
    private let eventLoop: any EventLoop

    /// Advisory lock a transaction takes before it inserts events and holds to its commit:
    /// sequence order is then commit order, across daemons, so a reader that has seen sequence
    /// N will never find an event below N committed later.
    static let eventsLockKey: Int64 = 0x66_61_6E_65_76_74

    /// The channel a commit with events notifies, for every daemon's event feed.
    static let eventsChannel = "fanout_events"

    public var writer: any StoreWriter { self }

    /// A store for `location`; `run()` must run (the pool) before it is used.
    /// The longest a statement of the commit loop may run before the server cancels it: the loop
    /// blocks on each, so a stuck server or a lock held elsewhere must not hold it (and shutdown) for ever.
    /// The commit fails, is retried, and the store's failure is reported meanwhile.
    public let writerStatementTimeoutMs: Int

    public static let defaultWriterStatementTimeoutMs = 30_000

    /// This daemon's name in `claimed_by` and the `daemons` table: host, pid and a random part,
    /// so a restarted daemon (same host, maybe the same pid) is a new claimant.
    public let daemonID: String

    /// How long a claim holds without renewal. The daemon renews every third of it; once it
    /// passes, another daemon takes the task back (a dead daemon's tasks wait this long).
    public let leaseMs: Int

    public static let defaultLeaseMs = 30_000

    /// Connections the pool (every call but the commit loop's) opens at most; the commit loop has
    /// one more of its own.
    public let poolSize: Int

    public static let defaultPoolSize = 20

    public init(location: PostgresLocation, writerStatementTimeoutMs: Int = defaultWriterStatementTimeoutMs,
                leaseMs: Int = defaultLeaseMs, poolSize: Int = defaultPoolSize, logger: Logger = Logger(label: "fanout.store.postgres")) {
        self.location = location
        self.writerStatementTimeoutMs = writerStatementTimeoutMs
        self.leaseMs = leaseMs
        self.poolSize = poolSize
        daemonID = "\(Self.hostName)/\(getpid())/\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
        self.logger = logger
        client = PostgresClient(configuration: location.clientConfiguration(poolSize: poolSize), backgroundLogger: logger)
        eventLoop = MultiThreadedEventLoopGroup.singleton.any()
    }

    /// Runs the connection pool until the calling task is cancelled.
    public func run() async {
        await client.run()
    }

    /// Runs `body` with the pool running and the database claimed and migrated; afterwards
    /// (also when `body` throws) closes the writer, then stops the pool. For a daemon's life
    /// and a test's.
    public func withRunning<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await self.run() }
            let outcome: Result<T, any Error>
            do {
                // First: a database this daemon cannot use stops it before anything else.
                try await Self.onOwnThread { try self.openWriter() }
                try await migrate()
                try await renewLeases()
                outcome = await withTaskGroup(of: Void.self) { leases in
                    leases.addTask { await self.keepLeases() }
                    // The renewals end (and the row locks a renewal holds) before the claims are given back.
                    defer { leases.cancelAll() }
                    do {
                        return .success(try await body())
                    } catch {
                        return .failure(error)
                    }
                }
            } catch {
                outcome = .failure(error)
            }
            try? await Self.onOwnThread { self.close() }
            group.cancelAll()
            return try outcome.get()
        }
    }

    /// Runs the writer's blocking `work` on a thread of its own. On the cooperative pool (two threads
    /// on a small machine) it could wait for a row lock held by a transaction of this pool whose
    /// next step needs one of those threads, until the statement timeout.
    static func onOwnThread<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread { continuation.resume(with: Result { try work() }) }.start()
        }
    }

    /// Applies the schema's migrations, on a connection of their own (the pool may not run yet).
    public func migrate() async throws {
        let connection: PostgresConnection
        do {
            connection = try await PostgresConnection.connect(configuration: try connectionConfiguration(), id: 1, logger: logger)
        } catch {
            throw Self.storeError(error)
        }
        let applied: [Int]
        do {
            applied = try await PostgresMigrations.migrate(connection, logger: logger)
        } catch {
            try? await connection.close()
            throw Self.storeError(error)
        }
        try? await connection.close()
        if !applied.isEmpty { logger.info("migrated the PostgreSQL schema", metadata: ["versions": "\(applied)"]) }
    }

    /// Opens the commit loop's connection: a database that cannot be reached, or refuses this
    /// user, stops the daemon at start rather than at its first commit. Other daemons may use
    /// the same database (decision 51).
    public func openWriter() throws {
        _ = try writerConnectionOpened()
    }

    /// Lease passes between two looks for daemons long silent (`forgetSilentDaemons`).
    static let passesPerCleanup = 10

    /// Renews this daemon's leases and reclaims expired ones, every third of a lease, until
    /// the calling task is cancelled. A failed pass is logged and tried again at the next.
    func keepLeases() async {
        let interval = Duration.milliseconds(max(1, leaseMs / 3))
        var renewed = ContinuousClock.now
        var passes = 0
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: interval)
                try await renewLeases()
                let silence = ContinuousClock.now - renewed
                renewed = .now
                if silence > .milliseconds(leaseMs) {
                    // Others may have taken its tasks meanwhile: its late changes to them are refused.
                    logger.warning("this daemon's lease lapsed: no heartbeat for longer than postgres_lease_ms", metadata: [
                        "silent_ms": "\(silence.components.seconds * 1000 + silence.components.attoseconds / 1_000_000_000_000_000)",
                        "lease_ms": "\(leaseMs)"])
                }
                let reclaimed = try await reclaimExpiredLeases(now: WallClock.now)
                if reclaimed != ReclaimedTasks() {
                    logger.warning("reclaimed tasks whose lease had expired", metadata: [
                        "released": "\(reclaimed.released)", "requeued": "\(reclaimed.requeued)",
                        "failed": "\(reclaimed.failures.count)", "batches": "\(reclaimed.batches)"])
                }
                passes += 1
                if passes % Self.passesPerCleanup == 0 {
                    // Its failure is no reason to skip the next renewal: logged, and tried again ten passes on.
                    do {
                        try await forgetSilentDaemons()
                    } catch is CancellationError {
                        return
                    } catch {
                        logger.warning("forgetting long-silent daemons failed", metadata: ["error": "\(error)"])
                    }
                }
            } catch is CancellationError {
                return
            } catch {
                logger.error("renewing or reclaiming leases failed", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Gives back this daemon's pending claims and forgets it, then closes the commit loop's
    /// connection (the pool ends with `run()`).
    public func close() {
        if let connection = writerState.withLock({ $0.closed ? nil : $0.connection }) {
            let transaction = WriterTransaction(connection: connection, logger: logger)
            _ = try? transaction.query(ClaimStatements.releasePending(daemon: daemonID, ids: nil))
            _ = try? transaction.query(ClaimStatements.forgetDaemon(daemonID))
            _ = try? transaction.query(CommitReceipts.forgetOrphans)
        }
        let connection = writerState.withLock { state in
            state.closed = true
            defer { state.connection = nil }
            return state.connection
        }
        try? (connection?.close() as EventLoopFuture<Void>?)?.wait()
    }

    // MARK: The writer's connection

    /// Runs `body` in a transaction on the writer's connection, blocking the calling thread.
    /// A connection that failed is replaced at the next call.
    func writeTransaction<T>(_ body: (WriterTransaction) throws -> T) throws -> T {
        let connection = try writerConnectionOpened()
        let transaction = WriterTransaction(connection: connection, logger: logger)
        do {
            try transaction.execute("BEGIN")
            let value = try body(transaction)
            try transaction.execute("COMMIT")
            if losesNextCommitAnswer.exchange(false, ordering: .relaxed) {
                throw FanoutError.unavailable("the answer to COMMIT was lost (a test's doing)")
            }
            return value
        } catch {
            if (try? transaction.execute("ROLLBACK")) == nil {
                // The connection is broken (or mid-protocol): open a new one next time.
                writerState.withLock { if $0.connection === connection { $0.connection = nil } }
                // Waited for: a connection must be closed before it goes away.
                try? (connection.close() as EventLoopFuture<Void>).wait()
            }
            throw Self.storeError(error)
        }
    }

    private func writerConnectionOpened() throws -> PostgresConnection {
        let (open, closed) = writerState.withLock { ($0.connection, $0.closed) }
        if closed { throw FanoutError.unavailable("the PostgreSQL store is closed") }
        if let open, !open.isClosed { return open }
        let connection: PostgresConnection
        do {
            connection = try PostgresConnection.connect(on: eventLoop, configuration: try connectionConfiguration(), id: 0,
                                                        logger: logger).wait()
        } catch {
            throw Self.storeError(error)
        }
        do {
            _ = try connection.query(PostgresQuery(unsafeSQL: "SET statement_timeout = \(max(0, writerStatementTimeoutMs))"),
                                     logger: logger).wait()
        } catch {
            try? (connection.close() as EventLoopFuture<Void>).wait()
            throw Self.storeError(error)
        }
        let kept = writerState.withLock { state -> Bool in
            guard !state.closed, state.connection == nil || state.connection!.isClosed else { return false }
            state.connection = connection
            return true
        }
        guard kept else {
            // Closed meanwhile, or another thread opened one first: this one goes, closed.
            try? (connection.close() as EventLoopFuture<Void>).wait()
            return try writerConnectionOpened()
        }
        return connection
    }

    /// A single connection's configuration (the pool has its own, from the same location).
    private func connectionConfiguration() throws -> PostgresConnection.Configuration {
        switch location.endpoint {
        case let .tcp(host, port):
            PostgresConnection.Configuration(
                host: host, port: port, username: location.user, password: location.password, database: location.database,
                tls: try location.tlsConfiguration().map { .require(try NIOSSLContext(configuration: $0)) } ?? .disable)
        case let .unixSocket(path):
            PostgresConnection.Configuration(
                unixSocketPath: path, username: location.user, password: location.password, database: location.database)
        }
    }

    /// The server's errors in words a user can act on (PostgresNIO's own description hides
    /// them): UNAVAILABLE when they are about reaching or using the server (the commit loop
    /// retries those), FAILED_PRECONDITION for the rest (a wrong password, a missing database,
    /// a constraint), with the server's message and SQLSTATE.
    static func storeError(_ error: any Error) -> any Error {
        guard let error = error as? PSQLError else { return error }
        let sqlState = error.serverInfo?[.sqlState]
        let said = error.serverInfo?[.message].map { "\($0) (SQLSTATE \(sqlState ?? "?"))" } ?? "\(error.code)"
        switch error.code {
        case .serverClosedConnection, .connectionError, .clientClosedConnection, .failedToAddSSLHandler, .unexpectedBackendMessage,
             .uncleanShutdown:
            let cause = error.underlying.map { ": \($0)" } ?? ""
            return FanoutError.unavailable("the PostgreSQL store cannot be reached: \(error.code)\(cause)")
        default:
            // Insufficient resources, operator intervention, connection exceptions: passing conditions.
            if let sqlState, ["53", "57", "08"].contains(where: sqlState.hasPrefix) {
                return FanoutError.unavailable("the PostgreSQL store refuses the work: \(said)")
            }
            return FanoutError.failedPrecondition("the PostgreSQL store refused: \(said)")
        }
    }
}

/// One transaction on the writer's connection; every statement blocks until answered.
struct WriterTransaction {
    let connection: PostgresConnection
    let logger: Logger

    @discardableResult
    func query(_ query: PostgresQuery) throws -> PostgresQueryResult {
        try connection.query(query, logger: logger).wait()
    }

    func execute(_ sql: String) throws {
        _ = try connection.query(PostgresQuery(unsafeSQL: sql), logger: logger).wait()
    }
}
