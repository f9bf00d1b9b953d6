import FanoutWire
import Foundation
import OpenAIBatchFormat

/// One result as a line of the OpenAI Batch output format (`OpenAIOutputLine`).
enum ResultOutput {
    static func line(_ result: TaskResult) -> Data {
        var line: [UInt8] = []
        append(result, to: &line)
        return Data(line)
    }

    /// Appends the result's line, without its newline.
    static func append(_ result: TaskResult, to out: inout [UInt8]) {
        let answered = result.status == .completed || result.statusCode != 0
        let response = answered ? OpenAIOutputLine.Response(
            statusCode: result.statusCode != 0 ? Int(result.statusCode) : 200,
            requestID: result.requestID.isEmpty ? nil : result.requestID, body: result.result) : nil
        var error: (code: String, message: String)?
        if result.status != .completed {
            let code = result.error?.code.isEmpty == false ? result.error!.code : statusWord(result.status)
            error = (code, result.error?.message ?? statusWord(result.status))
        }
        OpenAIOutputLine(id: "batch_req_\(result.taskID)", customID: result.customID, response: response, error: error).append(to: &out)
    }

    static func statusWord(_ status: TaskStatus) -> String {
        switch status {
        case .unspecified: "unspecified"
        case .pending: "pending"
        case .running: "running"
        case .waitingChildren: "waiting_children"
        case .retryWait: "retry_wait"
        case .completed: "completed"
        case .failed: "failed"
        case .cancelled: "cancelled"
        case .expired: "expired"
        }
    }
}

enum JSON {
    static func encode(_ object: Any) -> Data {
        (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes, .fragmentsAllowed]))
            ?? Data("{}".utf8)
    }

    static func line(_ object: Any) -> String {
        String(decoding: encode(object), as: UTF8.self)
    }
}
