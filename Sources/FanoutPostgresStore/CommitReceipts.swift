import FanoutCore
import PostgresNIO

/// Each daemon's commits carry a number, written in the same transaction as their changes. The
/// commit loop retries a failed commit with the same changes, and the retry keeps the number: when
/// only the answer to the first attempt's COMMIT was lost (the connection broke after the server
/// committed), the receipt shows it written and the retry writes nothing, where it would otherwise
/// publish the same events twice.
enum CommitReceipts {
    /// Records commit `number` of `daemon`, inside that commit's transaction; returns a row only
    /// when no commit of that number (or a later one) was written. A first attempt still being
    /// committed holds the row: the record waits for it, then sees its outcome.
    static func record(_ number: Int64, daemon: String) -> PostgresQuery {
        """
        INSERT INTO commit_receipts AS r (daemon, last_commit) VALUES (\(daemon), \(number))
        ON CONFLICT (daemon) DO UPDATE SET last_commit = excluded.last_commit WHERE r.last_commit < excluded.last_commit
        RETURNING 1
        """
    }

    /// Receipts of daemons no longer listed (stopped, or forgotten after a long silence).
    static let forgetOrphans = PostgresQuery(unsafeSQL: "DELETE FROM commit_receipts WHERE daemon NOT IN (SELECT id FROM daemons)")
}

/// Thrown inside a commit's transaction whose number was written before: it rolls back.
struct CommitAlreadyWritten: Error {}
