import CSQLite
import Foundation
import Synchronization

/// Copies the write-ahead log back into the database file from a connection
/// and a thread of its own, every `interval`.
///
/// SQLite's automatic checkpoint runs inside the commit that crosses its
/// threshold: that commit, and every change queued behind it, waits for the
/// copy and its fsync, milliseconds at a time. A passive checkpoint on another
/// connection runs beside the writer instead, never blocking it.
///
/// The log starts over only when a checkpoint has copied all of it as the
/// writer begins, which a steady stream of commits rarely allows: past
/// `restartAboveBytes` the checkpointer asks for a restart, which holds the
/// writer back only for the last few pages (the passive rounds copied the
/// rest) and lets the log start over, trimmed to `journal_size_limit`.
final class WALCheckpointer: Sendable {
    private struct State {
        var stopped = false
    }

    private let condition = NSCondition()
    private let state = Mutex(State())

    /// Opens the connection and starts the thread; nil if the file cannot be opened
    /// (the writer's automatic checkpoint is then left on by the caller).
    init?(path: String, synchronous: String, interval: Duration, restartAboveBytes: Int) {
        var handle: OpaquePointer?
        guard sqlite3_open_v2(path, &handle, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nil) == SQLITE_OK, let connection = handle else {
            sqlite3_close(handle)
            return nil
        }
        sqlite3_busy_timeout(connection, 1_000)
        sqlite3_exec(connection, "PRAGMA synchronous = \(synchronous)", nil, nil, nil)
        let seconds = Double(interval.components.seconds) + Double(interval.components.attoseconds) / 1e18
        let database = Connection(handle: connection)
        let restartAbovePages = Int32(clamping: max(1, restartAboveBytes / 4_096))
        let thread = Thread { [self] in
            run(database, every: seconds, restartAbovePages: restartAbovePages)
        }
        thread.name = "fanout.checkpoint"
        thread.start()
    }

    /// Ends the thread after its current checkpoint; the connection closes with it.
    func stop() {
        condition.lock()
        state.withLock { $0.stopped = true }
        condition.signal()
        condition.unlock()
    }

    private func run(_ database: Connection, every seconds: Double, restartAbovePages: Int32) {
        var logPages: Int32 = 0
        while sleep(seconds) {
            // PASSIVE copies what no reader still needs without waiting for anyone; RESTART
            // (when the log has grown) waits for the writer's current transaction, then
            // makes the next one start the log over.
            let mode = logPages > restartAbovePages ? SQLITE_CHECKPOINT_RESTART : SQLITE_CHECKPOINT_PASSIVE
            var copied: Int32 = 0
            if sqlite3_wal_checkpoint_v2(database.handle, nil, mode, &logPages, &copied) != SQLITE_OK {
                logPages = 0  // busy or failing: passive again next round
            }
        }
        sqlite3_close(database.handle)
    }

    /// Waits `seconds`; false once stopped.
    private func sleep(_ seconds: Double) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(seconds)
        while !state.withLock({ $0.stopped }) {
            if !condition.wait(until: deadline) { return true }
        }
        return false
    }

    /// The checkpoint connection, used by the checkpoint thread alone.
    private struct Connection: @unchecked Sendable {
        let handle: OpaquePointer
    }
}
