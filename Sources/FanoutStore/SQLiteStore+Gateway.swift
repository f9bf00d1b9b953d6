import FanoutCore
import Foundation
import GRDB

extension SQLiteStore: GatewayStore {
    public func createFile(_ file: StoredFile) async throws {
        try await write { db in
            try db.execute(sql: """
                INSERT INTO files (id, owner_uid, purpose, filename, state, created_at) VALUES (?, ?, ?, ?, 'uploading', ?)
                """, arguments: [file.id, Int64(file.ownerUID), file.purpose, file.filename, file.createdAt])
        }
    }

    public func appendFileChunk(fileID: String, index: Int, bytes: [UInt8]) async throws {
        try await write { db in
            try db.execute(sql: "INSERT INTO file_chunks (file_id, seq, data) VALUES (?, ?, ?)", arguments: [fileID, index, Data(bytes)])
        }
    }

    public func completeFile(id: String, filename: String, bytes: Int, lines: Int) async throws {
        try await write { db in
            try db.execute(sql: "UPDATE files SET state = 'processed', filename = ?, bytes = ?, lines = ? WHERE id = ?",
                           arguments: [filename, bytes, lines, id])
        }
    }

    @discardableResult
    public func deleteFile(id: String) async throws -> Bool {
        try await write { db in
            try db.execute(sql: "DELETE FROM file_chunks WHERE file_id = ?", arguments: [id])
            try db.execute(sql: "DELETE FROM files WHERE id = ?", arguments: [id])
            return db.changesCount > 0
        }
    }

    public func file(id: String) async throws -> StoredFile? {
        try await read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM files WHERE id = ? AND state = 'processed'", arguments: [id]).map(Self.storedFile)
        }
    }

    public func files(ownerUID: UInt32?, purpose: String?, limit: Int, afterID: String?) async throws -> [StoredFile] {
        try await read { db in
            var clauses = ["state = 'processed'"]
            var arguments: StatementArguments = []
            if let ownerUID {
                clauses.append("owner_uid = ?")
                arguments += [Int64(ownerUID)]
            }
            if let purpose {
                clauses.append("purpose = ?")
                arguments += [purpose]
            }
            if let afterID {
                // An unknown cursor ends the listing rather than starting it again (a client paging would loop).
                guard let cursor = try Int64.fetchOne(db, sql: "SELECT rowid FROM files WHERE id = ?", arguments: [afterID]) else { return [] }
                clauses.append("rowid < ?")
                arguments += [cursor]
            }
            arguments += [limit]
            return try Row.fetchAll(db, sql: """
                SELECT * FROM files WHERE \(clauses.joined(separator: " AND ")) ORDER BY rowid DESC LIMIT ?
                """, arguments: arguments).map(Self.storedFile)
        }
    }

    public func fileChunk(fileID: String, index: Int) async throws -> [UInt8]? {
        try await read { db in
            try Data.fetchOne(db, sql: "SELECT data FROM file_chunks WHERE file_id = ? AND seq = ?", arguments: [fileID, index]).map { [UInt8]($0) }
        }
    }

    public func insertGatewayBatch(_ batch: GatewayBatch) async throws {
        try await write { db in
            try db.execute(sql: """
                INSERT INTO gateway_batches (batch_id, input_file_id, endpoint, completion_window) VALUES (?, ?, ?, ?)
                """, arguments: [batch.batchID, batch.inputFileID, batch.endpoint, batch.completionWindow])
        }
    }

    public func gatewayBatch(_ id: BatchID) async throws -> GatewayBatch? {
        try await read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM gateway_batches WHERE batch_id = ?", arguments: [id]).map(Self.gatewayBatch)
        }
    }

    public func gatewayBatches(creatorUID: UInt32?, limit: Int, beforeID: BatchID?) async throws -> [GatewayBatch] {
        try await read { db in
            var clauses = ["b.state != 'staging'"]
            var arguments: StatementArguments = []
            if let creatorUID {
                clauses.append("b.creator_uid = ?")
                arguments += [Int64(creatorUID)]
            }
            if let beforeID {
                clauses.append("g.batch_id < ?")
                arguments += [beforeID]
            }
            arguments += [limit]
            let filter = "WHERE " + clauses.joined(separator: " AND ")
            return try Row.fetchAll(db, sql: """
                SELECT g.* FROM gateway_batches g JOIN batches b ON b.id = g.batch_id \(filter) ORDER BY g.batch_id DESC LIMIT ?
                """, arguments: arguments).map(Self.gatewayBatch)
        }
    }

    public func markGatewayCancelRequested(_ id: BatchID, at: Milliseconds) async throws {
        try await write { db in
            try db.execute(sql: """
                UPDATE gateway_batches SET cancel_requested_at = coalesce(cancel_requested_at, ?) WHERE batch_id = ?
                """, arguments: [at, id])
        }
    }

    public func addRejectedLines(_ lines: [RejectedLine], batchID: BatchID) async throws {
        guard !lines.isEmpty else { return }
        try await write { db in
            let insert = try db.cachedStatement(sql: """
                INSERT INTO gateway_rejects (batch_id, line, custom_id, code, message) VALUES (?, ?, ?, ?, ?)
                """)
            for line in lines {
                try insert.execute(arguments: [batchID, line.line, line.customID, line.code, line.message])
            }
        }
    }

    public func rejectedLines(batchID: BatchID, afterLine: Int, limit: Int) async throws -> [RejectedLine] {
        try await read { db in
            try Row.fetchAll(db, sql: """
                SELECT line, custom_id, code, message FROM gateway_rejects WHERE batch_id = ? AND line > ? ORDER BY line LIMIT ?
                """, arguments: [batchID, afterLine, limit]).map {
                RejectedLine(line: $0[0], customID: $0[1], code: $0[2], message: $0[3])
            }
        }
    }

    public func rejectedLineCount(batchID: BatchID) async throws -> Int {
        try await read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM gateway_rejects WHERE batch_id = ?", arguments: [batchID]) ?? 0
        }
    }

    private static func storedFile(_ row: Row) -> StoredFile {
        let owner: Int64 = row["owner_uid"]
        return StoredFile(id: row["id"], ownerUID: UInt32(truncatingIfNeeded: owner), purpose: row["purpose"], filename: row["filename"],
                          bytes: row["bytes"], lines: row["lines"], createdAt: row["created_at"])
    }

    private static func gatewayBatch(_ row: Row) -> GatewayBatch {
        GatewayBatch(batchID: row["batch_id"], inputFileID: row["input_file_id"], endpoint: row["endpoint"],
                     completionWindow: row["completion_window"], cancelRequestedAt: row["cancel_requested_at"])
    }
}
