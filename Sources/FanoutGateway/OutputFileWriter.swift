import FanoutCore
import FanoutScheduler
import FanoutStore
import Foundation
import Hummingbird
import NIOCore
import OpenAIBatchFormat

/// Streams a finished batch's output file (completed requests) or error
/// file (failed, expired and cancelled ones, and rejected lines) in
/// OpenAI's output line shape, page by page from the store.
struct OutputFileWriter {
    let store: any GatewayStore
    let file: OutputFile
    /// Rejected lines read at a time.
    static let pageSize = 32
    /// Results read at a time: many small ones, or as many large ones as fit in `pageBytes` (at least one).
    static let resultsPageSize = 1_000
    static let pageBytes = 1 << 20

    func body() -> ResponseBody {
        let store = self.store
        let file = self.file
        return ResponseBody { writer in
            if file.kind == .errors {
                var afterLine = 0
                while true {
                    let rejected = try await store.rejectedLines(batchID: file.batchID, afterLine: afterLine, limit: Self.pageSize)
                    guard let last = rejected.last else { break }
                    afterLine = last.line
                    var buffer = ByteBuffer()
                    for line in rejected {
                        buffer.writeBytes(OpenAIOutputLine(id: "batch_req_line\(line.line)", customID: line.customID, response: nil,
                                                           error: (line.code, line.message)).encoded())
                        buffer.writeString("\n")
                    }
                    try await writer.write(buffer)
                }
            }
            var after: TaskID = 0
            while true {
                let records = try await store.results(batchID: file.batchID, afterTaskID: after, limit: Self.resultsPageSize,
                                                      maxBytes: Self.pageBytes)
                guard let last = records.last else { break }
                after = last.id
                var buffer = ByteBuffer()
                for record in records where (record.state == .completed) == (file.kind == .output) {
                    buffer.writeBytes(Self.line(record).encoded())
                    buffer.writeString("\n")
                }
                if buffer.readableBytes > 0 { try await writer.write(buffer) }
            }
            try await writer.finish(nil)
        }
    }

    static func line(_ record: TaskRecord) -> OpenAIOutputLine {
        let answered = record.state == .completed || record.details.statusCode != nil
        let response = answered ? OpenAIOutputLine.Response(statusCode: record.details.statusCode ?? 200, requestID: record.details.requestID,
                                                            body: record.result ?? []) : nil
        var error: (code: String, message: String)?
        if record.state != .completed {
            error = (record.failure?.code.isEmpty == false ? record.failure!.code : record.state.rawValue,
                     record.failure?.message ?? "the request was \(record.state.rawValue)")
        }
        return OpenAIOutputLine(id: "batch_req_\(record.id)", customID: record.customID, response: response, error: error)
    }
}

/// Streams an uploaded file's stored chunks.
struct StoredFileWriter {
    let store: any GatewayStore
    let fileID: String

    func body() -> ResponseBody {
        let store = self.store
        let fileID = self.fileID
        return ResponseBody { writer in
            var index = 0
            while let chunk = try await store.fileChunk(fileID: fileID, index: index) {
                try await writer.write(ByteBuffer(bytes: chunk))
                index += 1
            }
            try await writer.finish(nil)
        }
    }
}
