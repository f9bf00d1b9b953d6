import FanoutCore
import PostgresNIO

/// A COMMIT whose answer never came (the connection broke on the way back): the transaction
/// may or may not have been written.
struct CommitAnswerLost: Error, CustomStringConvertible {
    var error: any Error

    var description: String { "no answer to COMMIT, which may have been written: \(error)" }
}

/// Each daemon's commits carry a number, written in the same transaction as their changes, so
/// that a commit whose answer was lost can be told apart from one that failed: the commit loop
/// retries the same changes, and written twice they would publish their events twice.
enum CommitReceipts {
    /// Records commit `number` of `daemon`, inside that commit's transaction.
    static func record(_ number: Int64, daemon: String) -> PostgresQuery {
        """
        INSERT INTO commit_receipts (daemon, last_commit) VALUES (\(daemon), \(number))
        ON CONFLICT (daemon) DO UPDATE SET last_commit = excluded.last_commit
        """
    }

    /// The number of `daemon`'s last written commit (no row: none).
    static func last(daemon: String) -> PostgresQuery {
        "SELECT last_commit FROM commit_receipts WHERE daemon = \(daemon)"
    }

    /// Receipts of daemons no longer listed (stopped, or forgotten after a long silence).
    static let forgetOrphans = PostgresQuery(unsafeSQL: "DELETE FROM commit_receipts WHERE daemon NOT IN (SELECT id FROM daemons)")
}
