import FanoutWire
import Foundation
import OpenAIBatchFormat

/// Reads a JSONL batch file. Each line is either an OpenAI Batch request
/// (`custom_id`, `method`, `url`, `body`: the body becomes the payload, byte
/// for byte, and the url goes with the task) or a plain
/// `{"custom_id", "payload"}` line (a string payload is used as is, any
/// other JSON value is sent as JSON).
///
/// Every problem is collected with its line number, so a user fixes the file
/// in one pass; nothing is submitted while any remains.
struct BatchInput {
    struct Problem: CustomStringConvertible {
        var line: Int
        var message: String
        var description: String { "line \(line): \(message)" }
    }

    var tasks: [TaskSpec] = []
    var problems: [Problem] = []

    init(contentsOf data: Data) {
        var seen: [String: Int] = [:]
        var lineNumber = 0
        // A byte-order mark some editors write is not part of the first line's JSON.
        let text = data.starts(with: [0xEF, 0xBB, 0xBF]) ? data.dropFirst(3) : data[...]
        for rawLine in text.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNumber += 1
            let line = rawLine.last == UInt8(ascii: "\r") ? rawLine.dropLast() : rawLine
            if line.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }) { continue }
            switch Self.parse(Data(line)) {
            case .failure(let message):
                problems.append(Problem(line: lineNumber, message: message))
            case .success(let task):
                if let first = seen[task.customID] {
                    problems.append(Problem(line: lineNumber, message: "custom_id \"\(task.customID)\" already used on line \(first)"))
                } else {
                    seen[task.customID] = lineNumber
                    tasks.append(task)
                }
            }
        }
        if tasks.isEmpty && problems.isEmpty {
            problems.append(Problem(line: 0, message: "the file has no tasks"))
        }
    }

    enum Parsed {
        case success(TaskSpec)
        case failure(String)
    }

    static func parse(_ line: Data) -> Parsed {
        let object: [String: Any]
        do {
            guard let parsed = try JSONSerialization.jsonObject(with: line, options: [.fragmentsAllowed]) as? [String: Any] else {
                return .failure("expected a JSON object")
            }
            object = parsed
        } catch {
            return .failure("not valid JSON")
        }
        if object["body"] != nil {
            switch OpenAIBatchLine.parse([UInt8](line), object: object) {
            case .failure(let problem): return .failure(problem.message)
            case .success(let request): return .success(TaskSpec(customID: request.customID, payload: request.body, url: request.url))
            }
        }
        guard let payload = object["payload"] else {
            return .failure("needs \"body\" (OpenAI Batch format) or \"payload\"")
        }
        if let key = RawJSON.duplicateKey(inObject: [UInt8](line)) {
            return .failure("\"\(key)\" appears twice")
        }
        guard let customID = object["custom_id"] as? String, !customID.isEmpty else {
            return .failure("custom_id is missing or not a non-empty string")
        }
        let bytes: [UInt8]
        if let text = payload as? String {
            bytes = Array(text.utf8)
        } else if let encoded = try? JSONSerialization.data(withJSONObject: payload, options: [.fragmentsAllowed, .withoutEscapingSlashes]) {
            bytes = Array(encoded)
        } else {
            return .failure("payload cannot be encoded as JSON")
        }
        return .success(TaskSpec(customID: customID, payload: bytes))
    }
}
