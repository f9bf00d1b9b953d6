import CSQLite
import FanoutCore
import GRDB

/// A cached GRDB statement bound and stepped through SQLite's C API.
///
/// GRDB's `execute(arguments:)` boxes every value in a `DatabaseValue` array and
/// converts payloads to `Data` first; on the enqueue and commit paths, which run
/// once per task, that costs about as much as SQLite's own work. This binds each
/// value directly (text and blobs copied once, by SQLite) and keeps GRDB for the
/// connection, the transaction and the statement cache.
struct BoundStatement {
    private let statement: Statement
    private let handle: OpaquePointer

    init(_ statement: Statement) {
        self.statement = statement
        handle = statement.sqliteStatement
    }

    // SQLITE_TRANSIENT: SQLite copies the bytes before the call returns.
    private static let transient = unsafeBitCast(OpaquePointer(bitPattern: -1), to: sqlite3_destructor_type.self)

    func bind(_ value: Int64?, at index: Int32) {
        if let value { sqlite3_bind_int64(handle, index, value) } else { sqlite3_bind_null(handle, index) }
    }

    func bind(_ value: Int?, at index: Int32) {
        bind(value.map(Int64.init), at: index)
    }

    func bind(_ value: Int32, at index: Int32) {
        sqlite3_bind_int64(handle, index, Int64(value))
    }

    func bind(_ value: Bool?, at index: Int32) {
        bind(value.map { $0 ? 1 : 0 } as Int64?, at: index)
    }

    func bind(_ value: Double?, at index: Int32) {
        if let value { sqlite3_bind_double(handle, index, value) } else { sqlite3_bind_null(handle, index) }
    }

    func bind(_ value: String?, at index: Int32) {
        guard var value else {
            sqlite3_bind_null(handle, index)
            return
        }
        value.withUTF8 { text in
            text.withMemoryRebound(to: CChar.self) { text in
                if let base = text.baseAddress {
                    _ = sqlite3_bind_text(handle, index, base, Int32(text.count), Self.transient)
                } else {
                    _ = sqlite3_bind_text(handle, index, "", 0, nil)  // "" is text, not NULL; a literal needs no copy
                }
            }
        }
    }

    func bind(_ value: [UInt8]?, at index: Int32) {
        guard let value else {
            sqlite3_bind_null(handle, index)
            return
        }
        value.withUnsafeBytes { bytes in
            if let base = bytes.baseAddress {
                _ = sqlite3_bind_blob(handle, index, base, Int32(bytes.count), Self.transient)
            } else {
                _ = sqlite3_bind_zeroblob(handle, index, 0)  // an empty payload is an empty blob, not NULL
            }
        }
    }

    /// A failure's message, code and retryable flag, in three columns from `index`.
    func bind(_ failure: TaskFailure?, at index: Int32) {
        bind(failure?.message, at: index)
        bind(failure?.code, at: index + 1)
        bind(failure?.retryable, at: index + 2)
    }

    /// A provider's status code, request id and token usage, in five columns from `index`.
    func bind(_ details: ResponseDetails, at index: Int32) {
        bind(details.statusCode, at: index)
        bind(details.requestID, at: index + 1)
        bind(details.usage?.promptTokens, at: index + 2)
        bind(details.usage?.completionTokens, at: index + 3)
        bind(details.usage?.totalTokens, at: index + 4)
    }

    /// Runs the statement once and resets it; SQLite's error becomes a GRDB `DatabaseError`,
    /// so callers map it as they map any other.
    func execute() throws {
        let code = sqlite3_step(handle)
        sqlite3_reset(handle)
        guard code == SQLITE_DONE || code == SQLITE_ROW else {
            throw DatabaseError(resultCode: ResultCode(rawValue: code),
                                message: String(cString: sqlite3_errmsg(sqlite3_db_handle(handle))),
                                // Read only here: GRDB trims the statement's text each time it is asked.
                                sql: statement.sql)
        }
    }
}
