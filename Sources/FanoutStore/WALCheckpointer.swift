import CSQLite
import Foundation
import Synchronization

/// Copies the write-ahead log back into the database file from a connection
/// and a thread of its own, every `interval`.
///
/// SQLite's automatic checkpoint runs inside the commit that crosses its
/// threshold: that commit, and every change queued behind it, waits for the
/// copy and its fsync, milliseconds at a time. A passive checkpoint on another
/// connection runs beside the writer instead and never blocks it.
///
/// The log starts over only when a checkpoint has copied all of it as the
/// writer begins, which a steady stream of commits rarely allows: past
/// `restartAboveBytes` the checkpointer asks for a restart. That holds new
/// writes back while it copies the last pages (the passive rounds copied the
/// rest) and syncs the file, and while it waits, at most `restartWait`, for
/// readers of older pages; after a refusal it waits a while before asking
/// again. The writer keeps SQLite's own checkpoint as a backstop, at a
/// threshold the log reaches only if this thread falls far behind.
final class WALCheckpointer: Sendable {
    private let stopped = Atomic(false)
    /// Raised to end a sleep early (a stop), and once the thread has closed its connection.
    private let wakeup = ThreadWakeup()
    private let exited = ThreadWakeup()

    /// How long a restart may wait for readers (and so hold writers back).
    static let restartWait: Int32 = 20  // ms
    /// Passive rounds after a refused restart before the next attempt.
    static let roundsAfterRefusal = 10

    /// Opens the connection, checks that it can checkpoint, and starts the thread; nil if it
    /// cannot (the caller then leaves the writer's automatic checkpoint as it is).
    init?(path: String, synchronous: String, interval: Duration, restartAboveBytes: Int) {
        guard let connection = Self.open(path, synchronous: synchronous) else { return nil }
        let seconds = Double(interval.components.seconds) + Double(interval.components.attoseconds) / 1e18
        let restartAbovePages = Int32(clamping: max(1, restartAboveBytes / 4_096))
        let thread = Thread { [self] in
            run(connection, every: seconds, restartAbovePages: restartAbovePages)
        }
        thread.name = "fanout.checkpoint"
        thread.start()
    }

    /// A connection that has the log open: one that never read the database checkpoints
    /// nothing (and says so only by a log size of -1).
    private static func open(_ path: String, synchronous: String) -> Connection? {
        var handle: OpaquePointer?
        guard sqlite3_open_v2(path, &handle, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nil) == SQLITE_OK, let handle else {
            sqlite3_close(handle)
            return nil
        }
        sqlite3_busy_timeout(handle, restartWait)
        var logPages: Int32 = -1
        guard sqlite3_exec(handle, "PRAGMA synchronous = \(synchronous); SELECT count(*) FROM sqlite_schema", nil, nil, nil) == SQLITE_OK,
              sqlite3_wal_checkpoint_v2(handle, nil, SQLITE_CHECKPOINT_PASSIVE, &logPages, nil) == SQLITE_OK, logPages >= 0 else {
            sqlite3_close(handle)
            return nil
        }
        return Connection(handle: handle)
    }

    /// Ends the thread and waits until it has closed its connection; later calls return at once.
    func stop() {
        guard !stopped.exchange(true, ordering: .sequentiallyConsistent) else { return }
        wakeup.raise()
        exited.wait(until: nil)
    }

    private func run(_ database: Connection, every seconds: Double, restartAbovePages: Int32) {
        var logPages: Int32 = 0
        var passiveRoundsLeft = 0
        while sleep(seconds) {
            // PASSIVE copies what no reader still needs without waiting for anyone; RESTART
            // (once the log has grown) also makes the next write start the log over.
            let restart = logPages > restartAbovePages && passiveRoundsLeft == 0
            passiveRoundsLeft = max(0, passiveRoundsLeft - 1)
            let mode = restart ? SQLITE_CHECKPOINT_RESTART : SQLITE_CHECKPOINT_PASSIVE
            if sqlite3_wal_checkpoint_v2(database.handle, nil, mode, &logPages, nil) != SQLITE_OK && restart {
                passiveRoundsLeft = Self.roundsAfterRefusal  // readers held on: let them finish
            }
        }
        sqlite3_close(database.handle)
        exited.raise()
    }

    /// Waits `seconds`; false once stopped.
    private func sleep(_ seconds: Double) -> Bool {
        if stopped.load(ordering: .sequentiallyConsistent) { return false }
        wakeup.wait(until: Date().addingTimeInterval(seconds))
        return !stopped.load(ordering: .sequentiallyConsistent)
    }

    /// The checkpoint connection, used by the checkpoint thread alone.
    private struct Connection: @unchecked Sendable {
        let handle: OpaquePointer
    }
}
