import FanoutCore
import FanoutStore
import Foundation

/// A batch as OpenAI's API reference shapes it, from Fanout's record.
struct BatchObject {
    var batch: BatchRecord
    var gateway: GatewayBatch
    var rejected: Int

    static func openAIID(_ id: BatchID) -> String { "batch_\(id)" }

    static func batchID(_ openAIID: String) -> BatchID? {
        guard openAIID.hasPrefix("batch_") else { return nil }
        return BatchID(openAIID.dropFirst("batch_".count))
    }

    var status: String {
        switch batch.state {
        case .pending, .processing: gateway.cancelRequestedAt == nil ? "in_progress" : "cancelling"
        case .completed: "completed"
        case .cancelled: "cancelled"
        case .failed: batch.counters.expired > 0 ? "expired" : "failed"
        }
    }

    var isFinished: Bool { batch.state.isTerminal }

    var completedCount: Int { batch.counters.completed }
    var failedCount: Int { batch.counters.failed + batch.counters.expired + batch.counters.cancelled + rejected }

    var json: [String: Any] {
        func seconds(_ milliseconds: Milliseconds?) -> Any { milliseconds.map { $0 / 1000 } ?? NSNull() }
        let finished = batch.finishedAt
        let status = self.status
        var object: [String: Any] = [
            "id": Self.openAIID(batch.id), "object": "batch", "endpoint": gateway.endpoint, "errors": NSNull(),
            "input_file_id": gateway.inputFileID, "completion_window": gateway.completionWindow, "status": status,
            "output_file_id": NSNull(), "error_file_id": NSNull(),
            "created_at": batch.createdAt / 1000, "in_progress_at": seconds(batch.startedAt ?? batch.createdAt),
            "expires_at": seconds(batch.deadlineAt), "finalizing_at": seconds(status == "completed" ? finished : nil),
            "completed_at": seconds(status == "completed" ? finished : nil), "failed_at": seconds(status == "failed" ? finished : nil),
            "expired_at": seconds(status == "expired" ? finished : nil), "cancelling_at": seconds(gateway.cancelRequestedAt),
            "cancelled_at": seconds(status == "cancelled" ? finished : nil),
            "request_counts": ["total": batch.counters.total + rejected, "completed": completedCount, "failed": failedCount],
            "metadata": batch.metadata,
        ]
        if isFinished {
            if completedCount > 0 { object["output_file_id"] = OutputFile(batchID: batch.id, kind: .output).id }
            if failedCount > 0 { object["error_file_id"] = OutputFile(batchID: batch.id, kind: .errors).id }
        }
        return object
    }
}

/// The output and error files of a finished batch: not stored, but written
/// from its results whenever they are read.
struct OutputFile {
    enum Kind: String { case output, errors }

    var batchID: BatchID
    var kind: Kind

    var id: String { "file-batch\(batchID)-\(kind.rawValue)" }

    init(batchID: BatchID, kind: Kind) {
        self.batchID = batchID
        self.kind = kind
    }

    init?(id: String) {
        guard id.hasPrefix("file-batch") else { return nil }
        let rest = id.dropFirst("file-batch".count)
        let pieces = rest.split(separator: "-", omittingEmptySubsequences: false)
        guard pieces.count == 2, let batchID = BatchID(pieces[0]), batchID > 0, let kind = Kind(rawValue: String(pieces[1])) else { return nil }
        self.init(batchID: batchID, kind: kind)
    }

    func json(createdAt: Milliseconds) -> [String: Any] {
        ["id": id, "object": "file", "bytes": 0, "created_at": createdAt / 1000,
         "filename": "batch_\(batchID)_\(kind.rawValue).jsonl", "purpose": kind == .output ? "batch_output" : "batch_output",
         "status": "processed", "status_details": NSNull()]
    }
}

extension StoredFile {
    var json: [String: Any] {
        ["id": id, "object": "file", "bytes": bytes, "created_at": createdAt / 1000, "filename": filename, "purpose": purpose,
         "status": "processed", "status_details": NSNull()]
    }
}
