import CSQLiteBaseline
import Foundation

/// The ceiling SQLite itself puts on a batch of size N, measured in the same
/// run as fanoutd so both see the same machine, disk and load: the same rows
/// inserted and then updated bare through SQLite's C API, with fanoutd's schema
/// and pragmas. Fanout's figures are reported as ratios to these.
struct SQLiteBaselineResult: Codable, Sendable {
    var tasks: Int
    /// ok or error
    var status: String
    var error: String?
    /// One transaction: the batches row and N task rows, one prepared statement.
    var bareInsertSeconds: Double?
    var bareInsertRowsPerSecond: Double?
    /// N rows set completed with a result, as fanoutd's group commit does for a finished task.
    var bareUpdateSeconds: Double?
    var bareUpdateRowsPerSecond: Double?
    /// Rows per update transaction: fanoutd's upper bound on the changes one group commit carries.
    var updateRowsPerTransaction: Int
    var updateTransactions: Int?
}

enum SQLiteBaseline {
    /// AgentConfiguration.maxChangesPerCommit's default. Real group commits are
    /// usually smaller, so this is the most favourable size fanoutd could see.
    static let rowsPerTransaction = 20_000

    /// Starts fanoutd once so its migrations build the schema, copies that schema
    /// (VACUUM INTO, while the daemon runs) into a database of its own, stops the
    /// daemon, then times the insert and the update in C.
    static func run(size: Int, settings: BenchSettings) async -> SQLiteBaselineResult {
        var result = SQLiteBaselineResult(tasks: size, status: "error", updateRowsPerTransaction: rowsPerTransaction)
        let directory: String
        do {
            directory = try Daemon.makeTemporaryDirectory()
        } catch {
            result.error = "\(error)"
            return result
        }
        defer { removeTree(directory) }
        let daemon: Daemon
        do {
            // The agents list is irrelevant here; without it the daemon starts even if it would refuse the config.
            daemon = try await Daemon.start(executable: settings.fanoutd, concurrency: settings.concurrency,
                                            maxTasksPerBatch: max(size, 1_000_000), agentsConfig: false)
        } catch {
            result.error = "\(error)"
            return result
        }
        let databasePath = directory + "/baseline.db"
        var measured = fanout_sqlite_baseline()
        let status = fanout_sqlite_baseline_run(daemon.databasePath, databasePath, Int32(size),
                                                Int32(settings.payloadBytes), Int32(rowsPerTransaction), &measured)
        await daemon.stop()
        guard status == 0 else {
            result.error = withUnsafeBytes(of: &measured.error) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            return result
        }
        result.status = "ok"
        result.bareInsertSeconds = measured.insert_seconds
        result.bareInsertRowsPerSecond = Double(size) / measured.insert_seconds
        result.bareUpdateSeconds = measured.update_seconds
        result.bareUpdateRowsPerSecond = Double(size) / measured.update_seconds
        result.updateTransactions = Int(measured.update_transactions)
        return result
    }
}
