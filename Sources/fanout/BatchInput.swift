import FanoutWire
import Foundation

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

    /// The endpoints an OpenAI Batch line may name, as the daemon's openai runner serves them.
    static let openAIEndpoints = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]

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
        // JSON parsers disagree on which of two equal keys wins; refuse the ambiguity.
        if let key = RawJSON.duplicateKey(inObject: [UInt8](line)) {
            return .failure("\"\(key)\" appears twice")
        }
        guard let customID = object["custom_id"] as? String, !customID.isEmpty else {
            return .failure("custom_id is missing or not a non-empty string")
        }
        let payload: Any
        if let body = object["body"] {
            if let method = object["method"], (method as? String)?.uppercased() != "POST" {
                return .failure("method must be \"POST\"")
            }
            guard let url = object["url"] as? String else {
                return .failure("url is missing or not a string; OpenAI Batch lines name their endpoint, e.g. \"/v1/chat/completions\"")
            }
            guard openAIEndpoints.contains(url) else {
                return .failure("url \"\(url.prefix(200))\" is not a supported endpoint; use one of \(openAIEndpoints.joined(separator: ", "))")
            }
            guard let fields = body as? [String: Any] else {
                return .failure("body must be a JSON object (the request OpenAI would receive)")
            }
            if (fields["stream"] as? Bool) == true {
                return .failure("body has \"stream\": true; batch requests need whole answers, so remove it or set it to false")
            }
            // The body as written, so the provider receives exactly these bytes.
            let bytes = [UInt8](line)
            guard let range = RawJSON.valueRange(of: "body", inObject: bytes) else {
                return .failure("body cannot be read from the line")
            }
            return .success(TaskSpec(customID: customID, payload: Array(bytes[range]), url: url))
        } else if let plain = object["payload"] {
            payload = plain
        } else {
            return .failure("needs \"body\" (OpenAI Batch format) or \"payload\"")
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
