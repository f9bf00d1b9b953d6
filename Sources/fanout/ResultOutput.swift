import FanoutWire
import Foundation

/// One result as a line of the OpenAI Batch output format:
/// `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": {"code", "message"}}`.
///
/// A task the provider answered (successfully or not) has a `response`
/// whose body is the provider's, byte for byte when it fits on one line; a
/// failed one has an `error` too. Tasks that got no answer (timed out,
/// cancelled, expired) have only the `error`.
enum ResultOutput {
    static func line(_ result: TaskResult) -> Data {
        var members: [(String, Data)] = [
            ("id", JSON.encode("batch_req_\(result.taskID)")),
            ("custom_id", JSON.encode(result.customID)),
        ]
        let answered = result.status == .completed || result.statusCode != 0
        if answered {
            let status = result.statusCode != 0 ? Int(result.statusCode) : 200
            members.append(("response", object([
                ("status_code", JSON.encode(status)),
                ("request_id", result.requestID.isEmpty ? Data("null".utf8) : JSON.encode(result.requestID)),
                ("body", embedded(result.result)),
            ])))
        } else {
            members.append(("response", Data("null".utf8)))
        }
        if result.status == .completed {
            members.append(("error", Data("null".utf8)))
        } else {
            let code = result.error?.code.isEmpty == false ? result.error!.code : statusWord(result.status)
            members.append(("error", JSON.encode(["code": code, "message": result.error?.message ?? statusWord(result.status)])))
        }
        return object(members)
    }

    /// `{"key":value,…}` from already encoded values, in this order.
    private static func object(_ members: [(String, Data)]) -> Data {
        var data = Data("{".utf8)
        for (index, member) in members.enumerated() {
            if index > 0 { data.append(UInt8(ascii: ",")) }
            data.append(JSON.encode(member.0))
            data.append(UInt8(ascii: ":"))
            data.append(member.1)
        }
        data.append(UInt8(ascii: "}"))
        return data
    }

    /// A result that is JSON is embedded as it is; anything else as a string.
    /// Valid JSON holds a raw CR or LF only between tokens (never inside a
    /// string), so turning them into spaces keeps one result per line and
    /// changes nothing else of a pretty-printed answer.
    static func embedded(_ bytes: [UInt8]) -> Data {
        guard (try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])) != nil else {
            return JSON.encode(String(decoding: bytes, as: UTF8.self))
        }
        return Data(bytes.map { $0 == 0x0A || $0 == 0x0D ? 0x20 : $0 })
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
