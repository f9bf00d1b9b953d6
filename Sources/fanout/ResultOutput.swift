import FanoutWire
import Foundation

/// One result as a line of the OpenAI Batch output format:
/// `{"id", "custom_id", "response": {"status_code", "body"}, "error": {"code", "message"}}`.
enum ResultOutput {
    static func line(_ result: TaskResult) -> Data {
        var object: [String: Any] = ["id": "task_\(result.taskID)", "custom_id": result.customID]
        if result.status == .completed {
            object["response"] = ["status_code": 200, "body": jsonValue(result.result)]
            object["error"] = NSNull()
        } else {
            object["response"] = NSNull()
            let code = result.error?.code.isEmpty == false ? result.error!.code : statusWord(result.status)
            object["error"] = ["code": code, "message": result.error?.message ?? statusWord(result.status)]
        }
        return JSON.encode(object)
    }

    /// A result that is JSON is embedded as JSON, anything else as a string.
    static func jsonValue(_ bytes: [UInt8]) -> Any {
        if let value = try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed]) { return value }
        return String(decoding: bytes, as: UTF8.self)
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
        (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
    }

    static func line(_ object: Any) -> String {
        String(decoding: encode(object), as: UTF8.self)
    }
}
